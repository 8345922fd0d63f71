"""Reading fairseq checkpoint folders without fairseq and without running the pickle."""

__all__ = ["Checkpoint", "LazyTensor", "read_checkpoint"]

_EXPORTS = {"Checkpoint": "checkpoint", "read_checkpoint": "checkpoint", "LazyTensor": "tensors"}


def __getattr__(name: str):
    # Imported on first use: finding a folder's files (reader.folder) must not import torch.
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
