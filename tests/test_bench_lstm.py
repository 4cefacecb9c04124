"""scripts/bench_lstm.py: the fp32-vs-bf16 LSTM kernel benchmark runs and reports consistent rows."""

import argparse

from conftest import load_script

from asr import ops


def test_bench_lstm_rows(capsys):
    mod = load_script("bench_lstm")
    parser = argparse.ArgumentParser()
    mod.add_arguments(parser)
    out = mod.run(parser.parse_args(["--batches", "2,3", "--frames", "5", "--shapes", "8x4", "--repeats", "1"]))
    dtypes = ["fp32", "bf16"] if ops.bf16_supported("cpu") else ["fp32"]
    assert [(r["batch"], r["dtype"]) for r in out["rows"]] == [(b, d) for b in (2, 3) for d in dtypes]
    for r in out["rows"]:
        assert r["forward_s"] > 0 and r["backward_s"] > 0
        if r["dtype"] == "fp32":
            assert r["speedup_vs_fp32"] == 1.0
    assert capsys.readouterr().out.count("| 8 x 4 |") == len(out["rows"])
