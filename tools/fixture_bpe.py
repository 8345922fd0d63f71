"""A small, deterministic trainer for GPT-2-format byte-level BPE files.

OpenAI's GPT-2 `encoder.json` / `vocab.bpe` cannot be downloaded here, so the fixtures carry
their own. The output uses exactly the same file formats:

* `encoder.json`: byte-level token string -> id. Ids 0..255 are the 256 single-byte symbols
  in `bytes_to_unicode()` order, then one id per merge in merge order, then `<|endoftext|>`.
* `vocab.bpe`: `#version: 0.2`, then one `left right` merge per line, best rank first, and a
  trailing newline (fairseq's reader drops the first and the last line of the file).

Pre-tokenization uses GPT-2's regular expression, so fairseq's own GPT-2 encoder reproduces the
segmentation the merges were learned on.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import regex

# The pre-tokenizer of GPT-2 (and of fairseq's gpt2_bpe_utils.Encoder).
GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
END_OF_TEXT = "<|endoftext|>"

Pair = tuple[str, str]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (insertion order = id order)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    shift = 0
    for b in range(256):
        if b not in byte_values:
            byte_values.append(b)
            code_points.append(256 + shift)
            shift += 1
    return {b: chr(c) for b, c in zip(byte_values, code_points)}


def pretokenize(lines: Iterable[str]) -> Counter[str]:
    """Count GPT-2 pre-tokens, each spelled in the byte-level alphabet."""
    byte_encoder = bytes_to_unicode()
    counts: Counter[str] = Counter()
    for line in lines:
        for piece in GPT2_PATTERN.findall(line):
            counts["".join(byte_encoder[b] for b in piece.encode("utf-8"))] += 1
    return counts


def train_bpe(lines: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[Pair]]:
    """Learn merges until the vocabulary (bytes + merges + <|endoftext|>) has `vocab_size` entries.

    Ties between equally frequent pairs go to the lexicographically smallest pair, so the result
    depends only on the input. A pair whose concatenation is already a token is skipped, which
    keeps one merge per new token as in OpenAI's files.
    """
    word_counts = pretokenize(lines)
    words = [list(word) for word in sorted(word_counts)]
    freqs = [word_counts[word] for word in sorted(word_counts)]

    pair_counts: Counter[Pair] = Counter()
    pair_words: defaultdict[Pair, set[int]] = defaultdict(set)
    for index, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freqs[index]
            pair_words[pair].add(index)

    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    merges: list[Pair] = []
    while len(vocab) < vocab_size - 1 and pair_counts:
        candidates = [(-count, pair) for pair, count in pair_counts.items() if count > 0]
        if not candidates:
            break
        _, best = min(candidates)
        merged = best[0] + best[1]
        affected = sorted(pair_words.pop(best, set()))
        del pair_counts[best]
        if merged in vocab:
            continue
        vocab[merged] = len(vocab)
        merges.append(best)

        # Re-count only the words that contained the merged pair.
        for index in affected:
            symbols, freq = words[index], freqs[index]
            for pair in zip(symbols, symbols[1:]):
                if pair != best:
                    pair_counts[pair] -= freq
            rebuilt = merge_pair(symbols, best)
            words[index] = rebuilt
            for pair in zip(rebuilt, rebuilt[1:]):
                pair_counts[pair] += freq
                pair_words[pair].add(index)

    vocab[END_OF_TEXT] = len(vocab)
    return vocab, merges


def merge_pair(symbols: list[str], pair: Pair) -> list[str]:
    """The symbols with every occurrence of `pair` merged into one, left to right (an
    occurrence that overlaps the one before is not merged)."""
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def write_gpt2_files(vocab: dict[str, int], merges: list[Pair], folder: Path) -> None:
    """Write `encoder.json` and `vocab.bpe` in OpenAI's formats."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder.json").write_text(json.dumps(vocab), encoding="utf-8")
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "vocab.bpe").write_text(text, encoding="utf-8")
