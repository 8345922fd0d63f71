from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"
GPT2_BPE = FIXTURES / "gpt2_bpe"
# The command-line flags that give the GPT-2 BPE files to a conversion.
GPT2_FLAGS = ["--encoder-json", str(GPT2_BPE / "encoder.json"), "--vocab-bpe", str(GPT2_BPE / "vocab.bpe")]
PAD_ID = 1


class FairseqRecording:
    """What the real fairseq computed for a fixture (made by tools/make_fixtures.py)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "fairseq_outputs.json").read_text())
        self.tensors = load_file(folder / "fairseq_outputs.safetensors")

    @property
    def samples(self) -> list[str]:
        return list(self.meta["samples"])

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]


def recording(name: str) -> FairseqRecording:
    return FairseqRecording(FIXTURES / name)


def max_abs_diff(expected: torch.Tensor, actual: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        expected, actual = expected[mask], actual[mask]
    return float((expected - actual).abs().max())


TOLERANCE = 1e-5  # relative to the output's scale (max |value|, at least 1)


def assert_matches_fairseq(fixture: str, out: Path, auto_class, head: str | None) -> dict[str, float]:
    """Runs the Transformers model from `out` on fairseq's inputs; returns max abs diff per output."""
    fairseq = recording(fixture)
    model, info = auto_class.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model.eval()
    layers = fairseq.meta["num_layers"]
    worst: dict[str, float] = {}

    def check(output: str, expected: torch.Tensor, actual: torch.Tensor, mask: torch.Tensor | None) -> None:
        diff = max_abs_diff(expected, actual, mask)
        scale = float(expected.abs().max())
        assert diff <= TOLERANCE * max(1.0, scale), f"{fixture} {output}: max abs diff {diff:.3g}"
        worst[output] = max(worst.get(output, 0.0), diff)

    # X-MOD recordings hold every language's outputs as `{sample}.{lang}.*`, with the lang_id fairseq got.
    calls = fairseq.meta.get("language_calls")
    for sample in fairseq.samples:
        tokens = fairseq[f"{sample}.input_ids"]
        real = tokens.ne(PAD_ID)
        runs = {f"{sample}.": {}} if not calls else {
            f"{sample}.{key}.": {} if lang_id is None else {"lang_ids": xmod_lang_ids(model.config, lang_id)}
            for key, lang_id in calls[sample].items()}
        for prefix, extra in runs.items():
            with torch.no_grad():
                got = model(input_ids=tokens, attention_mask=real.long(), output_hidden_states=True, **extra)
            assert len(got.hidden_states) == layers + 1
            for i in range(layers):
                check(f"hidden_states[{i}]", fairseq[f"{prefix}hidden.{i}"], got.hidden_states[i], real)
            check("last_hidden_state", fairseq[f"{prefix}features"], got.hidden_states[layers], real)
            if head is None:
                # Columns past fairseq's vocabulary belong to tokenizer aliases of <unk>.
                vocab = fairseq.meta["vocab_size"]
                check("mlm_logits", fairseq[f"{prefix}mlm_logits"], got.logits[..., :vocab], real)
            else:
                check("head_logits", fairseq[f"{prefix}head.{head}"], got.logits, None)
    return worst


def xmod_lang_ids(config, lang_id: list[str]) -> torch.Tensor:
    """Transformers' lang_ids for fairseq's lang_id list: fairseq drops `_rom`/`_zaw` to pick the adapter."""
    languages = list(config.languages)
    return torch.tensor([languages.index(lang.replace("_rom", "").replace("_zaw", "")) for lang in lang_id])


def json_file(path: Path) -> dict:
    return json.loads(path.read_text())
