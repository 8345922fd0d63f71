"""Convert fairseq RoBERTa-family checkpoints into verified Hugging Face Transformers folders."""

__version__ = "0.1.0"

from .convert import convert  # noqa: E402
from .errors import ConversionError, VerificationError  # noqa: E402
from .report import ConversionReport  # noqa: E402

__all__ = ["ConversionError", "ConversionReport", "VerificationError", "__version__", "convert"]
