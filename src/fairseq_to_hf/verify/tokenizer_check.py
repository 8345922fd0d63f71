"""AutoTokenizer.from_pretrained(OUT) against fairseq's encode pipeline, line by line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConversionError, library_message
from ..reader.dictionary import (BOS, EOS, MASK, PAD, PAD_ID, UNK, UNK_ID, Dictionary,
                                 fit_embedding)
from ..reference.encode import fairseq_encode
from .imports import transformers as import_transformers

# Built-in lines: the scripts, whitespace and odd characters where tokenizers tend to differ.
SAMPLE_TEXTS: tuple[str, ...] = (
    "Hello world! This is a test of the tokenizer.",
    "The quick brown fox jumps over the lazy dog; it's 5 o'clock, isn't it?",
    "Café, naïve, Zürich, façade, jalapeño, São Paulo, Ærøskøbing, Łódź.",
    "emoji 😀🎉👍🏽 and a family 👨‍👩‍👧 in one line",
    "中文分词测试，日本語のテキスト、한국어 문장.",
    "مرحبا بالعالم، هذا اختبار.",
    "Привет, мир! Ελληνικά κείμενα. עברית. हिन्दी पाठ. ภาษาไทย",
    "multiple   spaces    between     words",
    "   leading and trailing spaces   ",
    "line one\nline two\n\nline four",
    "tab\tseparated\tvalues\t",
    "control\x00chars\x07and\x1bescape\x7f",
    "zero\u200bwidth\u200cjoiners\u200dand\ufeffbom",
    "full-width ＡＢＣ１２３ and ligature ﬁ and ½",
    "<s> </s> <pad> <unk> <mask> as plain text",
    "",
    " ",
    "a",
    "1234567890 3.14159 -42 1e10",
    "x" * 40 + " " + "long words " * 60,
)

# fairseq's encode does not truncate; neither does the tokenizer call here, so long lines are fine.
SAMPLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("Is this a question?", "Yes, it is an answer."),
    ("Café in Zürich", "中文 and emoji 😀"),
    ("  spaced  ", "\ttabbed\n"),
)


@dataclass
class LineCheck:
    text: str
    expected: list[int]
    got: list[int]


@dataclass
class TokenizerVerification:
    lines_checked: int = 0
    pairs_checked: int = 0
    mismatches: list[LineCheck] = field(default_factory=list)
    known_differences: list[LineCheck] = field(default_factory=list)
    known_difference: str | None = None  # the kind's known limitation, e.g. sentencepiece's unknown runs
    out_of_range: list[str] = field(default_factory=list)
    special_tokens: list[str] = field(default_factory=list)  # special ids that differ from fairseq's
    tokenizer_class: str = ""

    @property
    def passed(self) -> bool:
        return not self.mismatches and not self.out_of_range and not self.special_tokens

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "tokenizer_class": self.tokenizer_class,
            "lines_checked": self.lines_checked,
            "pairs_checked": self.pairs_checked,
            "mismatches": [{"text": m.text, "fairseq_ids": m.expected, "tokenizer_ids": m.got}
                           for m in self.mismatches[:20]],
            "mismatch_count": len(self.mismatches),
            # lines that differ only by the kind's known limitation (TokenizerKind.known_difference)
            "known_difference": self.known_difference,
            "known_differences": len(self.known_differences),
            "known_difference_examples": [m.text for m in self.known_differences[:5]],
            "ids_out_of_range": self.out_of_range[:20],
            "special_tokens": self.special_tokens,
        }


def verify_tokenizer(
    folder: Path,
    reference_bpe,
    dictionary: Dictionary,
    model_rows: int,
    vocab_size: int,
    extra_lines: list[str] = (),
    known_difference=lambda text: False,
    known_difference_reason: str | None = None,
) -> TokenizerVerification:
    """Ids at or past `model_rows` are aliases of <unk>; ids at or past `vocab_size` are out of range."""
    AutoTokenizer = import_transformers().AutoTokenizer
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # "longer than model_max_length" is expected here
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as error:  # whatever Transformers raises for tokenizer files it cannot read
            raise ConversionError(f"its tokenizer cannot be loaded by AutoTokenizer ({library_message(error)})",
                                  path=folder, hint="check tokenizer.json and tokenizer_config.json") from None
        result = TokenizerVerification(tokenizer_class=type(tokenizer).__name__,
                                       known_difference=known_difference_reason)
        index = dictionary.index()
        cases: list[tuple[str, ...]] = [(text,) for text in (*SAMPLE_TEXTS, *extra_lines)]
        cases += [pair for pair in SAMPLE_PAIRS]
        for case in cases:
            expected = fairseq_encode(reference_bpe, index, *case)
            got = _encoded(tokenizer, folder, *case, split_special_tokens=True)
            if any(not 0 <= token < vocab_size for token in got):
                result.out_of_range.append(case[0])
            if as_fairseq_ids(got, model_rows) != expected:
                check = LineCheck(" ||| ".join(case), expected, got)
                if any(known_difference(text) for text in case):
                    result.known_differences.append(check)
                else:
                    result.mismatches.append(check)
            if len(case) == 1:
                result.lines_checked += 1
            else:
                result.pairs_checked += 1
        result.special_tokens = _special_token_problems(tokenizer, folder, reference_bpe, dictionary, model_rows)
    finally:
        transformers_logging.set_verbosity(verbosity)
    return result


def _special_token_problems(tokenizer, folder: Path, reference_bpe, dictionary: Dictionary,
                            model_rows: int) -> list[str]:
    """The special tokens' ids (what pipelines and collators use) against fairseq's, and a typed `<mask>`
    as fairseq's fill_mask reads it: the text around it encoded, `<mask>`'s own id in between."""
    mask_id = fit_embedding(dictionary, model_rows).mask_id
    bos, eos = dictionary.bos_id, dictionary.eos_id
    expected = {"bos_token_id": bos, "cls_token_id": bos, "pad_token_id": PAD_ID, "eos_token_id": eos,
                "sep_token_id": eos, "unk_token_id": UNK_ID, "mask_token_id": mask_id}
    problems = []
    for name, want in expected.items():
        got = getattr(tokenizer, name, None)
        if want is not None and got != want:
            problems.append(f"{name} is {got!r}, fairseq's is {want}")
    fairseq_specials = {BOS, PAD, EOS, UNK, *([MASK] if mask_id is not None else [])}  # their ids: checked above
    added = tokenizer.get_added_vocab()
    # Any other added token is matched whole in any text: fairseq must read it as one piece of that id too
    # (as BERT's "[MASK]"), or it is a token fairseq does not have.
    index = dictionary.index()
    foreign = []
    for token in sorted(set(added) - fairseq_specials):
        want_ids = fairseq_encode(reference_bpe, index, f"a {token} b")
        if as_fairseq_ids(_encoded(tokenizer, folder, f"a {token} b"), model_rows) != want_ids:
            foreign.append(token)
    if foreign:
        problems.append(f"it adds tokens fairseq does not have: {', '.join(map(repr, foreign[:5]))}")
    if getattr(tokenizer, "padding_side", "right") != "right":
        problems.append(f"padding_side is {tokenizer.padding_side!r}; fairseq pads on the right")
    if mask_id is not None:
        around = fairseq_encode(reference_bpe, dictionary.index(), "Hello")
        want_ids = [*around[:-1], mask_id, around[-1]]
        got_ids = _encoded(tokenizer, folder, "Hello <mask>")
        if as_fairseq_ids(got_ids, model_rows) != want_ids:
            problems.append(f"'Hello <mask>' gives {got_ids}, fairseq's fill_mask reads {want_ids}")
    return problems


def as_fairseq_ids(ids: list[int], model_rows: int) -> list[int]:
    """The tokenizer's ids as fairseq gives them: an alias id (past the model's rows) is <unk>."""
    return [UNK_ID if token_id >= model_rows else token_id for token_id in ids]


def _encoded(tokenizer, folder: Path, *texts: str, **options) -> list[int]:
    try:
        return list(tokenizer(*texts, **options)["input_ids"])
    except Exception as error:  # a tokenizer config Transformers loads but cannot use (model_max_length "x")
        reason = f"{type(error).__name__}: {library_message(error, limit=160)}"
        raise ConversionError(f"its tokenizer cannot encode text ({reason})", path=folder,
                              hint="check tokenizer_config.json and tokenizer.json") from None
