"""The checkpoint reader on files written by torch itself, in both of torch's formats."""

from __future__ import annotations

import argparse
import io
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from fairseq_to_hf.errors import CheckpointFormatError, UnsafeCheckpointError
from fairseq_to_hf.reader import read_checkpoint
from fairseq_to_hf.reader.dictionary import Dictionary, labels_for_head, read_dictionary
from fairseq_to_hf.errors import ConversionError


def _state() -> OrderedDict:
    generator = torch.Generator().manual_seed(0)
    state = OrderedDict()
    state["w32"] = torch.randn(4, 3, generator=generator)
    state["w16"] = torch.randn(5, generator=generator).half()
    state["bf16"] = torch.randn(2, 2, generator=generator).bfloat16()
    state["transposed"] = torch.randn(3, 6, generator=generator).t()
    state["row_view"] = state["w32"][1:3]
    state["tied"] = state["w32"]
    state["ints"] = torch.arange(7)
    state["flags"] = torch.tensor([True, False])
    state["empty"] = torch.zeros(0, 3)
    return state


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_tensors_round_trip_lazily(tmp_path: Path, zip_format: bool) -> None:
    state = _state()
    path = tmp_path / "model.pt"
    torch.save({"model": state, "args": argparse.Namespace(encoder_layers=2, arch="roberta_base")}, path,
               _use_new_zipfile_serialization=zip_format)

    checkpoint = read_checkpoint(path)

    assert checkpoint.format == ("zip" if zip_format else "legacy")
    assert checkpoint.hparams == {"encoder_layers": 2, "arch": "roberta_base"}
    assert checkpoint.hparams_source == "args"
    assert list(checkpoint.tensors) == list(state)
    for name, expected in state.items():
        lazy = checkpoint.tensors[name]
        assert lazy.shape == tuple(expected.shape) and lazy.dtype == expected.dtype, name
        assert torch.equal(lazy.load(), expected), name
    assert checkpoint.tensors["tied"].same_data(checkpoint.tensors["w32"])
    assert not checkpoint.tensors["row_view"].same_data(checkpoint.tensors["w32"])


def test_cfg_with_namespace_model_becomes_plain_data(tmp_path: Path) -> None:
    # fairseq 0.12 keeps cfg as a dict whose "model" entry is still an argparse Namespace.
    cfg = {"model": argparse.Namespace(encoder_embed_dim=32, activation_fn="gelu", layers={1, 2}),
           "task": {"tokens_per_sample": 64, "_name": "masked_lm"}, "common": {"seed": 1}}
    path = tmp_path / "model.pt"
    torch.save({"model": OrderedDict(x=torch.ones(1)), "args": None, "cfg": cfg}, path)

    checkpoint = read_checkpoint(path)

    assert checkpoint.hparams_source == "cfg"
    assert checkpoint.hparams == {"encoder_embed_dim": 32, "activation_fn": "gelu", "layers": {1, 2},
                                  "tokens_per_sample": 64}


def test_a_pickle_naming_os_system_is_refused_before_running(tmp_path: Path) -> None:
    canary = tmp_path / "canary"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {canary}",))

    path = tmp_path / "model.pt"
    torch.save({"model": OrderedDict(), "args": Exploit()}, path)

    with pytest.raises(UnsafeCheckpointError, match=r"`posix\.system`"):
        read_checkpoint(path)
    assert not canary.exists()


def test_plain_pickle_and_garbage_are_not_checkpoints(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"model": {}}, protocol=2))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="not a torch checkpoint"):
        read_checkpoint(plain)
    with pytest.raises(CheckpointFormatError, match="not a torch checkpoint"):
        read_checkpoint(garbage)


def test_truncated_zip_checkpoint_is_reported(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"model": OrderedDict(w=torch.randn(1000))}, buffer)
    path = tmp_path / "model.pt"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_checkpoint(path)


def test_dictionary_ids_follow_fairseq(tmp_path: Path) -> None:
    path = tmp_path / "dict.txt"
    path.write_text("hello 10\nworld 5\nhello 1 #fairseq:overwrite\nmadeupword0000 0\n")
    dictionary = read_dictionary(path)
    assert dictionary.symbols == ("<s>", "<pad>", "</s>", "<unk>", "hello", "world", "hello", "madeupword0000")
    assert dictionary.index()["hello"] == 6  # a repeated symbol takes its last id, as in fairseq
    assert dictionary.with_mask().symbols[-1] == "<mask>"


def test_repeated_symbol_without_overwrite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dict.txt"
    path.write_text("a 1\na 2\n")
    with pytest.raises(ConversionError, match="repeats the symbol 'a'"):
        read_dictionary(path)


def test_labels_skip_padding_symbols() -> None:
    labels = Dictionary(Path("label/dict.txt"), ("<s>", "<pad>", "</s>", "<unk>", "neutral", "positive",
                                                 "negative", "madeupword0000"))
    assert labels_for_head(labels, 3) == ["neutral", "positive", "negative"]
    with pytest.raises(ConversionError, match="has 3 labels but the classification head has 2 outputs"):
        labels_for_head(labels, 2)
