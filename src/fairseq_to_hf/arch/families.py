"""Target layouts: which Transformers class family a fairseq RoBERTa becomes, and the name tables.

The tables map normalised fairseq names (see fairseq_keys.py) to Transformers names. `{i}` stands for a
layer index, `{p}` for `weight` or `bias`. Each table is the whole truth for its family: a fairseq
tensor that no row matches is reported, and a Transformers tensor that no fairseq tensor fills is
missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

E = "encoder.sentence_encoder"
L = f"{E}.layers.{{i}}"

_SHARED_ROWS: tuple[tuple[str, str], ...] = (
    (f"{E}.embed_tokens.weight", "roberta.embeddings.word_embeddings.weight"),
    (f"{E}.embed_positions.weight", "roberta.embeddings.position_embeddings.weight"),
    (f"{L}.self_attn.q_proj.{{p}}", "roberta.encoder.layer.{i}.attention.self.query.{p}"),
    (f"{L}.self_attn.k_proj.{{p}}", "roberta.encoder.layer.{i}.attention.self.key.{p}"),
    (f"{L}.self_attn.v_proj.{{p}}", "roberta.encoder.layer.{i}.attention.self.value.{p}"),
    (f"{L}.self_attn.out_proj.{{p}}", "roberta.encoder.layer.{i}.attention.output.dense.{p}"),
    (f"{L}.fc1.{{p}}", "roberta.encoder.layer.{i}.intermediate.dense.{p}"),
    (f"{L}.fc2.{{p}}", "roberta.encoder.layer.{i}.output.dense.{p}"),
)

POST_NORM_ROWS: tuple[tuple[str, str], ...] = (
    *_SHARED_ROWS,
    (f"{E}.layernorm_embedding.{{p}}", "roberta.embeddings.LayerNorm.{p}"),
    (f"{L}.self_attn_layer_norm.{{p}}", "roberta.encoder.layer.{i}.attention.output.LayerNorm.{p}"),
    (f"{L}.final_layer_norm.{{p}}", "roberta.encoder.layer.{i}.output.LayerNorm.{p}"),
)

# XLM-R XL/XXL: LayerNorm before each block, one after the last layer, none on the embeddings.
PRE_NORM_ROWS: tuple[tuple[str, str], ...] = (
    *_SHARED_ROWS,
    (f"{L}.self_attn_layer_norm.{{p}}", "roberta.encoder.layer.{i}.attention.self_attn_layer_norm.{p}"),
    (f"{L}.final_layer_norm.{{p}}", "roberta.encoder.layer.{i}.LayerNorm.{p}"),
    (f"{E}.layer_norm.{{p}}", "roberta.encoder.LayerNorm.{p}"),
)

LM_HEAD_ROWS: tuple[tuple[str, str], ...] = (
    ("encoder.lm_head.dense.{p}", "lm_head.dense.{p}"),
    ("encoder.lm_head.layer_norm.{p}", "lm_head.layer_norm.{p}"),
    ("encoder.lm_head.bias", "lm_head.bias"),
)

# Untied, Transformers keeps the decoder's own weight and bias (tied, both are aliases it restores).
UNTIED_LM_HEAD_ROWS: tuple[tuple[str, str], ...] = (
    ("encoder.lm_head.weight", "lm_head.decoder.weight"),
    ("encoder.lm_head.bias", "lm_head.decoder.bias"),
)

CLASSIFIER_ROWS: tuple[tuple[str, str], ...] = (
    ("classification_heads.{head}.dense.{p}", "classifier.dense.{p}"),
    ("classification_heads.{head}.out_proj.{p}", "classifier.out_proj.{p}"),
)

LM_HEAD_PREFIX = "encoder.lm_head."
HEAD_PREFIX = "classification_heads."
HEAD_NAME = re.compile(r"^classification_heads\.([^.]+)\.")


@dataclass(frozen=True)
class Family:
    """One Transformers class family a fairseq RoBERTa can become."""

    name: str
    model_type: str
    masked_lm_class: str
    classifier_class: str
    encoder_rows: tuple[tuple[str, str], ...]
    pre_norm: bool
    embedding_layer_norm: bool


ROBERTA = Family("roberta", "roberta", "RobertaForMaskedLM", "RobertaForSequenceClassification",
                 POST_NORM_ROWS, pre_norm=False, embedding_layer_norm=True)
XLM_ROBERTA = Family("xlm-roberta", "xlm-roberta", "XLMRobertaForMaskedLM", "XLMRobertaForSequenceClassification",
                     POST_NORM_ROWS, pre_norm=False, embedding_layer_norm=True)
CAMEMBERT = Family("camembert", "camembert", "CamembertForMaskedLM", "CamembertForSequenceClassification",
                   POST_NORM_ROWS, pre_norm=False, embedding_layer_norm=True)
XLM_ROBERTA_XL = Family("xlm-roberta-xl", "xlm-roberta-xl", "XLMRobertaXLForMaskedLM",
                        "XLMRobertaXLForSequenceClassification", PRE_NORM_ROWS, pre_norm=True,
                        embedding_layer_norm=False)

FAMILIES = {family.name: family for family in (ROBERTA, XLM_ROBERTA, CAMEMBERT, XLM_ROBERTA_XL)}


def _row_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    pattern = pattern.replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    pattern = pattern.replace(r"\{head\}", r"(?P<head>[^.]+)")
    return re.compile(f"^{pattern}$")


def compile_rows(rows: tuple[tuple[str, str], ...]) -> list[tuple[re.Pattern[str], str]]:
    return [(_row_regex(source), target) for source, target in rows]


def match_rows(name: str, rows: list[tuple[re.Pattern[str], str]]) -> list[str]:
    """The Transformers names a normalised fairseq name is written to (none if no row matches)."""
    targets = []
    for pattern, target in rows:
        found = pattern.match(name)
        if found:
            fields = {key: value for key, value in found.groupdict().items() if value is not None}
            targets.append(target.format(**fields))
    return targets
