"""Hostile checkpoints: every attack is refused before anything from it runs, and the error names it.

Each attack is either an object whose `__reduce__` names something dangerous, saved with `torch.save`
itself, or a hand-written pickle (opcode by opcode) spliced into a real torch checkpoint in place of
its pickle. Both are tried in torch's zip format and in its legacy format. Canaries prove nothing ran:
a file the payload would create, a file it would delete, an environment variable it would set, and
(in a subprocess) modules it would import, including fake `omegaconf` and `fairseq` packages that
leave a mark when imported.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import io
import json
import os
import pickle
import pickletools
import runpy
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES
from fairseq_to_hf.errors import CheckpointFormatError, ConversionError, UnsafeCheckpointError
from fairseq_to_hf.reader import read_checkpoint

ENV_CANARY = "FAIRSEQ_TO_HF_HOSTILE_CANARY"
# Stdlib modules nothing in the reader imports; an attack that ran would import them.
CANARY_MODULES = ("colorsys", "wave", "tabnanny", "smtplib")
FORMATS = ("zip", "legacy")


# ---- canaries --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Canary:
    folder: Path

    @property
    def file(self) -> Path:
        """Must never appear: every payload that could run tries to create it."""
        return self.folder / "canary-created"

    @property
    def victim(self) -> Path:
        """Must survive: the payloads that delete files aim at it."""
        return self.folder / "victim"

    @property
    def touch(self) -> str:
        return f"touch {self.file}"

    @property
    def python(self) -> str:
        """Python source an attack would run: leaves every kind of trace."""
        return (f"import os, colorsys; open({str(self.file)!r}, 'w').close(); "
                f"os.environ[{ENV_CANARY!r}] = '1'")

    def arm(self) -> None:
        self.victim.write_text("still here")

    def assert_untouched(self) -> None:
        assert not self.file.exists(), "an attack ran: the canary file was created"
        assert self.victim.read_text() == "still here", "an attack ran: the victim file was deleted"
        assert ENV_CANARY not in os.environ, "an attack ran: the environment variable was set"


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    guard = Canary(tmp_path)
    guard.arm()
    return guard


# ---- building pickles by hand ----------------------------------------------------------------------

def G(module: str, name: str) -> bytes:
    """GLOBAL: the protocol 0-2 way to name `module.name`."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def S(text: str) -> bytes:
    """BINUNICODE."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def INT4(value: int) -> bytes:
    """BININT."""
    return b"J" + struct.pack("<i", value)


def T(*items: bytes) -> bytes:
    """MARK items TUPLE."""
    return b"(" + b"".join(items) + b"t"


def call(function: bytes, *args: bytes) -> bytes:
    """function(*args) via REDUCE."""
    return function + T(*args) + b"R"


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4): the name may be dotted, which pickle resolves with getattr."""
    return S(module) + S(name) + b"\x93"


def wrap(context: Context, payload: bytes, protocol: int = 2) -> bytes:
    """A fairseq-shaped pickle around a hand-written payload: {'model': {'w': tensor}, 'args': payload}."""
    model = b"}" + S("w") + context.tensor() + b"s"
    return b"\x80" + bytes([protocol]) + b"}" + S("model") + model + b"s" + S("args") + payload + b"s" + b"."


@dataclass(frozen=True)
class Context:
    """What a payload needs to know about the checkpoint it is spliced into."""

    format: str
    storage_key: str  # the key of the one real storage (12 float32 elements)

    def storage(self, key: str | None = None, numel: int = 12, type_global: bytes | None = None) -> bytes:
        """A persistent id for a storage, as torch writes it in this format, then BINPERSID."""
        fields = [S("storage"), type_global or G("torch", "FloatStorage"), S(key or self.storage_key), S("cpu"),
                  INT4(numel) if numel < 2**31 else b"\x8a\x08" + struct.pack("<q", numel)]
        if self.format == "legacy":
            fields.append(b"N")  # no view
        return T(*fields) + b"Q"

    def tensor(self, *, offset: int = 0, size: tuple[int, ...] = (4, 3), hooks: bytes = b"}") -> bytes:
        """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, hooks)."""
        stride = (size[1], 1) if len(size) == 2 else (1,) * len(size)
        return call(G("torch._utils", "_rebuild_tensor_v2"), self.storage(), INT4(offset),
                    T(*map(INT4, size)), T(*map(INT4, stride)), b"\x89", hooks)


# ---- writing checkpoints -------------------------------------------------------------------------

def genuine_state() -> OrderedDict:
    return OrderedDict(w=torch.arange(12, dtype=torch.float32).reshape(4, 3))


def save(path: Path, obj: object, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def _pickle_end(stream: io.BytesIO) -> int:
    for opcode, _arg, _pos in pickletools.genops(stream):
        if opcode.name == "STOP":
            break
    return stream.tell()


def legacy_layout(data: bytes) -> tuple[int, int, int]:
    """Offsets of the legacy format's main pickle, and of the end of the storage-keys pickle after it."""
    stream = io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info
        _pickle_end(stream)
    start = stream.tell()
    end = _pickle_end(stream)
    return start, end, _pickle_end(stream)


def legacy_storage_key(path: Path) -> str:
    data = path.read_bytes()
    _, end, keys_end = legacy_layout(data)
    return pickle.loads(data[end:keys_end])[0]  # a file this test just wrote itself


def rewrite_zip(path: Path, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None,
                compress: tuple[str, ...] = ()) -> None:
    """Rewrites a torch zip, entry by entry, with some entries replaced, added or compressed."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries + list((add or {}).items()):
            short = name.split("/", 1)[-1]
            kind = zipfile.ZIP_DEFLATED if short in compress else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(name), (replace or {}).get(short, data), compress_type=kind)


def spliced(folder: Path, fmt: str, build: Callable[[Context], bytes]) -> Path:
    """A real torch checkpoint of one tensor whose pickle is replaced by `build(context)`."""
    path = save(folder / f"spliced-{fmt}.pt", {"model": genuine_state(), "args": None}, fmt)
    if fmt == "zip":
        rewrite_zip(path, replace={"data.pkl": build(Context("zip", "0"))})
    else:
        data = path.read_bytes()
        start, end, _ = legacy_layout(data)
        evil = build(Context("legacy", legacy_storage_key(path)))
        path.write_bytes(data[:start] + evil + data[end:])
    return path


def refused(path: Path, *phrases: str, error: type[ConversionError] = UnsafeCheckpointError) -> str:
    with pytest.raises(ConversionError) as caught:
        checkpoint = read_checkpoint(path)
        for tensor in checkpoint.tensors.values():
            tensor.load()
    assert type(caught.value) is error, caught.value
    message = str(caught.value)
    assert "\n" not in message, "an error must stay on one line"
    for phrase in phrases:
        assert phrase in message, message
    return message


# ---- attacks through __reduce__, saved by torch.save ------------------------------------------------

class Reduce:
    """Pickles as `function(*args)`: what a malicious checkpoint's author would torch.save."""

    def __init__(self, function: Callable, *args: object) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple:
        return self.function, self.args


def _nested_pickle(guard: Canary) -> bytes:
    return pickle.dumps(Reduce(os.system, guard.touch), protocol=2)


def _runpy_script(guard: Canary) -> str:
    script = guard.folder / "payload.py"
    script.write_text(guard.python)
    return str(script)


def _evil_torch_file(guard: Canary) -> str:
    target = guard.folder / "nested.pt"
    torch.save({"x": Reduce(os.system, guard.touch)}, target)
    return str(target)


REDUCE_ATTACKS: dict[str, tuple[Callable[[Canary], object], str]] = {
    "os.system": (lambda g: Reduce(os.system, g.touch), "`posix.system`"),
    "os.popen": (lambda g: Reduce(os.popen, g.touch), "`os.popen`"),
    "os.remove": (lambda g: Reduce(os.remove, str(g.victim)), "`posix.remove`"),
    "os.putenv": (lambda g: Reduce(os.putenv, ENV_CANARY, "1"), "`posix.putenv`"),
    "subprocess.Popen": (lambda g: Reduce(subprocess.Popen, ["touch", str(g.file)]), "`subprocess.Popen`"),
    "subprocess.run": (lambda g: Reduce(subprocess.run, ["touch", str(g.file)]), "`subprocess.run`"),
    "subprocess.check_output": (lambda g: Reduce(subprocess.check_output, g.touch, True),
                                "`subprocess.check_output`"),
    "builtins.eval": (lambda g: Reduce(eval, f"exec({g.python!r})"), "`builtins.eval`"),
    "builtins.exec": (lambda g: Reduce(exec, g.python), "`builtins.exec`"),
    "builtins.open": (lambda g: Reduce(open, str(g.file), "w"), "`io.open`"),
    "builtins.__import__": (lambda g: Reduce(__import__, "colorsys"), "`builtins.__import__`"),
    "importlib.import_module": (lambda g: Reduce(importlib.import_module, "wave"), "`importlib.import_module`"),
    "functools.partial": (lambda g: Reduce(functools.partial(os.system, g.touch)), "`functools.partial`"),
    "pickle.loads": (lambda g: Reduce(pickle.loads, _nested_pickle(g)), "`pickle.loads`"),
    "runpy.run_path": (lambda g: Reduce(runpy.run_path, _runpy_script(g)), "`runpy.run_path`"),
    "torch.load": (lambda g: Reduce(torch.load, _evil_torch_file(g)), "`torch.serialization.load`"),
    "torch.storage._load_from_bytes": (lambda g: Reduce(torch.storage._load_from_bytes, _nested_pickle(g)),
                                       "`torch.storage._load_from_bytes`"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("attack", sorted(REDUCE_ATTACKS))
def test_reduce_attack_saved_by_torch_is_refused(tmp_path: Path, canary: Canary, attack: str, fmt: str) -> None:
    payload, named = REDUCE_ATTACKS[attack]
    path = save(tmp_path / "model.pt", {"model": genuine_state(), "args": payload(canary)}, fmt)
    refused(path, "refused to load", named, "nothing from it was run")
    canary.assert_untouched()


# ---- hand-written pickles --------------------------------------------------------------------------

@dataclass(frozen=True)
class Attack:
    build: Callable[[Canary, Context], bytes]
    phrases: tuple[str, ...]
    error: type[ConversionError] = UnsafeCheckpointError


def _os_system(guard: Canary) -> bytes:
    return call(G("os", "system"), S(guard.touch))


OPCODE_ATTACKS: dict[str, Attack] = {
    # Names outside the allowlist, however they are spelled.
    "getattr-chain": Attack(
        lambda g, c: call(G("builtins", "getattr"), call(G("builtins", "__import__"), S("os")), S("system")),
        ("`builtins.getattr`",)),
    "STACK_GLOBAL-eval": Attack(
        lambda g, c: stack_global("builtins", "eval") + T(S(f"exec({g.python!r})")) + b"R",
        ("`builtins.eval`",)),
    "INST-os.system": Attack(lambda g, c: b"(" + S(g.touch) + b"ios\nsystem\n", ("`os.system`",)),
    "OBJ-os.system": Attack(lambda g, c: b"(" + G("posix", "system") + S(g.touch) + b"o", ("`posix.system`",)),
    "NEWOBJ-subprocess.Popen": Attack(
        lambda g, c: G("subprocess", "Popen") + T(T(S("touch"), S(str(g.file)))) + b"\x81", ("`subprocess.Popen`",)),
    "NEWOBJ_EX-code.InteractiveConsole": Attack(
        lambda g, c: stack_global("code", "InteractiveConsole") + b")}" + b"\x92", ("`code.InteractiveConsole`",)),
    "python2-module-alias": Attack(lambda g, c: call(G("__builtin__", "execfile"), S("/dev/null")),
                                   ("`builtins.execfile`",)),
    "setattr": Attack(lambda g, c: call(G("builtins", "setattr"), G("torch", "Size"), S("x"), INT4(1)),
                      ("`builtins.setattr`",)),
    "operator.attrgetter": Attack(lambda g, c: call(G("operator", "attrgetter"), S("system")),
                                  ("`operator.attrgetter`",)),
    "pickle-itself": Attack(lambda g, c: call(G("pickle", "loads"), b"C" + bytes([0])), ("`pickle.loads`",)),
    # Dotted names under the prefixes whose classes become inert records: pickle would getattr along.
    "argparse._os.system": Attack(lambda g, c: stack_global("argparse", "_os.system") + T(S(g.touch)) + b"R",
                                  ("`argparse._os.system`",)),
    "omegaconf.OmegaConf.load": Attack(
        lambda g, c: stack_global("omegaconf", "OmegaConf.load") + T(S("/etc/passwd")) + b"R",
        ("`omegaconf.OmegaConf.load`",)),
    # Functions (not classes) under those prefixes are refused, not recorded.
    "numpy-runstring": Attack(lambda g, c: call(G("numpy.testing._private.utils", "runstring"), S(g.python), b"}"),
                              ("`numpy.testing._private.utils.runstring`",)),
    "fairseq-function": Attack(lambda g, c: call(G("fairseq.utils", "import_user_module"), S("/tmp")),
                               ("`fairseq.utils.import_user_module`",)),
    "argparse-other-class": Attack(lambda g, c: call(G("argparse", "ArgumentParser")),
                                   ("`argparse.ArgumentParser`",)),
    # torch internals outside the allowlist.
    "torch.jit.load": Attack(lambda g, c: call(G("torch.jit", "load"), S("/tmp/x")), ("`torch.jit.load`",)),
    "torch._rebuild_device_tensor_from_numpy": Attack(
        lambda g, c: call(G("torch._utils", "_rebuild_device_tensor_from_numpy"), b"N", b"N", b"N", b"\x89"),
        ("`torch._utils._rebuild_device_tensor_from_numpy`",)),
    "torch.Tensor-called": Attack(lambda g, c: call(G("torch", "Tensor"), INT4(1)),
                                  ("calls `torch.Tensor`", "only names")),
    # Allowlisted names called with arguments a real checkpoint never passes.
    "type-creates-a-class": Attack(
        lambda g, c: call(G("builtins", "type"), S("Evil"), T(), b"}" + S("__reduce__") + b"Ns"),
        ("calls `builtins.type`", "only type(None)")),
    "OrderedDict-with-a-string": Attack(lambda g, c: call(G("collections", "OrderedDict"), S("abc")),
                                        ("calls `collections.OrderedDict`",)),
    "getitem-on-a-non-type": Attack(lambda g, c: call(G("_operator", "getitem"), b"}", S("x")),
                                    ("calls `_operator.getitem`",)),
    "rebuild-tensor-with-hooks": Attack(
        lambda g, c: c.tensor(hooks=b"}" + INT4(1) + S("hook") + b"s"),
        ("calls `torch._utils._rebuild_tensor_v2`", "backward hooks")),
    "rebuild-tensor-on-a-string": Attack(
        lambda g, c: call(G("torch._utils", "_rebuild_tensor_v2"), S("storage"), INT4(0), T(INT4(1)), T(INT4(1)),
                          b"\x89", b"N"),
        ("calls `torch._utils._rebuild_tensor_v2`", "not a storage")),
    "rebuild-from-type-with-eval": Attack(
        lambda g, c: call(G("torch._tensor", "_rebuild_from_type_v2"), G("builtins", "eval"), b"N", T(), b"N"),
        ("`builtins.eval`",)),
    "NEWOBJ-on-a-function": Attack(lambda g, c: G("torch._utils", "_rebuild_tensor_v2") + T() + b"\x81",
                                   ("creates an instance of `torch._utils._rebuild_tensor_v2`",)),
    # BUILD on anything but an inert record: would set attributes on real objects.
    "BUILD-on-an-allowlisted-function": Attack(
        lambda g, c: G("collections", "OrderedDict") + b"N}" + S("__defaults__") + T(INT4(1)) + b"s\x86b",
        ("sets the state of `collections.OrderedDict` (BUILD)",)),
    "BUILD-on-a-checked-tensor": Attack(
        lambda g, c: c.tensor() + b"}" + S("stride") + T(S("a")) + b"sb",
        ("sets the state of the result of `torch._utils._rebuild_tensor_v2` (BUILD)",)),
    "BUILD-twice-on-a-record": Attack(
        lambda g, c: G("argparse", "Namespace") + T() + b"\x81" + b"}b" + b"}b",
        ("sets the state of the result of `argparse.Namespace` (BUILD)",)),
    "APPEND-to-a-global": Attack(lambda g, c: G("builtins", "list") + INT4(1) + b"a",
                                 ("appends items to `builtins.list`",)),
    # Persistent ids: only storages, in the format's exact shape.
    "persistent-id-module-source": Attack(
        lambda g, c: T(S("module"), G("torch.nn", "Linear"), S("evil.py"), S(g.python)) + b"Q",
        ("`torch.nn.Linear`",)),
    "persistent-id-not-a-storage": Attack(lambda g, c: T(S("module"), S("x"), S(g.python)) + b"Q",
                                          ("persistent object", "not a storage")),
    "persistent-id-text": Attack(lambda g, c: b"Pos.system\n", ("persistent object 'os.system'",)),
    "storage-key-path-traversal": Attack(lambda g, c: c.storage(key="../../../etc/passwd"),
                                         ("'../../../etc/passwd'", "not a storage name")),
    "storage-type-not-a-storage": Attack(lambda g, c: c.storage(type_global=G("torch", "float32")),
                                         ("names the type `torch.float32`",)),
    "storage-absurd-size": Attack(lambda g, c: c.storage(numel=1 << 62), ("claims", "elements")),
    "storage-described-twice": Attack(lambda g, c: T(c.storage(), c.storage(numel=13)), ("described twice",)),
    # Protocol features torch never uses.
    "EXT1-registry": Attack(lambda g, c: b"\x82\x01", ("copyreg extension registry",)),
    "out-of-band-buffer": Attack(lambda g, c: b"\x97", ("out-of-band buffers",)),
    # Length fields meant to allocate gigabytes, and numbers meant to take forever to parse.
    "BINBYTES8-huge": Attack(lambda g, c: b"\x8e" + struct.pack("<Q", 1 << 45), ("claims 35184372088832 bytes",)),
    "BINUNICODE8-huge": Attack(lambda g, c: b"\x8d" + struct.pack("<Q", 1 << 62), ("claims", "nothing was allocated")),
    "BINUNICODE-4GiB": Attack(lambda g, c: b"X" + struct.pack("<I", 0xFFFFFFFF), ("claims 4294967295 bytes",)),
    "LONG4-huge": Attack(lambda g, c: b"\x8b" + struct.pack("<i", 0x7FFFFFFF), ("2147483647-byte integer",)),
    "LONG-text-100k-digits": Attack(lambda g, c: b"L" + b"9" * 100_000 + b"L\n", ("longer than 4096 bytes",)),
    # Names that would break the one-line error message.
    "newline-in-a-name": Attack(lambda g, c: stack_global("os", "system\nfake: ok") + T(S(g.touch)) + b"R",
                                ("`os.system\\nfake: ok`",)),
    # Memo tricks.
    "memo-read-before-write": Attack(lambda g, c: b"h\x07", ("memo entry 7 read before it is written",),
                                     CheckpointFormatError),
    "memo-reused-global-then-BUILD": Attack(
        lambda g, c: G("collections", "OrderedDict") + b"q\x00" + b"0" + b"h\x00" + b"}" + S("x") + INT4(1) + b"sb",
        ("sets the state of `collections.OrderedDict`",)),
    # Nesting: a deep tuple used as a key crashes CPython's own unpickler (its hash recurses in C).
    "deep-tuple-as-dict-key": Attack(lambda g, c: b"}" + b"N" + b"\x85" * 200_000 + b"Ns",
                                     ("nests too deeply",)),
    "deep-nesting-in-args": Attack(lambda g, c: b"]" + b"]" * 100_000 + b"a" * 100_000, ("nests too deeply",)),
    "self-containing-args": Attack(lambda g, c: b"}q\x00" + S("me") + b"h\x00s", ("contains itself",)),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("attack", sorted(OPCODE_ATTACKS))
def test_hand_written_attack_is_refused(tmp_path: Path, canary: Canary, attack: str, fmt: str) -> None:
    spec = OPCODE_ATTACKS[attack]
    protocol = 4 if b"\x93" in spec.build(canary, Context(fmt, "0")) else 2
    path = spliced(tmp_path, fmt, lambda context: wrap(context, spec.build(canary, context), protocol))
    refused(path, *spec.phrases, error=spec.error)
    canary.assert_untouched()


def test_a_poisoning_attempt_leaves_later_reads_intact(tmp_path: Path, canary: Canary) -> None:
    # With pickle.Unpickler, BUILD on the OrderedDict rebuilder set its __defaults__ for the whole
    # process, and every later checkpoint then failed to load.
    poison = OPCODE_ATTACKS["BUILD-on-an-allowlisted-function"]
    path = spliced(tmp_path, "zip", lambda c: wrap(c, poison.build(canary, c)))
    refused(path, "`collections.OrderedDict`")
    assert len(read_checkpoint(FIXTURES / "roberta_mlm" / "model.pt").tensors) > 0


def test_shared_references_are_converted_once(tmp_path: Path) -> None:
    # 60 levels of (x, x): 2**60 leaves if a converter followed every reference.
    levels = b"N" + b"".join(b"q" + bytes([i]) + b"h" + bytes([i]) + b"\x86" for i in range(60))
    path = spliced(tmp_path, "zip", lambda c: wrap(c, b"}" + S("laughs") + levels + b"s"))
    started = time.monotonic()
    checkpoint = read_checkpoint(path)
    assert time.monotonic() - started < 5
    assert checkpoint.hparams_source == "args"


def test_a_huge_memo_index_costs_nothing(tmp_path: Path) -> None:
    # LONG_BINPUT 2**30: CPython's unpickler sizes its memo array by the index (16 GB, 40 s here).
    path = spliced(tmp_path, "zip", lambda c: wrap(c, b"N" + b"r" + struct.pack("<I", 1 << 30)))
    started = time.monotonic()
    read_checkpoint(path)
    assert time.monotonic() - started < 5


def test_a_list_changed_after_a_tensor_was_checked_does_not_change_it(tmp_path: Path) -> None:
    # The size list is memoised, used for the tensor, then grown: the tensor keeps the checked shape.
    def build(c: Context) -> bytes:
        size = b"]q\x01" + INT4(4) + b"a" + INT4(3) + b"a"
        tensor = call(G("torch._utils", "_rebuild_tensor_v2"), c.storage(), INT4(0), size, T(INT4(3), INT4(1)),
                      b"\x89", b"}")
        grow = b"h\x01" + INT4(10**6) + b"a0"  # GET the size list, append, POP
        return (b"\x80\x02}" + S("model") + b"}" + S("w") + tensor + b"s" + grow + b"s.")

    for fmt in FORMATS:
        checkpoint = read_checkpoint(spliced(tmp_path, fmt, build))
        assert checkpoint.tensors["w"].shape == (4, 3)
        assert torch.equal(checkpoint.tensors["w"].load(), genuine_state()["w"])


# ---- storages and archives -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_a_tensor_beyond_its_storage_is_refused(tmp_path: Path, fmt: str) -> None:
    def build(c: Context) -> bytes:
        return b"\x80\x02}" + S("model") + b"}" + S("w") + c.tensor(offset=1, size=(4, 3)) + b"ss."

    refused(spliced(tmp_path, fmt, build), "tensors run past the end of their data: w", error=CheckpointFormatError)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_tensor_of_too_many_dimensions_is_refused_by_its_count(tmp_path: Path, fmt: str) -> None:
    def build(c: Context) -> bytes:
        return b"\x80\x02}" + S("model") + b"}" + S("w") + c.tensor(size=(1,) * 17) + b"ss."

    refused(spliced(tmp_path, fmt, build), "a tensor size of 17 dimensions, more than the 16 this reader takes",
            error=UnsafeCheckpointError)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_storage_larger_than_the_file_is_refused(tmp_path: Path, fmt: str) -> None:
    def build(c: Context) -> bytes:
        storage = c.storage(numel=1 << 40)
        tensor = call(G("torch._utils", "_rebuild_tensor_v2"), storage, INT4(0), T(INT4(1 << 20), INT4(1 << 20)),
                      T(INT4(1 << 20), INT4(1)), b"\x89", b"}")
        return b"\x80\x02}" + S("model") + b"}" + S("w") + tensor + b"ss."

    refused(spliced(tmp_path, fmt, build), "run past the end", error=CheckpointFormatError)


def _bytes_read_by_this_process() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.parametrize("fmt", FORMATS)
def test_opening_reads_no_tensor_bytes(tmp_path: Path, fmt: str) -> None:
    """Reading stays lazy: a 64 MB checkpoint opens by reading its pickle and headers only."""
    if not Path("/proc/self/io").exists():
        pytest.skip("needs Linux /proc/self/io to count bytes read")
    state = OrderedDict((f"w{i}", torch.zeros(1 << 20)) for i in range(16))
    path = save(tmp_path / "model.pt", {"model": state}, fmt)
    before = _bytes_read_by_this_process()
    checkpoint = read_checkpoint(path)
    assert _bytes_read_by_this_process() - before < 1 << 20
    assert checkpoint.total_bytes == 64 << 20


def test_a_flipped_tensor_byte_is_caught_by_the_zip_checksum(tmp_path: Path) -> None:
    path = save(tmp_path / "model.pt", {"model": genuine_state()}, "zip")
    checkpoint = read_checkpoint(path)
    start, _ = checkpoint.tensors["w"].storage.index.locations["0"]
    data = bytearray(path.read_bytes())
    data[start + 5] ^= 0x40
    path.write_bytes(bytes(data))
    refused(path, "storage '0' is damaged (its CRC-32 does not match)", error=CheckpointFormatError)


def test_a_checkpoint_saved_without_checksums_reads(tmp_path: Path) -> None:
    # torch >= 2.5 can skip CRC-32s (they are then 0), and torch.load reads such files.
    if not hasattr(torch.serialization, "set_crc32_options"):
        pytest.skip("this torch always writes CRC-32s")
    torch.serialization.set_crc32_options(False)
    try:
        path = save(tmp_path / "model.pt", {"model": genuine_state()}, "zip")
    finally:
        torch.serialization.set_crc32_options(True)
    assert all(info.CRC == 0 for info in zipfile.ZipFile(path).infolist())
    assert torch.equal(read_checkpoint(path).tensors["w"].load(), genuine_state()["w"])


def _zip(tmp_path: Path) -> Path:
    return save(tmp_path / "model.pt", {"model": genuine_state()}, "zip")


def test_zip_entry_outside_the_archive_folder_is_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path)
    rewrite_zip(path, add={"../../etc/cron.d/evil": b"* * * * * root touch /tmp/x\n"})
    refused(path, "lies outside the archive's folder")


def test_zip_entry_with_dotdot_inside_the_folder_is_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path)
    prefix = zipfile.ZipFile(path).namelist()[0].split("/")[0]
    rewrite_zip(path, add={f"{prefix}/data/../../evil": b"x"})
    refused(path, "lies outside the archive's folder")


def test_zip_with_two_entries_of_one_name_is_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path)
    prefix = zipfile.ZipFile(path).namelist()[0].split("/")[0]
    with pytest.warns(UserWarning, match="Duplicate name"):
        rewrite_zip(path, add={f"{prefix}/data/0": b"\0" * 48})
    refused(path, "two zip entries named")


def test_zip_local_header_naming_another_file_is_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    name_at = info.header_offset + 30
    assert data[name_at:name_at + len(info.filename)] == info.filename.encode()
    data[name_at + len(info.filename) - 1] = ord("9")  # local header says data/9, directory data/0
    path.write_bytes(bytes(data))
    refused(path, "another name in its local header")


def test_compressed_pickle_is_refused_before_decompressing(tmp_path: Path) -> None:
    # 50 MB of zeros deflate to 50 kB: a decompression bomb in place of data.pkl.
    path = _zip(tmp_path)
    rewrite_zip(path, replace={"data.pkl": b"\0" * (50 << 20)}, compress=("data.pkl",))
    refused(path, "compressed or encrypted", error=CheckpointFormatError)


def test_pickle_entry_declaring_an_absurd_size_is_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path)
    data = bytearray(path.read_bytes())
    name = next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("/data.pkl")).encode()
    record = data.index(b"PK\x01\x02")  # central directory records: signature, ..., name at +46
    while data[record + 46:record + 46 + len(name)] != name:
        record = data.index(b"PK\x01\x02", record + 4)
    data[record + 24:record + 28] = struct.pack("<I", 0xFFFFFFFE)  # its uncompressed size: 4 GiB
    path.write_bytes(bytes(data))
    refused(path, "implausibly large")


def test_legacy_header_asking_for_a_global_is_refused(tmp_path: Path, canary: Canary) -> None:
    path = save(tmp_path / "model.pt", {"model": genuine_state()}, "legacy")
    data = path.read_bytes()
    stream = io.BytesIO(data)
    _pickle_end(stream)
    _pickle_end(stream)
    start = stream.tell()
    end = _pickle_end(stream)
    evil_sys_info = pickle.dumps(Reduce(os.system, canary.touch), protocol=2)
    path.write_bytes(data[:start] + evil_sys_info + data[end:])
    refused(path, "the file's header asks for `posix.system`")
    canary.assert_untouched()


# ---- in a fresh process: no import, no environment change, no crash ----------------------------------

FAKE_PACKAGE = """
open({canary!r}, "w").write("imported {name}")
raise ImportError("the reader must never import {name}")
"""

PROBE = """
import json, os, sys
from fairseq_to_hf.errors import ConversionError
from fairseq_to_hf.reader import read_checkpoint
results = {}
for path in sys.argv[1:]:
    try:
        checkpoint = read_checkpoint(path)
        for tensor in checkpoint.tensors.values():
            tensor.load()
        results[path] = "read"
    except ConversionError as error:
        results[path] = type(error).__name__
print(json.dumps({"results": results, "modules": sorted(m for m in %r if m in sys.modules),
                  "env": os.environ.get(%r)}))
"""


def test_attacks_in_a_fresh_process_import_nothing_and_crash_nothing(tmp_path: Path, canary: Canary) -> None:
    fake = tmp_path / "fake-packages"
    marks = tmp_path / "imported"
    for name in ("omegaconf", "fairseq"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(FAKE_PACKAGE.format(canary=str(marks / name), name=name))
    marks.mkdir()
    paths = [FIXTURES / "roberta_omegaconf" / "model.pt", FIXTURES / "roberta_legacy_v09" / "model.pt"]
    for fmt in FORMATS:
        folder = tmp_path / fmt
        folder.mkdir()
        for attack, (payload, _) in REDUCE_ATTACKS.items():
            paths.append(save(folder / f"{attack}.pt", {"model": genuine_state(), "args": payload(canary)}, fmt))
        for attack, spec in OPCODE_ATTACKS.items():
            protocol = 4 if b"\x93" in spec.build(canary, Context(fmt, "0")) else 2
            attack_folder = folder / attack
            attack_folder.mkdir()
            paths.append(spliced(attack_folder, fmt, lambda c, s=spec, p=protocol: wrap(c, s.build(canary, c), p)))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    env.pop(ENV_CANARY, None)
    result = subprocess.run([sys.executable, "-c", PROBE % (CANARY_MODULES, ENV_CANARY), *map(str, paths)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["modules"] == [] and report["env"] is None
    assert list(marks.iterdir()) == [], "the reader imported omegaconf or fairseq"
    outcomes = report["results"]
    assert outcomes.pop(str(paths[0])) == "read" and outcomes.pop(str(paths[1])) == "read"
    assert set(outcomes.values()) <= {"UnsafeCheckpointError", "CheckpointFormatError"}, outcomes
    canary.assert_untouched()


def test_cpython_unpickler_crashes_on_the_deep_key_the_reader_refuses(tmp_path: Path) -> None:
    """Why the reader interprets pickles itself: pickle.loads segfaults on this 1 MB input."""
    evil = tmp_path / "deep.pkl"
    evil.write_bytes(b"\x80\x02}" + b"N" + b"\x85" * 1_000_000 + b"Ns.")
    crash = subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads(open({str(evil)!r}, 'rb').read())"],
                           capture_output=True, timeout=120)
    if crash.returncode >= 0:
        pytest.skip(f"this Python does not crash on deep tuple hashes (exit {crash.returncode})")
    path = spliced(tmp_path, "zip", lambda c: wrap(c, b"}" + b"N" + b"\x85" * 1_000_000 + b"Ns"))
    refused(path, "nests too deeply")


# ---- through the command line ------------------------------------------------------------------------

def test_cli_refuses_a_hostile_checkpoint_with_one_line(tmp_path: Path, canary: Canary) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "roberta_mlm", src)
    genuine = read_checkpoint(src / "model.pt")
    state = OrderedDict((name, lazy.load()) for name, lazy in genuine.tensors.items())
    torch.save({"model": state, "args": None, "cfg": {"model": Reduce(os.system, canary.touch)}}, src / "model.pt")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "fairseq_to_hf", "convert", str(src), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fairseq-to-hf: error: "), result.stderr
    assert "refused to load" in lines[0] and "`posix.system`" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "victim"]
    canary.assert_untouched()


# A value that changes what the model computes is refused in one line; one the tensors decide anyway
# (sizes) or that inference does not use (dropout) falls back, and the conversion goes on.
@pytest.mark.parametrize("name, value, code", [("activation_fn", ["gelu"], 2), ("encoder_ffn_embed_dim", [64], 0),
                                               ("dropout", "abc", 0)])
def test_cli_handles_hyper_parameters_of_the_wrong_type(tmp_path: Path, name: str, value: object,
                                                        code: int) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "roberta_mlm", src)
    genuine = read_checkpoint(src / "model.pt")
    state = OrderedDict((key, lazy.load()) for key, lazy in genuine.tensors.items())
    torch.save({"model": state, "args": argparse.Namespace(**{**genuine.hparams, name: value})}, src / "model.pt")
    result = subprocess.run([sys.executable, "-m", "fairseq_to_hf", "convert", str(src), str(tmp_path / "out"),
                             "--no-verify"], capture_output=True, text=True, timeout=300)
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
    if code:
        errors = [line for line in result.stderr.splitlines() if line.startswith("fairseq-to-hf: error: ")]
        assert len(errors) == 1 and name in errors[0], result.stderr
        assert not (tmp_path / "out").exists()
