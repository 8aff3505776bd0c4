//! Versions side by side: `models/<name>/<version>/`.

use std::cmp::Ordering;
use std::path::Path;

use surge_model::{
    compare_versions, discover, load_model, load_version, takes_text, versions, Device,
};

fn shipped() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/breast-cancer")
}

fn put_version(models: &Path, folder: &str, declared: &str) {
    let dir = models.join("breast-cancer").join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        shipped().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let toml = std::fs::read_to_string(shipped().join("model.toml")).unwrap();
    std::fs::write(
        dir.join("model.toml"),
        toml.replace("version = \"1.0.0\"", &format!("version = \"{declared}\"")),
    )
    .unwrap();
}

#[test]
fn versions_order_numerically() {
    assert_eq!(compare_versions("1.9", "1.10"), Ordering::Less);
    assert_eq!(compare_versions("2", "10"), Ordering::Less);
    assert_eq!(compare_versions("1.0", "1.0.1"), Ordering::Less);
    assert_eq!(compare_versions("v3", "v2"), Ordering::Greater);
    assert_eq!(compare_versions("1.0.0", "1.0.0"), Ordering::Equal);
    assert_eq!(compare_versions("beta", "alpha"), Ordering::Greater);
}

#[test]
fn the_newest_version_is_the_default_and_each_loads_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path();
    put_version(models, "1.9.0", "1.9.0");
    put_version(models, "1.10.0", "1.10.0");
    assert_eq!(discover(models).unwrap(), vec!["breast-cancer".to_string()]);
    assert_eq!(
        versions(models, "breast-cancer").unwrap(),
        vec!["1.9.0", "1.10.0"]
    );
    let newest = load_model(models, "breast-cancer", &Device::Cpu).unwrap();
    assert_eq!(newest.info().version, "1.10.0");
    let old = load_version(models, "breast-cancer", "1.9.0", &Device::Cpu).unwrap();
    assert_eq!(old.info().version, "1.9.0");
    assert!(load_version(models, "breast-cancer", "7", &Device::Cpu).is_err());
}

#[test]
fn a_version_folder_must_match_its_declared_version() {
    let dir = tempfile::tempdir().unwrap();
    put_version(dir.path(), "2.0.0", "1.0.0");
    let err = load_version(dir.path(), "breast-cancer", "2.0.0", &Device::Cpu)
        .err()
        .expect("a mismatched version folder must not load")
        .to_string();
    assert!(err.contains("version") && err.contains("2.0.0"), "{err}");
    assert!(load_version(dir.path(), "../etc", "1", &Device::Cpu).is_err());
}

#[test]
fn takes_text_reads_the_specs_of_flat_and_versioned_folders() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path();
    put_version(models, "1.0.0", "1.0.0");
    assert!(!takes_text(models, "breast-cancer"));
    // A text model, flat, with only its model.toml: no weights are read.
    let text = models.join("texts");
    std::fs::create_dir(&text).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-minilm-l6-v2/model.toml"),
        text.join("model.toml"),
    )
    .unwrap();
    assert!(takes_text(models, "texts"));
    // Versioned: a text version next to a tabular one.
    let v2 = models.join("breast-cancer").join("2.0.0");
    std::fs::create_dir(&v2).unwrap();
    std::fs::copy(text.join("model.toml"), v2.join("model.toml")).unwrap();
    assert!(takes_text(models, "breast-cancer"));
    assert!(!takes_text(models, "missing"));
    assert!(!takes_text(models, "../escape"));
}

#[test]
fn a_folder_mixing_flat_and_versioned_layouts_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path();
    // The flat model, then a version folder beside its files.
    let flat = models.join("breast-cancer");
    std::fs::create_dir_all(&flat).unwrap();
    for f in ["model.toml", "model.safetensors"] {
        std::fs::copy(shipped().join(f), flat.join(f)).unwrap();
    }
    assert!(load_model(models, "breast-cancer", &Device::Cpu).is_ok());
    put_version(models, "1.1.0", "1.1.0");
    for err in [
        load_model(models, "breast-cancer", &Device::Cpu).err(),
        load_version(models, "breast-cancer", "1.1.0", &Device::Cpu).err(),
        versions(models, "breast-cancer").err(),
    ] {
        let err = err.expect("a mixed folder must be refused");
        assert!(
            matches!(err, surge_model::ModelError::MixedLayout { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("mixes two layouts") && text.contains("breast-cancer/1.0.0/"),
            "{text}"
        );
    }
    // Listed, so that whoever lists it reports it; never silently skipped.
    assert_eq!(discover(models).unwrap(), ["breast-cancer"]);
    assert!(!takes_text(models, "breast-cancer"));
}
