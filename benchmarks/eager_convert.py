"""The eager baseline: what a conversion script usually does, for comparison with fairseq-to-hf.

torch.load the whole checkpoint (weights_only=False: fairseq pickles an argparse.Namespace), build the
Transformers model from a config (random init, then the weights copied in through a key map), then
`save_pretrained`. Memory holds the checkpoint and the model at once, plus what saving needs.

The key map is written here on purpose, independent of the package's own mapping.

    python benchmarks/eager_convert.py /tmp/bench/ckpt/base-float32 /tmp/bench/out/eager
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ENC = "encoder.sentence_encoder"


def layer_map(i: int, pre_norm: bool) -> dict[str, str]:
    """fairseq layer i -> Transformers names (without the weight/bias suffix)."""
    source, target = f"{ENC}.layers.{i}", f"roberta.encoder.layer.{i}"
    names = {
        "self_attn.q_proj": "attention.self.query",
        "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value",
        "self_attn.out_proj": "attention.output.dense",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
    }
    if pre_norm:  # XLMRobertaXL normalises before each block
        names["self_attn_layer_norm"] = "attention.self_attn_layer_norm"
        names["final_layer_norm"] = "LayerNorm"
    else:
        names["self_attn_layer_norm"] = "attention.output.LayerNorm"
        names["final_layer_norm"] = "output.LayerNorm"
    return {f"{source}.{a}": f"{target}.{b}" for a, b in names.items()}


def key_map(layers: int, pre_norm: bool) -> dict[str, str]:
    modules = {
        f"{ENC}.embed_tokens": "roberta.embeddings.word_embeddings",
        f"{ENC}.embed_positions": "roberta.embeddings.position_embeddings",
        "encoder.lm_head.dense": "lm_head.dense",
        "encoder.lm_head.layer_norm": "lm_head.layer_norm",
    }
    if pre_norm:
        modules[f"{ENC}.layer_norm"] = "roberta.encoder.LayerNorm"
    else:
        modules[f"{ENC}.layernorm_embedding"] = "roberta.embeddings.LayerNorm"
    for i in range(layers):
        modules.update(layer_map(i, pre_norm))
    mapping = {f"{a}.{suffix}": f"{b}.{suffix}" for a, b in modules.items() for suffix in ("weight", "bias")}
    mapping.pop(f"{ENC}.embed_tokens.bias")
    mapping.pop(f"{ENC}.embed_positions.bias")
    mapping["encoder.lm_head.weight"] = "lm_head.decoder.weight"
    mapping["encoder.lm_head.bias"] = "lm_head.bias"
    return mapping


def convert_eagerly(src: Path, out: Path) -> None:
    import transformers

    checkpoint = torch.load(src / "model.pt", map_location="cpu", weights_only=False)
    state = checkpoint["model"]
    hparams = checkpoint["cfg"]["model"] if checkpoint.get("cfg") else checkpoint["args"]
    pre_norm = bool(hparams.encoder_normalize_before)
    embed = state[f"{ENC}.embed_tokens.weight"]
    config_class, model_class = ((transformers.XLMRobertaXLConfig, transformers.XLMRobertaXLForMaskedLM) if pre_norm
                                 else (transformers.RobertaConfig, transformers.RobertaForMaskedLM))
    config = config_class(
        vocab_size=embed.shape[0], hidden_size=hparams.encoder_embed_dim,
        num_hidden_layers=hparams.encoder_layers, num_attention_heads=hparams.encoder_attention_heads,
        intermediate_size=hparams.encoder_ffn_embed_dim, hidden_act=hparams.activation_fn,
        max_position_embeddings=state[f"{ENC}.embed_positions.weight"].shape[0], type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    model = model_class._from_config(config, dtype=embed.dtype)
    mapped = {target: state[source] for source, target in key_map(hparams.encoder_layers, pre_norm).items()}
    token_types = model.roberta.embeddings.token_type_embeddings.weight
    mapped["roberta.embeddings.token_type_embeddings.weight"] = torch.zeros_like(token_types)
    mapped["lm_head.decoder.bias"] = mapped["lm_head.bias"]
    result = model.load_state_dict(mapped, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f"key map incomplete: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    model.save_pretrained(out, max_shard_size="5GB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Eager fairseq -> Transformers conversion (baseline).")
    parser.add_argument("src", type=Path, help="folder with model.pt")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    convert_eagerly(args.src, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
