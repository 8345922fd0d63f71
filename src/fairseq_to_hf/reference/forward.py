"""fairseq's RoBERTa forward pass, written from fairseq's semantics, on the SOURCE tensors.

This module deliberately shares no key mapping with the converter: it finds fairseq tensors under their
own names (any generation) and computes what fairseq's RobertaModel computes. If the converter mapped a
tensor to the wrong place, the Transformers model and this reference disagree.

Tensors are read stage by stage (embeddings, one layer, the head), so a forward pass holds one layer's
weights, and the next one's as it arrives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConversionError
from ..reader.tensors import LazyTensor
from ..prefetch import Prefetcher

PAD = 1
EPS = 1e-5
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu_squared": lambda x: F.relu(x).pow(2),
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


@dataclass
class ReferenceOutputs:
    """fairseq's outputs for sequences packed end to end: one row per token, in sequence order."""

    hidden_states: list[torch.Tensor]  # embeddings output, then each layer's output (N x C)
    last_hidden_state: torch.Tensor  # N x C
    mlm_logits: torch.Tensor | None  # N x vocab
    head_logits: torch.Tensor | None  # one row per sequence

    def select(self, tokens: slice, sequences: slice) -> ReferenceOutputs:
        """The outputs of a run of consecutive sequences: their token rows and their head rows."""
        return ReferenceOutputs(
            hidden_states=[hidden[tokens] for hidden in self.hidden_states],
            last_hidden_state=self.last_hidden_state[tokens],
            mlm_logits=None if self.mlm_logits is None else self.mlm_logits[tokens],
            head_logits=None if self.head_logits is None else self.head_logits[sequences],
        )


Stage = tuple[str, ...]  # prefixes of the fairseq tensor names a stage of the forward pass uses


def _stored_spellings(name: str) -> tuple[str, ...]:
    """`encoder.X` may be stored as `decoder.X` (fairseq <= 0.9); fairseq renames key by key, so both can mix."""
    return (name, "decoder." + name.removeprefix("encoder.")) if name.startswith("encoder.") else (name,)


class FairseqReference:
    """Computes fairseq RoBERTa outputs from a raw fairseq state dict of lazy tensors."""

    def __init__(self, state: dict[str, LazyTensor], hparams: dict, *, round_to: torch.dtype | None = None):
        """`hparams`: the resolved hyper-parameters (hparams.resolve_hyper_parameters), never defaulted here."""
        self.state = state
        self.hparams = hparams
        self.round_to = round_to  # the output dtype when the converter casts; the reference rounds alike
        self._stage_tensors: dict[str, torch.Tensor] = {}

    # ---- finding fairseq tensors under any generation's names --------------------------------------

    def has(self, name: str) -> bool:
        return self._lookup(name) is not None

    def weight(self, name: str) -> torch.Tensor:
        found = self._lookup(name)
        if found is None:
            raise KeyError(name)
        key, part = found
        value = self._stage_tensors.get(key)
        if value is None:  # not among the current stage's tensors: read it now
            value = self._load(key)
        return value if part is None else value.chunk(3, dim=0)[part]

    def prepare(self, value: torch.Tensor) -> torch.Tensor:
        """A source tensor as the reference computes with it: rounded like the output, in float32."""
        if self.round_to is not None and value.is_floating_point():
            value = value.to(self.round_to)
        return value.to(torch.float32)

    def _load(self, key: str) -> torch.Tensor:
        return self.prepare(self.state[key].load())

    def _lookup(self, name: str) -> tuple[str, int | None] | None:
        """(fairseq key, which third of a fused q/k/v projection or None) holding `name`'s values."""
        for stored in _stored_spellings(name):
            found = self._lookup_spelling(stored)
            if found is not None:
                return found
        return None

    def _lookup_spelling(self, name: str) -> tuple[str, int | None] | None:
        candidates = [name]
        if ".layernorm_embedding." in name:
            candidates.append(name.replace(".layernorm_embedding.", ".emb_layer_norm."))
        if ".self_attn_layer_norm." in name:
            candidates.append(name.replace(".self_attn_layer_norm.", ".layer_norms.0."))
        if ".final_layer_norm." in name:
            candidates.append(name.replace(".final_layer_norm.", ".layer_norms.1."))
        for candidate in candidates:
            if candidate in self.state:
                return candidate, None
        for part, projection in enumerate(("q_proj", "k_proj", "v_proj")):
            marker = f".self_attn.{projection}."
            if marker in name:
                fused = name.replace(f"{projection}.", "in_proj_")
                if fused in self.state:
                    return fused, part
        return None

    def _hparam(self, name: str):
        """A hyper-parameter the forward pass needs. A default here would be shared with the converter,
        which then could not be caught computing with a wrong value."""
        value = self.hparams.get(name)
        if value is None:
            raise ConversionError(f"the reference forward pass needs {name}, which its hyper-parameters lack",
                                  hint="pass the resolved hyper-parameters (plan.hyper_parameters.values)")
        return value

    # ---- reading weights stage by stage ------------------------------------------------------------

    def stages(self, head: str | None) -> list[Stage]:
        """The stages of the forward pass in the order they run."""
        enc = "encoder.sentence_encoder"
        stages: list[Stage] = [(f"{enc}.embed_tokens.", f"{enc}.embed_positions.",
                                f"{enc}.layernorm_embedding.", f"{enc}.emb_layer_norm.")]
        stages += [(f"{enc}.layers.{i}.",) for i in self.layer_ids()]
        if self._pre_norm():
            stages.append((f"{enc}.layer_norm.",))
        if head is not None:
            stages.append((f"classification_heads.{head}.",))
        elif self.has("encoder.lm_head.weight"):
            stages.append(("encoder.lm_head.",))
        else:
            stages.append(("encoder.lm_head.", f"{enc}.embed_tokens."))
        return stages

    def stage_keys(self, stage: Stage) -> list[str]:
        """The fairseq keys of the tensors a stage uses."""
        prefixes = tuple(spelling for prefix in stage for spelling in _stored_spellings(prefix))
        return [key for key in self.state if key.startswith(prefixes)]

    def _load_stage(self, stage: Stage) -> dict[str, torch.Tensor]:
        return {key: self._load(key) for key in self.stage_keys(stage)}

    def _pre_norm(self) -> bool:
        return self.has("encoder.sentence_encoder.layer_norm.weight")

    @contextmanager
    def _using(self, tensors: dict[str, torch.Tensor]):
        """Within the block, `weight()` serves these tensors; after it they are freed."""
        self._stage_tensors = tensors
        try:
            yield
        finally:
            self._stage_tensors = {}

    # ---- the model ---------------------------------------------------------------------------------

    def _layer_norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight(f"{name}.weight"), self.weight(f"{name}.bias"), EPS)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.weight(f"{name}.weight"), self.weight(f"{name}.bias"))

    def _attention(self, x: torch.Tensor, name: str, lengths: list[int]) -> torch.Tensor:
        """Self-attention of each sequence over itself only (the rows of x are the packed sequences)."""
        dim = x.shape[-1]
        heads = self._hparam("encoder_attention_heads")
        head_dim = dim // heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(len(t), heads, head_dim).transpose(0, 1)

        q = self._linear(x, f"{name}.q_proj") * head_dim**-0.5
        k = self._linear(x, f"{name}.k_proj")
        v = self._linear(x, f"{name}.v_proj")
        contexts = []
        for q_seq, k_seq, v_seq in zip(q.split(lengths), k.split(lengths), v.split(lengths)):
            scores = split(q_seq) @ split(k_seq).transpose(-1, -2)
            context = torch.softmax(scores, dim=-1) @ split(v_seq)
            contexts.append(context.transpose(0, 1).reshape(len(q_seq), dim))
        return self._linear(torch.cat(contexts), f"{name}.out_proj")

    def num_layers(self) -> int:
        count = 0
        while any(k.startswith(_stored_spellings(f"encoder.sentence_encoder.layers.{count}.")) for k in self.state):
            count += 1
        return count

    def layer_ids(self) -> list[int]:
        """The stored layers fairseq runs, in order: with `encoder_layers_to_keep` (LayerDrop pruning)
        fairseq's loader keeps only those (checkpoint_utils.prune_state_dict), else all of them."""
        keep = self.hparams.get("encoder_layers_to_keep")
        if not keep:
            return list(range(self.num_layers()))
        return sorted(int(layer) for layer in str(keep).split(","))

    def position_table(self) -> torch.Tensor:
        """The table fairseq looks positions up in: the stored one, else the one its encoder computes
        (SinusoidalPositionalEmbedding, max_positions + padding_idx + 1 rows), or zeros for none."""
        enc = "encoder.sentence_encoder"
        if self.has(f"{enc}.embed_positions.weight"):
            return self.weight(f"{enc}.embed_positions.weight")
        found = self._lookup(f"{enc}.embed_tokens.weight")
        if found is None:
            raise KeyError(f"{enc}.embed_tokens.weight")
        words = self.state[found[0]]  # read for its width only
        dim = words.shape[1]
        rows = self._hparam("max_positions") + PAD + 1
        if self._hparam("no_token_positional_embeddings"):
            return torch.zeros(rows, dim)
        if self._hparam("encoder_learned_pos"):
            raise ConversionError("the checkpoint has no learned position table, though encoder_learned_pos is set")
        half = dim // 2
        step = math.log(10000) / (half - 1)
        inverse_frequencies = torch.exp(torch.arange(half, dtype=torch.float) * -step)
        angle = torch.outer(torch.arange(rows, dtype=torch.float), inverse_frequencies)
        table = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)
        if dim % 2:
            table = torch.cat([table, torch.zeros(rows, 1)], dim=1)
        table[PAD] = 0
        return self.prepare(table)  # float32, as fairseq computes it whatever the checkpoint's dtype

    @torch.no_grad()
    def forward(self, sequences: list[torch.Tensor], head: str | None,
                take_stage: Callable[[Stage], dict[str, torch.Tensor]] | None = None,
                languages: list[str | None] | None = None) -> ReferenceOutputs:
        """fairseq's forward pass on each sequence of token ids (no pads), all at once.

        fairseq's outputs at a sequence's real positions do not depend on padding or on the other
        sequences of its batch, so the sequences are packed end to end: every linear layer then runs
        once on all tokens, and only attention looks at one sequence at a time.

        `take_stage(stage)` supplies a stage's tensors (by fairseq key, prepared); by default they are
        read from the checkpoint, the next stage's while this one computes.

        `languages`: an X-MOD model's lang_id of each sequence (None: fairseq's default, en_XX).
        """
        enc = "encoder.sentence_encoder"
        activation = ACTIVATIONS[self._hparam("activation_fn")]
        lengths = [len(sequence) for sequence in sequences]
        tokens = torch.cat(sequences)
        # fairseq.utils.make_positions: a sequence's positions count from padding_idx + 1.
        positions = torch.cat([torch.arange(length) for length in lengths]) + PAD + 1
        pre_norm = self._pre_norm()
        order = self.stages(head)
        with ExitStack() as stack:
            if take_stage is None:
                take_stage = stack.enter_context(Prefetcher(order, self._load_stage)).take
            stages = iter(order)
            with self._using(take_stage(next(stages))):
                x = self._embed(tokens, positions)
            hidden_states = [x]
            for i in self.layer_ids():
                with self._using(take_stage(next(stages))):
                    x = self._layer(f"{enc}.layers.{i}", x, lengths, pre_norm, activation, languages)
                hidden_states.append(x)
            if pre_norm:
                with self._using(take_stage(next(stages))):
                    x = self._layer_norm(x, f"{enc}.layer_norm")
            with self._using(take_stage(next(stages))):
                mlm = self._lm_logits(x, activation) if head is None else None
                first_tokens = torch.tensor([0, *lengths[:-1]]).cumsum(0)
                head_logits = self._head_logits(x[first_tokens], head) if head is not None else None
        return ReferenceOutputs(hidden_states, x, mlm, head_logits)

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        enc = "encoder.sentence_encoder"
        x = F.embedding(tokens, self.weight(f"{enc}.embed_tokens.weight"))
        x = x + F.embedding(positions, self.position_table())
        if self.has(f"{enc}.layernorm_embedding.weight"):
            x = self._layer_norm(x, f"{enc}.layernorm_embedding")
        return x

    def _layer(self, layer: str, x: torch.Tensor, lengths: list[int], pre_norm: bool, activation,
               languages: list[str | None] | None) -> torch.Tensor:
        if pre_norm:
            x = x + self._attention(self._layer_norm(x, f"{layer}.self_attn_layer_norm"), f"{layer}.self_attn", lengths)
            y = self._layer_norm(x, f"{layer}.final_layer_norm")
            x = x + self._linear(activation(self._linear(y, f"{layer}.fc1")), f"{layer}.fc2")
            return self._lang_adapter(layer, x, lengths, activation, languages)
        x = self._layer_norm(x + self._attention(x, f"{layer}.self_attn", lengths), f"{layer}.self_attn_layer_norm")
        y = self._linear(activation(self._linear(x, f"{layer}.fc1")), f"{layer}.fc2")
        x = self._lang_adapter(layer, x + y, lengths, activation, languages)
        return self._layer_norm(x, f"{layer}.final_layer_norm")

    def _lang_adapter(self, layer: str, x: torch.Tensor, lengths: list[int], activation,
                      languages: list[str | None] | None) -> torch.Tensor:
        """fairseq's XMODTransformerEncoderLayerBase.lang_adapter: after the FFN's residual, before a
        post-norm final_layer_norm; each sequence through its language's bottleneck adapter."""
        marker = layer.removeprefix("encoder") + ".adapter_modules."  # under encoder. or decoder.
        if not any(marker in key for key in self.state):
            return x
        ln_before_adapter = self._hparam("ln_before_adapter")
        residual = x
        if self.has(f"{layer}.adapter_layer_norm.weight"):
            x = self._layer_norm(x, f"{layer}.adapter_layer_norm")
        elif self._hparam("adapter_reuse_layer_norm"):
            x = self._layer_norm(x, f"{layer}.final_layer_norm")
        if ln_before_adapter:
            residual = x
        adapted = []
        for language, rows in zip(languages or [None] * len(lengths), x.split(lengths)):
            name = f"{layer}.adapter_modules.{(language or 'en_XX').replace('_rom', '').replace('_zaw', '')}"
            adapted.append(self._linear(activation(self._linear(rows, f"{name}.fc1")), f"{name}.fc2"))
        return torch.cat(adapted) + residual

    def _lm_logits(self, x: torch.Tensor, activation) -> torch.Tensor:
        y = activation(self._linear(x, "encoder.lm_head.dense"))
        y = self._layer_norm(y, "encoder.lm_head.layer_norm")
        projection = (self.weight("encoder.lm_head.weight") if self.has("encoder.lm_head.weight")
                      else self.weight("encoder.sentence_encoder.embed_tokens.weight"))
        return F.linear(y, projection) + self.weight("encoder.lm_head.bias")

    def _head_logits(self, first_token: torch.Tensor, head: str) -> torch.Tensor:
        pooler = ACTIVATIONS[self._hparam("pooler_activation_fn")]
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
