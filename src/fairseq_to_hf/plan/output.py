"""One output of an analysed checkpoint (plan/source.py), planned once and checked before anything is written.

`make_plan` reads no tensor data. It picks the output's class (masked LM or one classification head),
maps every tensor through the family's rows and checks the result against the full list of tensors the
class needs, with their shapes. Unmapped, missing and mis-shaped tensors and unsupported options are
raised together, with the problems the analysis found.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..errors import ConversionError, ProblemList, UnsupportedModelError
from ..hparams import HyperParameters
from ..reader.dictionary import UNK_ID, Dictionary, labels_for_head
from ..reader.tensors import LazyTensor
from . import families
from .config import ACTIVATIONS, OUTPUT_DTYPE_NAMES, build_config
from .families import LM_HEAD, Family, compile_rows, match_rows
from .positions import DESCRIPTIONS as POSITION_DESCRIPTIONS, LEARNED
from .source import Dims, HeadInfo, SourceModel, describe_heads

E = families.E
OUTPUT_DTYPES = {name: getattr(torch, name) for name in OUTPUT_DTYPE_NAMES}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the output: where it comes from and what it must look like."""

    target: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    source: LazyTensor | None  # None: written as zeros, or as `computed` says
    source_name: str
    # Alias rows appended after the source rows: a copy of row `copy_row`, or `fill` everywhere.
    extra_rows: int = 0
    copy_row: int | None = None
    fill: float | None = None
    computed: str | None = None  # a position table fairseq computes (plan/positions.py kind)

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


@dataclass
class ConversionPlan:
    """One output folder: its class, every tensor in order, its config; what the source says is `model`."""

    model: SourceModel
    architecture: str
    head: HeadInfo | None  # None: masked LM
    tensors: list[TensorPlan]
    config: dict[str, Any]
    dropped: dict[str, str]  # stored key -> why it is not in the output
    tied_checks: list[tuple[LazyTensor, LazyTensor, str]]
    notes: list[str] = field(default_factory=list)

    @property
    def family(self) -> Family:
        return self.model.family

    @property
    def dims(self) -> Dims:
        return self.model.dims

    @property
    def hyper_parameters(self) -> HyperParameters:
        return self.model.hyper_parameters

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class OutputRequest:
    """Which output of the checkpoint to plan, and how."""

    head: str | None = None  # a classification head name, LM_HEAD, or None for automatic
    dtype: str | None = None  # None keeps the source dtype
    label_dictionary: Dictionary | None = None
    strict_labels: bool = True  # a label dict that does not fit the head is an error, else a note
    default_language: str | None = None  # X-MOD: the language of inputs given none (fairseq: en_XX)


def make_plan(model: SourceModel, request: OutputRequest, *, extra_vocab_rows: int = 0) -> ConversionPlan:
    """The plan of one output. `extra_vocab_rows`: tokenizer ids beyond the embedding (aliases of <unk>,
    see tokenizer/vocab.py), appended to the word embeddings and the LM head."""
    path, source, family = model.path, model.tensors, model.family
    if request.default_language is not None and not model.dims.languages:
        raise ConversionError(f"has no language adapters: --default-language {request.default_language} "
                              "applies to X-MOD models only", path=path, hint="drop --default-language")
    head = _select_head(model, request.head)
    model.hyper_parameters.require(classifier=head is not None, path=path)
    hparams = model.hyper_parameters.values
    problems = ProblemList()
    for problem in model.problems:
        problems.add(problem)
    _check_options(hparams, head, model, problems)
    problems.raise_if_any(UnsupportedModelError, "cannot convert this checkpoint exactly", path=path)

    rows = _rows(model, head)
    table = compile_rows(rows)
    expected = families.expand_rows(rows, dimension_sizes(model.dims, head, extra_vocab_rows),
                                    model.dims.num_layers, model.dims.languages)

    out_dtype = OUTPUT_DTYPES[request.dtype] if request.dtype else None
    dropped = dict(model.source.dropped)
    mapped: dict[str, TensorPlan] = {}
    tied_checks: list[tuple[LazyTensor, LazyTensor, str]] = []
    embed = source[f"{E}.embed_tokens.weight"]
    for name, item in source.items():
        if head is None and name == "encoder.lm_head.weight" and model.tied:
            if not item.tensor.same_data(embed.tensor):
                tied_checks.append((item.tensor, embed.tensor, f"{item.stored_as} == {embed.stored_as}"))
            dropped[item.stored_as] = "tied to the word embeddings, stored once"
            continue
        if name in model.left_out:
            dropped[item.stored_as] = model.left_out[name]
            continue
        targets = match_rows(name, table)
        if not targets:
            reason = _not_in_output(name, head, family)
            if reason is None:
                problems.add(f"{item.stored_as} {list(item.tensor.shape)} is not part of any known layout")
            else:
                dropped[item.stored_as] = reason
            continue
        if not item.tensor.dtype.is_floating_point:
            problems.add(f"{item.stored_as} holds {str(item.tensor.dtype).removeprefix('torch.')} values; "
                         "every weight of the model is floating point")
        dtype = out_dtype or item.tensor.dtype
        for target in targets:
            mapped[target] = TensorPlan(target, item.tensor.shape, dtype, item.tensor, item.stored_as)

    _append_alias_rows(mapped, extra_vocab_rows, family.base)
    float_dtype = out_dtype or embed.tensor.dtype
    position_kind = model.dims.position_kind
    for target, (source_name, shape) in expected.items():
        if source_name is None:
            mapped[target] = TensorPlan(target, shape, float_dtype, None, "zeros (fairseq has no token types)")
        elif source_name == f"{E}.embed_positions.weight" and position_kind != LEARNED:
            # fairseq computes the table in float32 even for a half-precision checkpoint, which it loads
            # into a float32 model: kept in float32 unless --dtype casts.
            mapped[target] = TensorPlan(target, shape, out_dtype or torch.float32, None,
                                        POSITION_DESCRIPTIONS[position_kind], computed=position_kind)

    for target, (_, shape) in expected.items():
        planned = mapped.get(target)
        if planned is None:
            problems.add(f"missing: nothing in the checkpoint fills {target} {list(shape)}")
        elif tuple(planned.shape) != shape:
            problems.add(f"{planned.source_name} has shape {list(planned.shape)}, expected {list(shape)}")
    for target in sorted(set(mapped) - set(expected)):
        problems.add(f"{mapped[target].source_name} maps to {target}, which the model does not have")
    problems.raise_if_any(ConversionError, "the checkpoint does not fit the target layout", path=path)

    architecture = family.masked_lm_class if head is None else family.classifier_class
    notes = list(model.notes)
    labels = None
    if request.strict_labels and request.label_dictionary is not None and (head is None or head.num_classes < 2):
        what = "the masked-LM head" if head is None else f"head {head.name}, a regression head"
        raise ConversionError(f"--label-dict was given, but the output is {what}, which has no labels",
                              path=path, hint="drop --label-dict, or name a classification head with --head")
    if head is not None and head.num_classes > 1 and request.label_dictionary is not None:
        try:
            labels = labels_for_head(request.label_dictionary, head.num_classes)
        except ConversionError as error:
            if request.strict_labels:
                raise
            notes.append(f"labels not taken from the label dict: {error.message}")
    elif head is not None and head.num_classes > 1:
        notes.append(f"no label dict (label/dict.txt), so the labels are LABEL_0..LABEL_{head.num_classes - 1}; "
                     "pass --label-dict for fairseq's class names")
    config = build_config(model, architecture, head, float_dtype, labels, extra_vocab_rows)
    if family.config_fields:
        config.update(family.config_fields(model, request.default_language))
    return ConversionPlan(model, architecture, head, [mapped[target] for target in expected], config, dropped,
                          tied_checks, notes)


def dimension_sizes(dims: Dims, head: HeadInfo | None, extra_vocab_rows: int) -> dict[str, int]:
    """The size of each dimension name the families' rows use in their shapes."""
    return {"vocab": dims.vocab_size + extra_vocab_rows, "hidden": dims.hidden_size, "ffn": dims.ffn_size,
            "positions": dims.positions, "one": 1, "adapter": dims.adapter_size,
            "classes": head.num_classes if head else 0}


def _rows(model: SourceModel, head: HeadInfo | None) -> tuple[families.Row, ...]:
    """The rows of this output: the family's encoder for the layout, then the head's."""
    rows = list(model.family.encoder_rows(model.layout))
    if head is None:
        rows += families.LM_HEAD_ROWS
        if not model.tied:
            rows += families.UNTIED_LM_HEAD_ROWS
    else:
        rows += [(src.replace("{head}", head.name), dst, shape) for src, dst, shape in families.CLASSIFIER_ROWS]
    return tuple(rows)


# The MLM bias of alias rows: far below any real logit, so they get no probability, yet finite in float16.
ALIAS_LOGIT_BIAS = -30000.0
_ALIAS_ROWS = {
    "roberta.embeddings.word_embeddings.weight": {"copy_row": UNK_ID},
    "lm_head.decoder.weight": {"copy_row": UNK_ID},
    "lm_head.bias": {"fill": ALIAS_LOGIT_BIAS},
    "lm_head.decoder.bias": {"fill": ALIAS_LOGIT_BIAS},
}


def _append_alias_rows(mapped: dict[str, TensorPlan], alias_rows: int, base: str) -> None:
    """Alias ids embed as <unk> and are never predicted, so the model computes what fairseq computes."""
    if not alias_rows:
        return
    for target, how in _ALIAS_ROWS.items():
        planned = mapped.get(target.replace("roberta.", f"{base}.", 1))
        if planned is not None:
            mapped[planned.target] = replace(planned, shape=(planned.shape[0] + alias_rows, *planned.shape[1:]),
                                     extra_rows=alias_rows, **how)


def _select_head(model: SourceModel, requested: str | None) -> HeadInfo | None:
    heads, has_lm_head, path = model.heads, model.source.has_lm_head, model.path
    choices = [*describe_heads(heads), *([f"{LM_HEAD}: the masked-LM head"] if has_lm_head else [])]
    # A classification head's own name wins, "lm" too (--all-heads asks for every head by its name).
    named = next((head for head in heads if head.name == requested), None)
    if named is not None:
        return named
    if requested == LM_HEAD:
        if not has_lm_head:
            raise ConversionError("has no masked-LM head (encoder.lm_head.*)", path=path,
                                  hint="choose a classification head with --head", details=choices)
        return None
    if requested is not None:
        raise ConversionError(f"has no head named {requested!r}", path=path,
                              hint="choose one of the heads below with --head", details=choices)
    if len(heads) == 1:
        return heads[0]
    if not heads:
        if not has_lm_head:
            raise UnsupportedModelError("has neither a masked-LM head nor a classification head", path=path)
        return None
    raise ConversionError(
        f"has {len(heads)} classification heads", path=path,
        hint="pick one with --head NAME (or --head lm for the masked-LM head), or write all with --all-heads",
        details=choices,
    )


def _check_options(hparams: dict[str, Any], head: HeadInfo | None, model: SourceModel, problems: ProblemList) -> None:
    """fairseq options that change what the model computes, checked against what the target can do."""
    activation = hparams["activation_fn"]
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        problems.add(f"activation_fn {activation!r:.80} has no Transformers equivalent")
    elif head is None and activation != "gelu":
        problems.add(
            f"activation_fn is {activation!r}: the encoder converts exactly, but Transformers' masked-LM head "
            "always applies exact gelu; "
            + ("convert a classification head with --head NAME instead" if model.heads else
               "this checkpoint has no classification head that could be converted instead")
        )
    if hparams.get("no_scale_embedding", True) is False:
        problems.add("no_scale_embedding is False: fairseq scales token embeddings by sqrt(dim), Transformers does not")
    if hparams.get("adaptive_input"):
        problems.add("adaptive_input embeddings have no Transformers equivalent")
    if head is not None:
        pooler = hparams["pooler_activation_fn"]
        if pooler != "tanh":
            problems.add(f"pooler_activation_fn is {pooler!r}; Transformers' classification head always uses tanh")
        if head.inner_dim and head.inner_dim != model.dims.hidden_size:
            problems.add(f"head {head.name!r} has inner dimension {head.inner_dim}, Transformers' head "
                         "needs the hidden size")
        if f"classification_heads.{head.name}.out_proj.weight_orig" in model.tensors:
            problems.add(f"head {head.name!r} uses spectral normalisation, which Transformers does not express")


def _not_in_output(name: str, head: HeadInfo | None, family: Family) -> str | None:
    """Why a known fairseq tensor is left out of this output, or None if it is unknown."""
    if name.startswith(families.LM_HEAD_PREFIX) and head is not None:
        return f"masked-LM head, not part of {family.classifier_class}"
    found = families.HEAD_NAME.match(name)
    if found and (head is None or found.group(1) != head.name):
        return f"classification head {found.group(1)!r}, not the one converted"
    return None
