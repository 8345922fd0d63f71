"""subword-nmt models: `#version: 0.2` codes (two columns), applied like fastBPE (see fastbpe.py).

fairseq's subword_nmt encode is apply_bpe.BPE.process_line with the checkpoint's bpe_separator: the
line's ends lose ' ', '\\r' and '\\n', words are split on ' ', and every piece but a word's last ends
with the separator.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConversionError
from ..reader.dictionary import Dictionary
from .base import PreparedTokenizer, TokenizerFiles, TokenizerKind
from .fastbpe import CODES_FILE, CODES_HEADER, DEFAULT_SEPARATOR, has_version_header, prepare_word_bpe, read_codes


def read_subword_nmt_codes(path: Path) -> list[tuple[str, str, str]]:
    merges = []
    for number, line in enumerate(read_codes(path), start=1):
        if number == 1 and line.startswith(CODES_HEADER):
            continue
        fields = tuple(line.strip("\r\n ").split(" "))
        if len(fields) != 2:  # subword-nmt refuses such a file too
            raise ConversionError(f"line {number} is not a subword-nmt merge 'a b'", path=path,
                                  hint="a file with counts ('a b count') is fastBPE's: the model says subword_nmt")
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
