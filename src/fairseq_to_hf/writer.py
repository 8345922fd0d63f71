"""Writes a plan's tensors as safetensors, tensor by tensor, into a staged folder.

A safetensors file is an 8-byte header length, a JSON header giving every tensor's dtype, shape and
byte range, then the bytes. All of that is known from the plan, so the header is written first and the
tensors are streamed after it: memory holds one tensor and the next, never the model.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ConversionError
from .plan import ConversionPlan, TensorPlan
from .reader.tensors import LazyTensor
from .prefetch import Prefetcher

SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # the Hub's "5GB"
MAX_SHARD_BYTES = 10**15

Progress = Callable[[TensorPlan], None]  # called after each tensor is written
OnRead = Callable[[LazyTensor, torch.Tensor], None]  # called with each source tensor as it is read
Read = tuple[torch.Tensor, torch.Tensor | None]  # a tensor's values, and the pooled buffer they were read into


def parse_size(size: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes (decimal units as in huggingface_hub)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    value = str(size).strip().upper()
    number = value.rstrip("KMGTIB")
    try:
        amount = float(number) * units[value[len(number):]]
    except (ValueError, KeyError):
        raise ConversionError(f"cannot read the size {size!r}; write it like 5GB or 500MB") from None
    if not (1 <= amount <= MAX_SHARD_BYTES):  # also refuses nan and inf
        raise ConversionError(f"the shard size {size!r} must be between 1 byte and 1PB")
    return int(amount)


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
        return torch.zeros(tensor.shape, dtype=tensor.dtype)
    loaded = tensor.source.load(into)
    if on_read:
        on_read(tensor.source, loaded)
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
                hint="the checkpoint is inconsistent; was it edited after training?",
            )


def write_weights(folder: Path, plan: ConversionPlan, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                  progress: Progress | None = None, *, allow_non_finite: bool = False,
                  on_read: OnRead | None = None) -> list[str]:
    """Writes model.safetensors, or shards plus model.safetensors.index.json; returns file names.

    Memory holds two tensors: the one being written and the next one, read meanwhile. NaN or Inf in
    a weight is refused (after the whole model was scanned, so the list is complete)
    unless `allow_non_finite`. `on_read` sees every source tensor as read, before any cast.
    """
    check_ties(plan)
    shards = plan_shards(plan.tensors, max_shard_bytes)
    names = shard_file_names(len(shards))
    non_finite: list[str] = []
    # Without a reader of the source tensors besides the writer, their buffers are reused once written.
    pool = BufferPool() if on_read is None else None

    def read(tensor: TensorPlan) -> Read:
        buffer = pool.acquire(tensor.source.read_nbytes) if pool and tensor.source is not None else None
        return materialise(tensor, on_read, buffer), buffer

    # The next tensor is read (and checked against its CRC-32) while this one is written.
    with single_torch_thread(), Prefetcher(plan.tensors, read) as prefetch:
        for name, shard in zip(names, shards):
            write_safetensors(folder / name, shard, prefetch.take, pool.release if pool else None, progress,
                              non_finite)
    non_finite, overflowed = _blame_non_finite(plan, non_finite)
    if overflowed:
        largest = f"{max(largest for _, largest in overflowed):.1e}".replace("e+0", "e").replace("e+", "e")
        dtype = str(overflowed[0][0].dtype).removeprefix("torch.")
        raise ConversionError(
            f"{len(overflowed)} tensor{'s' if len(overflowed) > 1 else ''} exceed {dtype}'s range "
            f"(max |value| {largest}): use --dtype bfloat16 or float32",
            details=[tensor.source_name for tensor, _ in overflowed[:20]],
        )
    if non_finite and not allow_non_finite:
        raise ConversionError(
            f"{len(non_finite)} source tensor{'s' if len(non_finite) > 1 else ''} hold NaN or Inf values",
            hint="the checkpoint may be damaged or diverged in training; pass --allow-non-finite to convert anyway",
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


def write_json(path: Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
