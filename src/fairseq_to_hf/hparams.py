"""The hyper-parameters a conversion computes with: the checkpoint's, fairseq's defaults, the user's flags.

They are resolved once, and the plan and the reference forward pass both take the result. Nothing is
guessed: a value the tensors cannot show (the attention head count, the activations) comes from the
checkpoint's `args`/`cfg`, from the default fairseq's own loader applies when those lack it, or from a
flag. Were the converter and the reference to share a guess, a wrong model would verify.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConversionError, ProblemList
from .field_types import refuse_wrong_types
from .reader.checkpoint import Checkpoint

HEADS, ACTIVATION, POOLER_ACTIVATION = "encoder_attention_heads", "activation_fn", "pooler_activation_fn"
FLAGS = {HEADS: "--num-heads", ACTIVATION: "--activation-fn", POOLER_ACTIVATION: "--pooler-activation-fn"}
FLAG_METAVARS = {HEADS: "N", ACTIVATION: "NAME", POOLER_ACTIVATION: "NAME"}

# What each registered arch function sets when args lack it, of the values no tensor shows: the head
# count (fairseq/models/roberta/model.py; roberta, roberta_base, roberta_prenorm and every xmod_base*
# through base_architecture) and X-MOD's adapter wiring (fairseq/models/xmod/model.py). Other archs
# may set anything.
_XMOD_BASE = {HEADS: 12, "adapter_reuse_layer_norm": True, "ln_before_adapter": True}
ARCH_SPECIFIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "roberta": {HEADS: 12}, "roberta_base": {HEADS: 12}, "roberta_prenorm": {HEADS: 12},
    "roberta_large": {HEADS: 16}, "xlm": {HEADS: 16},
    **{arch: _XMOD_BASE for arch in ("xmod_base", "xmod_base_13", "xmod_base_30", "xmod_base_60", "xmod_base_75")},
    "xmod_large_prenorm": {HEADS: 16, "adapter_reuse_layer_norm": False, "ln_before_adapter": False},
}
# base_architecture, which every roberta arch ends with, sets these whatever the arch.
ARCH_DEFAULTS = {ACTIVATION: "gelu", POOLER_ACTIVATION: "tanh", "untie_weights_roberta": False,
                 "no_scale_embedding": True, "encoder_learned_pos": True, "no_token_positional_embeddings": False}


@dataclass(frozen=True)
class SuppliedHyperParameters:
    """Values given with --num-heads, --activation-fn and --pooler-activation-fn (None: not given)."""

    num_heads: int | None = None
    activation_fn: str | None = None
    pooler_activation_fn: str | None = None

    def __post_init__(self) -> None:
        refuse_wrong_types(self)
        if self.num_heads is not None:
            if self.num_heads <= 0:
                raise ConversionError(f"num_heads must be a positive number of attention heads, not {self.num_heads}")
            object.__setattr__(self, "num_heads", int(self.num_heads))  # numpy's integers too

    def by_key(self) -> dict[str, Any]:
        return {HEADS: self.num_heads, ACTIVATION: self.activation_fn, POOLER_ACTIVATION: self.pooler_activation_fn}


@dataclass(frozen=True)
class HyperParameters:
    values: dict[str, Any]  # fairseq names -> values, as the model computes with them
    source: str  # for the report: "args", "cfg", and which flags supplied values
    # Why a value an output needs is unknown, by key (see `require`); empty when all are known.
    unknown: dict[str, str] = field(default_factory=dict)
    defaulted: frozenset[str] = frozenset()  # keys whose value is fairseq's default, not the checkpoint's
    from_flags: frozenset[str] = frozenset()  # keys whose value a flag gave

    def default_note(self, key: str) -> str:
        """For a message about `key`'s value: ", fairseq's default for arch X, ..." where it is one, else ""."""
        if key not in self.defaulted:
            return ""
        arch = arch_name(self.values)
        return (f", fairseq's default{f' for arch {arch!r}' if arch else ''}, which the checkpoint's "
                f"{self.source.split(' + ')[0]} lack")

    def require(self, *, classifier: bool, path: Path) -> None:
        """Refuses an output whose computation needs a value nobody gave, naming every flag at once."""
        needed = [HEADS, ACTIVATION] + ([POOLER_ACTIVATION] if classifier else [])
        missing = [key for key in needed if key in self.unknown]
        if missing:
            flags = " ".join(f"{FLAGS[key]} {FLAG_METAVARS[key]}" for key in missing)
            reason = self.unknown[missing[0]].replace("{keys}", ", ".join(missing))
            raise ConversionError(f"{reason}; pass {flags} (the values it was trained with)", path=path)


def arch_name(hparams: dict[str, Any]) -> str | None:
    arch = hparams.get("arch") or hparams.get("_name")
    return arch if isinstance(arch, str) else None


def resolve_hyper_parameters(checkpoint: Checkpoint, supplied: SuppliedHyperParameters) -> HyperParameters:
    """The checkpoint's values, fairseq's loader defaults where args/cfg lack one, then the flags.

    A flag may fill a value nothing else gives; one that contradicts what fairseq would run is refused;
    a value still unknown is refused only by an output that needs it (`HyperParameters.require`).
    """
    path = checkpoint.path
    values = {key: value for key, value in checkpoint.hparams.items() if value is not None}
    arch = arch_name(values)
    defaulted: set[str] = set()
    if checkpoint.hparams_source != "none":
        # fairseq's loader runs the arch function on args/cfg, which fills what they lack.
        defaults = {**ARCH_DEFAULTS, **ARCH_SPECIFIC_DEFAULTS.get(arch or "", {})}
        for key, value in defaults.items():
            if key not in values:
                values[key] = value
                defaulted.add(key)
        # RoBERTa's build_model: max_positions is tokens_per_sample where args lack it.
        if "max_positions" not in values and "tokens_per_sample" in values:
            values["max_positions"] = values["tokens_per_sample"]
            defaulted.add("max_positions")
    contradictions = ProblemList()
    from_flags: dict[str, str] = {}  # key -> the flag as given
    for key, value in supplied.by_key().items():
        if value is None:
            continue
        if key not in values:
            values[key] = value
            from_flags[key] = f"{FLAGS[key]} {value}"
        elif values[key] != value:
            held = (f"fairseq's default {values[key]!r} for {key}, which the checkpoint's {checkpoint.hparams_source} "
                    "lack" if key in defaulted else f"its {key} {values[key]!r}")
            contradictions.add(f"{FLAGS[key]} {value} contradicts {held}")
    contradictions.raise_if_any(ConversionError, "refused", path=path,
                                hint="drop the flag: the checkpoint's value is what fairseq runs")
    heads = values.get(HEADS)
    if HEADS in values and (not isinstance(heads, int) or isinstance(heads, bool) or heads <= 0):
        raise ConversionError(f"its {HEADS} is {heads!r:.40}, not a number of attention heads", path=path)

    if checkpoint.hparams_source == "none":
        reason = "holds no hyper-parameters (neither args nor cfg), and its tensors do not show {keys}"
    else:
        reason = (f"its {checkpoint.hparams_source} do not give {HEADS}, and "
                  + (f"arch {arch!r} is not one whose default is known" if arch else "name no arch"))
    unknown = {key: reason for key in FLAGS if key not in values}

    source = checkpoint.hparams_source
    if from_flags:
        source = (f"{source} + " if source != "none" else "") + f"flags ({', '.join(from_flags.values())})"
    return HyperParameters(values, source, unknown, frozenset(defaulted), frozenset(from_flags))
