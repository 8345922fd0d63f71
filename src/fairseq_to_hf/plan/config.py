"""The config.json of a planned output: every field from the checkpoint, none guessed.

Fields only one family has come from its declaration (`Family.config_fields` in plan/families.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..reader.dictionary import PAD_ID

if TYPE_CHECKING:  # the command line reads the names below before torch is imported
    import torch

    from .source import HeadInfo, SourceModel

# fairseq activation_fn -> Transformers hidden_act (same function on both sides).
ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new", "gelu_fast": "gelu_new", "relu": "relu",
               "relu_squared": "relu2", "tanh": "tanh", "linear": "linear"}
LAYER_NORM_EPS = 1e-5
OUTPUT_DTYPE_NAMES = ("float32", "float16", "bfloat16")  # --dtype; torch's dtypes of these names


def _probability(hparams: dict[str, Any], name: str, default: float) -> float:
    """Dropout does not change inference: a value of the wrong type falls back to the default."""
    value = hparams.get(name, default)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def build_config(model: SourceModel, architecture: str, head: HeadInfo | None, dtype: torch.dtype,
                 labels: list[str] | None, extra_vocab_rows: int = 0) -> dict[str, Any]:
    dims, hparams = model.dims, model.hyper_parameters.values
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model.family.model_type,
        "vocab_size": dims.vocab_size + extra_vocab_rows,
        "hidden_size": dims.hidden_size,
        "num_hidden_layers": dims.num_layers,
        "num_attention_heads": dims.num_heads,
        "intermediate_size": dims.ffn_size,
        "hidden_act": ACTIVATIONS[hparams["activation_fn"]],
        "hidden_dropout_prob": _probability(hparams, "dropout", 0.1),
        "attention_probs_dropout_prob": _probability(hparams, "attention_dropout", 0.1),
        "max_position_embeddings": dims.positions,
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": LAYER_NORM_EPS,
        "pad_token_id": PAD_ID,
        "bos_token_id": model.framing_ids[0],
        "eos_token_id": model.framing_ids[1],
        "position_embedding_type": "absolute",
        "tie_word_embeddings": model.tied,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if head is not None:
        config["classifier_dropout"] = _probability(hparams, "pooler_dropout", 0.0)
        config["num_labels"] = head.num_classes
        if head.num_classes == 1:
            config["problem_type"] = "regression"
            names = ["LABEL_0"]
        else:
            config["problem_type"] = "single_label_classification"
            names = labels if labels else [f"LABEL_{i}" for i in range(head.num_classes)]
        config["id2label"] = {str(i): name for i, name in enumerate(names)}
        config["label2id"] = {name: i for i, name in enumerate(names)}
    return config
