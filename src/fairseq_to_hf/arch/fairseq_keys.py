"""fairseq state-dict keys of every generation, normalised to the fairseq 0.12 names.

Each alias below names the releases that needed it. Normalising is a pure function of the key (plus
a lazy slice for fused attention), so it can be tested on names alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..reader.tensors import LazyTensor

ENCODER = "encoder.sentence_encoder"

# (pattern, replacement), applied in order, each at most once per key.
KEY_ALIASES: tuple[tuple[str, str], ...] = (
    (r"^decoder\.", "encoder."),  # fairseq <= 0.9: the RoBERTa encoder was stored as `decoder`
    (r"\.emb_layer_norm\.", ".layernorm_embedding."),  # fairseq <= 0.10
    (r"\.layer_norms\.0\.", ".self_attn_layer_norm."),  # early TransformerEncoderLayer
    (r"\.layer_norms\.1\.", ".final_layer_norm."),
)

# Tensors fairseq itself ignores or deletes when it loads a checkpoint.
JUNK_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"(^|\.)version$", "fairseq's bookkeeping of its own format version"),
    (r"\._float_tensor$", "sinusoidal-position placeholder, holds no weights"),
    (r"^encoder\._ema", "data2vec EMA teacher, deleted by fairseq on load"),
    (r"^encoder\.regression_head", "data2vec regression head, deleted by fairseq on load"),
)

FUSED_ATTENTION = re.compile(r"^(.*\.self_attn)\.in_proj_(weight|bias)$")


@dataclass(frozen=True)
class SourceTensor:
    """A tensor under its normalised fairseq name, with the key it was stored under."""

    name: str
    stored_as: str
    tensor: LazyTensor


def junk_reason(key: str) -> str | None:
    for pattern, reason in JUNK_PATTERNS:
        if re.search(pattern, key):
            return reason
    return None


def normalise_key(key: str) -> str:
    for pattern, replacement in KEY_ALIASES:
        key = re.sub(pattern, replacement, key, count=1)
    return key


def split_rows(tensor: LazyTensor, parts: int, part: int) -> LazyTensor:
    """Rows [part*n, (part+1)*n) of a tensor whose first dimension splits into `parts` equal blocks."""
    rows = tensor.shape[0] // parts
    return LazyTensor(
        tensor.storage,
        tensor.offset + part * rows * tensor.stride[0],
        (rows, *tensor.shape[1:]),
        tensor.stride,
    )


def normalise_state_dict(
    tensors: dict[str, LazyTensor],
) -> tuple[dict[str, SourceTensor], dict[str, str], list[str]]:
    """Returns (normalised name -> tensor, dropped stored key -> reason, problems)."""
    normalised: dict[str, SourceTensor] = {}
    dropped: dict[str, str] = {}
    problems: list[str] = []

    def put(name: str, stored_as: str, tensor: LazyTensor) -> None:
        if name in normalised:
            problems.append(f"{stored_as} and {normalised[name].stored_as} both hold {name}")
        normalised[name] = SourceTensor(name, stored_as, tensor)

    for key, tensor in tensors.items():
        reason = junk_reason(key)
        if reason:
            dropped[key] = reason
            continue
        name = normalise_key(key)
        fused = FUSED_ATTENTION.match(name)
        if fused:
            # The oldest files keep q, k and v as one [3*dim, ...] tensor, in that order.
            if not tensor.shape or tensor.shape[0] % 3:
                problems.append(f"{key} has shape {list(tensor.shape)}, which does not split into q, k, v")
                continue
            prefix, kind = fused.groups()
            for part, projection in enumerate(("q_proj", "k_proj", "v_proj")):
                put(f"{prefix}.{projection}.{kind}", f"{key}[{projection[0]}]", split_rows(tensor, 3, part))
            continue
        put(name, key, tensor)
    return normalised, dropped, problems


# fairseq variants with tensors no Transformers RoBERTa class has; recognised so that the error names
# the variant instead of listing its tensors one by one.
UNSUPPORTED_LAYOUTS: tuple[tuple[str, str], ...] = (
    (r"\.compress_[kv]\.|\.compress_layer\.", "Linformer projections"),
    (r"\.(centroids|assignments|counts)$", "iPQ-quantised weights (quant-noise blocks)"),
    (r"\.weight_(orig|u|v)$", "spectral normalisation"),
    (r"\.self_attn\.bias_[kv]$", "attention bias_k/bias_v (add_bias_kv)"),
    (r"\.self_attn\.(c_attn|alpha)\b|\.ffn_layernorm\.|\.attn_ln\.", "NormFormer scaling"),
    (r"\.layers\.\d+\.(gate|moe_layer|experts)\.", "mixture-of-experts layers"),
    (r"^encoder\.sentence_encoder\.embed_scale\b", "learned embedding scale"),
    (r"^encoder\.sentence_encoder\.quant_noise\.weight$",
     "quant-noise's projection after the embeddings (trained with --quant-noise-pq above 0)"),
    (r"^encoder\.(lm_head_transform_weight|lm_output_learned_bias|masked_lm_pooler|sentence_projection_layer)\b"
     r"|\.sentence_encoder\.segment_embeddings\.",
     "fairseq's masked_lm model (BERT/XLM style: segment embeddings, its own LM head and pooler), not RoBERTa"),
)


def unsupported_layouts(keys: list[str]) -> dict[str, list[str]]:
    """Variant name -> a few of its tensors, for every unsupported variant found in `keys`."""
    found: dict[str, list[str]] = {}
    for key in keys:
        for pattern, variant in UNSUPPORTED_LAYOUTS:
            if re.search(pattern, key):
                found.setdefault(variant, []).append(key)
                break
    return found
