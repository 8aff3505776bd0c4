//! `surge models check`, `list` and `new`: a folder is judged exactly as a worker would
//! judge it, and `new` writes folders that prove themselves (preprocessing, golden
//! rows), in either layout, readable by every user, from weights as exporters name them.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use surge_testkit::*;

fn surge(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("surge")).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_passes_the_shipped_model_and_names_what_is_wrong_in_a_broken_one() {
    let shipped = models_dir().join("breast-cancer");
    let (ok, text) = surge(&["models", "check", shipped.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(
        text.contains("ok: breast-cancer") && text.contains("30 numeric features"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("breast-cancer");
    std::fs::create_dir(&broken).unwrap();
    for f in ["model.toml", "model.safetensors"] {
        std::fs::copy(shipped.join(f), broken.join(f)).unwrap();
    }
    let toml = std::fs::read_to_string(broken.join("model.toml")).unwrap();
    std::fs::write(
        broken.join("model.toml"),
        toml.replace("hidden = [64, 32]", "hidden = [64, 16]"),
    )
    .unwrap();
    let (ok, text) = surge(&["models", "check", broken.to_str().unwrap()]);
    assert!(!ok, "a misshaped model must fail the check: {text}");
    assert!(
        text.contains("layers.1.weight") && text.contains("expected [16, 64]"),
        "{text}"
    );

    let (ok, text) = surge(&["models", "check", "/no/such/folder"]);
    assert!(!ok && text.contains("does not exist"), "{text}");
}

#[test]
fn list_shows_every_folder_and_fails_on_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("breast-cancer");
    std::fs::create_dir(&good).unwrap();
    for f in ["model.toml", "model.safetensors"] {
        std::fs::copy(models_dir().join("breast-cancer").join(f), good.join(f)).unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let (ok, text) = surge(&[
        "models",
        "list",
        "--models-dir",
        d,
        "--prefix",
        "t-list-none",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("breast-cancer") && text.contains("mlp"),
        "{text}"
    );

    let bad = dir.path().join("half-copied");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("model.toml"), "architecture = \"mlp\"\n").unwrap();
    let (ok, text) = surge(&[
        "models",
        "list",
        "--models-dir",
        d,
        "--prefix",
        "t-list-none",
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("half-copied") && text.contains("INVALID"),
        "{text}"
    );
}

#[test]
fn new_scaffolds_a_folder_that_a_worker_serves_from_weights_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let weights = models_dir().join("breast-cancer/model.safetensors");
    let w = weights.to_str().unwrap();
    let (ok, text) = surge(&[
        "models",
        "new",
        "scaffolded",
        "--from-safetensors",
        w,
        "--models-dir",
        d,
        "--outputs",
        "p_malignant",
        "--no-preprocessing",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("inputs 30, hidden [64, 32], outputs 1"),
        "{text}"
    );
    let toml = std::fs::read_to_string(dir.path().join("scaffolded/model.toml")).unwrap();
    assert!(
        toml.contains("hidden = [64, 32]") && toml.contains("\"p_malignant\""),
        "{toml}"
    );
    // Nothing left behind but the folder itself.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    let (ok, text) = surge(&[
        "models",
        "check",
        dir.path().join("scaffolded").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    // Wrong feature count, an existing name, and weights that are no MLP are refused.
    let (ok, text) = surge(&[
        "models",
        "new",
        "other",
        "--from-safetensors",
        w,
        "--models-dir",
        d,
        "--features",
        "a,b",
        "--no-preprocessing",
    ]);
    assert!(!ok && text.contains("weights take 30"), "{text}");
    let (ok, text) = surge(&[
        "models",
        "new",
        "scaffolded",
        "--from-safetensors",
        w,
        "--models-dir",
        d,
        "--no-preprocessing",
    ]);
    assert!(!ok && text.contains("already exists"), "{text}");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not safetensors").unwrap();
    let (ok, _) = surge(&[
        "models",
        "new",
        "junk",
        "--from-safetensors",
        junk.to_str().unwrap(),
        "--models-dir",
        d,
        "--no-preprocessing",
    ]);
    assert!(!ok);
    assert!(!dir.path().join("junk").exists());
}

// ---------------------------------------------------------------------------------------
// Folders that prove themselves, layouts, export names (the "no silent wrong answers"
// findings F2, F3, F4).
// ---------------------------------------------------------------------------------------

fn shipped() -> PathBuf {
    models_dir().join("breast-cancer")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `surge models new <name> --models-dir <models> <args...>`.
fn new(models: &Path, name: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["models", "new", name, "--models-dir", s(models)];
    all.extend(args);
    surge(&all)
}

/// The shipped model's weights saved at `to` with layer `i` named `name(i)` (so
/// `|i| format!("{}", 2 * i)` gives an nn.Sequential state dict).
fn renamed_weights(to: &Path, name: impl Fn(usize) -> String) {
    let tensors =
        candle_core::safetensors::load(shipped().join("model.safetensors"), &Device::Cpu).unwrap();
    let renamed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            let rest = k.strip_prefix("layers.").unwrap();
            let (i, kind) = rest.split_once('.').unwrap();
            (format!("{}.{kind}", name(i.parse().unwrap())), v)
        })
        .collect();
    candle_core::safetensors::save(&renamed, to).unwrap();
}

/// What an exporter writes beside the weights: the StandardScaler's constants as
/// scikit-learn names them, golden inputs (columns in `order`, plus an id column) and
/// the scores the real model gave for them. Returns the paths.
struct Export {
    weights: PathBuf,
    scaler: PathBuf,
    rows: PathBuf,
    scores: PathBuf,
}

fn export(dir: &Path, order: &[String]) -> Export {
    let weights = dir.join("sequential.safetensors");
    renamed_weights(&weights, |i| (2 * i).to_string());
    let spec = surge_model::spec::read_spec(&shipped()).unwrap();
    let pre = spec.preprocessing.unwrap();
    let scaler = dir.join("scaler.json");
    std::fs::write(
        &scaler,
        serde_json::json!({"mean": pre.mean, "scale": pre.std, "n_samples_seen": 456}).to_string(),
    )
    .unwrap();
    let features = feature_names();
    let data = write_rows_csv(&dir.join("all-rows.csv"), 25);
    let want = reference_scores(&data);
    let mut rows = format!("row_id,{}\n", order.join(","));
    for (i, row) in data.iter().enumerate() {
        let cells: Vec<String> = order
            .iter()
            .map(|f| row[features.iter().position(|g| g == f).unwrap()].to_string())
            .collect();
        rows.push_str(&format!("{i},{}\n", cells.join(",")));
    }
    let rows_path = dir.join("rows.csv");
    std::fs::write(&rows_path, rows).unwrap();
    let scores = dir.join("scores.csv");
    let mut text = "malignant_probability\n".to_string();
    for v in want {
        text.push_str(&format!("{v}\n"));
    }
    std::fs::write(&scores, text).unwrap();
    Export {
        weights,
        scaler,
        rows: rows_path,
        scores,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_sequential_export_with_scaler_and_golden_rows_scores_like_the_shipped_model() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let features = feature_names();
    let e = export(tmp.path(), &features);
    // F4: a weights file cp'd from a private location keeps mode 0600; so does
    // everything a restrictive umask creates. The folder must still be readable by the
    // compose image's non-root user.
    for f in [&e.weights, &e.rows, &e.scores, &e.scaler] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 077 && exec \"$0\" \"$@\"")
        .arg(bin("surge"))
        .args(["models", "new", "bc", "--models-dir", s(&models)])
        .args(["--from-safetensors", s(&e.weights)])
        .args(["--preprocessing", s(&e.scaler)])
        .args(["--golden", s(&e.rows), "--expect", s(&e.scores)])
        .args(["--features", &features.join(",")])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("golden rows: 25 reproduced")
            && text.contains("layers 0.weight, 2.weight, 4.weight"),
        "{text}"
    );
    let dir = models.join("bc");
    for f in [
        "model.toml",
        "model.safetensors",
        "golden/inputs.csv",
        "golden/expected.csv",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o644, "{f}");
    }
    for d in [&dir, &dir.join("golden")] {
        assert_eq!(mode(d), 0o755, "{}", d.display());
    }
    let toml = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    assert!(
        toml.contains("[preprocessing]") && toml.contains("[golden]"),
        "{toml}"
    );
    // The nn.Sequential names score exactly like the shipped layers.N ones.
    let m = surge_model::load_model(&models, "bc", &surge_model::Device::Cpu).unwrap();
    let rows = write_rows_csv(&tmp.path().join("more.csv"), 50);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let got = m
        .score(&surge_model::Batch::Rows {
            values: &flat,
            dim: 30,
        })
        .unwrap();
    assert_eq!(got.values, reference_scores(&rows));
    let (ok, text) = surge(&["models", "check", s(&dir), "--strict"]);
    assert!(ok && text.contains("golden rows: 25 reproduced"), "{text}");
    assert!(!text.to_lowercase().contains("warning"), "{text}");
}

#[test]
fn golden_rows_catch_a_missing_preprocessing_and_a_wrong_feature_order() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let features = feature_names();
    // Golden inputs with their columns in another order than the network's: matched by
    // name, so they are still right.
    let mut shuffled = features.clone();
    shuffled.reverse();
    let e = export(tmp.path(), &shuffled);
    let base = [
        "--from-safetensors",
        s(&e.weights),
        "--golden",
        s(&e.rows),
        "--expect",
        s(&e.scores),
    ];
    let joined = features.join(",");
    // The golden file has an id column too, so its header cannot name the features.
    let (ok, text) = new(
        &models,
        "bc",
        &[&base[..], &["--no-preprocessing"]].concat(),
    );
    assert!(
        !ok && text.contains("name the features with --features"),
        "{text}"
    );
    // F2: the preprocessing must be said; not saying it is refused up front.
    let (ok, text) = new(
        &models,
        "bc",
        &[&base[..], &["--features", &joined]].concat(),
    );
    assert!(
        !ok && text.contains("--preprocessing") && text.contains("--no-preprocessing"),
        "{text}"
    );
    // Saying the wrong thing (raw inputs for a network trained on standardised ones) is
    // caught by the golden rows, with the row, the output and the difference.
    let (ok, text) = new(
        &models,
        "bc",
        &[&base[..], &["--features", &joined, "--no-preprocessing"]].concat(),
    );
    assert!(!ok, "{text}");
    for part in [
        "golden row ",
        "of golden/inputs.csv), output malignant_probability: got",
        "|diff|",
        "> tolerance 0.0001",
        "check [preprocessing]",
        "nothing was created",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    // Features named in the wrong order: refused the same way.
    let mut swapped = features.clone();
    swapped.swap(0, 3);
    let (ok, text) = new(
        &models,
        "bc",
        &[
            &base[..],
            &[
                "--features",
                &swapped.join(","),
                "--preprocessing",
                s(&e.scaler),
            ],
        ]
        .concat(),
    );
    assert!(
        !ok && text.contains("golden row") && text.contains("|diff|"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(&models).unwrap().count(),
        0,
        "nothing left behind"
    );
    // The right order passes; the same reordering done by hand later is refused by
    // `models check`, with the row and the difference.
    let (ok, text) = new(
        &models,
        "bc",
        &[
            &base[..],
            &["--features", &joined, "--preprocessing", s(&e.scaler)],
        ]
        .concat(),
    );
    assert!(ok, "{text}");
    let toml_path = models.join("bc/model.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    let quoted = |v: &[String]| {
        v.iter()
            .map(|f| format!("{f:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert!(toml.contains(&quoted(&features)));
    std::fs::write(
        &toml_path,
        toml.replace(&quoted(&features), &quoted(&swapped)),
    )
    .unwrap();
    let (ok, text) = surge(&["models", "check", s(&models.join("bc"))]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("golden row")
            && text.contains("output malignant_probability: got")
            && text.contains("|diff|"),
        "{text}"
    );
}

#[test]
fn check_warns_loudly_when_nothing_proves_a_tabular_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let weights = shipped().join("model.safetensors");
    let (ok, text) = new(
        &models,
        "raw",
        &["--from-safetensors", s(&weights), "--no-preprocessing"],
    );
    assert!(ok, "{text}");
    let dir = models.join("raw");
    let (ok, text) = surge(&["models", "check", s(&dir)]);
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "WARNING: raw 1.0.0: nothing shows that this folder scores like the training code"
        ) && text.contains("--golden rows.csv --expect scores.csv"),
        "{text}"
    );
    let (ok, text) = surge(&["models", "check", s(&dir), "--strict"]);
    assert!(!ok && text.contains("--strict"), "{text}");
    let (_, text) = surge(&[
        "models",
        "list",
        "--models-dir",
        s(&models),
        "--prefix",
        "t-list-none",
    ]);
    assert!(text.contains("UNPROVEN"), "{text}");
}

#[test]
fn version_adds_a_version_beside_the_others_and_refuses_a_flat_model() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let w = shipped().join("model.safetensors");
    let scaler = tmp.path().join("scaler.json");
    let pre = surge_model::spec::read_spec(&shipped())
        .unwrap()
        .preprocessing
        .unwrap();
    // `std` instead of `scale` works too.
    std::fs::write(
        &scaler,
        serde_json::json!({"mean": pre.mean, "std": pre.std}).to_string(),
    )
    .unwrap();
    let args = ["--from-safetensors", s(&w), "--preprocessing", s(&scaler)];
    for v in ["1.0.0", "1.1.0"] {
        let (ok, text) = new(&models, "bc", &[&args[..], &["--version", v]].concat());
        assert!(ok, "{v}: {text}");
        assert!(models.join("bc").join(v).join("model.toml").is_file());
    }
    assert_eq!(mode(&models.join("bc")), 0o755);
    let (ok, text) = surge(&[
        "models",
        "list",
        "--models-dir",
        s(&models),
        "--prefix",
        "t-list-none",
    ]);
    assert!(ok && text.contains("1.0.0,1.1.0"), "{text}");
    let (ok, text) = surge(&["models", "check", s(&models.join("bc/1.0.0"))]);
    assert!(ok && text.contains("ok: bc 1.0.0"), "{text}");
    let (ok, text) = new(
        &models,
        "bc",
        &[&args[..], &["--version", "1.1.0"]].concat(),
    );
    assert!(!ok && text.contains("already exists"), "{text}");
    // A flat model: adding a version folder would mix layouts; the error says how to
    // convert it.
    let (ok, text) = new(&models, "flat", &args);
    assert!(ok, "{text}");
    let (ok, text) = new(
        &models,
        "flat",
        &[&args[..], &["--version", "1.1.0"]].concat(),
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("holds a flat model (version 1.0.0)")
            && text.contains("mkdir 1.0.0 && mv model.safetensors model.toml 1.0.0/"),
        "{text}"
    );
    assert!(!models.join("flat/1.1.0").exists());
}

#[test]
fn a_folder_mixing_flat_and_versioned_layouts_is_refused_by_list_and_check() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let flat = models.join("breast-cancer");
    std::fs::create_dir_all(flat.join("1.1.0")).unwrap();
    for f in ["model.toml", "model.safetensors"] {
        std::fs::copy(shipped().join(f), flat.join(f)).unwrap();
        std::fs::copy(shipped().join(f), flat.join("1.1.0").join(f)).unwrap();
    }
    let toml = std::fs::read_to_string(flat.join("1.1.0/model.toml")).unwrap();
    std::fs::write(
        flat.join("1.1.0/model.toml"),
        toml.replace("version = \"1.0.0\"", "version = \"1.1.0\""),
    )
    .unwrap();
    let (ok, text) = surge(&[
        "models",
        "list",
        "--models-dir",
        s(&models),
        "--prefix",
        "t-list-none",
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("INVALID") && text.contains("mixes two layouts") && text.contains("1.1.0"),
        "{text}"
    );
    for folder in [flat.clone(), flat.join("1.1.0")] {
        let (ok, text) = surge(&["models", "check", s(&folder)]);
        assert!(!ok, "{}: {text}", folder.display());
        assert!(
            text.contains("mixes two layouts") && text.contains("breast-cancer/1.0.0/"),
            "{text}"
        );
    }
}

#[test]
fn export_names_nn_sequential_and_gapped_layers_load_and_errors_list_what_was_found() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    for (name, rename) in [
        (
            "seq",
            (|i: usize| (2 * i).to_string()) as fn(usize) -> String,
        ),
        ("gapped", |i| format!("layers.{}", 2 * i)),
        ("prefixed", |i| format!("model.layers.{}", 2 * i + 3)),
    ] {
        let w = tmp.path().join(format!("{name}.safetensors"));
        renamed_weights(&w, rename);
        let (ok, text) = new(
            &models,
            name,
            &["--from-safetensors", s(&w), "--no-preprocessing"],
        );
        assert!(ok, "{name}: {text}");
        assert!(
            text.contains("inputs 30, hidden [64, 32], outputs 1"),
            "{text}"
        );
        assert!(!text.contains("[]"), "{text}");
    }
    // Names no exporter convention explains: the error lists them, with shapes.
    let odd = tmp.path().join("odd.safetensors");
    renamed_weights(&odd, |i| format!("fc{i}"));
    let (ok, text) = new(
        &models,
        "odd",
        &["--from-safetensors", s(&odd), "--no-preprocessing"],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("no tensor is named like a linear layer")
            && text.contains("found: fc0.bias [64], fc0.weight [64, 30], fc1.bias [32]"),
        "{text}"
    );
    // Two numbered groups: --tensor-prefix picks one, and model.toml remembers it.
    let two = tmp.path().join("two.safetensors");
    let mut t =
        candle_core::safetensors::load(shipped().join("model.safetensors"), &Device::Cpu).unwrap();
    let extra: Vec<(String, Tensor)> = t
        .iter()
        .map(|(k, v)| (k.replace("layers.", "teacher."), v.clone()))
        .collect();
    t.extend(extra);
    candle_core::safetensors::save(&t, &two).unwrap();
    let (ok, text) = new(
        &models,
        "two",
        &["--from-safetensors", s(&two), "--no-preprocessing"],
    );
    assert!(
        !ok && text.contains("several prefixes") && text.contains("--tensor-prefix"),
        "{text}"
    );
    // With a prefix, the other group is unused, and named.
    let (ok, text) = new(
        &models,
        "two",
        &[
            "--from-safetensors",
            s(&two),
            "--no-preprocessing",
            "--tensor-prefix",
            "layers",
        ],
    );
    assert!(
        !ok && text.contains("does not use: teacher.0.bias"),
        "{text}"
    );
}
