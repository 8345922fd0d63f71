"""Tensors known by their metadata, whose bytes are read from the checkpoint only when asked for."""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

import torch

from ..errors import CheckpointFormatError, UnsafeCheckpointError
from .files import file_identity

# torch pickles name a storage by its typed class; UntypedStorage holds raw bytes.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


def storage_dtype(storage_class_name: str) -> torch.dtype | None:
    return _STORAGE_DTYPES.get(storage_class_name)


@dataclass(eq=False)
class StorageRef:
    """One storage of the checkpoint: `numel` elements of `dtype`, found through `index`."""

    key: str
    dtype: torch.dtype
    numel: int
    index: StorageIndex
    element_offset: int = 0  # for legacy storage views into another storage

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True, eq=False)
class LazyTensor:
    """A tensor of the checkpoint: shape and dtype now, bytes on `load()`."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def extent(self) -> int:
        """Elements of the storage this view spans, from its offset."""
        if self.numel == 0:
            return 0
        return 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.stride))

    def fits_storage(self) -> bool:
        return self.offset + self.extent <= self.storage.numel

    def same_data(self, other: LazyTensor) -> bool:
        """True when both are the same view of the same storage (tied in the source model)."""
        return (
            self.storage.key == other.storage.key
            and self.storage.index is other.storage.index
            and (self.offset, self.shape, self.stride) == (other.offset, other.shape, other.stride)
        )

    @property
    def read_nbytes(self) -> int:
        """Bytes `load()` reads: the span of the storage this view covers."""
        return self.extent * self.dtype.itemsize

    @property
    def storage_range(self) -> tuple[int, int]:
        """The bytes `load()` reads, as offsets into its storage's data in the file: [start, end)."""
        start = (self.storage.element_offset + self.offset) * self.dtype.itemsize
        return start, start + self.read_nbytes

    def is_contiguous(self) -> bool:
        """Row-major without gaps: the tensor's bytes are `storage_range`, in order."""
        expected = 1
        for size, stride in reversed(list(zip(self.shape, self.stride))):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def load(self, into: torch.Tensor | None = None) -> torch.Tensor:
        """Reads this tensor's own bytes from the file and returns a contiguous CPU tensor.

        `into`: a uint8 buffer of at least `read_nbytes` to read into; the result may be a view of it.
        """
        return self._shaped(self.storage.index.read(self.storage, self.offset, self.extent, into))

    def from_bytes(self, raw: torch.Tensor) -> torch.Tensor:
        """What `load()` returns, from `raw`: the bytes of `storage_range` already read (uint8)."""
        return self._shaped(as_elements(raw, self.dtype))

    def _shaped(self, flat: torch.Tensor) -> torch.Tensor:
        if self.numel == 0:
            return flat.new_empty(self.shape)
        return flat.as_strided(self.shape, self.stride).contiguous()


@dataclass
class StorageIndex:
    """Where each storage's bytes begin in the checkpoint file, and how many there are."""

    path: str
    locations: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (file offset, nbytes)
    refs: dict[str, StorageRef] = field(default_factory=dict)
    checksums: dict[str, int] = field(default_factory=dict)  # key -> CRC-32 from the zip directory
    # Storages whose CRC-32 matched once: a later read (the verification's) need not pay for it again.
    checked: set[str] = field(default_factory=set)
    # The whole file's sha256, once a pass that read all of it (the writer's) computed it.
    sha256: str | None = None
    # The file as it was opened to be read (files.file_identity): every later open must find it so.
    identity: str | None = None

    def check_unchanged(self, file: int | str | os.PathLike) -> None:
        """Refuses a file (an open descriptor or a path) that is no longer the one first read."""
        try:
            now = file_identity(os.fstat(file) if isinstance(file, int) else os.stat(file))
        except OSError as error:
            raise CheckpointFormatError(f"cannot be read ({error.strerror})", path=self.path) from None
        if self.identity is not None and now != self.identity:
            raise CheckpointFormatError("changed while it was being converted (replaced or rewritten)",
                                        path=self.path, hint="convert it again once nothing writes to it")

    def open_unchanged(self, buffering: int = -1) -> BinaryIO:
        """The checkpoint opened again for reading, refused if it is no longer the file first read."""
        try:
            file = open(self.path, "rb", buffering=buffering)
        except OSError as error:
            raise CheckpointFormatError(f"cannot be read ({error.strerror})", path=self.path) from None
        try:
            self.check_unchanged(file.fileno())
        except BaseException:
            file.close()
            raise
        return file

    def ref(self, key: str, dtype: torch.dtype, numel: int) -> StorageRef:
        known = self.refs.get(key)
        if known is None:
            known = self.refs[key] = StorageRef(key, dtype, numel, self)
        elif known.dtype != dtype or known.numel != numel:
            raise UnsafeCheckpointError(f"storage {key!r} is described twice with different types or sizes")
        return known

    def view(self, key: str, root: StorageRef, element_offset: int, numel: int) -> StorageRef:
        if element_offset < 0 or numel < 0 or element_offset + numel > root.numel:
            raise UnsafeCheckpointError(f"storage view {key!r} lies outside storage {root.key!r}")
        return StorageRef(root.key, root.dtype, numel, self, element_offset)

    def read(self, storage: StorageRef, offset: int, count: int, into: torch.Tensor | None = None) -> torch.Tensor:
        """Reads `count` elements starting `offset` elements into `storage` (into `into` when given)."""
        location = self.locations.get(storage.key)
        if location is None:
            raise CheckpointFormatError(f"storage {storage.key!r} has no data in the file", path=self.path,
                                        hint="the file is truncated or damaged; copy it again")
        file_offset, available = location
        itemsize = storage.dtype.itemsize
        start = file_offset + (storage.element_offset + offset) * itemsize
        nbytes = count * itemsize
        if offset < 0 or count < 0 or (storage.element_offset + offset) * itemsize + nbytes > available:
            raise CheckpointFormatError(
                f"storage {storage.key!r} is shorter than its tensors need", path=self.path,
                hint="the file is truncated or damaged; copy it again",
            )
        # Raw bytes first: a bool storage may hold any byte, and torch expects bools to be 0 or 1.
        raw = torch.empty(nbytes, dtype=torch.uint8) if into is None else into[:nbytes]
        buffer = memoryview(raw.numpy()) if nbytes else memoryview(b"")
        self.read_into(buffer, start)
        whole = storage.element_offset + offset == 0 and nbytes == available
        if whole and self.unchecked_crc(storage.key) is not None:
            self.check_crc(storage.key, zlib.crc32(buffer))
        return as_elements(raw, storage.dtype)

    def unchecked_crc(self, key: str) -> int | None:
        """The CRC-32 the zip directory gives for storage `key`, unless it was already found to match."""
        return None if key in self.checked else self.checksums.get(key)

    def check_crc(self, key: str, crc: int) -> None:
        """`crc`: of all of storage `key`'s bytes as read."""
        if crc != self.checksums[key]:
            raise CheckpointFormatError(f"storage {key!r} is damaged (its CRC-32 does not match)",
                                        path=self.path, hint="copy or download the file again")
        self.checked.add(key)

    def read_into(self, buffer: memoryview, start: int) -> None:
        """Fills `buffer` from the file at byte `start`; a short or failed read is a CheckpointFormatError."""
        try:
            got = pread_fully(self.path, buffer, start)
        except OSError as error:  # the file went away or became unreadable since it was opened
            raise CheckpointFormatError(f"cannot be read ({error.strerror})", path=self.path) from None
        if got < len(buffer):
            raise CheckpointFormatError("the file ends in the middle of a tensor", path=self.path,
                                        hint="the file is truncated; copy it again")


def as_elements(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Raw uint8 bytes as elements of `dtype`; a bool storage may hold any byte, torch's bools are 0 or 1."""
    if dtype == torch.bool:
        return raw != 0
    return raw.view(dtype)


def pread_fully(path: str | os.PathLike, buffer: memoryview, start: int) -> int:
    """Fills `buffer` from `path` at byte `start`; returns the bytes read, fewer only at the end of the file."""
    done = 0
    with open(path, "rb", buffering=0) as file:
        while done < len(buffer):
            got = os.preadv(file.fileno(), [buffer[done:]], start + done)
            if got <= 0:
                break
            done += got
    return done
