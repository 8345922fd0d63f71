"""The --max-shard-size of the safetensors output: parsed without torch, for the command line's parser."""

from __future__ import annotations

from .errors import ConversionError

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # the Hub's "5GB"
MAX_SHARD_BYTES = 10**15
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes (decimal units as in huggingface_hub)."""
    value = str(size).strip().upper()
    number = value.rstrip("KMGTIB")
    try:
        amount = float(number) * UNITS[value[len(number):]]
    except (ValueError, KeyError):
        raise ConversionError(f"cannot read the size {size!r}; write it like 5GB or 500MB") from None
    if not (1 <= amount <= MAX_SHARD_BYTES):  # also refuses nan and inf
        raise ConversionError(f"the shard size {size!r} must be between 1 byte and 1PB")
    return int(amount)
