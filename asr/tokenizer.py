"""Sentencepiece subword tokenizer, with the special ids defined once for the whole toolkit."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from asr.errors import TokenizerError

BLANK_ID = 0  # CTC blank; also the padding value of input token tensors
UNK_ID = 1
SOS_ID = 2  # start and end of sentence share one id, as in ESPnet
EOS_ID = SOS_ID
IGNORE_ID = -1  # padding of target sequences; ignored by the losses

BLANK_PIECE, UNK_PIECE, SOS_EOS_PIECE = "<blank>", "<unk>", "<sos/eos>"


@dataclass(frozen=True)
class TokenizerConfig:
    """Settings of ``asr tokenizer`` (sentencepiece training)."""

    vocab_size: int = 256  # counts the three special pieces
    model_type: str = "unigram"  # unigram | bpe | char | word


class Tokenizer:
    """A thin wrapper over a sentencepiece model whose ids 0, 1 and 2 are blank, unk and sos/eos."""

    def __init__(self, model_path: str | Path):
        import sentencepiece as spm

        self.model_path = Path(model_path)
        try:
            data = self.model_path.read_bytes()
        except FileNotFoundError:
            raise TokenizerError(self.model_path, "tokenizer model not found") from None
        except OSError as e:
            raise TokenizerError(self.model_path, f"cannot read tokenizer model ({e})") from None
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except Exception:  # sentencepiece raises RuntimeError or OSError depending on version
            raise TokenizerError(self.model_path, "not a valid sentencepiece model") from None
        if self._sp.get_piece_size() < 4 or self._sp.id_to_piece(SOS_ID) != SOS_EOS_PIECE:
            raise TokenizerError(self.model_path, "sentencepiece model lacks the <blank>/<unk>/<sos/eos> ids 0-2")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a trained tokenizer model (``.model`` file)."""
        return cls(path)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        model_prefix: str | Path,
        vocab_size: int,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
    ) -> Tokenizer:
        """Train sentencepiece on ``texts`` and write ``<model_prefix>.model`` and ``.vocab``.

        ``vocab_size`` counts the three special pieces. If the text is too small for the requested
        size, sentencepiece's hard limit is lowered to what the text supports.
        """
        import sentencepiece as spm

        if model_type not in ("unigram", "bpe", "char", "word"):
            raise TokenizerError(model_type, "model_type must be unigram, bpe, char or word")
        lines = [t.strip() for t in texts if t and t.strip()]
        if not lines:
            raise TokenizerError(model_prefix, "no text to train the tokenizer on")
        prefix = Path(model_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        model = io.BytesIO()
        kwargs = dict(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=BLANK_ID,
            pad_piece=BLANK_PIECE,
            unk_id=UNK_ID,
            unk_piece=UNK_PIECE,
            bos_id=SOS_ID,
            bos_piece=SOS_EOS_PIECE,
            eos_id=-1,
            hard_vocab_limit=False,
            minloglevel=2,
            num_threads=1,
            shuffle_input_sentence=False,
        )
        try:
            spm.SentencePieceTrainer.train(**kwargs)
        except RuntimeError as e:
            raise TokenizerError(prefix, f"sentencepiece training failed: {str(e).splitlines()[-1]}") from None
        from asr.io_utils import atomic_write_bytes

        model_path = prefix.with_name(prefix.name + ".model")
        atomic_write_bytes(model_path, model.getvalue())
        tok = cls(model_path)
        vocab = "".join(f"{tok.id_to_piece(i)}\t{i}\n" for i in range(tok.vocab_size))
        prefix.with_name(prefix.name + ".vocab").write_text(vocab, encoding="utf-8")
        return tok

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Encode text to ids, with no sos/eos added."""
        return list(self._sp.encode(text, out_type=int))

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text; blank, sos/eos and ids out of range are dropped."""
        keep = [int(i) for i in ids if UNK_ID <= int(i) < self.vocab_size and int(i) != SOS_ID]
        return self._sp.decode(keep)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def pieces(self, text: str) -> list[str]:
        return list(self._sp.encode(text, out_type=str))

    def alphabet(self) -> set[str]:
        """Characters the tokenizer can spell without <unk> (plus space)."""
        chars = {" "}
        for i in range(3, self.vocab_size):
            chars.update(self.id_to_piece(i).replace("\u2581", ""))
        return chars

    def copy_to(self, folder: str | Path) -> Path:
        """Copy the model file into ``folder`` as ``tokenizer.model`` and return its path."""
        dest = Path(folder) / "tokenizer.model"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.resolve() != self.model_path.resolve():
            shutil.copyfile(self.model_path, dest)
        return dest
