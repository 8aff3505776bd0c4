//! `surge models check` and `surge models list`: a folder is judged exactly as a
//! worker would judge it.

use std::process::Command;

use surge_tests::*;

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
    ]);
    assert!(!ok);
    assert!(!dir.path().join("junk").exists());
}
