"""fairseq's text -> ids pipeline, written from fairseq's semantics, independent of `tokenizers`.

`RobertaHubInterface.encode(a, *more)` builds "<s> " + bpe(a) + " </s>" (+ " </s> " + bpe(b) + " </s>"
per further sentence), splits it on whitespace and looks every token up in dict.txt, unknown -> <unk>.
bpe() is OpenAI's GPT-2 encoder (ids written as strings; hf_byte_bpe is the same algorithm over its own
vocab.json), sentencepiece's EncodeAsPieces, fastBPE / subword-nmt word BPE with "@@" separators, or BERT's WordPiece.
"""

from __future__ import annotations

import functools
import io
import unicodedata
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


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """One BPE step: every occurrence of `pair`, left to right, becomes one symbol."""
    merged, i = [], 0
    while i < len(symbols):
        if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def fairseq_gpt2_merges(vocab_bpe: bytes) -> list[tuple[str, ...]]:
    """The merges as fairseq's get_encoder reads vocab.bpe: text mode (universal newlines), then
    `bpe_data.split("\\n")[1:-1]`, each line split on whitespace (a line that is not a pair never merges)."""
    text = io.TextIOWrapper(io.BytesIO(vocab_bpe), encoding="utf-8").read()
    return [tuple(line.split()) for line in text.split("\n")[1:-1]]


class Gpt2Encoder:
    """OpenAI's GPT-2 BPE encoder: text -> GPT-2 ids."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, ...]], *,
                 add_prefix_space: bool = False) -> None:
        self.encoder = encoder
        self.add_prefix_space = add_prefix_space  # tokenizers' ByteLevel: a space before a text without one
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
            parts = merge_pair(parts, best)
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        ids = []
        if self.add_prefix_space and not text.startswith(" "):
            text = " " + text
        for piece in GPT2_SPLIT.findall(text):
            word = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(word))
        return ids

    def bpe_string(self, text: str) -> str:
        return " ".join(map(str, self.encode(text)))


END_OF_WORD = "</w>"


class WordBpeEncoder:
    """fastBPE's `apply` and subword-nmt's `process_line`: word by word BPE, "@@" after non-final pieces.

    Both split the line on ' ' only, so any other whitespace (tab, newline, U+00A0) is a character of
    its word. fastBPE reads a word's characters only up to a NUL: the character before it and the rest
    of the word become one symbol. subword-nmt first strips ' ', '\\r' and '\\n' off the line's ends.
    """

    def __init__(self, merges: list[tuple[str, str]], separator: str = "@@", *, fastbpe: bool) -> None:
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, pair in enumerate(merges):
            self.ranks.setdefault(pair, rank)  # a repeated merge keeps its first rank, as both libraries do
        self.separator = separator
        self.fastbpe = fastbpe
        self._bpe = functools.lru_cache(maxsize=100_000)(self._merge)

    def _symbols(self, word: str) -> list[str]:
        if self.fastbpe and "\0" in word:
            nul = word.index("\0")
            start = max(nul - 1, 0)
            return [*word[:start], word[start:]]
        return list(word)

    def _merge(self, word: str) -> tuple[str, ...]:
        symbols = self._symbols(word)
        symbols[-1] += END_OF_WORD
        while len(symbols) > 1:
            ranked = [(self.ranks[pair], pair) for pair in zip(symbols, symbols[1:]) if pair in self.ranks]
            if not ranked:
                break
            symbols = merge_pair(symbols, min(ranked)[1])
        symbols[-1] = symbols[-1].removesuffix(END_OF_WORD)
        return tuple(symbol for symbol in symbols if symbol) or ("",)

    def pieces(self, text: str) -> list[str]:
        """The line's pieces, separator included: what fairseq then splits on whitespace."""
        line = text if self.fastbpe else text.strip(" \r\n")
        pieces = []
        for word in line.split(" "):
            if not word:
                continue
            parts = self._bpe(word) if len(word) > 1 or self.fastbpe else (word,)
            pieces += [part + self.separator for part in parts[:-1]] + [parts[-1]]
        return pieces

    def bpe_string(self, text: str) -> str:
        pieces = " ".join(self.pieces(text))
        if self.fastbpe:
            return pieces
        # process_line gives the stripped ends back (fairseq's encode_line drops them again).
        lead = len(text) - len(text.lstrip(" \r\n"))
        trail = len(text) - len(text.rstrip(" \r\n"))
        return text[:lead] + pieces + (text[len(text) - trail:] if trail and trail != len(text) else "")


class WordPieceEncoder:
    """transformers' BertTokenizer(vocab.txt, do_lower_case).tokenize, which fairseq's --bpe bert runs:
    BERT's Python basic tokenizer, then greedy longest-prefix WordPiece."""

    SPECIALS = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")  # kept whole, never lower-cased
    SPECIAL_SPLIT = regex.compile("(" + "|".join(map(regex.escape, SPECIALS)) + ")")

    def __init__(self, pieces: list[str], *, lowercase: bool, max_word_chars: int = 100) -> None:
        self.vocab = set(pieces)
        self.lowercase = lowercase
        self.max_word_chars = max_word_chars

    @staticmethod
    def _is_control(char: str) -> bool:
        return char not in "\t\n\r" and unicodedata.category(char).startswith("C")

    @staticmethod
    def _is_whitespace(char: str) -> bool:
        return char in " \t\n\r" or unicodedata.category(char) == "Zs"

    @staticmethod
    def _is_punctuation(char: str) -> bool:
        code = ord(char)
        if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
            return True
        return unicodedata.category(char).startswith("P")

    @staticmethod
    def _is_cjk(code: int) -> bool:
        return any(low <= code <= high for low, high in (
            (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
            (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))

    def _words(self, text: str) -> list[str]:
        if self.lowercase:
            text = "".join(char.lower() for char in text)  # tokenize() lower-cases one character at a time
        cleaned = []
        for char in text:
            if char in "\x00\ufffd" or self._is_control(char):
                continue
            cleaned.append(" " if self._is_whitespace(char) else char)
        text = "".join(f" {char} " if self._is_cjk(ord(char)) else char for char in cleaned)
        text = unicodedata.normalize("NFC", text)
        words = []
        for token in text.split():
            if token in self.SPECIALS:  # BasicTokenizer's never_split: a special made by the cleaning stays whole
                words.append(token)
                continue
            if self.lowercase:
                token = token.lower()
                token = "".join(char for char in unicodedata.normalize("NFD", token)
                                if unicodedata.category(char) != "Mn")
            current: list[str] = []
            for char in token:
                if self._is_punctuation(char):
                    if current:
                        words.append("".join(current))
                        current = []
                    words.append(char)
                else:
                    current.append(char)
            if current:
                words.append("".join(current))
        return words

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_word_chars:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def specials_made_by_cleaning(self, text: str) -> bool:
        """A special (such as "[MA\u200bSK]" once the cleaning drops the zero-width space) that only the
        cleaning or NFC spells out: BERT keeps it whole, where the text had no special token."""
        return any(word in self.SPECIALS for part in self.SPECIAL_SPLIT.split(text)
                   if part not in self.SPECIALS for word in self._words(part))

    def pieces(self, text: str) -> list[str]:
        pieces = []
        for part in self.SPECIAL_SPLIT.split(text):
            if part in self.SPECIALS:
                pieces.append(part)
            else:
                for word in self._words(part):
                    pieces += self._wordpiece(word)
        return pieces

    def bpe_string(self, text: str) -> str:
        return " ".join(self.pieces(text))


def fairseq_encode(bpe: Callable[[str], str], index: dict[str, int], sentence: str, *more: str) -> list[int]:
    """RobertaHubInterface.encode: frame with <s>/</s>, split on whitespace, look up, unknown -> <unk>."""
    line = "<s> " + bpe(sentence) + " </s>"
    for extra in more:
        line += " </s> " + bpe(extra) + " </s>"
    return [index.get(token, UNK_ID) for token in line.split()]
