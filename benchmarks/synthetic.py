"""Synthetic fairseq 0.12 RoBERTa checkpoints with random weights, at real model sizes.

The files have the layout fairseq-train 0.12 writes (compare tests/fixtures/roberta_mlm/model.pt): a
`torch.save` zip written through a file object (so its folder is `archive/`), whose pickle holds
`args: None`, a `cfg` dict of plain sections whose `model` is an `argparse.Namespace`, the `model`
OrderedDict in fairseq's key order with `encoder.lm_head.weight` being the very same tensor object as
`embed_tokens.weight` (so torch stores it once, as fairseq does), and `criterion`,
`optimizer_history`, `task_state` and `extra_state` as fairseq leaves them.

Memory stays bounded whatever the model size: torch.save needs every tensor object at once, so the
matrices are not allocated but mapped, copy-on-write, from a scratch "pool" file of random values at
varying offsets. torch.save then streams each one from the page cache into the zip; the process holds
only the pool's pages (reclaimable cache, about the size of the largest tensor), not the model. The
1-D tensors (biases, LayerNorms) are small and made in memory.

    python benchmarks/synthetic.py base float32 /tmp/bench/ckpt/base-float32
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from argparse import Namespace
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from presets import PRESETS, Preset

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ENC = "encoder.sentence_encoder"
SPECIALS_AND_MASK = 5  # <s> <pad> </s> <unk> are not in dict.txt, <mask> is appended by the task
POOL_SLACK_BYTES = 256 << 20  # pool beyond the largest tensor, so that tensors start at different offsets
POOL_CHUNK_ELEMENTS = 16 << 20  # random values generated per write while filling the pool
WEIGHT_STD = 0.02  # fairseq's init_bert_params std: keeps a deep random model's activations sane


# ---- the pool of random bytes ---------------------------------------------------------------------

class Pool:
    """A file of N(0, WEIGHT_STD) values; tensors are copy-on-write maps of slices of it."""

    def __init__(self, path: Path, dtype: torch.dtype, nbytes: int, seed: int) -> None:
        self.path, self.dtype = path, dtype
        generator = torch.Generator().manual_seed(seed)
        elements = nbytes // dtype.itemsize
        with open(path, "wb") as file:
            for start in range(0, elements, POOL_CHUNK_ELEMENTS):
                count = min(POOL_CHUNK_ELEMENTS, elements - start)
                chunk = (torch.randn(count, generator=generator) * WEIGHT_STD).to(dtype)
                file.write(memoryview(chunk.view(torch.uint8).numpy()))
        self.nbytes = elements * dtype.itemsize
        self._rng = np.random.default_rng(seed + 1)

    def tensor(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A tensor mapped from a random slice of the pool (MAP_PRIVATE: nothing is copied until written)."""
        nbytes = math.prod(shape) * self.dtype.itemsize
        free = self.nbytes - nbytes
        offset = int(self._rng.integers(0, free // 64 + 1)) * 64 if free > 0 else 0
        raw = np.memmap(self.path, dtype=np.uint8, mode="c", offset=offset, shape=(nbytes,))
        return torch.from_numpy(raw).view(self.dtype).view(shape)


# ---- the state dict ---------------------------------------------------------------------------------

def _vector(size: int, generator: torch.Generator, dtype: torch.dtype, around: float = 0.0) -> torch.Tensor:
    return (around + torch.randn(size, generator=generator) * WEIGHT_STD).to(dtype)


def build_state_dict(preset: Preset, dtype: torch.dtype, pool: Pool, seed: int) -> OrderedDict[str, torch.Tensor]:
    """fairseq 0.12's RobertaModel state dict, keys in the order fairseq saves them."""
    g = torch.Generator().manual_seed(seed)
    h, f = preset.hidden, preset.ffn
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    state[f"{ENC}.version"] = torch.tensor([3.0], dtype=dtype)
    embed_tokens = pool.tensor((preset.vocab_rows, h))
    state[f"{ENC}.embed_tokens.weight"] = embed_tokens
    state[f"{ENC}.embed_positions.weight"] = pool.tensor((preset.position_rows, h))
    if not preset.pre_norm:
        state[f"{ENC}.layernorm_embedding.weight"] = _vector(h, g, dtype, around=1.0)
        state[f"{ENC}.layernorm_embedding.bias"] = _vector(h, g, dtype)
    for i in range(preset.layers):
        layer = f"{ENC}.layers.{i}"
        for projection in ("k_proj", "v_proj", "q_proj", "out_proj"):
            state[f"{layer}.self_attn.{projection}.weight"] = pool.tensor((h, h))
            state[f"{layer}.self_attn.{projection}.bias"] = _vector(h, g, dtype)
        state[f"{layer}.self_attn_layer_norm.weight"] = _vector(h, g, dtype, around=1.0)
        state[f"{layer}.self_attn_layer_norm.bias"] = _vector(h, g, dtype)
        state[f"{layer}.fc1.weight"] = pool.tensor((f, h))
        state[f"{layer}.fc1.bias"] = _vector(f, g, dtype)
        state[f"{layer}.fc2.weight"] = pool.tensor((h, f))
        state[f"{layer}.fc2.bias"] = _vector(h, g, dtype)
        state[f"{layer}.final_layer_norm.weight"] = _vector(h, g, dtype, around=1.0)
        state[f"{layer}.final_layer_norm.bias"] = _vector(h, g, dtype)
    if preset.pre_norm:
        state[f"{ENC}.layer_norm.weight"] = _vector(h, g, dtype, around=1.0)
        state[f"{ENC}.layer_norm.bias"] = _vector(h, g, dtype)
    state["encoder.lm_head.weight"] = embed_tokens  # the same object: torch.save stores the storage once
    state["encoder.lm_head.bias"] = _vector(preset.vocab_rows, g, dtype)
    state["encoder.lm_head.dense.weight"] = pool.tensor((h, h))
    state["encoder.lm_head.dense.bias"] = _vector(h, g, dtype)
    state["encoder.lm_head.layer_norm.weight"] = _vector(h, g, dtype, around=1.0)
    state["encoder.lm_head.layer_norm.bias"] = _vector(h, g, dtype)
    return state


# ---- the rest of the checkpoint ---------------------------------------------------------------------

def model_namespace(preset: Preset, dtype: torch.dtype) -> Namespace:
    """cfg['model'] as fairseq 0.12 saves it for --arch roberta_*: an argparse.Namespace of all args."""
    fp16 = dtype == torch.float16
    return Namespace(
        no_progress_bar=False, log_interval=100, log_format="json", seed=1, cpu=False, tpu=False,
        bf16=dtype == torch.bfloat16, fp16=fp16, memory_efficient_fp16=False, fp16_init_scale=128,
        criterion="masked_lm", tokenizer=None, bpe="gpt2", optimizer="adam", lr_scheduler="polynomial_decay",
        task="masked_lm", num_workers=1, max_tokens=None, batch_size=16, required_batch_size_multiple=8,
        train_subset="train", valid_subset="valid", distributed_world_size=1, ddp_backend="legacy_ddp",
        arch=preset.arch, max_epoch=0, max_update=500000, clip_norm=0.0, update_freq=[1], lr=[0.0006],
        save_dir="checkpoints", restore_file="checkpoint_last.pt", no_save_optimizer_state=False,
        best_checkpoint_metric="loss", encoder_layerdrop=0, encoder_layers_to_keep=None, quant_noise_pq=0,
        quant_noise_pq_block_size=8, quant_noise_scalar=0, spectral_norm_classification_head=False,
        min_params_to_wrap=100000000, data="data-bin", sample_break_mode="complete",
        tokens_per_sample=preset.max_positions, mask_prob=0.15, leave_unmasked_prob=0.1, random_token_prob=0.1,
        freq_weighted_replacement=False, mask_whole_words=False, mask_multiple_length=1, mask_stdev=0.0,
        shorten_method="none", shorten_data_split_list="", adam_betas="(0.9,0.98)", adam_eps=1e-06,
        weight_decay=0.01, warmup_updates=24000, end_learning_rate=0.0, power=1.0, total_num_update="500000",
        pad=1, eos=2, unk=3,
        encoder_layers=preset.layers, encoder_embed_dim=preset.hidden, encoder_ffn_embed_dim=preset.ffn,
        encoder_attention_heads=preset.heads, max_positions=preset.max_positions, no_seed_provided=False,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, pooler_dropout=0.0,
        max_source_positions=preset.max_positions, no_token_positional_embeddings=False,
        encoder_learned_pos=True, layernorm_embedding=not preset.pre_norm, no_scale_embedding=True,
        activation_fn="gelu", encoder_normalize_before=preset.pre_norm, pooler_activation_fn="tanh",
        untie_weights_roberta=False, adaptive_input=False, _name=preset.arch,
    )


def config_sections(preset: Preset, dtype: torch.dtype) -> dict:
    """The `cfg` dict: fairseq 0.12 stores OmegaConf.to_container(cfg), sections as plain dicts."""
    fp16 = dtype == torch.float16
    return {
        "_name": None,
        "common": {"_name": None, "no_progress_bar": False, "log_interval": 100, "log_format": "json",
                   "seed": 1, "cpu": False, "tpu": False, "bf16": dtype == torch.bfloat16, "fp16": fp16,
                   "memory_efficient_fp16": False, "fp16_init_scale": 128, "user_dir": None},
        "common_eval": {"_name": None, "path": None, "quiet": False, "model_overrides": "{}"},
        "distributed_training": {"_name": None, "distributed_world_size": 1, "distributed_rank": 0,
                                 "distributed_backend": "nccl", "ddp_backend": "legacy_ddp", "fp16": fp16},
        "dataset": {"_name": None, "num_workers": 1, "max_tokens": None, "batch_size": 16,
                    "train_subset": "train", "valid_subset": "valid"},
        "optimization": {"_name": None, "max_epoch": 0, "max_update": 500000, "clip_norm": 0.0,
                         "update_freq": [1], "lr": [0.0006]},
        "checkpoint": {"_name": None, "save_dir": "checkpoints", "restore_file": "checkpoint_last.pt",
                       "no_save_optimizer_state": False, "best_checkpoint_metric": "loss"},
        "bmuf": {"_name": None, "block_lr": 1.0, "block_momentum": 0.875, "global_sync_iter": 50},
        "generation": {"_name": None, "beam": 5, "nbest": 1},
        "eval_lm": {"_name": None, "output_word_probs": False, "context_window": 0},
        "interactive": {"_name": None, "buffer_size": 0, "input": "-"},
        "model": model_namespace(preset, dtype),
        "task": {"_name": "masked_lm", "data": "data-bin", "sample_break_mode": "complete",
                 "tokens_per_sample": preset.max_positions, "mask_prob": 0.15, "leave_unmasked_prob": 0.1,
                 "random_token_prob": 0.1, "seed": 1},
        "criterion": {"_name": "masked_lm", "tpu": False},
        "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-06, "weight_decay": 0.01,
                      "lr": [0.0006]},
        "lr_scheduler": {"_name": "polynomial_decay", "warmup_updates": 24000, "end_learning_rate": 0.0,
                         "power": 1.0, "total_num_update": 500000.0, "lr": [0.0006]},
        "scoring": {"_name": "bleu", "pad": 1, "eos": 2, "unk": 3},
        "bpe": {"_name": "gpt2"},
        "tokenizer": None,
        "ema": {"_name": None, "store_ema": False, "ema_decay": 0.9999},
    }


def extra_state() -> dict:
    """fairseq's training metrics (with their small tensors) and iterator position."""
    meter = {"val": torch.tensor(1.9), "sum": torch.tensor(4.8e6), "count": torch.tensor(2_500_000), "round": 3}
    metrics = OrderedDict([("default", [(10, "loss", "AverageMeter", meter)]),
                           ("train", [(10, "loss", "AverageMeter", dict(meter))])])
    return {"metrics": metrics, "previous_training_time": 86400.0,
            "train_iterator": {"version": 2, "epoch": 1, "iterations_in_epoch": 0, "shuffle": True},
            "val_loss": None}


def checkpoint_object(preset: Preset, dtype: torch.dtype, state: OrderedDict) -> dict:
    return {
        "args": None,
        "cfg": config_sections(preset, dtype),
        "model": state,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 500000}],
        "task_state": {},
        "extra_state": extra_state(),
    }


def write_dictionary(path: Path, preset: Preset) -> None:
    """GPT-2 BPE style dict.txt: the BPE ids as symbols, with descending counts."""
    lines = preset.vocab_rows - SPECIALS_AND_MASK
    path.write_text("".join(f"{i} {lines - i}\n" for i in range(lines)), encoding="utf-8")


def generate(preset: Preset, dtype_name: str, folder: Path, seed: int = 0) -> Path:
    """Writes folder/model.pt and folder/dict.txt; returns the checkpoint path."""
    dtype = DTYPES[dtype_name]
    folder.mkdir(parents=True, exist_ok=True)
    pool_path = folder / "pool.tmp"
    pool = Pool(pool_path, dtype, preset.largest_tensor_params * dtype.itemsize + POOL_SLACK_BYTES, seed)
    try:
        checkpoint = checkpoint_object(preset, dtype, build_state_dict(preset, dtype, pool, seed))
        target = folder / "model.pt"
        partial = folder / "model.pt.tmp"
        # fairseq's torch_persistent_save writes through a file object (hence the `archive/` folder in
        # the zip) to a .tmp file, then renames.
        with open(partial, "wb") as file:
            torch.save(checkpoint, file)
        os.replace(partial, target)
    finally:
        pool_path.unlink(missing_ok=True)
    write_dictionary(folder / "dict.txt", preset)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a random-weight fairseq 0.12 RoBERTa checkpoint folder.")
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("dtype", choices=sorted(DTYPES))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    started = time.perf_counter()
    path = generate(preset, args.dtype, args.folder, args.seed)
    print(f"wrote {path}: {preset.params / 1e6:.1f}M parameters, {path.stat().st_size / 1e9:.2f} GB "
          f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
