"""Where an encoder's position embeddings come from: a learned table in the checkpoint, or one fairseq
computes (`encoder_learned_pos` False: sinusoidal) or leaves out (`no_token_positional_embeddings`).

Transformers' RoBERTa classes always look positions up in a learned table, with the ids fairseq uses
(from padding_idx + 1), so a computed table is written as that table, row for row what fairseq looks
up, and absent positions as a table of zeros. The hyper-parameters decide; a checkpoint without a
table whose hyper-parameters do not say why is refused, never guessed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..reader.dictionary import PAD_ID

LEARNED, SINUSOIDAL, NONE = "learned", "sinusoidal", "none"
MIN_SINUSOIDAL_WIDTH = 4
MAX_COMPUTED_TABLE_BYTES = 4 << 30  # a float32 table of max_positions + 2 rows beyond this is no real model
DESCRIPTIONS = {  # where the table comes from: the plan's source of the tensor, and inspect's note
    SINUSOIDAL: "sinusoidal, computed by fairseq (encoder_learned_pos False): written as a table",
    NONE: "none added by fairseq (no_token_positional_embeddings): written as a table of zeros",
}


def position_kind(hparams: dict[str, Any], has_table: bool) -> str | None:
    """LEARNED, SINUSOIDAL or NONE as fairseq builds the encoder (it tests both flags for truth); None
    when the stored tensors contradict the flags (fairseq refuses to load such a file) or the flags are
    unknown."""
    if hparams.get("no_token_positional_embeddings"):
        return NONE if not has_table else None
    learned = hparams.get("encoder_learned_pos")
    if has_table:
        return LEARNED if learned is None or learned else None
    return SINUSOIDAL if learned is not None and not learned else None


def computed_table(kind: str, rows: int, dim: int) -> torch.Tensor:
    """The float32 table fairseq looks positions up in (SinusoidalPositionalEmbedding.get_embedding for
    `rows` positions, the padding row zero), or zeros for NONE."""
    if kind == NONE:
        return torch.zeros(rows, dim)
    half = dim // 2  # at least 2 (MIN_SINUSOIDAL_WIDTH): fairseq divides by half - 1
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(rows, dtype=torch.float32)[:, None] * frequencies[None, :]
    table = torch.zeros(rows, dim)
    table[:, :half] = torch.sin(angles)
    table[:, half:2 * half] = torch.cos(angles)  # an odd width keeps a last column of zeros
    table[PAD_ID] = 0
    return table
