"""subword-nmt models: `#version: 0.2` codes (two columns), applied like fastBPE (see fastbpe.py).

fairseq's subword_nmt encode is apply_bpe.BPE.process_line with the checkpoint's bpe_separator: the
line's ends lose ' ', '\\r' and '\\n', words are split on ' ', and every piece but a word's last ends
with the separator.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConversionError, UnsupportedModelError
from ..reader.dictionary import Dictionary
from .base import PreparedTokenizer, TokenizerFiles, TokenizerKind
from .fastbpe import CODES_FILE, CODES_HEADER, DEFAULT_SEPARATOR, has_version_header, prepare_word_bpe, read_codes


COUNTS_HINT = "a file with counts ('a b count') is fastBPE's: the model says subword_nmt"


def read_subword_nmt_codes(path: Path) -> list[tuple[str, str, str]]:
    lines = read_codes(path)
    version = lines[0].split()[-1] if lines and lines[0].startswith(CODES_HEADER) and lines[0].split() else None
    if version is None and lines and len(lines[0].strip("\r\n ").split(" ")) != 2:
        raise ConversionError("line 1 is not a subword-nmt merge 'a b'", path=path, hint=COUNTS_HINT)
    if version is None or re.sub(r"(\.0+)*$", "", version) != "0.2":
        # apply_bpe reads a file without the header as version 0.1, whose end-of-word symbol is a
        # symbol of its own: other merges than the two-column ones this tokenizer applies.
        raise UnsupportedModelError(
            f"is subword-nmt version {version or '0.1 (no #version header)'} codes; only version 0.2 converts",
            path=path, hint="codes learned by subword-nmt since 2017 begin with '#version: 0.2'")
    merges = []
    for number, line in enumerate(lines, start=1):
        if number == 1:
            continue
        fields = tuple(line.strip("\r\n ").split(" "))
        if len(fields) != 2:  # subword-nmt refuses such a file too
            raise ConversionError(f"line {number} is not a subword-nmt merge 'a b'", path=path, hint=COUNTS_HINT)
        merges.append((fields[0], fields[1], "1"))
    return merges


def prepare_subword_nmt(files: TokenizerFiles, dictionary: Dictionary, model_rows: int,
                        bpe: dict) -> PreparedTokenizer:
    codes = read_subword_nmt_codes(files.bpe_codes)
    separator = str(bpe.get("bpe_separator") or DEFAULT_SEPARATOR)
    return prepare_word_bpe(KIND, files, dictionary, model_rows, codes, separator, fastbpe=False)


KIND = TokenizerKind(
    name="subword_nmt",
    fairseq_bpe="subword_nmt",
    files=(CODES_FILE,),
    prepare=prepare_subword_nmt,
    card="subword-nmt codes applied word by word with `@@` continuation marks; `vocab.txt` and `bpe.codes` "
         "(rewritten in fastBPE's format) also load with `PhobertTokenizer`",
    known_difference="a word ends in a tab, newline or other non-space whitespace (fairseq drops that piece), "
                     "or a merged piece holds such whitespace (fairseq cuts it in two)",
    claims=has_version_header,
)
