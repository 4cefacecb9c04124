"""Config loading, manifest reading and the CLI's one-line errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from asr.config import from_dict, load_yaml_sections, parse_override, to_dict
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.errors import ConfigError, ManifestError


@dataclasses.dataclass(frozen=True)
class _Demo:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"
    flag: bool = False


def test_from_dict_checks_keys_and_types():
    d = from_dict(_Demo, {"lr": 2, "steps": 3, "flag": True})
    assert d == _Demo(lr=2.0, steps=3, flag=True)
    assert isinstance(d.lr, float)
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        from_dict(_Demo, {"stepz": 3}, "conf.yaml [train]")
    with pytest.raises(ConfigError, match="'steps' must be int"):
        from_dict(_Demo, {"steps": 1.5})
    with pytest.raises(ConfigError, match="'flag' must be bool"):
        from_dict(_Demo, {"flag": "yes"})
    assert from_dict(_Demo, {"lr": "1e-4"}).lr == pytest.approx(1e-4)
    assert to_dict(d)["steps"] == 3


def test_yaml_sections_scalars_only(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  lr: 0.1\nmodel:\n  hidden: 4\n")
    assert load_yaml_sections(good) == {"train": {"lr": 0.1}, "model": {"hidden": 4}}
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  lr: [1, 2]\n")
    with pytest.raises(ConfigError, match="must be a scalar"):
        load_yaml_sections(nested)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: 1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml_sections(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml_sections(tmp_path / "missing.yaml")


def test_parse_override():
    assert parse_override("train.lr=0.5") == ("train", "lr", 0.5)
    assert parse_override("model.attention=location") == ("model", "attention", "location")
    with pytest.raises(ConfigError):
        parse_override("lr=0.5")


def test_manifest_round_trip_and_errors(tmp_path):
    utts = [Utterance("a", "/x/a.flac", 1.5, "HELLO", "s1"), Utterance("b", "b.wav", 2.0, "WORLD", "s2", 0.5,
                                                                       {"feats": "f.npy:0:10"})]
    path = tmp_path / "m.jsonl"
    write_manifest(path, utts)
    back = read_manifest(path)
    assert [u.id for u in back] == ["a", "b"]
    assert back[1].audio == str(tmp_path / "b.wav")  # relative paths resolve against the manifest folder
    assert back[1].extra == {"feats": "f.npy:0:10"} and back[1].offset == 0.5

    cases = {
        b'{"id": "a", "audio": "x", "duration": 1}\n{"id": "a", "audio": "y", "duration": 1}\n': "duplicate id",
        b'{"id": "a", "audio": "x"}\n': "missing key 'duration'",
        b'{"id": "a", "audio": "x", "duration": -1}\n': "non-negative",
        b'not json\n': "invalid JSON",
        b'\xff\xfe{"id": 1}\n': "not valid UTF-8",
        b'[1, 2]\n': "not a JSON object",
        b"": "empty",
    }
    for i, (data, reason) in enumerate(cases.items()):
        p = tmp_path / f"bad{i}.jsonl"
        p.write_bytes(data)
        with pytest.raises(ManifestError, match=reason) as err:
            read_manifest(p)
        assert str(p) in str(err.value)


def _asr(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "asr", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_user_errors_are_one_line(tmp_path):
    missing = tmp_path / "nope.jsonl"
    r = _asr("tokenizer", "--manifest", str(missing), "--out", str(tmp_path / "tok"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert str(missing) in r.stderr and "not found" in r.stderr

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = _asr("tokenizer", "--manifest", str(empty), "--out", str(tmp_path / "tok"))
    assert r.returncode == 2 and "empty" in r.stderr and "Traceback" not in r.stderr

    r = _asr("--debug", "tokenizer", "--manifest", str(missing), "--out", str(tmp_path / "tok"))
    assert r.returncode != 0 and "Traceback" in r.stderr

    r = _asr("tokenizer", "--manifest", str(missing), "--out", "x", "--vocab-size", "-3")
    assert r.returncode == 2 and "positive integer" in r.stderr


def test_cli_tokenizer_end_to_end(tmp_path):
    m = tmp_path / "m.jsonl"
    lines = ["HELLO WORLD", "THE QUICK BROWN FOX", "JUMPS OVER THE LAZY DOG", "HELLO AGAIN WORLD"] * 5
    m.write_text("".join(json.dumps({"id": f"u{i}", "audio": "a.wav", "duration": 1.0, "text": t}) + "\n"
                         for i, t in enumerate(lines)))
    r = _asr("tokenizer", "--manifest", str(m), "--out", str(tmp_path / "tok"), "--vocab-size", "30")
    assert r.returncode == 0, r.stderr
    from asr.tokenizer import Tokenizer

    tok = Tokenizer.load(tmp_path / "tok.model")
    for t in lines:
        assert tok.decode(tok.encode(t)) == t


def test_errors_survive_pickling():
    # Worker processes (decode --nj, feature stage) send errors back to the parent by pickling.
    import pickle

    from asr.errors import AudioError

    for err in (AudioError("a.wav", "not audio"), ManifestError("m.jsonl", "bad entry", 3), ConfigError("c", "r")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/conf/*.yaml")),
    ids=lambda p: f"{p.parent.parent.name}/{p.name}",
)
def test_every_recipe_config_loads(path):
    # A recipe's config is read only when its training stage starts, minutes into a run: a stale key or a
    # wrong type should fail here instead.
    from asr.config import load_experiment_config

    cfg = load_experiment_config(path)
    assert cfg.model is not None and cfg.train.max_epochs >= 1
