"""The Python API: options of the wrong type or value are refused before any work, and a run cut short
leaves the process able to convert again."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from conftest import FIXTURES
from fairseq_to_hf import CardOptions, ConversionError, ConvertOptions, convert
from fairseq_to_hf.progress import WriteProgress

MLM = FIXTURES / "roberta_mlm"


class BytesPath:
    """An os.PathLike whose path is bytes, which pathlib cannot take."""

    def __fspath__(self) -> bytes:
        return b"model.pt"


@pytest.mark.parametrize("keywords, message", [
    ({"tolerance": "1e-5"}, "tolerance must be a number, not '1e-5' (str)"),
    ({"tolerance": True}, "tolerance must be a number"),
    ({"dtype": ["float16"]}, "dtype must be a string or None"),
    ({"card": {}}, "card must be a CardOptions, not {}"),
    ({"force": 1}, "force must be True or False, not 1 (int)"),
    ({"verify": "no"}, "verify must be True or False"),
    ({"max_shard_size": True}, "max_shard_size must be a string or an integer"),
    ({"head": 5}, "head must be a string or None"),
    ({"checkpoint": b"model.pt"}, "checkpoint must be a string or a path or None"),
    ({"encoder_json": 3}, "tokenizer_files must be a dict"),
    ({"tokenizer_files": "encoder.json"}, "tokenizer_files must be a dict"),
    ({"tokenizer_files": {"vocab": "x"}}, "unknown tokenizer file role 'vocab'"),
    ({"num_heads": "4"}, "num_heads must be an integer or None, not '4'"),
    ({"num_heads": 0}, "num_heads must be a positive number of attention heads"),
    ({"activation_fn": "swish"}, "unknown activation_fn 'swish'; choose from gelu"),
    ({"pooler_activation_fn": 1}, "pooler_activation_fn must be a string or None"),
    ({"dtype": "float8"}, "unknown dtype 'float8'"),
    ({"tolerance": float("nan")}, "must be a finite number >= 0"),
    ({"languages": ["en"]}, "unknown option 'languages'"),
    ({"checkpoint": BytesPath()}, "checkpoint must be a string or a path or None"),
    ({"language": [""]}, "an empty language code"),
])
def test_an_option_of_the_wrong_type_or_value_is_refused_before_any_work(tmp_path: Path, keywords: dict,
                                                                         message: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as raised:
        convert(tmp_path / "no such folder", out, **keywords)  # SRC is not even looked at
    assert message in str(raised.value)
    assert not out.exists()


def test_every_wrong_field_is_named_at_once() -> None:
    with pytest.raises(ConversionError, match=r"wrong type \(2 problems\)") as raised:
        ConvertOptions(force="yes", tolerance=None)
    assert "force must be" in str(raised.value) and "tolerance must be" in str(raised.value)


def test_card_options_are_checked_too() -> None:
    with pytest.raises(ConversionError, match=r"language must be a list of \(a string\), not \[1\]"):
        CardOptions(language=[1])
    assert CardOptions(language=("en", "fr")).language == ("en", "fr")


def test_paths_may_be_any_path_like_and_tokenizer_files_merge(tmp_path: Path) -> None:
    report = convert(str(MLM), tmp_path / "out", ConvertOptions(tokenizer_files={"encoder_json": None}),
                     verify=False, tolerance=1, dictionary=MLM / "dict.txt")
    assert report.outputs[0].architecture == "RobertaForMaskedLM"


class StopHalfWay(WriteProgress):
    """Stops the run like a Ctrl-C once the first tensor is written (before the verification)."""

    def advance(self, nbytes: int) -> None:
        raise KeyboardInterrupt


def test_a_run_cut_short_leaves_the_process_able_to_convert_and_verify(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        convert(MLM, tmp_path / "first", progress=StopHalfWay(io.StringIO(), bar=False))
    assert not (tmp_path / "first").exists()
    # The first run left Transformers importing on its thread; the second waits for it before using it.
    report = convert(MLM, tmp_path / "second")
    assert report.outputs[0].verified


@pytest.mark.parametrize("arguments, keywords, message", [
    ((5, "out"), {}, "src must be a path (str or os.PathLike), not int"),
    (("src", None), {}, "out must be a path"),
    (("src", "out", {"head": "mnli"}), {}, "options must be a ConvertOptions, not dict"),
    (("src", "out"), {"log": 5}, "log must be a function"),
    (("src", "out"), {"progress": "bar"}, "progress must be a WriteProgress"),
    (("src", "out"), {"tolerance": 10**400}, "must be a finite number"),
])
def test_arguments_of_the_wrong_type_are_refused(tmp_path: Path, arguments: tuple, keywords: dict,
                                                 message: str) -> None:
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert(*arguments, **keywords)


def test_card_fields_are_taken_by_keyword_as_the_flags(tmp_path: Path) -> None:
    convert(MLM, tmp_path / "out", verify=False, language=["en"], license="mit")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "language:\n- \"en\"" in card and 'license: "mit"' in card
