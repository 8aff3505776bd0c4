//! In-process embedding throughput, for `make bench-embeddings`: loads a text model and
//! embeds every text of a JSON Lines file (`{"text": ...}` per line) in batches, after
//! one warm-up batch, and prints one JSON line with sentences per second. DEVICE is
//! `cpu` (default), `cuda`, `cuda:N` or `auto`; results are copied back to the host, so
//! a GPU's time includes that.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p surge-model --example embed_bench -- \
//!     models all-minilm-l6-v2 out/bench-embeddings/texts.jsonl 64 [DEVICE]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use surge_model::{load_model, select_device, Batch, DeviceSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, name, input, batch, device) = match args.as_slice() {
        [d, n, i, b] => (d, n, i, b, "cpu"),
        [d, n, i, b, dev] => (d, n, i, b, dev.as_str()),
        _ => return Err("usage: embed_bench MODELS_DIR MODEL TEXTS.jsonl BATCH [DEVICE]".into()),
    };
    let spec: DeviceSpec = device.parse()?;
    let device = select_device(spec)?;
    let batch: usize = batch.parse()?;
    let texts: Vec<String> = std::fs::read_to_string(input)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(v["text"].as_str().unwrap_or_default().to_string())
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let t0 = Instant::now();
    let model = load_model(&PathBuf::from(dir), name, &device)?;
    let load_s = t0.elapsed().as_secs_f64();
    model.score(&Batch::Texts(&texts[..batch.min(texts.len())]))?;
    let t = Instant::now();
    let mut n = 0;
    for chunk in texts.chunks(batch.max(1)) {
        let s = model.score(&Batch::Texts(chunk))?;
        n += s.len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "kind": "surge_in_process",
            "sentences": n,
            "batch": batch,
            "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
            "device": spec.to_string(),
            // The Candle-op path instead of the fused CPU kernels (SURGE_BERT_KERNELS).
            "kernels": std::env::var("SURGE_BERT_KERNELS").unwrap_or_else(|_| "fused".into()),
            "seconds": secs,
            "per_s": n as f64 / secs,
            "load_s": load_s,
        })
    );
    Ok(())
}
