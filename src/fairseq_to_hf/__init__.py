"""Convert fairseq RoBERTa-family checkpoints into verified Hugging Face Transformers folders."""

__version__ = "0.1.0"

__all__ = ["CardOptions", "ConversionError", "ConversionReport", "ConvertOptions", "VerificationError", "__version__",
           "convert"]

_EXPORTS = {"convert": "pipeline", "ConvertOptions": "pipeline", "CardOptions": "card", "ConversionReport": "report",
            "ConversionError": "errors", "VerificationError": "errors"}


def __getattr__(name: str):
    # Imported on first use: the command line must route signals before torch is imported.
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
