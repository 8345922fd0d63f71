"""fairseq's text -> ids pipeline, written from fairseq's semantics, independent of `tokenizers`.

`RobertaHubInterface.encode(a, *more)` builds "<s> " + bpe(a) + " </s>" (+ " </s> " + bpe(b) + " </s>"
per further sentence), splits it on whitespace and looks every token up in dict.txt, unknown -> <unk>.
bpe() is OpenAI's GPT-2 encoder (ids written as strings) or sentencepiece's EncodeAsPieces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import regex

from ..reader.dictionary import UNK_ID

# OpenAI's GPT-2 pre-tokenisation pattern, as in fairseq's gpt2_bpe_utils.
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class Gpt2Encoder:
    """OpenAI's GPT-2 BPE encoder: text -> GPT-2 ids."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]) -> None:
        self.encoder = encoder
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_map = byte_to_unicode()
        self._bpe = functools.lru_cache(maxsize=100_000)(self._merge)

    def _merge(self, word: str) -> tuple[str, ...]:
        parts = list(word)
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in GPT2_SPLIT.findall(text):
            word = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(word))
        return ids

    def bpe_string(self, text: str) -> str:
        return " ".join(map(str, self.encode(text)))


def fairseq_encode(bpe: Callable[[str], str], index: dict[str, int], sentence: str, *more: str) -> list[int]:
    """RobertaHubInterface.encode: frame with <s>/</s>, split on whitespace, look up, unknown -> <unk>."""
    line = "<s> " + bpe(sentence) + " </s>"
    for extra in more:
        line += " </s> " + bpe(extra) + " </s>"
    return [index.get(token, UNK_ID) for token in line.split()]
