"""fairseq's computation, re-implemented on its own terms: what a conversion is verified against.

encode.py: fairseq's BPE encoders and `encode` (text -> dict.txt ids); forward.py: the RoBERTa forward
pass on the checkpoint's own tensors. Neither shares code or assumptions with the converter (plan/,
tokenizer/'s Transformers side, writer.py): a mistake there cannot verify itself.
"""
