"""fairseq's `dict.txt`: the symbol table that gives every token its id.

fairseq's Dictionary starts with four specials, then adds the file's lines in order; tasks such as
masked_lm and sentence_prediction append `<mask>` after loading. A line is `symbol count`, optionally
followed by the flag `#fairseq:overwrite`, which lets a symbol appear twice (the later id wins).

CamemBERT's dict.txt lists `<unk>`, `<s>` and `</s>` again so (its sentencepiece model's first pieces):
the padding and unknown ids stay 1 and 3 (fairseq keeps them as attributes), but the `<s>` and `</s>`
that RobertaHubInterface.encode writes around a sentence are looked up, and get the later ids, 5 and 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConversionError
from .files import read_input_file

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
MASK = "<mask>"
SPECIAL_SYMBOLS = (BOS, PAD, EOS, UNK)
BOS_ID, PAD_ID, EOS_ID, UNK_ID = range(4)
OVERWRITE_FLAG = "#fairseq:overwrite"
PADDING_SYMBOL_PREFIX = "madeupword"
MAX_SYMBOL_CHARS = 4096  # real symbols are words or pieces; a longer one is not a dict.txt line
PADDING_MULTIPLE = 8  # fairseq-preprocess pads its dictionary to a multiple of 8 with madeupword lines


@dataclass(frozen=True)
class Dictionary:
    """Symbols in fairseq id order: `symbols[i]` has id i."""

    path: Path
    symbols: tuple[str, ...]

    @property
    def file_symbol_count(self) -> int:
        return len(self.symbols) - len(SPECIAL_SYMBOLS)

    def __len__(self) -> int:
        return len(self.symbols)

    def index(self) -> dict[str, int]:
        """Symbol -> id as fairseq looks it up (for a repeated symbol, the last id)."""
        return {symbol: i for i, symbol in enumerate(self.symbols)}

    @property
    def bos_id(self) -> int:
        """The id of the `<s>` that fairseq's encode puts before a sentence (a looked-up symbol)."""
        return self._last_id(BOS)

    @property
    def eos_id(self) -> int:
        """The id of the `</s>` that fairseq's encode puts after a sentence and between two."""
        return self._last_id(EOS)

    def _last_id(self, symbol: str) -> int:
        """The id fairseq looks `symbol` up as (a repeated one's last), without building the whole index."""
        return len(self.symbols) - 1 - self.symbols[::-1].index(symbol)

    def with_mask(self) -> Dictionary:
        return Dictionary(self.path, (*self.symbols, MASK))


def read_dictionary(path: str | Path) -> Dictionary:
    """dict.txt as fairseq's Dictionary.add_from_file reads it, line for line."""
    path = Path(path)
    try:
        text = read_input_file(path, "a fairseq dict.txt").decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError("is not a UTF-8 text file, so not a fairseq dict.txt", path=path) from None
    symbols = list(SPECIAL_SYMBOLS)
    seen = set(symbols)
    for number, line in enumerate(_text_mode_lines(text), start=1):
        # fairseq: `line.rstrip().rsplit(" ", 1)`, the flag as a last field of its own, then int(count).
        fields = line.rstrip().rsplit(" ", 1)
        overwrite = len(fields) == 2 and fields[1] == OVERWRITE_FLAG
        if overwrite:
            fields = fields[0].rsplit(" ", 1)
        if len(fields) != 2 or not _is_count(fields[1]):
            raise ConversionError(
                f"line {number} is not 'symbol count': {line[:60]!r}", path=path,
                hint="fairseq refuses it too; is this fairseq's dict.txt?",
            )
        symbol = fields[0]
        if len(symbol) > MAX_SYMBOL_CHARS:
            raise ConversionError(f"line {number} holds a symbol of {len(symbol)} characters; no real dict.txt "
                                  f"symbol is longer than {MAX_SYMBOL_CHARS}", path=path,
                                  hint="is this fairseq's dict.txt?")
        if symbol in seen and not overwrite:
            raise ConversionError(
                f"line {number} repeats the symbol {symbol!r:.80} without {OVERWRITE_FLAG}", path=path,
                hint="fairseq itself refuses this dictionary",
            )
        seen.add(symbol)
        symbols.append(symbol)
    return Dictionary(path, tuple(symbols))


def _text_mode_lines(text: str) -> list[str]:
    """The lines Python's text mode reads (fairseq opens dict.txt so): only \n, \r\n and \r end a line;
    U+2028, U+0085, U+000B and U+000C, which str.splitlines() also splits at, are part of a line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines


def _is_count(field: str) -> bool:
    try:
        int(field)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class EmbeddingFit:
    """Where dict.txt's ids sit in the embedding's rows."""

    mask_id: int | None  # None: a model without <mask>
    padding_rows: int = 0  # madeupword rows a released dict.txt left out; they precede <mask>


def fit_embedding(dictionary: Dictionary, rows: int) -> EmbeddingFit:
    """fairseq builds the embedding with one row per id of the dictionary its task loaded: the specials,
    dict.txt's lines, then `<mask>` (add_symbol returns dict.txt's own id when it lists one). Any other
    pair fails to load in fairseq, and is refused here with the numbers."""
    size = len(dictionary)
    listed = dictionary.index().get(MASK)
    if listed is not None and rows == size:
        return EmbeddingFit(listed)
    if listed is None:
        if rows in (size, size + 1):
            return EmbeddingFit(size if rows > size else None)
        # A released dict.txt without fairseq-preprocess's padding lines: the rows between are padding.
        # A dict.txt that still lists some padding lines was not stripped of any.
        padding = rows - size - 1
        stripped = not any(symbol.startswith(PADDING_SYMBOL_PREFIX) for symbol in dictionary.symbols)
        if stripped and 1 <= padding < PADDING_MULTIPLE and (size + padding) % PADDING_MULTIPLE == 0:
            return EmbeddingFit(rows - 1, padding)
    ids = (f"{len(SPECIAL_SYMBOLS)} specials + {dictionary.file_symbol_count} lines"
           + (f" (+ {MASK})" if listed is None else "") + f" = {size + (listed is None)} ids")
    raise ConversionError(f"gives {ids} but the embedding has {rows} rows; fairseq refuses this pair",
                          path=dictionary.path, hint="pass the dict.txt the model was trained with (--dict)")


def labels_for_head(labels: Dictionary, num_classes: int) -> list[str]:
    """Class i of a fairseq classifier is the i-th symbol of its label dict after the specials.

    fairseq-preprocess pads label dicts with `madeupwordNNNN` entries, which are not classes.
    """
    symbols = labels.symbols[len(SPECIAL_SYMBOLS):]
    real = [symbol for symbol in symbols if not symbol.startswith(PADDING_SYMBOL_PREFIX)]
    if len(real) != num_classes and not (len(real) < num_classes <= len(symbols)):
        raise ConversionError(
            f"has {len(real)} labels but the classification head has {num_classes} outputs", path=labels.path,
            hint="pass the label dict this head was trained with (--label-dict)",
        )
    return list(symbols[:num_classes])
