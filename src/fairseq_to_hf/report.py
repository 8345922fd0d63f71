"""What a conversion did and proved, as an object for the API and as conversion_report.json."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .plan import SourceModel
from .reader.folder import SourceFiles
from .tokenizer import PreparedTokenizer
from .verify.compare import WeightsVerification
from .verify.tokenizer_check import TokenizerVerification

REPORT_FILE = "conversion_report.json"


def portable(path: Path, folder: Path) -> str:
    """A source file as the report names it: relative to the model folder, never a local absolute path.

    The report and card travel with OUT (to the Hub); a path of the converting machine would leak there.
    """
    path, folder = Path(path).absolute(), Path(folder).absolute()
    name = path.relative_to(folder).as_posix() if folder in path.parents else path.name
    # A name that is not UTF-8 (bytes Python keeps as surrogates) is shown with its bytes escaped.
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class OutputReport:
    """One Transformers folder written by a conversion."""

    folder: Path
    architecture: str
    model_type: str
    head: str | None
    num_labels: int | None
    labels: list[str] | None
    dtype: str
    files: list[str]
    tensors_written: int
    bytes_written: int
    dropped: dict[str, str]
    notes: list[str]
    verification: WeightsVerification | None = None  # None: written with --no-verify
    tokenizer_verification: TokenizerVerification | None = None
    default_language: str | None = None  # X-MOD: the adapter used where no lang_ids are given

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.passed and (
            self.tokenizer_verification is None or self.tokenizer_verification.passed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder.name,
            "architecture": self.architecture,
            "model_type": self.model_type,
            "head": self.head,
            "num_labels": self.num_labels,
            "labels": self.labels,
            "dtype": self.dtype,
            "files": self.files,
            "tensors_written": self.tensors_written,
            "bytes_written": self.bytes_written,
            "dropped_tensors": self.dropped,
            "notes": self.notes,
            **({"default_language": self.default_language} if self.default_language else {}),
            "verification": self.verification.as_dict() if self.verification else None,
            "tokenizer_verification": (self.tokenizer_verification.as_dict() if self.tokenizer_verification
                                       else None),
        }


@dataclass
class ConversionReport:
    """The source (analysed once) and every output written from it."""

    model: SourceModel
    files: SourceFiles
    tokenizer: PreparedTokenizer | None = None
    source_sha256: str | None = None
    outputs: list[OutputReport] = field(default_factory=list)

    @property
    def key_generation(self) -> str:
        return self.model.source.key_generation

    @property
    def verified(self) -> bool:
        """Weights verified, and the tokenizer too when one was written."""
        return bool(self.outputs) and all(
            out.verified and (self.tokenizer is None or out.tokenizer_verification is not None)
            for out in self.outputs)

    def _tokenizer_as_dict(self) -> dict[str, Any] | None:
        if self.tokenizer is None:
            return None
        summary = self.tokenizer.summary()
        files = {kind: portable(path, self.files.folder) for kind, path in summary["source_files"].items()}
        return {**summary, "source_files": files}

    def as_dict(self, only: OutputReport | None = None) -> dict[str, Any]:
        outputs = [only] if only is not None else self.outputs
        model, folder = self.model, self.files.folder
        return {
            "tool": "fairseq-to-hf",
            "tool_version": __version__,
            "source": {
                "checkpoint": portable(model.path, folder),
                "sha256": self.source_sha256,
                "dictionary": portable(self.files.dictionary, folder),
                "checkpoint_format": model.source.checkpoint.format,
                "key_generation": self.key_generation,
                "hyper_parameters_from": model.hyper_parameters.source,
                "layout": "pre-norm" if model.layout.pre_norm else "post-norm",
                "dims": {**vars(model.dims), "languages": list(model.dims.languages)},
                "classification_heads": {head.name: head.num_classes for head in model.heads},
            },
            "tokenizer": self._tokenizer_as_dict(),
            "outputs": [out.as_dict() for out in outputs],
        }
