"""fastBPE, subword-nmt and hf_byte_bpe models convert without flags and give fairseq's ids.

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

# fixture -> (kind, does a word's inner whitespace make lines differ)
KINDS = {"phobert_fastbpe": ("fastbpe", True), "roberta_subword_nmt": ("subword_nmt", True),
         "gottbert_hf_byte_bpe": ("hf_byte_bpe", False)}


@pytest.fixture(scope="module", params=list(KINDS))
def converted(request, tmp_path_factory) -> tuple[str, Path, object]:
    fixture = request.param
    out = tmp_path_factory.mktemp(fixture) / "out"
    report = convert(FIXTURES / fixture, out)  # no flags: the files are found by their usual names
    assert report.verified
    return fixture, out, report


def prepared_for(fixture: str):
    folder = FIXTURES / fixture
    dictionary = read_dictionary(folder / "dict.txt")
    source = read_checkpoint(folder / "model.pt")
    files = find_source_files(folder, TOKENIZER_FILES).tokenizer
    return prepare_tokenizer(files, dictionary, len(dictionary) + 1, source.bpe)


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


def test_without_tokenizer_files_the_message_names_what_was_looked_for(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("model.pt", "dict.txt"):
        shutil.copy(FIXTURES / "phobert_fastbpe" / name, src)
    messages: list[str] = []
    report = convert(src, tmp_path / "out", log=messages.append)
    assert report.tokenizer is None
    said = " ".join(messages)
    assert "bpe.codes" in said and "vocab.json + merges.txt" in said and "--bpe-codes" in said
