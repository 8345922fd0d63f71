"""GPT-2 BPE tokenizers give fairseq's ids: checked against fairseq's recorded encodes and fill_mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, pipeline

from conftest import FIXTURES, GPT2_BPE, json_file
from fairseq_to_hf import convert
from fairseq_to_hf.reader.dictionary import UNK_ID, Dictionary, read_dictionary
from fairseq_to_hf.tokenizer.gpt2 import build_gpt2_tokenizer, gpt2_vocabulary, read_gpt2_files
from fairseq_to_hf.reference.encode import Gpt2Encoder, fairseq_encode

CASES = json_file(GPT2_BPE / "encode_cases.json")
MODEL_ROWS = 345  # roberta_mlm's embedding rows (dict.txt + 4 specials + <mask>)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpt2") / "roberta_mlm"
    report = convert(FIXTURES / "roberta_mlm", out, encoder_json=GPT2_BPE / "encoder.json",
                     vocab_bpe=GPT2_BPE / "vocab.bpe")
    assert report.verified
    return out


def as_fairseq(ids: list[int], vocab_rows: int = MODEL_ROWS) -> list[int]:
    return [UNK_ID if token >= vocab_rows else token for token in ids]


def test_every_recorded_line_gets_fairseqs_ids(converted: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(converted)
    vocab_size = json_file(converted / "config.json")["vocab_size"]
    exact = with_unk = 0
    for case in CASES["single"]:
        got = tokenizer(case["text"], split_special_tokens=True)["input_ids"]
        assert max(got) < vocab_size
        assert as_fairseq(got) == case["ids"], case["text"]
        if UNK_ID not in case["ids"]:
            assert got == case["ids"], case["text"]  # no alias where fairseq has no <unk>
            exact += 1
        else:
            with_unk += 1
    assert exact > 100 and with_unk > 5  # the recorded set exercises both kinds of line


def test_sentence_pairs_are_framed_as_fairseq_does(converted: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(converted)
    checked = 0
    for case in CASES["pairs"]:
        first, second = case["texts"]
        if not second:
            continue  # transformers treats text_pair="" as no pair at all; fairseq adds "</s> </s>"
        assert as_fairseq(tokenizer(first, second, split_special_tokens=True)["input_ids"]) == case["ids"]
        checked += 1
    assert checked >= 25


def test_fill_mask_pipeline_matches_fairseq(converted: Path) -> None:
    fill_mask = pipeline("fill-mask", model=str(converted), top_k=CASES["fill_mask_topk"])
    for case in CASES["fill_mask"]:
        assert fill_mask.tokenizer(case["masked_text"])["input_ids"] == case["input_ids"]
        predictions = fill_mask(case["masked_text"])
        assert [p["token"] for p in predictions] == case["topk_ids"], case["masked_text"]
        assert [p["score"] for p in predictions] == pytest.approx(case["topk_probs"], abs=1e-6)


def test_reference_encoder_reproduces_fairseqs_bpe() -> None:
    encoder, merges = read_gpt2_files(GPT2_BPE / "encoder.json", GPT2_BPE / "vocab.bpe")
    reference = Gpt2Encoder(encoder, merges)
    index = read_dictionary(FIXTURES / "roberta_mlm" / "dict.txt").index()
    for case in CASES["single"]:
        assert reference.bpe_string(case["text"]) == case["bpe"], case["text"]
        assert fairseq_encode(reference.bpe_string, index, case["text"]) == case["ids"]


def test_missing_tokens_become_aliases_only_where_merges_need_them() -> None:
    # "=" is not in dict.txt but "==" is built from it; "~" is in no merge; "ab" is a merge result.
    encoder = {"a": 0, "b": 1, "=": 2, "~": 3, "ab": 4, "==": 5}
    merges = [("a", "b"), ("=", "=")]
    dictionary = Dictionary(Path("dict.txt"), ("<s>", "<pad>", "</s>", "<unk>", "0", "5", "1"))
    vocabulary = gpt2_vocabulary(encoder, merges, dictionary, model_rows=8, merges_path=Path("vocab.bpe"))
    assert vocabulary.mask_id == 7
    assert vocabulary.aliases == ["=", "ab"] and vocabulary.unknown == ["~"]
    assert {token: vocabulary.ids[token] for token in encoder if token in vocabulary.ids} == {
        "a": 4, "==": 5, "b": 6, "=": 8, "ab": 9}
    assert sorted(vocabulary.ids.values()) == list(range(10))  # contiguous, every id named
    tokenizer = build_gpt2_tokenizer(vocabulary, merges)
    assert tokenizer.encode("ab == ~").ids == [0, 9, 3, 5, 3, 3, 2]


def test_a_wrong_tokenizer_fails_verification(tmp_path: Path) -> None:
    from fairseq_to_hf.verify.tokenizer_check import verify_tokenizer
    from fairseq_to_hf.tokenizer import TokenizerFiles, prepare_tokenizer, tokenizer_documents

    dictionary = read_dictionary(FIXTURES / "roberta_mlm" / "dict.txt")
    prepared = prepare_tokenizer(TokenizerFiles({"encoder_json": GPT2_BPE / "encoder.json",
                                                 "vocab_bpe": GPT2_BPE / "vocab.bpe"}),
                                 dictionary, MODEL_ROWS)
    for name, document in tokenizer_documents(prepared, model_max_length=64).items():
        (tmp_path / name).write_text(document if isinstance(document, str) else json.dumps(document))
    vocabulary = prepared.vocabulary
    assert verify_tokenizer(tmp_path, prepared.reference_bpe, dictionary, vocabulary.model_rows, vocabulary.size).passed
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    the, comma = vocab["Ġthe"], vocab[","]
    vocab["Ġthe"], vocab[","] = comma, the  # one swapped vocab entry
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    result = verify_tokenizer(tmp_path, prepared.reference_bpe, dictionary, vocabulary.model_rows, vocabulary.size)
    assert not result.passed and result.mismatches


@pytest.mark.parametrize("damage", ["no #version header", "no final newline"])
def test_vocab_bpe_lines_are_read_as_fairseq_reads_them(tmp_path: Path, damage: str) -> None:
    """fairseq's get_encoder drops the first and the last line of vocab.bpe whatever they hold: without
    the header the first merge is lost, without the final newline the last one. The tokenizer and the
    reference must lose the same merge, i.e. equal those of a file that lacks it, properly framed."""
    from fairseq_to_hf.tokenizer import TokenizerFiles, prepare_tokenizer

    lines = (GPT2_BPE / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("#version") and lines[-1] == ""
    header, merges = lines[0], lines[1:-1]
    damaged, lost = ("\n".join(merges) + "\n", 0) if damage.startswith("no #") else ("\n".join([header, *merges]), -1)
    without = [header, *[merge for i, merge in enumerate(merges) if i != lost % len(merges)], ""]
    dictionary = read_dictionary(FIXTURES / "roberta_mlm" / "dict.txt")

    def prepared(text: str, name: str):
        (tmp_path / name).write_text(text, encoding="utf-8")
        return prepare_tokenizer(TokenizerFiles({"encoder_json": GPT2_BPE / "encoder.json",
                                                 "vocab_bpe": tmp_path / name}), dictionary, MODEL_ROWS)

    got, want = prepared(damaged, "damaged.bpe"), prepared("\n".join(without), "without.bpe")
    full = prepared("\n".join(lines), "full.bpe")
    texts = [case["text"] for case in CASES["single"]] + ["the cat sat on the mat", "ado adore"]
    assert [got.tokenizer.encode(t).ids for t in texts] == [want.tokenizer.encode(t).ids for t in texts]
    assert [got.reference_bpe(t) for t in texts] == [want.reference_bpe(t) for t in texts]
    assert any(got.reference_bpe(t) != full.reference_bpe(t) for t in texts)  # the lost merge mattered


@pytest.mark.parametrize("edit", ["mask is </s>", "pad and unk swapped", "no added tokens"])
def test_special_tokens_that_differ_from_fairseqs_fail_verification(converted: Path, tmp_path: Path,
                                                                     edit: str) -> None:
    """Pipelines and collators use the special ids: a folder whose <mask>, <pad> or <unk> is another
    token, or whose <mask> typed in text is not one token, is not fairseq's tokenizer."""
    import shutil

    from fairseq_to_hf.verify.tokenizer_check import verify_tokenizer

    folder = tmp_path / "edited"
    shutil.copytree(converted, folder)
    config, spec = json_file(folder / "tokenizer_config.json"), json_file(folder / "tokenizer.json")
    specials = json_file(folder / "special_tokens_map.json") if (folder / "special_tokens_map.json").exists() else {}
    if edit == "mask is </s>":
        config["mask_token"] = specials["mask_token"] = "</s>"
    elif edit == "pad and unk swapped":
        config["pad_token"], config["unk_token"] = config["unk_token"], config["pad_token"]
        if specials:
            specials["pad_token"], specials["unk_token"] = specials["unk_token"], specials["pad_token"]
    else:
        spec["added_tokens"] = [token for token in spec["added_tokens"] if token["content"] != "<mask>"]
    for name, document in (("tokenizer_config.json", config), ("tokenizer.json", spec),
                           ("special_tokens_map.json", specials)):
        if document:
            (folder / name).write_text(json.dumps(document))
    dictionary = read_dictionary(FIXTURES / "roberta_mlm" / "dict.txt")
    encoder, merges = read_gpt2_files(GPT2_BPE / "encoder.json", GPT2_BPE / "vocab.bpe", fairseq_lines=True)
    reference = Gpt2Encoder(encoder, merges).bpe_string
    assert verify_tokenizer(converted, reference, dictionary, MODEL_ROWS, 400).passed
    result = verify_tokenizer(folder, reference, dictionary, MODEL_ROWS, 400)
    assert not result.passed and result.special_tokens, result.as_dict()
