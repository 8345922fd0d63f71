"""The verification's fairseq reference reproduces what the real fairseq computed, from the source alone."""

from __future__ import annotations

import pytest
import torch

from conftest import FIXTURES, PAD_ID, TOLERANCE, recording
from fairseq_to_hf.reader.checkpoint import read_checkpoint
from fairseq_to_hf.verify.compare import outputs_per_input, reference_rows
from fairseq_to_hf.prefetch import Prefetcher
from fairseq_to_hf.reference.forward import FairseqReference

# (fixture, classification head or None for the masked-LM head)
CASES = [
    ("roberta_mlm", None),
    ("roberta_mlm_untied", None),
    ("roberta_mlm_fp16", None),
    ("roberta_legacy_v09", None),  # decoder.* names, fused in_proj, emb_layer_norm, legacy file
    ("roberta_prenorm", None),
    ("roberta_cls", "sentiment_head"),
    ("roberta_reg", "sentence_classification_head"),
    ("xlmr_mlm", None),
    ("xlmr_prenorm_cls", "script_head"),
]


def _close(name: str, expected: torch.Tensor, actual: torch.Tensor) -> None:
    assert expected.shape == actual.shape, name
    diff = float((expected - actual).abs().max())
    assert diff <= TOLERANCE * max(1.0, float(expected.abs().max())), f"{name}: max abs diff {diff:.3g}"


@pytest.mark.parametrize(("fixture", "head"), CASES)
def test_packed_reference_matches_fairseqs_recorded_outputs(fixture: str, head: str | None) -> None:
    fairseq = recording(fixture)
    source = read_checkpoint(FIXTURES / fixture / "model.pt")
    reference = FairseqReference(source.tensors, source.hparams)
    layers = fairseq.meta["num_layers"]
    # Every sample's rows, pads removed, in one packed run (as the verification runs them).
    inputs = {sample: fairseq[f"{sample}.input_ids"] for sample in fairseq.samples}
    outputs = reference.forward(reference_rows(inputs), head)
    for (sample, tokens), got in zip(inputs.items(), outputs_per_input(outputs, inputs).values()):
        real = tokens.ne(PAD_ID)
        for i in range(layers):  # the last inner state of a pre-norm model precedes its final LayerNorm
            _close(f"{sample} hidden {i}", fairseq[f"{sample}.hidden.{i}"][real], got.hidden_states[i])
        _close(f"{sample} features", fairseq[f"{sample}.features"][real], got.last_hidden_state)
        if head is None:
            vocab = fairseq.meta["vocab_size"]
            _close(f"{sample} mlm logits", fairseq[f"{sample}.mlm_logits"][real][:, :vocab], got.mlm_logits)
        else:
            _close(f"{sample} head logits", fairseq[f"{sample}.head.{head}"], got.head_logits)
    assert sum(int(tokens.ne(PAD_ID).sum()) for tokens in inputs.values()) == len(outputs.last_hidden_state)


def test_reference_notices_a_changed_weight() -> None:
    fairseq = recording("roberta_mlm")
    source = read_checkpoint(FIXTURES / "roberta_mlm" / "model.pt")
    reference = FairseqReference(source.tensors, source.hparams)
    name = "encoder.sentence_encoder.layers.1.fc2.bias"
    original = reference._load

    def load_with_one_value_changed(key: str) -> torch.Tensor:
        value = original(key)
        if key == name:
            value[0] += 1e-3  # one coordinate: a LayerNorm would absorb a uniform shift
        return value

    reference._load = load_with_one_value_changed
    tokens = fairseq["s0.input_ids"][0]
    outputs = reference.forward([tokens], None)
    diff = float((fairseq["s0.features"][0] - outputs.last_hidden_state).abs().max())
    assert diff > 1e-4


def test_prefetcher_serves_blocks_in_any_order() -> None:
    loads: list[str] = []

    def load(block: str) -> str:
        loads.append(block)
        return block.upper()

    with Prefetcher(["a", "b", "c"], load) as prefetch:
        assert prefetch.take("a") == "A"
        assert prefetch.take("c") == "C"  # out of order: loaded on the spot, the guess "b" discarded
        assert prefetch.take("b") == "B"
    assert loads.count("a") == 1 and loads.count("c") == 1


def test_prefetcher_passes_on_a_loading_error() -> None:
    def load(block: str) -> str:
        if block == "b":
            raise ValueError("damaged")
        return block

    with Prefetcher(["a", "b"], load) as prefetch:
        prefetch.take("a")
        with pytest.raises(ValueError, match="damaged"):
            prefetch.take("b")


def test_prefetcher_follows_an_order_that_repeats() -> None:
    """A model run once per batch takes its blocks again from the first: a block asked for out of order
    in a later pass is found in that pass, so the guess that follows it is the right one."""
    loads: list[str] = []

    def load(block: str) -> str:
        loads.append(block)
        return block.upper()

    with Prefetcher(["a", "b", "c"] * 2, load) as prefetch:
        assert [prefetch.take(block) for block in "abca"] == list("ABCA")
        assert prefetch.take("c") == "C"  # the second pass skips b: c is its last block, nothing follows
        assert prefetch._pending is None  # not a third pass's "a"
    assert loads.count("a") == 2 and loads.count("c") == 2


def test_differences_and_scales_leave_out_what_is_not_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    from fairseq_to_hf.verify import compare

    nan, inf = float("nan"), float("inf")
    want = torch.tensor([[1.0, nan, 3.0], [-6.0, 2.0, inf]])
    have = torch.tensor([[1.5, 0.0, 3.0], [-6.0, 2.25, inf]])
    for step in (1 << 17, 1, 4):  # one slice, one element at a time, slices across rows
        monkeypatch.setattr(compare, "DIFFERENCE_STEP", step)
        assert compare.difference(want, have) == compare.Difference(0.5, 2, 6.0)
        assert compare.difference(want[:, :1], have[:, :1]) == compare.Difference(0.5, 0, 6.0)  # a strided view
        assert compare.difference(torch.full((2,), nan), torch.zeros(2)) == compare.Difference(0.0, 2, 0.0)
        empty = torch.zeros(0, 4)
        assert compare.difference(empty, empty) == compare.Difference(0.0, 0, 0.0)


@pytest.mark.parametrize("have", [torch.full((2, 3), float("nan")), torch.tensor([[0.0, float("inf"), 0.0]] * 2)])
def test_outputs_that_are_not_finite_never_pass(have: torch.Tensor) -> None:
    from fairseq_to_hf.verify.compare import OutputCheck, difference

    for want in (torch.full((2, 3), float("nan")), torch.zeros(2, 3)):
        found = difference(want, have)
        check = OutputCheck("x", "last_hidden_state", found.max_abs_diff, 0.0, 1.0, found.non_finite)
        assert check.non_finite and not check.passed
