"""The reference forward pass fed by the writer: same outputs, the source read once, bounded, stoppable."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES
from fairseq_to_hf.plan import OutputRequest, analyse_source, make_plan, normalise_source
from fairseq_to_hf.reader.checkpoint import read_checkpoint
from fairseq_to_hf.reader.dictionary import read_dictionary
from fairseq_to_hf.verify.alongside import ReferenceAlongside, SharedReads
from fairseq_to_hf.verify.compare import reference_rows, verification_inputs
from fairseq_to_hf.reference.forward import FairseqReference
from fairseq_to_hf.writer import write_weights


def _count_reads(source) -> Counter:
    """Counts reads per storage of the checkpoint (wraps the one StorageIndex of this checkpoint)."""
    index = next(iter(source.tensors.values())).storage.index
    reads: Counter = Counter()
    read = index.read

    def counting_read(storage, offset, count, into=None):
        reads[storage.key] += 1
        return read(storage, offset, count, into)

    index.read = counting_read
    return reads


@pytest.mark.parametrize("fixture,head", [("roberta_mlm", None), ("roberta_mlm_untied", None),
                                          ("xlmr_prenorm_cls", "script_head")])
def test_reference_fed_by_the_writer_reads_each_tensor_once(fixture: str, head: str | None, tmp_path: Path) -> None:
    source = read_checkpoint(FIXTURES / fixture / "model.pt")
    model = analyse_source(normalise_source(source), read_dictionary(FIXTURES / fixture / "dict.txt"))
    plan = make_plan(model, OutputRequest(head=head or "lm"))
    rows = reference_rows(verification_inputs(plan.dims.vocab_size, plan.dims.positions, streamed=False))
    alone = FairseqReference(source.tensors, source.hparams).forward(rows, head)

    reads = _count_reads(source)
    (tmp_path / "writer_alone").mkdir()
    (tmp_path / "with_reference").mkdir()
    write_weights(tmp_path / "writer_alone", plan)
    writer_alone = Counter(reads)
    reads.clear()
    reference = FairseqReference(source.tensors, source.hparams)
    sources = [tensor.source for tensor in plan.tensors if tensor.source is not None]
    with ReferenceAlongside(reference, rows, head, sources) as alongside:
        write_weights(tmp_path / "with_reference", plan, on_read=alongside.offer)
        fed = alongside.result()

    # Same values up to the summation order of a different torch thread count.
    for want, have in zip([*alone.hidden_states, alone.last_hidden_state, alone.mlm_logits, alone.head_logits],
                          [*fed.hidden_states, fed.last_hidden_state, fed.mlm_logits, fed.head_logits]):
        assert (want is None and have is None) or torch.allclose(want, have, rtol=1e-5, atol=1e-6)
    # The reference reads only the tied embedding itself: the writer read it first, the LM head needs it again.
    embedding = source.tensors["encoder.sentence_encoder.embed_tokens.weight"].storage.key
    tied = head is None and fixture != "roberta_mlm_untied"
    assert reads - writer_alone == Counter({embedding: 1} if tied else {})


def test_a_failing_writer_stops_the_reference(tmp_path: Path) -> None:
    source = read_checkpoint(FIXTURES / "roberta_mlm" / "model.pt")
    reference = FairseqReference(source.tensors, source.hparams)
    rows = [torch.tensor([0, 5, 6, 2])]
    first = source.tensors["encoder.sentence_encoder.embed_tokens.weight"]
    alongside = ReferenceAlongside(reference, rows, None, list(source.tensors.values()))
    with pytest.raises(RuntimeError, match="disk full"), alongside:
        alongside.offer(first, first.load())
        raise RuntimeError("disk full")
    # Leaving the block returned, so the reference thread, which was waiting for tensors, has ended.
    assert not any(thread.name.startswith("reference") for thread in threading.enumerate())


def test_shared_reads_hold_up_the_writer_only_when_the_reference_is_not_waiting() -> None:
    a, b, c = (torch.zeros(1000) for _ in range(3))
    reads = SharedReads({id(a): ["a"], id(b): ["b"], id(c): ["c"]}, capacity=a.nbytes)
    reads.offer(a, a)  # at capacity: accepted
    writer = threading.Thread(target=reads.offer, args=(b, b), daemon=True)
    writer.start()
    writer.join(0.3)
    assert writer.is_alive()  # over capacity while the reference computes: the writer waits
    assert set(reads.take(["a"])) == {"a"}
    writer.join(5)
    assert not writer.is_alive()

    # The reference waits for "c", still to come: the writer may go over capacity to deliver it.
    taker = threading.Thread(target=reads.take, args=(["c"],), daemon=True)
    taker.start()
    reads.offer(c, c)  # returns although b and c together exceed the capacity
    taker.join(5)
    assert not taker.is_alive()
    reads.stop()


def test_a_tensor_read_twice_by_the_writer_is_held_once() -> None:
    a = torch.zeros(1000)
    reads = SharedReads({id(a): ["a"]}, capacity=a.nbytes)
    reads.offer(a, a)
    assert set(reads.take(["a"])) == {"a"}
    done = threading.Event()
    writer = threading.Thread(target=lambda: (reads.offer(a, a), reads.offer(a, a), done.set()), daemon=True)
    writer.start()
    writer.join(5)
    assert done.is_set()  # not held again, so never over capacity
    assert reads.take(["a"]) == {}
    reads.stop()


@pytest.mark.parametrize("architecture", ["RobertaForMaskedLM", "NoSuchModelClass"])
@pytest.mark.parametrize("collecting", [True, False])
def test_the_background_import_leaves_the_garbage_collector_as_it_was(architecture: str, collecting: bool) -> None:
    import gc
    import sys

    from fairseq_to_hf.verify.imports import import_quietly

    interval, was_enabled = sys.getswitchinterval(), gc.isenabled()
    (gc.enable if collecting else gc.disable)()
    try:
        import_quietly(architecture)  # a class Transformers lacks fails inside, quietly
        assert gc.isenabled() == collecting
        assert sys.getswitchinterval() == interval
    finally:
        (gc.enable if was_enabled else gc.disable)()
