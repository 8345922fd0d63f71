"""What a checkpoint is, worked out once from its metadata: every output is planned from this.

`normalise_source` renames the stored keys to fairseq 0.12's and finds the heads and languages;
`analyse_source` adds what the tensors and the checkpoint's hyper-parameters say about the encoder:
its layout, the Transformers family, its dimensions, whether the LM head is tied. Neither reads tensor
data. Problems found on the way are collected for the plan to raise together with its own.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import families
from ..arch.fairseq_keys import SourceTensor, normalise_state_dict, unsupported_layouts
from .families import Family, strip_language
from .positions import LEARNED, MAX_COMPUTED_TABLE_BYTES, MIN_SINUSOIDAL_WIDTH, SINUSOIDAL, position_kind
from ..errors import ConversionError, UnsupportedModelError
from ..hparams import HEADS, HyperParameters, SuppliedHyperParameters, arch_name, resolve_hyper_parameters
from ..reader.checkpoint import Checkpoint
from ..reader.dictionary import BOS, EOS, PAD_ID, PADDING_SYMBOL_PREFIX, UNK, Dictionary, fit_embedding

E = families.E
MIN_POSITION_ROWS = 5  # the padding and offset rows, then <s>, one token, </s>
LAYER_INDEX = re.compile(rf"^{re.escape(E)}\.layers\.(\d+)\.")


@dataclass(frozen=True)
class Dims:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int  # 0 while the hyper-parameters do not give it (the plan refuses such an output)
    ffn_size: int
    positions: int  # rows of the position table (max_positions + 2)
    adapter_size: int = 0  # X-MOD: the adapters' bottleneck width
    languages: tuple[str, ...] = ()  # X-MOD: the adapters' languages, as Transformers indexes them
    position_kind: str = LEARNED  # plan/positions.py: stored, or computed by fairseq and written as a table


@dataclass(frozen=True)
class HeadInfo:
    name: str
    num_classes: int
    inner_dim: int


@dataclass
class NormalisedSource:
    """A checkpoint's tensors under fairseq 0.12's names, and the heads and languages they hold."""

    checkpoint: Checkpoint
    tensors: dict[str, SourceTensor]  # normalised name -> tensor
    dropped: dict[str, str]  # stored key -> why fairseq itself ignores it
    problems: list[str]  # keys that cannot be normalised
    heads: list[HeadInfo]
    languages: tuple[str, ...]  # X-MOD adapters fairseq can run
    key_generation: str

    @property
    def has_lm_head(self) -> bool:
        return "encoder.lm_head.dense.weight" in self.tensors


@dataclass
class SourceModel:
    """The analysed checkpoint: what every output of it shares."""

    source: NormalisedSource
    layout: families.Layout
    family: Family
    dims: Dims
    hyper_parameters: HyperParameters  # what the reference forward pass computes with too
    tied: bool  # the LM head shares the word embeddings
    framing_ids: tuple[int, int]  # (<s>, </s>) as fairseq's encode frames a sentence (Dictionary.bos_id)
    left_out: dict[str, str] = field(default_factory=dict)  # normalised name -> why no output has it
    problems: list[str] = field(default_factory=list)  # raised by the plan with its own
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.source.checkpoint.path

    @property
    def tensors(self) -> dict[str, SourceTensor]:
        return self.source.tensors

    @property
    def heads(self) -> list[HeadInfo]:
        return self.source.heads


def key_generation(stored_keys: list[str]) -> str:
    """fairseq's key layout: 0.9 (`decoder.`), 0.10 (`emb_layer_norm`) or 0.12 (`layernorm_embedding`)."""
    if any(key.startswith("decoder.sentence_encoder.") for key in stored_keys):
        return "fairseq-0.9"
    if any(".emb_layer_norm." in key for key in stored_keys):
        return "fairseq-0.10"
    return "fairseq-0.12"


# fairseq tasks (and the RoBERTa examples' tasks) whose load_dictionary adds <mask> after dict.txt.
MASK_ADDING_TASKS = frozenset({"masked_lm", "multilingual_masked_lm", "sentence_prediction",
                               "sentence_prediction_adapters", "sentence_ranking", "commonsense_qa", "wsc",
                               "winogrande"})


def dictionary_kind(dictionary: Dictionary) -> str:
    """What segmentation dict.txt was built from: GPT-2 BPE lists ids ("13"), sentencepiece lists pieces
    ("▁the"); "camembert": sentencepiece pieces after `<unk>`, `<s>`, `</s>` listed again, as CamemBERT's."""
    symbols = [s for s in dictionary.symbols[4:] if not s.startswith(PADDING_SYMBOL_PREFIX)]
    if not symbols:
        return "unknown"
    if sum(symbol.isdigit() for symbol in symbols) > 0.9 * len(symbols):
        return "gpt2"
    if sum(symbol.startswith("\u2581") for symbol in symbols) > 0.05 * len(symbols):
        return "camembert" if dictionary.symbols[4:7] == (UNK, BOS, EOS) else "sentencepiece"
    return "unknown"


def describe_heads(heads: list[HeadInfo]) -> list[str]:
    """'name: N outputs' for messages, a regression head said as such."""
    return [f"{head.name}: {head.num_classes} output{'s' if head.num_classes != 1 else ''}"
            f"{' (regression)' if head.num_classes == 1 else ''}" for head in heads]


def normalise_source(checkpoint: Checkpoint) -> NormalisedSource:
    tensors, dropped, problems = normalise_state_dict(checkpoint.tensors)
    tensors = _pruned(tensors, checkpoint.hparams.get("encoder_layers_to_keep"), dropped, problems)
    return NormalisedSource(checkpoint, tensors, dropped, problems, _heads(tensors), _languages(tensors),
                            key_generation(list(checkpoint.tensors)))


def _pruned(tensors: dict[str, SourceTensor], keep: Any, dropped: dict[str, str],
            problems: list[str]) -> dict[str, SourceTensor]:
    """The layers fairseq runs when `encoder_layers_to_keep` is set (LayerDrop pruning): its loader keeps
    the listed layers, renumbered 0, 1, ... in order, and drops the others (prune_state_dict)."""
    if not keep:
        return tensors
    if not isinstance(keep, str):  # fairseq's loader splits it as a string
        problems.append(f"encoder_layers_to_keep {keep!r:.60} is not a string of layer numbers: fairseq cannot "
                        "load it either")
        return tensors
    try:
        kept = sorted(int(layer) for layer in str(keep).split(","))
    except ValueError:
        problems.append(f"encoder_layers_to_keep {keep!r:.60} is not a list of layer numbers")
        return tensors
    stored = sorted({int(m.group(1)) for key in tensors if (m := LAYER_INDEX.match(key))})
    absent = [layer for layer in kept if layer not in stored]
    if absent or len(set(kept)) != len(kept):
        problems.append(f"encoder_layers_to_keep {keep!r:.60} names layers {absent or kept} that the checkpoint "
                        f"does not hold once each (it holds {len(stored)}): fairseq cannot load it either; a model "
                        "trained with --encoder-layers-to-keep is saved already pruned")
        return tensors
    renumbered = {str(old): str(new) for new, old in enumerate(kept)}
    pruned: dict[str, SourceTensor] = {}
    for name, item in tensors.items():
        found = LAYER_INDEX.match(name)
        if found is None:
            pruned[name] = item
        elif found.group(1) in renumbered:
            new_name = f"{E}.layers.{renumbered[found.group(1)]}.{name[found.end():]}"
            pruned[new_name] = replace(item, name=new_name)
        else:
            dropped[item.stored_as] = (f"layer {found.group(1)}: not in encoder_layers_to_keep {keep!r}, "
                                       "so fairseq drops it")
    return pruned


def list_heads(checkpoint: Checkpoint) -> list[HeadInfo]:
    return normalise_source(checkpoint).heads


def analyse_source(source: NormalisedSource, dictionary: Dictionary, *, model_type: str | None = None,
                   supplied: SuppliedHyperParameters = SuppliedHyperParameters()) -> SourceModel:
    """Raises at once for what no output can be made of (not a RoBERTa, a variant no class has)."""
    checkpoint, tensors = source.checkpoint, source.tensors
    _require_roberta(checkpoint, tensors)
    _refuse_unsupported_layouts(checkpoint)
    arch = arch_name(checkpoint.hparams) or ""
    if arch.startswith("xmod") and not source.languages:
        raise UnsupportedModelError(f"is an X-MOD model (arch {arch!r}) without any language adapter that "
                                    "fairseq can run; it is not a complete checkpoint", path=checkpoint.path)
    layout = families.Layout(pre_norm=f"{E}.layer_norm.weight" in tensors,
                             embedding_layer_norm=f"{E}.layernorm_embedding.weight" in tensors,
                             adapters=bool(source.languages),
                             adapter_layer_norm=f"{E}.layers.0.adapter_layer_norm.weight" in tensors)
    family = _family(layout, dictionary_kind(dictionary), model_type, checkpoint.path)
    hyper_parameters = resolve_hyper_parameters(checkpoint, supplied)
    problems, notes = list(source.problems), []
    model = SourceModel(source, layout, family,
                        _dims(source, hyper_parameters, problems, notes), hyper_parameters,
                        _tied(hyper_parameters.values, tensors), (dictionary.bos_id, dictionary.eos_id),
                        _unused_adapters(source), problems)
    model.notes += notes
    if problems:
        return model
    fit = fit_embedding(dictionary, model.dims.vocab_size)
    if checkpoint.has_ema:
        model.notes.append("the checkpoint also holds EMA weights (extra_state['ema'], --store-ema); the "
                           "weights under 'model' are converted, the ones fairseq loads")
    if checkpoint.hparams_source == "none":
        model.notes.append("the checkpoint holds no hyper-parameters: its token embeddings are taken to be "
                           "unscaled (no_scale_embedding, every RoBERTa arch's setting), which no tensor shows")
    if fit.padding_rows:
        model.notes.append(
            f"the embedding has {fit.padding_rows} rows more than dict.txt + <mask>: the madeupword padding "
            f"fairseq-preprocess added, left out of this dict.txt; <mask> is the last row ({fit.mask_id})"
        )
    elif fit.mask_id is None:
        task = str(checkpoint.hparams.get("task") or "")
        if task in MASK_ADDING_TASKS:
            raise ConversionError(
                f"gives {len(dictionary)} ids, as many as the embedding's rows, but fairseq's {task} task adds "
                "<mask> after dict.txt's lines, so it refuses this pair: dict.txt has a line too many",
                path=dictionary.path, hint="pass the dict.txt the model was trained with (--dict)")
        model.notes.append("the embedding has no <mask> row (dict.txt fills it), so the tokenizer has no mask token")
    return model


def _heads(tensors: dict[str, SourceTensor]) -> list[HeadInfo]:
    names = sorted({m.group(1) for key in tensors if (m := families.HEAD_NAME.match(key))})
    heads = []
    for name in names:
        dense = tensors.get(f"classification_heads.{name}.dense.weight")
        out = tensors.get(f"classification_heads.{name}.out_proj.weight")
        heads.append(HeadInfo(name, out.tensor.shape[0] if out else 0, dense.tensor.shape[0] if dense else 0))
    return heads


def _languages(tensors: dict[str, SourceTensor]) -> tuple[str, ...]:
    """The X-MOD languages fairseq can run, in the order of the checkpoint's adapters."""
    names = dict.fromkeys(m.group(1) for key in tensors if (m := families.ADAPTER_NAME.match(key)))
    return tuple(name for name in names if strip_language(name) == name)


def _unused_adapters(source: NormalisedSource) -> dict[str, str]:
    """Adapters fairseq never runs (their code loses `_rom`/`_zaw` before the lookup) -> why dropped."""
    unused = {}
    for name in source.tensors:
        found = families.ADAPTER_NAME.match(name)
        if found and found.group(1) not in source.languages:
            language, runs = found.group(1), strip_language(found.group(1))
            unused[name] = (f"adapter {language}, which fairseq never runs: for {language} text it runs the "
                            + (f"{runs} adapter" if runs in source.languages else
                               f"{runs} adapter, which this checkpoint lacks (fairseq fails on such text)"))
    return unused


def _tied(hparams: dict[str, Any], tensors: dict[str, SourceTensor]) -> bool:
    """Whether the LM head shares the word embeddings: args/cfg say (fairseq's default: shared); without
    them the tensors do, as torch saves a shared tensor once."""
    if "untie_weights_roberta" in hparams:
        return not bool(hparams["untie_weights_roberta"])
    lm_head = tensors.get("encoder.lm_head.weight")
    return lm_head is None or lm_head.tensor.same_data(tensors[f"{E}.embed_tokens.weight"].tensor)


def _require_roberta(checkpoint: Checkpoint, tensors: dict[str, SourceTensor]) -> None:
    if f"{E}.embed_tokens.weight" in tensors:
        return
    arch = arch_name(checkpoint.hparams) or "unknown"
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
        arch = arch_name(checkpoint.hparams)
        raise UnsupportedModelError(
            f"uses {', '.join(variants)}{f' (arch {arch!r})' if arch else ''}, which no Transformers RoBERTa class "
            "has; nothing was converted",
            path=checkpoint.path,
            details=[f"{variant}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                     for variant, keys in variants.items()],
        )


SIZES = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "max_positions")  # args/cfg the tensors show


def _configured(hparams: dict[str, Any], key: str) -> int | None:
    value = hparams.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dims(source: NormalisedSource, hyper_parameters: HyperParameters, problems: list[str],
          notes: list[str]) -> Dims:
    """The sizes, from the tensors; where args/cfg give a size too and it differs, fairseq could not have
    loaded the file (its modules are built from args/cfg), so that is a problem, not a choice."""
    hparams = hyper_parameters.values

    def shape(name: str) -> tuple[int, ...]:
        item = source.tensors.get(name)
        return item.tensor.shape if item else ()

    refused_by_fairseq = "fairseq would refuse to load this file"
    vocab_size, hidden = (shape(f"{E}.embed_tokens.weight") + (0, 0))[:2]
    configured_width = _configured(hparams, "encoder_embed_dim")
    if hidden and configured_width is not None and configured_width != hidden:
        problems.append(f"the hyper-parameters say encoder_embed_dim {configured_width}, the token embedding is "
                        f"{hidden} wide: {refused_by_fairseq}")
    layers = sorted({int(m.group(1)) for key in source.tensors if (m := LAYER_INDEX.match(key))})
    configured_layers = _configured(hparams, "encoder_layers")
    if not layers:
        problems.append(f"no encoder layers ({E}.layers.*): there is no model to convert")
    elif layers != list(range(len(layers))):
        problems.append(f"encoder layers are numbered {layers}, not 0..{len(layers) - 1}")
    elif configured_layers is not None and configured_layers != len(layers) \
            and not hparams.get("encoder_layers_to_keep"):
        problems.append(f"the hyper-parameters say encoder_layers {configured_layers}, the tensors hold "
                        f"{len(layers)} layers: {refused_by_fairseq}")
    positions = shape(f"{E}.embed_positions.weight")
    kind = position_kind(hparams, bool(positions))
    # Resolved: tokens_per_sample where args lack max_positions, as fairseq's RoBERTa takes it.
    positions_key = "tokens_per_sample" if "max_positions" in hyper_parameters.defaulted else "max_positions"
    max_positions = hparams.get("max_positions")
    configured_positions = _configured(hparams, "max_positions")
    if kind is None:
        problems.append(_unknown_positions(hparams, bool(positions)))
    elif kind == LEARNED and positions and configured_positions is not None \
            and positions[0] != configured_positions + PAD_ID + 1:
        built = (f"for which fairseq builds {configured_positions + PAD_ID + 1} (max_positions + 2)"
                 if configured_positions > 0 else "which is not a number of positions")
        problems.append(f"the position table has {positions[0]} rows, and the hyper-parameters say {positions_key} "
                        f"{configured_positions}, {built}: {refused_by_fairseq}")
    elif kind != LEARNED:
        if configured_positions is None or configured_positions <= 0:
            said = f"{positions_key} {max_positions!r:.40} is not" if "max_positions" in hparams else \
                "neither max_positions nor tokens_per_sample gives"
            problems.append(f"its positions are computed ({kind}), and {said} a number of positions, so the "
                            "table's size is unknown")
        elif (max_positions + PAD_ID + 1) * hidden * 4 > MAX_COMPUTED_TABLE_BYTES:
            problems.append(f"its positions are computed ({kind}) for max_positions {max_positions}: a table of "
                            f"{(max_positions + PAD_ID + 1) * hidden * 4 / 1e9:.0f} GB, which no model uses")
        elif kind == SINUSOIDAL and hidden < MIN_SINUSOIDAL_WIDTH:
            problems.append(f"its sinusoidal positions need a width of at least {MIN_SINUSOIDAL_WIDTH} (fairseq "
                            f"divides by width / 2 - 1), and it is {hidden}")
        else:
            positions = (max_positions + PAD_ID + 1, hidden)  # fairseq's table: max_positions + padding_idx + 1 rows
    for key in SIZES if kind == LEARNED else SIZES[:-1]:  # computed positions need max_positions (above)
        value = hparams.get(key)
        # An unresolved omegaconf interpolation ("${task.tokens_per_sample}") is fairseq's to resolve.
        if value is not None and _configured(hparams, key) is None and not str(value).startswith("${"):
            named = positions_key if key == "max_positions" else key
            notes.append(f"the hyper-parameters give {named} {value!r:.40}, which is not a whole number (fairseq "
                         "could not build the model from them); the tensors' size is converted")
    if positions and positions[0] < MIN_POSITION_ROWS:
        problems.append(f"the position table has {positions[0]} rows; fairseq's has max_positions + 2 (pads and "
                        f"the offset take two), so at least {MIN_POSITION_ROWS} to hold <s>, a token and </s>")
    # The configured size if some layer has it, else the layers' majority: a damaged layer is then
    # reported as such rather than blamed on all the others.
    ffn_sizes = Counter(shape(f"{E}.layers.{i}.fc1.weight")[:1] for i in layers)
    ffn_dim = _configured(hparams, "encoder_ffn_embed_dim")
    configured = (ffn_dim,) if ffn_dim is not None else ()
    ffn = configured if configured in ffn_sizes else max(ffn_sizes, key=ffn_sizes.__getitem__, default=())
    if configured and ffn_sizes and configured not in ffn_sizes and ffn:
        problems.append(f"the hyper-parameters say encoder_ffn_embed_dim {ffn_dim}, the layers' fc1 has "
                        f"{ffn[0]} rows: {refused_by_fairseq}")
    heads = hparams.get(HEADS, 0)  # resolved: never guessed from the hidden size
    if heads and hidden % heads:
        from_checkpoint = "" if HEADS in hyper_parameters.from_flags else ": fairseq cannot build this model"
        problems.append(f"hidden size {hidden} does not divide into {heads} attention heads"
                        f"{hyper_parameters.default_note(HEADS)}{from_checkpoint}")
    languages = source.languages
    adapter = 0
    if languages:
        adapter = (shape(f"{E}.layers.0.adapter_modules.{languages[0]}.fc1.weight") + (0,))[0]
        if not adapter or hidden % adapter:
            problems.append(f"X-MOD adapters of width {adapter} do not divide the hidden size {hidden}")
    return Dims(vocab_size, hidden, len(layers), heads, ffn[0] if ffn else 0, positions[0] if positions else 0,
                adapter, languages, kind or LEARNED)


def _unknown_positions(hparams: dict[str, Any], has_table: bool) -> str:
    if has_table:
        return (f"it stores a position table ({E}.embed_positions.weight), but its hyper-parameters say fairseq "
                f"builds none (no_token_positional_embeddings {hparams.get('no_token_positional_embeddings')!r:.20}, "
                f"encoder_learned_pos {hparams.get('encoder_learned_pos')!r:.20}): fairseq refuses to load it")
    said = {key: hparams.get(key) for key in ("encoder_learned_pos", "no_token_positional_embeddings")}
    return (f"no position table ({E}.embed_positions.weight), and the hyper-parameters do not say positions are "
            f"computed or absent (encoder_learned_pos {said['encoder_learned_pos']!r:.20}, "
            f"no_token_positional_embeddings {said['no_token_positional_embeddings']!r:.20})")


def _family(layout: families.Layout, vocabulary: str, requested: str | None, path: Path) -> Family:
    """The Transformers family: the layout decides the class, the vocabulary RoBERTa or XLM-R."""
    detected = families.detect(layout, vocabulary)
    if detected is None:
        raise UnsupportedModelError(f"is {layout.describe()}; no Transformers class has that layout", path=path)
    if requested is None:
        return detected
    family = families.FAMILIES.get(requested)
    if family is None:
        raise ConversionError(f"unknown --model-type {requested!r}; choose from {', '.join(families.FAMILIES)}")
    if layout not in family.layouts:
        raise ConversionError(
            f"--model-type {requested} contradicts the checkpoint: it is {layout.describe()}, which only "
            f"{detected.model_type}-layout classes reproduce", path=path,
        )
    if family.sentencepiece_only and vocabulary == "gpt2":
        raise ConversionError(
            f"--model-type {requested} contradicts the dictionary: {family.model_type} models use a sentencepiece "
            "vocabulary, and this dict.txt lists GPT-2 BPE ids", path=path,
        )
    return family
