"""Converts the bundled tiny fairseq classifier and masked LM, then runs the converted models."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from fairseq_to_hf import convert

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = ROOT / "demo-output"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name in ("roberta_cls", "roberta_mlm"):
        report = convert(FIXTURES / name, OUT / name, force=True, log=print)
        print(f"-> {report.outputs[0].folder} ({report.outputs[0].architecture}), verified: {report.verified}\n")

    # fairseq's own encoding of a few sentences, recorded beside the checkpoint.
    recorded = json.loads((FIXTURES / "roberta_cls" / "fairseq_outputs.json").read_text())
    from safetensors.torch import load_file

    ids = load_file(FIXTURES / "roberta_cls" / "fairseq_outputs.safetensors")
    classifier = AutoModelForSequenceClassification.from_pretrained(OUT / "roberta_cls").eval()
    print("text classification with the converted roberta_cls:")
    for sample, info in recorded["samples"].items():
        if "text" not in info:
            continue
        with torch.no_grad():
            logits = classifier(input_ids=ids[f"{sample}.input_ids"]).logits[0]
        label = classifier.config.id2label[int(logits.argmax())]
        print(f"  {label:>9}  {info['text'][:70]}")

    masked_lm = AutoModelForMaskedLM.from_pretrained(OUT / "roberta_mlm").eval()
    tokens = ids["s0.input_ids"]
    with torch.no_grad():
        logits = masked_lm(input_ids=tokens).logits
    print(f"\nmasked LM output for {tokens.shape[1]} tokens: logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
