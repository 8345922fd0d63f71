"""fairseq's RoBERTa forward pass, written from fairseq's semantics, on the SOURCE tensors.

This module deliberately shares no key mapping with the converter: it finds fairseq tensors under their
own names (any generation) and computes what fairseq's RobertaModel computes. If the converter mapped a
tensor to the wrong place, the Transformers model and this reference disagree.

Tensors are fetched one at a time through `weight()`, so a forward pass holds one layer's weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..reader.tensors import LazyTensor

PAD = 1
EPS = 1e-5
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


@dataclass
class ReferenceOutputs:
    hidden_states: list[torch.Tensor]  # embeddings output, then each layer's output (B x T x C)
    last_hidden_state: torch.Tensor
    mlm_logits: torch.Tensor | None  # at the real (non-pad) positions only: N x vocab
    head_logits: torch.Tensor | None


class FairseqReference:
    """Computes fairseq RoBERTa outputs from a raw fairseq state dict of lazy tensors."""

    def __init__(self, state: dict[str, LazyTensor], hparams: dict, *, round_to: torch.dtype | None = None):
        self.state = state
        self.hparams = hparams
        self.round_to = round_to  # the output dtype when the converter casts; the reference rounds alike
        self.prefix = "decoder" if any(k.startswith("decoder.sentence_encoder.") for k in state) else "encoder"
        self._cache: dict[str, torch.Tensor] | None = None

    # ---- finding fairseq tensors under any generation's names --------------------------------------

    def has(self, name: str) -> bool:
        return self._lookup(name) is not None

    def weight(self, name: str) -> torch.Tensor:
        if self._cache is not None and name in self._cache:
            return self._cache[name]
        found = self._lookup(name)
        if found is None:
            raise KeyError(name)
        value = found() if callable(found) else found.load()
        if self.round_to is not None and value.is_floating_point():
            value = value.to(self.round_to)
        value = value.to(torch.float32)
        if self._cache is not None:
            self._cache[name] = value
        return value

    def _lookup(self, name: str):
        name = name.replace("encoder.", f"{self.prefix}.", 1) if name.startswith("encoder.") else name
        candidates = [name]
        if ".layernorm_embedding." in name:
            candidates.append(name.replace(".layernorm_embedding.", ".emb_layer_norm."))
        if ".self_attn_layer_norm." in name:
            candidates.append(name.replace(".self_attn_layer_norm.", ".layer_norms.0."))
        if ".final_layer_norm." in name:
            candidates.append(name.replace(".final_layer_norm.", ".layer_norms.1."))
        for candidate in candidates:
            if candidate in self.state:
                return self.state[candidate]
        for projection, part in (("q_proj", 0), ("k_proj", 1), ("v_proj", 2)):
            marker = f".self_attn.{projection}."
            if marker in name:
                fused = self.state.get(name.replace(f"{projection}.", "in_proj_"))
                if fused is not None:
                    return lambda fused=fused, part=part: fused.load().chunk(3, dim=0)[part]
        return None

    # ---- the model ---------------------------------------------------------------------------------

    def _layer_norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight(f"{name}.weight"), self.weight(f"{name}.bias"), EPS)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.weight(f"{name}.weight"), self.weight(f"{name}.bias"))

    def _attention(self, x: torch.Tensor, name: str, pad_mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        heads = self.hparams.get("encoder_attention_heads")
        if not isinstance(heads, int) or heads <= 0:
            heads = max(dim // 64, 1)  # RoBERTa's convention when the checkpoint does not say
        head_dim = dim // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, heads, head_dim).transpose(1, 2)

        q = split(self._linear(x, f"{name}.q_proj") * head_dim**-0.5)
        k = split(self._linear(x, f"{name}.k_proj"))
        v = split(self._linear(x, f"{name}.v_proj"))
        scores = q @ k.transpose(-1, -2)
        scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        context = torch.softmax(scores, dim=-1) @ v
        context = context.transpose(1, 2).reshape(batch, length, dim)
        return self._linear(context, f"{name}.out_proj")

    def num_layers(self) -> int:
        count = 0
        while any(k.startswith(f"{self.prefix}.sentence_encoder.layers.{count}.") for k in self.state):
            count += 1
        return count

    @contextmanager
    def stage(self):
        """Within a stage every tensor is read once, however many batches use it; then it is freed."""
        self._cache = {}
        try:
            yield
        finally:
            self._cache = None

    @torch.no_grad()
    def forward_many(self, batches: list[torch.Tensor], head: str | None) -> list[ReferenceOutputs]:
        """fairseq's forward pass on each batch, stage by stage, so weights are read once for all batches."""
        enc = "encoder.sentence_encoder"
        activation = ACTIVATIONS[self.hparams.get("activation_fn", "gelu")]
        pad_masks = [tokens.eq(PAD) for tokens in batches]
        pre_norm = self.has(f"{enc}.layer_norm.weight")
        with self.stage():
            xs = [self._embed(tokens, pad_mask) for tokens, pad_mask in zip(batches, pad_masks)]
        hiddens = [[x] for x in xs]
        for i in range(self.num_layers()):
            with self.stage():
                xs = [self._layer(f"{enc}.layers.{i}", x, pad_mask, pre_norm, activation)
                      for x, pad_mask in zip(xs, pad_masks)]
            for hidden, x in zip(hiddens, xs):
                hidden.append(x)
        if pre_norm:
            with self.stage():
                xs = [self._layer_norm(x, f"{enc}.layer_norm") for x in xs]
        with self.stage():
            outputs = []
            for x, hidden, pad_mask in zip(xs, hiddens, pad_masks):
                mlm = self._lm_logits(x[~pad_mask], activation) if head is None else None
                head_logits = self._head_logits(x[:, 0, :], head) if head is not None else None
                outputs.append(ReferenceOutputs(hidden, x, mlm, head_logits))
        return outputs

    def _embed(self, tokens: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        enc = "encoder.sentence_encoder"
        not_pad = (~pad_mask).long()
        positions = torch.cumsum(not_pad, dim=1) * not_pad + PAD  # fairseq.utils.make_positions
        x = F.embedding(tokens, self.weight(f"{enc}.embed_tokens.weight"))
        x = x + F.embedding(positions, self.weight(f"{enc}.embed_positions.weight"))
        if self.has(f"{enc}.layernorm_embedding.weight"):
            x = self._layer_norm(x, f"{enc}.layernorm_embedding")
        return x * not_pad.unsqueeze(-1).to(x.dtype)  # fairseq zeroes the pad positions

    def _layer(self, layer: str, x: torch.Tensor, pad_mask: torch.Tensor, pre_norm: bool, activation) -> torch.Tensor:
        if pre_norm:
            x = x + self._attention(self._layer_norm(x, f"{layer}.self_attn_layer_norm"), f"{layer}.self_attn", pad_mask)
            y = self._layer_norm(x, f"{layer}.final_layer_norm")
            return x + self._linear(activation(self._linear(y, f"{layer}.fc1")), f"{layer}.fc2")
        x = self._layer_norm(x + self._attention(x, f"{layer}.self_attn", pad_mask), f"{layer}.self_attn_layer_norm")
        y = self._linear(activation(self._linear(x, f"{layer}.fc1")), f"{layer}.fc2")
        return self._layer_norm(x + y, f"{layer}.final_layer_norm")

    def _lm_logits(self, x: torch.Tensor, activation) -> torch.Tensor:
        y = activation(self._linear(x, "encoder.lm_head.dense"))
        y = self._layer_norm(y, "encoder.lm_head.layer_norm")
        projection = (self.weight("encoder.lm_head.weight") if self.has("encoder.lm_head.weight")
                      else self.weight("encoder.sentence_encoder.embed_tokens.weight"))
        return F.linear(y, projection) + self.weight("encoder.lm_head.bias")

    def _head_logits(self, first_token: torch.Tensor, head: str) -> torch.Tensor:
        pooler = ACTIVATIONS[self.hparams.get("pooler_activation_fn", "tanh")]
        y = pooler(self._linear(first_token, f"classification_heads.{head}.dense"))
        return self._linear(y, f"classification_heads.{head}.out_proj")


def sample_inputs(vocab_size: int, max_tokens: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token-id inputs: short, medium and full-length sequences and a right-padded batch.

    Ids are drawn from the non-special range, framed by <s> ... </s> as fairseq's encode frames them.
    """
    generator = torch.Generator().manual_seed(seed)
    low, high = 4, max(vocab_size, 5)

    def sequence(length: int) -> torch.Tensor:
        body = torch.randint(low, high, (max(length - 2, 0),), generator=generator)
        return torch.cat([torch.tensor([0]), body, torch.tensor([2])])

    full = max(min(max_tokens, 512), 3)
    lengths = sorted({min(5, full), min(17, full), full})
    inputs = {f"length_{n}": sequence(n).unsqueeze(0) for n in lengths}
    batch = [sequence(n) for n in (min(9, full), min(3, full), min(14, full))]
    width = max(len(row) for row in batch)
    padded = torch.full((len(batch), width), PAD, dtype=torch.long)
    for row, values in enumerate(batch):
        padded[row, : len(values)] = values
    inputs["padded_batch"] = padded
    return inputs


def scale_of(tensor: torch.Tensor) -> float:
    finite = tensor[tensor.isfinite()]
    return float(finite.abs().max()) if finite.numel() else 0.0
