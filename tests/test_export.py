"""ONNX export: torch and onnxruntime agree (log-probs, greedy and beam-10 hypotheses), int8 stays within a
WER bound, an LM exports and fuses, and a corrupt or mismatched export folder gives a one-line error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.decoding import DecodeOptions, beam_search, greedy_search
from asr.errors import CheckpointError


def _need(module: str):
    """Import ``module``, or skip; in CI (CI=true) a missing dependency is a failure, not a skip."""
    if os.environ.get("CI", "").lower() == "true":
        return __import__(module)
    return pytest.importorskip(module)


_need("onnx")
_need("onnxruntime")

from asr.backends.onnx import OnnxLM, OnnxModel  # noqa: E402
from asr.backends.torch_backend import TorchLM, TorchModel  # noqa: E402
from asr.export import ExportConfig, export_model  # noqa: E402

# int8 weights may cost the tiny model at most this much WER (absolute) on its own corpus.
INT8_WER_BOUND = 0.10
BEAM10 = DecodeOptions(beam_size=10, ctc_weight=0.3)
GREEDY = DecodeOptions(beam_size=1, ctc_weight=0.0)


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory) -> Path:
    return export_model(tiny_model_dir, tmp_path_factory.mktemp("export") / "fp32")


@pytest.fixture(scope="module")
def exported_int8(tiny_model_dir, tmp_path_factory) -> Path:
    return export_model(tiny_model_dir, tmp_path_factory.mktemp("export") / "int8", ExportConfig(quantize="int8"))


@pytest.fixture(scope="module")
def torch_model(tiny_model_dir):
    from asr.checkpoint import load_las

    model, tokenizer, config = load_las(tiny_model_dir)
    return model, tokenizer, config


@pytest.fixture(scope="module")
def waves(tiny_corpus):
    from asr.audio import load_audio

    return [load_audio(u.audio, 16000) for u in tiny_corpus.utts]


def _torch_encode(model, config, waves):
    from asr.features import LogMel

    lengths = torch.tensor([len(w) for w in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        padded[i, : len(w)] = torch.from_numpy(w)
    with torch.inference_mode():
        feats, frames = LogMel(config.features)(padded, lengths)
        return model.encode(feats, frames)


def test_fp32_log_probs_match_torch(exported, torch_model, waves):
    model, _, config = torch_model
    onnx = OnnxModel(exported, threads=1)
    enc_t, len_t = _torch_encode(model, config, waves)
    enc_o, len_o = onnx.encode_waves(waves)
    assert len_o.tolist() == len_t.tolist()
    one, one_len = onnx.encode_waves(waves[:1])  # batch and time axes are dynamic: one clip alone is the same
    assert np.abs(one[0, : one_len[0]] - enc_o[0, : len_o[0]]).max() < 1e-5
    valid = np.arange(enc_o.shape[1])[None, :] < len_o[:, None]
    assert np.abs(enc_o - enc_t.numpy())[valid].max() < 1e-4
    ctc_t = TorchModel(model).ctc_log_probs(enc_t)
    assert np.abs(onnx.ctc_log_probs(enc_o) - ctc_t)[valid].max() < 1e-4
    # The speller, step by step along the torch greedy path, state fed back from each backend's own step.
    tb = TorchModel(model)
    st, so = tb.init_state(enc_t, len_t.numpy()), onnx.init_state(enc_o, len_o)
    mt, mo = tb.enc_mask(enc_t, len_t.numpy()), onnx.enc_mask(enc_o, len_o)
    tokens = np.full(len(waves), 2, dtype=np.int64)
    for _ in range(6):
        lt, st, at = tb.step(tokens, st, enc_t, mt)
        lo, so, ao = onnx.step(tokens, so, enc_o, mo)
        assert np.abs(lo - lt).max() < 1e-4
        assert np.abs(ao - at).max() < 1e-4
        tokens = lt.argmax(1)


@pytest.mark.parametrize("options", [GREEDY, BEAM10], ids=["greedy", "beam10-ctc"])
def test_fp32_hypotheses_are_identical(exported, torch_model, waves, options):
    model, _, config = torch_model
    onnx = OnnxModel(exported, threads=1)
    enc_t, len_t = _torch_encode(model, config, waves)
    enc_o, len_o = onnx.encode_waves(waves)
    if options.beam_size == 1:
        hyp_t = greedy_search(model, enc_t, len_t, options)
        hyp_o = greedy_search(onnx, enc_o, len_o, options)
    else:
        hyp_t = [n[0] for n in beam_search(model, enc_t, len_t, options)]
        hyp_o = [n[0] for n in beam_search(onnx, enc_o, len_o, options)]
    assert [h.tokens for h in hyp_o] == [h.tokens for h in hyp_t]
    assert all(h.tokens for h in hyp_t)  # a trained model: real outputs, not all empty
    assert np.allclose([h.score for h in hyp_o], [h.score for h in hyp_t], atol=1e-3)


def _wer(model, waves, texts, tokenizer) -> float:
    from asr.scoring import score

    enc, lengths = model.encode_waves(waves)
    hyps = [n[0] for n in beam_search(model, enc, lengths, BEAM10)]
    refs = {str(i): t for i, t in enumerate(texts)}
    return score(refs, {str(i): tokenizer.decode(h.tokens) for i, h in enumerate(hyps)}).wer


def test_int8_stays_within_the_wer_bound(exported, exported_int8, torch_model, waves, tiny_corpus):
    _, tokenizer, _ = torch_model
    fp32 = _wer(OnnxModel(exported, threads=1), waves, tiny_corpus.texts, tokenizer)
    int8 = _wer(OnnxModel(exported_int8, threads=1), waves, tiny_corpus.texts, tokenizer)
    assert int8 <= fp32 + INT8_WER_BOUND
    sizes = {d: sum(f.stat().st_size for f in d.glob("*.onnx")) for d in (exported, exported_int8)}
    assert sizes[exported_int8] < 0.5 * sizes[exported]  # the weights really are int8
    assert json.loads((exported_int8 / "export.json").read_text())["quantize"] == "int8"


def test_lm_exports_and_fuses_identically(tiny_model_dir, torch_model, waves, tmp_path):
    from asr.lm import LSTMLM, LMConfig, save_lm

    model, tokenizer, config = torch_model
    torch.manual_seed(3)
    lm = LSTMLM(LMConfig(vocab_size=tokenizer.vocab_size, embed_dim=16, hidden=24, dropout=0.0)).eval()
    lm_dir = save_lm(tmp_path / "lm", lm, tokenizer)
    out = export_model(tiny_model_dir, tmp_path / "export", ExportConfig(lm_dir=str(lm_dir)))
    onnx_lm, torch_lm = OnnxLM(out, threads=1), TorchLM(lm)
    tokens = np.array([2, 5, 7], dtype=np.int64)
    so, st = onnx_lm.init_state(3), torch_lm.init_state(3)
    for _ in range(4):
        lo, so = onnx_lm.step(tokens, so)
        lt, st = torch_lm.step(tokens, st)
        assert np.abs(lo - lt).max() < 1e-4
        tokens = lt.argmax(1)
    options = DecodeOptions(beam_size=4, ctc_weight=0.3, lm_weight=0.5)
    onnx = OnnxModel(out, threads=1)
    enc_t, len_t = _torch_encode(model, config, waves[:6])
    enc_o, len_o = onnx.encode_waves(waves[:6])
    hyp_t = [n[0].tokens for n in beam_search(model, enc_t, len_t, options, lm)]
    hyp_o = [n[0].tokens for n in beam_search(onnx, enc_o, len_o, options, onnx_lm)]
    assert hyp_o == hyp_t


# ---- corrupt and mismatched folders ----


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_line_error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        OnnxModel(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_graph_is_named(exported, tmp_path):
    folder = _copy(exported, tmp_path / "x")
    data = (folder / "listener.onnx").read_bytes()
    (folder / "listener.onnx").write_bytes(data[: len(data) // 3])
    assert "listener.onnx" in _one_line_error(folder)


def test_missing_and_malformed_metadata(exported, tmp_path):
    folder = _copy(exported, tmp_path / "x")
    (folder / "export.json").write_text("{not json")
    assert "export.json: malformed" in _one_line_error(folder)
    (folder / "export.json").unlink()
    assert "export.json: not found" in _one_line_error(folder)


def test_graph_from_another_model_is_refused(exported, tmp_path, tiny_model_dir):
    """A listener graph of a model with other mel bands, swapped into the folder."""
    folder = _copy(exported, tmp_path / "x")
    meta = json.loads((folder / "export.json").read_text())
    meta["features"]["n_mels"] += 8
    (folder / "export.json").write_text(json.dumps(meta))
    assert "frontend.npz" in _one_line_error(folder) or "mel bands" in _one_line_error(folder)
    meta["features"]["n_mels"] -= 8
    meta["model"]["vocab_size"] += 1
    (folder / "export.json").write_text(json.dumps(meta))
    assert "ctc.onnx" in _one_line_error(folder)


def test_newer_format_is_refused(exported, tmp_path):
    folder = _copy(exported, tmp_path / "x")
    meta = json.loads((folder / "export.json").read_text())
    meta["format_version"] = 99
    (folder / "export.json").write_text(json.dumps(meta))
    assert "export format 99" in _one_line_error(folder)


def test_export_cli_errors_are_one_line(tiny_model_dir, exported, tmp_path, capsys):
    from asr.cli import main

    assert main(["export", "--model", str(tiny_model_dir), "--out", str(exported)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asr: error: ") and "already exists" in err and "\n" not in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    assert main(["export", "--model", str(broken), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asr: error: ") and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing half-written


# ---- a minimal install: onnxruntime, numpy, soundfile, sentencepiece, and no torch ----

MINIMAL = ["onnxruntime", "numpy", "soundfile", "sentencepiece"]
REPO = Path(__file__).resolve().parents[1]

_RUN_EXPORT = """
import json, sys
import asr
from asr.audio import load_audio
from asr.decoding import DecodeOptions
from asr.inference import pad_waves
rec = asr.load_model(sys.argv[1])
waves = [load_audio(p, rec.sample_rate) for p in sys.argv[2:]]
out = {"backend": type(rec.backend).__name__}
for name, options in (("greedy", DecodeOptions(beam_size=1, ctc_weight=0.0)), ("beam10", DecodeOptions())):
    out[name] = [nb[0].tokens for nb in rec.decode_batch(*pad_waves(waves), options)]
out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


def _minimal_venv() -> Path:
    """A virtual environment with only the minimal packages, kept between runs (.venv-onnx, or
    $ASR_ONNX_VENV): building it costs a minute of pip."""
    import subprocess
    import sys

    venv = Path(os.environ.get("ASR_ONNX_VENV", REPO / ".venv-onnx"))
    python = venv / "bin" / "python"
    stamp = venv / ".minimal-stamp"
    if not stamp.is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", *MINIMAL], capture_output=True, text=True)
        if pip.returncode != 0:
            message = f"cannot build the minimal venv: {pip.stderr.strip().splitlines()[-1:]}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        stamp.write_text(" ".join(MINIMAL) + "\n")
    return python


@pytest.mark.slow
def test_exported_model_runs_without_torch(exported, torch_model, waves, tiny_corpus, tmp_path):
    import subprocess

    python = _minimal_venv()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=env)
    assert no_torch.returncode != 0  # the environment really has no torch
    paths = [u.audio for u in tiny_corpus.utts[:6]]
    run = subprocess.run([str(python), "-c", _RUN_EXPORT, str(exported), *paths], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["backend"] == "OnnxModel" and out["torch_loaded"] is False
    model, _, config = torch_model
    enc, lengths = _torch_encode(model, config, waves[:6])
    assert out["greedy"] == [h.tokens for h in greedy_search(model, enc, lengths, GREEDY)]
    assert out["beam10"] == [n[0].tokens for n in beam_search(model, enc, lengths, BEAM10)]
    # The command line too: transcribe a file with the exported model, and a corrupt export is one line.
    cli = subprocess.run([str(python), "-m", "asr", "transcribe", "--model", str(exported), paths[0],
                          "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "out" / (Path(paths[0]).stem + ".txt")).read_text().strip()
    broken = _copy(exported, tmp_path / "broken")
    (broken / "speller_step.onnx").write_bytes(b"\x00" * 100)
    cli = subprocess.run([str(python), "-m", "asr", "transcribe", "--model", str(broken), paths[0]],
                         capture_output=True, text=True, env=env)
    assert cli.returncode == 2 and cli.stderr.strip().startswith("asr: error: ")
    assert "speller_step.onnx" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1


def test_decode_cli_backends_agree(tiny_model_dir, exported, tiny_corpus, tmp_path):
    """`asr decode` with the torch model folder and with its export (--backend onnx): the same hypotheses;
    a torch folder with --backend onnx is a one-line error."""
    from asr.cli import main

    hyps = {}
    for name, model, backend in (("torch", tiny_model_dir, "torch"), ("onnx", exported, "onnx")):
        out = tmp_path / name
        assert main(["decode", "--model", str(model), "--manifest", str(tiny_corpus.manifest), "--out-dir", str(out),
                     "--backend", backend, "--no-progress"]) == 0
        hyps[name] = [json.loads(line)["tokens"] for line in (out / "hyps.jsonl").read_text().splitlines()]
    assert hyps["onnx"] == hyps["torch"] and len(hyps["torch"]) == len(tiny_corpus.texts)
    assert main(["decode", "--model", str(tiny_model_dir), "--manifest", str(tiny_corpus.manifest),
                 "--out-dir", str(tmp_path / "x"), "--backend", "onnx"]) == 2
