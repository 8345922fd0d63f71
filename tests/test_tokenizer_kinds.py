"""fastBPE, subword-nmt, hf_byte_bpe and BERT WordPiece models convert without flags and give fairseq's ids.

Checked against the real fairseq's encode recorded in each fixture's encode_cases.json, and against its
model outputs (fairseq_outputs.*).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForMaskedLM, AutoTokenizer, PhobertTokenizer

from conftest import FIXTURES, assert_matches_fairseq, json_file
from fairseq_to_hf import convert
from fairseq_to_hf.errors import ConversionError
from fairseq_to_hf.reader.checkpoint import read_checkpoint
from fairseq_to_hf.reader.dictionary import UNK_ID, read_dictionary
from fairseq_to_hf.reader.folder import find_source_files
from fairseq_to_hf.tokenizer import TOKENIZER_FILES, prepare_tokenizer
from fairseq_to_hf.tokenizer.fastbpe import PYTHON_WHITESPACE
from fairseq_to_hf.reference.encode import fairseq_encode
from fairseq_to_hf.tokenizer.bert_wordpiece import read_wordpiece_vocab

# fixture -> (kind, does a word's inner whitespace make lines differ)
KINDS = {"phobert_fastbpe": ("fastbpe", True), "roberta_subword_nmt": ("subword_nmt", True),
         "gottbert_hf_byte_bpe": ("hf_byte_bpe", False), "roberta_bert_wordpiece": ("bert", False)}


@pytest.fixture(scope="module", params=list(KINDS))
def converted(request, tmp_path_factory) -> tuple[str, Path, object]:
    fixture = request.param
    out = tmp_path_factory.mktemp(fixture) / "out"
    report = convert(FIXTURES / fixture, out)  # no flags: the files are found by their usual names
    assert report.verified
    return fixture, out, report


def prepared_for(fixture: str, **bpe_settings):
    """The fixture's tokenizer; `bpe_settings` override the checkpoint's (bpe_cased=True)."""
    folder = FIXTURES / fixture
    dictionary = read_dictionary(folder / "dict.txt")
    source = read_checkpoint(folder / "model.pt")
    files = find_source_files(folder, TOKENIZER_FILES).tokenizer
    return prepare_tokenizer(files, dictionary, len(dictionary) + 1, {**source.bpe, **bpe_settings})


def as_fairseq(ids: list[int], model_rows: int) -> list[int]:
    return [UNK_ID if token >= model_rows else token for token in ids]


def whitespace_inside_word(text: str, *, fastbpe: bool) -> bool:
    """A word (split on ' ', as fastBPE and subword-nmt split) holds other whitespace."""
    line = text if fastbpe else text.strip(" \r\n")
    return any(char in PYTHON_WHITESPACE for word in line.split(" ") for char in word)


def known_difference(fixture: str, *texts: str) -> bool:
    kind, whitespace_matters = KINDS[fixture]
    return whitespace_matters and any(whitespace_inside_word(t, fastbpe=kind == "fastbpe") for t in texts)


def test_converted_model_matches_fairseq(converted) -> None:
    fixture, out, report = converted
    worst = assert_matches_fairseq(fixture, out, AutoModelForMaskedLM, None)
    print(f"{fixture}: max abs diff {max(worst.values()):.3g}")
    assert report.tokenizer.kind == KINDS[fixture][0]


def test_every_recorded_line_and_pair_gets_fairseqs_ids(converted) -> None:
    fixture, out, report = converted
    cases = json_file(FIXTURES / fixture / "encode_cases.json")
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = report.tokenizer.vocabulary.model_rows
    vocab_size = json_file(out / "config.json")["vocab_size"]
    prepared = prepared_for(fixture)
    exact = equivalent = differ = 0
    inputs = [((case["text"],), case["ids"]) for case in cases["single"]]
    inputs += [(tuple(case["texts"]), case["ids"]) for case in cases["pairs"] if case["texts"][1]]
    for texts, expected in inputs:
        got = tokenizer(*texts, split_special_tokens=True)["input_ids"]
        assert max(got) < vocab_size
        if as_fairseq(got, rows) != expected:
            assert known_difference(fixture, *texts), (texts, expected, got)
            assert any(prepared.known_difference(text) for text in texts), texts  # and the kind says so
            differ += 1
            continue
        equivalent += 1
        if UNK_ID not in expected:
            assert got == expected, texts  # no alias where fairseq has no <unk>
            exact += 1
    odd = sum(known_difference(fixture, *texts) for texts, _ in inputs)
    assert differ <= odd and differ <= 0.06 * len(inputs)
    if not KINDS[fixture][1]:
        assert differ == 0
    print(f"{fixture}: {len(inputs)} lines and pairs: {equivalent} model-equivalent ({exact} exact without <unk>), "
          f"{differ} differ, all of {odd} with whitespace inside a word")


def test_the_reference_encode_is_fairseqs(converted) -> None:
    """The independent reference (reference/encode.py) reproduces fairseq's recorded ids on every line."""
    fixture, _, _ = converted
    cases = json_file(FIXTURES / fixture / "encode_cases.json")
    prepared = prepared_for(fixture)
    index = prepared.dictionary.index()
    for case in cases["single"]:
        assert prepared.reference_bpe(case["text"]) == case["bpe"], case["text"]
        assert fairseq_encode(prepared.reference_bpe, index, case["text"]) == case["ids"], case["text"]
    for case in cases["pairs"]:
        assert fairseq_encode(prepared.reference_bpe, index, *case["texts"]) == case["ids"], case["texts"]


def test_verification_report_and_card_count_the_whitespace_lines(converted) -> None:
    fixture, out, report = converted
    tokens = report.outputs[0].tokenizer_verification
    assert tokens.passed and not tokens.mismatches
    card = (out / "README.md").read_text().replace("\n", " ")
    if KINDS[fixture][1]:
        assert tokens.known_differences  # the built-in samples hold tabs and newlines
        assert "whitespace" in tokens.known_difference
        assert f"{len(tokens.known_differences)} more differ only where" in card
    else:
        assert not tokens.known_differences


def test_phobert_tokenizer_loads_vocab_txt_and_bpe_codes(converted) -> None:
    fixture, out, report = converted
    if not KINDS[fixture][1]:
        assert not (out / "vocab.txt").exists() and not (out / "bpe.codes").exists()
        return
    slow = PhobertTokenizer.from_pretrained(out)
    fast = AutoTokenizer.from_pretrained(out)
    for text in ("Return the value of the object.", "Café 😀 Tiếng Việt"):
        rows = report.tokenizer.vocabulary.model_rows
        assert slow(text)["input_ids"] == as_fairseq(fast(text)["input_ids"], rows), text


def test_files_contradicting_the_trained_bpe_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "phobert_fastbpe", src)
    (src / "bpe.codes").unlink()
    shutil.copy(FIXTURES / "xlmr_mlm" / "sentencepiece.bpe.model", src)
    with pytest.raises(ConversionError, match="trained with fairseq's --bpe fastbpe") as error:
        convert(src, tmp_path / "out")
    assert error.value.exit_code == 2 and "--bpe-codes" in error.value.render()
    assert not (tmp_path / "out").exists()


def test_subword_nmt_refuses_codes_with_counts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "roberta_subword_nmt", src)
    (src / "bpecodes").unlink()
    shutil.copy(FIXTURES / "phobert_fastbpe" / "bpe.codes", src / "bpecodes")
    with pytest.raises(ConversionError, match="not a subword-nmt merge"):
        convert(src, tmp_path / "out")


@pytest.mark.parametrize("fixture, said", [
    ("phobert_fastbpe", "SRC has none of bpe.codes (fastbpe); pass their paths with --bpe-codes"),
    ("roberta_bert_wordpiece", "SRC has none of vocab.txt (bert); pass their paths with --bpe-vocab-file"),
])
def test_without_tokenizer_files_the_message_names_the_trained_kinds_files(tmp_path: Path, fixture: str,
                                                                           said: str) -> None:
    """The checkpoint names its BPE (cfg bpe): only that kind's files and flags are named."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("model.pt", "dict.txt"):
        shutil.copy(FIXTURES / fixture / name, src)
    messages: list[str] = []
    report = convert(src, tmp_path / "out", log=messages.append)
    assert report.tokenizer is None
    assert said in " ".join(messages) and "vocab.json" not in " ".join(messages)


def test_a_bert_vocab_of_another_name_is_given_by_its_flag(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("model.pt", "dict.txt"):
        shutil.copy(FIXTURES / "roberta_bert_wordpiece" / name, src)
    (src / "pieces.txt").write_bytes((FIXTURES / "roberta_bert_wordpiece" / "vocab.txt").read_bytes())
    report = convert(src, tmp_path / "out", tokenizer_files={"bpe_vocab_file": src / "pieces.txt"})
    assert report.tokenizer.kind == "bert" and report.outputs[0].tokenizer_verification.passed


def test_bert_cased_pieces_are_fairseqs() -> None:
    """bpe_cased true (no lower-casing, no accent stripping, NFC): the tokenizer's pieces and the
    reference's equal those of fairseq's bert encoder on every recorded line."""
    cases = json_file(FIXTURES / "roberta_bert_wordpiece" / "encode_cases.json")
    prepared = prepared_for("roberta_bert_wordpiece", bpe_cased=True)
    assert prepared.details["lowercase"] is False
    prepared.tokenizer.encode_special_tokens = True  # fairseq reads a typed "<s>" as text, as in the tests above
    differ = 0
    for case, want in zip(cases["single"], cases["cased_bpe"], strict=True):
        assert prepared.reference_bpe(case["text"]) == want, case["text"]
        differ += prepared.tokenizer.encode(case["text"]).tokens[1:-1] != want.split()
    assert differ == 0
    # the recorded lines do tell the two apart
    assert sum(case["bpe"] != want for case, want in zip(cases["single"], cases["cased_bpe"])) > 100


@pytest.mark.parametrize("cased", [False, True], ids=["uncased", "cased"])
def test_bert_tokenizer_treats_every_character_as_berts_python_code(cased: bool) -> None:
    """Every code point of the first plane (and every 17th beyond), inside and between words:
    the tokenizer's pieces equal the reference's, which re-implements BertTokenizer with Python's
    unicodedata (tokenizers' own Bert steps disagree on ~850,000 code points: Rust's Unicode tables)."""
    prepared = prepared_for("roberta_bert_wordpiece", bpe_cased=cased)
    codes = [code for code in range(0x110000)
             if (code < 0x10000 or code % 17 == 0) and not 0xD800 <= code <= 0xDFFF]
    texts = [f"Ab{chr(code)}c {chr(code)}E\u0301 x{chr(code)}" for code in codes]
    encodings = prepared.tokenizer.encode_batch(texts)
    differ = [text for text, encoding in zip(texts, encodings)
              if encoding.tokens[1:-1] != prepared.reference_bpe(text).split()]
    assert not differ, [f"U+{ord(text[2]):04X}" for text in differ[:10]]


def test_a_phobert_vocab_txt_is_not_taken_for_a_bert_one(tmp_path: Path) -> None:
    """PhobertTokenizer's vocab.txt (`token count` lines, as this tool writes beside bpe.codes) beside a
    model whose checkpoint does not say which BPE it was trained with."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "phobert_fastbpe", src)
    (src / "vocab.txt").write_text("".join(f"{line.split()[0]} 1\n" for line in
                                           (src / "dict.txt").read_text(encoding="utf-8").splitlines()),
                                   encoding="utf-8")
    files = find_source_files(src, TOKENIZER_FILES).tokenizer
    assert set(files.paths) == {"bpe_codes", "bpe_vocab_file"}
    dictionary = read_dictionary(src / "dict.txt")
    assert prepare_tokenizer(files, dictionary, len(dictionary) + 1, {}).kind == "fastbpe"
    assert read_wordpiece_vocab(FIXTURES / "roberta_bert_wordpiece" / "vocab.txt")[:5] == \
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_a_bpe_no_kind_reproduces_gets_no_tokenizer_from_other_files(tmp_path: Path) -> None:
    """--bpe byte_bpe runs sentencepiece over bytes: the folder's sentencepiece model alone would give
    other ids, so no tokenizer is written (and naming the file is refused), whatever files SRC holds."""
    from test_hyper_parameters import resaved

    hparams = read_checkpoint(FIXTURES / "xlmr_mlm" / "model.pt").hparams
    src = resaved("xlmr_mlm", tmp_path / "src", {**hparams, "bpe": "byte_bpe"})
    assert read_checkpoint(src / "model.pt").bpe == {"_name": "byte_bpe"}
    messages: list[str] = []
    report = convert(src, tmp_path / "out", log=messages.append)
    assert report.tokenizer is None and not (tmp_path / "out" / "tokenizer.json").exists()
    assert "the model's own --bpe byte_bpe, which no tokenizer here reproduces" in " ".join(messages)
    with pytest.raises(ConversionError, match="--bpe byte_bpe, which no tokenizer kind here reproduces"):
        convert(src, tmp_path / "out2", tokenizer_files={"sentencepiece_model": src / "sentencepiece.bpe.model"})


def test_a_mask_after_words_dict_txt_lacks_passes_the_fill_mask_check(tmp_path: Path) -> None:
    """The typed-<mask> check reads alias ids as <unk>, as every other check does: a dict.txt without
    the pieces of its probe text ("Hello") is no failed verification."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "roberta_bert_wordpiece", src)
    prepared = prepared_for("roberta_bert_wordpiece")
    hello = set(prepared.reference_bpe("Hello").split())
    lines = (src / "dict.txt").read_text(encoding="utf-8").splitlines()
    renamed = [f"absent{number} {line.split()[1]}" if line.split()[0] in hello else line
               for number, line in enumerate(lines)]
    assert renamed != lines
    (src / "dict.txt").write_text("\n".join(renamed) + "\n", encoding="utf-8")
    report = convert(src, tmp_path / "out")
    assert report.verified and report.outputs[0].tokenizer_verification.passed


@pytest.mark.parametrize("cased", [False, True], ids=["uncased", "cased"])
def test_specials_spelled_with_hidden_characters_are_fairseqs_or_the_known_difference(cased: bool) -> None:
    """BERT keeps a word whole that its cleaning turns into "[MASK]" ("[MA\\u200bSK]"), which a cased
    model's tokenizer.json cannot do: the reference knows it, and such lines are the kind's known difference."""
    cases = json_file(FIXTURES / "roberta_bert_wordpiece" / "encode_cases.json")["hidden_specials"]
    prepared = prepared_for("roberta_bert_wordpiece", bpe_cased=cased)
    differ = 0
    for case in cases:
        want = case["cased_bpe" if cased else "bpe"]
        assert prepared.reference_bpe(case["text"]) == want, case["text"]
        got = prepared.tokenizer.encode(case["text"]).tokens[1:-1]
        if got != want.split():
            assert prepared.known_difference(case["text"]), case["text"]
            differ += 1
    assert differ == (5 if cased else 0)
