"""RobertaPreLayerNorm and X-MOD fixtures from the real fairseq: detected, converted without flags (but
--default-language where the model has no en_XX), every language compared with fairseq's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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
    # fairseq computes the positions (sinusoidal) or adds none: written as Transformers' table.
    ("roberta_sinusoidal", {}, MLM, None, "roberta", "RobertaForMaskedLM"),
    ("roberta_nopos", {}, MLM, None, "roberta", "RobertaForMaskedLM"),
    # 3 layers stored, encoder_layers_to_keep "0,2": fairseq's loader runs stored layers 0 and 2.
    ("roberta_keep_layers", {}, MLM, None, "roberta", "RobertaForMaskedLM"),
    ("roberta_relu2_cls", {}, CLASSIFIER, "sentiment", "roberta", "RobertaForSequenceClassification"),
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
    # Without en_XX, convert needs a default language; inspect describes the model either way, and
    # takes one to describe the outputs.
    undecided = inspect_source(FIXTURES / "xmod_prenorm")
    assert undecided["family"] == "xmod" and undecided["adapters"]["ln_before_adapter"] is False
    assert all("--default-language" in outcome["refused"] for outcome in undecided["convert_would_produce"].values())
    described = inspect_source(FIXTURES / "xmod_prenorm", default_language="ru_RU")
    assert described["languages"] == ["de_DE", "fr_XX", "ru_RU"]
    assert all("plan" in outcome for outcome in described["convert_would_produce"].values())


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
    failing = {check.input.split("@")[1] for check in result.checks if not check.passed and "@" in check.input}
    assert failing == {"de_DE", "mixed"}
    # And the stored tensor itself differs from the source's.
    assert [check.output for check in result.checks if not check.passed and "@" not in check.input] == [name]


@pytest.mark.parametrize("fixture,options", [("xmod_prenorm", {"default_language": "ru_RU"}), ("xmod_base", {})])
def test_xmod_wiring_missing_from_the_cfg_is_the_arch_default(fixture: str, options: dict, tmp_path: Path) -> None:
    """fairseq's loader runs the arch function, which fills the adapters' wiring the args lack:
    xmod_large_prenorm and xmod_base* differ, so the defaults go by arch, and an unknown arch is refused."""
    from fairseq_to_hf.reader import read_checkpoint
    from test_hyper_parameters import resaved

    wiring = ("adapter_reuse_layer_norm", "ln_before_adapter")
    hparams = {key: value for key, value in read_checkpoint(FIXTURES / fixture / "model.pt").hparams.items()
               if key not in wiring}
    src = resaved(fixture, tmp_path / "src", hparams)
    out = tmp_path / "out"
    assert convert(src, out, head="lm", **options).verified
    assert max(assert_matches_fairseq(fixture, out, MLM, None).values()) <= 1e-5
    config, recorded = json_file(out / "config.json"), recording(fixture).meta["xmod"]["cfg_model"]
    assert {name: config[name] for name in wiring} == {name: recorded[name] for name in wiring}

    renamed = resaved(fixture, tmp_path / "renamed", {**hparams, "arch": "my_xmod"})
    with pytest.raises(ConversionError, match="do not give adapter_reuse_layer_norm and ln_before_adapter"):
        convert(renamed, tmp_path / "out2", head="lm", **options)


def test_verify_refuses_an_xmod_config_that_differs_from_the_checkpoint(tmp_path: Path) -> None:
    """A folder missing a language, or running another language than fairseq for text given none."""
    import json

    out = tmp_path / "out"
    convert(FIXTURES / "xmod_base", out, verify=False)
    config = json_file(out / "config.json")

    def edited(**fields) -> Path:
        folder = tmp_path / "-".join(fields)
        folder.mkdir()
        for item in out.iterdir():
            (folder / item.name).symlink_to(item)
        (folder / "config.json").unlink()
        (folder / "config.json").write_text(json.dumps({**config, **fields}))
        return folder

    fewer = verify_folder(FIXTURES / "xmod_base", edited(languages=["en_XX", "de_DE"]))
    assert not fewer.passed and "languages" in fewer.config_mismatches[0]
    other_default = edited(default_language="de_DE")
    result = verify_folder(FIXTURES / "xmod_base", other_default)
    assert not result.passed and "fairseq runs en_XX for text given no language" in result.config_mismatches[0]
    assert verify_folder(FIXTURES / "xmod_base", other_default, default_language="de_DE").passed


def test_default_language_is_refused_for_a_model_without_languages(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="applies to X-MOD models"):
        convert(FIXTURES / "roberta_preln", tmp_path / "out", default_language="en_XX")
    assert not (tmp_path / "out").exists()


def test_an_xmod_arch_without_its_adapters_is_refused(tmp_path: Path) -> None:
    """Not converted as the XLM-R its remaining tensors look like: the arch says adapters ran."""
    import argparse
    import shutil
    from collections import OrderedDict

    import torch

    from fairseq_to_hf.reader import read_checkpoint

    checkpoint = read_checkpoint(FIXTURES / "xmod_base" / "model.pt")
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "xmod_base", src, ignore=shutil.ignore_patterns("model.pt"))
    state = OrderedDict((name, lazy.load()) for name, lazy in checkpoint.tensors.items()
                        if ".adapter_modules." not in name and name != "encoder.lm_head.weight")
    torch.save({"model": state, "args": argparse.Namespace(**checkpoint.hparams)}, src / "model.pt")
    with pytest.raises(ConversionError, match="without any language adapter"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_relu_squared_has_no_masked_lm_head(tmp_path: Path) -> None:
    """fairseq's masked-LM head applies activation_fn (relu_squared here), Transformers' always gelu."""
    with pytest.raises(ConversionError) as caught:
        convert(FIXTURES / "roberta_relu2_cls", tmp_path / "out", head="lm")
    message = caught.value.message
    assert "relu_squared" in message and "masked-LM head" in message and "gelu" in message
    assert not (tmp_path / "out").exists()


def test_sinusoidal_positions_are_written_as_fairseqs_table(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "out"
    assert convert(FIXTURES / "roberta_sinusoidal", out).verified
    fairseq = recording("roberta_sinusoidal")
    config = json_file(out / "config.json")
    assert config["max_position_embeddings"] == fairseq.meta["max_positions"] + 2
    assert config["max_position_embeddings"] == fairseq.meta["position_table_rows"]
    written = load_file(out / "model.safetensors")["roberta.embeddings.position_embeddings.weight"]
    table = fairseq["positions.table"]  # fairseq's SinusoidalPositionalEmbedding buffer
    assert written.shape == table.shape and torch.equal(written, table)


def test_no_positions_are_written_as_zeros(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "out"
    assert convert(FIXTURES / "roberta_nopos", out).verified
    config = json_file(out / "config.json")
    assert config["max_position_embeddings"] == recording("roberta_nopos").meta["max_positions"] + 2
    written = load_file(out / "model.safetensors")["roberta.embeddings.position_embeddings.weight"]
    assert not written.any()


def test_encoder_layers_to_keep_drops_layer_1_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = convert(FIXTURES / "roberta_keep_layers", out)
    assert report.verified
    layers = recording("roberta_keep_layers").meta["layers"]
    assert layers["stored"] == 3 and layers["stored_layers_run"] == [0, 2]
    assert json_file(out / "config.json")["num_hidden_layers"] == 2
    dropped = report.outputs[0].dropped
    layer_1 = {key: reason for key, reason in dropped.items() if key.startswith("encoder.sentence_encoder.layers.1.")}
    assert layer_1 and all("encoder_layers_to_keep" in reason for reason in layer_1.values())
    assert not any(".layers.0." in key or ".layers.2." in key for key in dropped)
    assert verify_folder(FIXTURES / "roberta_keep_layers", out).passed


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_sinusoidal_model_keeps_fairseqs_float32_table(tmp_path: Path, dtype: torch.dtype) -> None:
    """fairseq loads a half-precision checkpoint into a float32 model, whose sinusoidal table is computed in
    float32: the table stays float32 beside the half-precision weights, and verify takes it as such."""
    import argparse
    import shutil
    from collections import OrderedDict

    from safetensors import safe_open

    from fairseq_to_hf.reader.checkpoint import read_checkpoint

    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "roberta_sinusoidal", src)
    checkpoint = read_checkpoint(src / "model.pt")
    state = OrderedDict((name, lazy.load().to(dtype) if lazy.dtype.is_floating_point else lazy.load())
                        for name, lazy in checkpoint.tensors.items())
    torch.save({"model": state, "args": argparse.Namespace(**checkpoint.hparams)}, src / "model.pt")
    out = tmp_path / "out"
    assert convert(src, out).verified
    with safe_open(out / "model.safetensors", "pt") as weights:
        table = weights.get_tensor("roberta.embeddings.position_embeddings.weight")
        assert weights.get_tensor("roberta.embeddings.word_embeddings.weight").dtype == dtype
    assert table.dtype == torch.float32 and torch.equal(table, recording("roberta_sinusoidal")["positions.table"])
    assert verify_folder(src, out).passed
