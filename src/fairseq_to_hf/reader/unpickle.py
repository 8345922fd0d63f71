"""An unpickler that builds data, never behaviour.

A torch checkpoint is a pickle, and a pickle is a program: every GLOBAL it names is imported and every
REDUCE calls it. `SafeUnpickler.find_class` resolves only the names in `ALLOWED_GLOBALS` (tensor and
storage rebuilders, containers), each to a function or class of this module that checks its arguments
and builds inert data. Names that real fairseq checkpoints carry in their bookkeeping (argparse
Namespace, omegaconf configs, fairseq meters and enums, numpy scalars) become `InertRecord`s: plain
records of what the pickle said, turned into dicts and values by `to_plain`. Nothing the pickle names is
ever imported, and every other name is refused before anything runs.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import OrderedDict
from typing import Any

from ..errors import UnsafeCheckpointError
from .tensors import LazyTensor, StorageIndex, StorageRef, storage_dtype

# Tensors are rebuilt as LazyTensor views on storages; shapes beyond this are corrupt or hostile.
MAX_DIMS = 16
MAX_ELEMENTS = 1 << 48


class StateDict(OrderedDict):
    """`collections.OrderedDict` from the pickle; torch attaches `_metadata` to state dicts."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or set(state) - {"_metadata"}:
            raise UnsafeCheckpointError("the pickle sets unexpected attributes on an OrderedDict")
        self.metadata = state.get("_metadata")


class InertRecord:
    """A record of an object the pickle describes; its class is never imported."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertRecord:
        record = super().__new__(cls)
        record.args = args
        record.state = None
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname} from the checkpoint>"


_inert_classes: dict[str, type[InertRecord]] = {}


def _inert_class(qualname: str) -> type[InertRecord]:
    if qualname not in _inert_classes:
        _inert_classes[qualname] = type(qualname.rsplit(".", 1)[-1], (InertRecord,), {"qualname": qualname})
    return _inert_classes[qualname]


# Prefixes of classes found in fairseq checkpoints' non-weight entries (configs, meters, enums).
INERT_MODULE_PREFIXES = ("argparse", "omegaconf", "fairseq", "typing", "enum", "numpy")


# ---- rebuild functions the pickle may call -------------------------------------------------------

class _TensorType:
    """Stands for torch.Tensor / nn.Parameter in `_rebuild_from_type_v2`."""


def _check_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS:
        raise UnsafeCheckpointError(f"tensor {what} is not a short tuple of integers: {value!r:.80}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise UnsafeCheckpointError(f"tensor {what} has a negative or non-integer entry: {value!r:.80}")
    return tuple(value)


def rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *rest: Any) -> LazyTensor:
    """Checks torch._utils._rebuild_tensor(_v2)'s arguments and returns a lazy view."""
    if not isinstance(storage, StorageRef):
        raise UnsafeCheckpointError("a tensor is rebuilt from something that is not a storage")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
        raise UnsafeCheckpointError(f"a tensor has an invalid storage offset {storage_offset!r:.40}")
    shape = _check_int_tuple(size, "size")
    strides = _check_int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise UnsafeCheckpointError("a tensor's size and stride have different lengths")
    # rest: requires_grad, backward_hooks, [metadata]; hooks must be empty, nothing else is used.
    if len(rest) > 3:
        raise UnsafeCheckpointError("a tensor is rebuilt with unexpected extra arguments")
    if len(rest) >= 2 and rest[1] not in (None, {}) and not (isinstance(rest[1], dict) and not rest[1]):
        raise UnsafeCheckpointError("a tensor carries backward hooks")
    tensor = LazyTensor(storage, storage_offset, shape, strides)
    if tensor.numel > MAX_ELEMENTS:
        raise UnsafeCheckpointError(f"a tensor claims an absurd size {shape}")
    return tensor


def rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> Any:
    if not isinstance(data, LazyTensor):
        raise UnsafeCheckpointError("a Parameter is rebuilt from something that is not a tensor")
    return data


def rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if func not in (rebuild_tensor, rebuild_parameter) or new_type is not _TensorType:
        raise UnsafeCheckpointError("a tensor subclass is rebuilt with an unexpected function or type")
    if not isinstance(args, tuple):
        raise UnsafeCheckpointError("a tensor is rebuilt with non-tuple arguments")
    return func(*args)


def _container(kind: type) -> Any:
    def build(items: Any = ()) -> Any:
        if not isinstance(items, (list, tuple, set, frozenset, dict)):
            raise UnsafeCheckpointError(f"{kind.__name__}() is called with {type(items).__name__}")
        return kind(items)

    build.__name__ = kind.__name__
    return build


def _default_dict(default_factory: Any = None) -> dict:
    """collections.defaultdict(factory) -> a plain dict; the factory is never called."""
    return {}


def _ordered_dict(items: Any = ()) -> StateDict:
    if items not in ((), []):
        raise UnsafeCheckpointError("OrderedDict() is called with arguments")
    return StateDict()


def _torch_size(items: Any = ()) -> tuple[int, ...]:
    return _check_int_tuple(items, "Size")


def _torch_device(*args: Any) -> str:
    if not args or not all(isinstance(a, (str, int)) for a in args):
        raise UnsafeCheckpointError("torch.device() is called with unexpected arguments")
    return ":".join(str(a) for a in args)


_STRUCT_FORMATS = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
                   "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy.core.multiarray.scalar(dtype, bytes): decoded with struct, numpy is not imported."""
    if isinstance(dtype, InertRecord) and dtype.args and isinstance(data, bytes):
        code = str(dtype.args[0]).lstrip("<=|")
        if code in _STRUCT_FORMATS and struct.calcsize(_STRUCT_FORMATS[code]) == len(data):
            return struct.unpack("<" + _STRUCT_FORMATS[code], data)[0]
    return _inert_class("numpy.scalar")(dtype, data)


def _storage_type_global(name: str) -> Any:
    return storage_dtype(name)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("collections", "defaultdict"): _default_dict,
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
    ("torch._utils", "_rebuild_from_type_v2"): rebuild_from_type,
    ("torch._tensor", "Tensor"): _TensorType,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("builtins", "set"): _container(set),
    ("builtins", "frozenset"): _container(frozenset),
    ("builtins", "list"): _container(list),
    ("builtins", "tuple"): _container(tuple),
    ("builtins", "dict"): _container(dict),
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _inert_class("numpy.ndarray"),
    ("numpy._core.multiarray", "_reconstruct"): _inert_class("numpy.ndarray"),
}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
# Types that omegaconf metadata names (key_type, element_type); protocol 2 spells int as long.
_TYPE_REFERENCES = {"int", "long", "str", "unicode", "float", "bool", "bytes", "object", "NoneType"}
_TORCH_DTYPE_NAMES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8",
                      "uint8", "bool", "float", "half", "double", "long", "int"}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint's pickle into plain containers, InertRecords and LazyTensors."""

    def __init__(self, file: io.IOBase, storages: StorageIndex, *, legacy: bool) -> None:
        super().__init__(file)
        self.storages = storages
        self.legacy = legacy

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "builtins" and name in _TYPE_REFERENCES:
            return _inert_class(f"builtins.{name}")
        if module == "torch":
            if name.endswith("Storage") and storage_dtype(name) is not None:
                return storage_dtype(name)
            if name in _TORCH_DTYPE_NAMES:
                return name
        if module.split(".")[0] in INERT_MODULE_PREFIXES and name.isidentifier() and not name.startswith("_"):
            return _inert_class(f"{module}.{name}")
        raise UnsafeCheckpointError(
            f"refused to load: the pickle asks for `{module}.{name}`, which a fairseq checkpoint never "
            "needs; nothing from it was run"
        )

    def persistent_load(self, pid: Any) -> StorageRef:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafeCheckpointError(f"the pickle references an unknown persistent object {pid!r:.60}")
        if self.legacy:
            if len(pid) != 6:
                raise UnsafeCheckpointError("a legacy storage reference has the wrong form")
            _, dtype, key, _location, numel, view = pid
        else:
            if len(pid) != 5:
                raise UnsafeCheckpointError("a storage reference has the wrong form")
            _, dtype, key, _location, numel = pid
            view = None
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0 or not hasattr(dtype, "itemsize"):
            raise UnsafeCheckpointError(f"a storage reference has invalid fields {pid!r:.80}")
        root = self.storages.ref(key, dtype, numel)
        if view is None:
            return root
        # Pre-1.0 files could store a storage as a view into another one.
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, (int, str)) for v in view)):
            raise UnsafeCheckpointError("a storage view reference has the wrong form")
        view_key, view_offset, view_numel = view
        return self.storages.view(str(view_key), root, int(view_offset), int(view_numel))


def load_pickle(file: io.IOBase, storages: StorageIndex, *, legacy: bool) -> Any:
    """Runs the safe unpickler; any failure of the pickle itself becomes an UnsafeCheckpointError."""
    try:
        return SafeUnpickler(file, storages, legacy=legacy).load()
    except UnsafeCheckpointError:
        raise
    except RecursionError:
        raise UnsafeCheckpointError("the pickle nests objects too deeply") from None
    except MemoryError:
        raise UnsafeCheckpointError("the pickle asks for more memory than this machine has") from None
    except Exception as error:  # a corrupt pickle raises anything from the C unpickler
        raise UnsafeCheckpointError(f"the pickle is corrupt ({type(error).__name__}: {error})".replace("\n", " ")[:300]) from None


# ---- from records to plain data ------------------------------------------------------------------

def to_plain(value: Any, _depth: int = 0) -> Any:
    """Turns InertRecords (Namespace, DictConfig, enums, ...) into dicts, lists and values."""
    if _depth > 100:
        raise UnsafeCheckpointError("the checkpoint's configuration nests too deeply")
    if isinstance(value, InertRecord):
        return _record_to_plain(value, _depth + 1)
    if isinstance(value, dict):
        return {key: to_plain(item, _depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(item, _depth + 1) for item in value)
    return value


def _record_to_plain(record: InertRecord, depth: int) -> Any:
    name = record.qualname
    state = record.state
    if name == "argparse.Namespace":
        return to_plain(state if isinstance(state, dict) else {}, depth)
    if name.startswith("omegaconf."):
        return _omegaconf_to_plain(record, depth)
    if record.args and state is None and len(record.args) == 1 and isinstance(record.args[0], (str, int, float)):
        return record.args[0]  # an Enum member pickles as EnumClass(value)
    if isinstance(state, dict):
        return {key: to_plain(item, depth) for key, item in state.items()}
    return name


def _omegaconf_to_plain(record: InertRecord, depth: int) -> Any:
    state = record.state if isinstance(record.state, dict) else {}
    if record.qualname.endswith(("DictConfig", "ListConfig")):
        content = state.get("_content")
        if isinstance(content, dict):
            return {key: to_plain(node, depth) for key, node in content.items()}
        if isinstance(content, list):
            return [to_plain(node, depth) for node in content]
        return None  # a missing ("???") or None container
    if "_val" in state:  # a value node (AnyNode, StringNode, ...)
        return to_plain(state["_val"], depth)
    return None  # metadata objects carry nothing a converter needs
