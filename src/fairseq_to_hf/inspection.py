"""`fairseq-to-hf inspect`: what a checkpoint is and what `convert` would make of it, from metadata alone."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from .errors import ConversionError
from .hparams import SuppliedHyperParameters, arch_name
from .plan import (LM_HEAD, ConversionPlan, OutputRequest, SourceModel, analyse_source, dictionary_kind, make_plan,
                   normalise_source)
from .plan.families import ADAPTER_NAME
from .plan.positions import DESCRIPTIONS as POSITION_DESCRIPTIONS
from .reader.checkpoint import read_checkpoint
from .reader.dictionary import read_dictionary
from .reader.folder import find_source_files
from .tokenizer import TOKENIZER_FILES, TokenizerFiles, choose_kind, looked_for, prepare_tokenizer
from .shard_size import DEFAULT_MAX_SHARD_BYTES
from .writer import plan_shards, shard_file_names

def inspect_source(src: str | Path, *, checkpoint: str | Path | None = None, dictionary: str | Path | None = None,
                   default_language: str | None = None, hyper_parameters: SuppliedHyperParameters = SuppliedHyperParameters(),
                   **tokenizer_files: str | Path | None) -> dict[str, Any]:
    """Describes a fairseq model folder; reads the pickle and zip directory, never tensor data.

    `tokenizer_files`: paths by role of tokenizer.TOKENIZER_FILES (encoder_json=..., bpe_codes=...).
    """
    files = find_source_files(src, TOKENIZER_FILES, checkpoint=checkpoint, dictionary=dictionary, **tokenizer_files)
    source = read_checkpoint(files.checkpoint)
    token_dictionary = read_dictionary(files.dictionary)
    normalised = normalise_source(source)
    heads = normalised.heads

    by_dtype: dict[str, dict[str, int]] = defaultdict(lambda: {"parameters": 0, "bytes": 0})
    counted: dict[str, list] = defaultdict(list)  # storage key -> tensors counted
    for tensor in source.tensors.values():
        # A tied LM head is the embedding's tensor saved under a second name: its values exist once.
        if any(tensor.same_data(other) for other in counted[tensor.storage.key]):
            continue
        counted[tensor.storage.key].append(tensor)
        entry = by_dtype[str(tensor.dtype).removeprefix("torch.")]
        entry["parameters"] += tensor.numel
        entry["bytes"] += tensor.nbytes

    targets = [None] if not heads else [head.name for head in heads] + ([LM_HEAD] if normalised.has_lm_head else [])
    try:
        model: SourceModel | ConversionError = analyse_source(normalised, token_dictionary, supplied=hyper_parameters)
    except ConversionError as error:  # no output can be made: each says why
        model = error
    outputs = {target or "default": _would_produce(model, OutputRequest(head=target, default_language=default_language))
               for target in targets}
    if isinstance(model, SourceModel) and files.tokenizer.paths and not model.problems:
        try:  # convert refuses tokenizer files that cannot be this model's, whatever the output
            prepare_tokenizer(files.tokenizer, token_dictionary, model.dims.vocab_size, source.bpe)
        except ConversionError as error:
            outputs = {target: {"refused": error.render()} for target in outputs}

    description: dict[str, Any] = {
        "checkpoint": str(files.checkpoint),
        "checkpoint_format": source.format,
        "checkpoint_bytes": files.checkpoint.stat().st_size,
        "hyper_parameters_from": source.hparams_source,
        "arch": arch_name(source.hparams),
        "dictionary": {"path": str(files.dictionary), "symbols": len(token_dictionary),
                       "kind": dictionary_kind(token_dictionary)},
        "label_dictionary": str(files.label_dictionary) if files.label_dictionary else None,
        "tokenizer_files": {k: str(v) for k, v in files.tokenizer.paths.items()},
        "trained_with_bpe": source.bpe.get("_name"),
        "tokenizer_kind": _tokenizer_kind(files.tokenizer, source.bpe),
        "tensors": len(source.tensors),
        "parameters_by_dtype": dict(by_dtype),
        "languages": list(normalised.languages),  # X-MOD adapters; none for other models
        "classification_heads": {h.name: {"num_classes": h.num_classes, "inner_dim": h.inner_dim} for h in heads},
        "convert_would_produce": outputs,
    }
    if isinstance(model, SourceModel):
        description.update(describe_source(model))
        description["hyper_parameters_from"] = model.hyper_parameters.source
    return description


def describe_source(model: SourceModel) -> dict[str, Any]:
    """What the analysis found, whatever output is asked for."""
    dims = model.dims
    described: dict[str, Any] = {
        "family": model.family.model_type,
        "layout": "pre-norm" if model.layout.pre_norm else "post-norm",
        "key_generation": model.source.key_generation,
        "layers": dims.num_layers, "hidden_size": dims.hidden_size,
        "attention_heads": dims.num_heads or None,  # None: the hyper-parameters do not give it
        "ffn_size": dims.ffn_size, "position_rows": dims.positions, "max_tokens": dims.positions - 2,
        "positions": dims.position_kind, "vocab_rows": dims.vocab_size,
    }
    if dims.languages:
        hparams = model.hyper_parameters.values
        described["adapters"] = {"bottleneck": dims.adapter_size, "layer_norm": model.layout.adapter_layer_norm,
                                 "reuse_layer_norm": hparams.get("adapter_reuse_layer_norm"),
                                 "ln_before_adapter": hparams.get("ln_before_adapter"),
                                 "left_out": sorted({found.group(1) for name in model.left_out
                                                     if (found := ADAPTER_NAME.match(name))})}
    return described


def _would_produce(model: SourceModel | ConversionError, request: OutputRequest) -> dict[str, Any]:
    try:
        if isinstance(model, ConversionError):
            raise model
        plan = make_plan(model, request)
    except ConversionError as error:
        return {"refused": error.render()}
    return {"plan": describe_plan(plan)}


def describe_plan(plan: ConversionPlan, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> dict[str, Any]:
    shards = plan_shards(plan.tensors, max_shard_bytes)
    return {
        "model": describe_source(plan.model),
        "architecture": plan.architecture,
        "head": plan.head.name if plan.head else None,
        "hyper_parameters_from": plan.hyper_parameters.source,
        "tensors": len(plan.tensors),
        "bytes": plan.total_bytes,
        "files": shard_file_names(len(shards)),
        "dropped": plan.dropped,
        "notes": plan.notes,
    }


def _tokenizer_kind(files: TokenizerFiles, bpe: dict) -> str | None:
    """The kind convert would write, or why it would refuse."""
    try:
        kind = choose_kind(files, bpe)
    except ConversionError as error:
        return f"refused: {error.render().splitlines()[0]}"
    return kind.name if kind else None


def format_inspection(description: dict[str, Any]) -> str:
    lines = [f"checkpoint   {description['checkpoint']} ({description['checkpoint_format']} format, "
             f"{description['checkpoint_bytes'] / 1e6:.1f} MB; hyper-parameters from {description['hyper_parameters_from']}"
             f"{', arch ' + repr(description['arch']) if description['arch'] else ''})"]
    if "family" in description:
        lines.append(f"model        {description['family']}, {description['layout']}, {description['key_generation']} keys")
        lines.append(f"size         {description['layers']} layers, hidden {description['hidden_size']}, "
                     f"{description['attention_heads'] or 'unknown'} heads, ffn {description['ffn_size']}, "
                     f"{description['max_tokens']} positions"
                     + (f" ({POSITION_DESCRIPTIONS[description['positions']]})" if description['positions'] in POSITION_DESCRIPTIONS
                        else "") + f", {description['vocab_rows']} vocabulary rows")
    for dtype, entry in description["parameters_by_dtype"].items():
        lines.append(f"tensors      {dtype}: {entry['parameters']:,} values, {entry['bytes'] / 1e6:.1f} MB")
    dictionary = description["dictionary"]
    lines.append(f"dictionary   {dictionary['path']} ({dictionary['symbols']} symbols with specials, "
                 f"{dictionary['kind']} vocabulary)")
    if description["languages"]:
        lines.append(f"languages    {', '.join(description['languages'])} (X-MOD adapters)")
    if "adapters" in description:
        adapters = description["adapters"]
        left_out = f"; never run by fairseq, left out: {', '.join(adapters['left_out'])}" if adapters["left_out"] else ""
        lines.append(f"adapters     bottleneck {adapters['bottleneck']}, own LayerNorm {adapters['layer_norm']}, "
                     f"reuse LayerNorm {adapters['reuse_layer_norm']}, LN before adapter "
                     f"{adapters['ln_before_adapter']}{left_out}")
    heads = description["classification_heads"]
    lines.append("heads        " + (", ".join(f"{name} ({info['num_classes']} output{'s' if info['num_classes'] != 1 else ''})" for name, info in heads.items())
                                   or "none (masked LM)"))
    tokenizer = description["tokenizer_files"]
    trained = f"; trained with --bpe {description['trained_with_bpe']}" if description["trained_with_bpe"] else ""
    searched = looked_for({"_name": description["trained_with_bpe"]})
    lines.append("tokenizer    " + (f"{description['tokenizer_kind']}: {', '.join(tokenizer.values())}{trained}"
                                   if tokenizer else f"no files found (looked for {searched}){trained}"))
    for target, outcome in description["convert_would_produce"].items():
        flag = "" if target == "default" else f" --head {target}"
        if "plan" in outcome:
            plan = outcome["plan"]
            lines.append(f"convert{flag} -> {plan['architecture']}, {plan['tensors']} tensors, "
                         f"{plan['bytes'] / 1e6:.1f} MB in {', '.join(plan['files'])}")
        else:
            first, *problems = outcome["refused"].splitlines()  # its list of problems, if any, indented
            lines += [f"convert{flag} -> refused: {first}", *(f"  {problem}" for problem in problems)]
    return "\n".join(lines)
