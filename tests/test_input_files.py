"""Every input file must be a regular file of a sane size; dict.txt is read exactly as fairseq reads it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, GPT2_BPE
from fairseq_to_hf.errors import ConversionError
from fairseq_to_hf.reader import files
from fairseq_to_hf.reader.dictionary import read_dictionary
from test_bad_input import assert_refused, run_cli

MLM = FIXTURES / "roberta_mlm"


def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(MLM, src)
    return src


def test_a_checkpoint_that_is_a_directory_says_so(tmp_path: Path) -> None:
    src = source(tmp_path)
    (src / "model.pt").unlink()
    (src / "model.pt").mkdir()
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "model.pt: is a directory, not a checkpoint file")


@pytest.mark.parametrize("kind", ["directory", "fifo", "dev-zero"])
def test_an_encoder_json_that_is_not_a_file_is_named(tmp_path: Path, kind: str) -> None:
    src = source(tmp_path)
    shutil.copy(GPT2_BPE / "vocab.bpe", src / "vocab.bpe")
    encoder = src / "encoder.json"
    if kind == "directory":
        encoder.mkdir()
    elif kind == "fifo":
        os.mkfifo(encoder)
    else:
        encoder.symlink_to("/dev/zero")
    out = tmp_path / "out"
    what = {"directory": "a directory", "fifo": "a FIFO (named pipe)", "dev-zero": "a device"}[kind]
    assert_refused(run_cli("convert", src, out), out, 2, f"encoder.json: is {what}, not a GPT-2 encoder.json")


def test_a_sentencepiece_model_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    src = source(tmp_path)
    (src / "sentencepiece.bpe.model").mkdir()
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "is a directory, not a sentencepiece model")


@pytest.mark.parametrize("flag", ["--verify-text", "--dict"])
def test_dev_zero_and_fifos_never_hang(tmp_path: Path, flag: str) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    for path in ("/dev/zero", fifo):
        assert_refused(run_cli("convert", MLM, out, flag, path), out, 2, "not a", "pass a regular file")


def test_inputs_larger_than_the_limit_are_refused(tmp_path: Path, monkeypatch) -> None:
    big = tmp_path / "dict.txt"
    big.write_text("a 1\n" * 100)
    monkeypatch.setattr(files, "MAX_TEXT_INPUT_BYTES", 64)
    with pytest.raises(ConversionError, match="is larger than 0 MiB, more than any GPT-2 encoder.json"):
        files.read_input_file(big, "a GPT-2 encoder.json", limit=64)


def test_a_symbol_longer_than_any_real_one_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "dict.txt"
    path.write_text("a 1\n" + "b" * 5000 + " 1\n")
    with pytest.raises(ConversionError, match="line 2 holds a symbol of 5000 characters"):
        read_dictionary(path)


def test_dict_lines_split_as_fairseq_reads_them(tmp_path: Path) -> None:
    # Text mode ends lines at \n, \r\n and \r only; fairseq then takes `line.rstrip().rsplit(" ", 1)`.
    path = tmp_path / "dict.txt"
    path.write_bytes("a\u2028b 1\nc\x85d 2\r\ne\x0bf 3\rg 4\x85\n h 5 #fairseq:overwrite\n".encode())
    assert read_dictionary(path).symbols[4:] == ("a\u2028b", "c\x85d", "e\x0bf", "g", " h")


@pytest.mark.parametrize("text", ["a 1\n\nb 2\n", "a 1x\n", "a\n", "a 1 #fairseq:overwrite x\n"])
def test_dict_lines_fairseq_refuses_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "dict.txt"
    path.write_text(text)
    with pytest.raises(ConversionError, match="is not 'symbol count'"):
        read_dictionary(path)


def test_a_training_run_folder_takes_its_labels_beside_the_given_data_bin_dict(tmp_path: Path) -> None:
    """SRC is fairseq-train's save dir; --dict names the data-bin's input0/dict.txt, whose label/dict.txt
    gives the class names. Without one, the note says the labels are generic."""
    import json

    run, data = tmp_path / "checkpoints", tmp_path / "data-bin"
    run.mkdir()
    shutil.copy(FIXTURES / "roberta_cls" / "model.pt", run / "checkpoint_best.pt")
    shutil.copytree(FIXTURES / "roberta_cls" / "input0", data / "input0")
    shutil.copytree(FIXTURES / "roberta_cls" / "label", data / "label")
    out = tmp_path / "out"
    result = run_cli("convert", run, out, "--dict", data / "input0" / "dict.txt", "--no-verify")
    assert result.returncode == 0, result.stderr
    labels = json.loads((out / "config.json").read_text())["id2label"]
    assert list(labels.values()) == [line.split()[0] for line in (data / "label" / "dict.txt").read_text().splitlines()][:3]
    shutil.rmtree(data / "label")
    result = run_cli("convert", run, tmp_path / "out2", "--dict", data / "input0" / "dict.txt", "--no-verify")
    assert result.returncode == 0, result.stderr
    assert "note: no label dict (label/dict.txt), so the labels are LABEL_0..LABEL_2" in result.stderr


@pytest.mark.parametrize("name", ["dict.txt", "model.pt", "encoder.json"])
def test_a_broken_symbolic_link_is_named_as_one(tmp_path: Path, name: str) -> None:
    """A link to a file that is gone is said to be one, not taken for a missing file (which would blame
    the folder, pick another *.pt, or write no tokenizer)."""
    src = source(tmp_path)
    if name == "encoder.json":
        shutil.copy(GPT2_BPE / "vocab.bpe", src / "vocab.bpe")
    else:
        (src / name).unlink()
    (src / name).symlink_to(tmp_path / "gone")
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, f"{name}: is a symbolic link to {tmp_path / 'gone'}, "
                   "which does not exist")


@pytest.mark.parametrize("which", ["SRC", "OUT"])
def test_an_empty_path_is_not_the_current_folder(tmp_path: Path, which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(tmp_path)
    monkeypatch.chdir(src)  # where an empty path would otherwise lead
    before = sorted(path.name for path in src.iterdir())
    arguments = ("", tmp_path / "out") if which == "SRC" else (src, "")
    result = run_cli("convert", *arguments, "--no-verify")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == f"fairseq-to-hf: error: {which}: is an empty path; " + (
        "pass a fairseq model folder or checkpoint file" if which == "SRC" else "name the folder to write the model into")
    assert sorted(path.name for path in src.iterdir()) == before and not (tmp_path / "out").exists()
