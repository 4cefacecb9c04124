"""The ``asr`` command line: argparse subcommands, each building a config and calling one library function.

User errors (:class:`asr.errors.AsrError`, missing files, bad values) print one line,
``asr: error: <what>: <reason>``, and exit with status 2. ``asr --debug ...`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asr.errors import AsrError

EXIT_USER_ERROR = 2
EXIT_PARTIAL = 1  # a batch command finished but skipped some bad items


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _given(**flags) -> dict:
    """The flags that were given (not None): the dataclass defaults apply to the rest."""
    return {k: v for k, v in flags.items() if v is not None}


def _overrides(items: list[str] | None) -> dict:
    """Turn ``section.key=value`` strings into ``{section: {key: value}}``."""
    from asr.config import parse_override

    out: dict = {}
    for item in items or []:
        section, key, value = parse_override(item)
        out.setdefault(section, {})[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Subcommands. Each `_add_<name>(sub)` registers a parser whose `func` takes the parsed args and
# returns an exit status. Keep handlers short: parse, build a config, call the library.
# ---------------------------------------------------------------------------------------------


def _add_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer from a manifest's text")
    p.add_argument("--manifest", required=True, type=Path, nargs="+", help="manifest(s) whose text to use")
    p.add_argument("--out", required=True, type=Path, help="output model prefix, e.g. exp/tokenizer")
    p.add_argument("--vocab-size", type=_positive_int, default=None, help="pieces, with the 3 special ones (default 256)")
    p.add_argument("--model-type", choices=["unigram", "bpe", "char"], default=None, help="default unigram")
    p.set_defaults(func=_run_tokenizer)


def _run_tokenizer(args) -> int:
    from asr.config import replace
    from asr.data.manifest import read_manifest
    from asr.tokenizer import Tokenizer, TokenizerConfig

    cfg = replace(TokenizerConfig(), "tokenizer flags", **_given(vocab_size=args.vocab_size, model_type=args.model_type))
    texts = [u.text for m in args.manifest for u in read_manifest(m)]
    tok = Tokenizer.train(texts, args.out, cfg.vocab_size, cfg.model_type)
    print(f"tokenizer: {tok.model_path} ({tok.vocab_size} pieces)")
    return 0


def _add_results(sub) -> None:
    p = sub.add_parser("results", help="print a recipe's WER table from its score stage")
    p.add_argument("--exp-dir", required=True, type=Path)
    p.add_argument("--sets", required=True, nargs="+")
    p.add_argument("--config", default="")
    p.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    p.set_defaults(func=_run_results)


def _run_results(args) -> int:
    from asr.io_utils import atomic_write_text
    from asr.report import results_table

    table = results_table(args.exp_dir, args.sets, args.config)
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    return 0


def _add_search_flags(p) -> None:
    """Search flags shared by decode and transcribe; defaults live in DecodeOptions."""
    p.add_argument("--beam", type=_positive_int, default=None,
                   help="beam size (default 10); --beam 1 with --ctc-weight 0 and no LM is greedy search, "
                   "otherwise a beam of 1 that still scores with CTC and the LM")
    p.add_argument("--ctc-weight", type=_nonneg_float, default=None,
                   help="CTC prefix score weight, 0..1 (default 0.3; 1 = pure CTC)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default=None,
                   help="torch (a model folder), onnx (an `asr export` folder, onnxruntime, no torch needed); "
                   "default auto: onnx for an exported folder")
    p.add_argument("--lm", type=Path, default=None, help="LM folder from `asr train-lm` for shallow fusion")
    p.add_argument("--lm-weight", type=_nonneg_float, default=None, help="LM weight (default 0.3; used with --lm)")
    p.add_argument("--nbest", type=_positive_int, default=None, help="hypotheses kept per utterance (default 1)")


def _add_transcribe(sub) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files, folders or raw PCM on stdin ('-')")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (recursive), or - for stdin")
    p.add_argument("--model", required=True, type=Path, help="model folder (model.pt, config.yaml, tokenizer.model)")
    p.add_argument("--format", default=None, help="txt|json|srt|vtt|tsv|all, or a comma list (default txt)")
    p.add_argument("--output-dir", type=Path, default=None, help="where outputs go (default: current folder; "
                   "for '-' files are written only when given)")
    p.add_argument("--rate", type=_positive_int, default=None, help="sample rate of s16le PCM on stdin (default 16000)")
    _add_search_flags(p)
    p.add_argument("--hotwords", type=Path, default=None,
                   help="file of phrases to boost, one a line, optionally 'PHRASE :WEIGHT' (bonus per piece, "
                   "default 1.5)")
    p.add_argument("--quiet", action="store_true", help="do not print segments on stdout as they are decoded")
    p.add_argument("--max-segment", type=_nonneg_float, default=None, help="longest segment in seconds (default 20)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="segments decoded together (default 8)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", choices=["fp32", "bf16", "auto"], default=None,
                   help="inference precision (default: DecodeOptions, fp32); bf16 needs CPU bf16 units or CUDA")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="CPU threads (default 1: segment batches are small, and extra threads "
                   "spin against each other on a busy machine)")
    p.set_defaults(func=_run_transcribe)


def _run_transcribe(args) -> int:
    from asr.config import replace
    from asr.context import ContextGraph, read_hotwords
    from asr.decoding import DecodeOptions
    from asr.inference import Recognizer
    from asr.transcribe import FAILURES_NAME, TranscribeConfig, transcribe_inputs

    cfg = replace(TranscribeConfig(), "transcribe flags", **_given(
        formats=args.format, stdin_rate=args.rate, max_segment=args.max_segment, batch_size=args.batch_size,
        output_dir=None if args.output_dir is None else str(args.output_dir)))
    options = replace(DecodeOptions(), "decode flags", **_given(
        beam_size=args.beam, ctc_weight=args.ctc_weight, lm_weight=args.lm_weight, nbest=args.nbest,
        dtype=args.dtype))
    rec = Recognizer.from_dir(args.model, args.device, args.backend or "auto", args.threads)
    lm = None if args.lm is None else rec.load_lm(args.lm)
    context = None if args.hotwords is None else ContextGraph.from_hotwords(read_hotwords(args.hotwords),
                                                                           rec.tokenizer)
    result = transcribe_inputs(rec, args.inputs, options, cfg, write_stdin_files=args.output_dir is not None,
                               quiet=args.quiet, lm=lm, context=context)
    if result.failures:
        print(f"asr transcribe: {len(result.results)} transcribed, {len(result.failures)} failed "
              f"(list in {Path(cfg.output_dir) / FAILURES_NAME})", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="compute log-mel features of a manifest into sharded arrays + CMVN")
    p.add_argument("--manifest", required=True, type=Path, help="input manifest (JSON lines)")
    p.add_argument("--out-dir", required=True, type=Path, help="writes <name>.jsonl, shards, cmvn.json, failures.tsv")
    p.add_argument("--nj", type=_positive_int, default=None, help="worker processes (default 2)")
    p.add_argument("--shard-size", type=_positive_int, default=None, help="utterances per shard (default 500)")
    p.add_argument("--config", type=Path, default=None, help="YAML whose 'features' section sets FeatureConfig")
    p.set_defaults(func=_run_features)


def _run_features(args) -> int:
    from asr.config import from_dict, load_yaml_sections, replace
    from asr.data.featstage import FAILURES_NAME, FeatStageConfig, run_feature_stage
    from asr.features import FeatureConfig

    sections = load_yaml_sections(args.config) if args.config else {}
    feature_cfg = from_dict(FeatureConfig, sections.get("features", {}), f"{args.config} [features]")
    result = run_feature_stage(args.manifest, args.out_dir, feature_cfg,
                               replace(FeatStageConfig(), "features flags",
                                       **_given(nj=args.nj, shard_size=args.shard_size)))
    print(f"features: {result.manifest} ({result.num_utts} utterances, {result.audio_seconds:.1f} s of audio "
          f"in {result.wall_seconds:.1f} s)")
    if result.failures:
        print(f"asr features: skipped {len(result.failures)} unreadable utterance(s) "
              f"(list in {args.out_dir / FAILURES_NAME})", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="decode a manifest: hyps.jsonl, Kaldi-style text, failures.tsv")
    p.add_argument("--model", required=True, type=Path, help="model folder (model.pt, config.yaml, tokenizer.model)")
    p.add_argument("--manifest", required=True, type=Path, help="manifest (JSON lines) to decode")
    p.add_argument("--out-dir", required=True, type=Path, help="writes hyps.jsonl, text, failures.tsv, decode.json")
    _add_search_flags(p)
    p.add_argument("--batch-size", type=_positive_int, default=None, help="utterances per batch (default 16)")
    p.add_argument("--nj", type=_positive_int, default=None, help="parallel processes (one per GPU with cuda)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "auto"], default=None,
                   help="inference precision (default: DecodeOptions, fp32); bf16 needs CPU bf16 units or CUDA")
    p.add_argument("-o", "--option", action="append", metavar="decode.KEY=VALUE",
                   help="any other DecodeOptions field, e.g. -o decode.length_penalty=0.5")
    p.add_argument("--vtln", action="store_true", default=None,
                   help="per speaker (the manifest's speaker field), decode with the filterbank warp the model "
                        "finds most likely (test-time VTLN; torch backend)")
    p.add_argument("--vtln-utts", type=_positive_int, default=None,
                   help="utterances per speaker that choose its warp (default 50)")
    p.add_argument("--adapt", action="store_true",
                   help="per speaker, decode twice: fit a feature transform to the first pass's hypotheses, "
                        "then decode through it (unsupervised speaker adaptation, asr.adapt; torch backend); "
                        "-o adapt.epochs=N, -o adapt.lr=X change AdaptConfig")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.set_defaults(func=_run_decode)


def _run_decode(args) -> int:
    from asr.adapt import AdaptConfig
    from asr.config import from_dict, replace
    from asr.decode_manifest import DecodeRunConfig, decode_manifest
    from asr.decoding import DecodeOptions
    from asr.errors import ConfigError

    extra = _overrides(args.option)
    if set(extra) - {"decode", "adapt"}:
        raise ConfigError(args.option[0], "decode options look like decode.KEY=VALUE or adapt.KEY=VALUE")
    if "adapt" in extra and not args.adapt:
        raise ConfigError("-o adapt.*", "adapt options need --adapt")
    adapt = from_dict(AdaptConfig, extra.get("adapt", {}), "-o adapt.*") if args.adapt else None
    flags = _given(beam_size=args.beam, ctc_weight=args.ctc_weight, lm_weight=args.lm_weight, nbest=args.nbest,
                   dtype=args.dtype)
    options = replace(DecodeOptions(), "decode flags", **{**flags, **extra.get("decode", {})})
    run = replace(DecodeRunConfig(), "decode flags", **_given(
        batch_size=args.batch_size, nj=args.nj, device=args.device, backend=args.backend,
        lm_dir=None if args.lm is None else str(args.lm), vtln=args.vtln, vtln_utts=args.vtln_utts, adapt=adapt,
        progress=False if args.no_progress else None))
    result = decode_manifest(args.model, args.manifest, args.out_dir, options, run)
    print(f"decode: {result.num_decoded}/{result.num_utts} utterances -> {args.out_dir / 'hyps.jsonl'} "
          f"(RTF {result.rtf:.4f})")
    if result.failures:
        print(f"asr decode: skipped {len(result.failures)} utterance(s) (list in {args.out_dir / 'failures.tsv'})",
              file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="WER/CER of hypotheses against a manifest: wer.txt, results.json, summary.md")
    p.add_argument("--ref", required=True, type=Path, help="reference manifest (JSON lines with text, speaker)")
    p.add_argument("--hyp", required=True, type=Path, help="hyps.jsonl from `asr decode`, or a Kaldi text file")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--name", default=None, help="set name in the reports (default: the out-dir's name)")
    case = p.add_mutually_exclusive_group()
    case.add_argument("--normalize-case", dest="normalize_case", action="store_true", default=True,
                      help="compare case-insensitively (default)")
    case.add_argument("--keep-case", dest="normalize_case", action="store_false")
    p.add_argument("--keep-punctuation", action="store_true", help="do not strip punctuation")
    p.add_argument("--keep-apostrophes", action="store_true", help="keep apostrophes when stripping punctuation")
    p.set_defaults(func=_run_score)


def _run_score(args) -> int:
    from asr.scoring import ScoreOptions, score_files

    options = ScoreOptions(normalize_case=args.normalize_case, keep_punctuation=args.keep_punctuation,
                           keep_apostrophes=args.keep_apostrophes)
    r = score_files(args.ref, args.hyp, args.out_dir, options, args.name)
    print(f"score: WER {100 * r.wer:.2f}% CER {100 * r.cer:.2f}% on {r.num_utts} utterances, {r.num_words} words "
          f"(S {r.substitutions} D {r.deletions} I {r.insertions}) -> {args.out_dir / 'wer.txt'}")
    return 0


def _add_train_lm(sub) -> None:
    p = sub.add_parser("train-lm", help="train an LSTM language model for shallow fusion")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", type=Path, nargs="+", help="plain text file(s), one sentence per line")
    src.add_argument("--manifest", type=Path, nargs="+", help="manifest(s) whose text to use")
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer.model of the ASR model")
    p.add_argument("--out", required=True, type=Path, help="LM folder to write")
    p.add_argument("--valid", type=Path, nargs="+", default=None,
                   help="validation text files or manifests (*.jsonl); default: the training text")
    p.add_argument("-o", "--option", action="append", metavar="lm.KEY=VALUE", help="LMConfig override")
    p.set_defaults(func=_run_train_lm)


def _run_train_lm(args) -> int:
    from asr.config import from_dict
    from asr.lm import LMConfig, read_texts, train_lm
    from asr.tokenizer import Tokenizer

    cfg = from_dict(LMConfig, _overrides(args.option).get("lm", {}), "train-lm -o lm.*")
    valid = read_texts(args.valid) if args.valid else None
    summary = train_lm(read_texts(args.text or args.manifest), Tokenizer.load(args.tokenizer), args.out, cfg, valid)
    print(f"train-lm: {args.out} (valid perplexity {summary['valid_perplexity']:.2f}, "
          f"train perplexity {summary['train_perplexity']:.2f})")
    return 0


def _add_corpus(sub) -> None:
    p = sub.add_parser("corpus", help="synthesise a multi-speaker corpus in LibriSpeech layout")
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    s = csub.add_parser("synth", help="flite/espeak-ng corpus: <out>/<subset>/<spk>/<chapter>/*.flac + trans.txt",
                        description="Sizes: --utterances N or --hours H (estimated from words per sentence). "
                        "For a small CPU recipe keep sentences short (--max-words) and the vocabulary "
                        "small (--vocab N keeps sentences whose words are all among the N most frequent), "
                        "or speak random sequences of a small vocabulary (--word-sequences --vocab N).")
    s.add_argument("--out", required=True, type=Path, help="corpus root (SPEAKERS.TXT and one folder per subset)")
    s.add_argument("--utterances", type=_positive_int, default=0, help="total utterances over all subsets")
    s.add_argument("--hours", type=_nonneg_float, default=0.0, help="total hours (used when --utterances is 0)")
    s.add_argument("--dev-fraction", type=_nonneg_float, default=0.1)
    s.add_argument("--test-fraction", type=_nonneg_float, default=0.1)
    s.add_argument("--dev-utterances", type=_positive_int, default=0, help="explicit dev size (overrides fraction)")
    s.add_argument("--test-utterances", type=_positive_int, default=0, help="explicit test size (overrides fraction)")
    s.add_argument("--speakers", type=_positive_int, default=24, help="total speakers (20+ for a real corpus)")
    s.add_argument("--dev-speakers", type=_positive_int, default=0, help="default max(2, speakers/6)")
    s.add_argument("--test-speakers", type=_positive_int, default=0, help="default max(2, speakers/6)")
    s.add_argument("--heldout-voice", default="rms", help="flite voice heard only in test (kal16, awb, rms, slt)")
    s.add_argument("--subsets", default="train-clean,dev-clean,test-clean", help="train,dev,test folder names")
    s.add_argument("--voice-subset", default="",
                   help="a fourth subset (e.g. test-voice) spoken only by --heldout-voice, kept out of test")
    s.add_argument("--text", type=Path, default=None, help="sentences, one per line (default: WordNet examples)")
    s.add_argument("--min-words", type=_positive_int, default=1)
    s.add_argument("--max-words", type=_positive_int, default=30)
    s.add_argument("--vocab", type=_positive_int, default=0, help="keep sentences within the N most frequent words")
    s.add_argument("--word-sequences", action="store_true",
                   help="random sequences of --min-words..--max-words words from a --vocab-word vocabulary "
                        "(the most frequent words of the text, homophones removed) instead of its sentences")
    s.add_argument("--digits", action="store_true",
                   help="digit words (ZERO..NINE): half alone, half strings of --min-words..--max-words digits")
    s.add_argument("--min-phones", type=_positive_int, default=3,
                   help="--word-sequences: leave out words of fewer phones (default 3: no THE, OF, IN, A)")
    s.add_argument("--wide-voices", action="store_true", default=None,
                   help="wider pitch and rate ranges for the training voices (see SynthConfig.wide_voices)")
    s.add_argument("--formant-spread", type=_nonneg_float, default=None,
                   help="scale each speaker's frequencies by a factor in [1/(1+S), 1+S] (default 0: off)")
    s.add_argument("--noise-snr", type=float, default=None, help="add white noise at this SNR in dB")
    s.add_argument("--reverb-prob", type=_nonneg_float, default=0.0, help="probability of a synthetic room echo")
    s.add_argument("--speed-perturb", default="", help="speed factors drawn per utterance, e.g. 0.9,1.0,1.1")
    s.add_argument("--augment-subsets", default="train", help="which of train,dev,test get the augmentation")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--nj", type=_positive_int, default=2, help="parallel synthesis jobs")
    s.set_defaults(func=_run_corpus_synth)


def _voice_counts(voices: dict[str, int]) -> str:
    """``{"flite awb": 3, "espeak-ng en-us+m1": 2, "espeak-ng en-us+f2": 1}`` ->
    ``"flite awb 3, espeak-ng en-us 3 (2 variants)"``: flite voices one by one, espeak-ng per accent."""
    groups: dict[str, list[int]] = {}
    for voice, n in sorted(voices.items()):
        groups.setdefault(voice.split("+")[0], []).append(n)
    return ", ".join(f"{g} {sum(ns)}" + (f" ({len(ns)} variants)" if g.startswith("espeak") else "")
                     for g, ns in groups.items())


def _run_corpus_synth(args) -> int:
    from asr.config import from_dict
    from asr.data.synth import FAILURES_FILE, SynthConfig, synthesize_corpus
    from asr.errors import ConfigError

    subsets = args.subsets.split(",")
    if len(subsets) != 3:
        raise ConfigError("--subsets", "give three names: train,dev,test")
    cfg = from_dict(SynthConfig, dict(
        out_dir=str(args.out), utterances=args.utterances, hours=args.hours, dev_fraction=args.dev_fraction,
        test_fraction=args.test_fraction, dev_utterances=args.dev_utterances, test_utterances=args.test_utterances,
        speakers=args.speakers, dev_speakers=args.dev_speakers, test_speakers=args.test_speakers,
        heldout_voice=args.heldout_voice, train_subset=subsets[0], dev_subset=subsets[1], test_subset=subsets[2],
        voice_subset=args.voice_subset,
        text_file=str(args.text or ""), min_words=args.min_words, max_words=args.max_words, vocab=args.vocab,
        word_sequences=args.word_sequences, min_phones=args.min_phones, digits=args.digits,
        **{k: v for k, v in (("wide_voices", args.wide_voices), ("formant_spread", args.formant_spread))
           if v is not None},
        noise_snr=args.noise_snr, reverb_prob=args.reverb_prob, speed_perturb=args.speed_perturb,
        augment_subsets=args.augment_subsets, seed=args.seed, nj=args.nj), "corpus synth flags")
    report = synthesize_corpus(cfg)
    for subset, n in report.utterances.items():
        print(f"corpus: {args.out / subset}: {n} utterances, {report.seconds[subset] / 3600:.2f} h, "
              f"{report.speakers[subset]} speakers, {report.sentences[subset]} sentences")
        print(f"corpus: {subset} voices: {_voice_counts(report.voices.get(subset, {}))}")
    print(f"corpus: synthesised {report.synthesized} ({report.synth_audio_seconds:.0f} s of audio, "
          f"{report.speed:.1f} s audio per wall-second), {report.skipped_existing} already on disk, "
          f"{report.wall_seconds:.1f} s in all")
    if report.failures:
        print(f"asr corpus synth: {len(report.failures)} utterance(s) failed (list in {args.out / FAILURES_FILE})",
              file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _add_manifest(sub) -> None:
    p = sub.add_parser("manifest", help="import corpora to manifests, export to Kaldi, validate")
    msub = p.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    imp = msub.add_parser("import", help="LibriSpeech folder, Kaldi data dir, FSDD recordings or TSV -> manifest")
    isub = imp.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, what in (("librispeech", "LibriSpeech subset folder (or the root with --subset)"),
                       ("kaldi", "Kaldi data dir (wav.scp, text, [segments], [utt2spk])"),
                       ("fsdd", "FSDD recordings/ folder ({digit}_{speaker}_{take}.wav)"),
                       ("tsv", "TSV file of path<TAB>text lines"),
                       ("lhotse", "lhotse CutSet, cuts.jsonl or cuts.jsonl.gz (needs the asr[lhotse] extra)")):
        k = isub.add_parser(kind, help=what)
        k.add_argument("source", type=Path, help=what)
        k.add_argument("--out", required=True, type=Path, help="output manifest (JSON lines)")
        k.add_argument("--failures", type=Path, default=None, help="skipped items (default <out>.failures.tsv)")
        if kind == "librispeech":
            k.add_argument("--subset", default="", help="subset folder under SOURCE, e.g. dev-clean")
        if kind == "fsdd":
            k.add_argument("--split", choices=["train", "dev", "test", "all"], default="train",
                           help="official split: takes 0-4 test, 45-49 dev, the rest train")
            k.add_argument("--holdout-speaker", default="", help="this speaker's files are test, the rest train")
        else:
            k.add_argument("--no-normalize", action="store_true", help="keep transcripts as they are")
        k.set_defaults(func=_run_manifest_import)
    exp = msub.add_parser("export-kaldi", help="write a Kaldi data dir from a manifest")
    exp.add_argument("manifest", type=Path)
    exp.add_argument("out_dir", type=Path)
    exp.set_defaults(func=_run_manifest_export_kaldi)
    lh = msub.add_parser("export-lhotse", help="write a lhotse CutSet (.jsonl or .jsonl.gz) from a manifest")
    lh.add_argument("manifest", type=Path)
    lh.add_argument("out", type=Path, help="e.g. cuts.jsonl.gz")
    lh.set_defaults(func=_run_manifest_export_lhotse)
    val = msub.add_parser("validate", help="check audio, durations, text; split into valid entries and rejects")
    val.add_argument("manifest", type=Path)
    val.add_argument("--tokenizer", type=Path, default=None, help="check text against this tokenizer's alphabet")
    val.add_argument("--out", type=Path, default=None, help="valid entries")
    val.add_argument("--rejects", type=Path, default=None,
                     help="rejected lines: line, id, kind, reason (TSV; default <out>.rejects.tsv with --out)")
    val.add_argument("--duration-tolerance", type=_nonneg_float, default=0.1, help="seconds (default 0.1)")
    val.set_defaults(func=_run_manifest_validate)
    sp = msub.add_parser("speed-perturb", help="one copy of each entry per speed factor (Kaldi-style, sp<f>- ids)")
    sp.add_argument("manifest", type=Path)
    sp.add_argument("--out", required=True, type=Path)
    sp.add_argument("--factors", default="0.9,1.0,1.1", help="comma-separated speed factors (default 0.9,1.0,1.1)")
    sp.set_defaults(func=_run_manifest_speed_perturb)


def _run_manifest_import(args) -> int:
    from asr.config import from_dict
    from asr.data.importers import ImportConfig, import_manifest

    cfg = from_dict(ImportConfig, dict(
        kind=args.kind, source=str(args.source), out=str(args.out), failures=str(args.failures or ""),
        subset=getattr(args, "subset", ""), split=getattr(args, "split", "train"),
        holdout_speaker=getattr(args, "holdout_speaker", ""),
        normalize=not getattr(args, "no_normalize", False)), "manifest import flags")
    result = import_manifest(cfg)
    hours = sum(u.duration for u in result.utterances) / 3600
    print(f"manifest: {args.out} ({len(result.utterances)} utterances, {hours:.2f} h)")
    if result.failures:
        print(f"asr manifest import: skipped {len(result.failures)} item(s) (list in {cfg.failures_path})",
              file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _run_manifest_export_kaldi(args) -> int:
    from asr.data.importers import export_kaldi
    from asr.data.manifest import read_manifest

    utts = read_manifest(args.manifest)
    print(f"kaldi: {export_kaldi(utts, args.out_dir)} ({len(utts)} utterances)")
    return 0


def _run_manifest_export_lhotse(args) -> int:
    from asr.data.lhotse_io import export_lhotse
    from asr.data.manifest import read_manifest

    utts = read_manifest(args.manifest)
    print(f"lhotse: {export_lhotse(utts, args.out)} ({len(utts)} cuts)")
    return 0


def _run_manifest_speed_perturb(args) -> int:
    from asr.data.manifest import read_manifest, speed_perturbed, write_manifest
    from asr.errors import ConfigError

    utts = read_manifest(args.manifest)
    try:
        utts = speed_perturbed(utts, [float(f) for f in args.factors.split(",")])
    except ValueError as e:
        raise ConfigError("--factors", str(e)) from None
    write_manifest(args.out, utts)
    hours = sum(u.duration for u in utts) / 3600
    print(f"manifest: {args.out} ({len(utts)} utterances, {hours:.2f} h, speed factors {args.factors})")
    return 0


def _run_manifest_validate(args) -> int:
    from asr.config import from_dict
    from asr.data.validate import ValidateConfig, validate_manifest

    rejects = args.rejects or (args.out.with_name(args.out.name.removesuffix(".jsonl") + ".rejects.tsv")
                               if args.out else None)
    cfg = from_dict(ValidateConfig, dict(
        manifest=str(args.manifest), tokenizer=str(args.tokenizer or ""), out=str(args.out or ""),
        rejects=str(rejects or ""), duration_tolerance=args.duration_tolerance), "manifest validate flags")
    report = validate_manifest(cfg)
    print(report.summary())
    if not report.rejects:
        return 0
    if rejects:
        print(f"asr manifest validate: rejected {len(report.rejects)} line(s) (list in {rejects})", file=sys.stderr)
    else:
        for r in report.rejects:
            print(f"  line {r.line} {r.id}: {r.reason}", file=sys.stderr)
    return EXIT_PARTIAL


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a LAS model (torchrun --nproc-per-node N -m asr train ... for DDP)")
    p.add_argument("--config", type=Path, help="experiment YAML (sections features/specaug/model/train)")
    p.add_argument("--train-manifest", required=True, type=Path)
    p.add_argument("--valid-manifest", required=True, type=Path)
    p.add_argument("--tokenizer", required=True, type=Path, help="sentencepiece .model file")
    p.add_argument("--exp-dir", required=True, type=Path)
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    p.add_argument("--cmvn", type=Path, help="cmvn.json (e.g. from asr features); computed when absent")
    p.add_argument("-o", "--override", action="append", metavar="SECTION.KEY=VALUE", help="config override")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from asr.config import load_experiment_config
    from asr.train import train

    cfg = load_experiment_config(args.config, _overrides(args.override))
    result = train(cfg, args.train_manifest, args.valid_manifest, args.tokenizer, args.exp_dir,
                   resume=args.resume, cmvn_path=args.cmvn)
    if result.rank > 0:
        return 0
    print(f"train: {result.steps} steps, best dev loss {result.best_dev_loss:.4f}, "
          f"WER {100 * result.best_dev_wer:.2f}%; model folder {result.final_dir}")
    if result.failed_utts:
        print(f"train: skipped {result.failed_utts} unreadable utterance(s), see {args.exp_dir}/failures.tsv")
        return EXIT_PARTIAL
    return 0


def _add_average(sub) -> None:
    p = sub.add_parser("average", help="average checkpoints of an experiment into a model folder")
    p.add_argument("--exp-dir", required=True, type=Path)
    p.add_argument("--n", type=_positive_int, default=None,
                   help="number of checkpoints to average (default: train.average_n of the experiment's config)")
    p.add_argument("--mode", choices=["best", "last"], default="best",
                   help="best: lowest dev loss (exp/best, the default); last: newest training checkpoints")
    p.add_argument("--out", required=True, type=Path, help="output model folder, e.g. exp/final")
    p.set_defaults(func=_run_average)


def _run_average(args) -> int:
    from asr.checkpoint import average_model

    out = average_model(args.exp_dir, args.n, args.mode, args.out)
    print(f"average: wrote {out}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model folder to ONNX graphs that run on onnxruntime without torch")
    p.add_argument("--model", required=True, type=Path, help="model folder (model.pt, config.yaml, tokenizer.model)")
    p.add_argument("--out", required=True, type=Path, help="export folder to write")
    p.add_argument("--quantize", choices=["none", "int8"], default=None, help="int8: dynamic int8 weights")
    p.add_argument("--lm", type=Path, default=None, help="LM folder to export beside the model (lm_step.onnx)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from asr.config import replace
    from asr.export import ExportConfig, export_model

    cfg = replace(ExportConfig(), "export flags", overwrite=args.overwrite, lm_dir=str(args.lm or ""),
                  **({"quantize": args.quantize} if args.quantize else {}))
    out = export_model(args.model, args.out, cfg)
    print(f"export: wrote {out}")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP and WebSocket recognition server with a browser page (asr[serve])")
    p.add_argument("--model", required=True, type=Path, help="model folder (model.pt, config.yaml, tokenizer.model)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--max-sessions", type=_positive_int, default=None, help="streams and uploads at once; more get 503")
    p.add_argument("--workers", type=_positive_int, default=None, help="decoding threads sharing the model")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads per decoding thread")
    p.add_argument("--beam", type=_positive_int, default=None, help="beam size when a request names none")
    p.add_argument("--max-upload-mb", type=_nonneg_float, default=None, help="largest upload; larger get 413")
    p.add_argument("--max-stream-seconds", type=_nonneg_float, default=None, help="most audio one stream may send")
    p.add_argument("--idle-timeout", type=_nonneg_float, default=None, help="close a stream silent this long")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    try:
        from asr.serve.app import serve
    except ModuleNotFoundError as e:
        raise AsrError("asr serve", f"needs the serve extra: pip install 'asr[serve]' ({e.name} is missing)") from None
    from asr.config import replace
    from asr.serve import ServeConfig

    flags = {"host": args.host, "port": args.port, "max_sessions": args.max_sessions, "workers": args.workers,
             "threads": args.threads, "beam": args.beam, "max_stream_seconds": args.max_stream_seconds,
             "idle_timeout": args.idle_timeout,
             "max_upload_bytes": None if args.max_upload_mb is None else int(args.max_upload_mb * (1 << 20))}
    try:
        cfg = replace(ServeConfig(), "serve flags", **{k: v for k, v in flags.items() if v is not None})
    except ValueError as e:
        raise AsrError("asr serve", str(e)) from None
    serve(args.model, cfg, args.device)
    return 0


def _add_model_card(sub) -> None:
    p = sub.add_parser("model-card", help="put a recipe's WER table into a model folder's README.md")
    p.add_argument("model", type=Path, help="model folder (written by `asr average` or training)")
    p.add_argument("--results", required=True, type=Path, help="markdown WER table, e.g. EXP/RESULTS.md")
    p.set_defaults(func=_run_model_card)


def _run_model_card(args) -> int:
    from asr.model_card import update_results

    print(f"model-card: {update_results(args.model, args.results)}")
    return 0


# >>> command registrations: add your `_add_<name>` to this list (one line each) >>>
COMMANDS = [
    _add_corpus,
    _add_manifest,
    _add_features,
    _add_tokenizer,
    _add_results,
    _add_transcribe,
    _add_decode,
    _add_score,
    _add_train_lm,
    _add_train,
    _add_average,
    _add_export,
    _add_serve,
    _add_model_card,
]
# <<< command registrations <<<


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Listen-Attend-Spell speech recognition toolkit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``asr`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("asr: interrupted", file=sys.stderr)
        return 130
    except AsrError as e:
        if args.debug:
            raise
        print(f"asr: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if args.debug:
            raise
        print(f"asr: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
