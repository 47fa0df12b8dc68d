#!/usr/bin/env python3
"""Oracle for the real transformer export: paraphrase-MiniLM-L3-v2 (ONNX, opset 17).

Tokenizes generated English sentences with the vendored bert-base-uncased WordPiece tokenizer
(tests/data/minilm/tokenizer.json), padded to 128 tokens, and writes OUT/calib.npz (48 sentences),
OUT/eval.npz (64 other sentences, none used for calibration) and OUT/expected.npz (onnxruntime FP32
output 461, the sentence embedding, on eval.npz).
Usage: python3 tests/oracle/minilm.py MODEL.onnx OUT_DIR
"""
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model, out = sys.argv[1], sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
tok = Tokenizer.from_file(os.path.join(here, "..", "data", "minilm", "tokenizer.json"))
tok.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
tok.enable_truncation(max_length=128)

subjects = ["The engineer", "A small robot", "My neighbour's cat", "The quarterly report", "Our team in Berlin",
            "This old bridge", "The new firmware", "A quiet student", "The weather service", "Every morning train",
            "The hospital", "A retired pilot", "The river", "The committee", "Her startup"]
verbs = ["quickly fixed", "carefully reviewed", "never mentioned", "slowly crossed", "accidentally deleted",
         "proudly presented", "barely survived", "loudly criticised", "secretly improved", "finally approved"]
objects = ["the broken sensor", "a long list of complaints", "the budget for next year", "the muddy field behind the school",
           "an unexpected error in the logs", "the results of the clinical trial", "a recipe for lemon cake",
           "the northern mountain pass", "three thousand lines of code", "the annual safety inspection"]
tails = ["", " before the storm arrived", " while everyone was asleep", " because the deadline had moved",
         " and then went home early", ", which surprised nobody", " despite the terrible traffic in the city centre",
         " after a long and frustrating discussion with the suppliers about delivery dates and prices"]
rng = np.random.default_rng(2024)
sents = set()
while len(sents) < 112:
    s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}."
    sents.add(s)
sents = sorted(sents)
rng.shuffle(sents)


def encode(batch):
    enc = tok.encode_batch(batch)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    return {"input_ids": ids, "attention_mask": mask}


os.makedirs(out, exist_ok=True)
calib, ev = encode(sents[:48]), encode(sents[48:])
np.savez(os.path.join(out, "calib.npz"), **calib)
np.savez(os.path.join(out, "eval.npz"), **ev)
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
(emb,) = sess.run(["461"], ev)
np.savez(os.path.join(out, "expected.npz"), **{"461": emb})
with open(os.path.join(out, "sentences.txt"), "w") as f:
    f.write("\n".join(sents))
print(f"wrote MiniLM oracle ({len(sents)} sentences) to {out}", file=sys.stderr)
