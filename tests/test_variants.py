"""RobertaPreLayerNorm and X-MOD fixtures from the real fairseq: detected, converted without flags (but
--default-language where the model has no en_XX), every language compared with fairseq's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from conftest import FIXTURES, assert_matches_fairseq, json_file, recording
from fairseq_to_hf import convert
from fairseq_to_hf.errors import ConversionError
from fairseq_to_hf.inspection import inspect_source
from fairseq_to_hf.verify.existing import verify_folder

MLM = AutoModelForMaskedLM
CLASSIFIER = AutoModelForSequenceClassification

# (fixture, convert options, Auto class, head, model_type, architecture)
CASES = [
    ("roberta_preln", {}, CLASSIFIER, "topic_head", "roberta-prelayernorm",
     "RobertaPreLayerNormForSequenceClassification"),
    ("roberta_preln", {"head": "lm"}, MLM, None, "roberta-prelayernorm", "RobertaPreLayerNormForMaskedLM"),
    ("xmod_base", {}, MLM, None, "xmod", "XmodForMaskedLM"),
    ("xmod_prenorm", {"default_language": "fr_XX"}, CLASSIFIER, "lang_head", "xmod",
     "XmodForSequenceClassification"),
    ("xmod_prenorm", {"default_language": "de_DE", "head": "lm"}, MLM, None, "xmod", "XmodForMaskedLM"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case[0] + "".join(f"-{v}" for v in case[1].values()))
def test_variant_converts_and_matches_fairseq_in_every_language(case: tuple, tmp_path: Path) -> None:
    fixture, options, auto_class, head, model_type, architecture = case
    out = tmp_path / "out"
    report = convert(FIXTURES / fixture, out, **options)
    assert report.verified
    worst = assert_matches_fairseq(fixture, out, auto_class, head)
    assert max(worst.values()) <= 1e-5
    config = json_file(out / "config.json")
    assert config["model_type"] == model_type and config["architectures"] == [architecture]
    meta = recording(fixture).meta
    if meta.get("xmod"):
        xmod = meta["xmod"]
        assert config["languages"] == meta["languages"]
        assert config["default_language"] == options.get("default_language", "en_XX")
        assert config["pre_norm"] is meta["pre_norm"]
        assert config["hidden_size"] // config["adapter_reduction_factor"] == xmod["adapter_hidden_size"]
        for field in ("adapter_layer_norm", "adapter_reuse_layer_norm", "ln_before_adapter"):
            assert config[field] is xmod["cfg_model"][field], field
        verified_inputs = report.outputs[0].verification.inputs
        assert {name.split("@")[1] for name in verified_inputs} == {*meta["languages"], "mixed"}


def test_xmod_without_en_xx_needs_a_default_language(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as caught:
        convert(FIXTURES / "xmod_prenorm", tmp_path / "out")
    assert caught.value.exit_code == 2
    assert "--default-language" in caught.value.message and "de_DE, fr_XX, ru_RU" in caught.value.message
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConversionError, match="no adapter for --default-language en_XX"):
        convert(FIXTURES / "xmod_prenorm", tmp_path / "out", default_language="en_XX")


def test_inspect_lists_the_languages() -> None:
    description = inspect_source(FIXTURES / "xmod_base")
    assert description["family"] == "xmod" and description["languages"] == ["en_XX", "de_DE", "hi_IN"]
    assert inspect_source(FIXTURES / "roberta_preln")["family"] == "roberta-prelayernorm"
    # Without en_XX, convert needs a default language; inspect takes one to describe the plan.
    assert "family" not in inspect_source(FIXTURES / "xmod_prenorm")
    described = inspect_source(FIXTURES / "xmod_prenorm", default_language="ru_RU")
    assert described["family"] == "xmod" and described["languages"] == ["de_DE", "fr_XX", "ru_RU"]


@pytest.mark.parametrize("streamed", [False, True], ids=["from_pretrained", "block-by-block"])
def test_verify_checks_an_xmod_folder_in_every_language(tmp_path: Path, streamed: bool) -> None:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "out"
    convert(FIXTURES / "xmod_base", out, verify=False)
    assert verify_folder(FIXTURES / "xmod_base", out, streamed=streamed).passed
    # A wrong adapter in one language only: that language fails, the others pass.
    weights = load_file(out / "model.safetensors")
    name = "roberta.encoder.layer.1.output.adapter_modules.de_DE.dense2.bias"
    weights[name][3] += 0.5  # one channel: a LayerNorm after the adapter would undo a uniform shift
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    result = verify_folder(FIXTURES / "xmod_base", out, streamed=streamed).weights
    failing = {check.input.split("@")[1] for check in result.checks if not check.passed}
    assert failing == {"de_DE", "mixed"}
