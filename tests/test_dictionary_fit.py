"""dict.txt must fit the embedding the way fairseq builds it: specials, dict.txt's lines, then <mask>."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, GPT2_BPE
from fairseq_to_hf import convert
from test_bad_input import assert_refused, run_cli

MLM = FIXTURES / "roberta_mlm"
LINES = (MLM / "dict.txt").read_text().splitlines()  # 338 symbols + 2 madeupword lines; 345 rows


def with_dict(tmp_path: Path, lines: list[str]) -> Path:
    src = tmp_path / "src"
    shutil.copytree(MLM, src)
    (src / "dict.txt").write_text("".join(f"{line}\n" for line in lines))
    return src


def converted(src: Path, out: Path):
    return convert(src, out, encoder_json=GPT2_BPE / "encoder.json", vocab_bpe=GPT2_BPE / "vocab.bpe")


def test_a_listed_mask_keeps_its_id(tmp_path: Path) -> None:
    # fairseq's add_symbol("<mask>") returns the id dict.txt gave it; no row is added.
    src = with_dict(tmp_path, ["<mask> 0", *LINES])
    report = converted(src, tmp_path / "out")
    assert report.verified and report.tokenizer.vocabulary.mask_id == 4
    vocab = json.loads((tmp_path / "out" / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab["<mask>"] == 4
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["mask_token"] == "<mask>"


def test_stripped_padding_lines_put_mask_on_the_last_row(tmp_path: Path) -> None:
    src = with_dict(tmp_path, [line for line in LINES if not line.startswith("madeupword")])
    report = converted(src, tmp_path / "out")
    assert report.verified and report.tokenizer.vocabulary.mask_id == 344
    assert any("madeupword padding" in note for note in report.outputs[0].notes)


@pytest.mark.parametrize(("keep", "numbers"), [
    (0, "4 specials + 0 lines (+ <mask>) = 5 ids but the embedding has 345 rows"),
    (40, "4 specials + 40 lines (+ <mask>) = 45 ids but the embedding has 345 rows"),
    # 4 lines short, but it keeps its madeupword lines, so they are not what is missing
    (-4, "4 specials + 336 lines (+ <mask>) = 341 ids but the embedding has 345 rows"),
])
def test_a_dict_that_does_not_fit_is_refused(tmp_path: Path, keep: int, numbers: str) -> None:
    src = with_dict(tmp_path, LINES[:keep] if keep >= 0 else LINES[:keep - 2] + LINES[-2:])
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, numbers, "fairseq refuses this pair", "--dict")


def test_a_dict_txt_one_line_too_long_for_a_masked_lm_task_is_refused(tmp_path: Path) -> None:
    """masked_lm adds <mask> after dict.txt: a dict.txt that fills every row has a line fairseq never had."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "roberta_mlm", src)
    with open(src / "dict.txt", "a", encoding="utf-8") as handle:
        handle.write("extra_symbol 1\n")
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "fairseq's masked_lm task adds <mask> after dict.txt's lines",
                   "dict.txt has a line too many")
