"""Data pipeline speed: synthesis, the feature stage, and the loader (cached vs on the fly) vs a train step.

    python scripts/benchmark.py data [--utterances 40] [--repeat 8] [--max-duration 60] [--steps 2]
                                     [--train-max-duration 20] [--end-to-end] [--threads N]

Every figure is seconds of audio per wall-clock second on this machine:

1. synthesis: ``asr.data.synth.synthesize_corpus`` of ``--utterances`` utterances with 2 processes
   (skipped with a note if the TTS engines are missing; speech-like noise files stand in).
2. feature stage: ``run_feature_stage`` with ``--nj 2``, against ``--nj 1`` (peer) on the same manifest.
   The corpus is listed ``--repeat`` times (distinct ids, same files) so that each stage runs long
   enough to time.
3. loader: one steady-state epoch (workers already started) of ``make_loader`` over cached shards and
   over the audio, with 0, 1 and 2 workers, against the train step's consumption: forward + backward +
   Adam step of the default ``asr.model.LAS`` on batches of ``--train-max-duration`` seconds (peer).
   Without workers loading adds to each step, so training runs at ``1 / (1 + train_rate / loader_rate)``
   of its preloaded speed; with workers loading overlaps training.
4. augmentation: milliseconds per utterance of each on-the-fly augmentation (``asr.augment``) on an
   item of the cached and of the audio source, against the same item unaugmented (peer), and as a
   fraction of the train step's time for that audio.
5. ``--end-to-end``: ``--steps`` train steps fed by the loaders, loading and training sharing the cores.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.data.dataset import AsrDataset, make_loader
from asr.data.featstage import FeatStageConfig, run_feature_stage
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.data.sampler import DynamicBucketSampler
from asr.features import FeatureConfig, LogMel

LOADERS = [("cached", 0), ("cached", 1), ("cached", 2), ("audio", 0), ("audio", 1), ("audio", 2)]


def add_arguments(parser) -> None:
    parser.add_argument("--utterances", type=int, default=40, help="utterances to synthesise")
    parser.add_argument("--repeat", type=int, default=8, help="times the corpus is listed for the loader")
    parser.add_argument("--max-duration", type=float, default=60.0, help="seconds of audio per batch")
    parser.add_argument("--steps", type=int, default=2, help="timed train steps per measurement")
    parser.add_argument("--train-max-duration", type=float, default=20.0, help="seconds per train-step batch")
    parser.add_argument("--end-to-end", action="store_true", help="also time train steps fed by the loaders")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the corpus and features here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of this process; 0 = torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment-only", action="store_true",
                        help="only the augmentation costs (and the train step they are compared with)")


# -- corpus -----------------------------------------------------------------------------------------


def synthesize(root: Path, n: int, seed: int) -> tuple[list[Utterance], dict]:
    """Synthesise a small corpus; returns its utterances and the synthesis figures."""
    from asr.data.synth import SynthConfig, synthesize_corpus

    cfg = SynthConfig(out_dir=str(root), utterances=n, min_words=3, max_words=12, seed=seed, nj=2)
    report = synthesize_corpus(cfg)
    utts = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            uid, _, text = line.partition(" ")
            path = trans.parent / f"{uid}.flac"
            utts.append(Utterance(uid, str(path), sf.info(str(path)).duration, text, uid.split("-")[0]))
    seconds = report.synth_audio_seconds
    return utts, {"utterances": report.synthesized, "audio_s": round(seconds, 1),
                  "wall_s": round(report.wall_seconds, 2),
                  "audio_s_per_s": round(seconds / max(report.wall_seconds, 1e-9), 2)}


def stand_in_corpus(root: Path, n: int, seed: int) -> list[Utterance]:
    """Speech-like noise files of 1.5-6 s, for machines without the TTS engines."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    utts = []
    for i in range(n):
        secs = float(rng.uniform(1.5, 6.0))
        t = np.arange(int(secs * 16000)) / 16000
        x = 0.2 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
        x = (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        path = root / f"u{i:04d}.flac"
        sf.write(path, x, 16000)
        utts.append(Utterance(f"u{i:04d}", str(path), len(x) / 16000, "ONE TWO THREE", "s0"))
    return utts


def repeated(utts: list[Utterance], times: int) -> list[Utterance]:
    return [Utterance(f"{u.id}-r{k}", u.audio, u.duration, u.text, u.speaker) for k in range(times) for u in utts]


# -- measurements -----------------------------------------------------------------------------------


def feature_stage(manifest: Path, out: Path, nj: int) -> dict:
    result = run_feature_stage(manifest, out, FeatureConfig(), FeatStageConfig(nj=nj, progress=False))
    return {"audio_s": round(result.audio_seconds, 1), "wall_s": round(result.wall_seconds, 2),
            "audio_s_per_s": round(result.audio_seconds / result.wall_seconds, 1)}


def loader_rate(utts: list[Utterance], source: str, workers: int, max_duration: float, seed: int) -> float:
    """Seconds of audio per second over one steady-state epoch (the first epoch starts the workers)."""
    ds = AsrDataset(utts, None, FeatureConfig(), source=source)
    sampler = DynamicBucketSampler(ds.durations, max_duration, seed=seed)
    loader = make_loader(ds, sampler, num_workers=workers)
    durations = {u.id: u.duration for u in utts}
    for _ in loader:  # warm-up: worker start, page cache, memory maps
        break
    sampler.set_epoch(1)
    start, seconds = time.perf_counter(), 0.0
    for batch in loader:
        seconds += sum(durations[i] for i in batch.ids)
    wall = time.perf_counter() - start
    del loader  # stops persistent workers before the next measurement
    return seconds / wall


AUGMENTATIONS = [("vtlp", dict(vtlp=0.1)), ("speed", dict(speed=0.1)), ("tempo", dict(tempo=0.1)),
                 ("pitch", dict(pitch=2.0)), ("reverb", dict(reverb_prob=1.0, rir_bank=16)),
                 ("noise", dict(noise_prob=1.0)), ("babble", dict(babble_prob=1.0))]


def augment_costs(utts: list[Utterance], source: str, rir_cache: Path) -> dict:
    """Milliseconds per item: unaugmented (peer) and with each augmentation alone."""
    from asr.augment import AugmentConfig, Augmenter

    def per_item(ds, keyed: bool) -> float:
        # warm-up epoch: memory maps, the RIR bank and the banks of warped matrices, built once per run
        for i in range(len(ds)):
            ds[(0, i) if keyed else i]
        start = time.perf_counter()
        for i in range(len(ds)):
            ds[(1, i) if keyed else i]
        return 1000 * (time.perf_counter() - start) / len(ds)

    out = {"plain": round(per_item(AsrDataset(utts, None, FeatureConfig(), source=source), False), 3)}
    for name, kw in AUGMENTATIONS:
        if name == "pitch" and source == "cached":
            continue  # audio only
        try:
            aug = Augmenter(AugmentConfig(rir_cache=str(rir_cache), **kw), FeatureConfig())
            out[name] = round(per_item(AsrDataset(utts, None, FeatureConfig(), source=source, augment=aug), True), 3)
        except Exception as e:  # e.g. pyroomacoustics missing: report, measure the rest
            print(f"augmentation {name}/{source}: unavailable ({e.__class__.__name__}: {e})")
    return out


def _model(tokenizer):
    from asr.model import LAS, ModelConfig

    torch.manual_seed(0)
    model = LAS(ModelConfig(vocab_size=tokenizer.vocab_size))
    model.train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def _train_step(model, opt, batch) -> None:
    opt.zero_grad(set_to_none=True)
    out = model(batch.feats, batch.feat_lengths, batch.targets, batch.target_lengths)
    out.loss.backward()
    opt.step()


def train_rate(utts, tokenizer, source: str, workers: int, max_duration: float, steps: int, seed: int,
               preloaded: bool) -> float:
    """Seconds of audio trained per second: forward + backward + Adam step of the default LAS.

    preloaded: batches are loaded before timing (the model's consumption alone); else the loader runs
    during the timed steps (loading and training share the cores).
    """
    ds = AsrDataset(utts, tokenizer, FeatureConfig(), source=source)
    sampler = DynamicBucketSampler(ds.durations, max_duration, seed=seed)
    loader = make_loader(ds, sampler, num_workers=workers)
    model, opt = _model(tokenizer)
    durations = {u.id: u.duration for u in utts}
    it = iter(loader)
    _train_step(model, opt, next(it))  # warm-up: allocator, worker start
    batches = [next(it) for _ in range(steps)] if preloaded else None
    start, seconds = time.perf_counter(), 0.0
    for k in range(steps):
        batch = batches[k] if preloaded else next(it)
        _train_step(model, opt, batch)
        seconds += sum(durations[i] for i in batch.ids)
    wall = time.perf_counter() - start
    del it, loader
    return seconds / wall


def run(args) -> dict:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_data_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"torch_threads": torch.get_num_threads()}
    try:
        utts, results["synthesis"] = synthesize(workdir / "corpus", args.utterances, args.seed)
        print(f"synthesis: {results['synthesis']['audio_s']} s of audio in {results['synthesis']['wall_s']} s "
              f"= {results['synthesis']['audio_s_per_s']} s/s (2 processes)")
    except Exception as e:  # any failure of the optional TTS stage falls back to stand-in files
        print(f"synthesis: unavailable ({e.__class__.__name__}: {e}); using speech-like stand-in files")
        utts, results["synthesis"] = stand_in_corpus(workdir / "standin", args.utterances, args.seed), None

    LogMel(FeatureConfig())  # imports librosa once, outside every timed region
    manifest = workdir / "bench.jsonl"
    write_manifest(manifest, repeated(utts, args.repeat))
    if not args.augment_only:
        one = feature_stage(manifest, workdir / "feats1", nj=1)
    two = feature_stage(manifest, workdir / "feats", nj=2)
    if not args.augment_only:
        results["feature_stage"] = {"nj2": two, "nj1": one,
                                    "speedup": round(two["audio_s_per_s"] / one["audio_s_per_s"], 2)}
        print(f"feature stage: {two['audio_s_per_s']} s/s with nj=2 vs {one['audio_s_per_s']} s/s with nj=1 "
              f"(x{results['feature_stage']['speedup']}) on {two['audio_s']} s of audio")

    cached = read_manifest(workdir / "feats" / "bench.jsonl")
    loaders = {}
    for source, workers in [] if args.augment_only else LOADERS:
        rate = loader_rate(cached, source, workers, args.max_duration, args.seed)
        loaders[f"{source}/w{workers}"] = round(rate, 1)
        print(f"loader {source}/w{workers}: {rate:.1f} s audio/s", flush=True)
    results["loader_audio_s_per_s"] = loaders

    mean_s = sum(u.duration for u in cached) / len(cached)
    aug = {source: augment_costs(cached[: len(utts)], source, workdir / "rirs")
           for source in ("cached", "audio")}
    results["augment_ms_per_utt"] = aug
    for source, costs in aug.items():
        plain = costs["plain"]
        print(f"augmentation on {source} items ({mean_s:.2f} s each): plain {plain:.2f} ms; "
              + ", ".join(f"{k} +{v - plain:.2f} ms" for k, v in costs.items() if k != "plain"))

    from asr.tokenizer import Tokenizer

    try:
        import asr.model  # noqa: F401
    except ImportError:
        print("loader (no asr.model to compare with): " + ", ".join(f"{k} {v}" for k, v in loaders.items()))
        return results
    tok = Tokenizer.train([u.text for u in utts], workdir / "tok", vocab_size=128)
    consume = train_rate(cached, tok, "cached", 0, args.train_max_duration, args.steps, args.seed, preloaded=True)
    results["train_step_audio_s_per_s"] = round(consume, 2)
    print(f"train step (default LAS, {args.train_max_duration:g} s batches): consumes {consume:.2f} s audio/s")
    step_ms = 1000 * mean_s / consume  # train-step time of one mean utterance
    results["augment_over_train_step"] = {
        src: {k: round((v - costs["plain"]) / step_ms, 4) for k, v in costs.items() if k != "plain"}
        for src, costs in aug.items()}
    for src, fracs in results["augment_over_train_step"].items():
        print(f"  augmentation cost on {src} / train step ({step_ms:.0f} ms per utterance): "
              + ", ".join(f"{k} {v:.1%}" for k, v in fracs.items()))
    if args.augment_only:
        return results
    results["loader_over_train_step"] = {k: round(v / consume, 1) for k, v in loaders.items()}
    # With workers, loading overlaps training; with none it adds to every step.
    modelled = {k: 1 / (1 / v + 1 / consume) if k.endswith("/w0") else v for k, v in loaders.items()}
    for name, rate in loaders.items():
        print(f"  loader {name:10s} {rate:8.1f} s/s = x{rate / consume:.0f} the train step's consumption; "
              f"training at {min(modelled[name], consume) / consume:.1%} of its preloaded speed")
    if args.end_to_end:
        e2e = {}
        for source, workers in [("cached", 0), ("audio", 0), ("audio", 2)]:
            rate = train_rate(cached, tok, source, workers, args.train_max_duration, args.steps, args.seed,
                              preloaded=False)
            e2e[f"{source}/w{workers}"] = round(rate, 2)
            print(f"  end to end {source}/w{workers}: {rate:.2f} s/s = x{rate / consume:.2f} of preloaded batches")
        results["end_to_end_audio_s_per_s"] = e2e
    results["faster_source"] = "cached" if loaders["cached/w2"] > loaders["audio/w2"] else "audio"
    print(f"faster loader here: {results['faster_source']} "
          f"(x{loaders['cached/w2'] / loaders['audio/w2']:.1f} with 2 workers)")
    return results
