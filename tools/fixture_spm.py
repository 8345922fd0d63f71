"""Sentencepiece models like XLM-R's `sentencepiece.bpe.model`, trained with the sentencepiece
library, and a reader for the options stored in a model file.

XLM-R's file is a UNIGRAM model despite its name. The trainer below spells out the library's
defaults, as XLM-R's model has them: `nmt_nfkc` normalization (NFKC plus rules that drop control
characters and turn odd spaces into spaces; stored in the model as a ~240 KB precompiled
character map), a dummy `▁` prefix, runs of whitespace squeezed, `<unk>`=0, `<s>`=1, `</s>`=2,
no `<pad>` piece, no byte fallback.

The model proto is read with a minimal protobuf wire-format decoder, so no protobuf package is
needed (field numbers from sentencepiece's `sentencepiece_model.proto`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import Any

import sentencepiece

MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
PIECE_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}


def train(lines: list[str], model_type: str, vocab_size: int, character_coverage: float) -> bytes:
    """A serialized model proto. Single-threaded, from an in-memory corpus: same input, same
    bytes (the model stores no file names)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model,
        model_type=model_type, vocab_size=vocab_size, character_coverage=character_coverage,
        # The library's defaults, as in XLM-R's model:
        normalization_rule_name="nmt_nfkc", add_dummy_prefix=True,
        remove_extra_whitespaces=True, split_by_whitespace=True, split_by_unicode_script=True,
        split_digits=False, byte_fallback=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message, in file order."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = varint()
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length = varint()
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def describe(model: bytes) -> dict[str, Any]:
    """The options a converter has to honour, read back from the model file itself."""
    pieces: list[tuple[str, float, str]] = []
    trainer: dict[int, Any] = {}
    normalizer: dict[int, Any] = {}
    for number, _, value in _fields(model):
        if number == 1:  # repeated SentencePiece {piece = 1, score = 2, type = 3 (default NORMAL)}
            piece = {n: v for n, _, v in _fields(value)}
            score = struct.unpack("<f", piece.get(2, bytes(4)))[0]
            pieces.append((piece[1].decode("utf-8"), score, PIECE_TYPES[piece.get(3, 1)]))
        elif number == 2:  # TrainerSpec
            trainer = {n: v for n, _, v in _fields(value)}
        elif number == 3:  # NormalizerSpec
            normalizer = {n: v for n, _, v in _fields(value)}
    # Unset proto2 fields take the defaults of sentencepiece_model.proto.
    coverage = struct.unpack("<f", trainer.get(10, struct.pack("<f", 0.9995)))[0]
    return {
        "model_type": MODEL_TYPES[trainer.get(3, 1)],
        "vocab_size": len(pieces),
        "character_coverage": round(coverage, 6),
        "byte_fallback": bool(trainer.get(35, 0)),
        "special_ids": {"unk_id": trainer.get(40, 0), "bos_id": trainer.get(41, 1),
                        "eos_id": trainer.get(42, 2),
                        "pad_id": _int32(trainer.get(43, (1 << 64) - 1))},
        "normalizer": normalizer.get(1, b"").decode(),
        "precompiled_charsmap_bytes": len(normalizer.get(2, b"")),
        "add_dummy_prefix": bool(normalizer.get(3, 1)),
        "remove_extra_whitespaces": bool(normalizer.get(4, 1)),
        "escape_whitespaces": bool(normalizer.get(5, 1)),
        "pieces": pieces,
    }


def _int32(value: int) -> int:
    """Negative int32 values are written as 64-bit two's complement varints."""
    return value - (1 << 64) if value >= 1 << 63 else value
