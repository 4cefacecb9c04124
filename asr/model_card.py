"""Model cards: the README.md of every model folder.

A card says what the model was trained on (read from ``<exp>/data.json``, which training writes), its
size and config, the recipe's WER table once the recipe has scored it, and what it is for and not for.
The limits are drawn from the training data itself: how many distinct words its text holds and which
speakers (voices) it heard, so a reader sees at once that a model trained on 150 words of synthetic
voices is a demonstration, not a general recogniser.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from asr.io_utils import atomic_write_text

CARD_NAME = "README.md"
DATA_NAME = "data.json"  # training-data summary in the experiment folder
_RESULTS_START, _RESULTS_END = "<!-- results -->", "<!-- /results -->"
_MAX_LISTED = 12  # speakers named in full; more are counted


def summarize_training_data(manifest: str | Path) -> dict:
    """Counts of a training manifest: utterances, hours, speakers, distinct words and the commonest words."""
    from asr.data.manifest import read_manifest

    utts = read_manifest(manifest)
    words = Counter(w for u in utts for w in u.text.split())
    speakers = Counter(u.speaker for u in utts if getattr(u, "speaker", ""))
    return {
        "manifest": str(manifest),
        "utterances": len(utts),
        "hours": round(sum(u.duration for u in utts) / 3600, 3),
        "speakers": dict(speakers.most_common()),
        "distinct_words": len(words),
        "common_words": [w for w, _ in words.most_common(20)],
    }


def write_data_summary(exp_dir: str | Path, manifest: str | Path) -> Path:
    """Write ``<exp_dir>/data.json`` for the cards of the model folders made from this experiment."""
    path = Path(exp_dir) / DATA_NAME
    atomic_write_text(path, json.dumps(summarize_training_data(manifest), indent=1) + "\n")
    return path


def _data_section(data: dict | None) -> str:
    if not data:
        return "Not recorded (the experiment folder has no data.json).\n"
    speakers = data.get("speakers", {})
    named = ", ".join(f"{s} ({n})" for s, n in list(speakers.items())[:_MAX_LISTED])
    more = f" and {len(speakers) - _MAX_LISTED} more" if len(speakers) > _MAX_LISTED else ""
    return (f"- manifest: `{data.get('manifest', '?')}`\n"
            f"- {data.get('utterances', 0)} utterances, {data.get('hours', 0.0):.2f} h of audio\n"
            f"- {len(speakers)} speakers/voices: {named or 'not given'}{more}\n"
            f"- {data.get('distinct_words', 0)} distinct words in the transcripts; commonest: "
            f"{' '.join(data.get('common_words', [])[:10])}\n")


def _limits(data: dict | None) -> str:
    lines = ["Intended use: recognising speech like the training data, and as a worked example of the "
             "toolkit (training, decoding, transcription, serving).", ""]
    if data:
        lines.append(f"- It can only spell words made of its tokenizer's pieces, and has reliably learnt only "
                     f"the {data.get('distinct_words', 0)} distinct words of its training text: other words "
                     "come out as the nearest known ones.")
        lines.append(f"- It heard {len(data.get('speakers', {}))} speakers/voices. Synthetic (TTS) voices "
                     "do not stand for real speech: expect much higher error rates on real recordings, "
                     "other accents, noise and far-field audio.")
    lines.append("- Not for decisions about people, transcripts of record, or any safety-relevant use.")
    lines.append("- Confidences are the model's posteriors, not calibrated probabilities of being correct.")
    return "\n".join(lines) + "\n"


def render_card(folder: str | Path, exp_config, tokenizer, num_params: int, data: dict | None,
                results: str | None = None) -> str:
    """The card's markdown. ``results``: the recipe's WER table (markdown) or None."""
    from asr import __version__

    m = exp_config.model
    kind = "LAS with joint CTC" if m.ctc_weight > 0 else "LAS"
    return "\n".join([
        f"# Model card: {Path(folder).name}",
        "",
        f"{kind}: pyramidal BiLSTM listener, attention speller over {tokenizer.vocab_size} sentencepiece "
        f"pieces; {num_params / 1e6:.2f} M parameters; {exp_config.features.sample_rate} Hz audio, "
        f"{exp_config.features.n_mels} log-mel bins. Written by asr {__version__}.",
        "",
        "## Training data",
        "",
        _data_section(data),
        "## Results",
        "",
        _RESULTS_START,
        (results.strip() if results else "No WER table yet: the recipe adds it after scoring "
         "(`asr model-card DIR --results EXP/RESULTS.md`)."),
        _RESULTS_END,
        "",
        "## Intended use and limits",
        "",
        _limits(data),
        "## Config",
        "",
        "```yaml",
        exp_config.to_yaml().rstrip(),
        "```",
        "",
    ])


def write_model_card(folder: str | Path, exp_config, tokenizer, state: dict, exp_dir: str | Path | None = None,
                     results: str | None = None) -> Path:
    """Write ``<folder>/README.md``; ``state`` is the model's state dict (for its size), ``exp_dir`` the
    experiment whose data.json describes the training data."""
    data = None
    if exp_dir is not None and (Path(exp_dir) / DATA_NAME).is_file():
        try:
            data = json.loads((Path(exp_dir) / DATA_NAME).read_text(encoding="utf-8"))
        except ValueError:
            data = None
    num_params = sum(int(t.numel()) for k, t in state.items() if not k.startswith("cmvn"))
    path = Path(folder) / CARD_NAME
    atomic_write_text(path, render_card(folder, exp_config, tokenizer, num_params, data, results))
    return path


def update_results(folder: str | Path, results_path: str | Path) -> Path:
    """Put the WER table of ``results_path`` (markdown) into the card of ``folder``.

    Raises CheckpointError when the folder has no card, ConfigError when the table cannot be read.
    """
    from asr.errors import CheckpointError, ConfigError

    card = Path(folder) / CARD_NAME
    try:
        text = card.read_text(encoding="utf-8")
    except OSError:
        raise CheckpointError(card, "no model card (write the folder with `asr average` first)") from None
    try:
        table = Path(results_path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(str(results_path), f"cannot read results: {e.strerror}") from None
    if _RESULTS_START not in text or _RESULTS_END not in text:
        raise CheckpointError(card, "card has no results section")
    head, rest = text.split(_RESULTS_START, 1)
    tail = rest.split(_RESULTS_END, 1)[1]
    atomic_write_text(card, f"{head}{_RESULTS_START}\n{table}\n{_RESULTS_END}{tail}")
    return card
