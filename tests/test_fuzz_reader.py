"""Damaged checkpoints: whatever the bytes, the reader ends in one of the project's errors.

Hypothesis mutates the real fixture checkpoints (zip format: roberta_mlm; legacy format:
roberta_legacy_v09) in the places a damaged download or a hostile author would: the pickle's bytes and
opcodes, the zip directory and local headers, the legacy header pickles and storage list, the tensor
bytes, and the file's length. Opening the result and loading every tensor may succeed or raise a
`ConversionError` subclass; any other exception, a crash or a hang fails the test.

Deterministic (`derandomize=True`) and bounded for CI. For a longer local hunt:
    FAIRSEQ_TO_HF_FUZZ_EXAMPLES=5000 FAIRSEQ_TO_HF_FUZZ_RANDOM=1 pytest tests/test_fuzz_reader.py
"""

from __future__ import annotations

import io
import os
import pickletools
import signal
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from fairseq_to_hf.errors import ConversionError
from fairseq_to_hf.reader import read_checkpoint
from fairseq_to_hf.reader.tensors import StorageIndex
from fairseq_to_hf.reader.unpickle import load_pickle, to_plain

ZIP_FIXTURE = FIXTURES / "roberta_mlm" / "model.pt"
LEGACY_FIXTURE = FIXTURES / "roberta_legacy_v09" / "model.pt"
# Read once: every example mutates the same bytes the regions below were measured on.
ZIP_BYTES = ZIP_FIXTURE.read_bytes()
LEGACY_BYTES = LEGACY_FIXTURE.read_bytes()
EXAMPLES = int(os.environ.get("FAIRSEQ_TO_HF_FUZZ_EXAMPLES", "300"))
SECONDS_PER_EXAMPLE = 10  # a hang is a failure, not a stuck CI job

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    derandomize=not os.environ.get("FAIRSEQ_TO_HF_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Field values that break parsers: zero, sign bits, all ones, sizes just past any buffer.
INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80",
               struct.pack("<Q", 1 << 62), struct.pack("<q", -1), struct.pack("<I", 1 << 31)]
OPCODES = [op.code.encode("latin-1") for op in pickletools.opcodes]


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"reading took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read_everything(path: Path) -> None:
    """What the converter does with a checkpoint: open it, then load each tensor."""
    with time_limit(SECONDS_PER_EXAMPLE):
        try:
            checkpoint = read_checkpoint(path)
            for tensor in checkpoint.tensors.values():
                tensor.load()
            assert checkpoint.total_bytes >= 0
            event("read and loaded")
        except ConversionError as error:
            event(type(error).__name__)  # --hypothesis-show-statistics shows how the examples ended


# ---- where things are in the fixtures -------------------------------------------------------------

@dataclass(frozen=True)
class ZipParts:
    entries: list[tuple[zipfile.ZipInfo, bytes]]
    pickle_name: str
    pickle: bytes
    opcode_positions: list[int]
    directory: tuple[int, int]  # central directory through end record
    local_headers: list[tuple[int, int]]
    tensor_data: list[tuple[int, int]]


@dataclass(frozen=True)
class LegacyParts:
    header: tuple[int, int]  # magic, protocol, system info
    pickle: tuple[int, int]
    opcode_positions: list[int]  # relative to the pickle's start
    keys: tuple[int, int]
    tensor_data: tuple[int, int]


def _opcode_positions(data: bytes) -> list[int]:
    return [position for _, _, position in pickletools.genops(data)]


def zip_parts() -> ZipParts:
    data = ZIP_BYTES
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        entries = [(info, archive.read(info)) for info in infos]
    pickle_info = next(info for info in infos if info.filename.endswith("/data.pkl"))
    pickle_bytes = dict((info.filename, blob) for info, blob in entries)[pickle_info.filename]
    headers, tensors = [], []
    for info in infos:
        name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_length + extra_length
        headers.append((info.header_offset, start))
        if "/data/" in info.filename:
            tensors.append((start, start + info.file_size))
    directory = data.index(b"PK\x01\x02")
    return ZipParts(entries, pickle_info.filename, pickle_bytes, _opcode_positions(pickle_bytes),
                    (directory, len(data)), headers, tensors)


def legacy_parts() -> LegacyParts:
    data = LEGACY_BYTES
    stream = io.BytesIO(data)
    ends = []
    for _ in range(5):  # three header pickles, the main pickle, the storage keys
        for opcode, _, _ in pickletools.genops(stream):
            if opcode.name == "STOP":
                break
        ends.append(stream.tell())
    main = data[ends[2]:ends[3]]
    return LegacyParts((0, ends[2]), (ends[2], ends[3]), _opcode_positions(main), (ends[3], ends[4]),
                       (ends[4], len(data)))


ZIP = zip_parts()
LEGACY = legacy_parts()


# ---- mutations -------------------------------------------------------------------------------------

@st.composite
def edits(draw: st.DrawFn, length: int, opcode_positions: list[int] | None = None) -> list[tuple]:
    """1-4 edits of a byte string of `length` bytes: overwrite, insert, delete, or swap an opcode."""
    kinds = ["overwrite", "interesting", "insert", "delete"] + (["opcode"] * 2 if opcode_positions else [])
    result = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(kinds))
        if kind == "opcode":
            assert opcode_positions is not None
            result.append(("overwrite", draw(st.sampled_from(opcode_positions)), draw(st.sampled_from(OPCODES))))
            continue
        position = draw(st.integers(0, max(length - 1, 0)))
        if kind == "overwrite":
            result.append(("overwrite", position, draw(st.binary(min_size=1, max_size=8))))
        elif kind == "interesting":
            result.append(("overwrite", position, draw(st.sampled_from(INTERESTING))))
        elif kind == "insert":
            result.append(("insert", position, draw(st.binary(min_size=1, max_size=16))))
        else:
            result.append(("delete", position, draw(st.integers(1, 64))))
    return result


def apply(data: bytes, changes: list[tuple], offset: int = 0) -> bytes:
    buffer = bytearray(data)
    for kind, position, value in changes:
        at = min(offset + position, len(buffer))
        if kind == "overwrite":
            buffer[at:at + len(value)] = value
        elif kind == "insert":
            buffer[at:at] = value
        else:
            del buffer[at:at + value]
    return bytes(buffer)


def write_zip(path: Path, pickle_bytes: bytes) -> None:
    """The fixture's zip with data.pkl replaced, CRC and sizes correct: the pickle is what is damaged."""
    with zipfile.ZipFile(path, "w") as archive:
        for info, blob in ZIP.entries:
            archive.writestr(info, pickle_bytes if info.filename == ZIP.pickle_name else blob)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "model.pt"


# ---- zip format ------------------------------------------------------------------------------------

@FUZZ
@given(changes=edits(len(ZIP.pickle), ZIP.opcode_positions))
def test_zip_with_damaged_pickle(scratch: Path, changes: list[tuple]) -> None:
    write_zip(scratch, apply(ZIP.pickle, changes))
    read_everything(scratch)


@FUZZ
@given(data=st.data(), region=st.sampled_from(["directory", "local header", "tensor data", "anywhere"]))
def test_zip_with_damaged_archive(scratch: Path, data: st.DataObject, region: str) -> None:
    original = ZIP_BYTES
    if region == "directory":
        start, end = ZIP.directory
    elif region == "local header":
        start, end = data.draw(st.sampled_from(ZIP.local_headers))
    elif region == "tensor data":
        start, end = data.draw(st.sampled_from(ZIP.tensor_data))
    else:
        start, end = 0, len(original)
    changes = data.draw(edits(end - start))
    scratch.write_bytes(apply(original, changes, offset=start))
    read_everything(scratch)


@FUZZ
@given(cut=st.integers(0, len(ZIP_BYTES) - 1))
def test_zip_truncated(scratch: Path, cut: int) -> None:
    scratch.write_bytes(ZIP_BYTES[:cut])
    read_everything(scratch)


# ---- legacy format ---------------------------------------------------------------------------------

@FUZZ
@given(data=st.data(), region=st.sampled_from(["pickle", "pickle", "header", "keys", "tensor data", "anywhere"]))
def test_legacy_damaged(scratch: Path, data: st.DataObject, region: str) -> None:
    original = LEGACY_BYTES
    start, end = {"pickle": LEGACY.pickle, "header": LEGACY.header, "keys": LEGACY.keys,
                  "tensor data": LEGACY.tensor_data, "anywhere": (0, len(original))}[region]
    positions = LEGACY.opcode_positions if region == "pickle" else None
    changes = data.draw(edits(end - start, positions))
    scratch.write_bytes(apply(original, changes, offset=start))
    read_everything(scratch)


@FUZZ
@given(cut=st.integers(0, len(LEGACY_BYTES) - 1))
def test_legacy_truncated(scratch: Path, cut: int) -> None:
    scratch.write_bytes(LEGACY_BYTES[:cut])
    read_everything(scratch)


# ---- the interpreter on its own --------------------------------------------------------------------

def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


# Names the reader resolves, so that the soup also reaches its calls, records and storages.
WORDS = [_global("collections", "OrderedDict"), _global("torch._utils", "_rebuild_tensor_v2"),
         _global("torch._utils", "_rebuild_parameter"), _global("torch._tensor", "_rebuild_from_type_v2"),
         _global("argparse", "Namespace"), _global("torch", "FloatStorage"), _global("torch", "Size"),
         _global("builtins", "set"), _global("numpy.core.multiarray", "scalar"), _global("numpy", "dtype"),
         _global("omegaconf.dictconfig", "DictConfig"), b"X\x07\x00\x00\x00storage", b"X\x01\x00\x00\x000",
         b"X\x03\x00\x00\x00cpu", b"K\x04", b"K\x00", b"(", b"t", b"R", b"Q", b"b", b"s", b"a", b"}", b"]", b")"]


@FUZZ
@given(body=st.lists(st.one_of(st.sampled_from(OPCODES), st.sampled_from(WORDS), st.binary(max_size=6)),
                     max_size=60),
       legacy=st.booleans())
def test_random_opcode_streams(body: list[bytes], legacy: bool) -> None:
    """Opcode soup: every opcode of the protocol and the names the reader knows, in random order."""
    stream = b"\x80\x02" + b"".join(body) + b"."
    with time_limit(SECONDS_PER_EXAMPLE):
        try:
            result = load_pickle(io.BytesIO(stream), StorageIndex("fuzz.pkl"), legacy=legacy, path="fuzz.pkl",
                                 limit=len(stream))
            to_plain(result)
            event("unpickled")
        except ConversionError as error:
            event(type(error).__name__)


def test_the_fuzzed_zip_is_readable_when_nothing_is_changed(scratch: Path) -> None:
    """Rewriting the zip keeps a valid checkpoint, so the pickle mutations reach the interpreter."""
    write_zip(scratch, ZIP.pickle)
    scratch.with_name("original.pt").write_bytes(ZIP_BYTES)
    assert len(read_checkpoint(scratch).tensors) == len(read_checkpoint(scratch.with_name("original.pt")).tensors)
