"""Target layouts: which Transformers class family a fairseq RoBERTa becomes, declared once per family.

A family declares how it is detected (its `Layout`, and the vocabulary where two families share one),
its rows (normalised fairseq name -> Transformers name, with the shape the target needs), its classes
and the config fields only it has. The rows are the whole truth for the family: a fairseq tensor that
no row matches is reported, and a Transformers tensor that no fairseq tensor fills is missing.

In a row, `{i}` stands for a layer index, `{p}` for `weight` or `bias`, `{lang}` for an X-MOD adapter
language, `{base}` for the family's base-model prefix. A shape lists dimension names (see `DIMENSIONS`
in plan.py); it is the weight's shape, and a bias has the first dimension only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

E = "encoder.sentence_encoder"
L = f"{E}.layers.{{i}}"
LAYER_OUT = "{base}.encoder.layer.{i}"

Row = tuple[str | None, str, tuple[str, ...]]  # (fairseq name or None: written as zeros, target, shape)

_EMBEDDING_ROWS: tuple[Row, ...] = (
    (f"{E}.embed_tokens.weight", "{base}.embeddings.word_embeddings.weight", ("vocab", "hidden")),
    (f"{E}.embed_positions.weight", "{base}.embeddings.position_embeddings.weight", ("positions", "hidden")),
    (None, "{base}.embeddings.token_type_embeddings.weight", ("one", "hidden")),  # fairseq has no token types
)
_EMBEDDING_NORM: tuple[Row, ...] = (
    (f"{E}.layernorm_embedding.{{p}}", "{base}.embeddings.LayerNorm.{p}", ("hidden",)),
)
_BLOCK_ROWS: tuple[Row, ...] = (
    (f"{L}.self_attn.q_proj.{{p}}", f"{LAYER_OUT}.attention.self.query.{{p}}", ("hidden", "hidden")),
    (f"{L}.self_attn.k_proj.{{p}}", f"{LAYER_OUT}.attention.self.key.{{p}}", ("hidden", "hidden")),
    (f"{L}.self_attn.v_proj.{{p}}", f"{LAYER_OUT}.attention.self.value.{{p}}", ("hidden", "hidden")),
    (f"{L}.self_attn.out_proj.{{p}}", f"{LAYER_OUT}.attention.output.dense.{{p}}", ("hidden", "hidden")),
    (f"{L}.fc1.{{p}}", f"{LAYER_OUT}.intermediate.dense.{{p}}", ("ffn", "hidden")),
    (f"{L}.fc2.{{p}}", f"{LAYER_OUT}.output.dense.{{p}}", ("hidden", "ffn")),
)


def _norms(attention: str, ffn: str, final: str | None = None) -> tuple[Row, ...]:
    """Where a family keeps fairseq's per-layer LayerNorms (and the final one of a pre-norm encoder)."""
    rows: tuple[Row, ...] = (
        (f"{L}.self_attn_layer_norm.{{p}}", f"{LAYER_OUT}.{attention}.{{p}}", ("hidden",)),
        (f"{L}.final_layer_norm.{{p}}", f"{LAYER_OUT}.{ffn}.{{p}}", ("hidden",)),
    )
    if final:
        rows += ((f"{E}.layer_norm.{{p}}", f"{{base}}.{final}.{{p}}", ("hidden",)),)
    return rows


POST_NORM_ROWS = (*_EMBEDDING_ROWS, *_EMBEDDING_NORM, *_BLOCK_ROWS,
                  *_norms("attention.output.LayerNorm", "output.LayerNorm"))
# XLM-R XL/XXL: LayerNorm before each block, one after the last layer, none on the embeddings.
PRE_NORM_ROWS = (*_EMBEDDING_ROWS, *_BLOCK_ROWS,
                 *_norms("attention.self_attn_layer_norm", "LayerNorm", final="encoder.LayerNorm"))
# RobertaPreLayerNorm: pre-norm blocks and an embedding LayerNorm; the final LayerNorm is the model's own.
PRE_LAYER_NORM_ROWS = (*_EMBEDDING_ROWS, *_EMBEDDING_NORM, *_BLOCK_ROWS,
                       *_norms("attention.LayerNorm", "intermediate.LayerNorm", final="LayerNorm"))
# X-MOD: one bottleneck adapter per language after each FFN (fairseq's lang_adapter), optionally with its
# own LayerNorm; attention.output.LayerNorm and output.LayerNorm serve before or after their block.
_ADAPTER_ROWS: tuple[Row, ...] = (
    (f"{L}.adapter_modules.{{lang}}.fc1.{{p}}", f"{LAYER_OUT}.output.adapter_modules.{{lang}}.dense1.{{p}}",
     ("adapter", "hidden")),
    (f"{L}.adapter_modules.{{lang}}.fc2.{{p}}", f"{LAYER_OUT}.output.adapter_modules.{{lang}}.dense2.{{p}}",
     ("hidden", "adapter")),
)
ADAPTER_LAYER_NORM_ROWS: tuple[Row, ...] = (
    (f"{L}.adapter_layer_norm.{{p}}", f"{LAYER_OUT}.output.adapter_layer_norm.{{p}}", ("hidden",)),
)
XMOD_POST_NORM_ROWS = (*POST_NORM_ROWS, *_ADAPTER_ROWS)
XMOD_PRE_NORM_ROWS = (*_EMBEDDING_ROWS, *_EMBEDDING_NORM, *_BLOCK_ROWS,
                      *_norms("attention.output.LayerNorm", "output.LayerNorm", final="encoder.LayerNorm"),
                      *_ADAPTER_ROWS)

LM_HEAD_ROWS: tuple[Row, ...] = (
    ("encoder.lm_head.dense.{p}", "lm_head.dense.{p}", ("hidden", "hidden")),
    ("encoder.lm_head.layer_norm.{p}", "lm_head.layer_norm.{p}", ("hidden",)),
    ("encoder.lm_head.bias", "lm_head.bias", ("vocab",)),
)

# Untied, Transformers keeps the decoder's own weight and bias (tied, both are aliases it restores).
UNTIED_LM_HEAD_ROWS: tuple[Row, ...] = (
    ("encoder.lm_head.weight", "lm_head.decoder.weight", ("vocab", "hidden")),
    ("encoder.lm_head.bias", "lm_head.decoder.bias", ("vocab",)),
)

CLASSIFIER_ROWS: tuple[Row, ...] = (
    ("classification_heads.{head}.dense.{p}", "classifier.dense.{p}", ("hidden", "hidden")),
    ("classification_heads.{head}.out_proj.{p}", "classifier.out_proj.{p}", ("classes", "hidden")),
)

LM_HEAD_PREFIX = "encoder.lm_head."
HEAD_PREFIX = "classification_heads."
HEAD_NAME = re.compile(r"^classification_heads\.([^.]+)\.")
ADAPTER_NAME = re.compile(rf"^{re.escape(E)}\.layers\.\d+\.adapter_modules\.([^.]+)\.")


@dataclass(frozen=True)
class Layout:
    """What the tensors say about a model's shape of computation."""

    pre_norm: bool  # a final encoder LayerNorm: each block normalises its input
    embedding_layer_norm: bool
    adapters: bool  # X-MOD language adapters

    def describe(self) -> str:
        parts = ["pre-norm" if self.pre_norm else "post-norm",
                 "with" if self.embedding_layer_norm else "without", "an embedding LayerNorm"]
        return " ".join(parts) + (", with X-MOD language adapters" if self.adapters else "")


@dataclass(frozen=True)
class Family:
    """One Transformers class family a fairseq RoBERTa can become."""

    name: str  # the --model-type value
    model_type: str
    masked_lm_class: str
    classifier_class: str
    base: str  # the base model's prefix in the state dict
    layouts: tuple[Layout, ...]  # the fairseq layouts the classes reproduce exactly
    rows: tuple[Row, ...]  # encoder rows per layout, in the order of `layouts`
    adapters: bool = False  # the config carries X-MOD's adapter fields (plan.build_config)

    def encoder_rows(self, layout: Layout) -> tuple[Row, ...]:
        rows = self.rows[self.layouts.index(layout)]
        return tuple((source, target.replace("{base}", self.base), shape) for source, target, shape in rows)


_POST = Layout(pre_norm=False, embedding_layer_norm=True, adapters=False)
_PRE_XL = Layout(pre_norm=True, embedding_layer_norm=False, adapters=False)
_PRE_LN = Layout(pre_norm=True, embedding_layer_norm=True, adapters=False)
_XMOD_POST = Layout(pre_norm=False, embedding_layer_norm=True, adapters=True)
_XMOD_PRE = Layout(pre_norm=True, embedding_layer_norm=True, adapters=True)

ROBERTA = Family("roberta", "roberta", "RobertaForMaskedLM", "RobertaForSequenceClassification", "roberta",
                 (_POST,), (POST_NORM_ROWS,))
XLM_ROBERTA = Family("xlm-roberta", "xlm-roberta", "XLMRobertaForMaskedLM", "XLMRobertaForSequenceClassification",
                     "roberta", (_POST,), (POST_NORM_ROWS,))
CAMEMBERT = Family("camembert", "camembert", "CamembertForMaskedLM", "CamembertForSequenceClassification",
                   "roberta", (_POST,), (POST_NORM_ROWS,))
XLM_ROBERTA_XL = Family("xlm-roberta-xl", "xlm-roberta-xl", "XLMRobertaXLForMaskedLM",
                        "XLMRobertaXLForSequenceClassification", "roberta", (_PRE_XL,), (PRE_NORM_ROWS,))
ROBERTA_PRELAYERNORM = Family("roberta-prelayernorm", "roberta-prelayernorm", "RobertaPreLayerNormForMaskedLM",
                              "RobertaPreLayerNormForSequenceClassification", "roberta_prelayernorm",
                              (_PRE_LN,), (PRE_LAYER_NORM_ROWS,))
XMOD = Family("xmod", "xmod", "XmodForMaskedLM", "XmodForSequenceClassification", "roberta",
              (_XMOD_POST, _XMOD_PRE), (XMOD_POST_NORM_ROWS, XMOD_PRE_NORM_ROWS), adapters=True)

FAMILIES = {family.name: family for family in
            (ROBERTA, XLM_ROBERTA, CAMEMBERT, XLM_ROBERTA_XL, ROBERTA_PRELAYERNORM, XMOD)}

# (layout, dictionary kind or None for any) -> the family a checkpoint becomes without --model-type.
DETECTED: dict[tuple[Layout, str | None], Family] = {
    (_POST, "sentencepiece"): XLM_ROBERTA,
    (_POST, None): ROBERTA,
    (_PRE_XL, None): XLM_ROBERTA_XL,
    (_PRE_LN, None): ROBERTA_PRELAYERNORM,
    (_XMOD_POST, None): XMOD,
    (_XMOD_PRE, None): XMOD,
}


def detect(layout: Layout, vocabulary: str) -> Family | None:
    return DETECTED.get((layout, vocabulary)) or DETECTED.get((layout, None))


def _row_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    pattern = pattern.replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    pattern = pattern.replace(r"\{head\}", r"(?P<head>[^.]+)").replace(r"\{lang\}", r"(?P<lang>[^.]+)")
    return re.compile(f"^{pattern}$")


def compile_rows(rows: tuple[Row, ...]) -> list[tuple[re.Pattern[str], str]]:
    return [(_row_regex(source), target) for source, target, _ in rows if source is not None]


def match_rows(name: str, rows: list[tuple[re.Pattern[str], str]]) -> list[str]:
    """The Transformers names a normalised fairseq name is written to (none if no row matches)."""
    targets = []
    for pattern, target in rows:
        found = pattern.match(name)
        if found:
            fields = {key: value for key, value in found.groupdict().items() if value is not None}
            targets.append(target.format(**fields))
    return targets


def expand_rows(rows: tuple[Row, ...], sizes: dict[str, int], layers: int,
                languages: tuple[str, ...] = ()) -> dict[str, tuple[str | None, tuple[int, ...]]]:
    """Every target of `rows`, in order: target -> (fairseq name or None, shape)."""
    out: dict[str, tuple[str | None, tuple[int, ...]]] = {}
    for source, target, shape in rows:
        dims = tuple(sizes[name] for name in shape)
        for i in range(layers) if "{i}" in target else [None]:
            for lang in languages if "{lang}" in target else [None]:
                for part in ("weight", "bias") if "{p}" in target else [None]:
                    fields = {"i": i, "lang": lang, "p": part}
                    name = target.format(**fields)
                    out[name] = (source.format(**fields) if source else None,
                                 dims[:1] if part == "bias" else dims)
    return out
