"""Tokenizer files that are not the model's own, or not files at all, are refused with a clear line."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import FIXTURES, GPT2_BPE
from test_bad_input import assert_refused, run_cli

MLM = FIXTURES / "roberta_mlm"
SPM_MODEL = FIXTURES / "xlmr_mlm" / "sentencepiece.bpe.model"


def test_a_sentencepiece_model_for_a_gpt2_dict_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_refused(run_cli("convert", MLM, out, "--sentencepiece-model", SPM_MODEL), out, 2,
                   "only 10 of 338 dict.txt symbols are pieces of sentencepiece.bpe.model",
                   "it is not this model's tokenizer")


def test_gpt2_files_for_a_sentencepiece_dict_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "xlmr_mlm", src, ignore=shutil.ignore_patterns("*.model"))
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--encoder-json", GPT2_BPE / "encoder.json",
                     "--vocab-bpe", GPT2_BPE / "vocab.bpe")
    assert_refused(result, out, 2, "only 2 of 372 dict.txt symbols are GPT-2 ids in encoder.json")


def test_subword_nmt_codes_of_version_0_1_are_refused(tmp_path: Path) -> None:
    """apply_bpe reads codes without `#version: 0.2` as version 0.1, whose end-of-word symbol merges apart."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "roberta_subword_nmt", src)
    codes = (src / "bpecodes").read_text(encoding="utf-8").splitlines(keepends=True)
    for header, said in (([], "version 0.1 (no #version header)"), (["#version: 0.1\n"], "version 0.1 codes")):
        (src / "bpecodes").write_text("".join(header + codes[1:]), encoding="utf-8")
        out = tmp_path / "out"
        assert_refused(run_cli("convert", src, out, "--no-verify"), out, 2, f"bpecodes: is subword-nmt {said}",
                       "only version 0.2 converts")


def test_fastbpe_codes_that_repeat_a_merge_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "phobert_fastbpe", src)
    with open(src / "bpe.codes", "a", encoding="utf-8") as codes:
        codes.write("t h 5\n")
    lines = len((src / "bpe.codes").read_text(encoding="utf-8").splitlines())
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out, "--no-verify"), out, 2,
                   f"repeats 1 merge ('t h' on lines 1 and {lines}), which fastBPE does not apply in a defined order")


def test_codes_that_build_a_piece_no_vocabulary_has_are_refused_before_writing(tmp_path: Path) -> None:
    """Merges spelling "<unk></w>" make a BPE that `tokenizers` cannot run: refused even with --no-verify,
    instead of a tokenizer.json that does not load."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "phobert_fastbpe", src)
    codes = (src / "bpe.codes").read_text(encoding="utf-8")
    (src / "bpe.codes").write_text("< u 9\n<u n 9\n<un k 9\n<unk ></w> 9\n" + codes, encoding="utf-8")
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out, "--no-verify"), out, 2,
                   "bpe.codes: gives a tokenizer that `tokenizers` cannot load or run")
