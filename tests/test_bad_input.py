"""A user's mistake gets one clear line, a documented exit code, and nothing written."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, GPT2_FLAGS

MLM = FIXTURES / "roberta_mlm"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fairseq_to_hf", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def copy_fixture(name: str, dest: Path) -> Path:
    shutil.copytree(FIXTURES / name, dest)
    return dest


def assert_refused(result: subprocess.CompletedProcess, out: Path, code: int, *phrases: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fairseq-to-hf: error: ")]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "staging folder left behind"


def test_missing_dict(tmp_path: Path) -> None:
    src = copy_fixture("roberta_mlm", tmp_path / "src")
    (src / "dict.txt").unlink()
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "has no dict.txt", "--dict")


def test_dict_of_another_model(tmp_path: Path) -> None:
    src = copy_fixture("roberta_mlm", tmp_path / "src")
    with open(src / "dict.txt", "a") as dictionary:
        dictionary.writelines(f"{100000 + i} 1\n" for i in range(50))
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "gives 4 specials + 390 lines (+ <mask>) = 395 ids",
                   "but the embedding has 345 rows; fairseq refuses this pair", "--dict")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    src = copy_fixture("roberta_mlm", tmp_path / "src")
    (src / "model.pt").write_text("this is a text file\n")
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, "is not a torch checkpoint")


def _encoder_decoder_checkpoint(folder: Path, arch: str) -> None:
    # The key layout of fairseq's translation transformer and BART: encoder.layers / decoder.layers.
    folder.mkdir()
    state = OrderedDict()
    state["encoder.embed_tokens.weight"] = torch.zeros(16, 8)
    state["encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(8, 8)
    state["decoder.layers.0.encoder_attn.q_proj.weight"] = torch.zeros(8, 8)
    torch.save({"model": state, "args": argparse.Namespace(arch=arch)}, folder / "model.pt")
    shutil.copy(MLM / "dict.txt", folder / "dict.txt")


@pytest.mark.parametrize("arch", ["transformer_iwslt_de_en", "bart_base"])
def test_encoder_decoder_checkpoint(tmp_path: Path, arch: str) -> None:
    _encoder_decoder_checkpoint(tmp_path / "src", arch)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", tmp_path / "src", out), out, 2, arch, "encoder-decoder")


def edited_mlm_checkpoint(src: Path, edit) -> Path:
    """roberta_mlm re-saved after `edit(state)` changed its state dict in place."""
    from fairseq_to_hf.reader import read_checkpoint

    src.mkdir()
    shutil.copy(MLM / "dict.txt", src / "dict.txt")
    checkpoint = read_checkpoint(MLM / "model.pt")
    state = OrderedDict((name, lazy.load()) for name, lazy in checkpoint.tensors.items())
    edit(state)
    torch.save({"model": state, "args": argparse.Namespace(**checkpoint.hparams)}, src / "model.pt")
    return src


def test_unknown_tensor_is_listed(tmp_path: Path) -> None:
    def edit(state: OrderedDict) -> None:
        state["encoder.sentence_encoder.layers.0.adapter.down.weight"] = torch.zeros(4, 32)
        del state["encoder.sentence_encoder.layers.1.fc2.bias"]
        state["encoder.sentence_encoder.layers.0.fc1.weight"] = torch.zeros(63, 32)

    src = edited_mlm_checkpoint(tmp_path / "src", edit)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2,
                   "3 problems",
                   "layers.0.adapter.down.weight [4, 32] is not part of any known layout",
                   "nothing in the checkpoint fills roberta.encoder.layer.1.output.dense.bias",
                   "layers.0.fc1.weight has shape [63, 32], expected [64, 32]")


def test_ambiguous_heads_are_listed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("convert", FIXTURES / "roberta_two_heads", out)
    assert_refused(result, out, 2, "has 2 classification heads", "--head", "sentiment_head: 3 outputs",
                   "stsb: 1 output (regression)")


def test_existing_output_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("convert", MLM, out)
    assert result.returncode == 3 and "already exists" in result.stderr and "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_force_replaces_output_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = run_cli("convert", MLM, out, "--force", "--no-verify")
    assert result.returncode == 0, result.stderr
    assert not (out / "old.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_nan_weights_are_named_and_need_a_flag(tmp_path: Path) -> None:
    def edit(state: OrderedDict) -> None:
        state["encoder.sentence_encoder.layers.1.fc1.weight"][0, 0] = float("nan")
        state["encoder.lm_head.dense.bias"][3] = float("inf")

    src = edited_mlm_checkpoint(tmp_path / "src", edit)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, f"{src / 'model.pt'}: 2 source tensors hold NaN or Inf values",
                   "encoder.sentence_encoder.layers.1.fc1.weight", "encoder.lm_head.dense.bias",
                   "--allow-non-finite")
    # NaN everywhere on both sides proves nothing: the comparison fails, and --no-verify is the way out.
    unverifiable = run_cli("convert", src, out, "--allow-non-finite")
    assert_refused(unverifiable, out, 1, "not finite", "--no-verify")
    allowed = run_cli("convert", src, out, "--allow-non-finite", "--no-verify")
    assert allowed.returncode == 0, allowed.stderr


def _without_layers(state: OrderedDict) -> None:
    for key in [key for key in state if ".layers." in key]:
        del state[key]


def _short_position_table(state: OrderedDict) -> None:
    key = "encoder.sentence_encoder.embed_positions.weight"
    state[key] = state[key][:4].clone()


def _without_the_last_layer(state: OrderedDict) -> None:
    for key in [key for key in state if ".layers.1." in key]:
        del state[key]


def _integer_weight(state: OrderedDict) -> None:
    key = "encoder.sentence_encoder.layers.0.fc1.weight"
    state[key] = state[key].round().long()


@pytest.mark.parametrize("edit, phrase", [(_without_layers, "no encoder layers"),
                                          (_short_position_table, "the position table has 4 rows"),
                                          (_without_the_last_layer, "say encoder_layers 2, the tensors hold 1"),
                                          (_integer_weight, "fc1.weight holds int64 values")],
                         ids=["zero-layers", "4-row-position-table", "a-layer-missing", "integer-weight"])
def test_degenerate_encoders_are_refused_in_one_line(tmp_path: Path, edit, phrase: str) -> None:
    src = edited_mlm_checkpoint(tmp_path / "src", edit)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out), out, 2, phrase)


def test_keys_mixing_both_prefixes_convert_as_fairseq_loads_them(tmp_path: Path) -> None:
    """fairseq renames `decoder.` (<= 0.9) to `encoder.` key by key; the reference must find either."""
    def edit(state: OrderedDict) -> None:
        for key in [key for key in state if key.startswith("encoder.sentence_encoder.layers.1.")]:
            state["decoder" + key[len("encoder"):]] = state.pop(key)

    src = edited_mlm_checkpoint(tmp_path / "src", edit)
    out = tmp_path / "out"
    result = run_cli("convert", src, out)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stderr.splitlines()[-1]
    from conftest import assert_matches_fairseq
    from transformers import AutoModelForMaskedLM

    assert_matches_fairseq("roberta_mlm", out, AutoModelForMaskedLM, None)


@pytest.fixture(scope="module")
def converted_mlm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "good"
    result = run_cli("convert", MLM, out, "--no-verify")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("key, value", [("num_hidden_layers", 3), ("hidden_size", 64)])
def test_verify_on_a_folder_whose_config_was_edited_fails_with_the_reason(converted_mlm: Path, tmp_path: Path,
                                                                          key: str, value: int) -> None:
    folder = tmp_path / "edited"
    shutil.copytree(converted_mlm, folder)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    result = run_cli("verify", MLM, folder)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"config.json says {key} {value}" in result.stderr and "DOES NOT match" in result.stderr


def test_verify_refuses_other_models_and_missing_folders(converted_mlm: Path, tmp_path: Path) -> None:
    bert = tmp_path / "bert"
    shutil.copytree(converted_mlm, bert)
    config = json.loads((bert / "config.json").read_text())
    config.update(model_type="bert", architectures=["BertForMaskedLM"])
    (bert / "config.json").write_text(json.dumps(config))
    for folder, phrase in ((bert, "holds a BertForMaskedLM"), (tmp_path / "missing", "does not exist")):
        result = run_cli("verify", MLM, folder)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and phrase in lines[0], result.stderr


def test_float16_overflow_is_not_blamed_on_the_source(tmp_path: Path) -> None:
    def edit(state: OrderedDict) -> None:
        state["encoder.sentence_encoder.layers.0.fc2.weight"][0, 0] = 1.2e5  # finite, beyond float16's 65504

    src = edited_mlm_checkpoint(tmp_path / "src", edit)
    out = tmp_path / "out"
    result = run_cli("convert", src, out, "--dtype", "float16")
    assert_refused(result, out, 2, "1 tensor exceed float16's range (max |value| 1.2e5): use --dtype bfloat16 or float32",
                   "encoder.sentence_encoder.layers.0.fc2.weight")
    assert "NaN" not in result.stderr and "damaged" not in result.stderr


def _edited(folder: Path, tmp_path: Path, name: str, edit) -> Path:
    edited = tmp_path / name
    shutil.copytree(folder, edited)
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps(edit(config)))
    return edited


@pytest.mark.parametrize("edit, code, phrase", [
    (lambda config: [1, 2], 2, "holds a JSON list, not an object"),
    (lambda config: {**config, "architectures": 5}, 2, "holds architectures 5"),
    (lambda config: {**config, "architectures": "RobertaForMaskedLM"}, 2, "holds architectures 'RobertaForMaskedLM'"),
    (lambda config: {**config, "model_type": "bogus"}, 1, "model_type 'bogus'"),
    (lambda config: {**config, "vocab_size": 100}, 1, "vocab_size 100, the checkpoint's embedding has"),
    # More rows than the embedding (tokens added after conversion) are allowed, if the weights have them.
    (lambda config: {**config, "vocab_size": 400}, 2, "2 weights have another shape than its config.json gives;"
                                                      " check that the folder holds the model's weights and "
                                                      "config.json\n  - lm_head.bias: 345 stored, 400 by config.json"
                                                      "\n  - roberta.embeddings.word_embeddings.weight: 345 x 32 "
                                                      "stored, 400 x 32 by config.json\n"),
], ids=["list", "architectures-int", "architectures-str", "model-type", "vocab-size", "vocab-size-beyond-weights"])
def test_verify_on_a_config_that_cannot_describe_the_checkpoint(converted_mlm: Path, tmp_path: Path, edit,
                                                                code: int, phrase: str) -> None:
    result = run_cli("verify", MLM, _edited(converted_mlm, tmp_path, "edited", edit))
    assert result.returncode == code and "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert phrase in result.stderr, result.stderr
    if code == 1:  # a folder that does not match says why, even with --quiet
        quiet = run_cli("verify", MLM, tmp_path / "edited", "--quiet")
        assert quiet.returncode == 1 and phrase in quiet.stderr and "DOES NOT match" in quiet.stderr


def test_verify_checks_the_heads_and_labels_a_classifier_folder_names(tmp_path: Path) -> None:
    out = tmp_path / "cls"
    assert run_cli("convert", FIXTURES / "roberta_cls", out, "--no-verify").returncode == 0
    as_lm = run_cli("verify", FIXTURES / "roberta_cls", out, "--head", "lm")
    assert as_lm.returncode == 2 and "is a classifier folder" in as_lm.stderr, as_lm.stderr
    unknown = run_cli("verify", FIXTURES / "roberta_cls", out, "--head", "nope")
    assert unknown.returncode == 2 and "has no head named 'nope'" in unknown.stderr, unknown.stderr

    def swapped(config: dict) -> dict:
        names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        names[0], names[1] = names[1], names[0]
        return {**config, "id2label": {str(i): name for i, name in enumerate(names)}}

    relabelled = run_cli("verify", FIXTURES / "roberta_cls", _edited(out, tmp_path, "swapped", swapped))
    assert relabelled.returncode == 1 and "differs from the label dict's classes" in relabelled.stderr



@pytest.mark.parametrize("fixture, says", [("roberta_mlm", "the masked-LM head"),
                                           ("roberta_reg", "a regression head")])
def test_a_label_dict_for_an_output_without_labels_is_refused(tmp_path: Path, fixture: str, says: str) -> None:
    out = tmp_path / "out"
    result = run_cli("convert", FIXTURES / fixture, out, "--label-dict", FIXTURES / "roberta_cls" / "label" / "dict.txt",
                     "--no-verify")
    assert_refused(result, out, 2, "--label-dict was given", says, "drop --label-dict")


def test_tokenizer_files_named_on_the_command_line_are_the_ones_used(tmp_path: Path) -> None:
    """SRC ships a sentencepiece model; GPT-2 files passed by name are not silently set aside for it."""
    out = tmp_path / "out"
    result = run_cli("convert", FIXTURES / "xlmr_mlm", out, *GPT2_FLAGS, "--no-verify")
    assert_refused(result, out, 2, "encoder.json", "not this model's tokenizer")


def test_verify_compares_every_embedding_row_and_refuses_foreign_shards(tmp_path: Path) -> None:
    """A classifier never predicts tokens: a changed row of its word embeddings that no verification
    input uses must still fail; an index naming a shard outside OUT is not a model folder."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "cls"
    assert run_cli("convert", FIXTURES / "roberta_cls", out, *GPT2_FLAGS, "--no-verify").returncode == 0
    weights = load_file(out / "model.safetensors")
    name = "roberta.embeddings.word_embeddings.weight"
    weights[name][300] = 50.0  # a row of dict.txt that no verification input uses
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("verify", FIXTURES / "roberta_cls", out)
    assert result.returncode == 1 and "word_embeddings" in result.stderr and "DOES NOT match" in result.stderr

    sharded = tmp_path / "sharded"
    assert run_cli("convert", MLM, sharded, "--max-shard-size", "20KB", "--no-verify").returncode == 0
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {key: ("../elsewhere.safetensors" if value == first else value)
                           for key, value in index["weight_map"].items()}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    refused = run_cli("verify", MLM, sharded)
    assert refused.returncode == 2 and "not a file of this folder" in refused.stderr

    (sharded / "model.safetensors.index.json").unlink()
    (sharded / "config.json").write_text("[" * 100000 + "]" * 100000)
    deep = run_cli("verify", MLM, sharded)
    assert deep.returncode == 2 and "config.json cannot be read" in deep.stderr and "internal error" not in deep.stderr


@pytest.fixture(scope="module")
def classifier_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "cls"
    assert run_cli("convert", FIXTURES / "roberta_cls", out, *GPT2_FLAGS).returncode == 0
    return out


def edited_copy(folder: Path, dest: Path, file: str, edit) -> Path:
    shutil.copytree(folder, dest)
    document = json.loads((dest / file).read_text())
    edit(document)
    (dest / file).write_text(json.dumps(document))
    return dest


@pytest.mark.parametrize("file, edit, code, phrase", [
    ("config.json", lambda c: c.update(num_labels="x"), 2, "num_labels 'x', which is not a number of labels"),
    ("config.json", lambda c: c.update(num_labels=[3]), 2, "num_labels [3]"),
    ("tokenizer_config.json", lambda c: c.update(model_max_length="x"), 2, "its tokenizer cannot encode text"),
    ("config.json", lambda c: c.update(problem_type="multi_label_classification"), 1,
     "problem_type 'multi_label_classification'"),
    ("config.json", lambda c: c.update(label2id={name: 0 for name in c["label2id"]}), 1,
     "is not the inverse of its id2label"),
    ("config.json", lambda c: c.update(num_attention_heads=4.0), 1, "num_attention_heads 4.0, where fairseq runs 4"),
    ("config.json", lambda c: c.update(layer_norm_eps="1e-5"), 1, "layer_norm_eps '1e-5'"),
    ("config.json", lambda c: c.update(eos_token_id=0), 1, "eos_token_id 0, fairseq's is 2"),
    # the tanh approximation of GELU: on this tiny model within the forward passes' tolerance
    ("config.json", lambda c: c.update(hidden_act="gelu_new"), 1, "hidden_act 'gelu_new', where fairseq runs gelu"),
    ("tokenizer_config.json", lambda c: c.update(padding_side="left"), 1, "padding_side is 'left'"),
    ("tokenizer.json", lambda t: t["added_tokens"].append({**t["added_tokens"][0], "id": 100, "content": "quick"}),
     1, "it adds tokens fairseq does not have: 'quick'"),
])
def test_verify_refuses_a_folder_whose_configs_were_edited(classifier_out: Path, tmp_path: Path, file: str, edit,
                                                           code: int, phrase: str) -> None:
    """Values pipelines act on (problem_type, label2id, the special tokens) are compared; values that are not
    even of their type are bad input, in one line, not an internal error."""
    folder = edited_copy(classifier_out, tmp_path / "edited", file, edit)
    result = run_cli("verify", FIXTURES / "roberta_cls", folder, *GPT2_FLAGS)
    assert result.returncode == code, result.stderr
    assert phrase in result.stderr and "Traceback" not in result.stderr
    assert "nothing was written" not in result.stderr


def test_verify_finds_an_edit_smaller_than_the_forward_tolerance(classifier_out: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "edited"
    shutil.copytree(classifier_out, folder)
    weights = load_file(folder / "model.safetensors")
    name = "roberta.encoder.layer.0.attention.self.query.weight"
    weights[name][0, 0] += 1e-4  # its effect on the outputs is far below the tolerance
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("verify", FIXTURES / "roberta_cls", folder, *GPT2_FLAGS)
    assert result.returncode == 1 and name in result.stderr, result.stderr
    assert run_cli("verify", FIXTURES / "roberta_cls", classifier_out, *GPT2_FLAGS).returncode == 0


@pytest.mark.parametrize("damage", ["tensor in the wrong shard", "tensor left out", "shard is a symlink"])
def test_verify_refuses_an_index_that_misdescribes_its_shards(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "sharded"
    assert run_cli("convert", MLM, out, "--max-shard-size", "20KB", "--no-verify").returncode == 0
    index_file = out / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = sorted(index["weight_map"])[0]
    if damage == "tensor in the wrong shard":
        index["weight_map"][name] = next(s for s in shards if s != index["weight_map"][name])
    elif damage == "tensor left out":
        del index["weight_map"][name]
    else:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        shutil.move(out / shards[0], elsewhere / shards[0])
        (out / shards[0]).symlink_to(elsewhere / shards[0])
    index_file.write_text(json.dumps(index))
    result = run_cli("verify", MLM, out)
    assert result.returncode == 2, result.stderr
    assert ("does not describe its shards" if damage != "shard is a symlink" else "not a file of this folder") \
        in result.stderr


def test_verify_text_that_cannot_be_used_is_refused(classifier_out: Path, tmp_path: Path) -> None:
    """verify --verify-text checks the file as convert does, and refuses it where no tokenizer can be checked."""
    result = run_cli("verify", FIXTURES / "roberta_cls", classifier_out, *GPT2_FLAGS, "--verify-text", "/dev/zero")
    assert result.returncode == 2 and "/dev/zero" in result.stderr and "Traceback" not in result.stderr
    lines = tmp_path / "lines.txt"
    lines.write_text("Hello world\n")
    result = run_cli("verify", FIXTURES / "roberta_cls", classifier_out, "--verify-text", lines)  # no GPT-2 files
    assert result.returncode == 2 and "the tokenizer cannot be checked" in result.stderr, result.stderr
    assert run_cli("verify", FIXTURES / "roberta_cls", classifier_out, *GPT2_FLAGS,
                   "--verify-text", lines).returncode == 0


def test_all_heads_names_the_heads_that_cannot_be_converted(tmp_path: Path) -> None:
    def edit(state: OrderedDict) -> None:
        for name, classes, inner in (("good", 3, 32), ("wide", 2, 48)):  # Transformers' head needs inner 32
            state[f"classification_heads.{name}.dense.weight"] = torch.randn(inner, 32)
            state[f"classification_heads.{name}.dense.bias"] = torch.randn(inner)
            state[f"classification_heads.{name}.out_proj.weight"] = torch.randn(classes, inner)
            state[f"classification_heads.{name}.out_proj.bias"] = torch.randn(classes)

    src = edited_mlm_checkpoint(tmp_path / "src", edit)
    out = tmp_path / "out"
    assert_refused(run_cli("convert", src, out, "--all-heads", "--no-verify"), out, 2,
                   "--all-heads: 1 of 2 heads cannot be converted exactly",
                   "convert the others one by one with --head NAME (good)", "wide: ", "inner dimension 48")
    assert run_cli("convert", src, out, "--head", "good", "--no-verify").returncode == 0


def test_verify_compares_the_alias_rows_with_unks(tmp_path: Path) -> None:
    """Tokens of the segmentation that dict.txt lacks get alias ids whose embedding is <unk>'s row."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "mlm"
    assert run_cli("convert", MLM, out, *GPT2_FLAGS, "--no-verify").returncode == 0
    weights = load_file(out / "model.safetensors")
    name = "roberta.embeddings.word_embeddings.weight"
    rows = json.loads((out / "config.json").read_text())["vocab_size"]
    assert rows > 345 and weights[name].shape[0] == rows  # alias rows after the model's 345
    assert run_cli("verify", MLM, out, *GPT2_FLAGS).returncode == 0
    weights[name][345:] = 3.0
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("verify", MLM, out, *GPT2_FLAGS)
    assert result.returncode == 1 and name in result.stderr, result.stderr


def test_the_parser_imports_no_torch() -> None:
    """--help and argument errors answer without the 2 s of torch's import, and the command line can act
    on its arguments (start hashing the checkpoint) before that import."""
    probe = """
import sys
from fairseq_to_hf import cli
cli.build_parser().parse_args(["convert", "src", "out", "--dtype", "float16", "--model-type", "xlm-roberta",
                               "--max-shard-size", "2GB", "--activation-fn", "gelu", "--head", "lm"])
print("torch" in sys.modules)
"""
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "False"


def test_a_library_message_becomes_part_of_one_plain_line() -> None:
    from fairseq_to_hf.errors import library_message

    coloured = RuntimeError("\x1b[1mValidation error\x1b[0m for field 'x':\n  x\x07y is not a float\n")
    assert library_message(coloured) == "Validation error for field 'x': x\\x07y is not a float"
    assert library_message(KeyError()) == "KeyError"
    assert library_message(ValueError("é" * 300), limit=10) == "é" * 10 + "..."


def test_a_path_with_control_characters_is_shown_escaped_on_one_line(tmp_path: Path) -> None:
    src = tmp_path / "new\nline \x1b[31mred"
    src.mkdir()
    result = run_cli("convert", src, tmp_path / "out")
    assert result.returncode == 2 and "\x1b" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"fairseq-to-hf: error: {tmp_path}/new\\nline \\x1b[31mred: has no model.pt; "
        "name the checkpoint file with --checkpoint"]


def test_verify_refuses_a_folder_holding_both_one_file_and_shards(converted_mlm: Path, tmp_path: Path) -> None:
    """Transformers loads model.safetensors and ignores the shards: checking the shards would check another model."""
    both = tmp_path / "both"
    assert run_cli("convert", MLM, both, "--max-shard-size", "20KB", "--no-verify").returncode == 0
    shutil.copy(converted_mlm / "model.safetensors", both / "model.safetensors")
    result = run_cli("verify", MLM, both)
    assert result.returncode == 2, result.stderr
    assert "holds both model.safetensors and model.safetensors.index.json" in result.stderr


@pytest.mark.parametrize("block_by_block", [False, True], ids=["whole", "block-by-block"])
def test_verify_names_a_weight_stored_in_another_shape(converted_mlm: Path, tmp_path: Path,
                                                       block_by_block: bool) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "reshaped"
    shutil.copytree(converted_mlm, folder)
    weights = load_file(folder / "model.safetensors")
    weights["roberta.encoder.layer.0.attention.self.query.weight"] = torch.zeros(16, 64)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("verify", MLM, folder, *(["--block-by-block"] if block_by_block else []))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "1 weight has another shape than its config.json gives" in result.stderr
    assert "  - roberta.encoder.layer.0.attention.self.query.weight: 16 x 64 stored, 32 x 32 by config.json" \
        in result.stderr


def test_verify_names_a_token_type_table_of_more_rows(converted_mlm: Path, tmp_path: Path) -> None:
    """fairseq has no token types: Transformers' one row of zeros is the only table that computes as it does."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "two_types"
    shutil.copytree(converted_mlm, folder)
    weights = load_file(folder / "model.safetensors")
    name = "roberta.embeddings.token_type_embeddings.weight"
    weights[name] = torch.cat([weights[name], torch.ones(1, weights[name].shape[1])])
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "type_vocab_size": 2}))
    result = run_cli("verify", MLM, folder)
    assert result.returncode == 1, result.stderr
    assert f"max abs diff {name} inf" in result.stderr and "DOES NOT match" in result.stderr


def test_verify_of_a_folder_without_safetensors_says_so(converted_mlm: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(converted_mlm / "config.json", folder / "config.json")
    torch.save(load_file(converted_mlm / "model.safetensors"), folder / "pytorch_model.bin")
    result = run_cli("verify", MLM, folder)
    assert result.returncode == 2, result.stderr
    assert "model.safetensors: does not exist: verify checks a folder's safetensors weights" in result.stderr
    assert "block-by-block" not in result.stderr
