"""The conversion pipeline: read -> plan -> write -> verify, into a folder that appears only when done."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from .errors import ConversionError, VerificationError
from .plan import OUTPUT_DTYPES, ConversionPlan, PlanOptions, describe_heads, list_heads, make_plan
from .reader.checkpoint import Checkpoint, read_checkpoint
from .reader.dictionary import read_dictionary
from .reader.folder import find_source_files
from .report import REPORT_FILE, ConversionReport, OutputReport
from .verify.compare import DEFAULT_TOLERANCE
from .writer import DEFAULT_MAX_SHARD_BYTES, check_output_target, parse_size, staged_output, write_json, write_weights

Log = Callable[[str], None]


def convert(
    src: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    dictionary: str | Path | None = None,
    label_dict: str | Path | None = None,
    head: str | None = None,
    all_heads: bool = False,
    model_type: str | None = None,
    dtype: str | None = None,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_BYTES,
    log: Log | None = None,
) -> ConversionReport:
    """Converts a fairseq RoBERTa-family checkpoint folder into a Transformers folder at `out`.

    Raises a ConversionError subclass (with nothing written) for bad input, and VerificationError
    (with nothing written) when the converted model does not reproduce fairseq's outputs.
    """
    say = log or (lambda message: None)
    out = Path(out)
    max_shard_bytes = parse_size(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    check_output_target(out, force=force)
    files = find_source_files(src, checkpoint=checkpoint, dictionary=dictionary, label_dictionary=label_dict)
    source = read_checkpoint(files.checkpoint)
    token_dictionary = read_dictionary(files.dictionary)
    label_dictionary = read_dictionary(files.label_dictionary) if files.label_dictionary else None

    base = PlanOptions(head=head, model_type=model_type, dtype=dtype, label_dictionary=label_dictionary,
                       strict_labels=not all_heads and label_dict is not None)
    if all_heads:
        heads = list_heads(source)
        if not heads:
            raise ConversionError("has no classification heads for --all-heads", path=files.checkpoint)
        plans = {h.name: make_plan(source, token_dictionary, _with_head(base, h.name)) for h in heads}
    else:
        plans = {"": make_plan(source, token_dictionary, base)}

    any_plan = next(iter(plans.values()))
    report = ConversionReport(
        source_checkpoint=files.checkpoint,
        source_dictionary=files.dictionary,
        checkpoint_format=source.format,
        key_generation=any_plan.key_generation,
        hparams_source=source.hparams_source,
        layout="pre-norm" if any_plan.family.pre_norm else "post-norm",
        dims=vars(any_plan.dims).copy(),
        heads_in_checkpoint={h.name: h.num_classes for h in any_plan.heads},
    )
    say(f"read {files.checkpoint} ({source.format} format, {report.key_generation} keys, "
        f"{len(source.tensors)} tensors); heads: {', '.join(describe_heads(any_plan.heads)) or 'none'}")

    with staged_output(out, force=force) as staging:
        for name, plan in plans.items():
            folder = staging / name if name else staging
            folder.mkdir(exist_ok=True)
            output = _write_one(folder, out / name if name else out, plan, max_shard_bytes, say)
            if verify:
                output.verification = _verify_one(folder, plan, source, dtype, tolerance, say)
            report.outputs.append(output)
            write_json(folder / REPORT_FILE, report.as_dict(only=output))
        failed = [o for o in report.outputs if o.verification is not None and not o.verification["passed"]]
        if failed:
            raise VerificationError(
                "the converted model does not reproduce fairseq's outputs; nothing was written",
                details=[_failure_summary(o) for o in failed],
            )
        if all_heads:
            write_json(staging / REPORT_FILE, report.as_dict())
    return report


def _with_head(options: PlanOptions, head: str) -> PlanOptions:
    return PlanOptions(head=head, model_type=options.model_type, dtype=options.dtype,
                       label_dictionary=options.label_dictionary, strict_labels=False)


def _write_one(folder: Path, final_folder: Path, plan: ConversionPlan, max_shard_bytes: int, say: Log) -> OutputReport:
    say(f"writing {plan.architecture} ({len(plan.tensors)} tensors, {plan.total_bytes / 1e6:.1f} MB)")
    files = write_weights(folder, plan, max_shard_bytes)
    write_json(folder / "config.json", plan.config)
    files.append("config.json")
    head = plan.head
    labels = None
    if head is not None and head.num_classes > 1:
        labels = [plan.config["id2label"][str(i)] for i in range(head.num_classes)]
    return OutputReport(
        folder=final_folder,
        architecture=plan.architecture,
        model_type=plan.family.model_type,
        head=head.name if head else None,
        num_labels=head.num_classes if head else None,
        labels=labels,
        dtype=plan.config["dtype"],
        files=files,
        tensors_written=len(plan.tensors),
        bytes_written=plan.total_bytes,
        dropped=dict(plan.dropped),
        notes=list(plan.notes),
    )


def _verify_one(folder: Path, plan: ConversionPlan, source: Checkpoint, dtype: str | None,
                tolerance: float, say: Log) -> dict:
    from .verify.compare import verify_weights  # imports transformers: only when verifying

    say("verifying against a reference fairseq forward pass on the source tensors")
    round_to: torch.dtype | None = OUTPUT_DTYPES[dtype] if dtype else None
    result = verify_weights(
        folder, plan.architecture, source.tensors, source.hparams,
        head=plan.head.name if plan.head else None,
        vocab_size=plan.dims.vocab_size, positions=plan.dims.positions,
        round_to=round_to, tolerance=tolerance,
    )
    for kind, diff in result.worst().items():
        say(f"  max abs diff {kind:<18} {diff:.3g}")
    return result.as_dict()


def _failure_summary(output: OutputReport) -> str:
    verification = output.verification or {}
    failing = [c for c in verification.get("checks", []) if not c["passed"]]
    parts = [f"{c['output']}: max abs diff {c['max_abs_diff']:.3g} > {c['tolerance']:.3g}" for c in failing[:4]]
    parts += verification.get("loading_warnings", [])
    return f"{output.architecture}{' head ' + output.head if output.head else ''}: " + "; ".join(parts)
