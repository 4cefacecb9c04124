"""The feature stage: shards, output manifest, CMVN, failures, atomic outputs and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import EXIT_PARTIAL
from asr.cli import main as cli_main
from asr.data.dataset import parse_feats_spec, utterance_features
from asr.data.featstage import FeatStageConfig, compute_cmvn, run_feature_stage
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.errors import DataError
from asr.features import FeatureConfig, GlobalCMVN

CFG = FeatureConfig(n_mels=24)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Seven readable utterances of different loudness and length, and one corrupt file."""
    d = tmp_path_factory.mktemp("fs")
    rng = np.random.default_rng(0)
    utts = []
    for i in range(7):
        n = int(16000 * (0.3 + 0.1 * i))
        wave = (0.05 * (i + 1) * rng.standard_normal(n)).astype(np.float32)
        sf.write(d / f"a{i}.wav", wave, 16000)
        utts.append(Utterance(f"a{i}", f"a{i}.wav", n / 16000, f"TEXT {i}", "s"))
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    utts.insert(3, Utterance("corrupt", "corrupt.wav", 1.0, "BROKEN", "s"))
    write_manifest(d / "train.jsonl", utts)
    return d


def _stage(corpus, out, nj=1, shard_size=3):
    return run_feature_stage(corpus / "train.jsonl", out, CFG, FeatStageConfig(nj=nj, shard_size=shard_size,
                                                                                progress=False))


def test_shards_and_manifest_index_the_features_of_each_utterance(corpus, tmp_path):
    result = _stage(corpus, tmp_path / "out")
    out = read_manifest(result.manifest)
    assert result.manifest == tmp_path / "out" / "train.jsonl"
    assert [u.id for u in out] == [f"a{i}" for i in range(7)]  # manifest order, corrupt one left out
    shards = sorted((tmp_path / "out").glob("train.shard-*.npy"))
    assert len(shards) == 3  # 8 entries in chunks of 3
    rows = {s.resolve(): np.load(s) for s in shards}
    for arr in rows.values():
        assert arr.dtype == np.float32 and arr.shape[1] == CFG.n_mels
    covered = 0
    for u in out:
        path, start, frames = parse_feats_spec(u.extra["feats"])
        np.testing.assert_array_equal(rows[Path(path).resolve()][start : start + frames],
                                      utterance_features(u, CFG).numpy())
        assert u.text and u.speaker == "s"
        covered += frames
    assert covered == sum(a.shape[0] for a in rows.values()) == result.num_frames
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no temporary files left behind


def test_cmvn_equals_whole_corpus_statistics(corpus, tmp_path):
    result = _stage(corpus, tmp_path / "out", nj=2, shard_size=2)
    feats = np.concatenate([utterance_features(u, CFG).numpy() for u in read_manifest(result.manifest)])
    mean, std = GlobalCMVN.load(tmp_path / "out" / "cmvn.json").finalize()
    np.testing.assert_allclose(mean, feats.astype(np.float64).mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, feats.astype(np.float64).std(0), rtol=1e-4, atol=1e-5)
    # The library function for on-the-fly training agrees, and skips the corrupt file.
    direct = compute_cmvn(read_manifest(corpus / "train.jsonl"), CFG, nj=2)
    assert direct.count == feats.shape[0]
    np.testing.assert_allclose(direct.finalize()[0], mean, rtol=1e-6, atol=1e-6)


def test_parallel_and_serial_runs_write_identical_outputs(corpus, tmp_path):
    serial = read_manifest(_stage(corpus, tmp_path / "a", nj=1).manifest)
    parallel = read_manifest(_stage(corpus, tmp_path / "b", nj=2).manifest)
    for s, p in zip(serial, parallel, strict=True):
        sp, ss, sn = parse_feats_spec(s.extra["feats"])
        pp, ps, pn = parse_feats_spec(p.extra["feats"])
        assert (ss, sn) == (ps, pn)
        np.testing.assert_array_equal(np.load(sp)[ss : ss + sn], np.load(pp)[ps : ps + pn])


def test_bad_file_is_skipped_and_listed(corpus, tmp_path):
    result = _stage(corpus, tmp_path / "out")
    assert [i for i, _ in result.failures] == ["corrupt"]
    lines = (tmp_path / "out" / "failures.tsv").read_text().splitlines()
    assert lines[0] == "id\taudio\treason"
    fid, audio, reason = lines[1].split("\t")
    assert fid == "corrupt" and audio.endswith("corrupt.wav") and "corrupt.wav" in reason
    assert len(lines) == 2


def test_failed_rerun_leaves_no_complete_looking_output(corpus, tmp_path):
    out = tmp_path / "out"
    _stage(corpus, out)
    assert (out / "train.jsonl").exists()
    broken = tmp_path / "in" / "train.jsonl"
    broken.parent.mkdir()
    (broken.parent / "x.wav").write_bytes(b"not audio")
    write_manifest(broken, [Utterance("x", "x.wav", 1.0, "X")])
    with pytest.raises(DataError, match="no utterance could be read"):
        run_feature_stage(broken, out, CFG, FeatStageConfig(nj=1, progress=False))
    # The earlier manifest and shards were removed before the new run started.
    assert not (out / "train.jsonl").exists()
    assert not list(out.glob("train.shard-*.npy"))


def test_cli_returns_partial_and_honours_config(corpus, tmp_path, capsys):
    conf = tmp_path / "conf.yaml"
    conf.write_text("features:\n  n_mels: 24\nmodel:\n  anything: 1\n")
    rc = cli_main(["features", "--manifest", str(corpus / "train.jsonl"), "--out-dir", str(tmp_path / "o"),
                   "--nj", "1", "--shard-size", "4", "--config", str(conf)])
    assert rc == EXIT_PARTIAL
    assert "failures.tsv" in capsys.readouterr().err
    assert np.load(sorted((tmp_path / "o").glob("*.npy"))[0]).shape[1] == 24
    conf.write_text("features:\n  n_mells: 24\n")
    rc = cli_main(["features", "--manifest", str(corpus / "train.jsonl"), "--out-dir", str(tmp_path / "o"),
                   "--config", str(conf)])
    assert rc == 2 and "n_mells" in capsys.readouterr().err
