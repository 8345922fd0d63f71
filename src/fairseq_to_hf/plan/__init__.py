"""plan: from a checkpoint's metadata to checked output plans, before a byte is written.

source.py analyses the checkpoint once (`normalise_source`, `analyse_source` -> SourceModel);
output.py plans each output from it (`make_plan`); families.py declares the Transformers families,
config.py builds config.json.
"""

from .config import ACTIVATIONS
from .families import FAMILIES, Family, strip_language
from .output import LM_HEAD, OUTPUT_DTYPES, ConversionPlan, OutputRequest, TensorPlan, make_plan
from .source import (Dims, HeadInfo, NormalisedSource, SourceModel, analyse_source, describe_heads,
                     dictionary_kind, list_heads, normalise_source)

__all__ = ["ACTIVATIONS", "FAMILIES", "LM_HEAD", "OUTPUT_DTYPES", "ConversionPlan", "Dims", "Family", "HeadInfo",
           "NormalisedSource", "OutputRequest", "SourceModel", "TensorPlan", "analyse_source", "describe_heads",
           "dictionary_kind", "list_heads", "make_plan", "normalise_source", "strip_language"]
