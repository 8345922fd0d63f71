"""Opens a fairseq checkpoint: its state dict as lazy tensors, its hyper-parameters as plain data.

Both torch formats are read without torch.load:
- zip (torch >= 1.6): `<archive>/data.pkl` plus one stored entry per storage; the zip directory tells
  where each storage's bytes are, so no tensor data is read to open the file.
- legacy (older files): magic number, protocol, system info and the main pickle, then a pickled list
  of storage keys, then each storage as an int64 element count followed by its bytes. Skipping from
  one count to the next maps every storage without reading its data either.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointFormatError, UnsafeCheckpointError
from .tensors import LazyTensor, StorageIndex
from .unpickle import load_pickle, to_plain

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ZIP_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
ZIP_LOCAL_HEADER_SIGNATURE = 0x04034B50
MAX_PICKLE_BYTES = 1 << 30


@dataclass
class Checkpoint:
    """What a converter needs from a checkpoint file, read from metadata only."""

    path: Path
    format: str  # "zip" or "legacy"
    tensors: dict[str, LazyTensor]  # the `model` state dict, keys as stored
    hparams: dict[str, Any]  # args (fairseq <= 0.10) or cfg["model"], as plain data
    hparams_source: str  # "args", "cfg" or "none"
    top_level_keys: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except IsADirectoryError:
        raise CheckpointFormatError("is a folder, not a checkpoint file", path=path) from None
    except OSError as error:
        raise CheckpointFormatError(f"cannot be read ({error.strerror})", path=path) from None
    if head.startswith(b"PK"):
        root, index, format_name = _read_zip(path)
    elif head[:1] == b"\x80":
        root, index, format_name = _read_legacy(path)
    else:
        raise CheckpointFormatError(
            "is not a torch checkpoint (neither zip nor legacy pickle format)", path=path,
            hint="pass the fairseq model file (usually model.pt or checkpoint_best.pt)",
        )
    return _interpret(path, root, index, format_name)


def _read_zip(path: Path) -> tuple[Any, StorageIndex, str]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointFormatError(
            f"is not a complete zip-format checkpoint ({error})", path=path,
            hint="the file may be truncated; copy or download it again",
        ) from None
    with archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError("is a zip file but not a torch checkpoint (no data.pkl)", path=path)
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise CheckpointFormatError("stores big-endian tensors, which this tool does not read", path=path)
        info = archive.getinfo(pickles[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise UnsafeCheckpointError("its data.pkl is implausibly large", path=path)
        pickle_bytes = archive.read(info)
        index = StorageIndex(str(path))
        file_size = path.stat().st_size
        with open(path, "rb") as raw:
            for entry in archive.infolist():
                if not entry.filename.startswith(f"{prefix}data/"):
                    continue
                key = entry.filename[len(f"{prefix}data/"):]
                if entry.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointFormatError(f"storage {key!r} is compressed, which torch never writes", path=path)
                start = _zip_data_start(raw, entry, path)
                if start + entry.file_size > file_size:
                    raise CheckpointFormatError(
                        f"storage {key!r} runs past the end of the file", path=path,
                        hint="the file is truncated; copy or download it again",
                    )
                index.locations[key] = (start, entry.file_size)
    root = load_pickle(io.BytesIO(pickle_bytes), index, legacy=False)
    return root, index, "zip"


def _zip_data_start(raw: io.BufferedReader, entry: zipfile.ZipInfo, path: Path) -> int:
    raw.seek(entry.header_offset)
    header = raw.read(ZIP_LOCAL_HEADER.size)
    if len(header) != ZIP_LOCAL_HEADER.size:
        raise CheckpointFormatError("its zip directory points past the end of the file", path=path)
    fields = ZIP_LOCAL_HEADER.unpack(header)
    if fields[0] != ZIP_LOCAL_HEADER_SIGNATURE:
        raise CheckpointFormatError(f"its zip entry {entry.filename!r} is damaged", path=path)
    name_length, extra_length = fields[9], fields[10]
    return entry.header_offset + ZIP_LOCAL_HEADER.size + name_length + extra_length


class _NoGlobals(pickle.Unpickler):
    """For the legacy header pickles, which hold only numbers, strings, lists and dicts."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafeCheckpointError(f"refused to load: the file's header asks for `{module}.{name}`")


def _read_small_pickle(file: io.BufferedReader, path: Path) -> Any:
    try:
        return _NoGlobals(file).load()
    except UnsafeCheckpointError:
        raise
    except Exception:
        raise CheckpointFormatError("is not a torch checkpoint (unreadable legacy header)", path=path) from None


def _read_legacy(path: Path) -> tuple[Any, StorageIndex, str]:
    index = StorageIndex(str(path))
    file_size = path.stat().st_size
    with open(path, "rb") as file:
        magic = _read_small_pickle(file, path)
        if magic != LEGACY_MAGIC:
            raise CheckpointFormatError(
                "is a pickle but not a torch checkpoint", path=path,
                hint="pass the fairseq model file (usually model.pt)",
            )
        _read_small_pickle(file, path)  # protocol version
        sys_info = _read_small_pickle(file, path)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointFormatError("stores big-endian tensors, which this tool does not read", path=path)
        root = load_pickle(file, index, legacy=True)
        keys = _read_small_pickle(file, path)
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise CheckpointFormatError("its list of storages is damaged", path=path)
        position = file.tell()
        for key in keys:
            storage = index.refs.get(key)
            if storage is None:
                raise CheckpointFormatError(f"lists storage {key!r} that its pickle never uses", path=path)
            file.seek(position)
            count_bytes = file.read(8)
            if len(count_bytes) != 8:
                raise CheckpointFormatError(
                    f"ends before storage {key!r}", path=path, hint="the file is truncated; copy it again"
                )
            (count,) = struct.unpack("<q", count_bytes)
            nbytes = count * storage.dtype.itemsize
            if count < 0 or position + 8 + nbytes > file_size:
                raise CheckpointFormatError(
                    f"storage {key!r} runs past the end of the file", path=path,
                    hint="the file is truncated; copy it again",
                )
            index.locations[key] = (position + 8, nbytes)
            position += 8 + nbytes
    return root, index, "legacy"


def _interpret(path: Path, root: Any, index: StorageIndex, format_name: str) -> Checkpoint:
    if not isinstance(root, dict) or "model" not in root:
        raise CheckpointFormatError(
            "is a torch file but not a fairseq checkpoint (no 'model' entry)", path=path,
            hint="fairseq checkpoints hold a dict with 'model' and 'args' or 'cfg'",
        )
    state = root["model"]
    if not isinstance(state, dict) or not all(isinstance(v, LazyTensor) for v in state.values()):
        raise CheckpointFormatError("its 'model' entry is not a state dict of tensors", path=path)
    missing = sorted(key for key, tensor in state.items() if tensor.storage.key not in index.locations)
    if missing:
        raise CheckpointFormatError(
            "tensors have no data in the file: " + ", ".join(missing[:5]), path=path,
            hint="the file is truncated or damaged",
        )
    short = sorted(key for key, tensor in state.items() if not tensor.fits_storage() or
                   (tensor.storage.element_offset + tensor.storage.numel) * tensor.dtype.itemsize
                   > index.locations[tensor.storage.key][1])
    if short:
        raise CheckpointFormatError(
            "tensors run past the end of their data: " + ", ".join(short[:5]), path=path,
            hint="the file is truncated or damaged; copy it again",
        )
    hparams, source = _hyper_parameters(root)
    return Checkpoint(
        path=path,
        format=format_name,
        tensors=dict(state),
        hparams=hparams,
        hparams_source=source,
        top_level_keys=[str(key) for key in root],
    )


def _hyper_parameters(root: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """fairseq <= 0.10 keeps an argparse Namespace in `args`; later files keep `cfg["model"]`."""
    args = to_plain(root.get("args"))
    if isinstance(args, dict) and args:
        return args, "args"
    cfg = to_plain(root.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model = dict(cfg["model"])
        task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
        # Some cfgs keep max_positions only on the task (tokens_per_sample); the tensors decide anyway.
        for key in ("max_positions", "tokens_per_sample"):
            if key not in model and key in task:
                model[key] = task[key]
        return model, "cfg"
    return {}, "none"
