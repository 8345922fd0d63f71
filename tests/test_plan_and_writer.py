"""Pure pieces of planning and writing, checked on exact outputs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import FIXTURES
from fairseq_to_hf.arch.fairseq_keys import normalise_key, unsupported_layouts
from fairseq_to_hf.plan.families import ROBERTA, ROBERTA_PRELAYERNORM, XLM_ROBERTA_XL, XMOD, compile_rows, match_rows
from fairseq_to_hf.errors import ConversionError
from fairseq_to_hf.plan import TensorPlan
from fairseq_to_hf.shard_size import parse_size
from fairseq_to_hf.writer import plan_shards, safetensors_header, shard_file_names


@pytest.mark.parametrize("stored,normalised", [
    ("decoder.sentence_encoder.emb_layer_norm.weight", "encoder.sentence_encoder.layernorm_embedding.weight"),
    ("decoder.lm_head.dense.bias", "encoder.lm_head.dense.bias"),
    ("encoder.sentence_encoder.layers.3.layer_norms.0.bias",
     "encoder.sentence_encoder.layers.3.self_attn_layer_norm.bias"),
    ("encoder.sentence_encoder.layers.3.layer_norms.1.weight",
     "encoder.sentence_encoder.layers.3.final_layer_norm.weight"),
    ("classification_heads.decoder.dense.weight", "classification_heads.decoder.dense.weight"),
])
def test_key_generations_normalise_to_fairseq_012_names(stored: str, normalised: str) -> None:
    assert normalise_key(stored) == normalised


def test_layer_norms_map_to_each_familys_names() -> None:
    def rows(family):
        return compile_rows(family.encoder_rows(family.layouts[-1]))

    post, pre, pre_ln, xmod = rows(ROBERTA), rows(XLM_ROBERTA_XL), rows(ROBERTA_PRELAYERNORM), rows(XMOD)
    name = "encoder.sentence_encoder.layers.7.final_layer_norm.bias"
    final = "encoder.sentence_encoder.layer_norm.weight"
    assert match_rows(name, post) == ["roberta.encoder.layer.7.output.LayerNorm.bias"]
    assert match_rows(name, pre) == ["roberta.encoder.layer.7.LayerNorm.bias"]
    assert match_rows(name, pre_ln) == ["roberta_prelayernorm.encoder.layer.7.intermediate.LayerNorm.bias"]
    assert match_rows(name, xmod) == ["roberta.encoder.layer.7.output.LayerNorm.bias"]
    assert match_rows(final, pre) == ["roberta.encoder.LayerNorm.weight"]
    assert match_rows(final, pre_ln) == ["roberta_prelayernorm.LayerNorm.weight"]
    assert match_rows(final, xmod) == ["roberta.encoder.LayerNorm.weight"]
    assert match_rows(final, post) == []
    assert match_rows("encoder.sentence_encoder.layers.2.adapter_modules.hi_IN.fc2.bias", xmod) == [
        "roberta.encoder.layer.2.output.adapter_modules.hi_IN.dense2.bias"]


def test_unsupported_variants_are_named() -> None:
    found = unsupported_layouts([
        "encoder.sentence_encoder.layers.0.adapter_modules.en_XX.fc1.weight",
        "encoder.sentence_encoder.layers.0.self_attn.compress_k.weight",
        "encoder.sentence_encoder.layers.0.fc1.weight",
    ])
    assert found == {"Linformer projections": ["encoder.sentence_encoder.layers.0.self_attn.compress_k.weight"]}


def _planned(name: str, numel: int) -> TensorPlan:
    return TensorPlan(name, (numel,), torch.float32, None, "zeros")


def test_shards_split_greedily_in_writing_order() -> None:
    tensors = [_planned("a", 10), _planned("b", 10), _planned("c", 30), _planned("d", 5)]
    shards = plan_shards(tensors, max_shard_bytes=80)
    assert [[t.target for t in shard] for shard in shards] == [["a", "b"], ["c"], ["d"]]
    assert shard_file_names(3) == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                   "model-00003-of-00003.safetensors"]
    assert shard_file_names(1) == ["model.safetensors"]


def test_header_is_what_safetensors_reads(tmp_path: Path) -> None:
    tensors = [_planned("x", 3), TensorPlan("y", (2, 2), torch.float16, None, "zeros")]
    header = safetensors_header(tensors, {"format": "pt"})
    (length,) = struct.unpack("<Q", header[:8])
    assert length % 8 == 0 and len(header) == 8 + length
    assert json.loads(header[8:]) == {"__metadata__": {"format": "pt"},
                                      "x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                                      "y": {"dtype": "F16", "shape": [2, 2], "data_offsets": [12, 20]}}
    path = tmp_path / "t.safetensors"
    path.write_bytes(header + bytes(20))
    with safe_open(path, "pt") as handle:
        assert handle.get_tensor("y").shape == (2, 2)


def test_sharded_output_loads_with_from_pretrained(tmp_path: Path) -> None:
    from transformers import AutoModelForMaskedLM

    from fairseq_to_hf import convert

    report = convert(FIXTURES / "roberta_mlm", tmp_path / "out", max_shard_size="40KB")
    files = report.outputs[0].files
    assert "model.safetensors.index.json" in files and "model-00001-of-00004.safetensors" in files
    assert report.verified
    AutoModelForMaskedLM.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize("text,size", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1000", 1000)])
def test_sizes_read_like_the_hub(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_unreadable_size_is_a_clear_error() -> None:
    with pytest.raises(ConversionError, match="write it like 5GB"):
        parse_size("five gigs")


def test_pooled_read_buffers_never_mix_up_tensors(tmp_path: Path) -> None:
    """Tensors of 1-5 MiB are read into reused buffers; every one must still be written as stored."""
    import argparse
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from fairseq_to_hf.reader.checkpoint import read_checkpoint
    from fairseq_to_hf.writer import BufferPool, write_weights

    generator = torch.Generator().manual_seed(0)
    sizes = [(512, 1024), (300, 1024), (1280, 1024), (256, 1100), (700, 1024), (512, 1024)]
    state = {f"t{i}": torch.randn(shape, generator=generator) for i, shape in enumerate(sizes)}
    torch.save({"model": state, "args": argparse.Namespace()}, tmp_path / "model.pt")
    source = read_checkpoint(tmp_path / "model.pt")
    tensors = [TensorPlan(name, tuple(lazy.shape), torch.float32, lazy, name) for name, lazy in source.tensors.items()]
    # A cast and alias rows make new tensors from the pooled buffer; it is released all the same.
    tensors[2] = TensorPlan("t2", tensors[2].shape, torch.float16, tensors[2].source, "t2")
    tensors[3] = TensorPlan("t3", (sizes[3][0] + 2, sizes[3][1]), torch.float32, tensors[3].source, "t3",
                            extra_rows=2, copy_row=0)
    plan = SimpleNamespace(tensors=tensors, tied_checks=[], total_bytes=sum(t.nbytes for t in tensors))
    out = tmp_path / "out"
    out.mkdir()
    write_weights(out, plan)
    written = load_file(out / "model.safetensors")
    for name, values in state.items():
        got = written[name]
        if name == "t2":
            assert torch.equal(got, values.half())
        elif name == "t3":
            assert torch.equal(got[:-2], values) and torch.equal(got[-2:], values[:1].expand(2, -1))
        else:
            assert torch.equal(got, values)

    pool = BufferPool(keep=2)
    small, large = pool.acquire(2 << 20), pool.acquire(5 << 20)
    for buffer in (small, large, pool.acquire(3 << 20)):
        pool.release(buffer)
    assert pool.acquire(3 << 20) is not large  # the smallest buffer that fits, the 3 MiB one
    assert pool.acquire(1 << 20) is large  # only the two largest were kept
    assert pool.acquire(1000) is None  # small tensors are not pooled
