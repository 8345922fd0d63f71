"""Hyper-parameters the checkpoint lacks are never guessed: they come from fairseq's defaults or from flags."""

from __future__ import annotations

import argparse
import json
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM

from conftest import FIXTURES, assert_matches_fairseq
from fairseq_to_hf.errors import ConversionError
from fairseq_to_hf.reader import read_checkpoint
from fairseq_to_hf.reference.forward import FairseqReference
from test_bad_input import assert_refused, run_cli


def resaved(fixture: str, dest: Path, args: dict | None, layout: str = "checkpoint") -> Path:
    """The fixture's folder with its checkpoint saved again with `args` (None: neither args nor cfg).

    `layout`: "checkpoint" ({"model": state dict, ...}, fairseq's), "state dict" (torch.save of the
    model's state dict alone), "hub" (torch.save of a RobertaHubInterface's state dict: the model under
    `model.` beside the hub's `_float_tensor` buffer) or "ddp" (a DistributedDataParallel's: `module.`)."""
    shutil.copytree(FIXTURES / fixture, dest, ignore=shutil.ignore_patterns("model.pt"))
    checkpoint = read_checkpoint(FIXTURES / fixture / "model.pt")
    state: OrderedDict = OrderedDict()
    for name, lazy in checkpoint.tensors.items():
        # A tied LM head stays one storage with the embedding, as fairseq saves it.
        shared = next((state[other] for other, seen in checkpoint.tensors.items()
                       if other in state and seen.same_data(lazy)), None)
        state[name] = shared if shared is not None else lazy.load()
    root: dict = {"model": state}
    if args is not None:
        root["args"] = argparse.Namespace(**args)
    if layout == "state dict":
        root = state
    elif layout == "hub":
        root = OrderedDict([("_float_tensor", torch.tensor([0.0])), *((f"model.{k}", v) for k, v in state.items())])
    elif layout == "ddp":
        root = OrderedDict((f"module.{k}", v) for k, v in state.items())
    torch.save(root, dest / "model.pt")
    return dest


def test_no_hyper_parameters_needs_the_flags(tmp_path: Path) -> None:
    src = resaved("roberta_mlm", tmp_path / "src", None)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "holds no hyper-parameters (neither args nor cfg)",
                   "pass --num-heads N --activation-fn NAME")
    inspected = run_cli("inspect", src, "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert "--num-heads N" in json.loads(inspected.stdout)["convert_would_produce"]["default"]["refused"]


def test_flags_supply_what_the_checkpoint_lacks(tmp_path: Path) -> None:
    src = resaved("roberta_mlm", tmp_path / "src", None)
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--num-heads", "4", "--activation-fn", "gelu")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["num_attention_heads"] == 4
    assert_matches_fairseq("roberta_mlm", out, AutoModelForMaskedLM, None)
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["source"]["hyper_parameters_from"] == "flags (--num-heads 4, --activation-fn gelu)"
    verified = run_cli("verify", src, out, "--num-heads", "4", "--activation-fn", "gelu")
    assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize("layout", ["state dict", "hub", "ddp"])
def test_a_bare_state_dict_converts_with_the_flags(tmp_path: Path, layout: str) -> None:
    """torch.save(model.state_dict()), of roberta_hub.state_dict() and of a DDP-wrapped model's, as users save
    models."""
    src = resaved("roberta_mlm", tmp_path / "src", None, layout=layout)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "holds no hyper-parameters (neither args nor cfg)")
    result = run_cli("convert", src, out, "--num-heads", "4", "--activation-fn", "gelu")
    assert result.returncode == 0, result.stderr
    assert_matches_fairseq("roberta_mlm", out, AutoModelForMaskedLM, None)


def test_classifier_without_hyper_parameters_needs_its_pooler_activation(tmp_path: Path) -> None:
    src = resaved("roberta_cls", tmp_path / "src", None)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out, "--num-heads", "4"), out, 2,
                   "pass --activation-fn NAME --pooler-activation-fn NAME")


def test_a_flag_that_contradicts_the_checkpoint_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_refused(run_cli("convert", FIXTURES / "roberta_mlm", out, "--num-heads", "8"), out, 2,
                   "--num-heads 8 contradicts its encoder_attention_heads 4")
    assert_refused(run_cli("convert", FIXTURES / "roberta_mlm", out, "--activation-fn", "relu"), out, 2,
                   "--activation-fn relu contradicts its activation_fn 'gelu'")


def _args_without_heads(arch: str) -> dict:
    hparams = dict(read_checkpoint(FIXTURES / "roberta_v010" / "model.pt").hparams, arch=arch)
    del hparams["encoder_attention_heads"]
    return hparams


def test_args_without_heads_and_an_unknown_arch_need_the_flag(tmp_path: Path) -> None:
    src = resaved("roberta_v010", tmp_path / "src", _args_without_heads("my_roberta"))
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "do not give encoder_attention_heads",
                   "'my_roberta'", "pass --num-heads N")
    result = run_cli("convert", src, out, "--num-heads", "4")
    assert result.returncode == 0, result.stderr


def test_args_without_heads_get_the_default_of_their_fairseq_arch(tmp_path: Path) -> None:
    # roberta_base's arch function sets 12 heads, which do not divide the fixture's hidden size 32:
    # fairseq itself cannot build this model, and neither a flag nor a guess may paper over that.
    src = resaved("roberta_v010", tmp_path / "src", _args_without_heads("roberta_base"))
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "hidden size 32 does not divide into 12 attention heads, "
                   "fairseq's default for arch 'roberta_base', which the checkpoint's args lack: fairseq cannot "
                   "build this model")
    assert_refused(run_cli("convert", src, out, "--num-heads", "4"), out, 2,
                   "--num-heads 4 contradicts fairseq's default 12 for encoder_attention_heads")


@pytest.mark.parametrize("key, value, phrase", [
    ("encoder_embed_dim", 48, "say encoder_embed_dim 48, the token embedding is 32 wide"),
    ("encoder_ffn_embed_dim", 128, "say encoder_ffn_embed_dim 128, the layers' fc1 has 64 rows"),
    ("max_positions", 512, "the position table has 66 rows, and the hyper-parameters say max_positions 512, "
                           "for which fairseq builds 514 (max_positions + 2)"),
])
def test_a_size_in_the_args_that_the_tensors_contradict_is_refused(tmp_path: Path, key: str, value: int,
                                                                   phrase: str) -> None:
    """fairseq builds its modules from args/cfg and then loads the tensors into them: it refuses such a file."""
    hparams = dict(read_checkpoint(FIXTURES / "roberta_v010" / "model.pt").hparams, **{key: value})
    src = resaved("roberta_v010", tmp_path / "src", hparams)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, phrase, "fairseq would refuse to load this file")
    inspected = run_cli("inspect", src, "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert phrase in json.loads(inspected.stdout)["convert_would_produce"]["default"]["refused"]


def test_inspect_lists_every_problem_of_a_refusal(tmp_path: Path) -> None:
    hparams = dict(read_checkpoint(FIXTURES / "roberta_v010" / "model.pt").hparams, encoder_layers=9,
                   encoder_ffn_embed_dim=128)
    inspected = run_cli("inspect", resaved("roberta_v010", tmp_path / "src", hparams))
    assert inspected.returncode == 0, inspected.stderr
    lines = inspected.stdout.splitlines()
    refused = next(i for i, line in enumerate(lines) if "convert -> refused:" in line)
    assert "(2 problems)" in lines[refused]
    assert lines[refused + 1].startswith("    - the hyper-parameters say encoder_layers 9")
    assert lines[refused + 2].startswith("    - the hyper-parameters say encoder_ffn_embed_dim 128")


def test_max_positions_is_tokens_per_sample_where_the_args_lack_it(tmp_path: Path) -> None:
    hparams = read_checkpoint(FIXTURES / "roberta_v010" / "model.pt").hparams
    agreeing = {key: value for key, value in hparams.items() if key != "max_positions"}
    src = resaved("roberta_v010", tmp_path / "src", dict(agreeing, tokens_per_sample=64))
    result = run_cli("convert", src, tmp_path / "out", "--no-verify")
    assert result.returncode == 0, result.stderr
    src = resaved("roberta_v010", tmp_path / "src2", dict(agreeing, tokens_per_sample=128))
    assert_refused(run_cli("convert", src, tmp_path / "out2"), tmp_path / "out2", 2,
                   "the hyper-parameters say tokens_per_sample 128, for which fairseq builds 130")


def test_the_reference_never_defaults_a_hyper_parameter() -> None:
    source = read_checkpoint(FIXTURES / "roberta_mlm" / "model.pt")
    hparams = dict(source.hparams)
    del hparams["encoder_attention_heads"]
    with pytest.raises(ConversionError, match="needs encoder_attention_heads"):
        FairseqReference(source.tensors, hparams).forward([torch.tensor([0, 5, 2])], None)


def test_convert_takes_the_supplied_hyper_parameters_by_keyword(tmp_path) -> None:
    from fairseq_to_hf import ConversionError, convert

    report = convert(FIXTURES / "roberta_mlm", tmp_path / "agrees", num_heads=4, verify=False)
    assert report.outputs[0].architecture == "RobertaForMaskedLM"
    with pytest.raises(ConversionError, match="--num-heads 3 contradicts"):
        convert(FIXTURES / "roberta_mlm", tmp_path / "contradicts", num_heads=3, verify=False)


def test_ema_weights_are_named_and_the_model_weights_converted(tmp_path: Path) -> None:
    """--store-ema keeps an EMA copy in extra_state['ema']; fairseq's loaders use 'model', and so does this."""
    src = resaved("roberta_mlm", tmp_path / "src", dict(read_checkpoint(FIXTURES / "roberta_mlm" / "model.pt").hparams))
    saved = torch.load(src / "model.pt", weights_only=False)
    saved["extra_state"] = {"ema": OrderedDict((name, value * 0.5) for name, value in saved["model"].items())}
    torch.save(saved, src / "model.pt")
    out = tmp_path / "out"
    result = run_cli("convert", src, out)
    assert result.returncode == 0, result.stderr
    assert "the checkpoint also holds EMA weights (extra_state['ema'], --store-ema)" in result.stderr
    assert_matches_fairseq("roberta_mlm", out, AutoModelForMaskedLM, None)


def test_computed_positions_take_tokens_per_sample_where_the_args_lack_max_positions(tmp_path: Path) -> None:
    """fairseq's RoBERTa sets max_positions to tokens_per_sample when args lack it; the table follows."""
    hparams = read_checkpoint(FIXTURES / "roberta_sinusoidal" / "model.pt").hparams
    src = resaved("roberta_sinusoidal", tmp_path / "src",
                  {key: value for key, value in hparams.items() if key != "max_positions"})
    out = tmp_path / "out"
    result = run_cli("convert", src, out)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 66
    without = resaved("roberta_sinusoidal", tmp_path / "without", {key: value for key, value in hparams.items()
                                                                    if key not in ("max_positions", "tokens_per_sample")})
    assert_refused(run_cli("convert", without, tmp_path / "out2"), tmp_path / "out2", 2,
                   "neither max_positions nor tokens_per_sample gives a number of positions")


@pytest.mark.parametrize("value", [64.0, "32", True, [32]], ids=["float", "string", "bool", "list"])
def test_a_size_of_the_wrong_type_is_named_and_the_tensors_decide(tmp_path: Path, value) -> None:
    hparams = dict(read_checkpoint(FIXTURES / "roberta_v010" / "model.pt").hparams, encoder_embed_dim=value)
    src = resaved("roberta_v010", tmp_path / "src", hparams)
    out = tmp_path / "out"
    result = run_cli("convert", src, out)
    assert result.returncode == 0, result.stderr
    assert f"note: the hyper-parameters give encoder_embed_dim {value!r}, which is not a whole number" \
        in result.stderr
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 32
