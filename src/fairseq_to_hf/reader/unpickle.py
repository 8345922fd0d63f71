"""A pickle interpreter that builds data, never behaviour.

A torch checkpoint is a pickle, and a pickle is a program: run by `pickle`, every GLOBAL it names is
imported and every REDUCE, NEWOBJ, INST, OBJ and BUILD calls into it. This module does not use
`pickle.Unpickler` at all. It interprets the opcodes itself, and:

- a GLOBAL is resolved to a `Global` handle of this module, never to the Python object of that name:
  nothing the pickle names is ever imported. Only the names in `ALLOWED_GLOBALS` (tensor and storage
  rebuilders, containers) and the class names real fairseq checkpoints carry in their bookkeeping
  (argparse Namespace, omegaconf configs, fairseq enums and meters, numpy scalars: see
  `_record_global`) resolve; every other name is refused before anything else happens.
- "calling" a handle runs this module's code for it, which checks the arguments and builds inert data
  (`LazyTensor`, `StateDict`, `InertRecord`, plain containers). Nothing the pickle supplies is ever
  called, and no attribute of a pickled value is ever looked up by a name from the pickle.
- BUILD only fills in the state of an `InertRecord` (once) or the `_metadata` of a state dict, and
  APPEND/SETITEM only fill lists, dicts and sets: nothing else can be mutated after it was checked.
- every length field is checked against the bytes left before anything is allocated, and the
  interpreter is iterative, so nesting cannot exhaust the C stack.

`to_plain` then turns the records of argparse Namespaces and omegaconf configs into dicts and values.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import math
import pickle
import re
import struct
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import torch

from ..errors import CheckpointFormatError, UnsafeCheckpointError
from .tensors import LazyTensor, StorageIndex, StorageRef, storage_dtype

# Tensors are rebuilt as LazyTensor views on storages; shapes beyond these are corrupt or hostile.
MAX_DIMS = 16
MAX_ELEMENTS = 1 << 48
# Text opcodes (GLOBAL, INT, PUT, ...) hold short lines; LONG1/LONG4 hold small numbers in real pickles.
MAX_LINE = 4096
MAX_LONG_BYTES = 1024
# Each container the pickle builds costs memory beyond its opcode's byte: cap their number.
MAX_OBJECTS = 5_000_000
# Dict keys and set items are hashed by Python, recursively and without a stack guard for tuples: only
# small, shallow keys are accepted (real ones are strings and numbers).
MAX_KEY_DEPTH = 8
MAX_KEY_ITEMS = 64
# to_plain: configurations are shallow, and shared sub-objects are converted once.
MAX_PLAIN_DEPTH = 100
MAX_PLAIN_NODES = 1_000_000
# torch names storages "0", "1", ... (zip) or by a number (legacy): anything else is not a key.
STORAGE_KEY = re.compile(r"[0-9A-Za-z_]{1,64}")


class StateDict(OrderedDict):
    """`collections.OrderedDict` from the pickle; torch attaches `_metadata` to state dicts."""

    metadata: Any = None


class InertRecord:
    """An object of a class the pickle named, as plain data; the class itself is never imported.

    `args`/`kwargs` are what the pickle passed when creating it, `state` what BUILD gave it, `items`
    and `values` what SETITEMS/APPENDS added (dict and list subclasses pickle their contents so).
    """

    __slots__ = ("qualname", "args", "kwargs", "state", "built", "items", "values")

    def __init__(self, qualname: str, args: tuple = (), kwargs: dict | None = None) -> None:
        self.qualname = qualname
        self.args = args
        self.kwargs = kwargs or {}
        self.state: Any = None
        self.built = False
        self.items: dict[Any, Any] = {}
        self.values: list[Any] = []

    def __repr__(self) -> str:
        return f"<{self.qualname} from the checkpoint>"


class _BadCall(Exception):
    """Raised by a Global's handler: the arguments are not what a real checkpoint passes."""


class _BadKey(_BadCall):
    """A dict key or set item the reader will not hash."""


Handler = Callable[[tuple], Any]
NewHandler = Callable[[tuple, dict], Any]


class Global:
    """What a GLOBAL of the pickle resolves to: a name plus this module's code for it, if any.

    `reduce` serves REDUCE/INST/OBJ, `new` serves NEWOBJ/NEWOBJ_EX, `storage` marks a storage type
    (the second field of a persistent id). A Global without handlers is only a value (a type name).
    """

    __slots__ = ("qualname", "reduce", "new", "storage")

    def __init__(self, qualname: str, reduce: Handler | None = None, new: NewHandler | None = None,
                 storage: torch.dtype | None = None) -> None:
        self.qualname = qualname
        self.reduce = reduce
        self.new = new
        self.storage = storage

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


# ---- what the allowed globals do -------------------------------------------------------------------

def _check_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ELEMENTS:
        raise _BadCall(f"with an invalid {what} {_describe(value)}")
    return value


def _check_dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise _BadCall(f"with a tensor {what} that is not a tuple of integers: {_describe(value)}")
    if len(value) > MAX_DIMS:  # no model's weight has more than a few
        raise _BadCall(f"with a tensor {what} of {len(value)} dimensions, more than the {MAX_DIMS} this reader takes")
    return tuple(_check_int(v, f"{what} entry") for v in value)  # a copy: the list cannot change later


def _check_no_hooks(hooks: Any) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise _BadCall("with backward hooks")


def _check_flag(value: Any, what: str) -> None:
    if not isinstance(value, bool):
        raise _BadCall(f"with a non-boolean {what} {_describe(value)}")


def rebuild_tensor(args: tuple) -> LazyTensor:
    """torch._utils._rebuild_tensor(_v2)(storage, offset, size, stride[, requires_grad, hooks, metadata])."""
    if not 4 <= len(args) <= 7:
        raise _BadCall(f"with {len(args)} arguments")
    storage, storage_offset, size, stride, *rest = args
    if not isinstance(storage, StorageRef):
        raise _BadCall(f"on {_describe(storage)}, which is not a storage")
    offset = _check_int(storage_offset, "storage offset")
    shape = _check_dims(size, "size")
    strides = _check_dims(stride, "stride")
    if len(shape) != len(strides):
        raise _BadCall("with a size and a stride of different lengths")
    if rest:
        _check_flag(rest[0], "requires_grad")
    if len(rest) > 1:
        _check_no_hooks(rest[1])
    if len(rest) > 2 and rest[2] is not None and not isinstance(rest[2], dict):
        raise _BadCall(f"with metadata {_describe(rest[2])}")
    # Zero-length dimensions do not excuse absurd other ones: torch would still have to describe them.
    if math.prod(max(dim, 1) for dim in shape) > MAX_ELEMENTS:
        raise _BadCall(f"with an absurd size {shape}")
    return LazyTensor(storage, offset, shape, strides)


def rebuild_parameter(args: tuple) -> LazyTensor:
    """torch._utils._rebuild_parameter(data, requires_grad, hooks[, state]): the tensor itself."""
    if not 3 <= len(args) <= 4:
        raise _BadCall(f"with {len(args)} arguments")
    data, requires_grad, hooks, *state = args
    if not isinstance(data, LazyTensor):
        raise _BadCall(f"on {_describe(data)}, which is not a tensor")
    _check_flag(requires_grad, "requires_grad")
    _check_no_hooks(hooks)
    if state and state[0] is not None and not isinstance(state[0], (dict, tuple)):
        raise _BadCall(f"with state {_describe(state[0])}")
    return data


_TENSOR_REBUILDERS: tuple[Handler, ...] = (rebuild_tensor, rebuild_parameter)


def rebuild_from_type(args: tuple) -> LazyTensor:
    """torch._tensor._rebuild_from_type_v2(func, type, args, state): a tensor with Python attributes."""
    if len(args) != 4:
        raise _BadCall(f"with {len(args)} arguments")
    func, new_type, func_args, state = args
    if not isinstance(func, Global) or func.reduce not in _TENSOR_REBUILDERS:
        raise _BadCall(f"with the function {_describe(func)}")
    if not isinstance(new_type, Global) or new_type.qualname not in _TENSOR_TYPES:
        raise _BadCall(f"with the type {_describe(new_type)}")
    if not isinstance(func_args, tuple):
        raise _BadCall("with arguments that are not a tuple")
    if state is not None and not isinstance(state, dict):
        raise _BadCall(f"with state {_describe(state)}")
    return func.reduce(func_args)


def _ordered_dict(args: tuple) -> StateDict:
    """OrderedDict() as protocol 2 pickles it; Python 2 passed a list of [key, value] pairs."""
    if not args:
        return StateDict()
    if len(args) != 1 or not isinstance(args[0], (list, tuple)):
        raise _BadCall(f"with arguments {_describe(args)}")
    result = StateDict()
    for pair in args[0]:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise _BadCall(f"with an item that is not a pair: {_describe(pair)}")
        result[_check_key(pair[0])] = pair[1]
    return result


def _default_dict(args: tuple) -> dict:
    """collections.defaultdict(factory) -> a plain dict; the factory is never called."""
    if len(args) > 1 or (args and args[0] is not None and not isinstance(args[0], Global)):
        raise _BadCall(f"with arguments {_describe(args)}")
    return {}


def _container(kind: type) -> Handler:
    def build(args: tuple) -> Any:
        if not args:
            return kind()
        if len(args) != 1 or not isinstance(args[0], (list, tuple, set, frozenset)):
            raise _BadCall(f"with arguments {_describe(args)}")
        items = args[0]
        if kind in (set, frozenset):
            return kind(_check_key(item) for item in items)
        if kind is dict:
            return dict(_ordered_dict(args))  # dict([(key, value), ...]) with checked keys
        return kind(items)

    build.__name__ = kind.__name__
    return build


def _empty_container(kind: type) -> NewHandler:
    """NEWOBJ of a builtin container: cls.__new__(cls) makes an empty one whatever the arguments say."""
    def new(args: tuple, kwargs: dict) -> Any:
        if args or kwargs:
            raise _BadCall(f"with arguments {_describe(args)}")
        return kind()

    return new


def _torch_size(args: tuple) -> tuple[int, ...]:
    if len(args) != 1:
        raise _BadCall(f"with {len(args)} arguments")
    return _check_dims(args[0], "Size")


def _torch_device(args: tuple) -> str:
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str) or len(args[0]) > 64 \
            or (len(args) == 2 and not isinstance(args[1], int)):
        raise _BadCall(f"with arguments {_describe(args)}")
    return ":".join(str(a) for a in args)


_STRUCT_FORMATS = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
                   "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}


def _numpy_scalar(args: tuple) -> Any:
    """numpy.core.multiarray.scalar(dtype, bytes): decoded with struct, numpy is not imported."""
    if len(args) != 2:
        raise _BadCall(f"with {len(args)} arguments")
    dtype, data = args
    if isinstance(dtype, InertRecord) and dtype.args and isinstance(dtype.args[0], str) and isinstance(data, bytes):
        code = dtype.args[0].lstrip("<=|")
        if code in _STRUCT_FORMATS and struct.calcsize(_STRUCT_FORMATS[code]) == len(data):
            return struct.unpack("<" + _STRUCT_FORMATS[code], data)[0]
    return InertRecord("numpy.scalar", args)


def _none_type(args: tuple) -> Global:
    """builtins.type(None) is how pickle spells NoneType (in typing.Optional[...] metadata)."""
    if args != (None,):
        raise _BadCall(f"with arguments {_describe(args)}; only type(None) is accepted")
    return _type_reference("NoneType")


def _typing_subscript(args: tuple) -> InertRecord:
    """operator.getitem(typing.X, params) is how typing.Optional[int] and friends pickle."""
    if len(args) != 2 or not isinstance(args[0], Global) or not args[0].qualname.startswith("typing."):
        raise _BadCall(f"with arguments {_describe(args)}; only typing subscripts are accepted")
    return InertRecord(f"{args[0].qualname}[]", args)


def _record_handlers(qualname: str) -> tuple[Handler, NewHandler]:
    """REDUCE/NEWOBJ of a bookkeeping class: a record of the arguments, nothing is constructed."""
    return (lambda args: InertRecord(qualname, args)), (lambda args, kwargs: InertRecord(qualname, args, kwargs))


def _record(qualname: str) -> Global:
    reduce, new = _record_handlers(qualname)
    return Global(qualname, reduce, new)


def _type_reference(name: str) -> Global:
    """A builtin type named as a value (omegaconf's key_type/element_type, numpy.ndarray, ...)."""
    return Global(f"builtins.{name}")


_TENSOR_TYPES = {"torch._tensor.Tensor", "torch.Tensor", "torch.nn.parameter.Parameter"}

ALLOWED_GLOBALS: dict[tuple[str, str], Global] = {
    (module, name): Global(f"{module}.{name}", reduce, new)
    for (module, name), (reduce, new) in {
        ("collections", "OrderedDict"): (_ordered_dict, _empty_container(StateDict)),
        ("collections", "defaultdict"): (_default_dict, None),
        ("torch._utils", "_rebuild_tensor"): (rebuild_tensor, None),
        ("torch._utils", "_rebuild_tensor_v2"): (rebuild_tensor, None),
        ("torch._utils", "_rebuild_parameter"): (rebuild_parameter, None),
        ("torch._utils", "_rebuild_parameter_with_state"): (rebuild_parameter, None),
        ("torch._tensor", "_rebuild_from_type_v2"): (rebuild_from_type, None),
        ("torch._tensor", "Tensor"): (None, None),
        ("torch", "Tensor"): (None, None),
        ("torch.nn.parameter", "Parameter"): (None, None),
        ("torch", "Size"): (_torch_size, None),
        ("torch", "device"): (_torch_device, None),
        ("builtins", "set"): (_container(set), _empty_container(set)),
        ("builtins", "frozenset"): (_container(frozenset), None),
        ("builtins", "list"): (_container(list), _empty_container(list)),
        ("builtins", "tuple"): (_container(tuple), None),
        ("builtins", "dict"): (_container(dict), _empty_container(dict)),
        ("builtins", "type"): (_none_type, None),
        ("operator", "getitem"): (_typing_subscript, None),
        ("_operator", "getitem"): (_typing_subscript, None),
        ("numpy.core.multiarray", "scalar"): (_numpy_scalar, None),
        ("numpy._core.multiarray", "scalar"): (_numpy_scalar, None),
        ("numpy.core.multiarray", "_reconstruct"): _record_handlers("numpy.ndarray"),
        ("numpy._core.multiarray", "_reconstruct"): _record_handlers("numpy.ndarray"),
    }.items()
}
# Types that omegaconf metadata names (key_type, element_type); protocol 2 spells int as long.
_TYPE_REFERENCES = {"int", "long", "str", "unicode", "float", "bool", "bytes", "object", "NoneType"}
_TORCH_DTYPE_NAMES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
                      "uint8", "bool", "float", "half", "double", "long", "int"}
# Bookkeeping classes become InertRecords. Safety does not rest on these names (a record is data
# whatever it is called), but restricting them to class names keeps function gadgets such as
# numpy.testing._private.utils.runstring from being accepted even as records.
_RECORD_MODULES = ("argparse", "omegaconf", "fairseq", "typing", "enum")
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.dtypes"}
_NUMPY_LOWERCASE_TYPES = {"dtype", "ndarray", "float16", "float32", "float64", "int8", "int16", "int32",
                          "int64", "uint8", "bool_"}


def _record_global(module: str, name: str) -> Global | None:
    if not name.isidentifier() or not all(part.isidentifier() for part in module.split(".")):
        return None
    top = module.split(".")[0]
    if top in _RECORD_MODULES and name[0].isupper() and (top != "argparse" or name == "Namespace"):
        return _record(f"{module}.{name}")
    if module in _NUMPY_MODULES and (name[0].isupper() or name in _NUMPY_LOWERCASE_TYPES):
        return _record(f"{module}.{name}")
    return None


def python3_name(module: str, name: str) -> tuple[str, str]:
    """What pickle itself would resolve a Python 2 spelling to (protocol 2 writes builtins as __builtin__,
    subprocess as commands, ...): the allowlist is checked, and errors are worded, with that name."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def resolve_global(module: str, name: str) -> Global | None:
    """The handle for `module.name` (Python 3 spelling), or None when a fairseq checkpoint has no
    business naming it."""
    allowed = ALLOWED_GLOBALS.get((module, name))
    if allowed is not None:
        return allowed
    if module == "builtins" and name in _TYPE_REFERENCES:
        return _type_reference(name)
    if module == "torch":
        dtype = storage_dtype(name) if name.endswith("Storage") else None
        if dtype is not None:
            return Global(f"torch.{name}", storage=dtype)
        if name in _TORCH_DTYPE_NAMES:
            return Global(f"torch.{name}")
        return None
    return _record_global(module, name)


# ---- the interpreter -----------------------------------------------------------------------------

def _describe(value: Any) -> str:
    """A short, one-line description of a pickled value for error messages (never a deep repr)."""
    if isinstance(value, (Global, InertRecord)):
        return f"`{printable(value.qualname)}`"
    if isinstance(value, (str, bytes)) or value is None or isinstance(value, (bool, int, float)):
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 64 else "a huge integer"
        return printable(text)
    if isinstance(value, (tuple, list)) and len(value) <= 4 and all(
            isinstance(item, (str, int, float, bool, type(None))) for item in value):
        return printable(repr(value))
    return f"a {type(value).__name__}"


def printable(text: str, limit: int = 100) -> str:
    """Keeps error messages on one line whatever the pickle put in a name."""
    if not text.isprintable():
        text = ascii(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def _check_key(key: Any) -> Any:
    """Refuses dict keys and set items whose hashing could recurse deeply or cost much."""
    budget = [MAX_KEY_ITEMS]

    def check(value: Any, depth: int) -> None:
        budget[0] -= 1
        if depth > MAX_KEY_DEPTH or budget[0] < 0:
            raise _BadKey("with a key or set item that nests too deeply or has too many parts")
        if isinstance(value, (tuple, frozenset)):
            for item in value:
                check(item, depth + 1)
        elif not isinstance(value, (str, bytes, int, float, type(None), InertRecord, Global)):
            raise _BadKey(f"with a key or set item that is {_describe(value)}")

    check(key, 0)
    return key


class _Input:
    """The pickle's bytes, read strictly in order; no read may go beyond `limit` bytes."""

    def __init__(self, file: BinaryIO, limit: int, path: Path) -> None:
        self.file = file
        self.left = limit
        self.limit = limit
        self.path = path

    @property
    def position(self) -> int:
        return self.limit - self.left

    def read(self, count: int) -> bytes:
        if count > self.left:
            self._too_short(count)
        data = self.file.read(count)
        if len(data) != count:
            self._too_short(count)
        self.left -= count
        return data

    def readline(self) -> bytes:
        line = self.file.readline(min(MAX_LINE, self.left))
        self.left -= len(line)
        if not line.endswith(b"\n"):
            raise UnsafeCheckpointError(
                f"refused to load: a text field of the pickle at byte {self.position} is longer than "
                f"{MAX_LINE} bytes or unterminated", path=self.path)
        return line[:-1]

    def _too_short(self, count: int) -> NoReturn:
        if count > self.limit:  # no file could satisfy this: a length field meant to exhaust memory
            raise UnsafeCheckpointError(
                f"refused to load: a length field of the pickle at byte {self.position} claims {count} bytes, "
                f"more than the whole pickle may hold; nothing was allocated", path=self.path)
        raise CheckpointFormatError(
            f"its pickle ends early (at byte {self.position}, {count} more bytes needed)", path=self.path,
            hint="the file is truncated or damaged; copy or download it again")


_Op = Callable[["SafeUnpickler"], None]
_OPCODES: dict[int, _Op] = {}


def _opcode(*codes: bytes) -> Callable[[_Op], _Op]:
    def register(function: _Op) -> _Op:
        for code in codes:
            _OPCODES[code[0]] = function
        return function

    return register


class SafeUnpickler:
    """Runs one pickle into plain containers, InertRecords and LazyTensors.

    `storages` is the index persistent ids are resolved against; without it (the small pickles of
    the legacy header) no global and no persistent id is accepted.
    """

    def __init__(self, file: BinaryIO, storages: StorageIndex | None, *, legacy: bool, path: Path,
                 limit: int) -> None:
        self.input = _Input(file, limit, path)
        self.storages = storages
        self.legacy = legacy
        self.path = path
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.objects = 0
        # Which global made each object, to name it when a later opcode misuses that object.
        self.origins: dict[int, tuple[Any, str]] = {}

    def load(self) -> Any:
        read = self.input.read
        while True:
            code = read(1)[0]
            if code == pickle.STOP[0]:
                return self.pop()
            operation = _OPCODES.get(code)
            if operation is None:
                self.damaged(f"unknown opcode {code:#04x}")
            operation(self)

    # -- errors --

    def damaged(self, what: str) -> NoReturn:
        raise CheckpointFormatError(
            f"its pickle is damaged ({what} at byte {self.input.position})", path=self.path,
            hint="the file is truncated or damaged; copy or download it again")

    def refuse(self, what: str) -> NoReturn:
        raise UnsafeCheckpointError(f"refused to load: {what}; nothing from it was run", path=self.path)

    # -- the stack --

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            self.damaged("stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            self.damaged("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            self.damaged("MARK missing")
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def count_object(self) -> None:
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            self.refuse(f"the pickle builds more than {MAX_OBJECTS} objects")

    def name_of(self, value: Any) -> str:
        origin = self.origins.get(id(value))
        if origin is not None and origin[0] is value:
            return f"the result of `{origin[1]}`"
        return _describe(value)

    # -- globals and calls --

    def find_class(self, module: Any, name: Any) -> Global:
        if not isinstance(module, str) or not isinstance(name, str):
            self.damaged("a global named by non-strings")
        spelled = f"{module}.{name}"
        module, name = python3_name(module, name)
        found = resolve_global(module, name) if self.storages is not None else None
        if found is None:
            what = f"`{printable(f'{module}.{name}', 200)}`"
            if spelled != f"{module}.{name}":
                what += f" (spelled `{printable(spelled, 200)}`)"
            if self.storages is None:
                self.refuse(f"the file's header asks for {what}")
            self.refuse(f"the pickle asks for {what}, which a fairseq checkpoint never needs")
        return found

    def call(self, target: Any, args: Any, kwargs: dict | None = None) -> None:
        if not isinstance(target, Global):
            self.refuse(f"the pickle calls {self.name_of(target)}, which is not a name it may use")
        handler = target.new if kwargs is not None else target.reduce
        if handler is None:
            how = "creates an instance of" if kwargs is not None else "calls"
            self.refuse(f"the pickle {how} `{target.qualname}`, which a fairseq checkpoint only names")
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            self.damaged(f"arguments of `{target.qualname}` that are not a tuple")
        self.count_object()
        try:
            result = handler(args, kwargs) if kwargs is not None else handler(args)
        except _BadCall as error:
            self.refuse(f"the pickle calls `{target.qualname}` {error}")
        if isinstance(result, (LazyTensor, StateDict, InertRecord, dict, list, set)):
            self.origins[id(result)] = (result, target.qualname)
        self.push(result)

    def persistent_load(self, pid: Any) -> StorageRef:
        if self.storages is None:
            self.refuse("the file's header refers to a persistent object")
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            self.refuse(f"the pickle refers to the persistent object {_describe(pid)}, which is not a storage")
        expected = 6 if self.legacy else 5
        if len(pid) != expected:
            self.refuse(f"a storage reference has {len(pid)} fields instead of {expected}")
        _, storage_type, key, location, numel, *view = pid
        if not isinstance(storage_type, Global) or storage_type.storage is None:
            self.refuse(f"a storage reference names the type {_describe(storage_type)}")
        if not isinstance(key, str) or not STORAGE_KEY.fullmatch(key):
            self.refuse(f"a storage reference has the key {_describe(key)}, which is not a storage name")
        if not isinstance(location, str) or len(location) > 64:
            self.refuse(f"a storage reference has the location {_describe(location)}")
        if not isinstance(numel, int) or isinstance(numel, bool) or not 0 <= numel <= MAX_ELEMENTS:
            self.refuse(f"storage {key!r} claims {_describe(numel)} elements")
        try:
            root = self.storages.ref(key, storage_type.storage, numel)
        except UnsafeCheckpointError as error:
            self.refuse(error.message)
        if not view or view[0] is None:
            return root
        return self.storage_view(root, view[0])

    def storage_view(self, root: StorageRef, view: Any) -> StorageRef:
        """Pre-1.0 files could store a storage as a view into another one: (key, offset, numel)."""
        assert self.storages is not None
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in view[1:])):
            self.refuse(f"a storage view reference has the wrong form {_describe(view)}")
        view_key, view_offset, view_numel = view
        if not STORAGE_KEY.fullmatch(view_key):
            self.refuse(f"a storage view has the key {_describe(view_key)}, which is not a storage name")
        try:
            return self.storages.view(view_key, root, view_offset, view_numel)
        except UnsafeCheckpointError as error:
            self.refuse(error.message)

    def build(self, target: Any, state: Any) -> None:
        """BUILD: only a record's state (once) and a state dict's _metadata may be set."""
        if isinstance(target, InertRecord) and not target.built:
            target.state = state
            target.built = True
            return
        if isinstance(target, StateDict) and isinstance(state, dict) and set(state) <= {"_metadata"}:
            target.metadata = state.get("_metadata")
            return
        self.refuse(f"the pickle sets the state of {self.name_of(target)} (BUILD), which a fairseq "
                    "checkpoint never does")

    def checked_key(self, key: Any) -> Any:
        try:
            return _check_key(key)
        except _BadKey as error:
            self.refuse(f"the pickle builds a dict or set {error}")


# ---- opcodes -------------------------------------------------------------------------------------
# The semantics follow CPython's pickle.py (protocols 0-5); the differences are the refusals.

def _unsigned(unpickler: SafeUnpickler, size: int) -> int:
    return int.from_bytes(unpickler.input.read(size), "little")


@_opcode(pickle.PROTO)
def _proto(u: SafeUnpickler) -> None:
    if u.input.read(1)[0] > pickle.HIGHEST_PROTOCOL:
        u.damaged("an unknown pickle protocol")


@_opcode(pickle.FRAME)
def _frame(u: SafeUnpickler) -> None:
    if _unsigned(u, 8) > u.input.left:  # frames only group opcodes; their length must still fit
        u.damaged("a frame longer than the pickle")


@_opcode(pickle.MARK)
def _mark(u: SafeUnpickler) -> None:
    u.marks.append(u.stack)
    u.stack = []


@_opcode(pickle.POP)
def _pop(u: SafeUnpickler) -> None:
    if u.stack:
        u.stack.pop()
    else:
        u.pop_mark()


@_opcode(pickle.POP_MARK)
def _pop_mark(u: SafeUnpickler) -> None:
    u.pop_mark()


@_opcode(pickle.DUP)
def _dup(u: SafeUnpickler) -> None:
    u.push(u.top())


@_opcode(pickle.NONE)
def _none(u: SafeUnpickler) -> None:
    u.push(None)


def _push_constant(value: Any) -> _Op:
    return lambda u: u.push(value)


_OPCODES[pickle.NEWTRUE[0]] = _push_constant(True)
_OPCODES[pickle.NEWFALSE[0]] = _push_constant(False)
_OPCODES[pickle.EMPTY_TUPLE[0]] = _push_constant(())


@_opcode(pickle.BININT)
def _binint(u: SafeUnpickler) -> None:
    u.push(int.from_bytes(u.input.read(4), "little", signed=True))


@_opcode(pickle.BININT1)
def _binint1(u: SafeUnpickler) -> None:
    u.push(u.input.read(1)[0])


@_opcode(pickle.BININT2)
def _binint2(u: SafeUnpickler) -> None:
    u.push(_unsigned(u, 2))


def _long_bytes(u: SafeUnpickler, size_bytes: int) -> None:
    size = int.from_bytes(u.input.read(size_bytes), "little", signed=True)
    if size < 0:
        u.damaged("a negative LONG size")
    if size > MAX_LONG_BYTES:
        u.refuse(f"the pickle holds a {size}-byte integer")
    u.push(int.from_bytes(u.input.read(size), "little", signed=True))


@_opcode(pickle.LONG1)
def _long1(u: SafeUnpickler) -> None:
    _long_bytes(u, 1)


@_opcode(pickle.LONG4)
def _long4(u: SafeUnpickler) -> None:
    _long_bytes(u, 4)


def _text_number(u: SafeUnpickler, parse: Callable[[bytes], Any]) -> Any:
    line = u.input.readline()
    try:
        return parse(line)
    except ValueError:  # also int()'s limit on digits, which guards against quadratic parsing
        u.damaged(f"an unreadable number {_describe(line[:40])}")


def _parse_int(line: bytes) -> int:
    """INT's text; protocol 0 spells True and False as 01 and 00."""
    return {b"00": False, b"01": True}[line] if line in (b"00", b"01") else int(line)


@_opcode(pickle.INT)
def _int(u: SafeUnpickler) -> None:
    u.push(_text_number(u, _parse_int))


@_opcode(pickle.LONG)
def _long(u: SafeUnpickler) -> None:
    u.push(_text_number(u, lambda line: int(line[:-1] if line.endswith(b"L") else line)))


@_opcode(pickle.FLOAT)
def _float(u: SafeUnpickler) -> None:
    u.push(_text_number(u, float))


@_opcode(pickle.BINFLOAT)
def _binfloat(u: SafeUnpickler) -> None:
    u.push(struct.unpack(">d", u.input.read(8))[0])


def _decode(u: SafeUnpickler, data: bytes, encoding: str, errors: str = "strict") -> str:
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError:
        u.damaged(f"text that is not valid {encoding}")


def _counted(u: SafeUnpickler, size_bytes: int) -> bytes:
    return u.input.read(_unsigned(u, size_bytes))


def _push_text(size_bytes: int) -> _Op:
    return lambda u: u.push(_decode(u, _counted(u, size_bytes), "utf-8", "surrogatepass"))


def _push_bytes(size_bytes: int) -> _Op:
    return lambda u: u.push(_counted(u, size_bytes))


def _py2_text(data: bytes) -> str:
    """A Python 2 str as torch loads it (encoding="utf-8"), Latin-1 if it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _push_py2_string(size_bytes: int) -> _Op:
    return lambda u: u.push(_py2_text(_counted(u, size_bytes)))


_OPCODES[pickle.SHORT_BINUNICODE[0]] = _push_text(1)
_OPCODES[pickle.BINUNICODE[0]] = _push_text(4)
_OPCODES[pickle.BINUNICODE8[0]] = _push_text(8)
_OPCODES[pickle.SHORT_BINBYTES[0]] = _push_bytes(1)
_OPCODES[pickle.BINBYTES[0]] = _push_bytes(4)
_OPCODES[pickle.BINBYTES8[0]] = _push_bytes(8)
_OPCODES[pickle.BYTEARRAY8[0]] = _push_bytes(8)
_OPCODES[pickle.SHORT_BINSTRING[0]] = _push_py2_string(1)


@_opcode(pickle.BINSTRING)
def _binstring(u: SafeUnpickler) -> None:
    size = int.from_bytes(u.input.read(4), "little", signed=True)
    if size < 0:
        u.damaged("a negative BINSTRING size")
    u.push(_py2_text(u.input.read(size)))


@_opcode(pickle.STRING)
def _string(u: SafeUnpickler) -> None:
    line = u.input.readline()
    if len(line) < 2 or line[0] != line[-1] or line[:1] not in (b"'", b'"'):
        u.damaged("an unquoted STRING")
    try:
        data = codecs.escape_decode(line[1:-1])[0]
    except ValueError:
        u.damaged("a STRING with a bad escape")
    u.push(_py2_text(data))


@_opcode(pickle.UNICODE)
def _unicode(u: SafeUnpickler) -> None:
    u.push(_decode(u, u.input.readline(), "raw-unicode-escape"))


# -- containers --

@_opcode(pickle.EMPTY_LIST)
def _empty_list(u: SafeUnpickler) -> None:
    u.count_object()
    u.push([])


@_opcode(pickle.EMPTY_DICT)
def _empty_dict(u: SafeUnpickler) -> None:
    u.count_object()
    u.push({})


@_opcode(pickle.EMPTY_SET)
def _empty_set(u: SafeUnpickler) -> None:
    u.count_object()
    u.push(set())


@_opcode(pickle.TUPLE)
def _tuple(u: SafeUnpickler) -> None:
    items = u.pop_mark()
    u.count_object()
    u.push(tuple(items))


def _tuple_n(size: int) -> _Op:
    def build(u: SafeUnpickler) -> None:
        if len(u.stack) < size:
            u.damaged("stack underflow")
        items = tuple(u.stack[-size:])
        del u.stack[-size:]
        u.count_object()
        u.push(items)

    return build


_OPCODES[pickle.TUPLE1[0]] = _tuple_n(1)
_OPCODES[pickle.TUPLE2[0]] = _tuple_n(2)
_OPCODES[pickle.TUPLE3[0]] = _tuple_n(3)


@_opcode(pickle.LIST)
def _list(u: SafeUnpickler) -> None:
    items = u.pop_mark()
    u.count_object()
    u.push(items)


@_opcode(pickle.DICT)
def _dict(u: SafeUnpickler) -> None:
    items = u.pop_mark()
    if len(items) % 2:
        u.damaged("DICT with an odd number of items")
    u.count_object()
    u.push({u.checked_key(items[i]): items[i + 1] for i in range(0, len(items), 2)})


@_opcode(pickle.FROZENSET)
def _frozenset(u: SafeUnpickler) -> None:
    items = u.pop_mark()
    u.count_object()
    u.push(frozenset(u.checked_key(item) for item in items))


def _append_to(u: SafeUnpickler, target: Any, items: list[Any]) -> None:
    if isinstance(target, list):
        target.extend(items)
    elif isinstance(target, InertRecord):
        target.values.extend(items)
    else:
        u.refuse(f"the pickle appends items to {u.name_of(target)}")


@_opcode(pickle.APPEND)
def _append(u: SafeUnpickler) -> None:
    item = u.pop()
    _append_to(u, u.top(), [item])


@_opcode(pickle.APPENDS)
def _appends(u: SafeUnpickler) -> None:
    items = u.pop_mark()
    _append_to(u, u.top(), items)


def _set_items(u: SafeUnpickler, target: Any, items: list[Any]) -> None:
    if len(items) % 2:
        u.damaged("SETITEMS with an odd number of items")
    if isinstance(target, InertRecord):
        target = target.items
    elif not isinstance(target, dict):
        u.refuse(f"the pickle sets items of {u.name_of(target)}")
    for i in range(0, len(items), 2):
        target[u.checked_key(items[i])] = items[i + 1]


@_opcode(pickle.SETITEM)
def _setitem(u: SafeUnpickler) -> None:
    value = u.pop()
    key = u.pop()
    _set_items(u, u.top(), [key, value])


@_opcode(pickle.SETITEMS)
def _setitems(u: SafeUnpickler) -> None:
    items = u.pop_mark()
    _set_items(u, u.top(), items)


@_opcode(pickle.ADDITEMS)
def _additems(u: SafeUnpickler) -> None:
    items = u.pop_mark()
    target = u.top()
    if not isinstance(target, set):
        u.refuse(f"the pickle adds items to {u.name_of(target)}")
    target.update(u.checked_key(item) for item in items)


# -- the memo --

def _memo_get(u: SafeUnpickler, index: int) -> None:
    if index not in u.memo:
        u.damaged(f"memo entry {index} read before it is written")
    u.push(u.memo[index])


def _memo_put(u: SafeUnpickler, index: int) -> None:
    if index < 0:
        u.damaged("a negative memo index")
    u.memo[index] = u.top()


_OPCODES[pickle.GET[0]] = lambda u: _memo_get(u, _text_number(u, int))
_OPCODES[pickle.BINGET[0]] = lambda u: _memo_get(u, _unsigned(u, 1))
_OPCODES[pickle.LONG_BINGET[0]] = lambda u: _memo_get(u, _unsigned(u, 4))
_OPCODES[pickle.PUT[0]] = lambda u: _memo_put(u, _text_number(u, int))
_OPCODES[pickle.BINPUT[0]] = lambda u: _memo_put(u, _unsigned(u, 1))
_OPCODES[pickle.LONG_BINPUT[0]] = lambda u: _memo_put(u, _unsigned(u, 4))
_OPCODES[pickle.MEMOIZE[0]] = lambda u: _memo_put(u, len(u.memo))


# -- globals, calls, persistent ids --

@_opcode(pickle.GLOBAL)
def _global(u: SafeUnpickler) -> None:
    module = _decode(u, u.input.readline(), "utf-8")
    name = _decode(u, u.input.readline(), "utf-8")
    u.push(u.find_class(module, name))


@_opcode(pickle.STACK_GLOBAL)
def _stack_global(u: SafeUnpickler) -> None:
    name = u.pop()
    module = u.pop()
    u.push(u.find_class(module, name))


@_opcode(pickle.REDUCE)
def _reduce(u: SafeUnpickler) -> None:
    args = u.pop()
    u.call(u.pop(), args)


@_opcode(pickle.NEWOBJ)
def _newobj(u: SafeUnpickler) -> None:
    args = u.pop()
    u.call(u.pop(), args, {})


@_opcode(pickle.NEWOBJ_EX)
def _newobj_ex(u: SafeUnpickler) -> None:
    kwargs = u.pop()
    args = u.pop()
    u.call(u.pop(), args, kwargs)


@_opcode(pickle.INST)
def _inst(u: SafeUnpickler) -> None:
    module = _decode(u, u.input.readline(), "ascii")
    name = _decode(u, u.input.readline(), "ascii")
    target = u.find_class(module, name)
    u.call(target, tuple(u.pop_mark()))


@_opcode(pickle.OBJ)
def _obj(u: SafeUnpickler) -> None:
    items = u.pop_mark()
    if not items:
        u.damaged("OBJ without a class")
    u.call(items[0], tuple(items[1:]))


@_opcode(pickle.BUILD)
def _build(u: SafeUnpickler) -> None:
    state = u.pop()
    u.build(u.top(), state)


@_opcode(pickle.BINPERSID)
def _binpersid(u: SafeUnpickler) -> None:
    u.push(u.persistent_load(u.pop()))


@_opcode(pickle.PERSID)
def _persid(u: SafeUnpickler) -> None:
    u.push(u.persistent_load(_decode(u, u.input.readline(), "ascii")))


def _refused_opcode(what: str) -> _Op:
    return lambda u: u.refuse(f"the pickle uses {what}, which torch never writes")


for _code in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
    _OPCODES[_code[0]] = _refused_opcode("the copyreg extension registry (EXT1/EXT2/EXT4)")
for _code in (pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
    _OPCODES[_code[0]] = _refused_opcode("out-of-band buffers (NEXT_BUFFER/READONLY_BUFFER)")


def load_pickle(file: BinaryIO, storages: StorageIndex | None, *, legacy: bool, path: str | Path,
                limit: int) -> Any:
    """Interprets one pickle from `file`, reading at most `limit` bytes; see the module docstring.

    Without `storages` (the legacy header pickles) no global and no persistent id is accepted.
    """
    unpickler = SafeUnpickler(file, storages, legacy=legacy, path=Path(path), limit=limit)
    try:
        return unpickler.load()
    except MemoryError:
        raise UnsafeCheckpointError("refused to load: the pickle asks for more memory than this machine has",
                                    path=path) from None


# ---- from records to plain data ------------------------------------------------------------------

def to_plain(value: Any) -> Any:
    """Turns InertRecords (Namespace, DictConfig, enums, ...) into dicts, lists and values."""
    return _PlainConverter().convert(value, 0)


class _PlainConverter:
    """Converts each object once (a pickle can share one object a billion times), refusing cycles."""

    def __init__(self) -> None:
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()
        self.nodes = 0

    def convert(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, (str, bytes, bool, int, float)):
            return value
        if isinstance(value, Global):
            return value.qualname
        if depth > MAX_PLAIN_DEPTH:
            raise UnsafeCheckpointError("refused to load: the checkpoint's configuration nests too deeply")
        key = id(value)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise UnsafeCheckpointError("refused to load: the checkpoint's configuration contains itself")
        self.nodes += 1
        if self.nodes > MAX_PLAIN_NODES:
            raise UnsafeCheckpointError("refused to load: the checkpoint's configuration is implausibly large")
        self.active.add(key)
        try:
            result = self._convert(value, depth + 1)
        finally:
            self.active.discard(key)
        self.done[key] = result
        return result

    def _convert(self, value: Any, depth: int) -> Any:
        if isinstance(value, InertRecord):
            return self._record(value, depth)
        if isinstance(value, dict):
            return {key: self.convert(item, depth) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.convert(item, depth) for item in value)
        return value  # sets (of checked keys), LazyTensors: already inert

    def _record(self, record: InertRecord, depth: int) -> Any:
        name = record.qualname
        state = record.state
        if name == "argparse.Namespace":
            return self.convert(state if isinstance(state, dict) else {}, depth)
        if name.startswith("omegaconf."):
            return self._omegaconf(record, depth)
        if len(record.args) == 1 and state is None and isinstance(record.args[0], (str, int, float)):
            return record.args[0]  # an Enum member pickles as EnumClass(value)
        if isinstance(state, dict):
            return self.convert(state, depth)
        return name

    def _omegaconf(self, record: InertRecord, depth: int) -> Any:
        state = record.state if isinstance(record.state, dict) else {}
        if record.qualname.endswith(("DictConfig", "ListConfig")):
            content = state.get("_content")
            if isinstance(content, (dict, list)):
                return self.convert(content, depth)
            return None  # a missing ("???") or None container
        if "_val" in state:  # a value node (AnyNode, StringNode, ...)
            return self.convert(state["_val"], depth)
        return None  # metadata objects carry nothing a converter needs
