//! `surge models`: look at model folders the way a worker does.
//!
//! * `list`: every model folder in a models directory, whether it loads, what it takes
//!   and returns, and its queue depth when the broker answers.
//! * `check PATH`: validates one folder exactly as `surge worker` would (same loader,
//!   same device), and scores one all-zero row / one short text through it, so a
//!   folder that passes is one a worker serves.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use surge_worker::broker::{AmqpUrl, Timeouts};
use surge_worker::model::{self, Batch, DeviceSpec, InputSpec, Model};
use surge_worker::protocol::Topology;

/// Loads `dir` as the worker would: its parent is the models directory, its name the
/// model name.
fn load_folder(dir: &Path, device: DeviceSpec) -> Result<Box<dyn Model>> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{} does not exist", dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("the folder has no usable name")?
        .to_string();
    let parent = dir.parent().context("the folder has no parent")?;
    let device = model::select_device(device)?;
    let flat = model::load_model(parent, &name, &device);
    if flat.is_ok() || !dir.join(model::spec::SPEC_FILE).is_file() {
        return Ok(flat?);
    }
    // `models/<name>/<version>/`: the folder is a version of the model named by its
    // parent.
    let versioned = parent
        .parent()
        .zip(parent.file_name().and_then(|n| n.to_str()))
        .map(|(root, model_name)| model::load_version(root, model_name, &name, &device));
    match versioned {
        Some(Ok(m)) => Ok(m),
        _ => Ok(flat?),
    }
}

fn describe_input(input: &InputSpec) -> String {
    match input {
        InputSpec::Tabular { features } => format!("{} numeric features", features.len()),
        InputSpec::Text { max_length } => format!("text (up to {max_length} tokens)"),
    }
}

/// `surge models check PATH`: non-zero exit, with the loader's message, when the folder
/// would not be served.
pub fn check(path: &Path, device: DeviceSpec) -> Result<()> {
    let m = load_folder(path, device)?;
    let info = m.info().clone();
    // One forward pass, so shapes that only fail at run time fail here.
    let texts = vec!["Surge checks this model.".to_string()];
    let (batch, zeros);
    match &info.input {
        InputSpec::Tabular { features } => {
            zeros = vec![0.0f32; features.len()];
            batch = Batch::Rows {
                values: &zeros,
                dim: features.len(),
            };
        }
        InputSpec::Text { .. } => batch = Batch::Texts(&texts),
    }
    let scores = m
        .score(&batch)
        .with_context(|| format!("{}: a test forward pass failed", path.display()))?;
    if scores.len() != 1 || scores.values.iter().any(|v| !v.is_finite()) {
        bail!(
            "{}: a test forward pass returned {} outputs (want 1), or non-finite values",
            path.display(),
            scores.len()
        );
    }
    println!(
        "ok: {} {} ({}), input: {}, outputs: {}",
        info.name,
        info.version,
        info.architecture,
        describe_input(&info.input),
        if info.output_names.is_empty() {
            format!("{} values", scores.width)
        } else {
            info.output_names.join(", ")
        }
    );
    Ok(())
}

async fn queue_depths(prefix: &str, names: &[String]) -> Option<Vec<Option<u32>>> {
    let url = AmqpUrl::from_env().ok()?;
    let t = Timeouts {
        connect: Duration::from_secs(3),
        operation: Duration::from_secs(3),
    };
    let conn = surge_worker::broker::connect(&url, "surge models list", &t)
        .await
        .ok()?;
    let topo = Topology::new(prefix);
    let mut out = Vec::new();
    for n in names {
        // A passive declare of a missing queue closes its channel: one channel each.
        let depth = async {
            let ch =
                surge_worker::broker::timed("channel.open", t.operation, conn.create_channel())
                    .await
                    .ok()?;
            surge_worker::broker::topology::queue_depth(&ch, &topo.job_queue(n), &t)
                .await
                .ok()
                .map(|d| d.ready)
        }
        .await;
        out.push(depth);
    }
    let _ = tokio::time::timeout(t.operation, conn.close(200, "done".into())).await;
    Some(out)
}

/// `surge models list`: one line per model folder.
pub async fn list(models_dir: &Path, prefix: &str, device: DeviceSpec) -> Result<()> {
    let names = model::discover(models_dir)?;
    if names.is_empty() {
        println!("no model folders in {}", models_dir.display());
        return Ok(());
    }
    let depths = queue_depths(prefix, &names).await;
    println!(
        "{:<24} {:<10} {:<16} {:<32} {:>8}  status",
        "MODEL", "VERSION", "ARCHITECTURE", "INPUT", "QUEUED"
    );
    let mut broken = 0;
    for (i, name) in names.iter().enumerate() {
        let queued = match depths.as_ref().map(|d| d[i]) {
            Some(Some(n)) => n.to_string(),
            Some(None) => "no queue".into(),
            None => "?".into(),
        };
        match load_folder(&models_dir.join(name), device) {
            Ok(m) => {
                let i = m.info();
                let all = model::versions(models_dir, name).unwrap_or_default();
                let versions = if all.is_empty() {
                    i.version.clone()
                } else {
                    all.join(",")
                };
                println!(
                    "{:<24} {:<10} {:<16} {:<32} {:>8}  ok",
                    i.name,
                    versions,
                    i.architecture,
                    describe_input(&i.input),
                    queued
                );
            }
            Err(e) => {
                broken += 1;
                println!(
                    "{name:<24} {:<10} {:<16} {:<32} {queued:>8}  INVALID: {e:#}",
                    "-", "-", "-"
                );
            }
        }
    }
    if depths.is_none() {
        println!("(queue depths unknown: the broker at AMQP_URL did not answer)");
    }
    if broken > 0 {
        bail!(
            "{broken} model folder(s) would not be served; `surge models check <folder>` says why"
        );
    }
    Ok(())
}

/// What `surge models new` needs.
pub struct NewModel<'a> {
    /// Models directory to create the folder in.
    pub models_dir: &'a Path,
    /// The new model's name (the folder name).
    pub name: &'a str,
    /// The weights to copy in.
    pub weights: &'a Path,
    /// Architecture (only `mlp` can be scaffolded from weights alone).
    pub arch: &'a str,
    /// Feature names; default `f0..fN`.
    pub features: Vec<String>,
    /// Output names; default `score` (one output) or `score_0..`.
    pub outputs: Vec<String>,
    /// Version label.
    pub version: &'a str,
    /// Output activation: sigmoid, softmax or none.
    pub output_activation: &'a str,
}

/// `surge models new`: a model folder scaffolded from a weights file's shapes, then
/// checked as a worker would.
pub fn new_model(n: NewModel<'_>) -> Result<()> {
    use std::fmt::Write as _;
    surge_worker::protocol::validate_model_name(n.name)
        .map_err(|e| anyhow::anyhow!("model name {:?}: {e}", n.name))?;
    if n.arch != "mlp" {
        bail!("only --arch mlp can be scaffolded from weights alone (a {:?} model needs its config files; see README)", n.arch);
    }
    let dir = n.models_dir.join(n.name);
    if dir.exists() {
        bail!(
            "{} already exists; pick another name or remove it",
            dir.display()
        );
    }
    let w = model::weights::Weights::open(n.weights)?;
    let shape = model::mlp::layout(&w.shapes(), None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", n.weights.display()))?;
    let (inputs, hidden, outputs) = (shape.inputs, shape.hidden, shape.outputs);
    let features = if n.features.is_empty() {
        (0..inputs).map(|i| format!("f{i}")).collect()
    } else if n.features.len() == inputs {
        n.features
    } else {
        bail!(
            "--features names {} features but the weights take {inputs}",
            n.features.len()
        );
    };
    let output_names = if !n.outputs.is_empty() {
        if n.outputs.len() != outputs {
            bail!(
                "--outputs names {} outputs but the weights give {outputs}",
                n.outputs.len()
            );
        }
        n.outputs
    } else if outputs == 1 {
        vec!["score".to_string()]
    } else {
        (0..outputs).map(|i| format!("score_{i}")).collect()
    };
    let quoted = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut toml = String::new();
    let _ = writeln!(
        toml,
        "# Scaffolded by `surge models new` from {}.",
        n.weights.display()
    );
    let _ = writeln!(
        toml,
        "# Edit the feature and output names; add [preprocessing] mean/std if the"
    );
    let _ = writeln!(toml, "# network was trained on standardised inputs.");
    let _ = writeln!(
        toml,
        "name = {:?}\nversion = {:?}\narchitecture = \"mlp\"",
        n.name, n.version
    );
    let _ = writeln!(
        toml,
        "description = \"\"\nweights = \"model.safetensors\"\n"
    );
    let _ = writeln!(
        toml,
        "[input]\nkind = \"tabular\"\nfeatures = [{}]\n",
        quoted(&features)
    );
    let _ = writeln!(toml, "[output]\nnames = [{}]\n", quoted(&output_names));
    let hidden: Vec<String> = hidden.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(
        toml,
        "[mlp]\nhidden = [{}]\nactivation = \"relu\"\noutput_activation = {:?}",
        hidden.join(", "),
        n.output_activation
    );
    // Written in a hidden staging folder (workers skip hidden folders) and moved in
    // whole, so a watching worker never sees half a folder.
    let staging_root = n
        .models_dir
        .join(format!(".staging-{}", std::process::id()));
    let staging = staging_root.join(n.name);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let written = (|| -> Result<()> {
        std::fs::copy(n.weights, staging.join("model.safetensors"))
            .with_context(|| format!("copying {}", n.weights.display()))?;
        std::fs::write(staging.join("model.toml"), &toml)?;
        check(&staging, DeviceSpec::Cpu).context("the scaffolded folder does not load")?;
        std::fs::rename(&staging, &dir)
            .with_context(|| format!("moving the new folder to {}", dir.display()))
    })();
    let _ = std::fs::remove_dir_all(&staging_root);
    written?;
    println!(
        "created {} (inputs {inputs}, hidden [{}], outputs {outputs})",
        dir.display(),
        hidden.join(", ")
    );
    Ok(())
}
