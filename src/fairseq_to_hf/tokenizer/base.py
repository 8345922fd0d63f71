"""What every tokenizer kind provides: its files, how to build it, and what verifies it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tokenizers import AddedToken, Tokenizer, processors

from ..reader.dictionary import BOS, EOS, MASK, SPECIAL_SYMBOLS, Dictionary
from ..reader.folder import TokenizerFile, TokenizerFiles
from .vocab import TokenVocabulary


@dataclass
class PreparedTokenizer:
    """A tokenizer ready to write, with the reference segmentation that verifies it."""

    kind: str
    files: TokenizerFiles
    tokenizer: Tokenizer
    vocabulary: TokenVocabulary
    reference_bpe: Callable[[str], str]  # fairseq's bpe.encode: text -> space-separated symbols
    dictionary: Dictionary
    details: dict = field(default_factory=dict)
    # Lines where a difference is the kind's known limitation (TokenizerKind.known_difference).
    known_difference: Callable[[str], bool] = lambda text: False
    # Written beside tokenizer.json (name -> text), e.g. vocab.txt and bpe.codes for PhobertTokenizer.
    extra_files: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # extra tokenizer_config.json entries

    def summary(self) -> dict:
        vocabulary = self.vocabulary
        return {
            "kind": self.kind,
            "source_files": dict(self.files.paths),
            "vocab_size": vocabulary.size,
            "fairseq_vocab_rows": vocabulary.model_rows,
            "alias_count": len(vocabulary.aliases),
            "aliases": {token: vocabulary.ids[token] for token in vocabulary.aliases},
            "unknown_tokens_left_out": len(vocabulary.unknown),
            "mask_id": vocabulary.mask_id,
            **self.details,
        }


@dataclass(frozen=True)
class TokenizerKind:
    """One entry of the registry (tokenizer/__init__.py)."""

    name: str
    fairseq_bpe: str  # the checkpoint's cfg["bpe"]["_name"] / args.bpe for models trained with it
    files: tuple[TokenizerFile, ...]  # all needed
    # (files, dict.txt, embedding rows, the checkpoint's bpe settings) -> PreparedTokenizer
    prepare: Callable[[TokenizerFiles, Dictionary, int, dict], PreparedTokenizer]
    card: str  # what the model card says about the tokenizer
    # Why some lines may differ from fairseq (None: none do); the report and card say it.
    known_difference: str | None = None
    # When several kinds share files and the checkpoint does not say: does this kind claim them?
    claims: Callable[[TokenizerFiles], bool] = lambda files: True


def character_class(ranges: Iterable[tuple[int, int]]) -> str:
    """A regex class (Oniguruma's syntax, as `tokenizers.Regex` reads it) of the code point ranges
    (first, last), given in increasing order; adjacent ones are joined."""
    merged: list[list[int]] = []
    for first, last in ranges:
        if merged and merged[-1][1] == first - 1:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    return "[" + "".join(f"\\x{{{first:x}}}" + (f"-\\x{{{last:x}}}" if last > first else "")
                         for first, last in merged) + "]"


def frame_like_fairseq(tokenizer: Tokenizer, vocabulary: TokenVocabulary) -> Tokenizer:
    """<s> A </s> and <s> A </s> </s> B </s>, as RobertaHubInterface.encode frames sentences; the specials
    are never split, and <mask> takes the space on its left."""
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} {EOS} $B {EOS}",
        special_tokens=[(BOS, vocabulary.ids[BOS]), (EOS, vocabulary.ids[EOS])],
    )
    specials = [AddedToken(symbol, special=True, normalized=False) for symbol in SPECIAL_SYMBOLS]
    if vocabulary.mask_id is not None:
        specials.append(AddedToken(MASK, special=True, lstrip=True, normalized=False))
    tokenizer.add_special_tokens(specials)
    return tokenizer
