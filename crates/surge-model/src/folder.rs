//! Model folders on disk: which sub-folders of a models directory are models, how each
//! is laid out, and when one is still enough to read. The loader, the worker's hot
//! discovery, `surge models` and the autoscaler all ask here, so they never disagree
//! about what is served.
//!
//! A model folder has one of two layouts:
//!
//! * **flat**: `models/<name>/model.toml`, one version;
//! * **versioned**: `models/<name>/<version>/model.toml`, versions side by side.
//!
//! A folder with both (a `model.toml` and version folders beside it) is refused as a
//! whole ([`ModelError::MixedLayout`]): serving the flat files alone would silently
//! ignore the versions, and serving the versions alone would silently drop the flat one.

use std::cmp::Ordering;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::spec::SPEC_FILE;
use crate::ModelError;

/// How a model folder is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `<name>/model.toml`: one version.
    Flat,
    /// `<name>/<version>/model.toml`: these versions, oldest first (see
    /// [`compare_versions`]); never empty.
    Versioned(Vec<String>),
}

/// The layout of model folder `dir` (`models/<name>`): [`Layout::Flat`] or
/// [`Layout::Versioned`]; [`ModelError::MixedLayout`] when it holds both, and
/// [`ModelError::NotFound`] when it holds neither (or does not exist).
pub fn layout(dir: &Path) -> Result<Layout, ModelError> {
    let not_found = || ModelError::NotFound {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        models_dir: dir.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    if !dir.is_dir() {
        return Err(not_found());
    }
    let flat = dir.join(SPEC_FILE).is_file();
    let versions = version_folders(dir)?;
    match (flat, versions.is_empty()) {
        (true, true) => Ok(Layout::Flat),
        (false, false) => Ok(Layout::Versioned(versions)),
        (true, false) => Err(ModelError::MixedLayout {
            dir: dir.to_path_buf(),
            flat_version: declared_version(dir),
            versions,
        }),
        (false, true) => Err(not_found()),
    }
}

/// The `version` a folder's `model.toml` declares, read even when the rest of the file
/// would not load, for messages that say where its files should go.
fn declared_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(SPEC_FILE)).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let version = table.get("version")?.as_str()?;
    surge_protocol::validate_model_name(version).ok()?;
    Some(version.to_string())
}

/// Sub-folders of `dir` with a valid version label that hold a `model.toml`, oldest
/// first.
fn version_folders(dir: &Path) -> Result<Vec<String>, ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(SPEC_FILE).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|v| surge_protocol::validate_model_name(v).is_ok())
        .collect();
    out.sort_by(|a, b| compare_versions(a, b));
    Ok(out)
}

/// The versions of model `name` laid out as `models_dir/<name>/<version>/model.toml`,
/// oldest first (see [`compare_versions`]); empty for the flat layout, an error for a
/// folder that mixes both ([`layout`]).
pub fn versions(models_dir: &Path, name: &str) -> Result<Vec<String>, ModelError> {
    surge_protocol::validate_model_name(name)?;
    match layout(&models_dir.join(name))? {
        Layout::Flat => Ok(Vec::new()),
        Layout::Versioned(v) => Ok(v),
    }
}

/// Orders version labels: dot-separated parts compared as numbers when both are
/// numbers (so `1.10` is newer than `1.9`), as text otherwise; a label that is a
/// prefix of another is older (`1.0` before `1.0.1`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut pa = a.split(['.', '-', '_']);
    let mut pb = b.split(['.', '-', '_']);
    loop {
        match (pa.next(), pb.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (
                    x.trim_start_matches('v').parse::<u64>(),
                    y.trim_start_matches('v').parse::<u64>(),
                ) {
                    (Ok(i), Ok(j)) => i.cmp(&j),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// Names of the model folders in `models_dir`, sorted: sub-folders of either layout,
/// and those that mix both, which [`layout`] refuses, so that every caller reports
/// them instead of passing over them in silence. Hidden folders (staging areas, editor
/// leftovers) are never models.
pub fn discover(models_dir: &Path) -> Result<Vec<String>, ModelError> {
    let entries = std::fs::read_dir(models_dir).map_err(|e| ModelError::io(models_dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::io(models_dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        match layout(&entry.path()) {
            Ok(_) | Err(ModelError::MixedLayout { .. }) => names.push(name),
            Err(_) => {}
        }
    }
    names.sort();
    Ok(names)
}

/// Whether a folder last modified at `newest` has been quiet for `quiet` at `now`: a
/// folder still being copied is never read half-written. A clock that goes backwards
/// (or a file from the future) counts as not quiet.
pub fn is_quiet(newest: SystemTime, now: SystemTime, quiet: Duration) -> bool {
    now.duration_since(newest).is_ok_and(|d| d >= quiet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "version = \"1.0.0\"\n").unwrap();
    }

    #[test]
    fn flat_versioned_mixed_and_neither() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        touch(&d.join("flat/model.toml"));
        // A sub-folder without model.toml (golden rows, notes) is no version.
        touch(&d.join("flat/golden/inputs.csv"));
        touch(&d.join("versioned/1.10.0/model.toml"));
        touch(&d.join("versioned/1.9.0/model.toml"));
        touch(&d.join("mixed/model.toml"));
        touch(&d.join("mixed/1.1.0/model.toml"));
        std::fs::create_dir_all(d.join("empty")).unwrap();
        touch(&d.join(".staging/model.toml"));

        assert_eq!(layout(&d.join("flat")).unwrap(), Layout::Flat);
        assert_eq!(
            layout(&d.join("versioned")).unwrap(),
            Layout::Versioned(vec!["1.9.0".into(), "1.10.0".into()])
        );
        let err = layout(&d.join("mixed")).unwrap_err();
        assert!(
            matches!(&err, ModelError::MixedLayout { versions, flat_version, .. }
                if versions == &["1.1.0"] && flat_version.as_deref() == Some("1.0.0")),
            "{err:?}"
        );
        let text = err.to_string();
        for part in ["mixes two layouts", "1.1.0", "mixed/1.0.0/", "refused"] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert_eq!(err.reason(), "mixed_layout");
        for absent in ["empty", "missing"] {
            let err = layout(&d.join(absent)).unwrap_err();
            assert!(matches!(err, ModelError::NotFound { .. }), "{err:?}");
        }
        // Every caller sees the same thing: mixed folders are listed so that they are
        // reported, and `versions` refuses them.
        assert_eq!(discover(d).unwrap(), ["flat", "mixed", "versioned"]);
        assert_eq!(versions(d, "flat").unwrap(), Vec::<String>::new());
        assert_eq!(versions(d, "versioned").unwrap(), ["1.9.0", "1.10.0"]);
        assert!(matches!(
            versions(d, "mixed"),
            Err(ModelError::MixedLayout { .. })
        ));
    }

    #[test]
    fn a_folder_is_quiet_only_after_the_quiet_period() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let q = Duration::from_secs(2);
        assert!(!is_quiet(t0, t0, q));
        assert!(!is_quiet(t0, t0 + Duration::from_millis(1_999), q));
        assert!(is_quiet(t0, t0 + q, q));
        assert!(
            !is_quiet(t0 + q, t0, q),
            "a file from the future is not quiet"
        );
    }
}
