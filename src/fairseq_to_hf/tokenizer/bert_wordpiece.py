"""BERT WordPiece models (fairseq's `--bpe bert`): a BERT `vocab.txt`, pieces looked up in dict.txt.

fairseq's bert encode is `BertTokenizer(vocab.txt, do_lower_case=not bpe_cased).tokenize(text)` joined
by spaces: BERT's own specials ("[CLS]", "[MASK]", ...) are kept whole; the rest is lower-cased
character by character when uncased, cleaned (NUL, U+FFFD and every character of a Unicode category C*
dropped, whitespace made a space), CJK ideographs get spaces around them, NFC, split on whitespace,
accents stripped when uncased (NFD, then every Mn dropped), every punctuation character split off, and
each word cut into the longest vocab.txt prefixes ("##" on every piece but the first; "[UNK]" for a
word that cannot be cut or is over 100 characters). The pieces are then looked up in dict.txt.

`tokenizers`' BertNormalizer and BertPreTokenizer do those steps with Rust's Unicode tables, which are
not Python's: they keep unassigned code points and some format characters that Python drops, strip
enclosing marks, and miss about a hundred punctuation characters. So the cleaning, the accents and the
punctuation are regexes over the character classes of Python's `unicodedata`, as BERT's Python code
sees them, and the CJK ideographs are split off by BERT's own list of blocks.
"""

from __future__ import annotations

import functools
import io
import unicodedata
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from ..errors import ConversionError, library_message
from ..reader.dictionary import Dictionary
from ..reader.files import read_input_file
from .base import PreparedTokenizer, TokenizerFile, TokenizerFiles, TokenizerKind, character_class, frame_like_fairseq
from .vocab import TokenVocabulary, assign_ids

# BertTokenizer's special tokens: never split, never lower-cased, looked up as they are.
BERT_SPECIALS = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")
BERT_UNK = "[UNK]"
CONTINUATION = "##"
MAX_WORD_CHARACTERS = 100  # BertTokenizer's max_input_chars_per_word
# BasicTokenizer._is_chinese_char's blocks (BertNormalizer's own list lacks part of them).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
CJK_CLASS = character_class(sorted(CJK_RANGES))
VOCAB_FILE = TokenizerFile("bpe_vocab_file", ("vocab.txt",), "BERT WordPiece vocab.txt (fairseq's --bpe bert)")


def read_wordpiece_vocab(path: Path) -> list[str]:
    """vocab.txt as BertTokenizer's load_vocab reads it: text mode (universal newlines), a token per line."""
    data = read_input_file(path, "a BERT vocab.txt")
    try:
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
    except UnicodeDecodeError as error:
        raise ConversionError(f"is not a readable BERT vocab.txt ({library_message(error)})", path=path) from None
    tokens = [token for token in dict.fromkeys(text.split("\n")) if token]  # an empty line never matches
    if not tokens:
        raise ConversionError("is an empty BERT vocab.txt", path=path)
    return tokens


def is_wordpiece_vocab(files: TokenizerFiles) -> bool:
    """A BERT vocab.txt has one token per line; the vocab.txt of PhobertTokenizer is `token count` lines."""
    try:
        with open(files.bpe_vocab_file, encoding="utf-8", errors="replace") as handle:
            lines = [handle.readline().rstrip("\n") for _ in range(50)]
    except OSError:
        return False
    return sum(" " in line.strip() for line in lines if line) <= len(lines) // 10


@functools.cache
def _category_runs() -> tuple[tuple[int, int, str], ...]:
    """(first, last, category) of the runs of code points of one Python Unicode category; ASCII and
    U+FFFD one by one, as BERT's tests single some of them out."""
    runs: list[list] = []
    for code, category in enumerate(map(unicodedata.category, map(chr, range(0x110000)))):
        if runs and runs[-1][2] == category and runs[-1][1] == code - 1 and code > 127 and code not in (0xFFFD, 0xFFFE):
            runs[-1][1] = code
        else:
            runs.append([code, code, category])
    return tuple((first, last, category) for first, last, category in runs if category != "Cs")


def _is_ascii_punctuation(code: int) -> bool:
    return 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126


# BERT's Python character tests (transformers' _is_control, _is_whitespace, _is_punctuation and the Mn
# of _run_strip_accents) over (code point, category).
CHARACTER_CLASSES = {
    "control": lambda code, category: (category[0] == "C" and code not in (9, 10, 13)) or code in (0, 0xFFFD),
    # ' ' for _is_whitespace; str.split also splits words at the line and paragraph separators
    "whitespace": lambda code, category: code in (9, 10, 13, 32) or category in ("Zs", "Zl", "Zp"),
    "nonspacing_mark": lambda code, category: category == "Mn",
    "punctuation": lambda code, category: _is_ascii_punctuation(code) or category[0] == "P",
}


@functools.cache
def python_character_class(name: str) -> str:
    """A regex class of the characters BERT's Python code puts in `name`, by Python's unicodedata."""
    wanted = CHARACTER_CLASSES[name]
    return character_class((first, last) for first, last, category in _category_runs() if wanted(first, category))


def build_wordpiece_tokenizer(vocabulary: TokenVocabulary, wordpiece_ids: dict[str, int], *,
                              lowercase: bool) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(vocab=wordpiece_ids, unk_token=BERT_UNK,
                                           continuing_subword_prefix=CONTINUATION,
                                           max_input_chars_per_word=MAX_WORD_CHARACTERS))
    steps = [
        normalizers.Replace(Regex(python_character_class("control")), ""),
        normalizers.Replace(Regex(python_character_class("whitespace")), " "),
    ]
    if lowercase:  # then NFD and no Mn: BertTokenizer's NFC before lower-casing changes nothing then
        steps += [normalizers.Lowercase(), normalizers.NFD(),
                  normalizers.Replace(Regex(python_character_class("nonspacing_mark")), "")]
    else:
        steps.append(normalizers.NFC())
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" +"), behavior="removed"),
        # BERT puts spaces around them before NFC and accent stripping, which leave them as they are
        pre_tokenizers.Split(Regex(CJK_CLASS), behavior="isolated"),
        pre_tokenizers.Split(Regex(python_character_class("punctuation")), behavior="isolated"),
    ])
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION)
    # BERT's specials are found in the raw text, before lower-casing, as BertTokenizer finds them.
    tokenizer.add_tokens([AddedToken(special, normalized=False) for special in BERT_SPECIALS])
    return frame_like_fairseq(tokenizer, vocabulary)


def prepare_bert_wordpiece(files: TokenizerFiles, dictionary: Dictionary, model_rows: int,
                           bpe: dict) -> PreparedTokenizer:
    from ..reference.encode import WordPieceEncoder

    lowercase = not bpe.get("bpe_cased", False)
    pieces = read_wordpiece_vocab(files.bpe_vocab_file)
    tokens = list(dict.fromkeys([*pieces, *BERT_SPECIALS]))
    matchable = set(tokens)
    # Every piece can be a longest match, so every one keeps an id (an alias when dict.txt lacks it).
    vocabulary = assign_ids(dictionary, model_rows, [(token, token) for token in tokens], set(tokens),
                            produced_as="pieces of", segmenter_path=files.bpe_vocab_file)
    # What WordPiece may match: the pieces alone. Every other name (fairseq's specials, dict.txt symbols
    # no piece gives) holds a bracket, which never reaches WordPiece (it is punctuation).
    wordpiece_ids: dict[str, int] = {}
    for token, token_id in vocabulary.ids.items():
        name = token
        while name not in matchable and "<" not in name or name in wordpiece_ids:
            name = f"<{name}>"
        wordpiece_ids[name] = token_id
    tokenizer = build_wordpiece_tokenizer(vocabulary, wordpiece_ids, lowercase=lowercase)
    reference = WordPieceEncoder(pieces, lowercase=lowercase)
    return PreparedTokenizer(KIND.name, files, tokenizer, vocabulary, reference.bpe_string, dictionary,
                             details={"lowercase": lowercase, "pieces": len(pieces)},
                             known_difference=reference.specials_made_by_cleaning)


KIND = TokenizerKind(
    name="bert",
    fairseq_bpe="bert",
    files=(VOCAB_FILE,),
    prepare=prepare_bert_wordpiece,
    card="BERT WordPiece (`vocab.txt`, fairseq's `--bpe bert`), with BERT's own cleaning, accent stripping "
         "and punctuation split as its Python tokenizer does them",
    claims=is_wordpiece_vocab,
    known_difference="the text spells a BERT special token ([MASK], [CLS], ...) with characters BERT's cleaning "
                     "removes inside it (a zero-width space, a soft hyphen), which BERT then keeps whole",
)
