from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"
GPT2_BPE = FIXTURES / "gpt2_bpe"
PAD_ID = 1


class FairseqRecording:
    """What the real fairseq computed for a fixture (made by tools/make_fixtures.py)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "fairseq_outputs.json").read_text())
        self.tensors = load_file(folder / "fairseq_outputs.safetensors")

    @property
    def samples(self) -> list[str]:
        return list(self.meta["samples"])

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def recording(name: str) -> FairseqRecording:
    return FairseqRecording(FIXTURES / name)


def max_abs_diff(expected: torch.Tensor, actual: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        expected, actual = expected[mask], actual[mask]
    return float((expected - actual).abs().max())


def json_file(path: Path) -> dict:
    return json.loads(path.read_text())
