"""fastBPE models (PhoBERT, BERTweet): `bpe.codes` merges applied word by word, "@@" on non-final pieces.

fairseq's fastbpe encode is fastBPE's `apply`: it splits the line on ' ', segments every word with the
merges (`</w>` glued to its last character), writes "@@" after every piece but the word's last, and
fairseq looks each piece ("xx@@" or "xx") up in dict.txt. The tokenizer is a `tokenizers` BPE with
`</w>` as end-of-word suffix: a piece without the suffix is a non-final one, so its id is the one of
"piece@@", and "piece</w>" has the id of "piece".

Whitespace other than ' ' (tab, newline, U+00A0) is a character of its word for fastBPE, and fairseq
then splits the pieces again on any whitespace: "a\tb" gives "a@@ \t@@ b", so "a@@ @@ b". The
tokenizer splits on ' ' only and keeps such characters in the word; they become one character the
codes never merge, whose token has the id of the bare separator "@@". What no `tokenizers` pipeline can
reproduce: a word ending in such whitespace ("a\t" gives "a@@", the whitespace piece vanishes), and a
piece that merges hold whitespace inside (fairseq cuts it in two).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from ..errors import ConversionError, library_message
from ..reader.dictionary import MASK, SPECIAL_SYMBOLS, Dictionary
from .base import PreparedTokenizer, TokenizerFile, TokenizerFiles, TokenizerKind, frame_like_fairseq
from .vocab import TokenVocabulary, assign_ids

END_OF_WORD = "</w>"
DEFAULT_SEPARATOR = "@@"
# Python's whitespace (fairseq splits with re \s+); none above U+3000.
PYTHON_WHITESPACE = "".join(chr(code) for code in range(0x3001) if chr(code).isspace())
CODES_FILE = TokenizerFile("bpe_codes", ("bpe.codes", "bpecodes", "code"),
                           "fastBPE / subword-nmt BPE codes")
CODES_HEADER = "#version"


def read_codes(path: Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"is not a readable BPE codes file ({library_message(error)})", path=path) from None
    return text.rstrip("\n").split("\n")


def has_version_header(files: TokenizerFiles) -> bool:
    try:
        with open(files.bpe_codes, encoding="utf-8", errors="replace") as handle:
            return handle.readline().startswith(CODES_HEADER)
    except OSError:
        return False


def read_fastbpe_codes(path: Path) -> list[tuple[str, str, str]]:
    """fastBPE's codes: `a b count` per line, split on ' ' only (a merge may hold U+00A0)."""
    merges = []
    first_line: dict[tuple[str, str], int] = {}
    repeated = []
    for number, line in enumerate(read_codes(path), start=1):
        fields = line.split(" ")
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise ConversionError(f"line {number} is not a merge 'a b count'", path=path)
        if (fields[0], fields[1]) in first_line:
            repeated.append(f"'{fields[0]} {fields[1]}' on lines {first_line[fields[0], fields[1]]} and {number}")
        first_line.setdefault((fields[0], fields[1]), number)
        merges.append((fields[0], fields[1], fields[2] if len(fields) > 2 else "0"))
    if repeated:
        # fastBPE asserts each merge is new; built without asserts, as pip builds it, the repeat takes a
        # rank that ties with the next merge's: no ids to reproduce.
        raise ConversionError(f"repeats {len(repeated)} merge{'s' if len(repeated) > 1 else ''} "
                              f"({'; '.join(repeated[:3])}), which fastBPE does not apply in a defined order",
                              path=path, hint="fastBPE's learnbpe writes each merge once: is the file damaged?")
    return merges


def prepare_fastbpe(files: TokenizerFiles, dictionary: Dictionary, model_rows: int, bpe: dict) -> PreparedTokenizer:
    codes = read_fastbpe_codes(files.bpe_codes)
    return prepare_word_bpe(KIND, files, dictionary, model_rows, codes, DEFAULT_SEPARATOR, fastbpe=True)


def prepare_word_bpe(kind: TokenizerKind, files: TokenizerFiles, dictionary: Dictionary, model_rows: int,
                     codes: list[tuple[str, str, str]], separator: str, *, fastbpe: bool) -> PreparedTokenizer:
    """The tokenizer of a fastBPE or subword-nmt model; `codes` are (a, b, count) in rank order."""
    from ..reference.encode import WordBpeEncoder

    # A repeated merge keeps its first rank, as in subword-nmt (fastBPE codes with one are refused when read).
    merges = list(dict.fromkeys((a, b) for a, b, _ in codes))
    merged_chars = {char for a, b in merges for char in a + b}
    # Whitespace the codes never merge all acts alike: one character stands for it.
    free_whitespace = [char for char in PYTHON_WHITESPACE if char != " " and char not in merged_chars]
    vocabulary = word_bpe_vocabulary(dictionary, model_rows, merges, separator, free_whitespace[:1],
                                     files.bpe_codes)
    tokenizer = build_word_bpe_tokenizer(vocabulary, merges, free_whitespace, fastbpe=fastbpe)
    reference = WordBpeEncoder(merges, separator, fastbpe=fastbpe)

    free_pieces = {char + separator for char in free_whitespace}

    def known_difference(text: str) -> bool:
        """A piece holding whitespace that the tokenizer cannot give fairseq's ids: one that fairseq's
        whitespace split drops (a word ending in a tab) or cuts in two, or merged with other characters."""
        return any(piece not in free_pieces and piece.split() != [piece] for piece in reference.pieces(text))

    # vocab.txt (dict.txt's symbols) and bpe.codes in fastBPE's format: what PhobertTokenizer reads.
    vocab_txt = "".join(f"{symbol} 1\n" for symbol in dictionary.symbols[len(SPECIAL_SYMBOLS):]
                        if symbol != MASK)
    codes_txt = "".join(f"{a} {b} {count}\n" for a, b, count in codes)
    return PreparedTokenizer(
        kind.name, files, tokenizer, vocabulary, reference.bpe_string, dictionary,
        details={"merges": len(merges), "separator": separator},
        known_difference=known_difference,
        extra_files={"vocab.txt": vocab_txt, "bpe.codes": codes_txt},
    )


def word_bpe_vocabulary(dictionary: Dictionary, model_rows: int, merges: list[tuple[str, str]],
                        separator: str, whitespace: list[str], codes_path: Path) -> TokenVocabulary:
    def symbol_of(token: str) -> str | None:
        """The dict.txt symbol fairseq looks the piece up as, after splitting it on whitespace."""
        text = token.removesuffix(END_OF_WORD) if token.endswith(END_OF_WORD) else token + separator
        parts = text.split()
        return parts[0] if len(parts) == 1 else None  # None: no single id can stand for it

    segment_tokens = []
    for symbol in dictionary.symbols[len(SPECIAL_SYMBOLS):]:
        token = symbol.removesuffix(separator) if symbol.endswith(separator) else symbol + END_OF_WORD
        if token and token != END_OF_WORD:
            segment_tokens.append((token, symbol))
    needed = {part for a, b in merges for part in (a, b, a + b)}
    segment_tokens += [(token, symbol_of(token)) for token in (*sorted(needed), *whitespace)]
    # What the codes can emit: a merge's part or result, or a single character (with or without </w>).
    produced = {symbol_of(token) for token in needed} | {
        symbol for _, symbol in segment_tokens if symbol and len(symbol.removesuffix(separator)) == 1}
    return assign_ids(dictionary, model_rows, segment_tokens, needed, produced_as="producible by the codes in",
                      segmenter_path=codes_path, produced=produced)


def build_word_bpe_tokenizer(vocabulary: TokenVocabulary, merges: list[tuple[str, str]],
                             free_whitespace: list[str], *, fastbpe: bool) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary.ids, merges=merges, unk_token="<unk>", fuse_unk=False,
                                     end_of_word_suffix=END_OF_WORD))
    steps = []
    if fastbpe:
        # fastBPE stops reading characters at a NUL: the character before it and the rest of the word
        # are one symbol, never a merge nor in dict.txt, so <unk>; one NUL stands for it.
        steps.append(normalizers.Replace(Regex("[^ ]?\\x00[^ ]*"), "\x00"))
    else:
        steps.append(normalizers.Replace(Regex("\\A[ \\r\\n]+|[ \\r\\n]+\\z"), ""))  # process_line's strip
    if len(free_whitespace) > 1:
        pattern = "[" + "".join(f"\\x{{{ord(char):x}}}" for char in free_whitespace[1:]) + "]"
        steps.append(normalizers.Replace(Regex(pattern), free_whitespace[0]))
    # A word that is one whitespace character is one piece, whitespace only, which fairseq drops.
    lone = "[" + "".join(f"\\x{{{ord(char):x}}}" for char in PYTHON_WHITESPACE if char != " ") + "]"
    steps.append(normalizers.Replace(Regex(f"(?<![^ ]){lone}(?![^ ])"), ""))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(" +"), behavior="removed")
    tokenizer.decoder = decoders.BPEDecoder(suffix=END_OF_WORD)
    return frame_like_fairseq(tokenizer, vocabulary)


KIND = TokenizerKind(
    name="fastbpe",
    fairseq_bpe="fastbpe",
    files=(CODES_FILE,),
    prepare=prepare_fastbpe,
    card="fastBPE codes applied word by word with `@@` continuation marks (as PhoBERT and BERTweet); "
         "`vocab.txt` and `bpe.codes` also load with `PhobertTokenizer` / `BertweetTokenizer`",
    known_difference="a word ends in a tab, newline or other non-space whitespace (fairseq drops that piece), "
                     "or a merged piece holds such whitespace (fairseq cuts it in two)",
    claims=lambda files: not has_version_header(files),
)
