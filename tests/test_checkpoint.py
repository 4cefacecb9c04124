"""Checkpoint files: atomic writes, checksums, weights-only loading, newest-intact choice, averaging."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from asr import checkpoint as ckpt
from asr.errors import CheckpointError, TokenizerError


def _obj(value: float) -> dict:
    return {"model": {"w": torch.full((3, 2), value), "n": torch.tensor(7)}, "step": int(value)}


def test_round_trip_and_checksum_file(tmp_path):
    path = tmp_path / "a.pt"
    ckpt.save_checkpoint(path, _obj(1.5))
    assert ckpt.checksum_path(path).read_text().split()[0] != ""
    loaded = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.full((3, 2), 1.5))
    assert loaded["step"] == 1


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    ckpt.save_checkpoint(path, _obj(1.0))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    # The rename is the commit point: failing there must leave the old file and its checksum intact.
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, _obj(2.0))
    monkeypatch.undo()
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.full((3, 2), 1.0))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_checksum_mismatch_and_missing(tmp_path):
    path = tmp_path / "a.pt"
    ckpt.save_checkpoint(path, _obj(1.0))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch") as e:
        ckpt.load_checkpoint(path)
    assert "a.pt" in str(e.value)
    ckpt.checksum_path(path).unlink()
    with pytest.raises(CheckpointError, match="checksum file"):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_refused(tmp_path):
    path = tmp_path / "evil.pt"
    # A correct checksum must not be enough: the payload itself is refused before anything runs.
    torch.save({"model": _Evil()}, path)
    import hashlib

    ckpt.checksum_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "  evil.pt\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="refusing to unpickle"):
            ckpt.load_checkpoint(path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


def test_truncated_file_refused(tmp_path):
    import hashlib

    path = tmp_path / "a.pt"
    ckpt.save_checkpoint(path, _obj(1.0))
    cut = path.read_bytes()[:200]
    path.write_bytes(cut)
    # Even with a checksum that matches the truncated bytes, the archive is refused as corrupt.
    ckpt.checksum_path(path).write_text(hashlib.sha256(cut).hexdigest() + "  a.pt\n")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(path)


def test_newest_intact_skips_corrupt(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (5, 10, 20):
        ckpt.save_checkpoint(folder / f"ckpt-{step}.pt", _obj(float(step)))
    assert ckpt.newest_intact_checkpoint(folder).name == "ckpt-20.pt"
    (folder / "ckpt-20.pt").write_bytes(b"garbage")
    ckpt.checksum_path(folder / "ckpt-10.pt").unlink()  # as if killed between data and checksum
    assert ckpt.newest_intact_checkpoint(folder).name == "ckpt-5.pt"
    assert ckpt.newest_intact_checkpoint(tmp_path / "nothing") is None


def test_average_checkpoints(tmp_path):
    paths = []
    for i, v in enumerate((1.0, 2.0, 6.0)):
        paths.append(tmp_path / f"m{i}.pt")
        ckpt.save_checkpoint(paths[-1], _obj(v))
    avg = ckpt.average_checkpoints(paths)
    assert torch.allclose(avg["w"], torch.full((3, 2), 3.0))
    assert avg["n"].dtype == torch.int64 and int(avg["n"]) == 7
    ckpt.save_checkpoint(tmp_path / "odd.pt", {"model": {"w": torch.zeros(2, 2), "n": torch.tensor(1)}})
    with pytest.raises(CheckpointError, match="shape"):
        ckpt.average_checkpoints([paths[0], tmp_path / "odd.pt"])


def test_rng_state_round_trip_is_weights_only(tmp_path):
    from asr.train.rng import rng_state, set_rng_state

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (torch.rand(4), np.random.normal(size=3), random.random())
    set_rng_state(ckpt.load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(4), np.random.normal(size=3), random.random())
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_model_dir_round_trip(tmp_path, tiny_model_dir):
    model, tok, cfg = ckpt.load_las(tiny_model_dir)
    assert not model.training
    assert cfg.model.vocab_size == tok.vocab_size
    out = ckpt.save_model_dir(tmp_path / "copy", model, cfg, tok)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "model.pt", "model.pt.sha256",
                                                     "tokenizer.model"]
    again, _, _ = ckpt.load_las(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    (out / "tokenizer.model").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        ckpt.load_las(out)
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_las(tmp_path / "nope")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_the_umask_implies(tmp_path, tiny_model_dir, umask, mode):
    import stat

    from asr.io_utils import atomic_write_text

    model, tok, cfg = ckpt.load_las(tiny_model_dir)
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "plain.txt", "x\n")
        ckpt.save_checkpoint(tmp_path / "ckpt-1.pt", _obj(1.0))
        folder = ckpt.save_model_dir(tmp_path / "model", model, cfg, tok)
    finally:
        os.umask(old)
    files = [tmp_path / "plain.txt", tmp_path / "ckpt-1.pt", tmp_path / "ckpt-1.pt.sha256", *folder.iterdir()]
    assert len(files) == 8
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
