"""plan: from a checkpoint's metadata to checked output plans, before a byte is written.

source.py analyses the checkpoint once (`normalise_source`, `analyse_source` -> SourceModel);
output.py plans each output from it (`make_plan`); families.py declares the Transformers families,
config.py builds config.json.
"""

_EXPORTS = {
    "config": ("ACTIVATIONS", "OUTPUT_DTYPE_NAMES"),
    "families": ("FAMILIES", "LM_HEAD", "Family", "strip_language"),
    "output": ("OUTPUT_DTYPES", "ConversionPlan", "OutputRequest", "TensorPlan", "make_plan"),
    "source": ("Dims", "HeadInfo", "NormalisedSource", "SourceModel", "analyse_source", "describe_heads",
               "dictionary_kind", "list_heads", "normalise_source"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    # Imported on first use: the command line builds its parser from families.py and config.py's
    # names without importing torch (see cli._hash_early).
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
