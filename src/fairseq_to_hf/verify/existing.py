"""`fairseq-to-hf verify SRC OUT`: check any Transformers folder (ours or an old script's) against fairseq."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConversionError, ProblemList, library_message
from ..hparams import SuppliedHyperParameters
from ..plan import (FAMILIES, LM_HEAD, ConversionPlan, Dims, NormalisedSource, OutputRequest, analyse_source,
                    make_plan, normalise_source, strip_language)
from ..plan.families import DEFAULT_LANGUAGE
from ..reader.checkpoint import read_checkpoint
from ..reader.dictionary import PAD_ID, UNK_ID, Dictionary, labels_for_head, read_dictionary
from ..reader.folder import find_source_files, read_text_lines
from ..tokenizer import TOKENIZER_FILES, kind_named, looked_for, prepare_tokenizer
from .compare import (DEFAULT_TOLERANCE, OutputCheck, WeightsVerification, difference, per_language,
                      reference_languages, reference_rows, verification_inputs, verify_weights)
from ..reference.forward import EPS as LAYER_NORM_EPS, FairseqReference
from ..writer import INDEX_FILE, SINGLE_FILE
from .streamed_model import StoredWeights
from .tokenizer_check import TokenizerVerification, verify_tokenizer

FAMILY_OF_CLASS = {name: family for family in FAMILIES.values()
                   for name in (family.masked_lm_class, family.classifier_class)}
SUPPORTED_CLASSES = frozenset(FAMILY_OF_CLASS)
HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class FolderVerification:
    """What `verify` found: the folder's weights (and tokenizer) against the fairseq checkpoint."""

    source_checkpoint: Path
    folder: Path
    architecture: str
    head: str | None
    hyper_parameters_from: str
    config_mismatches: list[str] = field(default_factory=list)  # when set, nothing was run
    weights: WeightsVerification | None = None
    tokenizer: TokenizerVerification | None = None
    tokenizer_note: str | None = None  # why the tokenizer was not checked
    run_error: str | None = None  # the folder's model failed on the inputs (weights that do not fit it)

    @property
    def passed(self) -> bool:
        return (not self.config_mismatches and not self.run_error and self.weights is not None
                and self.weights.passed
                and (self.tokenizer is None or self.tokenizer.passed))

    def as_dict(self) -> dict[str, Any]:
        return {"source_checkpoint": str(self.source_checkpoint), "folder": str(self.folder),
                "architecture": self.architecture, "head": self.head,
                "hyper_parameters_from": self.hyper_parameters_from, "config_mismatches": self.config_mismatches,
                "verification": self.weights.as_dict() if self.weights else None,
                "tokenizer_verification": self.tokenizer.as_dict() if self.tokenizer else None,
                "tokenizer_note": self.tokenizer_note, "run_error": self.run_error, "passed": self.passed}


def verify_folder(
    src: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    dictionary: str | Path | None = None,
    head: str | None = None,
    default_language: str | None = None,
    verify_text: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    streamed: bool = False,
    hyper_parameters: SuppliedHyperParameters = SuppliedHyperParameters(),
    **tokenizer_files: str | Path | None,
) -> FolderVerification:
    """Checks OUT against SRC; `.passed` says whether it matches, `.as_dict()` is the JSON of `verify --json`.

    `tokenizer_files`: paths by role of tokenizer.TOKENIZER_FILES (encoder_json=..., bpe_codes=...).
    """
    out = Path(out)
    config = _read_config(out)
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else ""
    if not isinstance(architecture, str) or architecture not in SUPPORTED_CLASSES:
        held = (f"a {architecture}" if isinstance(architecture, str) and architecture else
                f"architectures {architectures!r:.60}" if architectures is not None else "no architectures")
        raise ConversionError(f"holds {held}; verify checks the masked-LM and classifier folders of fairseq's "
                              "RoBERTa family", path=out / "config.json",
                              hint=f"architectures: [one of {', '.join(sorted(SUPPORTED_CLASSES))}]")
    sharded = _checked_shard_index(out)
    files = find_source_files(src, TOKENIZER_FILES, checkpoint=checkpoint, dictionary=dictionary, **tokenizer_files)
    extra_lines = read_text_lines(verify_text) if verify_text else []  # checked before any work
    source = normalise_source(read_checkpoint(files.checkpoint))
    token_dictionary = read_dictionary(files.dictionary)
    head_name = _head_for(architecture, config, source, head, out)
    model = analyse_source(source, token_dictionary, supplied=hyper_parameters)
    languages = model.dims.languages
    # The plan's own config is not compared; any language of the model lets it be made.
    plan = make_plan(model, OutputRequest(head=head_name or LM_HEAD, default_language=default_language or (
        None if not languages or DEFAULT_LANGUAGE in languages else languages[0])))
    dims = plan.dims
    result = FolderVerification(files.checkpoint, out, architecture, head_name, plan.hyper_parameters.source,
                                config_mismatches(config, architecture, dims, model.framing_ids,
                                                  plan.hyper_parameters.values["activation_fn"], default_language))
    if plan.head is not None and plan.head.num_classes > 1 and files.label_dictionary is not None:
        result.config_mismatches += label_mismatches(config, read_dictionary(files.label_dictionary),
                                                     plan.head.num_classes)
    tokenizer = prepare_tokenizer(files.tokenizer, token_dictionary, dims.vocab_size, source.checkpoint.bpe)
    # tokenizer.json (ours), or the files an old script left for a slow tokenizer
    has_tokenizer_files = any((out / name).exists() for name in ("tokenizer.json", "vocab.json", "vocab.txt",
                                                                  "sentencepiece.bpe.model"))
    no_tokenizer = ("OUT has no tokenizer files" if tokenizer else
                    f"SRC has none of {looked_for(source.checkpoint.bpe)}: pass their paths to check the tokenizer")
    if verify_text and not (tokenizer and has_tokenizer_files):
        raise ConversionError(f"--verify-text was given, but the tokenizer cannot be checked: {no_tokenizer}",
                              path=verify_text)
    if result.config_mismatches:  # the model would not even run on the checkpoint's inputs
        result.tokenizer_note = "config.json does not describe this checkpoint"
        return result

    # A folder saved in half precision from a source that is not is compared with the source rounded alike.
    stored_dtype = HALF_DTYPES.get(str(config.get("dtype") or config.get("torch_dtype")))
    if stored_dtype == source.tensors["encoder.sentence_encoder.embed_tokens.weight"].tensor.dtype:
        stored_dtype = None  # nothing was cast (a computed position table stays float32, as fairseq's)
    inputs, row_languages = per_language(verification_inputs(dims.vocab_size, dims.positions, streamed),
                                         dims.languages)
    reference = FairseqReference(source.checkpoint.tensors, plan.hyper_parameters.values, round_to=stored_dtype)
    expected = reference.forward(reference_rows(inputs), head_name,
                                 languages=reference_languages(inputs, row_languages))
    try:
        result.weights = verify_weights(out, architecture, inputs, expected, head=head_name,
                                        vocab_size=dims.vocab_size, tolerance=tolerance, streamed=streamed,
                                        row_languages=row_languages)
        result.weights.checks += stored_weight_checks(sharded or StoredWeights(out), plan, reference)
    except (RuntimeError, IndexError, KeyError, ValueError) as error:  # its weights do not fit its config
        result.run_error = f"the folder's model cannot run the checkpoint's inputs ({type(error).__name__}: " \
                           f"{library_message(error)})"
        result.tokenizer_note = "not checked: the model did not run"
        return result

    if tokenizer and has_tokenizer_files:
        result.tokenizer = verify_tokenizer(out, tokenizer.reference_bpe, token_dictionary, dims.vocab_size,
                                            int(config.get("vocab_size", dims.vocab_size)), extra_lines,
                                            tokenizer.known_difference, kind_named(tokenizer.kind).known_difference)
    else:
        result.tokenizer_note = no_tokenizer
    return result


# fairseq's activation_fn -> the Transformers hidden_act names that compute it (the forward passes can
# hardly tell an exact GELU from its tanh approximation on small activations).
SAME_ACTIVATION = {"gelu": ("gelu",), "gelu_accurate": ("gelu_new", "gelu_pytorch_tanh"),
                   "gelu_fast": ("gelu_new", "gelu_pytorch_tanh"), "relu": ("relu",), "relu_squared": ("relu2",),
                   "tanh": ("tanh",), "linear": ("linear",)}


def config_mismatches(config: dict[str, Any], architecture: str, dims: Dims, framing_ids: tuple[int, int],
                      activation: str, default_language: str | None = None) -> list[str]:
    """What config.json says that differs from the checkpoint: sizes (from its tensors), the activation,
    and for X-MOD its languages and the language of text given none (fairseq's en_XX, or
    `default_language`)."""
    expected = {"num_hidden_layers": dims.num_layers, "hidden_size": dims.hidden_size,
                "num_attention_heads": dims.num_heads, "intermediate_size": dims.ffn_size,
                "max_position_embeddings": dims.positions}
    def differs(held: Any, value: int) -> bool:  # 4.0 or True is no count, though Python says it equals 4 or 1
        return not isinstance(held, int) or isinstance(held, bool) or held != value

    mismatches = [f"config.json says {key} {config.get(key)!r:.60}, where fairseq runs {value}"
                  for key, value in expected.items() if differs(config.get(key), value)]
    bos, eos = framing_ids
    for key, value in (("bos_token_id", bos), ("pad_token_id", PAD_ID), ("eos_token_id", eos)):
        if key in config and differs(config[key], value):  # absent: Transformers' RoBERTa defaults, fairseq's
            mismatches.append(f"config.json says {key} {config[key]!r:.40}, fairseq's is {value}")
    if config.get("hidden_act") not in SAME_ACTIVATION.get(activation, ()):
        mismatches.append(f"config.json says hidden_act {config.get('hidden_act')!r:.40}, where fairseq runs "
                          f"{activation}")
    eps = config.get("layer_norm_eps")
    if not isinstance(eps, float) or eps != LAYER_NORM_EPS:  # fairseq's LayerNorms all use 1e-5
        mismatches.append(f"config.json says layer_norm_eps {eps!r:.60}, where fairseq runs {LAYER_NORM_EPS}")
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size < dims.vocab_size:  # more: the tokenizer's alias rows
        mismatches.append(f"config.json says vocab_size {vocab_size!r}, the checkpoint's embedding has "
                          f"{dims.vocab_size} rows")
    if not architecture.endswith("ForMaskedLM"):
        mismatches += _label_config_mismatches(config)
    model_type = FAMILY_OF_CLASS[architecture].model_type
    if config.get("model_type") != model_type:
        mismatches.append(f"config.json says model_type {config.get('model_type')!r}, which is not {architecture}'s "
                          f"({model_type}): Transformers would not load it as such")
    if not dims.languages:
        return mismatches
    languages = config.get("languages")
    if not isinstance(languages, list) or set(map(str, languages)) != set(dims.languages):
        mismatches.append(f"config.json says languages {languages!r:.200}, the checkpoint's adapters are "
                          f"{list(dims.languages)}")
    folder_default = config.get("default_language")
    fairseq_default = default_language or (DEFAULT_LANGUAGE if DEFAULT_LANGUAGE in dims.languages else None)
    if fairseq_default is not None and folder_default != strip_language(fairseq_default):
        mismatches.append(f"config.json says default_language {folder_default!r}; fairseq runs "
                          f"{strip_language(fairseq_default)} for text given no language"
                          + ("" if default_language else " (pass --default-language if that was a choice)"))
    elif folder_default not in dims.languages:
        mismatches.append(f"config.json says default_language {folder_default!r}, which is none of the "
                          f"checkpoint's languages {list(dims.languages)}")
    return mismatches


def _label_config_mismatches(config: dict[str, Any]) -> list[str]:
    """A classifier's problem_type and label2id decide what pipelines compute from the logits."""
    mismatches = []
    num_labels, problem_type = config.get("num_labels"), config.get("problem_type")
    if isinstance(num_labels, int) and problem_type is not None:
        want = "regression" if num_labels == 1 else "single_label_classification"
        if problem_type != want:
            mismatches.append(f"config.json says problem_type {problem_type!r:.60}; fairseq's head with "
                              f"{num_labels} output{'s' if num_labels != 1 else ''} is {want}")
    id2label, label2id = config.get("id2label"), config.get("label2id")
    if isinstance(id2label, dict) and isinstance(label2id, dict):
        inverse = {label: int(i) for i, label in id2label.items() if str(i).isdigit()}
        if label2id != inverse:
            mismatches.append(f"config.json's label2id {label2id!r:.120} is not the inverse of its id2label")
    return mismatches


def label_mismatches(config: dict[str, Any], labels: Dictionary, num_classes: int) -> list[str]:
    """config.json's class names against the label dict's, where the label dict fits the head."""
    try:
        expected = labels_for_head(labels, num_classes)
    except ConversionError:  # a label dict of another head: nothing to compare
        return []
    id2label = config.get("id2label")
    names = [id2label.get(str(i)) for i in range(num_classes)] if isinstance(id2label, dict) else None
    if names == expected:
        return []
    return [f"config.json's id2label {names!r:.120} differs from the label dict's classes {expected!r:.120}"]


def _checked_shard_index(out: Path) -> StoredWeights | None:
    """A sharded folder's stored tensors, read to check its index: every shard it names is a file of OUT
    itself (a folder that loads weights from elsewhere would not be the model once uploaded), and it
    names each stored tensor's own shard, once (loaders trust the index: a tensor it misplaces or leaves
    out is not the model's). None for a folder without an index."""
    index = out / INDEX_FILE
    if not index.exists():
        return None
    if (out / SINGLE_FILE).exists():  # Transformers would load that one: two models, one checked
        raise ConversionError(f"holds both {SINGLE_FILE} and {INDEX_FILE}: Transformers loads {SINGLE_FILE}, "
                              "so which weights are the model's is not clear", path=out,
                              hint="remove the one that is not the model's weights")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = set(weight_map.values())
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        raise ConversionError("cannot be read as a safetensors index (JSON with a weight_map of file names)",
                              path=index, hint="convert the checkpoint again") from None
    for shard in sorted(shards, key=str):
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", "..") \
                or (out / shard).is_symlink() or not (out / shard).is_file():
            raise ConversionError(f"names the shard {shard!r:.80}, which is not a file of this folder", path=index,
                                  hint="a model folder holds its own weights; convert the checkpoint again")
    stored = StoredWeights(out)
    problems = ProblemList()
    for name, held_in in sorted(stored.files_of.items()):
        if len(held_in) > 1:
            problems.add(f"{name} is stored in {' and '.join(held_in)}")
        elif name not in weight_map:
            problems.add(f"{name} is stored in {held_in[0]}, which the index does not say")
        elif weight_map[name] != held_in[0]:
            problems.add(f"{name} is stored in {held_in[0]}, the index says {weight_map[name]!r:.60}")
    for name in sorted(set(weight_map) - set(stored.files_of), key=str):
        problems.add(f"{name!r:.80} is in the index but in no shard")
    problems.raise_if_any(ConversionError, "does not describe its shards", path=index,
                          hint="convert the checkpoint again")
    return stored


def stored_weight_checks(stored: StoredWeights, plan: ConversionPlan, reference: FairseqReference,
                         rows_at_once: int = 1 << 14) -> list[OutputCheck]:
    """Every stored tensor of OUT against the source tensor the plan maps to it, exactly (rounded to the
    stored dtype); position tables fairseq computes against the reference's own.

    The forward passes see only the rows their ids use and can miss a small edit their tolerance
    absorbs; these compare every value. One check per differing tensor, and one for all that match.
    """
    from safetensors import safe_open

    failing, matching = [], 0
    for planned in plan.tensors:
        if planned.target not in stored.locations:
            continue  # a tied or missing tensor: loading reports it
        file, dtype, shape, _, _ = stored.locations[planned.target]
        if planned.computed is not None:
            want = reference.position_table()
        elif planned.source is None:
            want = torch.zeros(planned.shape)
        else:
            want = planned.source.load()
        want = want.to(dtype).to(torch.float32)  # rounded as stored
        worst, non_finite_count, scale = 0.0, 0, 0.0
        # Only tables of the vocabulary's rows (the embedding, the MLM decoder and its bias) have alias rows.
        alias_rows_allowed = want.dim() in (1, 2) and len(want) == plan.dims.vocab_size
        if want.dim() == 0 or len(shape) != want.dim() or shape[0] < len(want) \
                or (shape[0] > len(want) and not alias_rows_allowed) or list(shape[1:]) != list(want.shape[1:]):
            worst, scale = float("inf"), difference(want, want).scale
        else:
            with safe_open(file, "pt") as weights:
                table = weights.get_slice(planned.target)
                # (wanted, stored rows), read a slice at a time
                parts = [(want[start:start + rows_at_once], (start, min(start + rows_at_once, len(want))))
                         for start in range(0, len(want), rows_at_once)]
                if shape[0] > len(want) and want.dim() == 2:  # the tokenizer's alias ids embed as <unk>
                    parts.append((want[UNK_ID].expand(shape[0] - len(want), -1), (len(want), shape[0])))
                for part, (start, end) in parts:
                    found = difference(part, table[start:end].to(torch.float32))
                    worst, non_finite_count = max(worst, found.max_abs_diff), non_finite_count + found.non_finite
                    scale = max(scale, found.scale)  # the parts cover `want`, the alias rows repeat one of its rows
        check = OutputCheck("stored weights", planned.target, worst, scale, 0.0, non_finite_count)
        if check.passed:
            matching += 1
        else:
            failing.append(check)
    return [*failing, OutputCheck("stored weights", f"all {matching} other tensors" if failing else
                                  f"all {matching} tensors", 0.0, 0.0, 0.0)]


def _read_config(out: Path) -> dict[str, Any]:
    if not out.is_dir():
        raise ConversionError("does not exist" if not out.exists() else "is not a folder", path=out,
                              hint="pass the Transformers folder to check")
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError("has no config.json: not a Transformers model folder", path=out) from None
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested deeper than json can read
        raise ConversionError(f"config.json cannot be read ({library_message(error)})", path=out) from None
    if not isinstance(config, dict):
        raise ConversionError(f"config.json holds a JSON {type(config).__name__}, not an object: not a "
                              "Transformers config", path=out)
    return config


def _num_labels(config: dict, out: Path) -> int:
    """As Transformers reads it: num_labels, else the size of id2label, else 2."""
    num_labels, id2label = config.get("num_labels"), config.get("id2label")
    if num_labels is None:
        return len(id2label) if isinstance(id2label, dict) and id2label else 2
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels <= 0:
        raise ConversionError(f"config.json says num_labels {num_labels!r:.40}, which is not a number of labels",
                              path=out, hint="convert the checkpoint again")
    return num_labels


def _head_for(architecture: str, config: dict, source: NormalisedSource, requested: str | None,
              out: Path) -> str | None:
    """The fairseq head a classifier folder was made from: --head, or the one head with as many outputs."""
    if architecture.endswith("ForMaskedLM"):
        if requested not in (None, LM_HEAD):
            raise ConversionError(f"is a masked-LM folder ({architecture}); --head {requested} names a "
                                  "classification head", path=out, hint=f"drop --head, or pass --head {LM_HEAD}")
        return None
    if requested == LM_HEAD:
        raise ConversionError(f"is a classifier folder ({architecture}), not the masked-LM head", path=out,
                              hint="name the fairseq classification head it was made from with --head")
    if requested:
        return requested  # the plan refuses a head the checkpoint does not have
    heads = source.heads
    num_labels = _num_labels(config, out)
    fitting = [h.name for h in heads if h.num_classes == num_labels]
    if len(fitting) == 1:
        return fitting[0]
    raise ConversionError(
        f"is a classifier with {num_labels} labels and the checkpoint has "
        f"{len(fitting) or 'no'} heads of that size", path=out,
        hint="name the fairseq head with --head", details=[f"{h.name}: {h.num_classes} outputs" for h in heads],
    )
