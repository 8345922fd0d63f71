"""The few settings of a sentencepiece ModelProto that encoding depends on, read from its wire format.

The sentencepiece library exposes pieces, scores and types, but not the normalizer settings; those sit
in the serialized proto (sentencepiece_model.proto: ModelProto.trainer_spec = 2, .normalizer_spec = 3).
Reading a handful of scalar fields needs no protobuf runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConversionError, library_message

MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass(frozen=True)
class SpmSettings:
    model_type: str = "unigram"
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True  # proto2 defaults of NormalizerSpec
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    user_defined_symbols: tuple[str, ...] = ()  # pieces of type USER_DEFINED: matched whole before segmenting


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data: bytes) -> dict[int, object]:
    """Last value of each field number in one message (scalars as int, length-delimited as bytes)."""
    return {number: value for number, value in _all_fields(data)}


def _all_fields(data: bytes) -> list[tuple[int, object]]:
    """Every (field number, value) of one message in order, repeated fields included."""
    fields: list[tuple[int, object]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
        elif wire_type == 1:
            value, position = data[position:position + 8], position + 8
        elif wire_type == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
        elif wire_type == 5:
            value, position = data[position:position + 4], position + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        fields.append((number, value))
    return fields


USER_DEFINED = 4  # SentencePiece.Type


def _user_defined(model: bytes) -> tuple[str, ...]:
    """ModelProto.pieces = 1, each SentencePiece {piece = 1, score = 2, type = 3}."""
    pieces = (_fields(value) for number, value in _all_fields(model) if number == 1 and isinstance(value, bytes))
    return tuple(bytes(piece.get(1, b"")).decode("utf-8", "replace")  # type: ignore[arg-type]
                 for piece in pieces if piece.get(3) == USER_DEFINED)


def read_spm_settings(serialized: bytes, path: object) -> SpmSettings:
    try:
        model = _fields(serialized)
        trainer = _fields(model.get(2, b""))  # type: ignore[arg-type]
        normalizer = _fields(model.get(3, b""))  # type: ignore[arg-type]
        user_defined = _user_defined(serialized)
    except ValueError as error:
        raise ConversionError(f"is not a readable sentencepiece model ({library_message(error)})", path=path) from None
    return SpmSettings(
        model_type=MODEL_TYPES.get(int(trainer.get(3, 1)), "unknown"),  # type: ignore[arg-type]
        byte_fallback=bool(trainer.get(35, 0)),
        treat_whitespace_as_suffix=bool(trainer.get(24, 0)),
        normalizer_name=bytes(normalizer.get(1, b"")).decode("utf-8", "replace"),  # type: ignore[arg-type]
        precompiled_charsmap=bytes(normalizer.get(2, b"")),  # type: ignore[arg-type]
        add_dummy_prefix=bool(normalizer.get(3, 1)),
        remove_extra_whitespaces=bool(normalizer.get(4, 1)),
        escape_whitespaces=bool(normalizer.get(5, 1)),
        user_defined_symbols=user_defined,
    )
