"""Opens a fairseq checkpoint: its state dict as lazy tensors, its hyper-parameters as plain data.

Both torch formats are read without torch.load (see unpickle.py for how the pickles are read):
- zip (torch >= 1.6): `<archive>/data.pkl` plus one stored entry per storage; the zip directory tells
  where each storage's bytes are, so no tensor data is read to open the file. data.pkl's CRC-32 is
  checked when it is read, a storage's when a tensor reads all of it.
- legacy (older files): magic number, protocol, system info and the main pickle, then a pickled list
  of storage keys, then each storage as an int64 element count followed by its bytes. Skipping from
  one count to the next maps every storage without reading its data either. The pickles are read
  straight from the file, each with a byte budget, so no length field can allocate beyond it.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CheckpointFormatError, UnsafeCheckpointError, library_message
from .files import check_input_file, file_identity
from .tensors import LazyTensor, StorageIndex
from .unpickle import STORAGE_KEY, load_pickle, printable, to_plain

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
ZIP_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
ZIP_LOCAL_HEADER_SIGNATURE = 0x04034B50
ZIP_FLAG_ENCRYPTED = 0x1
ZIP_FLAG_UTF8 = 0x800
# Real fairseq pickles are kilobytes to a few megabytes (tensor bytes live outside the pickle); the
# interpreter's memory is a small multiple of the pickle's size, so this bounds it too.
MAX_PICKLE_BYTES = 256 << 20
# The legacy header pickles hold a number, a number and a small dict.
MAX_HEADER_PICKLE_BYTES = 1 << 16
MAX_SMALL_ENTRY_BYTES = 64  # zip entries such as byteorder and version
# What a RobertaHubInterface (`model.`, its `_float_tensor` buffer) or DistributedDataParallel (`module.`)
# adds to the model's names.
WRAPPER_PREFIXES, HUB_BUFFER = ("model.", "module."), "_float_tensor"


@dataclass
class Checkpoint:
    """What a converter needs from a checkpoint file, read from metadata only."""

    path: Path
    format: str  # "zip" or "legacy"
    tensors: dict[str, LazyTensor]  # the `model` state dict, keys as stored
    hparams: dict[str, Any]  # args (fairseq <= 0.10) or cfg["model"], as plain data
    hparams_source: str  # "args", "cfg" or "none"
    top_level_keys: list[str] = field(default_factory=list)
    storages: StorageIndex | None = None  # where the tensors' bytes are; records the file's sha256 once read
    # The BPE the model was trained with: cfg["bpe"] or args.bpe ("_name") and the bpe_* options.
    bpe: dict[str, Any] = field(default_factory=dict)
    has_ema: bool = False  # extra_state["ema"]: the EMA copy of --store-ema, which fairseq's loaders skip

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Opens a checkpoint without running anything from it; raises ConversionError subclasses only."""
    path = Path(path)
    check_input_file(path, "a checkpoint file")  # a FIFO or a device would hang or never end
    try:
        with open(path, "rb") as file:
            identity = file_identity(os.fstat(file.fileno()))
            head = file.read(4)
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
    index.identity = identity
    index.check_unchanged(path)  # the directory and pickle were read from that same file
    return _interpret(path, root, index, format_name)


# ---- zip format ----------------------------------------------------------------------------------

def _read_zip(path: Path) -> tuple[Any, StorageIndex, str]:
    """zipfile parses the central directory; every entry's bytes are then read (or mapped) directly."""
    entries = _zip_directory(path)
    pickle_entry, prefix = _find_data_pkl(entries, path)
    _check_zip_names(entries, prefix, path)
    file_size = path.stat().st_size
    with open(path, "rb") as raw:
        byteorder = next((e for e in entries if e.filename == f"{prefix}byteorder"), None)
        if byteorder is not None and _read_entry(raw, byteorder, MAX_SMALL_ENTRY_BYTES, file_size, path).strip() \
                not in (b"little", b""):
            raise CheckpointFormatError("stores big-endian tensors, which this tool does not read", path=path)
        pickle_bytes = _read_entry(raw, pickle_entry, MAX_PICKLE_BYTES, file_size, path)
        index = _map_zip_storages(raw, entries, prefix, file_size, path)
    root = load_pickle(io.BytesIO(pickle_bytes), index, legacy=False, path=path, limit=len(pickle_bytes))
    return root, index, "zip"


def _zip_directory(path: Path) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.infolist()
    except Exception as error:  # zipfile raises many types on a damaged directory; all mean "damaged"
        raise CheckpointFormatError(
            f"is not a complete zip-format checkpoint ({type(error).__name__}: {library_message(error)})", path=path,
            hint="the file may be truncated; copy or download it again",
        ) from None


def _find_data_pkl(entries: list[zipfile.ZipInfo], path: Path) -> tuple[zipfile.ZipInfo, str]:
    """torch writes every entry inside one folder, `<folder>/data.pkl` among them."""
    pickles = [e for e in entries if e.filename.endswith("/data.pkl") and e.filename.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointFormatError("is a zip file but not a torch checkpoint (no single data.pkl)", path=path)
    return pickles[0], pickles[0].filename[: -len("data.pkl")]


def _check_zip_names(entries: list[zipfile.ZipInfo], prefix: str, path: Path) -> None:
    """Refuses entries outside the archive's folder and repeated names.

    Nothing is ever extracted, but two parsers can disagree about such archives (which of two entries
    of one name counts, what `../` means), and torch never writes them.
    """
    seen: set[str] = set()
    for entry in entries:
        name = entry.filename
        parts = name[len(prefix):].split("/") if name.startswith(prefix) else []
        if not parts or "" in parts[:-1] or ".." in parts or "." in parts or "\\" in name or "\0" in name:
            raise UnsafeCheckpointError(
                f"refused to load: its zip entry {printable(name)!r} lies outside the archive's folder "
                f"{prefix!r}", path=path)
        if name in seen:
            raise UnsafeCheckpointError(f"refused to load: it has two zip entries named {printable(name)!r}",
                                        path=path)
        seen.add(name)


def _stored_range(raw: BinaryIO, entry: zipfile.ZipInfo, file_size: int, what: str, path: Path) -> tuple[int, int]:
    """(offset, size) of an uncompressed entry's bytes in the file; torch stores every entry so."""
    if entry.compress_type != zipfile.ZIP_STORED or entry.flag_bits & ZIP_FLAG_ENCRYPTED \
            or entry.compress_size != entry.file_size:
        raise CheckpointFormatError(f"{what} is compressed or encrypted, which torch never writes", path=path)
    start = _zip_data_start(raw, entry, path)
    if start + entry.file_size > file_size:
        raise CheckpointFormatError(f"{what} runs past the end of the file", path=path,
                                    hint="the file is truncated; copy or download it again")
    return start, entry.file_size


def _read_entry(raw: BinaryIO, entry: zipfile.ZipInfo, limit: int, file_size: int, path: Path) -> bytes:
    """Reads a small entry (data.pkl, byteorder) after checking its size, then checks its CRC-32.

    torch >= 2.5 can save without CRCs (`set_crc32_options(False)` writes 0); such entries are read
    unchecked, as torch.load reads them.
    """
    what = f"its zip entry {printable(entry.filename)!r}"
    if entry.file_size > limit:
        raise UnsafeCheckpointError(f"refused to load: {what} is implausibly large ({entry.file_size} bytes)",
                                    path=path)
    start, size = _stored_range(raw, entry, file_size, what, path)
    raw.seek(start)
    data = raw.read(size)
    if len(data) != size or (entry.CRC and zlib.crc32(data) != entry.CRC):
        raise CheckpointFormatError(f"{what} is damaged (its CRC-32 does not match)", path=path,
                                    hint="copy or download the file again")
    return data


def _map_zip_storages(raw: BinaryIO, entries: list[zipfile.ZipInfo], prefix: str, file_size: int,
                      path: Path) -> StorageIndex:
    """Where each `<prefix>data/<key>` entry's bytes are, from the zip headers alone."""
    index = StorageIndex(str(path))
    folder = f"{prefix}data/"
    for entry in entries:
        if not entry.filename.startswith(folder):
            continue
        key = entry.filename[len(folder):]
        if not key:
            continue  # a folder entry, as generic zip tools add; torch itself writes none
        if not STORAGE_KEY.fullmatch(key):
            raise UnsafeCheckpointError(f"refused to load: its zip entry {printable(entry.filename)!r} is "
                                        "not a storage torch would write", path=path)
        index.locations[key] = _stored_range(raw, entry, file_size, f"storage {key!r}", path)
        if entry.CRC:
            index.checksums[key] = entry.CRC  # checked when a tensor reads the whole storage
    return index


def _zip_data_start(raw: BinaryIO, entry: zipfile.ZipInfo, path: Path) -> int:
    """The entry's data offset, after checking its local header matches the central directory."""
    if entry.header_offset < 0:
        raise CheckpointFormatError(f"its zip entry {entry.filename!r} has a negative offset", path=path)
    raw.seek(entry.header_offset)
    header = raw.read(ZIP_LOCAL_HEADER.size)
    if len(header) != ZIP_LOCAL_HEADER.size:
        raise CheckpointFormatError("its zip directory points past the end of the file", path=path)
    fields = ZIP_LOCAL_HEADER.unpack(header)
    if fields[0] != ZIP_LOCAL_HEADER_SIGNATURE:
        raise CheckpointFormatError(f"its zip entry {entry.filename!r} is damaged", path=path)
    name_length, extra_length = fields[9], fields[10]
    encoding = "utf-8" if entry.flag_bits & ZIP_FLAG_UTF8 else "cp437"
    if raw.read(name_length) != entry.orig_filename.encode(encoding, "replace"):
        # A local name that differs from the directory's is how archives show different files to
        # different readers; torch writes the same name twice.
        raise UnsafeCheckpointError(f"refused to load: its zip entry {printable(entry.filename)!r} has "
                                    "another name in its local header", path=path)
    return entry.header_offset + ZIP_LOCAL_HEADER.size + name_length + extra_length


# ---- legacy format -------------------------------------------------------------------------------

def _read_legacy(path: Path) -> tuple[Any, StorageIndex, str]:
    """Magic number, protocol, system info, the main pickle, the storage keys, then the storages.

    Every pickle is read from the file with a byte budget, so no length field can make the reader
    allocate more than the file (and the budget) holds.
    """
    index = StorageIndex(str(path))
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size

        def small_pickle(limit: int) -> Any:
            return load_pickle(file, None, legacy=True, path=path, limit=min(limit, file_size - file.tell()))

        if small_pickle(MAX_HEADER_PICKLE_BYTES) != LEGACY_MAGIC:
            raise CheckpointFormatError(
                "is a pickle but not a torch checkpoint", path=path,
                hint="pass the fairseq model file (usually model.pt)",
            )
        small_pickle(MAX_HEADER_PICKLE_BYTES)  # protocol version
        sys_info = small_pickle(MAX_HEADER_PICKLE_BYTES)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointFormatError("stores big-endian tensors, which this tool does not read", path=path)
        root = load_pickle(file, index, legacy=True, path=path,
                           limit=min(MAX_PICKLE_BYTES, file_size - file.tell()))
        keys = small_pickle(MAX_PICKLE_BYTES)
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise CheckpointFormatError("its list of storages is damaged", path=path)
        _map_legacy_storages(file, keys, index, file_size, path)
    return root, index, "legacy"


def _map_legacy_storages(file: BinaryIO, keys: list[str], index: StorageIndex, file_size: int,
                         path: Path) -> None:
    """Each storage is an int64 element count then its bytes: skipping from count to count maps them."""
    position = file.tell()
    for key in keys:
        storage = index.refs.get(key)
        if storage is None:
            raise CheckpointFormatError(f"lists storage {printable(key)!r} that its pickle never uses", path=path)
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


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, LazyTensor) for k, v in value.items())


def _without_hub_prefix(state: dict[str, LazyTensor]) -> dict[str, LazyTensor]:
    """A RobertaHubInterface's state dict (`hub.state_dict()`) holds the model under `model.`, beside the
    hub's own `_float_tensor` buffer; one saved from a DistributedDataParallel wrapper under `module.`:
    the model's names are the rest."""
    names = [name for name in state if name != HUB_BUFFER]
    for prefix in WRAPPER_PREFIXES:
        if names and all(name.startswith(prefix) for name in names):
            return {name.removeprefix(prefix): state[name] for name in names}
    return state


def _interpret(path: Path, root: Any, index: StorageIndex, format_name: str) -> Checkpoint:
    if isinstance(root, dict) and root and _is_state_dict(root):
        state = root  # a bare state dict, `torch.save(model.state_dict())`: no hyper-parameters with it
    elif not isinstance(root, dict) or "model" not in root:
        raise CheckpointFormatError(
            "is a torch file but not a fairseq checkpoint (no 'model' entry, and not a state dict of named "
            "tensors either)", path=path,
            hint="fairseq checkpoints hold a dict with 'model' and 'args' or 'cfg'",
        )
    else:
        state = root["model"]
    if not _is_state_dict(state):
        raise CheckpointFormatError("its 'model' entry is not a state dict of named tensors", path=path)
    state = _without_hub_prefix(state)
    missing = sorted(key for key, tensor in state.items() if tensor.storage.key not in index.locations)
    if missing:
        raise CheckpointFormatError(
            "tensors have no data in the file: " + ", ".join(map(printable, missing[:5])), path=path,
            hint="the file is truncated or damaged",
        )
    short = sorted(key for key, tensor in state.items() if not tensor.fits_storage() or
                   (tensor.storage.element_offset + tensor.storage.numel) * tensor.dtype.itemsize
                   > index.locations[tensor.storage.key][1])
    if short:
        raise CheckpointFormatError(
            "tensors run past the end of their data: " + ", ".join(map(printable, short[:5])), path=path,
            hint="the file is truncated or damaged; copy it again",
        )
    hparams, source = _hyper_parameters(root)
    return Checkpoint(
        path=path,
        format=format_name,
        tensors=dict(state),
        hparams=hparams,
        hparams_source=source,
        top_level_keys=[printable(str(key)) for key in root],
        storages=index,
        bpe=_bpe_settings(root, hparams),
        has_ema=isinstance(root.get("extra_state"), dict) and isinstance(root["extra_state"].get("ema"), dict),
    )


def _bpe_settings(root: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    cfg = to_plain(root.get("cfg"))
    bpe = cfg.get("bpe") if isinstance(cfg, dict) else None
    if isinstance(bpe, dict) and bpe.get("_name"):
        return {str(key): value for key, value in bpe.items()}
    # args (fairseq <= 0.10), or a cfg whose model section kept the bpe fields
    settings = {key: value for key, value in hparams.items() if isinstance(key, str) and key.startswith("bpe_")}
    if isinstance(hparams.get("bpe"), str):
        return {"_name": hparams["bpe"], **settings}
    return {}


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
