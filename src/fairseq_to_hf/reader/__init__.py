"""Reading fairseq checkpoint folders without fairseq and without running the pickle."""

from .checkpoint import Checkpoint, read_checkpoint
from .tensors import LazyTensor

__all__ = ["Checkpoint", "LazyTensor", "read_checkpoint"]
