"""The Transformers model of an output folder, run with one block's weights in memory at a time.

The model is built on the meta device (no memory), then every block (the embeddings, each encoder
layer, each remaining module with weights) gets its tensors from the folder's safetensors just before
it runs (they are read while the block before it computes) and drops them right after. The forward
pass is Transformers' own code, as after `from_pretrained`; only where the weights live differs. Tied
parameters are found structurally (one Parameter under several names), so a tensor stored once serves
every name, as in `from_pretrained`.
"""

from __future__ import annotations

import json
import math
import mmap
import re
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConversionError
from ..prefetch import Prefetcher
from ..reader.tensors import pread_fully
from ..writer import INDEX_FILE, SAFETENSORS_DTYPES, SINGLE_FILE
from .imports import transformers as import_transformers

DTYPES_BY_NAME = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14; Python 3.11 lacks the name
BLOCK = re.compile(r"^(?:[a-z_]+\.)?(?:embeddings|encoder\.layer\.\d+)$")


class StoredWeights:
    """Where every tensor of a folder's safetensors files lies; maps one on demand.

    Each tensor gets a mapping of its own byte range, its pages mapped in one call
    (MADV_POPULATE_READ) and released with the tensor: a float32 tensor is used where it lies in the
    page cache (the writer just put it there), with no copy and no fresh memory, which on this kind of
    machine costs more than the copy itself (every new page is zeroed and, on a VM, faulted in by the
    host too). Other dtypes are converted from the mapping into float32. Where mapping fails, the
    byte range is read with pread.
    """

    def __init__(self, folder: Path) -> None:
        index = folder / INDEX_FILE
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = [SINGLE_FILE]
        # name -> (file, dtype, shape, offset in the file, byte count)
        self.locations: dict[str, tuple[Path, torch.dtype, list[int], int, int]] = {}
        self.files_of: dict[str, list[str]] = {}  # name -> every file that stores it (one, in a sound folder)
        for file in files:
            if not (folder / file).is_file():
                raise ConversionError(
                    "does not exist: verify checks a folder's safetensors weights", path=folder / file,
                    hint="convert the checkpoint again, or save the model with save_pretrained (safetensors "
                         "is its default)")
            self._read_header(folder / file)

    def _read_header(self, path: Path) -> None:
        unreadable = ConversionError("is not a safetensors file this tool can read", path=path,
                                     hint="convert the checkpoint again")
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else size
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise unreadable
            try:
                header = json.loads(handle.read(length))
                header.pop("__metadata__", None)
                for name, entry in header.items():
                    dtype = DTYPES_BY_NAME[entry["dtype"]]
                    shape = [int(dim) for dim in entry["shape"]]
                    begin, end = (int(offset) for offset in entry["data_offsets"])
                    if not 0 <= begin <= end <= size - 8 - length or end - begin != math.prod(shape) * dtype.itemsize:
                        raise ValueError(name)
                    self.locations[name] = (path, dtype, shape, 8 + length + begin, end - begin)
                    self.files_of.setdefault(name, []).append(path.name)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise unreadable from None

    def read_float32(self, name: str) -> torch.Tensor:
        path, dtype, shape, offset, nbytes = self.locations[name]
        mapped = _mapped(path, offset, nbytes, dtype) if nbytes else None
        if mapped is not None:
            return mapped.reshape(shape).to(torch.float32)
        raw = torch.empty(nbytes, dtype=torch.uint8)
        try:
            got = pread_fully(path, memoryview(raw.numpy()), offset)
        except OSError as error:
            raise ConversionError(f"cannot be read ({error.strerror})", path=path) from None
        if got < nbytes:
            raise ConversionError("ends in the middle of a tensor", path=path)
        return raw.view(dtype).reshape(shape).to(torch.float32)


def _mapped(path: Path, offset: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The bytes [offset, offset + nbytes) of `path` as a flat tensor on a private mapping of them
    (never written; unmapped when the tensor is freed), or None where they cannot be mapped."""
    if offset % dtype.itemsize:
        return None
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        with open(path, "rb") as file:
            mapping = mmap.mmap(file.fileno(), offset + nbytes - start, access=mmap.ACCESS_COPY, offset=start)
        # All pages in one call; a file shorter than its header says is an error here, not a SIGBUS later.
        mapping.madvise(MADV_POPULATE_READ)
    except (OSError, ValueError):
        return None
    return torch.frombuffer(mapping, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset - start)


def shape_mismatch_error(folder: Path, architecture: str, mismatched: list[tuple[str, Any, Any]]) -> ConversionError:
    """(name, stored shape, shape config.json gives) of each weight whose two shapes differ."""
    def shown(shape) -> str:
        return " x ".join(map(str, shape)) or "a scalar"

    count = len(mismatched)
    return ConversionError(
        f"cannot be loaded by {architecture}.from_pretrained: {count} "
        f"{'weights have' if count > 1 else 'weight has'} another shape than its config.json gives", path=folder,
        hint="check that the folder holds the model's weights and config.json",
        details=[f"{name}: {shown(stored)} stored, {shown(expected)} by config.json"
                 for name, stored, expected in mismatched[:8]] + ([f"and {count - 8} more"] if count > 8 else []))


class StreamedModel:
    """Use as a context manager; `model` then runs like a from_pretrained model, block by block.

    `passes`: how many forward passes will run (one per batch); each reads the blocks again.
    """

    def __init__(self, folder: Path, architecture: str, passes: int = 1) -> None:
        transformers = import_transformers()

        self.folder, self.passes = folder, passes
        config = transformers.AutoConfig.from_pretrained(folder)
        config.dtype = torch.float32
        with torch.device("meta"):
            self.model = getattr(transformers, architecture)(config).eval()
        self.config = config
        self.stored = StoredWeights(folder)
        # Every name of every parameter, and the names that share one Parameter (ties).
        aliases: dict[int, list[str]] = defaultdict(list)
        for name, parameter in self.model.named_parameters(remove_duplicate=False):
            aliases[id(parameter)].append(name)
        self.aliases = {name: names for names in aliases.values() for name in names}
        self.loading_warnings = self._loading_warnings()
        mismatched = sorted((name, self.stored.locations[stored][2], list(parameter.shape))
                            for name, parameter in self.model.named_parameters()
                            if (stored := self._stored_name(name)) is not None
                            and self.stored.locations[stored][2] != list(parameter.shape))
        if mismatched:  # as from_pretrained would refuse them (compare.load_transformers_model)
            raise shape_mismatch_error(folder, architecture, mismatched)

    def _loading_warnings(self) -> list[str]:
        expected = set(self.aliases)
        stored = set(self.stored.locations)
        missing = sorted(name for name in expected - stored if not any(a in stored for a in self.aliases[name]))
        unexpected = sorted(stored - expected)
        warnings = []
        if missing:
            warnings.append(f"missing_keys: {', '.join(missing)}")
        if unexpected:
            warnings.append(f"unexpected_keys: {', '.join(unexpected)}")
        return warnings

    def __enter__(self) -> StreamedModel:
        blocks = self._blocks()
        self._modules = {name: (module, whole) for name, module, whole in blocks}
        # Blocks run in the order Transformers registers them, `passes` times over; the next one is
        # read during this one.
        self._prefetch = Prefetcher([name for name, _, _ in blocks] * self.passes, self._read_block)
        self._prefetch.__enter__()
        self._hooks = []
        for name, module, whole in blocks:
            self._hooks.append(module.register_forward_pre_hook(
                lambda module, args, name=name: self._install(self._prefetch.take(name))))
            self._hooks.append(module.register_forward_hook(
                lambda module, args, output, whole=whole: self._drop(module, whole)))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._prefetch.__exit__(*exc)

    def _blocks(self) -> list[tuple[str, nn.Module, bool]]:
        """(name, module, whole): the embeddings and each encoder layer load whole; every other module
        that holds weights itself loads just those."""
        blocks = [(name, module, True) for name, module in self.model.named_modules() if BLOCK.match(name)]
        covered = tuple(f"{name}." for name, _, _ in blocks)
        for name, module in self.model.named_modules():
            if name and not name.startswith(covered) and not BLOCK.match(name) and \
                    any(True for _ in module.parameters(recurse=False)):
                blocks.append((name, module, False))
        return blocks

    def _stored_name(self, name: str) -> str | None:
        return next((alias for alias in self.aliases.get(name, [name]) if alias in self.stored.locations), None)

    def _tensor(self, name: str) -> torch.Tensor:
        stored = self._stored_name(name)
        if stored is None:
            raise KeyError(f"{name} is not in the output folder")
        return self.stored.read_float32(stored)

    def _read_block(self, prefix: str) -> list[tuple[nn.Module, str, torch.Tensor, bool]]:
        """(module, name, value, is_parameter) for every tensor the block holds itself."""
        block, whole = self._modules[prefix]
        values = []
        for module_name, module in (block.named_modules() if whole else [("", block)]):
            full = f"{prefix}.{module_name}" if module_name else prefix
            for name, parameter in module._parameters.items():
                if parameter is not None:
                    values.append((module, name, self._tensor(f"{full}.{name}"), True))
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_meta:
                    values.append((module, name, self._buffer(name, buffer), False))
        return values

    @staticmethod
    def _install(values: list[tuple[nn.Module, str, torch.Tensor, bool]]) -> None:
        for module, name, value, is_parameter in values:
            if is_parameter:
                module._parameters[name] = nn.Parameter(value, requires_grad=False)
            else:
                module._buffers[name] = value

    def _buffer(self, name: str, buffer: torch.Tensor) -> torch.Tensor:
        # Non-persistent index buffers of the embeddings, recomputed as Transformers' __init__ does.
        if name == "position_ids":
            return torch.arange(buffer.shape[-1]).expand(buffer.shape)
        if name == "token_type_ids":
            return torch.zeros(buffer.shape, dtype=torch.long)
        raise RuntimeError(f"cannot rebuild the buffer {name} for a block-by-block forward pass")

    def _drop(self, block: nn.Module, whole: bool) -> None:
        for module in (block.modules() if whole else [block]):
            for name, parameter in list(module._parameters.items()):
                if parameter is not None:
                    module._parameters[name] = nn.Parameter(parameter.to("meta"), requires_grad=False)
