"""The reference forward pass, run on a thread while the converter writes, on the tensors it reads.

Verifying otherwise reads the source twice: once to write it, once for the reference, and for a large
model the second read comes from disk because writing the output pushed the source out of the page
cache. Here the writer hands each source tensor it reads to the reference too: the values come from
its one pass over the source (the read that also feeds the CRC-32, NaN/Inf and sha256 checks) while
the output's bytes are still copied inside the kernel. The reference waits for a stage's tensors
(the embeddings, one layer, the head), computes that stage while the writer goes on, and drops them.
The few tensors the writer never reads (the fused q/k/v of old checkpoints) or has already handed
over once (a tied embedding the LM head needs again) the reference reads itself.

Memory stays bounded: once the tensors waiting for the reference exceed its largest stage, the writer
waits for the reference, unless the reference is itself waiting for a tensor still to be written.

Meanwhile Transformers and the output's model code are imported on a thread of their own (about
2.3 s of the verification on this machine), while the writer mostly waits for the kernel; the import
is done by the time `result()` returns, before the verification loads the model.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..reader.tensors import LazyTensor
from ..reference.forward import FairseqReference, ReferenceOutputs, Stage
from .imports import BackgroundImport


class ReferenceStopped(Exception):
    """Raised in the reference's thread when the conversion it accompanies stopped."""


class SharedReads:
    """Source tensors read by the writer, held until the reference takes them."""

    def __init__(self, keys_by_source: dict[int, list[str]], capacity: int) -> None:
        self._keys_by_source = keys_by_source  # id(LazyTensor) -> the reference's keys for it
        self._to_come = {key for keys in keys_by_source.values() for key in keys}
        self._arrived: dict[str, torch.Tensor] = {}
        self._untaken: dict[int, int] = {}  # id(values) -> keys not taken yet; freed at 0
        self._held = 0
        self._capacity = capacity
        self._waiting_for: list[str] = []
        self._writer_done = self._stopped = False
        self._condition = threading.Condition()

    def offer(self, source: LazyTensor, values: torch.Tensor) -> None:
        """Called by the writer for each source tensor it reads."""
        keys = self._keys_by_source.get(id(source))
        if not keys:
            return
        with self._condition:
            # Only keys still to come: a tensor the writer reads a second time is not held again.
            keys = [key for key in keys if key in self._to_come]
            if self._stopped or not keys:
                return
            for key in keys:
                self._arrived[key] = values
                self._to_come.discard(key)
            self._untaken[id(values)] = len(keys)
            self._held += values.nbytes
            self._condition.notify_all()
            while self._held > self._capacity and not self._stopped and not self._reference_starved():
                self._condition.wait()

    def take(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """Called by the reference: waits until the writer has read every one of `keys` it will read."""
        with self._condition:
            self._waiting_for = keys
            self._condition.notify_all()
            while not self._stopped and not self._writer_done and any(key in self._to_come for key in keys):
                self._condition.wait()
            self._waiting_for = []
            if self._stopped:
                raise ReferenceStopped
            taken = {key: self._arrived.pop(key) for key in keys if key in self._arrived}
            for value in taken.values():
                self._untaken[id(value)] -= 1
                if not self._untaken[id(value)]:
                    del self._untaken[id(value)]
                    self._held -= value.nbytes
            self._condition.notify_all()
            return taken

    def writer_done(self) -> None:
        with self._condition:
            self._writer_done = True
            self._condition.notify_all()

    def stop(self) -> None:
        """Nothing more is held or waited for; the reference stops at its next stage."""
        with self._condition:
            self._stopped = True
            self._arrived.clear()
            self._untaken.clear()
            self._condition.notify_all()

    def _reference_starved(self) -> bool:
        return any(key in self._to_come for key in self._waiting_for)


class ReferenceAlongside:
    """Runs `reference.forward(rows, head)` on a thread, fed by the writer through `offer`.

    Use as a context manager around the writing; `result()` after the writing returns the outputs.
    Leaving the block early (an error, an interrupt) stops the reference and waits for its thread.
    """

    def __init__(self, reference: FairseqReference, rows: list[torch.Tensor], head: str | None,
                 written_sources: list[LazyTensor], languages: list[str] | None = None,
                 architecture: str | None = None) -> None:
        self.reference = reference
        self.rows, self.head, self.languages = rows, head, languages
        stages = reference.stages(head)
        wanted = {key for stage in stages for key in reference.stage_keys(stage)}
        written = {id(source) for source in written_sources}
        keys_by_source: dict[int, list[str]] = {}
        for key in wanted:
            tensor = reference.state[key]
            if id(tensor) in written:
                keys_by_source.setdefault(id(tensor), []).append(key)
        largest_stage = max(sum(reference.state[key].nbytes for key in reference.stage_keys(stage))
                            for stage in stages)
        self.reads = SharedReads(keys_by_source, capacity=largest_stage)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference")
        self._outputs: Future[ReferenceOutputs] | None = None
        self._architecture = architecture

    def __enter__(self) -> ReferenceAlongside:
        self._outputs = self._executor.submit(self._run)
        BackgroundImport.start(self._architecture)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.reads.stop()
        self._executor.shutdown(wait=True)
        if exc[0] is None:
            BackgroundImport.wait()

    def offer(self, source: LazyTensor, values: torch.Tensor) -> None:
        self.reads.offer(source, values)

    def result(self) -> ReferenceOutputs:
        self.reads.writer_done()
        assert self._outputs is not None
        outputs = self._outputs.result()
        BackgroundImport.wait()  # no import of Transformers may run on two threads at once
        return outputs

    def _run(self) -> ReferenceOutputs:
        try:
            return self.reference.forward(self.rows, self.head, take_stage=self._take_stage,
                                          languages=self.languages)
        finally:
            self.reads.stop()  # a reference that ended (or failed) holds up no writer

    def _take_stage(self, stage: Stage) -> dict[str, torch.Tensor]:
        taken = self.reads.take(self.reference.stage_keys(stage))
        return {key: self.reference.prepare(value) for key, value in taken.items()}
