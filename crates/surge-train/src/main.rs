//! `surge-train`: trains the shipped breast-cancer model and writes its folder
//! (`model.safetensors`, `model.toml`, `README.md`, `sample.csv`). Run by `make train`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use surge_train::{accuracy, auc, load_csv, train, TrainConfig};

const NAME: &str = "breast-cancer";

/// f32 written through f64 so that TOML's f64 parse gives back the exact same f32.
fn floats(values: &[f32]) -> String {
    values
        .iter()
        .map(|v| format!("{}", f64::from(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> Result<()> {
    // One thread: the same machine kind then gives the same bits on every run.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let mut args = std::env::args().skip(1);
    let data = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "data/breast-cancer-wisconsin/data.csv".into()),
    );
    let out = PathBuf::from(args.next().unwrap_or_else(|| format!("models/{NAME}")));

    let ds = load_csv(&data)?;
    let cfg = TrainConfig::default();
    let t = train(&ds, &cfg)?;
    let labels: Vec<f32> = t.test.iter().map(|&i| ds.y[i]).collect();
    let (acc, roc) = (
        accuracy(&t.test_scores, &labels),
        auc(&t.test_scores, &labels),
    );
    eprintln!(
        "trained: final train loss {:.5}, held-out accuracy {acc:.4}, AUC {roc:.4} ({} examples)",
        t.final_loss,
        labels.len()
    );

    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut map = HashMap::new();
    for (name, shape, values) in &t.tensors {
        map.insert(
            name.clone(),
            Tensor::from_slice(values, shape.as_slice(), &Device::Cpu)?,
        );
    }
    candle_core::safetensors::save(&map, out.join("model.safetensors"))?;

    let mut toml = String::new();
    writeln!(
        toml,
        "# Written by `make train` (crates/surge-train); do not edit by hand."
    )?;
    writeln!(
        toml,
        "name = \"{NAME}\"\nversion = \"1.0.0\"\narchitecture = \"mlp\""
    )?;
    writeln!(toml, "description = \"Breast cancer (Wisconsin diagnostic): probability that a tumour is malignant\"")?;
    writeln!(
        toml,
        "weights = \"model.safetensors\"\n\n[input]\nkind = \"tabular\"\nfeatures = ["
    )?;
    for f in &ds.features {
        writeln!(toml, "  \"{f}\",")?;
    }
    writeln!(toml, "]\n\n[output]\nnames = [\"malignant_probability\"]\n")?;
    writeln!(
        toml,
        "[preprocessing]\nmean = [{}]\nstd = [{}]\n",
        floats(&t.mean),
        floats(&t.std)
    )?;
    let hidden = cfg
        .hidden
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(
        toml,
        "[mlp]\nhidden = [{hidden}]\nactivation = \"relu\"\noutput_activation = \"sigmoid\""
    )?;
    std::fs::write(out.join("model.toml"), toml)?;

    let mut sample = ds.features.join(",");
    sample.push('\n');
    for &i in &t.test {
        sample.push_str(&ds.raw[i].join(","));
        sample.push('\n');
    }
    std::fs::write(out.join("sample.csv"), sample)?;

    let positives = labels.iter().filter(|&&l| l == 1.0).count();
    let readme = format!(
        "# breast-cancer\n\n\
Probability that a breast mass is malignant, from 30 features of a fine-needle aspirate\n\
image (Breast Cancer Wisconsin (Diagnostic), UCI; see `data/breast-cancer-wisconsin/README.md`\n\
for its origin and licence).\n\n\
| | |\n|---|---|\n\
| architecture | `mlp` 30 → {arrows} → 1, ReLU, sigmoid output |\n\
| input | 30 features, standardised with the training split's mean and std (in `model.toml`) |\n\
| output | `malignant_probability` |\n\
| training | candle-nn, full-batch AdamW, lr {lr}, weight decay {wd}, {epochs} steps, seed {seed} |\n\
| split | stratified, {train_n} training / {test_n} held-out examples ({positives} malignant) |\n\
| **held-out accuracy** | **{acc:.4}** (threshold 0.5) |\n\
| **held-out ROC AUC** | **{roc:.4}** |\n\n\
`sample.csv` holds the {test_n} held-out examples' features, never seen in training.\n\n\
Reproduce bit for bit with `make train` (then `git status --porcelain models/` prints nothing).\n\n\
This model is a demonstration of the serving path, not a medical device.\n",
        arrows = hidden.replace(", ", " → "),
        lr = cfg.learning_rate,
        wd = cfg.weight_decay,
        epochs = cfg.epochs,
        seed = cfg.seed,
        train_n = ds.y.len() - t.test.len(),
        test_n = t.test.len(),
    );
    std::fs::write(out.join("README.md"), readme)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
