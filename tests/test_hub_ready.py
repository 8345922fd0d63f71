"""Converted folders are ready to publish (model card, report) and conversions ready to script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, GPT2_BPE, GPT2_FLAGS


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fairseq_to_hf", *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


REPO_ID = "example-user/sentiment-model"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "sentiment-model"
    result = run_cli("convert", FIXTURES / "roberta_cls", out, *GPT2_FLAGS, "--language", "en", "--license", "mit",
                     "--base-model", "example/tiny-roberta", "--repo-id", REPO_ID)
    assert result.returncode == 0, result.stderr
    return out


def run_snippet_as_if_uploaded(folder: Path, repo_id: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """The card's snippet, run offline where `repo_id` resolves to the folder (as the Hub would serve it)."""
    snippet = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    hub = tmp_path / "as-uploaded"
    (hub / repo_id).parent.mkdir(parents=True)
    (hub / repo_id).symlink_to(folder)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300, cwd=hub,
                          env=environment)


def test_model_card_parses_and_says_what_the_model_is(classifier: Path) -> None:
    card = ModelCard.load(classifier / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.language == ["en"] and card.data.license == "mit"
    assert card.data.base_model == "example/tiny-roberta"
    assert "fairseq" in card.data.tags
    text = card.text
    report = json.loads((classifier / "conversion_report.json").read_text())
    assert report["source"]["sha256"] in text
    assert "fairseq-0.12" in text and "| head_logits |" in text
    for label in ("positive", "negative", "neutral"):
        assert f"| {label} |" in text


def test_usage_snippet_runs_as_written_once_uploaded(classifier: Path, tmp_path: Path) -> None:
    assert f'model="{REPO_ID}"' in (classifier / "README.md").read_text() or f"model='{REPO_ID}'" in (
        classifier / "README.md").read_text()
    result = run_snippet_as_if_uploaded(classifier, REPO_ID, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'label': '" in result.stdout


def test_an_xmod_card_says_which_languages_there_are_and_how_to_choose_one(tmp_path: Path) -> None:
    out = tmp_path / "xmod-model"
    spm = FIXTURES / "xlmr_mlm" / "sentencepiece.bpe.model"
    result = run_cli("convert", FIXTURES / "xmod_prenorm", out, "--sentencepiece-model", spm, "--head", "lm",
                     "--default-language", "de_DE", "--repo-id", "example-user/xmod-model", "--no-verify")
    assert result.returncode == 0, result.stderr
    text = (out / "README.md").read_text()
    assert text.count("An XmodForMaskedLM model") == 1
    languages = json.loads((out / "config.json").read_text())["languages"]
    section = text.split("## Languages", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{language}`" in section for language in languages) and "go through `de_DE`" in section
    # The usage snippet, then the section's way of choosing another language, run as written.
    usage, choose = re.findall(r"```python\n(.*?)```", text, re.S)[:2]
    other = re.search(r"set_default_language\('([^']+)'\)", choose).group(1)
    assert other != "de_DE" and other in languages
    hub = tmp_path / "as-uploaded" / "example-user"
    hub.mkdir(parents=True)
    (hub / "xmod-model").symlink_to(out)
    program = usage + choose.splitlines()[0] + "\nprint(fill_mask.model.config.default_language)\n"
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                         cwd=hub.parent, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[-1] == other


def test_no_local_path_in_any_file_of_out(tmp_path: Path) -> None:
    """The folder goes to the Hub as it is: neither SRC's, the tokenizer files', nor OUT's location is in it."""
    src = tmp_path / "private-location-7f3a" / "my-model"
    shutil.copytree(FIXTURES / "roberta_cls", src)
    bpe = tmp_path / "bpe-files-91c2"
    shutil.copytree(GPT2_BPE, bpe)
    out = tmp_path / "output-place-c0de" / "converted"
    out.parent.mkdir()
    result = run_cli("convert", src, out, "--encoder-json", bpe / "encoder.json", "--vocab-bpe", bpe / "vocab.bpe")
    assert result.returncode == 0, result.stderr
    for path in out.rglob("*"):
        text = path.read_bytes().decode("utf-8", errors="replace")
        for secret in ("private-location-7f3a", "bpe-files-91c2", "output-place-c0de", str(tmp_path)):
            assert secret not in text, f"{path.name} names the local path {secret}"
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["source"]["checkpoint"] == "model.pt" and report["source"]["dictionary"] == "dict.txt"
    assert report["tokenizer"]["source_files"] == {"encoder_json": "encoder.json", "vocab_bpe": "vocab.bpe"}


def test_a_checkpoint_name_that_is_not_utf8_is_written_with_its_bytes_escaped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FIXTURES / "roberta_mlm" / "dict.txt", src)
    shutil.copy(FIXTURES / "roberta_mlm" / "model.pt", os.fsdecode(bytes(src) + b"/m\xff\xfe.pt"))
    result = run_cli("convert", src, tmp_path / "out", "--no-verify", *GPT2_FLAGS)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text(encoding="utf-8"))
    assert report["source"]["checkpoint"] == "m\\xff\\xfe.pt"
    assert "m\\xff\\xfe.pt" in (tmp_path / "out" / "README.md").read_text(encoding="utf-8")


def test_card_tells_how_to_train_on_with_alias_ids(tmp_path: Path) -> None:
    """The card's one-line label mapping turns the tokenizer's ids into fairseq's labels."""
    out = tmp_path / "mlm"
    result = run_cli("convert", FIXTURES / "roberta_mlm", out, *GPT2_FLAGS, "--no-verify")
    assert result.returncode == 0, result.stderr
    card = (out / "README.md").read_text()
    mapping = re.search(r"^labels = labels\.masked_fill\(.*$", card, re.M).group(0)
    from transformers import AutoTokenizer
    import torch

    tokenizer = AutoTokenizer.from_pretrained(out)
    cases = json.loads((GPT2_BPE / "encode_cases.json").read_text())["single"]
    with_unknown = [case for case in cases if 3 in case["ids"]]
    assert with_unknown
    for case in with_unknown:
        labels = torch.tensor(tokenizer(case["text"], split_special_tokens=True)["input_ids"])
        scope = {"labels": labels}
        exec(mapping, scope)
        assert scope["labels"].tolist() == case["ids"], case["text"]


def test_masked_lm_card_and_json_report_on_stdout(tmp_path: Path) -> None:
    out = tmp_path / "mlm"
    result = run_cli("convert", FIXTURES / "roberta_mlm", out, *GPT2_FLAGS, "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)  # stdout is the report alone; messages went to stderr
    assert printed["outputs"][0]["verification"]["passed"] is True
    assert printed["tokenizer"]["alias_count"] == 25
    assert "verifying" in result.stderr
    assert ModelCard.load(out / "README.md").data.pipeline_tag == "fill-mask"
    result = run_snippet_as_if_uploaded(out, f"your-username/{out.name}", tmp_path)
    assert result.returncode == 0, result.stderr


def test_verify_passes_a_correct_folder_and_flags_wrong_ones(classifier: Path, tmp_path: Path) -> None:
    good = run_cli("verify", FIXTURES / "roberta_cls", classifier, *GPT2_FLAGS)
    assert good.returncode == 0, good.stderr
    assert "matches" in good.stderr

    changed_weight = tmp_path / "changed-weight"
    shutil.copytree(classifier, changed_weight)
    weights = load_file(changed_weight / "model.safetensors")
    weights["roberta.encoder.layer.0.output.dense.bias"][5] += 0.01
    save_file(weights, changed_weight / "model.safetensors", metadata={"format": "pt"})
    bad = run_cli("verify", FIXTURES / "roberta_cls", changed_weight, *GPT2_FLAGS)
    assert bad.returncode == 1 and "DOES NOT match" in bad.stderr

    changed_vocab = tmp_path / "changed-vocab"
    shutil.copytree(classifier, changed_vocab)
    spec = json.loads((changed_vocab / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    the, dot = vocab["\u0120the"], vocab["."]
    vocab["\u0120the"], vocab["."] = dot, the
    (changed_vocab / "tokenizer.json").write_text(json.dumps(spec))
    bad_vocab = run_cli("verify", FIXTURES / "roberta_cls", changed_vocab, *GPT2_FLAGS, "--json")
    assert bad_vocab.returncode == 1
    report = json.loads(bad_vocab.stdout)
    assert report["verification"]["passed"] is True and report["tokenizer_verification"]["mismatch_count"] > 0


@pytest.mark.parametrize("mode", [[], ["--block-by-block"]], ids=["from_pretrained", "block-by-block"])
def test_verify_refuses_unreadable_weights_in_one_line(classifier: Path, tmp_path: Path, mode: list[str]) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(classifier, damaged)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[8:9] = b"["  # the JSON header no longer parses as an object
    (damaged / "model.safetensors").write_bytes(bytes(data))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(classifier, no_weights)
    (no_weights / "model.safetensors").unlink()
    for folder in (damaged, no_weights):
        result = run_cli("verify", FIXTURES / "roberta_cls", folder, *mode)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and str(folder) in result.stderr


def test_batch_converts_every_checkpoint_and_reports_failures(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURES / "roberta_mlm" / "dict.txt", run / "dict.txt")
    shutil.copy(FIXTURES / "roberta_mlm" / "model.pt", run / "checkpoint1.pt")
    shutil.copy(FIXTURES / "roberta_mlm_fp16" / "model.pt", run / "checkpoint2.pt")
    (run / "checkpoint_broken.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    result = run_cli("convert", run, out, "--checkpoint", "checkpoint*.pt", *GPT2_FLAGS)
    assert result.returncode == 2, result.stderr
    assert "converted 2 of 3 checkpoints" in result.stderr and "failed: checkpoint_broken.pt" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint1", "checkpoint2"]
    for name in ("checkpoint1", "checkpoint2"):
        assert json.loads((out / name / "conversion_report.json").read_text())["outputs"][0]["verification"]["passed"]
        assert (out / name / "tokenizer.json").exists()


@pytest.mark.parametrize("command", ["convert", "inspect", "verify"])
def test_every_command_has_complete_help_with_examples(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and f"fairseq-to-hf {command}" in result.stdout


def test_inspect_and_dry_run_read_no_tensor_data(monkeypatch, tmp_path: Path) -> None:
    from fairseq_to_hf import convert
    from fairseq_to_hf.inspection import inspect_source
    from fairseq_to_hf.reader.tensors import StorageIndex

    def no_data(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(StorageIndex, "read", no_data)
    description = inspect_source(FIXTURES / "roberta_prenorm")
    assert description["family"] == "xlm-roberta-xl" and description["layout"] == "pre-norm"
    report = convert(FIXTURES / "roberta_legacy_v09", tmp_path / "out", dry_run=True)
    assert report.key_generation == "fairseq-0.9" and not (tmp_path / "out").exists()


def test_inspect_lists_heads_and_sizes() -> None:
    result = run_cli("inspect", FIXTURES / "roberta_two_heads", "--json")
    assert result.returncode == 0, result.stderr
    description = json.loads(result.stdout)
    assert description["classification_heads"] == {"sentiment_head": {"num_classes": 3, "inner_dim": 32},
                                                   "stsb": {"num_classes": 1, "inner_dim": 32}}
    assert description["layers"] == 2 and description["position_rows"] == 66
    produced = description["convert_would_produce"]
    assert produced["sentiment_head"]["plan"]["architecture"] == "RobertaForSequenceClassification"
    assert produced["lm"]["plan"]["architecture"] == "RobertaForMaskedLM"


@pytest.mark.parametrize(("fixture", "tied"), [("roberta_mlm", True), ("roberta_mlm_untied", False)])
def test_inspect_counts_a_tied_embedding_once(fixture: str, tied: bool) -> None:
    from fairseq_to_hf.inspection import inspect_source
    from fairseq_to_hf.reader import read_checkpoint

    tensors = read_checkpoint(FIXTURES / fixture / "model.pt").tensors
    counted = [t for name, t in tensors.items() if not (tied and name == "encoder.lm_head.weight")]
    assert inspect_source(FIXTURES / fixture)["parameters_by_dtype"] == {
        "float32": {"parameters": sum(t.numel for t in counted), "bytes": sum(t.nbytes for t in counted)}}


def test_a_single_language_given_as_a_string_is_one_language() -> None:
    from fairseq_to_hf.card import CardOptions, front_matter

    text = front_matter("fill-mask", "roberta", CardOptions(language="en"))
    assert 'language:\n- "en"\n' in text and '- "e"' not in text


def test_labels_are_table_cells_in_the_card(tmp_path: Path) -> None:
    """A label is text: a `|` in it splits no cell, markup in it is shown, not rendered."""
    from fairseq_to_hf import convert

    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "roberta_cls", src)
    (src / "label" / "dict.txt").write_text("a|b 1316\n<b>bold</b> 1078\nneutral 608\nmadeupword0000 0\n")
    convert(src, tmp_path / "out", verify=False)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| 0 | a\\|b |" in card and "| 1 | &lt;b&gt;bold&lt;/b&gt; |" in card
    assert "<b>" not in card
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"]["0"] == "a|b" and config["id2label"]["1"] == "<b>bold</b>"  # the labels themselves


def test_inspect_refuses_what_convert_refuses_for_its_tokenizer_files() -> None:
    """Tokenizer files that cannot be the model's make convert refuse before any output; inspect says so."""
    result = run_cli("inspect", FIXTURES / "roberta_mlm", "--encoder-json", FIXTURES / "roberta_mlm" / "dict.txt",
                     "--vocab-bpe", GPT2_BPE / "vocab.bpe", "--json")
    assert result.returncode == 0, result.stderr
    description = json.loads(result.stdout)
    assert "not a readable GPT-2 encoder.json" in description["convert_would_produce"]["default"]["refused"]
    assert description["layers"] == 2  # the model is still described
    fine = json.loads(run_cli("inspect", FIXTURES / "roberta_mlm", *GPT2_FLAGS, "--json").stdout)
    assert "plan" in fine["convert_would_produce"]["default"]
