"""The model card (README.md) of a converted folder: Hub metadata, provenance, verification, usage."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConversionError
from .field_types import refuse_wrong_types
from .tokenizer import kind_named, looked_for

REPO_PLACEHOLDER = "your-username"


@dataclass(frozen=True)
class CardOptions:
    """What only the user knows: written into the card's metadata when given."""

    language: list[str] = field(default_factory=list)
    license: str | None = None
    base_model: str | None = None
    model_name: str | None = None
    repo_id: str | None = None  # where the folder will be uploaded: the usage snippet loads it from there

    def __post_init__(self) -> None:
        if isinstance(self.language, str):  # CardOptions(language="en"): one language, not two letters
            object.__setattr__(self, "language", [self.language])
        refuse_wrong_types(self)
        if any(not code.strip() for code in self.language):
            raise ConversionError(f"CardOptions: an empty language code in {list(self.language)!r:.80}")


def _table_cell(text: str) -> str:
    """Text as it reads in a Markdown table cell: a `|` ends no cell, `<...>` is shown, not run as HTML."""
    return html.escape(str(text), quote=False).replace("|", "\\|")


def _yaml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON strings and lists are valid YAML


def front_matter(pipeline_tag: str, model_type: str, options: CardOptions) -> str:
    lines = ["---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}",
             "tags:", "- fairseq", f"- {model_type}", "- fairseq-to-hf"]
    if options.language:
        lines += ["language:"] + [f"- {_yaml_value(code)}" for code in options.language]
    if options.license:
        lines.append(f"license: {_yaml_value(options.license)}")
    if options.base_model:
        lines.append(f"base_model: {_yaml_value(options.base_model)}")
    lines.append("---")
    return "\n".join(lines)


def model_card(report: dict[str, Any], output: dict[str, Any], options: CardOptions) -> str:
    """Markdown for one output folder, from its conversion report (as written to conversion_report.json).

    It names no local path: the snippet loads `options.repo_id`, or a placeholder the reader replaces.
    """
    source = report["source"]
    dims = source["dims"]
    classifier = output["head"] is not None
    pipeline_tag = "text-classification" if classifier else "fill-mask"
    name = options.model_name or output["folder"]
    model_id = options.repo_id or f"{REPO_PLACEHOLDER}/{name}"
    tokenizer = report.get("tokenizer")
    sections = [front_matter(pipeline_tag, output["model_type"], options), "", f"# {name}", ""]

    article = "An" if output["architecture"][0] in "AEIOUX" else "A"  # "an XmodForMaskedLM"
    what = (f"{article} {output['architecture']} model ({source['layout']}, {dims['num_layers']} layers, hidden size "
            f"{dims['hidden_size']}, {dims['num_heads']} attention heads, feed-forward size {dims['ffn_size']}, "
            f"up to {dims['positions'] - 2} tokens), converted from a fairseq checkpoint.")
    if classifier:
        what += (f" It is fairseq's classification head `{output['head']}` with "
                 f"{output['num_labels']} output{'s' if output['num_labels'] != 1 else ''}"
                 + (" (a regression head)." if output["num_labels"] == 1 else "."))
    sections += [what, ""]
    if output.get("labels"):
        sections += ["## Labels", "", "| id | label |", "| --- | --- |"]
        sections += [f"| {i} | {_table_cell(label)} |" for i, label in enumerate(output["labels"])] + [""]

    sections += ["## Usage", "", "```python", *usage_snippet(pipeline_tag, model_id, tokenizer is not None), "```", ""]
    if not options.repo_id:
        sections += [f"Replace `{model_id}` with the repository this folder is uploaded to, or with the folder's "
                     "local path.", ""]
    if dims.get("languages"):
        sections += languages_section(dims["languages"], output.get("default_language"), pipeline_tag)
    if tokenizer and tokenizer["alias_count"] and not classifier:
        sections += alias_training_note(tokenizer)

    sections += ["## Conversion", "",
                 f"- Converted with fairseq-to-hf {report['tool_version']}, without fairseq, from "
                 f"`{Path(source['checkpoint']).name}`"
                 + (f" (sha256 `{source['sha256']}`)" if source.get("sha256") else "") + ".",
                 f"- Source: {source['checkpoint_format']}-format torch checkpoint, {source['key_generation']} "
                 f"key layout, hyper-parameters from `{source['hyper_parameters_from']}`.",
                 f"- Weights: `{output['dtype']}` safetensors ({', '.join(f for f in output['files'] if f.endswith('.safetensors'))})."]
    if tokenizer:
        sections.append(f"- Tokenizer: {kind_named(tokenizer['kind']).card}, with fairseq's dict.txt ids; "
                        + (f"{tokenizer['alias_count']} tokens absent from dict.txt have alias ids "
                           f"{tokenizer['fairseq_vocab_rows']}..{tokenizer['vocab_size'] - 1} that the model treats "
                           "as `<unk>`, as fairseq does." if tokenizer["alias_count"] else "every token has its fairseq id."))
    else:
        sections.append(f"- No tokenizer was written (SRC had none of {looked_for()}).")
    dropped = output.get("dropped_tensors") or {}
    if dropped:
        sections.append(f"- Left out: {len(dropped)} checkpoint tensors not used by this architecture "
                        "(listed in `conversion_report.json`).")
    sections.append("")
    sections += verification_section(output)
    return "\n".join(sections).rstrip() + "\n"


def languages_section(languages: list[str], default: str | None, pipeline_tag: str) -> list[str]:
    """X-MOD runs each input through its language's adapters: the pipeline above uses the default one."""
    runner = "fill_mask" if pipeline_tag == "fill-mask" else "classify"
    other = next((language for language in languages if language != default), languages[0])
    return ["## Languages", "",
            f"Each layer has an adapter per language: {', '.join(f'`{language}`' for language in languages)}. "
            + (f"Inputs given no language go through `{default}` (`config.default_language`). " if default else "")
            + "Choose the language of a model's inputs with `set_default_language`, or per row with `lang_ids` "
            "(indices into `config.languages`):", "",
            "```python", f"{runner}.model.set_default_language({other!r})",
            f"# or: model(input_ids, lang_ids=torch.tensor([model.config.languages.index({other!r})] * len(input_ids)))",
            "```", ""]


def alias_training_note(tokenizer: dict[str, Any]) -> list[str]:
    """Alias ids are <unk> to the model's inputs, but as masked-LM labels their -30000 bias costs a loss of
    about 30000 (fairseq's label there is <unk>, about 10): continued training must map them back."""
    first_alias = tokenizer["fairseq_vocab_rows"]
    return ["## Continued masked-LM training", "",
            f"Token ids from {first_alias} up are aliases of `<unk>` (see Conversion below): the model embeds them as "
            "`<unk>` and never predicts them. fairseq's label for such a token is `<unk>` (id 3); map them to it "
            "before computing a masked-LM loss, or each one costs a loss of about 30000:", "",
            "```python", f"labels = labels.masked_fill(labels >= {first_alias}, 3)  # alias ids -> <unk>, as in fairseq",
            "```", ""]


def usage_snippet(pipeline_tag: str, model_path: str, has_tokenizer: bool) -> list[str]:
    if has_tokenizer and pipeline_tag == "fill-mask":
        return ["from transformers import pipeline", "",
                f"fill_mask = pipeline(\"fill-mask\", model={model_path!r})",
                "print(fill_mask(f\"The capital of France is {fill_mask.tokenizer.mask_token}.\"))"]
    if has_tokenizer:
        return ["from transformers import pipeline", "",
                f"classify = pipeline(\"text-classification\", model={model_path!r})",
                "print(classify(\"This is a sentence to classify.\"))"]
    auto = "AutoModelForSequenceClassification" if pipeline_tag == "text-classification" else "AutoModelForMaskedLM"
    return ["import torch", f"from transformers import {auto}", "",
            f"model = {auto}.from_pretrained({model_path!r})",
            "input_ids = torch.tensor([[0, 100, 200, 2]])  # fairseq ids: <s> ... </s>",
            "print(model(input_ids=input_ids).logits.shape)"]


def verification_section(output: dict[str, Any]) -> list[str]:
    weights = output.get("verification")
    if not weights:
        return ["## Verification", "", "Not verified (converted with `--no-verify`)."]
    lines = ["## Verification", "",
             "Outputs of this folder's model (loaded with Transformers) against a reference fairseq forward pass "
             f"on the source checkpoint's tensors, computed in {weights['compared_in']} on "
             f"{len(weights['inputs'])} inputs including a right-padded batch:", "",
             "| output | max abs diff |", "| --- | --- |"]
    lines += [f"| {kind} | {diff:.3g} |" for kind, diff in weights["max_abs_diff"].items()]
    tokens = output.get("tokenizer_verification")
    if tokens:
        lines += ["", f"Tokenizer: {tokens['lines_checked']} lines and {tokens['pairs_checked']} sentence pairs "
                  f"encoded as fairseq's `encode` does; {tokens['mismatch_count']} differ."]
        if tokens.get("known_differences"):
            lines.append(f"{tokens['known_differences']} more differ only where {tokens['known_difference']}.")
    return lines
