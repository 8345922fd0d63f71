"""Runs the Transformers model loaded from the output folder against the fairseq reference."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConversionError, library_message
from ..reference.forward import PAD, ReferenceOutputs, sample_inputs
from .imports import transformers as import_transformers
from .streamed_model import StreamedModel, shape_mismatch_error
from .tolerance import DEFAULT_TOLERANCE
STREAMED_MAX_TOKENS = 17  # longest input of a block-by-block verification: its padded batch is 5 x 17
_ONE_MODEL_AT_A_TIME = threading.Lock()  # see verify_weights


@dataclass
class OutputCheck:
    input: str  # verification_inputs' name (`name@language` for X-MOD)
    output: str  # hidden_states[i], last_hidden_state, mlm_logits or head_logits
    max_abs_diff: float
    scale: float
    tolerance: float
    non_finite: int = 0  # positions where either side is NaN or Inf: no comparison can verify those

    @property
    def passed(self) -> bool:
        return not self.non_finite and self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "max_abs_diff": self.max_abs_diff, "scale": self.scale,
                "tolerance": self.tolerance, "non_finite": self.non_finite, "passed": self.passed}


@dataclass
class WeightsVerification:
    checks: list[OutputCheck] = field(default_factory=list)
    inputs: dict[str, list[int]] = field(default_factory=dict)  # input name -> shape
    compared_in: str = "float32"
    loaded_with: str = "from_pretrained"
    loading_warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks) and not self.loading_warnings

    def worst(self) -> dict[str, float]:
        """Max abs diff per output kind over all inputs."""
        worst: dict[str, float] = {}
        for check in self.checks:
            worst[check.output] = max(worst.get(check.output, 0.0), check.max_abs_diff)
        return worst

    @property
    def non_finite(self) -> bool:
        return any(check.non_finite for check in self.checks)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "compared_in": self.compared_in, "loaded_with": self.loaded_with,
                "inputs": self.inputs,
                "max_abs_diff": self.worst(), "loading_warnings": self.loading_warnings,
                "checks": [check.as_dict() for check in self.checks]}


class _CollectWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load_transformers_model(folder: Path, architecture: str):
    """from_pretrained on the output folder, in float32, collecting loading warnings."""
    transformers = import_transformers()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    model_class = getattr(transformers, architecture)
    collector = _CollectWarnings()
    logger = logging.getLogger("transformers")
    logger.addHandler(collector)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report is collected below, not printed
    try:
        # Weights of another shape than config.json's are loaded as fresh ones and named below: Transformers'
        # own refusal points to a report that only its logger shows.
        model, info = model_class.from_pretrained(folder, dtype=torch.float32, output_loading_info=True,
                                                  ignore_mismatched_sizes=True)
    except Exception as error:  # whatever Transformers raises for a folder it cannot load
        raise ConversionError(f"cannot be loaded by {architecture}.from_pretrained ({library_message(error)})",
                              path=folder, hint="check that the folder holds the model's weights and config.json"
                              ) from None
    finally:
        transformers_logging.set_verbosity(verbosity)
        logger.removeHandler(collector)
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        raise shape_mismatch_error(folder, architecture, mismatched)
    warnings = [f"{kind}: {', '.join(sorted(keys))}" for kind, keys in info.items()
                if keys and kind in ("missing_keys", "unexpected_keys")]
    return model.eval(), warnings


def verification_inputs(vocab_size: int, positions: int, streamed: bool) -> dict[str, torch.Tensor]:
    """Input name -> right-padded token ids.

    `streamed` (a model run block by block): all inputs as one batch, so its weights are read once,
    and capped at STREAMED_MAX_TOKENS, as the cost is compute: two forward passes over every weight,
    per position of the padded batch. Each weight takes part at every position, and so does every
    row of the output embedding (the MLM logits); the position table is the one table whose rows the
    forward pass reaches only up to the longest input, and each of its rows is a verbatim copy of the
    source's, checked by shape in the plan. On RoBERTa large one pass over the weights costs about as
    much as 60 positions of compute: a batch per input would take longer.
    """
    if not streamed:
        return sample_inputs(vocab_size, positions - 2)
    inputs = sample_inputs(vocab_size, min(positions - 2, STREAMED_MAX_TOKENS))
    return {"all_inputs_as_one_batch": pad_together(list(inputs.values()))}


def per_language(inputs: dict[str, torch.Tensor], languages: tuple[str, ...]) -> tuple[dict[str, torch.Tensor],
                                                                                      dict[str, list[str]]]:
    """An X-MOD model's inputs, each once per language (named `input@lang`), and a padded batch with a
    language per row; with the language of every row. No languages: the inputs as they are."""
    if not languages:
        return inputs, {}
    expanded: dict[str, torch.Tensor] = {}
    row_languages: dict[str, list[str]] = {}
    for name, tokens in inputs.items():
        for language in languages:
            expanded[f"{name}@{language}"] = tokens
            row_languages[f"{name}@{language}"] = [language] * len(tokens)
    last = list(inputs)[-1]
    expanded[f"{last}@mixed"] = inputs[last]
    row_languages[f"{last}@mixed"] = [languages[row % len(languages)] for row in range(len(inputs[last]))]
    return expanded, row_languages


def reference_languages(inputs: dict[str, torch.Tensor], row_languages: dict[str, list[str]]) -> list[str] | None:
    """The language of every row of `reference_rows(inputs)`, or None for a model without languages."""
    if not row_languages:
        return None
    return [language for name in inputs for language in row_languages[name]]


def reference_rows(inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Every row of every input without its pads, in order: what the reference runs on.

    fairseq's outputs at real positions do not depend on padding; the reference's token rows then
    come in the order of the inputs' real positions.
    """
    return [row[row.ne(PAD)] for tokens in inputs.values() for row in tokens]


def outputs_per_input(everything: ReferenceOutputs, inputs: dict[str, torch.Tensor]) -> dict[str, ReferenceOutputs]:
    """The reference's outputs on `reference_rows(inputs)`, split by input: each a consecutive run."""
    split: dict[str, ReferenceOutputs] = {}
    token_start = sequence_start = 0
    for name, tokens in inputs.items():
        token_end, sequence_end = token_start + int(tokens.ne(PAD).sum()), sequence_start + len(tokens)
        split[name] = everything.select(slice(token_start, token_end), slice(sequence_start, sequence_end))
        token_start, sequence_start = token_end, sequence_end
    return split


def verify_weights(
    folder: Path,
    architecture: str,
    inputs: dict[str, torch.Tensor],
    expected: ReferenceOutputs,
    *,
    head: str | None,
    vocab_size: int,
    tolerance: float = DEFAULT_TOLERANCE,
    streamed: bool = False,
    row_languages: dict[str, list[str]] | None = None,
) -> WeightsVerification:
    """Compares the reference's outputs on `reference_rows(inputs)` with the folder's model on `inputs`.

    `streamed`: run the Transformers model block by block (see streamed_model.py), so memory holds
    one block of weights, not the model.
    """
    # One at a time in a process: building a model on the meta device pushes onto torch's global mode
    # stack, and two threads doing it at once leave each other's models half on "meta" for good.
    with _ONE_MODEL_AT_A_TIME, ExitStack() as stack:
        if streamed:
            streamed_model = stack.enter_context(StreamedModel(folder, architecture, passes=len(inputs)))
            model, warnings = streamed_model.model, streamed_model.loading_warnings
        else:
            model, warnings = load_transformers_model(folder, architecture)
        result = WeightsVerification(loading_warnings=warnings,
                                     loaded_with="block by block" if streamed else "from_pretrained")
        _compare(model, expected, inputs, head, vocab_size, tolerance, result, row_languages or {})
    return result


@dataclass(frozen=True)
class Difference:
    max_abs_diff: float  # over the positions finite on both sides
    non_finite: int  # positions where either side is NaN or Inf: equal NaNs prove nothing about the weights
    scale: float  # max |want| over its finite values, 0 where there are none


# Elements per step of `difference`: its temporaries are reused heap memory in the cache, not fresh pages
# (which cost more here than the sums), and each step is one of torch's serial grains: splitting a step
# this small over threads costs more than it computes (30x more, measured with another thread busy).
DIFFERENCE_STEP = 1 << 15


def difference(want: torch.Tensor, have: torch.Tensor) -> Difference:
    """Compares two outputs of one shape, a slice of rows at a time (a large vocabulary's logits would
    otherwise need several temporaries of their size)."""
    if want.shape != have.shape:
        raise ValueError(f"outputs of shapes {list(want.shape)} and {list(have.shape)} cannot be compared")
    want, have = want.reshape(-1), have.reshape(-1)
    largest = scale = 0.0
    finite_positions = 0
    for start in range(0, want.numel(), DIFFERENCE_STEP):
        wanted, had = want[start:start + DIFFERENCE_STEP], have[start:start + DIFFERENCE_STEP]
        wanted_finite = wanted.isfinite()
        finite = wanted_finite & had.isfinite()
        finite_positions += int(finite.count_nonzero())
        # where(), not a masked selection, which would copy
        largest = max(largest, float(torch.where(finite, (wanted - had).abs(), 0.0).max()))
        scale = max(scale, float(torch.where(wanted_finite, wanted.abs(), 0.0).max()))
    return Difference(largest, want.numel() - finite_positions, scale)


def pad_together(batches: list[torch.Tensor]) -> torch.Tensor:
    """Every row of every batch, pads removed, right-padded into one batch."""
    rows = [row[row.ne(PAD)] for batch in batches for row in batch]
    padded = torch.full((len(rows), max(len(row) for row in rows)), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded


def _compare(model, everything: ReferenceOutputs, inputs: dict[str, torch.Tensor], head: str | None,
             vocab_size: int, tolerance: float, result: WeightsVerification,
             row_languages: dict[str, list[str]]) -> None:
    for (name, tokens), expected in zip(inputs.items(), outputs_per_input(everything, inputs).values()):
        result.inputs[name] = list(tokens.shape)
        real = tokens.ne(PAD)  # fairseq zeroes pad positions; only real tokens are compared
        extra = {}
        if name in row_languages:  # X-MOD: each row through its language's adapters
            languages = list(model.config.languages)
            extra["lang_ids"] = torch.tensor([languages.index(lang) for lang in row_languages[name]])
        with torch.no_grad():
            if head is None:
                # The MLM head runs on the real positions only: full B x T x vocab logits of a large
                # vocabulary would dwarf everything else in memory.
                base = getattr(model, model.base_model_prefix)
                got = base(input_ids=tokens, attention_mask=real.long(), output_hidden_states=True, **extra)
                logits = model.lm_head(got.last_hidden_state[real])
            else:
                got = model(input_ids=tokens, attention_mask=real.long(), output_hidden_states=True, **extra)
                logits = got.logits
        if len(expected.hidden_states) != len(got.hidden_states):
            raise AssertionError("layer counts differ between the reference and the converted model")
        # Transformers' last hidden state is the encoder output: for pre-norm models, after the final
        # LayerNorm, where fairseq's last inner state is before it.
        pairs = [(f"hidden_states[{i}]", e, g[real])
                 for i, (e, g) in enumerate(zip(expected.hidden_states[:-1], got.hidden_states[:-1]))]
        pairs.append(("last_hidden_state", expected.last_hidden_state, got.hidden_states[-1][real]))
        if head is None:
            # Columns past the fairseq vocabulary are tokenizer aliases of <unk>: never predicted.
            pairs.append(("mlm_logits", expected.mlm_logits, logits[:, :vocab_size]))
            aliases = logits[:, vocab_size:]
            if aliases.numel() and float(aliases.max()) >= float(logits[:, :vocab_size].min()):
                result.loading_warnings.append("alias ids of <unk> get logits within the range of real tokens")
        else:
            pairs.append(("head_logits", expected.head_logits, logits))
        for output, want, have in pairs:
            found = difference(want, have)
            result.checks.append(OutputCheck(name, output, found.max_abs_diff, found.scale,
                                             tolerance * max(1.0, found.scale), found.non_finite))
