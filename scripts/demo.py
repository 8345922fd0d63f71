"""Converts the bundled tiny fairseq checkpoints (a masked LM and a classifier) and uses them.

The checkpoints in tests/fixtures were trained with the real fairseq on a small corpus, with a
GPT-2-format BPE of their own; the tool reads them without fairseq, writes Transformers folders,
verifies them against a reference fairseq forward pass, and the folders then work with pipeline().
"""

from __future__ import annotations

from pathlib import Path

from transformers import pipeline

from fairseq_to_hf import convert

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BPE = FIXTURES / "gpt2_bpe"
OUT = ROOT / "demo-output"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name in ("roberta_mlm", "roberta_cls"):
        print(f"$ fairseq-to-hf convert tests/fixtures/{name} demo-output/{name} --encoder-json ... --vocab-bpe ...")
        report = convert(FIXTURES / name, OUT / name, encoder_json=BPE / "encoder.json",
                         vocab_bpe=BPE / "vocab.bpe", force=True, log=print)
        print(f"verified: {report.verified}\n")

    fill_mask = pipeline("fill-mask", model=str(OUT / "roberta_mlm"), top_k=3)
    text = "Return the <mask> of the list."
    print(f"fill-mask with the converted masked LM: {text!r}")
    for guess in fill_mask(text):
        print(f"  {guess['score']:.4f}  {guess['sequence']!r}")

    classify = pipeline("text-classification", model=str(OUT / "roberta_cls"))
    print("\ntext-classification with the converted classifier (labels from fairseq's label dict):")
    for sentence in ("This works great. Return a new list.", "I hate this bug. Close the file.",
                     "It is a function. Return the value."):
        result = classify(sentence)[0]
        print(f"  {result['label']:>9} {result['score']:.3f}  {sentence}")


if __name__ == "__main__":
    main()
