"""A sentencepiece model's precompiled charsmap, read to mend `tokenizers`' Precompiled normaliser.

The charsmap is a double-array trie (darts-clone) from UTF-8 strings to their normalised forms, and
sentencepiece normalises by taking the longest key at each position. `tokenizers`' Precompiled instead
looks a whole grapheme cluster (under 6 bytes) up and replaces all of it by its *shortest* key prefix,
so a cluster that merely starts with a key loses the rest: "\\u00a0\\u0301" (no-break space, acute)
becomes " ", and decomposed "e\\u0302\\u0323" (Vietnamese ệ) becomes "ê". Two steps before it mend
what they can (sentencepiece.py): NFC, when the charsmap composes as NFKC does, so decomposed text is
composed first; and a character the charsmap deletes, put after every one-character key that starts
no longer key, so that such a key ends its cluster (the inserted character is deleted again).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property

import numpy as np

_LABEL_MASK = 0x800000FF
_VALUE_MASK = 0x7FFFFFFF


def _offset(unit):
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


def _utf8_bytes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, bytes [n, 4]) of the UTF-8 encodings of `codes` (no surrogates among them)."""
    lengths = np.select([codes < 0x80, codes < 0x800, codes < 0x10000], [1, 2, 3], 4)
    encoded = np.zeros((len(codes), 4), dtype=np.int64)
    encoded[:, 0] = np.select([lengths == 1, lengths == 2, lengths == 3],
                              [codes, 0xC0 | codes >> 6, 0xE0 | codes >> 12], 0xF0 | codes >> 18)
    for position in range(1, 4):
        shift = 6 * (lengths - 1 - position)
        encoded[:, position] = np.where(position < lengths, 0x80 | (codes >> np.maximum(shift, 0)) & 0x3F, 0)
    return lengths, encoded


@dataclass(frozen=True)
class CharsMap:
    blob: bytes

    def __post_init__(self) -> None:
        if len(self.blob) < 8:
            raise ValueError("a charsmap shorter than its header")
        (trie_bytes,) = struct.unpack_from("<I", self.blob, 0)
        if not trie_bytes or trie_bytes % 4 or 4 + trie_bytes > len(self.blob):
            raise ValueError("a charsmap whose trie does not fit it")

    @cached_property
    def _units(self) -> np.ndarray:
        (trie_bytes,) = struct.unpack_from("<I", self.blob, 0)
        return np.frombuffer(self.blob, dtype="<u4", count=trie_bytes // 4, offset=4).astype(np.int64)

    @cached_property
    def _normalized(self) -> bytes:
        (trie_bytes,) = struct.unpack_from("<I", self.blob, 0)
        return self.blob[4 + trie_bytes:]

    def _value(self, position: int) -> str:
        end = self._normalized.find(b"\0", position)
        return self._normalized[position:end if end >= 0 else len(self._normalized)].decode("utf-8", "replace")

    def longest_match(self, text: str) -> tuple[int, str] | None:
        """(bytes matched, normalised form) of the longest key that starts `text`, as sentencepiece takes it."""
        units, node, found = self._units, int(_offset(self._units[0])), None
        for length, byte in enumerate(text.encode("utf-8"), start=1):
            node ^= byte
            if node >= len(units) or int(units[node]) & _LABEL_MASK != byte:
                break
            unit = int(units[node])
            node ^= int(_offset(unit))
            if unit >> 8 & 1:
                found = (length, self._value(int(units[node]) & _VALUE_MASK))
        return found

    def normalizes(self, text: str) -> str | None:
        """The normalised form of `text` when `text` is a key itself."""
        match = self.longest_match(text)
        return match[1] if match and match[0] == len(text.encode("utf-8")) else None

    @cached_property
    def lone_keys(self) -> str:
        """Every one-character key that starts no longer key, in code point order."""
        units = self._units
        codes = np.arange(0x110000, dtype=np.int64)
        codes = codes[(codes < 0xD800) | (codes > 0xDFFF)]
        lengths, encoded = _utf8_bytes(codes)
        node = np.full(len(codes), int(_offset(units[0])), dtype=np.int64)
        alive = np.ones(len(codes), dtype=bool)
        is_key = np.zeros(len(codes), dtype=bool)
        for position in range(4):
            active = alive & (lengths > position)
            child = np.where(active, node ^ encoded[:, position], 0)
            active &= child < len(units)
            unit = np.where(active, units[np.minimum(child, len(units) - 1)], 0)
            matched = active & ((unit & _LABEL_MASK) == encoded[:, position])
            alive = np.where(lengths > position, matched, alive)
            node = np.where(matched, child ^ _offset(unit), node)
            is_key |= matched & (lengths == position + 1) & ((unit >> 8 & 1) == 1)
        keys, nodes = codes[is_key], node[is_key]
        # A longer key continues from the key's node by a byte other than the leaf's 0.
        following = nodes[:, None] ^ np.arange(1, 256, dtype=np.int64)[None, :]
        inside = following < len(units)
        labels = np.where(inside, units[np.minimum(following, len(units) - 1)] & _LABEL_MASK, -1)
        continues = (labels == np.arange(1, 256)[None, :]).any(axis=1)
        return "".join(map(chr, keys[~continues].tolist()))
