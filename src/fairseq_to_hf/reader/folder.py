"""Finding the files of a fairseq model folder: checkpoint, dict.txt, label dict, tokenizer files.

Which tokenizer files there can be is the tokenizer registry's to say (tokenizer.TOKENIZER_FILES); the
caller passes them in, so reading a folder does not depend on how a tokenizer is built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConversionError, library_message
from .files import check_input_file, read_input_file

DEFAULT_CHECKPOINT = "model.pt"
# A released model keeps dict.txt beside model.pt; a GLUE-style data-bin keeps it in input0/.
DICTIONARY_CANDIDATES = ("dict.txt", "input0/dict.txt")
LABEL_DICTIONARY_CANDIDATES = ("label/dict.txt",)


@dataclass(frozen=True)
class TokenizerFile:
    """One file a tokenizer kind reads: its option name, its usual names in SRC, what it is."""

    role: str  # keyword and --flag (underscores as dashes), e.g. "bpe_codes" -> --bpe-codes
    names: tuple[str, ...]
    what: str

    @property
    def flag(self) -> str:
        return "--" + self.role.replace("_", "-")


@dataclass
class TokenizerFiles:
    """The tokenizer files found in SRC or given by flag, by role."""

    paths: dict[str, Path] = field(default_factory=dict)
    given: frozenset[str] = frozenset()  # roles named by a flag rather than found by their usual names

    def __getattr__(self, role: str) -> Path | None:  # files.encoder_json, files.bpe_codes, ...
        if role.startswith("_") or role in ("paths", "given"):
            raise AttributeError(role)
        return self.paths.get(role)


@dataclass(frozen=True)
class SourceFiles:
    folder: Path
    checkpoint: Path
    dictionary: Path
    label_dictionary: Path | None
    tokenizer: TokenizerFiles


def find_source_files(src: str | Path, tokenizer_roles: Sequence[TokenizerFile] = (),
                      **options: str | Path | None) -> SourceFiles:
    """The checkpoint, dict.txt, label dict and tokenizer files of SRC, by the options or by their usual names.

    `tokenizer_roles`: the tokenizer files to look for (tokenizer.TOKENIZER_FILES); `options` takes the
    paths of any of them by role (encoder_json=..., bpe_codes=...).
    """
    try:
        return _find_source_files(src, tokenizer_roles, **options)
    except PermissionError as error:
        raise ConversionError(f"cannot be read ({error.strerror})", path=error.filename or src,
                              hint="check the permissions of SRC and the files in it") from None


def find_checkpoint(src: str | Path, checkpoint: str | Path | None = None) -> tuple[Path, Path]:
    """SRC's folder and the checkpoint file in it: SRC itself, `checkpoint`, model.pt, or its only *.pt."""
    if not os.fspath(src):  # Path("") would be the current folder
        raise ConversionError("is an empty path", path="SRC", hint="pass a fairseq model folder or checkpoint file")
    src = Path(src)
    if not src.exists():
        raise ConversionError("does not exist", path=src, hint="pass a fairseq model folder or checkpoint file")
    if not src.is_dir():
        folder, checkpoint_path = src.parent, src
    else:
        folder = src
        checkpoint_path = _resolve(folder, checkpoint) if checkpoint else folder / DEFAULT_CHECKPOINT
        if not checkpoint and not _present(checkpoint_path):
            candidates = sorted(p.name for p in folder.glob("*.pt"))
            if len(candidates) == 1:
                checkpoint_path = folder / candidates[0]
            else:
                found = f" (found: {', '.join(candidates)})" if candidates else ""
                raise ConversionError(f"has no {DEFAULT_CHECKPOINT}{found}", path=folder,
                                      hint="name the checkpoint file with --checkpoint")
    if not _present(checkpoint_path):
        raise ConversionError("checkpoint not found", path=checkpoint_path, hint="check the --checkpoint path")
    check_input_file(checkpoint_path, "a checkpoint file")
    return folder, checkpoint_path


def _find_source_files(
    src: str | Path,
    tokenizer_roles: Sequence[TokenizerFile],
    *,
    checkpoint: str | Path | None = None,
    dictionary: str | Path | None = None,
    label_dictionary: str | Path | None = None,
    **tokenizer_files: str | Path | None,
) -> SourceFiles:
    folder, checkpoint_path = find_checkpoint(src, checkpoint)

    if dictionary:
        dictionary_path = _resolve(folder, dictionary)
        if not _present(dictionary_path):
            raise ConversionError("dictionary not found", path=dictionary_path, hint="check the --dict path")
    else:
        # Present, not a regular file: a dict.txt that is a folder, a FIFO or a broken link is reported as such when read.
        found_dicts = [folder / name for name in DICTIONARY_CANDIDATES if _present(folder / name)]
        if not found_dicts:
            raise ConversionError(
                "has no dict.txt", path=folder,
                hint="fairseq's token dictionary is needed to know the vocabulary; pass it with --dict",
            )
        dictionary_path = found_dicts[0]

    if label_dictionary:
        label_path: Path | None = _resolve(folder, label_dictionary)
        if not _present(label_path):
            raise ConversionError("label dictionary not found", path=label_path, hint="check the --label-dict path")
    else:
        # beside SRC, or beside the data-bin whose input0/dict.txt was given
        data_bin = dictionary_path.parent.parent if dictionary_path.parent.name == "input0" else folder
        label_path = next((base / name for base in dict.fromkeys((folder, data_bin))
                           for name in LABEL_DICTIONARY_CANDIDATES if _present(base / name)), None)
    roles = {f.role for f in tokenizer_roles}
    if unknown := sorted(set(tokenizer_files) - roles):
        raise TypeError(f"unknown tokenizer file option {unknown[0]!r}")
    paths = {f.role: _optional_file(folder, tokenizer_files.get(f.role), f.names, f.flag, f"a {f.what}")
             for f in tokenizer_roles}
    tokenizer = TokenizerFiles({role: path for role, path in paths.items() if path is not None},
                               frozenset(role for role, given in tokenizer_files.items() if given))
    return SourceFiles(folder, checkpoint_path, dictionary_path, label_path, tokenizer)


def _optional_file(folder: Path, given: str | Path | None, candidates: tuple[str, ...], flag: str,
                   what: str) -> Path | None:
    """The given file, or the first candidate present; either must be a regular file, or it is refused
    for what it is (not taken for absent, which would blame its partner or write no tokenizer)."""
    if given:
        path = _resolve(folder, given)
        if not _present(path):
            raise ConversionError("not found", path=path, hint=f"check the {flag} path")
    else:
        path = next((folder / name for name in candidates if _present(folder / name)), None)
    if path is not None:
        check_input_file(path, what)
    return path


def read_text_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file given with --verify-text."""
    try:
        return read_input_file(path, "a --verify-text file").decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ConversionError(f"cannot be read as UTF-8 text ({library_message(error)})", path=path,
                              hint="--verify-text takes a text file, one line per sample") from None


def _present(path: Path) -> bool:
    """A file is there, even a symbolic link to nothing (then refused as such when opened, not taken for
    absent). A folder that cannot be searched raises PermissionError, said as such by find_source_files."""
    return path.exists() or path.is_symlink()


def _resolve(folder: Path, name: str | Path) -> Path:
    path = Path(name)
    return path if path.is_absolute() or _present(path) else folder / path
