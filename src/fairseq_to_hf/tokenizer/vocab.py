"""Token ids of a converted tokenizer: fairseq's ids, plus aliases for tokens fairseq maps to <unk>.

fairseq first segments text (GPT-2 BPE or sentencepiece), then looks every token up in dict.txt; a
token that is not there becomes <unk>. A `tokenizers` vocabulary gives each token one id, so a token
missing from dict.txt that the segmentation still needs (a BPE merge is built from it or yields it;
every sentencepiece piece) keeps its own *alias* id after the model's vocabulary. The converted model
gives alias rows <unk>'s embedding and an MLM bias far below any real logit, so it computes exactly
what fairseq computes, and the alias ids count as <unk> when ids are compared with fairseq's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConversionError
from ..reader.dictionary import (BOS, EOS, MASK, PAD, PAD_ID, PADDING_SYMBOL_PREFIX, SPECIAL_SYMBOLS, UNK, UNK_ID,
                                 Dictionary, fit_embedding)

# dict.txt is built from the segmentation's output, so (nearly) every symbol is one it produces; rare
# exceptions are symbols added by hand. Another model's files produce few of them.
MIN_SYMBOLS_PRODUCED = 0.9


@dataclass
class TokenVocabulary:
    """Token string -> id for the whole converted tokenizer, contiguous from 0."""

    ids: dict[str, int]
    model_rows: int  # rows of the checkpoint's embedding; alias ids start here
    aliases: list[str] = field(default_factory=list)  # tokens with alias ids, in id order
    unknown: list[str] = field(default_factory=list)  # segmentation tokens left out: they become <unk>
    mask_id: int | None = None

    @property
    def size(self) -> int:
        return self.model_rows + len(self.aliases)


def assign_ids(
    dictionary: Dictionary,
    model_rows: int,
    segment_tokens: list[tuple[str, str]],
    needed: set[str],
    *,
    produced_as: str,
    segmenter_path: Path,
    produced: set[str] | None = None,
) -> TokenVocabulary:
    """Builds the vocabulary.

    `segment_tokens` lists (token string, dict.txt symbol) for every token the segmenter can emit;
    `needed` holds the tokens the segmenter cannot do without (merge inputs and outputs for BPE).
    `produced_as` says what those symbols are, for the refusal of files that are not the model's own;
    `produced`: the dict.txt symbols the segmenter can emit, when not all of `segment_tokens`' are.
    """
    if produced is None:
        produced = {symbol for _, symbol in segment_tokens}
    check_symbols_produced(dictionary, produced, produced_as, segmenter_path)
    symbols = dictionary.symbols
    fairseq_ids = dictionary.index()
    mask_id = fit_embedding(dictionary, model_rows).mask_id  # dict.txt's own <mask>, or the row after it
    # Padding and unknown tokens keep fairseq's own ids; <s> and </s> those its encode looks up.
    ids: dict[str, int] = {BOS: dictionary.bos_id, PAD: PAD_ID, EOS: dictionary.eos_id, UNK: UNK_ID}
    if mask_id is not None:
        ids[MASK] = mask_id
    taken = set(ids.values())
    missing: list[str] = []
    for token, symbol in segment_tokens:
        if token in ids:
            continue  # a segment token spelled like a special: the special wins, as in fairseq
        fairseq_id = fairseq_ids.get(symbol)
        if fairseq_id is None or fairseq_id in taken and fairseq_id >= len(SPECIAL_SYMBOLS):
            missing.append(token)
            continue
        ids[token] = fairseq_id
        taken.add(fairseq_id)
    aliases = [token for token in missing if token in needed]
    unknown = [token for token in missing if token not in needed]
    for offset, token in enumerate(aliases):
        ids[token] = model_rows + offset
    _fill_unreachable_ids(ids, symbols, model_rows)
    return TokenVocabulary(ids=ids, model_rows=model_rows, aliases=aliases, unknown=unknown, mask_id=mask_id)


def _fill_unreachable_ids(ids: dict[str, int], symbols: tuple[str, ...], model_rows: int) -> None:
    """Names the ids no token reaches (madeupword padding, extra embedding rows) so ids stay contiguous."""
    used = set(ids.values())
    for fairseq_id in range(model_rows):
        if fairseq_id in used:
            continue
        name = symbols[fairseq_id] if fairseq_id < len(symbols) else f"<unused{fairseq_id}>"
        while name in ids:
            name = f"<fairseq:{fairseq_id}>" if not name.startswith("<fairseq:") else name + "_"
        ids[name] = fairseq_id


def check_symbols_produced(dictionary: Dictionary, produced: set[str], produced_as: str, path: Path) -> None:
    """Refuses tokenizer files that cannot be the ones dict.txt was built with."""
    symbols = [symbol for symbol in dictionary.symbols[len(SPECIAL_SYMBOLS):]
               if symbol != MASK and not symbol.startswith(PADDING_SYMBOL_PREFIX)]
    count = sum(symbol in produced for symbol in symbols)
    if count < MIN_SYMBOLS_PRODUCED * len(symbols):
        raise ConversionError(
            f"only {count} of {len(symbols)} dict.txt symbols are {produced_as} {Path(path).name}; it is not "
            "this model's tokenizer", path=path,
            hint="pass the tokenizer files the model was trained with, or none to convert the weights alone",
        )
