//! `surge models`: look at model folders the way a worker does.
//!
//! * `list`: every model folder in a models directory, whether it loads, what it takes
//!   and returns, and its queue depth when the broker answers.
//! * `check PATH`: validates one folder exactly as `surge worker` would (same loader,
//!   same device, golden rows included), and scores one all-zero row / one short text
//!   through it, so a folder that passes is one a worker serves; warns loudly when
//!   nothing shows that the folder scores like its training code.
//! * `new NAME`: a model folder (or a new version folder) scaffolded from a weights
//!   file, its preprocessing and its golden rows, checked, then moved in whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use surge_broker::{AmqpUrl, Timeouts};
use surge_model::{self as model, Batch, DeviceSpec, InputSpec, Layout, Model, Proof};
use surge_protocol::Topology;

/// Loads `dir` as the worker would. `dir` is a model folder (its parent is the models
/// directory, its name the model name) or one version folder of a versioned model
/// (`models/<name>/<version>/`), told apart by what its `model.toml` declares.
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
    // Versioned, mixed and absent folders: the loader says which version, or why not.
    if !matches!(model::layout(&dir), Ok(Layout::Flat)) {
        return Ok(model::load_model(parent, &name, &device)?);
    }
    // A version folder beside a flat model's files: the model folder is refused whole.
    if parent.join(model::spec::SPEC_FILE).is_file() {
        model::layout(parent)?;
    }
    let parent_name = parent.file_name().and_then(|n| n.to_str());
    let is_version = model::spec::read_spec(&dir).is_ok_and(|s| match s.name.as_deref() {
        Some(declared) => Some(declared) == parent_name && declared != name,
        None => s.version == name,
    });
    match (is_version, parent.parent(), parent_name) {
        (true, Some(models_dir), Some(model_name)) => {
            Ok(model::load_version(models_dir, model_name, &name, &device)?)
        }
        _ => Ok(model::load_model(parent, &name, &device)?),
    }
}

/// What a loaded folder offers as proof that it scores like its training code, and
/// the number of golden rows it reproduces, if any.
fn proof(m: &dyn Model) -> Result<(Proof, Option<usize>)> {
    let info = m.info();
    let spec = model::spec::read_spec(&info.dir)?;
    let rows = match &spec.golden {
        Some(g) => Some(model::golden::verify(m, g, &info.dir)?),
        None => None,
    };
    Ok((Proof::of(&spec), rows))
}

fn describe_input(input: &InputSpec) -> String {
    match input {
        InputSpec::Tabular { features } => format!("{} numeric features", features.len()),
        InputSpec::Text { max_length } => format!("text (up to {max_length} tokens)"),
    }
}

/// `surge models check PATH`: non-zero exit, with the loader's message, when the folder
/// would not be served. With `strict`, a folder that proves nothing about its scores
/// (no golden rows) fails too.
pub fn check(path: &Path, device: DeviceSpec, strict: bool) -> Result<()> {
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
    let (proof, golden) = proof(m.as_ref())?;
    println!(
        "ok: {} {} ({}), input: {}, outputs: {}{}",
        info.name,
        info.version,
        info.architecture,
        describe_input(&info.input),
        if info.output_names.is_empty() {
            format!("{} values", scores.width)
        } else {
            info.output_names.join(", ")
        },
        match golden {
            Some(n) => format!(", golden rows: {n} reproduced"),
            None => String::new(),
        }
    );
    if let Some(warning) = proof.warning() {
        let loud = if proof == Proof::Nothing {
            "WARNING"
        } else {
            "warning"
        };
        eprintln!("{loud}: {} {}: {warning}", info.name, info.version);
        if strict {
            bail!(
                "{}: --strict: no golden rows; add them or run without --strict",
                path.display()
            );
        }
    }
    Ok(())
}

async fn queue_depths(topo: &Topology, names: &[String]) -> Option<Vec<Option<u32>>> {
    let url = AmqpUrl::from_env().ok()?;
    let t = Timeouts {
        connect: Duration::from_secs(3),
        operation: Duration::from_secs(3),
    };
    let conn = surge_broker::connect(&url, "surge models list", &t)
        .await
        .ok()?;
    let mut out = Vec::new();
    for n in names {
        // A passive declare of a missing queue closes its channel: one channel each.
        let depth = async {
            let ch = surge_broker::timed("channel.open", t.operation, conn.create_channel())
                .await
                .ok()?;
            surge_broker::topology::model_depth(&ch, topo, n, &t)
                .await
                .ok()
                .map(|(d, _)| d.ready)
        }
        .await;
        out.push(depth);
    }
    let _ = tokio::time::timeout(t.operation, conn.close(200, "done".into())).await;
    Some(out)
}

/// `surge models list`: one line per model folder.
pub async fn list(models_dir: &Path, topo: &Topology, device: DeviceSpec) -> Result<()> {
    let names = model::discover(models_dir)?;
    if names.is_empty() {
        println!("no model folders in {}", models_dir.display());
        return Ok(());
    }
    let depths = queue_depths(topo, &names).await;
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
                let status = match proof(m.as_ref()).map(|p| p.0) {
                    Ok(Proof::Golden) => "ok, golden rows pass",
                    Ok(Proof::Nothing) => "ok, UNPROVEN: no golden rows, no [preprocessing]",
                    Ok(Proof::PreprocessingOnly) => "ok, no golden rows",
                    _ => "ok",
                };
                let i = m.info();
                let all = model::versions(models_dir, name).unwrap_or_default();
                let versions = if all.is_empty() {
                    i.version.clone()
                } else {
                    all.join(",")
                };
                println!(
                    "{:<24} {:<10} {:<16} {:<32} {:>8}  {status}",
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

/// How `surge models new` is told what happens to inputs before the network.
#[derive(Debug, Clone, Copy)]
pub enum Scaling<'a> {
    /// Standardised with the constants of a fitted StandardScaler, in a JSON file.
    StandardScaler(&'a Path),
    /// The network takes raw inputs (`--no-preprocessing`).
    Raw,
}

/// Golden rows for `surge models new`.
#[derive(Debug, Clone, Copy)]
pub struct Golden<'a> {
    /// CSV of inputs with a header naming the features.
    pub inputs: &'a Path,
    /// CSV of the outputs the real model gave, with a header naming the outputs.
    pub expected: &'a Path,
    /// Largest absolute difference allowed.
    pub tolerance: f32,
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
    /// Feature names; default: the golden inputs' header when it names exactly as many
    /// columns as the weights take, else `f0..fN`.
    pub features: Vec<String>,
    /// Output names; default: the golden outputs' header when it fits, else `score`
    /// (one output) or `score_0..`.
    pub outputs: Vec<String>,
    /// `Some`: write `<name>/<version>/` (the versioned layout), possibly beside the
    /// versions already there. `None`: write a flat `<name>/` at version 1.0.0.
    pub version: Option<&'a str>,
    /// Hidden activation: relu, tanh or gelu.
    pub activation: &'a str,
    /// Output activation: sigmoid, softmax or none.
    pub output_activation: &'a str,
    /// What happens to inputs before the network; `None` (not said) is refused.
    pub scaling: Option<Scaling<'a>>,
    /// Golden rows to copy in and check.
    pub golden: Option<Golden<'a>>,
    /// `[mlp] tensor_prefix`, for weights files with several numbered groups.
    pub tensor_prefix: Option<&'a str>,
}

/// Reads a fitted StandardScaler's constants from JSON: `mean` and `scale` as
/// scikit-learn names them (`mean_`, `scale_` work too), or `std`, or `var` (whose
/// square root is taken, with 0 read as 1 the way scikit-learn does). Returns
/// `(mean, std)`.
pub fn read_scaler(path: &Path, features: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let Some(obj) = doc.as_object() else {
        bail!(
            "{}: want a JSON object like {{\"mean\": [...], \"scale\": [...]}}",
            path.display()
        );
    };
    let field = |names: &[&str]| -> Result<Option<(String, Vec<f32>)>> {
        let Some((key, value)) = names.iter().find_map(|n| obj.get(*n).map(|v| (*n, v))) else {
            return Ok(None);
        };
        let values = value
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
                    .collect::<Option<Vec<f32>>>()
            })
            .with_context(|| {
                format!(
                    "{}: {key:?} must be a list of finite numbers",
                    path.display()
                )
            })?;
        if values.len() != features {
            bail!(
                "{}: {key:?} has {} values; the weights take {features} features",
                path.display(),
                values.len()
            );
        }
        Ok(Some((key.to_string(), values)))
    };
    let Some((_, mean)) = field(&["mean", "mean_"])? else {
        bail!(
            "{}: no \"mean\"; write the scaler's mean_ as \"mean\" and its scale_ as \"scale\"",
            path.display()
        );
    };
    let scale = match (
        field(&["scale", "scale_"])?,
        field(&["std", "std_"])?,
        field(&["var", "var_"])?,
    ) {
        (Some((_, s)), None, _) | (None, Some((_, s)), _) => s,
        (Some((a, x)), Some((b, y)), _) => {
            if x != y {
                bail!(
                    "{}: {a:?} and {b:?} differ; keep one of them",
                    path.display()
                );
            }
            x
        }
        (None, None, Some((_, var))) => var
            .iter()
            .map(|v| if *v == 0.0 { 1.0 } else { v.sqrt() })
            .collect(),
        (None, None, None) => bail!(
            "{}: no \"scale\" (or \"std\", or \"var\"); write the scaler's scale_ as \"scale\"",
            path.display()
        ),
    };
    if let Some(i) = scale.iter().position(|s| *s <= 0.0) {
        bail!(
            "{}: scale value {i} is {}; every scale must be positive",
            path.display(),
            scale[i]
        );
    }
    Ok((mean, scale))
}

/// The header of a CSV file, trimmed.
fn csv_header(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let first = text.lines().next().unwrap_or("");
    Ok(first
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect())
}

/// A TOML string literal.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// TOML floats, each written through f64 so that parsing gives back the exact f32.
fn toml_floats(values: &[f32]) -> String {
    values
        .iter()
        .map(|v| format!("{:?}", f64::from(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Mode bits for everything `models new` writes: readable by every user (a container's
/// non-root user included), whatever the source file's mode and the umask.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn make_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    set_mode(path, DIR_MODE)
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    set_mode(to, FILE_MODE)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, FILE_MODE)
}

/// Where the new folder goes: `(final path, version)`, or why it cannot.
fn target(models_dir: &Path, name: &str, version: Option<&str>) -> Result<(PathBuf, String)> {
    let root = models_dir.join(name);
    let Some(version) = version else {
        if root.exists() {
            bail!(
                "{} already exists; pick another name, or add a version to it with --version \
                 (for a model in the versioned layout)",
                root.display()
            );
        }
        return Ok((root, "1.0.0".to_string()));
    };
    surge_protocol::validate_model_name(version)
        .map_err(|e| anyhow::anyhow!("--version {version:?}: {e}"))?;
    let dir = root.join(version);
    if !root.exists() {
        return Ok((dir, version.to_string()));
    }
    match model::layout(&root) {
        Ok(Layout::Flat) => {
            let current = model::spec::read_spec(&root)
                .map(|s| s.version)
                .unwrap_or_else(|_| "<its version>".into());
            let mut files: Vec<String> = std::fs::read_dir(&root)
                .with_context(|| format!("reading {}", root.display()))?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|f| !f.starts_with('.'))
                .collect();
            files.sort();
            bail!(
                "{root} holds a flat model (version {current}); a version folder beside its files \
                 would make a folder that mixes layouts, which workers refuse. Convert it to the \
                 versioned layout first (workers keep serving what they loaded meanwhile):\n  \
                 cd {root} && mkdir {current} && mv {} {current}/\nthen run this command again",
                files.join(" "),
                root = root.display()
            )
        }
        Ok(Layout::Versioned(versions)) => {
            if dir.exists() {
                bail!(
                    "{} already exists (versions: {}); pick another --version",
                    dir.display(),
                    versions.join(", ")
                );
            }
        }
        Err(e @ model::ModelError::MixedLayout { .. }) => return Err(e.into()),
        // A folder holding no model yet (say, an empty one): the version goes in it.
        Err(_) => {
            if dir.exists() {
                bail!("{} already exists", dir.display());
            }
        }
    }
    Ok((dir, version.to_string()))
}

/// `surge models new`: a model folder scaffolded from a weights file's shapes, its
/// preprocessing and its golden rows, checked as a worker would (golden rows included),
/// then moved into place whole. Every file is written 0644 and every folder 0755.
pub fn new_model(n: NewModel<'_>) -> Result<()> {
    use std::fmt::Write as _;
    surge_protocol::validate_model_name(n.name)
        .map_err(|e| anyhow::anyhow!("model name {:?}: {e}", n.name))?;
    if n.arch != "mlp" {
        bail!("only --arch mlp can be scaffolded from weights alone (a {:?} model needs its config files; see README)", n.arch);
    }
    let Some(scaling) = n.scaling else {
        bail!(
            "say what happens to the inputs before the network: --preprocessing scaler.json \
             (the mean and scale of the StandardScaler it was trained behind) or \
             --no-preprocessing (it takes raw inputs). A wrong guess scores wrong without an error"
        );
    };
    let (dir, version) = target(n.models_dir, n.name, n.version)?;
    let w = model::weights::Weights::open(n.weights)?;
    let shape = model::mlp::layout(&w.shapes(), n.tensor_prefix)
        .map_err(|e| anyhow::anyhow!("{}: {e}", n.weights.display()))?;
    let (inputs, outputs) = (shape.inputs, shape.outputs);
    let features = if !n.features.is_empty() {
        if n.features.len() != inputs {
            bail!(
                "--features names {} features but the weights take {inputs}",
                n.features.len()
            );
        }
        n.features
    } else {
        match n
            .golden
            .map(|g| csv_header(g.inputs).map(|h| (g, h)))
            .transpose()?
        {
            Some((_, h)) if h.len() == inputs => h,
            Some((g, h)) => bail!(
                "{} has {} columns but the weights take {inputs} features, so its header \
                 cannot name them: name the features with --features, in the network's input \
                 order (the golden rows are then matched to them by name)",
                g.inputs.display(),
                h.len()
            ),
            None => (0..inputs).map(|i| format!("f{i}")).collect(),
        }
    };
    let output_names = if !n.outputs.is_empty() {
        if n.outputs.len() != outputs {
            bail!(
                "--outputs names {} outputs but the weights give {outputs}",
                n.outputs.len()
            );
        }
        n.outputs
    } else {
        match n.golden.map(|g| csv_header(g.expected)).transpose()? {
            Some(h) if h.len() == outputs => h,
            _ if outputs == 1 => vec!["score".to_string()],
            _ => (0..outputs).map(|i| format!("score_{i}")).collect(),
        }
    };
    let standardise = match scaling {
        Scaling::StandardScaler(path) => Some(read_scaler(path, inputs)?),
        Scaling::Raw => None,
    };
    if let Some(g) = &n.golden {
        if !(g.tolerance.is_finite() && g.tolerance >= 0.0) {
            bail!("--tolerance {} must be a number >= 0", g.tolerance);
        }
    }
    let quoted = |v: &[String]| v.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", ");
    let hidden: Vec<String> = shape.hidden.iter().map(|h| h.to_string()).collect();
    let mut toml = String::new();
    let _ = writeln!(
        toml,
        "# Scaffolded by `surge models new` from {}.",
        n.weights.display()
    );
    let _ = writeln!(
        toml,
        "name = {}\nversion = {}\narchitecture = \"mlp\"",
        toml_str(n.name),
        toml_str(&version)
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
    match &standardise {
        Some((mean, std)) => {
            let _ = writeln!(
                toml,
                "# From {}: inputs become (x - mean) / std before the network.\n[preprocessing]\nmean = [{}]\nstd = [{}]\n",
                match scaling {
                    Scaling::StandardScaler(p) => p.display().to_string(),
                    Scaling::Raw => String::new(),
                },
                toml_floats(mean),
                toml_floats(std)
            );
        }
        None => {
            let _ = writeln!(
                toml,
                "# No [preprocessing]: the network takes raw inputs (--no-preprocessing).\n"
            );
        }
    }
    if let Some(g) = &n.golden {
        let _ = writeln!(
            toml,
            "# Scored at every load; a folder that does not reproduce them is refused.\n[golden]\ninputs = \"golden/inputs.csv\"\nexpected = \"golden/expected.csv\"\ntolerance = {:?}\n",
            g.tolerance
        );
    }
    let _ = writeln!(
        toml,
        "[mlp]\nhidden = [{}]\nactivation = {}\noutput_activation = {}",
        hidden.join(", "),
        toml_str(n.activation),
        toml_str(n.output_activation)
    );
    if let Some(p) = n.tensor_prefix {
        let _ = writeln!(toml, "tensor_prefix = {}", toml_str(p));
    }
    // Written in a hidden staging folder (workers skip hidden folders) and moved in
    // whole, so a watching worker never sees half a folder. A version is staged as
    // `<staging>/<name>/<version>/`, so that it is checked as the version it will be.
    let staging_root = n
        .models_dir
        .join(format!(".staging-{}", std::process::id()));
    let staging = match n.version {
        Some(v) => staging_root.join(n.name).join(v),
        None => staging_root.join(n.name),
    };
    let written = (|| -> Result<()> {
        make_dir(&staging)?;
        copy_file(n.weights, &staging.join("model.safetensors"))?;
        if let Some(g) = &n.golden {
            make_dir(&staging.join("golden"))?;
            copy_file(g.inputs, &staging.join("golden/inputs.csv"))?;
            copy_file(g.expected, &staging.join("golden/expected.csv"))?;
        }
        write_file(&staging.join(model::spec::SPEC_FILE), &toml)?;
        check(&staging, DeviceSpec::Cpu, false)
            .context("nothing was created: the new folder does not pass `surge models check`")?;
        if let Some(parent) = dir.parent().filter(|_| n.version.is_some()) {
            if !parent.exists() {
                make_dir(parent)?;
            }
        }
        std::fs::rename(&staging, &dir)
            .with_context(|| format!("moving the new folder to {}", dir.display()))
    })();
    let _ = std::fs::remove_dir_all(&staging_root);
    written?;
    println!(
        "created {} (version {version}; inputs {inputs}, hidden [{}], outputs {outputs}; layers {})",
        dir.display(),
        hidden.join(", "),
        shape
            .layers
            .iter()
            .map(|l| l.weight.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
