"""Every real-fairseq fixture converts, loads with Auto* classes and reproduces fairseq's recorded outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification

from conftest import FIXTURES, assert_matches_fairseq, json_file, recording
from fairseq_to_hf import convert

MLM = AutoModelForMaskedLM
CLASSIFIER = AutoModelForSequenceClassification

# (fixture, convert options, Auto class, classification head or None for the masked-LM head)
CASES = [
    ("roberta_mlm", {}, MLM, None),
    ("roberta_mlm_untied", {}, MLM, None),
    ("roberta_mlm_fp16", {}, MLM, None),
    ("roberta_legacy_v09", {}, MLM, None),
    ("roberta_v010", {}, MLM, None),
    ("roberta_omegaconf", {}, MLM, None),
    ("roberta_prenorm", {}, MLM, None),
    ("roberta_cls", {}, CLASSIFIER, "sentiment_head"),
    ("roberta_cls", {"head": "lm"}, MLM, None),
    ("roberta_reg", {}, CLASSIFIER, "sentence_classification_head"),
    ("roberta_two_heads", {"head": "stsb"}, CLASSIFIER, "stsb"),
    ("roberta_two_heads", {"head": "sentiment_head"}, CLASSIFIER, "sentiment_head"),
]


def _case_id(case: tuple) -> str:
    name, options, _, _ = case
    return name + "".join(f"-{key}={value}" for key, value in options.items())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fixture_converts_and_matches_fairseq(case: tuple, tmp_path: Path) -> None:
    fixture, options, auto_class, head = case
    out = tmp_path / "out"

    report = convert(FIXTURES / fixture, out, **options)

    assert report.verified
    assert_matches_fairseq(fixture, out, auto_class, head)
    meta = recording(fixture).meta
    config = json_file(out / "config.json")
    assert config["max_position_embeddings"] == meta["position_table_rows"]
    assert config["vocab_size"] == meta["vocab_size"]
    assert config["layer_norm_eps"] == 1e-5 and config["type_vocab_size"] == 1
    assert config["tie_word_embeddings"] is (not meta["untie_weights_roberta"])
    assert config["model_type"] == ("xlm-roberta-xl" if meta["pre_norm"] else "roberta")
    if head is not None:
        head_meta = meta["heads"][head]
        if head_meta["regression"]:
            assert config["problem_type"] == "regression" and config["num_labels"] == 1
        else:
            assert [config["id2label"][str(i)] for i in range(head_meta["num_classes"])] == head_meta["labels"]
    saved = json_file(out / "conversion_report.json")
    assert saved["outputs"][0]["verification"]["passed"] is True


def test_half_precision_checkpoint_keeps_its_dtype(tmp_path: Path) -> None:
    convert(FIXTURES / "roberta_mlm_fp16", tmp_path / "out", verify=False)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"F16"}
    assert AutoConfig.from_pretrained(tmp_path / "out").dtype == torch.float16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cast_on_the_way_is_verified_on_the_rounded_weights(tmp_path: Path, dtype: str) -> None:
    report = convert(FIXTURES / "roberta_mlm", tmp_path / "out", dtype=dtype)
    assert report.verified
    assert report.outputs[0].dtype == dtype
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(n).get_dtype() for n in weights.keys()} == {"F16" if dtype == "float16" else "BF16"}


def test_all_heads_writes_one_verified_folder_per_head(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = convert(FIXTURES / "roberta_two_heads", out, all_heads=True)
    assert sorted(o.head for o in report.outputs) == ["sentiment_head", "stsb"]
    assert report.verified
    for head in ("sentiment_head", "stsb"):
        assert_matches_fairseq("roberta_two_heads", out / head, CLASSIFIER, head)
    assert len(json_file(out / "conversion_report.json")["outputs"]) == 2


def test_a_classification_head_named_lm_is_that_head(tmp_path: Path) -> None:
    """`--head lm` names the masked-LM head, unless a classification head has that name: then it is that
    head, and --all-heads writes it as OUT/lm (it wrote the masked LM there, and dropped the head)."""
    import argparse
    import shutil
    from collections import OrderedDict

    from fairseq_to_hf.reader import read_checkpoint

    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "roberta_two_heads", src, ignore=shutil.ignore_patterns("model.pt"))
    checkpoint = read_checkpoint(FIXTURES / "roberta_two_heads" / "model.pt")
    state = OrderedDict((name.replace("classification_heads.stsb.", "classification_heads.lm."), lazy.load())
                        for name, lazy in checkpoint.tensors.items())
    torch.save({"model": state, "args": argparse.Namespace(**checkpoint.hparams)}, src / "model.pt")
    report = convert(src, tmp_path / "one", head="lm")
    assert report.outputs[0].architecture == "RobertaForSequenceClassification" and report.verified
    assert_matches_fairseq("roberta_two_heads", tmp_path / "one", CLASSIFIER, "stsb")
    report = convert(src, tmp_path / "all", all_heads=True)
    assert sorted(o.head for o in report.outputs) == ["lm", "sentiment_head"]
    assert_matches_fairseq("roberta_two_heads", tmp_path / "all" / "lm", CLASSIFIER, "stsb")


def test_tied_embeddings_are_stored_once(tmp_path: Path) -> None:
    convert(FIXTURES / "roberta_mlm", tmp_path / "out", verify=False)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
    assert "roberta.embeddings.word_embeddings.weight" in names
    assert "lm_head.decoder.weight" not in names and "lm_head.decoder.bias" not in names


@pytest.mark.parametrize("fixture,head", [("roberta_mlm_untied", None), ("roberta_prenorm", None),
                                          ("roberta_cls", "sentiment_head")])
def test_block_by_block_verification_agrees_with_from_pretrained(fixture: str, head: str | None,
                                                                  tmp_path: Path) -> None:
    from fairseq_to_hf.verify.existing import verify_folder

    report = convert(FIXTURES / fixture, tmp_path / "out", verify_streamed=True)
    assert report.verified and report.outputs[0].verification.loaded_with == "block by block"
    results = [verify_folder(FIXTURES / fixture, tmp_path / "out", head=head, streamed=streamed).weights
               for streamed in (False, True)]
    assert [result.loaded_with for result in results] == ["from_pretrained", "block by block"]
    assert all(result.passed for result in results)
    assert max(results[1].worst().values()) <= 1e-5


@pytest.mark.parametrize("fixture", ["roberta_mlm", "roberta_mlm_fp16"])
@pytest.mark.parametrize("streamed", [False, True], ids=["from_pretrained", "block-by-block"])
def test_verification_catches_a_misplaced_tensor(tmp_path: Path, streamed: bool, fixture: str) -> None:
    from safetensors.torch import load_file, save_file

    from fairseq_to_hf.verify.existing import verify_folder

    out = tmp_path / "out"
    convert(FIXTURES / fixture, out, verify=False)
    weights = load_file(out / "model.safetensors")
    query = "roberta.encoder.layer.1.attention.self.query.weight"
    key = "roberta.encoder.layer.1.attention.self.key.weight"
    weights[query], weights[key] = weights[key].clone(), weights[query].clone()
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    result = verify_folder(FIXTURES / fixture, out, streamed=streamed).weights
    assert not result.passed
    failing = {check.output for check in result.checks if not check.passed}
    assert "hidden_states[1]" not in failing and "last_hidden_state" in failing


def test_conversions_on_several_threads_at_once_all_verify(tmp_path: Path) -> None:
    import threading

    outcomes: dict[int, object] = {}

    def run(number: int) -> None:
        try:
            outcomes[number] = convert(FIXTURES / "roberta_mlm", tmp_path / f"out{number}").verified
        except Exception as error:  # noqa: BLE001 -- the test reports what each thread met
            outcomes[number] = error

    threads = [threading.Thread(target=run, args=(number,)) for number in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {0: True, 1: True, 2: True}
    assert convert(FIXTURES / "roberta_mlm", tmp_path / "after").verified  # and the process is none the worse
