"""Sentencepiece models (XLM-R, CamemBERT and custom ones): pieces mapped through dict.txt.

fairseq's SentencepieceBPE.encode is `" ".join(sp.EncodeAsPieces(text))`, and every piece is then looked
up in dict.txt. A custom model's dict.txt is in frequency order, so ids come from dict.txt, never from
the .model file. The tokenizer reproduces sentencepiece's normalisation (its precompiled charsmap and
whitespace rules) and segmentation (unigram lattice or BPE merges by score) with `tokenizers`.

Characters the .model does not know: sentencepiece emits a run of them as one piece, which fairseq
looks up by its surface string (so `]` may have an id of its own while `]]` is <unk>). dict.txt symbols
made only of such characters are added as pieces, so those runs get fairseq's id; a run that is not in
dict.txt becomes one <unk>, as in fairseq. What `tokenizers` cannot express: a run made of several
known symbols (`]` and `]]` in dict.txt, text `]]]`) is split where sentencepiece keeps it whole.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from ..errors import ConversionError, UnsupportedModelError, library_message
from ..reader.dictionary import MASK, SPECIAL_SYMBOLS, Dictionary
from ..reader.files import read_input_file
from .base import PreparedTokenizer, TokenizerFile, TokenizerFiles, TokenizerKind, character_class, frame_like_fairseq
from .charsmap import CharsMap
from .spm_proto import SpmSettings, read_spm_settings
from .vocab import TokenVocabulary, assign_ids

SPIECE_UNDERLINE = "▁"
UNK_PENALTY = 10.0  # sentencepiece scores an unknown character at (lowest piece score - 10)
UNREACHABLE_SCORE = -1e6  # specials and placeholders: never chosen by the lattice over real pieces
HALFWIDTH_VOICING = "\uff9e\uff9f"  # halfwidth katakana voiced and semi-voiced sound marks (category Lm)
PYTHON_WHITESPACE = tuple(chr(code) for code in range(0x3001) if chr(code).isspace())  # none above U+3000


def prepare_sentencepiece(files: TokenizerFiles, dictionary: Dictionary, model_rows: int,
                          bpe: dict) -> PreparedTokenizer:
    import sentencepiece

    path = Path(files.sentencepiece_model)
    processor = sentencepiece.SentencePieceProcessor()
    serialized = read_input_file(path, "a sentencepiece model")
    try:
        processor.LoadFromSerializedProto(serialized)
    except (OSError, RuntimeError, TypeError) as error:
        raise ConversionError(f"is not a sentencepiece model ({library_message(error)})", path=path) from None
    settings = read_spm_settings(processor.serialized_model_proto(), path)
    if settings.model_type not in ("unigram", "bpe"):
        raise UnsupportedModelError(f"is a sentencepiece {settings.model_type} model; only unigram and bpe "
                                    "models convert", path=path)
    charsmap = None
    if settings.precompiled_charsmap:
        try:
            charsmap = CharsMap(settings.precompiled_charsmap)
        except ValueError as error:
            raise ConversionError(f"has a normalisation rule table this tool cannot read ({library_message(error)})",
                                  path=path, hint="is the sentencepiece model damaged?") from None
    if settings.treat_whitespace_as_suffix:
        raise UnsupportedModelError("puts whitespace at the end of pieces (treat_whitespace_as_suffix), which "
                                    "the written tokenizer cannot reproduce", path=path)
    if settings.byte_fallback:
        # Its byte pieces (<0x3C>) and the specials' vocabulary entries meet where text spells "<s>".
        raise UnsupportedModelError("spells unknown characters as byte pieces (byte_fallback), which the "
                                    "written tokenizer does not reproduce exactly", path=path)
    unmatched = [symbol for symbol in settings.user_defined_symbols
                 if settings.model_type == "bpe" or SPIECE_UNDERLINE in symbol]
    if unmatched:
        # sentencepiece matches them whole before segmenting; tokenizers' BPE merges cannot build them, and
        # a symbol holding the dummy prefix's "▁" takes it from the text.
        raise UnsupportedModelError(f"has user-defined symbols ({', '.join(map(repr, unmatched[:5]))}) that "
                                    f"the written tokenizer does not match as sentencepiece does", path=path)

    scores: dict[str, float] = {}
    for piece_id in range(processor.GetPieceSize()):
        if processor.IsControl(piece_id) or processor.IsUnknown(piece_id) or processor.IsUnused(piece_id):
            continue
        scores[processor.IdToPiece(piece_id)] = processor.GetScore(piece_id)
    unknown_score = min(scores.values(), default=0.0) - UNK_PENALTY
    runs = unknown_runs_in(dictionary, scores, single_characters_only=settings.model_type == "bpe")
    for run in runs:
        # Longer runs score slightly better than their parts, so a whole run found in dict.txt wins.
        scores[run] = unknown_score * len(run) + 0.1 * (len(run) - 1)
    for char in special_token_characters_unknown_to(scores):
        # Text such as "<s>" must segment as sentencepiece does even when "<" is unknown to the model:
        # without a piece of its own, the lattice would pick the special's vocabulary entry over unknown
        # characters. Such a piece gets its dict.txt id, or an alias of <unk> as fairseq gives it.
        scores[char] = unknown_score
    segment_tokens = [(piece, piece) for piece in scores]
    # Pieces of the model, and runs of characters it does not know (which it emits whole).
    vocabulary = assign_ids(dictionary, model_rows, segment_tokens, needed=set(scores), produced_as="pieces of",
                            segmenter_path=path)
    tokenizer = build_sentencepiece_tokenizer(vocabulary, scores, settings, charsmap, whitespace_kept_by(processor))

    def reference_bpe(text: str) -> str:
        return " ".join(processor.EncodeAsPieces(text))

    def unknown_run_quirk(text: str) -> bool:
        """True when sentencepiece emits a run of two or more unknown characters as one piece."""
        unk_id = processor.unk_id()
        return any(len(piece) > 1 and processor.PieceToId(piece) == unk_id
                   for piece in processor.EncodeAsPieces(text))

    def normalised_otherwise(text: str) -> bool:
        """True where the charsmap normaliser, mended as it is (charsmap.py), still cuts a grapheme cluster
        short: where the longest key at a character is longer than the one it maps alone ("e\u0302\u0301",
        halfwidth "ﾃﾞ", "Ａ\u0301"). Only text with such a cluster (a mark) is excused: any other
        difference of the normalisers is the tokenizer's error."""
        if not any(unicodedata.category(char).startswith("M") or char in HALFWIDTH_VOICING for char in text):
            return False
        ours = tokenizer.normalizer.normalize_str(text).lstrip(SPIECE_UNDERLINE)
        return ours != processor.normalize(text).lstrip(SPIECE_UNDERLINE)

    details = {"model_type": settings.model_type, "unknown_character_runs_in_dict": runs}
    return PreparedTokenizer(KIND.name, files, tokenizer, vocabulary, reference_bpe, dictionary, details,
                             lambda text: unknown_run_quirk(text) or normalised_otherwise(text))


def unknown_runs_in(dictionary: Dictionary, pieces: dict[str, float], *, single_characters_only: bool) -> list[str]:
    """dict.txt symbols made only of characters that no piece of the model contains."""
    known = {char for piece in pieces for char in piece}
    runs = []
    for symbol in dictionary.symbols[len(SPECIAL_SYMBOLS):]:
        if symbol in pieces or not symbol or any(char in known or char.isspace() for char in symbol):
            continue
        if single_characters_only and len(symbol) > 1:
            continue
        runs.append(symbol)
    return runs


def special_token_characters_unknown_to(pieces: dict[str, float]) -> list[str]:
    known = {char for piece in pieces for char in piece}
    return sorted({char for symbol in (*SPECIAL_SYMBOLS, MASK) for char in symbol} - known)


def whitespace_kept_by(processor) -> list[str]:
    """Characters Python counts as whitespace that the model's normaliser leaves in pieces (e.g. U+0085).

    fairseq joins the pieces with spaces and splits them again with str.split(), so such a character
    ends a token and disappears: the tokenizer splits the text at it and drops it, to match.
    """
    return [char for char in PYTHON_WHITESPACE
            if any(char in piece for piece in processor.EncodeAsPieces(f"a{char}b"))]


def build_sentencepiece_tokenizer(vocabulary: TokenVocabulary, scores: dict[str, float],
                                  settings: SpmSettings, charsmap: CharsMap | None,
                                  separators: list[str] = ()) -> Tokenizer:
    """`charsmap`: the model's precompiled charsmap (settings.precompiled_charsmap) as read, if it has one."""
    by_id = sorted(vocabulary.ids.items(), key=lambda item: item[1])
    if settings.model_type == "unigram":
        table = [(token, scores.get(token, UNREACHABLE_SCORE)) for token, _ in by_id]
        model = models.Unigram(table, unk_id=vocabulary.ids["<unk>"], byte_fallback=settings.byte_fallback)
    else:
        model = models.BPE(vocab=vocabulary.ids, merges=_merges_by_score(scores), unk_token="<unk>",
                           fuse_unk=True, byte_fallback=settings.byte_fallback)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(_normalizers(settings, charsmap))
    steps = []
    if settings.add_dummy_prefix:
        steps.append(pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="always", split=False))
    if separators:
        pattern = "[" + "".join(f"\\x{{{ord(char):x}}}" for char in separators) + "]"
        steps.append(pre_tokenizers.Split(Regex(pattern), behavior="removed"))
    if steps:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPIECE_UNDERLINE, " "), decoders.Fuse(),
                                           decoders.Strip(content=" ", left=1 if settings.add_dummy_prefix else 0)])
    return frame_like_fairseq(tokenizer, vocabulary)


def _normalizers(settings: SpmSettings, charsmap: CharsMap | None) -> list:
    """sentencepiece's normaliser in its own order: charsmap, whitespace, escaping, dummy prefix."""
    steps = []
    if charsmap is not None:
        steps += _charsmap_steps(charsmap)
    if settings.remove_extra_whitespaces:
        # Only spaces count: sentencepiece leaves other whitespace (left after the charsmap) alone.
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if settings.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
        if settings.remove_extra_whitespaces:
            # sentencepiece strips the escaped text's trailing "▁", so a "▁" the text itself ends with too.
            steps.append(normalizers.Replace(Regex(f"{SPIECE_UNDERLINE}+\\z"), ""))
    if settings.add_dummy_prefix:
        # Metaspace adds no prefix to a text that already starts with "▁"; sentencepiece always does.
        steps.append(normalizers.Replace(Regex(rf"\A{SPIECE_UNDERLINE}"), SPIECE_UNDERLINE * 2))
    return steps


def _charsmap_steps(charsmap: CharsMap) -> list:
    """Precompiled, after the steps that keep it from cutting grapheme clusters short (charsmap.py)."""
    steps = []
    # A character the charsmap deletes and that always ends a grapheme cluster (a C0 control).
    breaker = next((char for char in map(chr, range(1, 0x20)) if charsmap.normalizes(char) == ""), None)
    if breaker and charsmap.lone_keys:
        lone = character_class((ord(char), ord(char)) for char in charsmap.lone_keys)
        steps.append(normalizers.Replace(Regex(f"(?<={lone})"), breaker))
    steps.append(normalizers.Precompiled(charsmap.blob))
    return steps


def _merges_by_score(scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges of a sentencepiece BPE model: every split of a piece into two pieces, best score first."""
    ranked = []
    for rank, (piece, score) in enumerate(scores.items()):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in scores and right in scores:
                ranked.append((-score, rank, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


KIND = TokenizerKind(
    name="sentencepiece",
    fairseq_bpe="sentencepiece",
    files=(TokenizerFile("sentencepiece_model", ("sentencepiece.bpe.model", "sentencepiece.model", "spm.model"),
                         "sentencepiece model"),),
    prepare=prepare_sentencepiece,
    card="sentencepiece",
    known_difference="sentencepiece keeps a run of characters unknown to its model as one piece, or its normaliser "
                     "maps a grapheme cluster whole where the tokenizer's cuts it short (stacked marks of decomposed "
                     "text, halfwidth kana with voicing marks, a compatibility character followed by a mark)",
)
