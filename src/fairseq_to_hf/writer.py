"""Writes a plan's tensors as safetensors into a staged folder.

A safetensors file is an 8-byte header length, a JSON header giving every tensor's dtype, shape and
byte range, then the bytes. All of that is known from the plan, so the header is written first and
every tensor's place in the file is known before any is read.

Most tensors go to the output unchanged (same dtype, contiguous, no alias rows): their bytes are
copied from the checkpoint to their place with copy_file_range, inside the kernel, as `cp` copies. The
checks still see every byte, read once: a pass over the source in file order, on a thread of its own
that runs ahead of the copies (_PassAhead), feeds each storage's CRC-32, each tensor's NaN/Inf check,
the file's sha256, and the values of the tensors that are cast, get alias rows or that the
verification wants (handed over on a mapping of the source, not copied). A region is copied only
after the pass has checked it, and the output only appears once everything was (see staged_output).
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from .errors import CheckpointFormatError, ConversionError
from .hashing import HashAlongside
from .plan import ConversionPlan, TensorPlan
from .plan.positions import computed_table
from .reader.tensors import LazyTensor, StorageIndex, as_elements
from .shard_size import DEFAULT_MAX_SHARD_BYTES
from .prefetch import Prefetcher

SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Bytes of the source checked at a time: small enough to be hashed while still in the CPU's cache.
SCAN_CHUNK = 4 << 20
# Bytes per copy_file_range call: an interrupt is served between two calls.
COPY_CHUNK = 64 << 20
# copy_file_range errors that mean "not here" (across filesystems on older kernels, a filesystem or
# file without it), not "failed": those bytes are written from user space instead.
KERNEL_COPY_UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL})
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14; Python 3.11 lacks the name
# False: every tensor is read, checked and written in user space, one after the other, and the sha256 is
# a pass of its own (the path before copy_file_range); tests compare the two.
_ONE_PASS = True

Progress = Callable[[TensorPlan], None]  # called after each tensor is written
OnRead = Callable[[LazyTensor, torch.Tensor], None]  # called with each source tensor as it is read
Read = tuple[torch.Tensor, torch.Tensor | None]  # a tensor's values, and the pooled buffer they were read into


def plan_shards(tensors: list[TensorPlan], max_shard_bytes: int) -> list[list[TensorPlan]]:
    """Greedy split in writing order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def safetensors_header(tensors: list[TensorPlan], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for tensor in tensors:
        header[tensor.target] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keeps the data 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(encoded)) + encoded


class BufferPool:
    """Byte buffers that tensors are read into and that are used again once a tensor is written.

    Fresh memory costs its first touch of every page (zeroed and mapped by the kernel, and on a VM
    by the host too): measured here, reading RoBERTa large into fresh buffers took 2.3 s against
    0.8–1.0 s into reused ones. Only the `keep` largest free buffers are kept, so memory stays at
    about the two largest tensors in flight, which the writer holds at its peak anyway.
    """

    MIN_BYTES = 1 << 20  # smaller tensors come from malloc's own reused heap

    def __init__(self, keep: int = 2) -> None:
        self._free: list[torch.Tensor] = []
        self._keep = keep
        self._lock = threading.Lock()

    def acquire(self, nbytes: int) -> torch.Tensor | None:
        if nbytes < self.MIN_BYTES:
            return None
        with self._lock:
            fitting = [i for i, buffer in enumerate(self._free) if buffer.numel() >= nbytes]
            if fitting:  # the smallest buffer that fits
                return self._free.pop(min(fitting, key=lambda i: self._free[i].numel()))
        return torch.empty(nbytes, dtype=torch.uint8)

    def release(self, buffer: torch.Tensor) -> None:
        with self._lock:
            self._free.append(buffer)
            self._free.sort(key=torch.Tensor.numel, reverse=True)
            del self._free[self._keep:]


def materialise(tensor: TensorPlan, on_read: OnRead | None = None, into: torch.Tensor | None = None) -> torch.Tensor:
    """The output values of one planned tensor, read from the checkpoint (into `into` if given) and cast."""
    if tensor.source is None:
        if tensor.computed is not None:
            return computed_table(tensor.computed, *tensor.shape).to(tensor.dtype)
        return torch.zeros(tensor.shape, dtype=tensor.dtype)
    loaded = tensor.source.load(into)
    if on_read:
        on_read(tensor.source, loaded)
    return for_output(tensor, loaded)


def for_output(tensor: TensorPlan, loaded: torch.Tensor) -> torch.Tensor:
    """The output values of a planned tensor from its source values: cast, alias rows appended."""
    values = loaded.to(tensor.dtype)
    if tensor.extra_rows:
        if tensor.copy_row is not None:
            extra = values[tensor.copy_row].expand(tensor.extra_rows, *values.shape[1:])
        else:
            extra = torch.full((tensor.extra_rows, *values.shape[1:]), tensor.fill, dtype=values.dtype)
        values = torch.cat([values, extra])
    return values


def has_non_finite(values: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """NaN or Inf anywhere in a floating-point tensor.

    A sum is NaN or Inf when some value is, and costs one vectorised pass with no temporaries (half
    precision is summed in float32, where it cannot overflow). Only a non-finite sum, which a float32
    overflow could also cause, leads to the exact check, chunk by chunk.
    """
    if not values.is_floating_point() or not values.numel():
        return False
    accumulate = torch.float32 if values.element_size() < 4 else values.dtype
    if math.isfinite(float(values.sum(dtype=accumulate))):
        return False
    return any(not bool(torch.isfinite(part).all()) for part in values.reshape(-1).split(chunk))


def write_safetensors(path: Path, tensors: list[TensorPlan], values_of: Callable[[TensorPlan], Read],
                      written: Callable[[torch.Tensor], None] | None, progress: Progress | None,
                      non_finite: list[str]) -> None:
    """Streams `tensors` into one file; names of tensors holding NaN or Inf go into `non_finite`.

    `values_of` reads a tensor; the buffer it returns, if any, goes to `written` once written.
    """
    with open(path, "wb") as file:
        file.write(safetensors_header(tensors, {"format": "pt"}))
        for planned in tensors:
            values, buffer = values_of(planned)
            if tuple(values.shape) != tuple(planned.shape) or values.dtype != planned.dtype:
                raise AssertionError(f"{planned.target}: planned {planned.shape} {planned.dtype}, "
                                     f"got {tuple(values.shape)} {values.dtype}")
            if has_non_finite(values):
                non_finite.append(planned.source_name)
            if values.numel():
                file.write(memoryview(values.contiguous().view(torch.uint8).numpy()))
            del values
            if buffer is not None and written:
                written(buffer)
            if progress:
                progress(planned)


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Torch's only work while writing is memory-bound (casts, the NaN sum); its worker threads would
    spin waiting for work and take the cores of the reading and hashing threads (measured: 1.8x the
    wall time of writing RoBERTa large on two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_ties(plan: ConversionPlan) -> None:
    """A tied fairseq tensor stored twice must hold the same values, or tying would change the model."""
    for left, right, what in plan.tied_checks:
        if not torch.equal(left.load(), right.load()):
            raise ConversionError(
                f"{what} should be tied (untie_weights_roberta is off) but the values differ",
                path=plan.model.path, hint="the checkpoint is inconsistent; was it edited after training?",
            )


def write_weights(folder: Path, plan: ConversionPlan, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                  progress: Progress | None = None, *, allow_non_finite: bool = False,
                  on_read: OnRead | None = None, hash_source: bool = True) -> list[str]:
    """Writes model.safetensors, or shards plus model.safetensors.index.json; returns file names.

    Memory holds at most the values of two storages (the one being written and the next one, read
    meanwhile); tensors copied inside the kernel need none. NaN or Inf in a weight is refused (after
    the whole model was scanned, so the list is complete) unless `allow_non_finite`. `on_read` sees
    every source tensor as read, before any cast. `hash_source`: the pass over the source also
    computes its sha256 (StorageIndex.sha256), unless already known; False where another process does.
    """
    check_ties(plan)
    shards = plan_shards(plan.tensors, max_shard_bytes)
    names = shard_file_names(len(shards))
    # Without a reader of the source tensors besides the writer, their buffers are reused once written.
    pool = BufferPool() if on_read is None else None
    with single_torch_thread():
        one_pass = _OnePass.planned(plan, shards, on_read, pool, hash_source) if _ONE_PASS else None
        if one_pass is not None:
            non_finite = one_pass.write([folder / name for name in names], progress)
        else:
            non_finite = _write_tensor_by_tensor(folder, names, shards, plan, on_read, pool, progress)
    non_finite, overflowed = _blame_non_finite(plan, non_finite)
    if overflowed:
        largest = f"{max(largest for _, largest in overflowed):.1e}".replace("e+0", "e").replace("e+", "e")
        dtype = str(overflowed[0][0].dtype).removeprefix("torch.")
        raise ConversionError(
            f"{len(overflowed)} tensor{'s' if len(overflowed) > 1 else ''} exceed {dtype}'s range "
            f"(max |value| {largest}): use --dtype bfloat16 or float32", path=plan.model.path,
            details=[tensor.source_name for tensor, _ in overflowed[:20]],
        )
    if non_finite and not allow_non_finite:
        raise ConversionError(
            f"{len(non_finite)} source tensor{'s hold' if len(non_finite) > 1 else ' holds'} NaN or Inf values",
            path=plan.model.path, hint="the checkpoint may be damaged or diverged in training; pass --allow-non-finite to convert anyway",
            details=non_finite[:20] + ([f"... and {len(non_finite) - 20} more"] if len(non_finite) > 20 else []),
        )
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": plan.total_bytes},
            "weight_map": {tensor.target: name for name, shard in zip(names, shards) for tensor in shard},
        }
        write_json(folder / INDEX_FILE, index)
        names.append(INDEX_FILE)
    return names


def _blame_non_finite(plan: ConversionPlan, names: list[str]) -> tuple[list[str], list[tuple[TensorPlan, float]]]:
    """Splits tensors written with NaN or Inf into those whose source holds them (damage) and those the
    cast made so (values beyond the output dtype's range, with their largest |value|). Only tensors
    that came out non-finite are read again, so the writer's check stays a sum."""
    damaged, overflowed = [], []
    planned = {tensor.source_name: tensor for tensor in plan.tensors}
    for name in names:
        tensor = planned[name]
        if tensor.source is None or tensor.source.dtype == tensor.dtype:
            damaged.append(name)
            continue
        source = tensor.source.load()
        if has_non_finite(source):
            damaged.append(name)
        else:
            overflowed.append((tensor, float(source.abs().max())))
    return damaged, overflowed


def write_text(path: Path, text: str) -> None:
    """Every text file of OUT is written here, so a full disk is an OSError wherever it strikes."""
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def _write_tensor_by_tensor(folder: Path, names: list[str], shards: list[list[TensorPlan]], plan: ConversionPlan,
                            on_read: OnRead | None, pool: BufferPool | None, progress: Progress | None) -> list[str]:
    """Each tensor read (and checked against its CRC-32) while the one before it is written."""
    non_finite: list[str] = []

    def read(tensor: TensorPlan) -> Read:
        buffer = pool.acquire(tensor.source.read_nbytes) if pool and tensor.source is not None else None
        return materialise(tensor, on_read, buffer), buffer

    with Prefetcher(plan.tensors, read) as prefetch:
        for name, shard in zip(names, shards):
            write_safetensors(folder / name, shard, prefetch.take, pool.release if pool else None, progress,
                              non_finite)
    return non_finite


# ---- one pass over the source, tensors copied inside the kernel ---------------------------------------

@dataclass(eq=False)
class _Placed:
    """A planned tensor, where it goes (shard, byte offset) and where its source bytes are in the file."""

    planned: TensorPlan
    shard: int
    offset: int
    start: int = 0  # the source bytes `load()` reads: [start, end) of the checkpoint file
    end: int = 0

    @property
    def unchanged(self) -> bool:
        """The output bytes are the source bytes as stored: no cast, no alias rows, no gaps, no bool fix-up."""
        source, planned = self.planned.source, self.planned
        return (source is not None and not planned.extra_rows and planned.dtype == source.dtype != torch.bool
                and tuple(planned.shape) == tuple(source.shape) and source.is_contiguous() and planned.nbytes > 0)


@dataclass(eq=False)
class _Region:
    """Bytes of the source taken in one go, in file order: a storage the output uses, or bytes between
    (read for the sha256 only)."""

    start: int
    end: int
    key: str | None = None
    tensors: list[_Placed] = field(default_factory=list)


@dataclass
class _Scanned:
    """What the pass made of a region."""

    copies: list[_Placed]  # to copy inside the kernel
    writes: list[tuple[_Placed, torch.Tensor]]  # output values to write from user space
    non_finite: list[_Placed]
    buffer: torch.Tensor | None  # a pooled buffer to release once the writes are done


class _OnePass:
    """Writes the plan's shards while one pass over the source checks (and where needed reads) each region."""

    def __init__(self, index: StorageIndex, placed: list[_Placed], regions: list[_Region],
                 on_read: OnRead | None, pool: BufferPool | None, hash_file: bool) -> None:
        self.index, self.placed, self.regions = index, placed, regions
        self.on_read, self.pool, self.hash_file = on_read, pool, hash_file
        self.digest: HashAlongside | None = None  # the source's sha256, when hash_file: see write()
        # Read by the pass when it starts a region, cleared by the writer when the kernel refuses a copy.
        self.copy_in_kernel = hasattr(os, "copy_file_range")

    @classmethod
    def planned(cls, plan: ConversionPlan, shards: list[list[TensorPlan]], on_read: OnRead | None,
                pool: BufferPool | None, hash_source: bool = True) -> _OnePass | None:
        """None when the source's layout does not allow one pass in file order (then tensor by tensor)."""
        indexes = {id(t.source.storage.index): t.source.storage.index for t in plan.tensors if t.source is not None}
        if len(indexes) != 1:
            return None
        (index,) = indexes.values()
        placed = []
        for number, shard in enumerate(shards):
            offset = len(safetensors_header(shard, {"format": "pt"}))
            for planned in shard:
                placed.append(_Placed(planned, number, offset))
                offset += planned.nbytes
        hash_file = hash_source and index.sha256 is None
        regions = _regions(index, placed, hash_file)
        return None if regions is None else cls(index, placed, regions, on_read, pool, hash_file)

    def write(self, paths: list[Path], progress: Progress | None) -> list[str]:
        """Writes the shards; returns the source names of tensors holding NaN or Inf, in plan order."""
        non_finite: set[int] = set()
        with ExitStack() as stack:
            files = [stack.enter_context(open(path, "wb", buffering=0)) for path in paths]
            for file, shard in zip(files, self._shards()):
                pwrite_fully(file.fileno(), memoryview(safetensors_header(shard, {"format": "pt"})), 0)
            source = stack.enter_context(self.index.open_unchanged(buffering=0))
            reader = stack.enter_context(_MappedSource(self.index))
            # sha256 costs more per byte than the CRC-32 and the NaN/Inf check together: its own thread.
            self.digest = stack.enter_context(HashAlongside()) if self.hash_file else None
            for placed in self.placed:
                if placed.planned.source is None:
                    self._write_values(files, placed, materialise(placed.planned))
                    if progress:
                        progress(placed.planned)
            # The pass runs ahead of the copies on its own thread (see _PassAhead).
            ahead = stack.enter_context(_PassAhead(self, reader, source.fileno()))
            for region in self.regions:
                scanned = ahead.take()
                for placed in scanned.copies:
                    self._copy(source.fileno(), files[placed.shard].fileno(), placed)
                for placed, values in scanned.writes:
                    self._write_values(files, placed, values)
                if scanned.buffer is not None and self.pool is not None:
                    self.pool.release(scanned.buffer)
                non_finite.update(id(placed) for placed in scanned.non_finite)
                ahead.written(region)
                if progress:
                    for placed in region.tensors:
                        progress(placed.planned)
        if self.digest is not None:
            self.index.sha256 = self.digest.hexdigest()
        return [placed.planned.source_name for placed in self.placed if id(placed) in non_finite]

    def _shards(self) -> list[list[TensorPlan]]:
        shards: list[list[TensorPlan]] = []
        for placed in self.placed:
            if placed.shard == len(shards):
                shards.append([])
            shards[placed.shard].append(placed.planned)
        return shards

    # -- on the pass's thread --

    def _copies(self, region: _Region) -> list[_Placed]:
        """The region's tensors to copy inside the kernel (the others are written from user space)."""
        return [placed for placed in region.tensors if self.copy_in_kernel and placed.unchanged]

    def _scan(self, region: _Region, reader: _MappedSource, copies: list[_Placed]) -> _Scanned:
        """Reads the region once: CRC-32 of its storage, sha256, NaN/Inf of the tensors copied as they are,
        and the values of the others (and of all when `on_read` wants them)."""
        wanted = [placed for placed in region.tensors if self.on_read or placed not in copies]
        low = min((placed.start for placed in wanted), default=region.end)
        high = max((placed.end for placed in wanted), default=region.end)
        # The values wanted lie on a mapping of their own, kept with them; else they are copied into a buffer.
        held = reader.held(low, high) if wanted else None
        buffer, pooled = (held, None) if held is not None else self._buffer(high - low) if wanted else (None, None)
        scanned = _Scanned(copies, [], [], pooled)
        expected = self.index.unchecked_crc(region.key) if region.key is not None else None
        crc = 0
        for start, end in _pieces(region.start, region.end, (low, high)):
            inside = buffer is not None and low <= start < high
            if held is not None and inside:
                pieces: AbstractContextManager[memoryview] = nullcontext(memoryview(held[start - low:end - low].numpy()))
            else:
                pieces = reader.piece(start, end, buffer[start - low:end - low] if inside else None)
            piece = pieces.__enter__()
            try:
                if expected is not None:
                    crc = zlib.crc32(piece, crc)
                self._check_copied(copies, piece, start, end, scanned.non_finite)
            except BaseException:
                pieces.__exit__(None, None, None)
                raise
            if self.digest is not None:
                # Hashed on the digest's thread while the pass checks the next pieces; released there.
                self.digest.update(piece, done=partial(pieces.__exit__, None, None, None))
            else:
                pieces.__exit__(None, None, None)
        if pooled is not None and self.digest is not None:
            self.digest.wait()  # the writer gives the buffer back to the pool once written
        if expected is not None:
            self.index.check_crc(region.key, crc)
        for placed in wanted:
            loaded = placed.planned.source.from_bytes(buffer[placed.start - low:placed.end - low])
            if self.on_read:
                self.on_read(placed.planned.source, loaded)
            if placed not in copies:
                values = for_output(placed.planned, loaded)
                if has_non_finite(values):
                    scanned.non_finite.append(placed)
                scanned.writes.append((placed, values))
        return scanned

    def _buffer(self, nbytes: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A buffer of at least `nbytes`, and the same if it came from the pool (to give back)."""
        pooled = self.pool.acquire(nbytes) if self.pool is not None else None
        return (pooled if pooled is not None else torch.empty(nbytes, dtype=torch.uint8)), pooled

    @staticmethod
    def _check_copied(copies: list[_Placed], piece: memoryview, start: int, end: int,
                      non_finite: list[_Placed]) -> None:
        """NaN/Inf in the part of each copied tensor that lies in the piece [start, end) of the file."""
        raw = torch.frombuffer(piece, dtype=torch.uint8) if len(piece) else None
        for placed in copies:
            low, high = max(start, placed.start), min(end, placed.end)
            if low < high and placed not in non_finite \
                    and has_non_finite(as_elements(raw[low - start:high - start], placed.planned.dtype)):
                non_finite.append(placed)

    # -- on the writer's thread --

    def _copy(self, source: int, target: int, placed: _Placed) -> None:
        """copy_file_range from the checkpoint to the tensor's place; user space where the kernel cannot."""
        done, total = 0, placed.end - placed.start
        while done < total and self.copy_in_kernel:
            try:
                copied = os.copy_file_range(source, target, min(COPY_CHUNK, total - done), placed.start + done,
                                            placed.offset + done)
            except OSError as error:
                if error.errno not in KERNEL_COPY_UNSUPPORTED:
                    raise
                self.copy_in_kernel = False
                break
            if copied == 0:
                raise CheckpointFormatError("the file ends in the middle of a tensor", path=self.index.path,
                                            hint="the file is truncated; copy it again")
            done += copied
        if done < total:
            # Already checked by the pass, so read again as plain bytes.
            rest = torch.empty(min(COPY_CHUNK, total - done), dtype=torch.uint8)
            view = memoryview(rest.numpy())
            while done < total:
                part = view[:min(len(view), total - done)]
                self.index.read_into(part, placed.start + done)
                pwrite_fully(target, part, placed.offset + done)
                done += len(part)

    def _write_values(self, files: list, placed: _Placed, values: torch.Tensor) -> None:
        planned = placed.planned
        if tuple(values.shape) != tuple(planned.shape) or values.dtype != planned.dtype:
            raise AssertionError(f"{planned.target}: planned {planned.shape} {planned.dtype}, "
                                 f"got {tuple(values.shape)} {values.dtype}")
        if values.numel():
            data = memoryview(values.contiguous().view(torch.uint8).numpy())
            pwrite_fully(files[placed.shard].fileno(), data, placed.offset)


class _PassAhead:
    """The pass over the source on a thread of its own, as far ahead of the writer as memory allows.

    The regions of a checkpoint alternate between storages and the few bytes of zip header between
    them, so a pass one region ahead (as a Prefetcher) would check the header after a storage while
    that storage is copied, then wait: checking and copying would take turns instead of overlapping.
    Here the pass goes on to the next regions while the writer copies, within two bounds:
    - the values it reads for the writer (cast tensors, alias rows): at most one region's worth waits
      besides the one being written, as before;
    - the bytes checked but not yet copied: at most LEAD_BYTES beyond one region, so the copies still
      find them in the page cache.
    The kernel is asked to read ahead of the pass (POSIX_FADV_WILLNEED), which matters when the
    checkpoint is not yet in the page cache.
    """

    LEAD_BYTES = 256 << 20

    def __init__(self, one_pass: _OnePass, reader: _MappedSource, source_fd: int) -> None:
        self._pass, self._reader, self._fd = one_pass, reader, source_fd
        self._results: list[tuple[_Scanned | None, BaseException | None]] = []
        self._lead = 0  # bytes of regions scanned, not yet written
        self._holding = 0  # results not yet taken that hold values for the writer
        self._advised = 0  # the kernel was asked to read the source up to here
        self._stopped = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="source-pass", daemon=True)

    def __enter__(self) -> _PassAhead:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        self._thread.join()

    def take(self) -> _Scanned:
        """The next region's result, in file order (raises what the pass raised)."""
        with self._condition:
            while not self._results:
                self._condition.wait()
            scanned, error = self._results.pop(0)
            self._holding -= scanned is not None and bool(scanned.writes)
            self._condition.notify_all()
        if error is not None:
            raise error
        assert scanned is not None
        return scanned

    def written(self, region: _Region) -> None:
        with self._condition:
            self._lead -= region.end - region.start
            self._condition.notify_all()

    def _run(self) -> None:
        regions = self._pass.regions
        try:
            for number, region in enumerate(regions):
                copies = self._pass._copies(region)
                holds = len(copies) < len(region.tensors)
                with self._condition:
                    while not self._stopped and self._lead and (
                            self._lead > self.LEAD_BYTES or (holds and self._holding)):
                        self._condition.wait()
                    if self._stopped:
                        return
                self._read_ahead(regions, number)
                scanned = self._pass._scan(region, self._reader, copies)
                with self._condition:
                    self._lead += region.end - region.start
                    self._holding += bool(scanned.writes)
                    self._results.append((scanned, None))
                    self._condition.notify_all()
        except BaseException as error:  # handed to the writer, which raises it
            with self._condition:
                self._results.append((None, error))
                self._condition.notify_all()

    def _read_ahead(self, regions: list[_Region], number: int) -> None:
        """Asks the kernel to start reading the bytes the pass needs next, LEAD_BYTES at a time."""
        start, end = regions[number].start, regions[-1].end
        if self._advised - start > self.LEAD_BYTES // 2 or not hasattr(os, "posix_fadvise"):
            return
        begin, self._advised = max(start, self._advised), min(end, start + self.LEAD_BYTES)
        if begin < self._advised:
            try:
                os.posix_fadvise(self._fd, begin, self._advised - begin, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass


def _regions(index: StorageIndex, placed: list[_Placed], hash_file: bool) -> list[_Region] | None:
    """The storages the output uses in file order, with the bytes between them when the file is hashed.

    None when two storages overlap, which torch never writes: such a file is read tensor by tensor.
    """
    by_key: dict[str, list[_Placed]] = {}
    for item in placed:
        source = item.planned.source
        if source is not None:
            first, last = source.storage_range
            item.start = index.locations[source.storage.key][0] + first
            item.end = index.locations[source.storage.key][0] + last
            by_key.setdefault(source.storage.key, []).append(item)
    regions: list[_Region] = []
    position = 0
    for start, key in sorted((index.locations[key][0], key) for key in by_key):
        if start < position:
            return None
        if hash_file and start > position:
            regions.append(_Region(position, start))
        position = start + index.locations[key][1]
        regions.append(_Region(start, position, key, by_key[key]))
    size = os.stat(index.path).st_size
    if hash_file and size > position:
        regions.append(_Region(position, size))
    return regions


def _pieces(start: int, end: int, cuts: tuple[int, ...]) -> list[tuple[int, int]]:
    """[start, end) in pieces of at most SCAN_CHUNK bytes, also cut at `cuts`.

    Cuts fall on element boundaries of the region's storage, so every piece of a tensor is whole elements.
    """
    points = sorted({start, end, *range(start, end, SCAN_CHUNK), *(cut for cut in cuts if start < cut < end)})
    return list(zip(points, points[1:]))


class _MappedSource:
    """The checkpoint's bytes piece by piece, from a mapping of the file: no copy into user space.

    Each piece's pages are mapped in one call (MADV_POPULATE_READ: no fault per page, and a file that
    shrank since it was opened is an error here, not a SIGBUS later) and dropped from the process once
    used (the page cache keeps them), so the resident set stays about one piece. A piece wanted `into`
    a buffer is copied there. Where the file cannot be mapped, pieces are read with pread.
    """

    def __init__(self, index: StorageIndex) -> None:
        self.index = index
        self._map: mmap.mmap | None = None
        self._file = None

    def __enter__(self) -> _MappedSource:
        self._file = self.index.open_unchanged()
        try:
            # Private and writable (never written): tensors made on it need no read-only warning.
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError):  # ValueError: an empty file
            self._map = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            self._map.close()
        if self._file is not None:
            self._file.close()

    def held(self, start: int, end: int) -> torch.Tensor | None:
        """The bytes [start, end) as a uint8 tensor on a mapping of its own, unmapped when the tensor (and
        every view of it) is freed: values the writer or the verification keep a while, at no copy.
        None where the file cannot be mapped (then the caller copies the bytes into a buffer)."""
        # Elements must be aligned in the mapping for the tensor views of them (8: the widest dtype).
        if self._map is None or end > len(self._map) or end <= start or start % 8:
            return None
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(self._file.fileno(), end - aligned, access=mmap.ACCESS_COPY, offset=aligned)
        except (OSError, ValueError):
            return None
        try:
            mapping.madvise(MADV_POPULATE_READ)
        except OSError as error:
            mapping.close()
            if error.errno == errno.EFAULT:  # pages past the end of the file: it shrank
                raise CheckpointFormatError("the file ends in the middle of a tensor", path=self.index.path,
                                            hint="the file is truncated; copy it again") from None
            return None
        return torch.frombuffer(mapping, dtype=torch.uint8, count=end - start, offset=start - aligned)

    @contextmanager
    def piece(self, start: int, end: int, into: torch.Tensor | None) -> Iterator[memoryview]:
        mapped = self._mapped(start, end)
        if mapped is None:
            # A buffer of its own: pieces stay in use until hashed, after the next ones are read.
            target = into if into is not None else torch.empty(end - start, dtype=torch.uint8)
            view = memoryview(target.numpy())
            self.index.read_into(view, start)
            yield view
            return
        page = start - start % mmap.PAGESIZE
        try:
            if into is None:
                yield mapped
            else:
                view = memoryview(into.numpy())
                view[:] = mapped
                yield view
        finally:
            mapped.release()
            self._map.madvise(mmap.MADV_DONTNEED, page, end - page)

    def _mapped(self, start: int, end: int) -> memoryview | None:
        if self._map is None or end > len(self._map) or end == start:
            return None
        page = start - start % mmap.PAGESIZE
        try:
            self._map.madvise(MADV_POPULATE_READ, page, end - page)
        except OSError as error:
            if error.errno == errno.EFAULT:  # pages past the end of the file: it shrank
                raise CheckpointFormatError("the file ends in the middle of a tensor", path=self.index.path,
                                            hint="the file is truncated; copy it again") from None
            self._map.close()  # e.g. EINVAL from a kernel without MADV_POPULATE_READ: pread from now on
            self._map = None
            return None
        return memoryview(self._map)[start:end]


def pwrite_fully(fd: int, data: memoryview, offset: int) -> None:
    """Writes all of `data` at byte `offset` of `fd` (os.pwrite may write less than asked)."""
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
