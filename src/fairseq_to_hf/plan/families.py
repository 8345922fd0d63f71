"""Target layouts: which Transformers class family a fairseq RoBERTa becomes, declared once per family.

A family (`Family`, at the end) declares how it is detected (its layouts, and the dict.txt kind where
two families share a layout), its rows for each layout (normalised fairseq name -> Transformers name,
with the shape the target needs), its classes and the config fields only it has. The rows are the whole
truth for the family: a fairseq tensor that no row matches is reported, and a Transformers tensor that
no fairseq tensor fills is missing.

In a row, `{i}` stands for a layer index, `{p}` for `weight` or `bias`, `{lang}` for an X-MOD adapter
language, `{base}` for the family's base-model prefix. A shape lists dimension names (`vocab`, `hidden`,
`ffn`, `positions`, `adapter`, `classes`, `one`: plan/output.py gives their sizes); it is the weight's
shape, and a bias has the first dimension only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConversionError

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
_ADAPTER_LAYER_NORM_ROWS: tuple[Row, ...] = (
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

LM_HEAD = "lm"  # the --head value that selects the masked-LM head
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
    adapter_layer_norm: bool = False  # the adapters have a LayerNorm of their own

    def describe(self) -> str:
        described = (f"{'pre-norm' if self.pre_norm else 'post-norm'} "
                     f"{'with' if self.embedding_layer_norm else 'without'} an embedding LayerNorm")
        if self.adapters:
            described += ", with X-MOD language adapters" + (" and their LayerNorm" if self.adapter_layer_norm else "")
        return described


@dataclass(frozen=True)
class Family:
    """One Transformers class family a fairseq RoBERTa can become: everything the tool knows about it."""

    name: str  # the --model-type value
    model_type: str
    masked_lm_class: str
    classifier_class: str
    base: str  # the base model's prefix in the state dict
    # The fairseq layouts the classes reproduce exactly, each with its encoder rows.
    rows_by_layout: tuple[tuple[Layout, tuple[Row, ...]], ...]
    # Detected without --model-type for these dict.txt kinds (None: any; empty: only when asked for).
    detected_for: tuple[str | None, ...] = (None,)
    sentencepiece_only: bool = False  # --model-type refuses it for a GPT-2 BPE dict.txt
    # Config fields only this family has: f(model: plan.source.SourceModel, default_language) -> fields.
    config_fields: Callable[[Any, str | None], dict[str, Any]] | None = None

    @property
    def layouts(self) -> tuple[Layout, ...]:
        return tuple(layout for layout, _ in self.rows_by_layout)

    def encoder_rows(self, layout: Layout) -> tuple[Row, ...]:
        rows = dict(self.rows_by_layout)[layout]
        return tuple((source, target.replace("{base}", self.base), shape) for source, target, shape in rows)


def strip_language(language: str) -> str:
    """The adapter fairseq runs for a language code: it drops `_rom` and `_zaw` (romanised, Zawgyi)."""
    return language.replace("_rom", "").replace("_zaw", "")


# How X-MOD's adapters are wired, which no tensor shows: from the checkpoint's cfg, or its arch's defaults.
XMOD_WIRING = ("adapter_reuse_layer_norm", "ln_before_adapter")
DEFAULT_LANGUAGE = "en_XX"  # what fairseq's lang_adapter runs when no language is given


def xmod_config(model: Any, default_language: str | None) -> dict[str, Any]:
    """XmodConfig's adapter fields, from the adapters' tensors and the checkpoint's cfg."""
    languages = list(model.dims.languages)
    if default_language is None:
        if DEFAULT_LANGUAGE not in languages:
            raise ConversionError(f"is an X-MOD model without {DEFAULT_LANGUAGE}, fairseq's default language; "
                                  f"name one with --default-language (one of {', '.join(languages)})",
                                  path=model.path)
        default_language = DEFAULT_LANGUAGE
    if strip_language(default_language) not in languages:
        raise ConversionError(f"has no adapter for --default-language {default_language}; "
                              f"choose one of {', '.join(languages)}", path=model.path)
    hparams = model.hyper_parameters.values
    unknown = [name for name in XMOD_WIRING if not isinstance(hparams.get(name), bool)]
    if unknown:
        raise ConversionError(f"is an X-MOD model whose {model.hyper_parameters.source} do not give "
                              f"{' and '.join(unknown)}, and its arch is not one whose defaults are known "
                              "(xmod_base*, xmod_large_prenorm)", path=model.path,
                              hint="the adapters' wiring is only in the checkpoint fairseq saved (its cfg); "
                                   "convert that file, not a state dict saved from it")
    return {
        "languages": languages,
        "default_language": strip_language(default_language),
        "pre_norm": model.layout.pre_norm,
        "adapter_reduction_factor": model.dims.hidden_size // model.dims.adapter_size,
        "adapter_layer_norm": model.layout.adapter_layer_norm,  # fairseq makes it exactly when its cfg asks
        **{name: hparams[name] for name in XMOD_WIRING},
    }


_POST = Layout(pre_norm=False, embedding_layer_norm=True, adapters=False)
_PRE_XL = Layout(pre_norm=True, embedding_layer_norm=False, adapters=False)
_PRE_LN = Layout(pre_norm=True, embedding_layer_norm=True, adapters=False)
# X-MOD's adapters with or without their LayerNorm (xmod_base* or xmod_large_prenorm's defaults).
_XMOD_POST, _XMOD_POST_ADAPTER_LN = (Layout(pre_norm=False, embedding_layer_norm=True, adapters=True,
                                            adapter_layer_norm=norm) for norm in (False, True))
_XMOD_PRE, _XMOD_PRE_ADAPTER_LN = (Layout(pre_norm=True, embedding_layer_norm=True, adapters=True,
                                          adapter_layer_norm=norm) for norm in (False, True))

ROBERTA = Family("roberta", "roberta", "RobertaForMaskedLM", "RobertaForSequenceClassification", "roberta",
                 ((_POST, POST_NORM_ROWS),))
XLM_ROBERTA = Family("xlm-roberta", "xlm-roberta", "XLMRobertaForMaskedLM", "XLMRobertaForSequenceClassification",
                     "roberta", ((_POST, POST_NORM_ROWS),), detected_for=("sentencepiece",), sentencepiece_only=True)
CAMEMBERT = Family("camembert", "camembert", "CamembertForMaskedLM", "CamembertForSequenceClassification",
                   "roberta", ((_POST, POST_NORM_ROWS),), detected_for=("camembert",), sentencepiece_only=True)
XLM_ROBERTA_XL = Family("xlm-roberta-xl", "xlm-roberta-xl", "XLMRobertaXLForMaskedLM",
                        "XLMRobertaXLForSequenceClassification", "roberta", ((_PRE_XL, PRE_NORM_ROWS),))
ROBERTA_PRELAYERNORM = Family("roberta-prelayernorm", "roberta-prelayernorm", "RobertaPreLayerNormForMaskedLM",
                              "RobertaPreLayerNormForSequenceClassification", "roberta_prelayernorm",
                              ((_PRE_LN, PRE_LAYER_NORM_ROWS),))
XMOD = Family("xmod", "xmod", "XmodForMaskedLM", "XmodForSequenceClassification", "roberta",
              ((_XMOD_POST, XMOD_POST_NORM_ROWS), (_XMOD_PRE, XMOD_PRE_NORM_ROWS),
               (_XMOD_POST_ADAPTER_LN, (*XMOD_POST_NORM_ROWS, *_ADAPTER_LAYER_NORM_ROWS)),
               (_XMOD_PRE_ADAPTER_LN, (*XMOD_PRE_NORM_ROWS, *_ADAPTER_LAYER_NORM_ROWS))),
              config_fields=xmod_config)

FAMILIES = {family.name: family for family in
            (ROBERTA, XLM_ROBERTA, CAMEMBERT, XLM_ROBERTA_XL, ROBERTA_PRELAYERNORM, XMOD)}


def detect(layout: Layout, vocabulary: str) -> Family | None:
    """The family a checkpoint becomes without --model-type: one declared for its dict.txt kind first."""
    candidates = [family for family in FAMILIES.values() if layout in family.layouts]
    for wanted in (vocabulary, None):
        for family in candidates:
            if wanted in family.detected_for:
                return family
    return None


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
