"""asr/report.py: the provenance lines of a recipe's RESULTS.md."""

import json

from asr import ops
from asr.report import precision_description, results_table


def _exp(tmp_path):
    score = tmp_path / "score" / "dev"
    score.mkdir(parents=True)
    score.joinpath("results.json").write_text(json.dumps(
        {"num_utts": 2, "num_words": 10, "wer": 0.1, "cer": 0.05, "substitutions": 1, "deletions": 0,
         "insertions": 0}))
    return tmp_path


def test_precision_line_follows_the_config(tmp_path):
    units = ", ".join(sorted(ops.cpu_bf16_flags())) or "none"
    none = tmp_path / "none.yaml"
    none.write_text("train:\n  amp: none\n")
    auto = tmp_path / "auto.yaml"
    auto.write_text("train:\n  amp: auto\n")
    assert precision_description(str(none)) == f"fp32 (train.amp: none; CPU bf16 units: {units})"
    expected = "bf16" if ops.bf16_supported("cpu") else "fp32"
    assert precision_description(str(auto)) == f"{expected} (train.amp: auto; CPU bf16 units: {units})"
    # A config without the key trains with TrainConfig's default, fp32.
    bare = tmp_path / "bare.yaml"
    bare.write_text("model:\n  dropout: 0.1\n")
    assert precision_description(str(bare)).startswith("fp32 (train.amp: none;")


def test_results_table_records_precision(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  amp: none\n")
    table = results_table(_exp(tmp_path), ["dev"], str(conf))
    assert "| dev | 2 | 10 | 10.00 | 5.00 | 1 | 0 | 0 |" in table
    assert "- precision: fp32 (train.amp: none;" in table
