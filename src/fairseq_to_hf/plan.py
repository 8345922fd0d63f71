"""From a checkpoint's metadata to a complete, checked conversion plan.

`make_plan` reads no tensor data. It normalises the fairseq keys, works out the model's dimensions from
the tensor shapes, picks the Transformers class, maps every tensor through the family's table and then
checks the result against the full list of tensors that class needs. Unmapped, missing and mis-shaped
tensors and unsupported options are collected and raised together, before anything is written.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .arch import families
from .arch.fairseq_keys import SourceTensor, normalise_state_dict, unsupported_layouts
from .arch.families import Family, compile_rows, match_rows
from .errors import ConversionError, ProblemList, UnsupportedModelError
from .reader.checkpoint import Checkpoint
from .reader.dictionary import BOS_ID, EOS_ID, PAD_ID, PADDING_SYMBOL_PREFIX, UNK_ID, Dictionary, labels_for_head
from .reader.tensors import LazyTensor

E = families.E
LM_HEAD = "lm"  # the --head value that selects the masked-LM head

# fairseq activation_fn -> Transformers hidden_act (same function on both sides).
ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new", "gelu_fast": "gelu_new", "relu": "relu",
               "tanh": "tanh", "linear": "linear"}
OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LAYER_NORM_EPS = 1e-5
MIN_POSITION_ROWS = 5  # the padding and offset rows, then <s>, one token, </s>
LAYER_INDEX = re.compile(rf"^{re.escape(E)}\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Dims:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    positions: int  # rows of the position table (max_positions + 2)


@dataclass(frozen=True)
class HeadInfo:
    name: str
    num_classes: int
    inner_dim: int


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the output: where it comes from and what it must look like."""

    target: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    source: LazyTensor | None  # None: written as zeros
    source_name: str
    # Alias rows appended after the source rows: a copy of row `copy_row`, or `fill` everywhere.
    extra_rows: int = 0
    copy_row: int | None = None
    fill: float | None = None

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


@dataclass
class ConversionPlan:
    family: Family
    architecture: str
    dims: Dims
    head: HeadInfo | None  # None: masked LM
    heads: list[HeadInfo]
    tensors: list[TensorPlan]
    config: dict[str, Any]
    dropped: dict[str, str]  # stored key -> why it is not in the output
    tied_checks: list[tuple[LazyTensor, LazyTensor, str]]
    key_generation: str
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class PlanOptions:
    head: str | None = None  # a classification head name, LM_HEAD, or None for automatic
    model_type: str | None = None  # override of the detected family
    dtype: str | None = None  # None keeps the source dtype
    label_dictionary: Dictionary | None = None
    strict_labels: bool = True  # a label dict that does not fit the head is an error, else a note
    alias_rows: int = 0  # tokenizer aliases of <unk> appended to the vocabulary (see tokenizer/vocab.py)


def key_generation(stored_keys: list[str]) -> str:
    """fairseq's key layout: 0.9 (`decoder.`), 0.10 (`emb_layer_norm`) or 0.12 (`layernorm_embedding`)."""
    if any(key.startswith("decoder.sentence_encoder.") for key in stored_keys):
        return "fairseq-0.9"
    if any(".emb_layer_norm." in key for key in stored_keys):
        return "fairseq-0.10"
    return "fairseq-0.12"


def detect_heads(source: dict[str, SourceTensor]) -> list[HeadInfo]:
    names = sorted({m.group(1) for key in source if (m := families.HEAD_NAME.match(key))})
    heads = []
    for name in names:
        dense = source.get(f"classification_heads.{name}.dense.weight")
        out = source.get(f"classification_heads.{name}.out_proj.weight")
        heads.append(HeadInfo(name, out.tensor.shape[0] if out else 0, dense.tensor.shape[0] if dense else 0))
    return heads


def dictionary_kind(dictionary: Dictionary) -> str:
    """What segmentation dict.txt was built from: GPT-2 BPE lists ids ("13"), sentencepiece lists pieces ("▁the")."""
    symbols = [s for s in dictionary.symbols[4:] if not s.startswith(PADDING_SYMBOL_PREFIX)]
    if not symbols:
        return "unknown"
    if sum(symbol.isdigit() for symbol in symbols) > 0.9 * len(symbols):
        return "gpt2"
    if sum(symbol.startswith("\u2581") for symbol in symbols) > 0.05 * len(symbols):
        return "sentencepiece"
    return "unknown"


def list_heads(checkpoint: Checkpoint) -> list[HeadInfo]:
    return detect_heads(normalise_state_dict(checkpoint.tensors)[0])


def describe_heads(heads: list[HeadInfo]) -> list[str]:
    return [f"{head.name}: {head.num_classes} output{'s' if head.num_classes != 1 else ''}"
            f"{' (regression)' if head.num_classes == 1 else ''}" for head in heads]


def make_plan(checkpoint: Checkpoint, dictionary: Dictionary, options: PlanOptions) -> ConversionPlan:
    path = checkpoint.path
    source, dropped, key_problems = normalise_state_dict(checkpoint.tensors)
    _require_roberta(checkpoint, source)
    _refuse_unsupported_layouts(checkpoint)
    hparams = checkpoint.hparams
    problems = ProblemList()
    for problem in key_problems:
        problems.add(problem)

    dims = _dims(source, hparams, problems)
    pre_norm = f"{E}.layer_norm.weight" in source
    embedding_norm = f"{E}.layernorm_embedding.weight" in source
    family = _family(pre_norm, embedding_norm, dictionary_kind(dictionary), options.model_type, path)
    heads = detect_heads(source)
    head = _select_head(heads, options.head, source, path)
    _check_options(hparams, head, source, problems)
    problems.raise_if_any(UnsupportedModelError, "cannot convert this checkpoint exactly", path=path)

    tie = not bool(hparams.get("untie_weights_roberta", False))
    rows = list(family.encoder_rows)
    if head is None:
        rows += families.LM_HEAD_ROWS
        if not tie:
            rows += families.UNTIED_LM_HEAD_ROWS
    else:
        rows += [(src.replace("{head}", head.name), dst) for src, dst in families.CLASSIFIER_ROWS]
    table = compile_rows(tuple(rows))

    out_dtype = OUTPUT_DTYPES[options.dtype] if options.dtype else None
    mapped: dict[str, TensorPlan] = {}
    tied_checks: list[tuple[LazyTensor, LazyTensor, str]] = []
    embed = source[f"{E}.embed_tokens.weight"]
    for name, item in source.items():
        if head is None and name == "encoder.lm_head.weight" and tie:
            if not item.tensor.same_data(embed.tensor):
                tied_checks.append((item.tensor, embed.tensor, f"{item.stored_as} == {embed.stored_as}"))
            dropped[item.stored_as] = "tied to the word embeddings, stored once"
            continue
        targets = match_rows(name, table)
        if not targets:
            reason = _not_in_output(name, head, family)
            if reason is None:
                problems.add(f"{item.stored_as} {list(item.tensor.shape)} is not part of any known layout")
            else:
                dropped[item.stored_as] = reason
            continue
        dtype = out_dtype if (out_dtype and item.tensor.dtype.is_floating_point) else item.tensor.dtype
        for target in targets:
            mapped[target] = TensorPlan(target, item.tensor.shape, dtype, item.tensor, item.stored_as)

    _append_alias_rows(mapped, options.alias_rows)
    float_dtype = out_dtype or embed.tensor.dtype
    token_types = "roberta.embeddings.token_type_embeddings.weight"
    mapped[token_types] = TensorPlan(token_types, (1, dims.hidden_size), float_dtype, None,
                                     "zeros (fairseq has no token types)")

    expected = expected_shapes(family, dims, head, tie, options.alias_rows)
    for target, shape in expected.items():
        planned = mapped.get(target)
        if planned is None:
            problems.add(f"missing: nothing in the checkpoint fills {target} {list(shape)}")
        elif tuple(planned.shape) != shape:
            problems.add(f"{planned.source_name} has shape {list(planned.shape)}, expected {list(shape)}")
    for target in sorted(set(mapped) - set(expected)):
        problems.add(f"{mapped[target].source_name} maps to {target}, which the model does not have")
    if dims.vocab_size < len(dictionary):
        problems.add(
            f"dict.txt gives {len(dictionary)} symbols (4 specials + {dictionary.file_symbol_count} lines) "
            f"but the embedding has only {dims.vocab_size} rows: it is not this model's dictionary"
        )
    problems.raise_if_any(ConversionError, "the checkpoint does not fit the target layout", path=path)

    plan = ConversionPlan(
        family=family,
        architecture=family.masked_lm_class if head is None else family.classifier_class,
        dims=dims,
        head=head,
        heads=heads,
        tensors=[mapped[target] for target in expected],
        config={},
        dropped=dropped,
        tied_checks=tied_checks,
        key_generation=key_generation(list(checkpoint.tensors)),
    )
    if dims.vocab_size > len(dictionary) + 1:
        plan.notes.append(
            f"the embedding has {dims.vocab_size} rows, {dims.vocab_size - len(dictionary) - 1} more than "
            "dict.txt + <mask>; the extra rows are kept"
        )
    labels = None
    if head is not None and head.num_classes > 1 and options.label_dictionary is not None:
        try:
            labels = labels_for_head(options.label_dictionary, head.num_classes)
        except ConversionError as error:
            if options.strict_labels:
                raise
            plan.notes.append(f"labels not taken from the label dict: {error.message}")
    plan.config = build_config(plan, hparams, tie, float_dtype, labels, options.alias_rows)
    return plan


# The MLM bias of alias rows: far below any real logit, so they get no probability, yet finite in float16.
ALIAS_LOGIT_BIAS = -30000.0
_ALIAS_ROWS = {
    "roberta.embeddings.word_embeddings.weight": {"copy_row": UNK_ID},
    "lm_head.decoder.weight": {"copy_row": UNK_ID},
    "lm_head.bias": {"fill": ALIAS_LOGIT_BIAS},
    "lm_head.decoder.bias": {"fill": ALIAS_LOGIT_BIAS},
}


def _append_alias_rows(mapped: dict[str, TensorPlan], alias_rows: int) -> None:
    """Alias ids embed as <unk> and are never predicted, so the model computes what fairseq computes."""
    if not alias_rows:
        return
    for target, how in _ALIAS_ROWS.items():
        planned = mapped.get(target)
        if planned is not None:
            mapped[target] = replace(planned, shape=(planned.shape[0] + alias_rows, *planned.shape[1:]),
                                     extra_rows=alias_rows, **how)


def _require_roberta(checkpoint: Checkpoint, source: dict[str, SourceTensor]) -> None:
    if f"{E}.embed_tokens.weight" in source:
        return
    arch = checkpoint.hparams.get("arch") or checkpoint.hparams.get("_name") or "unknown"
    has_decoder = any(key.startswith("decoder.layers.") for key in checkpoint.tensors)
    kind = "an encoder-decoder model (translation transformer, BART, ...)" if has_decoder else "not a RoBERTa encoder"
    raise UnsupportedModelError(
        f"is a fairseq checkpoint of architecture {arch!r}, {kind}; this tool converts RoBERTa-family "
        "encoders (no encoder.sentence_encoder.embed_tokens.weight here)",
        path=checkpoint.path,
    )


def _refuse_unsupported_layouts(checkpoint: Checkpoint) -> None:
    variants = unsupported_layouts(list(checkpoint.tensors))
    if variants:
        arch = checkpoint.hparams.get("arch") or checkpoint.hparams.get("_name")
        raise UnsupportedModelError(
            f"uses {', '.join(variants)}{f' (arch {arch!r})' if arch else ''}, which no Transformers RoBERTa class "
            "has; nothing was converted",
            path=checkpoint.path,
            details=[f"{variant}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                     for variant, keys in variants.items()],
        )


def _dims(source: dict[str, SourceTensor], hparams: dict[str, Any], problems: ProblemList) -> Dims:
    def shape(name: str) -> tuple[int, ...]:
        item = source.get(name)
        return item.tensor.shape if item else ()

    vocab_size, hidden = (shape(f"{E}.embed_tokens.weight") + (0, 0))[:2]
    layers = sorted({int(m.group(1)) for key in source if (m := LAYER_INDEX.match(key))})
    if not layers:
        problems.add(f"no encoder layers ({E}.layers.*): there is no model to convert")
    elif layers != list(range(len(layers))):
        problems.add(f"encoder layers are numbered {layers}, not 0..{len(layers) - 1}")
    positions = shape(f"{E}.embed_positions.weight")
    if not positions:
        problems.add("no learned position table (encoder.sentence_encoder.embed_positions.weight): "
                     "sinusoidal or absent positions have no Transformers equivalent")
    elif positions[0] < MIN_POSITION_ROWS:
        problems.add(f"the position table has {positions[0]} rows; fairseq's has max_positions + 2 (pads and the "
                     f"offset take two), so at least {MIN_POSITION_ROWS} to hold <s>, a token and </s>")
    # The configured size if some layer has it, else the layers' majority: a damaged layer is then
    # reported as such rather than blamed on all the others.
    ffn_sizes = Counter(shape(f"{E}.layers.{i}.fc1.weight")[:1] for i in layers)
    ffn_dim = hparams.get("encoder_ffn_embed_dim")
    configured = (ffn_dim,) if isinstance(ffn_dim, int) and not isinstance(ffn_dim, bool) else ()
    ffn = configured if configured in ffn_sizes else max(ffn_sizes, key=ffn_sizes.__getitem__, default=())
    heads = hparams.get("encoder_attention_heads")
    if not isinstance(heads, int) or heads <= 0:
        heads = max(hidden // 64, 1)  # RoBERTa's convention when the checkpoint does not say
    if hidden % heads:
        problems.add(f"hidden size {hidden} does not divide into {heads} attention heads")
    return Dims(vocab_size, hidden, len(layers), heads, ffn[0] if ffn else 0, positions[0] if positions else 0)


def _family(pre_norm: bool, embedding_norm: bool, vocabulary: str, requested: str | None, path: Path) -> Family:
    """The Transformers family: the layout decides pre-norm (XL) or not, the vocabulary RoBERTa or XLM-R."""
    if pre_norm and embedding_norm:
        raise UnsupportedModelError(
            "is pre-norm with an embedding LayerNorm; no Transformers class has that layout", path=path
        )
    if not pre_norm and not embedding_norm:
        raise UnsupportedModelError(
            "is post-norm without an embedding LayerNorm; no Transformers class has that layout", path=path
        )
    if pre_norm:
        detected = families.XLM_ROBERTA_XL
    else:
        detected = families.XLM_ROBERTA if vocabulary == "sentencepiece" else families.ROBERTA
    if requested is None:
        return detected
    family = families.FAMILIES.get(requested)
    if family is None:
        raise ConversionError(f"unknown --model-type {requested!r}; choose from {', '.join(families.FAMILIES)}")
    if family.pre_norm != pre_norm:
        layout = "pre-norm" if pre_norm else "post-norm"
        raise ConversionError(
            f"--model-type {requested} contradicts the checkpoint: it is {layout}, which only "
            f"{detected.model_type}-layout classes reproduce", path=path,
        )
    if family in (families.XLM_ROBERTA, families.CAMEMBERT) and vocabulary == "gpt2":
        raise ConversionError(
            f"--model-type {requested} contradicts the dictionary: {family.model_type} models use a sentencepiece "
            "vocabulary, and this dict.txt lists GPT-2 BPE ids", path=path,
        )
    return family


def _select_head(heads: list[HeadInfo], requested: str | None, source: dict[str, SourceTensor],
                 path: Path) -> HeadInfo | None:
    has_lm_head = "encoder.lm_head.dense.weight" in source
    choices = [*describe_heads(heads), *([f"{LM_HEAD}: the masked-LM head"] if has_lm_head else [])]
    if requested == LM_HEAD:
        if not has_lm_head:
            raise ConversionError("has no masked-LM head (encoder.lm_head.*)", path=path,
                                  hint="choose a classification head with --head", details=choices)
        return None
    if requested is not None:
        for head in heads:
            if head.name == requested:
                return head
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


def _check_options(hparams: dict[str, Any], head: HeadInfo | None,
                   source: dict[str, SourceTensor], problems: ProblemList) -> None:
    """fairseq options that change what the model computes, checked against what the target can do."""
    activation = hparams.get("activation_fn", "gelu")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        problems.add(f"activation_fn {activation!r:.80} has no Transformers equivalent")
    elif head is None and activation != "gelu":
        problems.add(
            f"activation_fn is {activation!r}: the encoder converts exactly, but Transformers' masked-LM head "
            "always applies exact gelu; convert a classification head with --head NAME instead"
        )
    if hparams.get("no_scale_embedding", True) is False:
        problems.add("no_scale_embedding is False: fairseq scales token embeddings by sqrt(dim), Transformers does not")
    if hparams.get("encoder_layers_to_keep"):
        problems.add(f"encoder_layers_to_keep={hparams['encoder_layers_to_keep']!r} (LayerDrop pruning) is not supported")
    if hparams.get("adaptive_input"):
        problems.add("adaptive_input embeddings have no Transformers equivalent")
    if head is not None:
        pooler = hparams.get("pooler_activation_fn", "tanh")
        if pooler != "tanh":
            problems.add(f"pooler_activation_fn is {pooler!r}; Transformers' classification head always uses tanh")
        if head.inner_dim and head.inner_dim != int(source[f"{E}.embed_tokens.weight"].tensor.shape[1]):
            problems.add(f"head {head.name!r} has inner dimension {head.inner_dim}, Transformers' head "
                         "needs the hidden size")
        if f"classification_heads.{head.name}.out_proj.weight_orig" in source:
            problems.add(f"head {head.name!r} uses spectral normalisation, which Transformers does not express")


def _not_in_output(name: str, head: HeadInfo | None, family: Family) -> str | None:
    """Why a known fairseq tensor is left out of this output, or None if it is unknown."""
    if name.startswith(families.LM_HEAD_PREFIX) and head is not None:
        return f"masked-LM head, not part of {family.classifier_class}"
    found = families.HEAD_NAME.match(name)
    if found and (head is None or found.group(1) != head.name):
        return f"classification head {found.group(1)!r}, not the one converted"
    return None


def expected_shapes(family: Family, dims: Dims, head: HeadInfo | None, tie: bool,
                    alias_rows: int = 0) -> dict[str, tuple[int, ...]]:
    """Every tensor the Transformers model needs from us, in writing order, with its shape."""
    h, f = dims.hidden_size, dims.ffn_size
    vocab = dims.vocab_size + alias_rows
    out: dict[str, tuple[int, ...]] = {
        "roberta.embeddings.word_embeddings.weight": (vocab, h),
        "roberta.embeddings.position_embeddings.weight": (dims.positions, h),
        "roberta.embeddings.token_type_embeddings.weight": (1, h),
    }
    if family.embedding_layer_norm:
        out.update({"roberta.embeddings.LayerNorm.weight": (h,), "roberta.embeddings.LayerNorm.bias": (h,)})
    norm_rows = [target for source, target in family.encoder_rows if "{i}" in source and "layer_norm" in source]
    for i in range(dims.num_layers):
        prefix = f"roberta.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            out[f"{prefix}.attention.self.{name}.weight"] = (h, h)
            out[f"{prefix}.attention.self.{name}.bias"] = (h,)
        out[f"{prefix}.attention.output.dense.weight"] = (h, h)
        out[f"{prefix}.attention.output.dense.bias"] = (h,)
        out[f"{prefix}.intermediate.dense.weight"] = (f, h)
        out[f"{prefix}.intermediate.dense.bias"] = (f,)
        out[f"{prefix}.output.dense.weight"] = (h, f)
        out[f"{prefix}.output.dense.bias"] = (h,)
        for template in norm_rows:
            for part in ("weight", "bias"):
                out[template.format(i=i, p=part)] = (h,)
    if family.pre_norm:
        out.update({"roberta.encoder.LayerNorm.weight": (h,), "roberta.encoder.LayerNorm.bias": (h,)})
    if head is None:
        out.update({
            "lm_head.dense.weight": (h, h), "lm_head.dense.bias": (h,),
            "lm_head.layer_norm.weight": (h,), "lm_head.layer_norm.bias": (h,),
            "lm_head.bias": (vocab,),
        })
        if not tie:
            out["lm_head.decoder.weight"] = (vocab, h)
            out["lm_head.decoder.bias"] = (vocab,)
    else:
        out.update({
            "classifier.dense.weight": (h, h), "classifier.dense.bias": (h,),
            "classifier.out_proj.weight": (head.num_classes, h), "classifier.out_proj.bias": (head.num_classes,),
        })
    return out


def _probability(hparams: dict[str, Any], name: str, default: float) -> float:
    """Dropout does not change inference: a value of the wrong type falls back to the default."""
    value = hparams.get(name, default)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def build_config(plan: ConversionPlan, hparams: dict[str, Any], tie: bool, dtype: torch.dtype,
                 labels: list[str] | None, alias_rows: int = 0) -> dict[str, Any]:
    dims = plan.dims
    config: dict[str, Any] = {
        "architectures": [plan.architecture],
        "model_type": plan.family.model_type,
        "vocab_size": dims.vocab_size + alias_rows,
        "hidden_size": dims.hidden_size,
        "num_hidden_layers": dims.num_layers,
        "num_attention_heads": dims.num_heads,
        "intermediate_size": dims.ffn_size,
        "hidden_act": ACTIVATIONS[hparams.get("activation_fn", "gelu")],
        "hidden_dropout_prob": _probability(hparams, "dropout", 0.1),
        "attention_probs_dropout_prob": _probability(hparams, "attention_dropout", 0.1),
        "max_position_embeddings": dims.positions,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": LAYER_NORM_EPS,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": tie,
        "dtype": str(dtype).removeprefix("torch."),
    }
    head = plan.head
    if head is not None:
        config["classifier_dropout"] = _probability(hparams, "pooler_dropout", 0.0)
        config["num_labels"] = head.num_classes
        if head.num_classes == 1:
            config["problem_type"] = "regression"
            names = ["LABEL_0"]
        else:
            config["problem_type"] = "single_label_classification"
            names = labels if labels else [f"LABEL_{i}" for i in range(head.num_classes)]
        config["id2label"] = {str(i): name for i, name in enumerate(names)}
        config["label2id"] = {name: i for i, name in enumerate(names)}
    return config
