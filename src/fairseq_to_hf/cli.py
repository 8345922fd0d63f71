"""The `fairseq-to-hf` command: argument parsing, messages on stderr, exit codes."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from . import __version__
from .arch.families import FAMILIES
from .errors import EXIT_INTERRUPTED, EXIT_OK, ConversionError
from .plan import LM_HEAD, OUTPUT_DTYPES
from .verify.compare import DEFAULT_TOLERANCE

EXIT_CODES_HELP = """exit codes:
  0    converted (and verified, unless --no-verify)
  1    verification failed: the converted model differs from fairseq; nothing was written
  2    bad input: missing or wrong files, unsupported model, ambiguous head; nothing was written
  3    OUT cannot be written: it exists (use --force), is not writable, or the disk filled up
  130  interrupted; nothing was written
"""

CONVERT_EXAMPLES = """examples:
  fairseq-to-hf convert roberta.base/ roberta-base-hf/
  fairseq-to-hf convert my-finetune/ out/ --checkpoint checkpoint_best.pt --head sentiment_head
  fairseq-to-hf convert glue-mnli/ out/ --all-heads
  fairseq-to-hf convert xlmr.xl/ out/ --dtype bfloat16 --max-shard-size 2GB
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairseq-to-hf",
        description="Convert fairseq RoBERTa-family checkpoints into verified Hugging Face Transformers folders, "
        "without fairseq and without running code from the checkpoint.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert a fairseq model folder into a Transformers folder",
        description="Read a fairseq checkpoint folder (model.pt + dict.txt) and write a Transformers folder "
        "(safetensors weights, config.json, conversion_report.json) that from_pretrained loads. The output "
        "is checked against a reference fairseq forward pass before it appears at OUT.",
        epilog=CONVERT_EXAMPLES + "\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("src", metavar="SRC", help="fairseq model folder (or the checkpoint file itself)")
    convert.add_argument("out", metavar="OUT", help="output folder; must not exist unless --force")
    convert.add_argument("--checkpoint", metavar="FILE",
                         help="checkpoint file in SRC (default: model.pt, or the only .pt file)")
    convert.add_argument("--dict", dest="dictionary", metavar="FILE",
                         help="fairseq token dictionary (default: SRC/dict.txt or SRC/input0/dict.txt)")
    convert.add_argument("--label-dict", metavar="FILE",
                         help="label dictionary of a classifier (default: SRC/label/dict.txt if present)")
    convert.add_argument("--encoder-json", metavar="FILE",
                         help="GPT-2 BPE encoder.json (default: SRC/encoder.json if present)")
    convert.add_argument("--vocab-bpe", metavar="FILE",
                         help="GPT-2 BPE vocab.bpe (default: SRC/vocab.bpe if present)")
    convert.add_argument("--sentencepiece-model", metavar="FILE",
                         help="sentencepiece model (default: SRC/sentencepiece.bpe.model if present)")
    convert.add_argument("--head", metavar="NAME",
                         help=f"classification head to convert, or '{LM_HEAD}' for the masked-LM head "
                         "(default: the only classification head, else the masked-LM head)")
    convert.add_argument("--all-heads", action="store_true",
                         help="write one folder per classification head under OUT")
    convert.add_argument("--model-type", choices=sorted(FAMILIES),
                         help="Transformers model type (default: detected from the checkpoint)")
    convert.add_argument("--dtype", choices=sorted(OUTPUT_DTYPES),
                         help="cast floating-point weights (default: keep the checkpoint's dtype)")
    convert.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                         help="largest safetensors file before sharding (default: 5GB)")
    convert.add_argument("--no-verify", dest="verify", action="store_false",
                         help="skip the comparison with a reference fairseq forward pass")
    convert.add_argument("--verify-text", metavar="FILE",
                         help="also check the tokenizer against fairseq's encode on every line of FILE")
    convert.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="X",
                         help="allowed max abs difference relative to each output's scale "
                         f"(default: {DEFAULT_TOLERANCE:g})")
    convert.add_argument("--force", action="store_true",
                         help="replace OUT if it exists (the old folder stays until the new one is complete)")
    convert.add_argument("--dry-run", action="store_true",
                         help="print the conversion plan (every tensor, its source, shape and dtype) and stop; "
                         "reads no tensor data and writes nothing")
    convert.add_argument("--json", action="store_true", help="print the conversion report as JSON on stdout")
    convert.add_argument("--quiet", action="store_true", help="print nothing but errors")
    inspect = commands.add_parser(
        "inspect",
        help="describe a fairseq checkpoint and what convert would produce, from metadata alone",
        description="Describe a fairseq model folder without reading tensor data: format, key generation, "
        "layout, sizes, parameters by dtype, heads, tokenizer files, and what convert would produce.",
        epilog="examples:\n  fairseq-to-hf inspect roberta.base/\n  fairseq-to-hf inspect my-finetune/ --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("src", metavar="SRC", help="fairseq model folder (or the checkpoint file itself)")
    inspect.add_argument("--checkpoint", metavar="FILE", help="checkpoint file in SRC (default: model.pt)")
    inspect.add_argument("--dict", dest="dictionary", metavar="FILE", help="fairseq token dictionary")
    inspect.add_argument("--encoder-json", metavar="FILE", help="GPT-2 BPE encoder.json")
    inspect.add_argument("--vocab-bpe", metavar="FILE", help="GPT-2 BPE vocab.bpe")
    inspect.add_argument("--sentencepiece-model", metavar="FILE", help="sentencepiece model")
    inspect.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up staged output as on Ctrl-C

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        if args.command == "convert":
            return _convert(args, log)
        if args.command == "inspect":
            return _inspect(args)
    except ConversionError as error:
        print(f"fairseq-to-hf: error: {error.render()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("fairseq-to-hf: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import format_inspection, inspect_source

    description = inspect_source(args.src, checkpoint=args.checkpoint, dictionary=args.dictionary,
                                 encoder_json=args.encoder_json, vocab_bpe=args.vocab_bpe,
                                 sentencepiece_model=args.sentencepiece_model)
    print(json.dumps(description, indent=2) if args.json else format_inspection(description))
    return EXIT_OK


def _convert(args: argparse.Namespace, log) -> int:
    from .convert import convert
    from .progress import WriteProgress

    report = convert(
        args.src,
        args.out,
        checkpoint=args.checkpoint,
        dictionary=args.dictionary,
        label_dict=args.label_dict,
        encoder_json=args.encoder_json,
        vocab_bpe=args.vocab_bpe,
        sentencepiece_model=args.sentencepiece_model,
        head=args.head,
        all_heads=args.all_heads,
        model_type=args.model_type,
        dtype=args.dtype,
        verify=args.verify,
        dry_run=args.dry_run,
        verify_text=args.verify_text,
        tolerance=args.tolerance,
        force=args.force,
        max_shard_size=args.max_shard_size,
        log=log,
        progress=None if args.quiet else WriteProgress(sys.stderr),
    )
    if args.dry_run:
        if args.json:
            print(json.dumps(report.as_dict(), indent=2))
        return EXIT_OK
    for output in report.outputs:
        status = "verified" if output.verification else "not verified (--no-verify)"
        log(f"wrote {output.folder}: {output.architecture}, {output.tensors_written} tensors, {status}")
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
