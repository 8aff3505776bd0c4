//! Hot discovery: a worker serving every model in its models directory notices a new
//! model folder, or a new version folder of a model (`models/<name>/<version>/`),
//! validates it, and starts serving it, without a restart and without touching the jobs
//! in flight. A new version becomes the default of jobs that name none once it is the
//! newest.
//!
//! The directory is polled every `interval` (polling works on every file system,
//! network and container mounts included). A folder is picked up only once it has
//! been **quiet** (no file in it modified) for `quiet`, so a folder still being
//! copied is never loaded half-written; a folder that fails validation is logged,
//! counted (`surge_model_rejected_total`, `surge_model_folders_refused_total`) and
//! retried only after it changes. So is a model folder that comes to mix the flat and
//! versioned layouts (a `1.1.0/` dropped beside a served flat model's files): the
//! version already served keeps serving, and the ERROR line says how to convert.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use surge_model::{is_quiet, Layout};

use crate::metrics as m;
use crate::shutdown::Shutdown;
use crate::Shared;

/// What identifies a folder's content cheaply: file count, total bytes, newest mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Files in the folder (not recursive).
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
    /// The newest modification time among them.
    pub newest: SystemTime,
}

/// Reads a folder's fingerprint; `None` when it cannot be read.
pub fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let mut fp = Fingerprint {
        files: 0,
        bytes: 0,
        newest: SystemTime::UNIX_EPOCH,
    };
    for entry in std::fs::read_dir(dir).ok()? {
        let meta = entry.ok()?.metadata().ok()?;
        fp.files += 1;
        fp.bytes += meta.len();
        if let Ok(t) = meta.modified() {
            fp.newest = fp.newest.max(t);
        }
    }
    Some(fp)
}

/// Polls the models directory until shutdown; loads and adds new models.
pub(crate) async fn watch(
    shared: Arc<Shared>,
    shutdown: Shutdown,
    interval: Duration,
    quiet: Duration,
) {
    let cfg = &shared.config;
    let mut rejected: HashMap<String, Fingerprint> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => return,
        }
        let names = match surge_model::discover(&cfg.models_dir) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot read the models directory");
                continue;
            }
        };
        let serving = shared.engine.models();
        // Candidates: (model, version folder or None for the flat layout).
        let mut candidates: Vec<(String, Option<String>)> = Vec::new();
        for name in names {
            let root = cfg.models_dir.join(&name);
            match surge_model::layout(&root) {
                Ok(Layout::Flat) => {
                    if !serving.serves(&name) {
                        candidates.push((name, None));
                    }
                }
                Ok(Layout::Versioned(versions)) => {
                    for v in versions {
                        if !serving.contains(&name, &v) {
                            candidates.push((name.clone(), Some(v)));
                        }
                    }
                }
                Err(e) => {
                    // Refused as a whole (a mixed layout): said once per change.
                    let Some(fp) = fingerprint(&root) else {
                        continue;
                    };
                    if rejected.get(&name) != Some(&fp)
                        && is_quiet(fp.newest, SystemTime::now(), quiet)
                    {
                        crate::refused(&name, &e);
                        rejected.insert(name, fp);
                    }
                }
            }
        }
        for (name, version) in candidates {
            let label = match &version {
                // A label for logs and for remembering refusals; never parsed.
                Some(v) => format!("{name}@{v}"),
                None => name.clone(),
            };
            let dir = match &version {
                Some(v) => cfg.models_dir.join(&name).join(v),
                None => cfg.models_dir.join(&name),
            };
            let Some(fp) = fingerprint(&dir) else {
                continue;
            };
            if rejected.get(&label) == Some(&fp) || !is_quiet(fp.newest, SystemTime::now(), quiet) {
                continue;
            }
            let (models_dir, device, n) = (cfg.models_dir.clone(), cfg.device, name.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                let device = surge_model::select_device(device)?;
                match version {
                    Some(v) => surge_model::load_version(&models_dir, &n, &v, &device),
                    None => surge_model::load_model(&models_dir, &n, &device),
                }
            })
            .await;
            match loaded {
                Ok(Ok(model)) => {
                    let info = model.info().clone();
                    let version = info.version.clone();
                    match shared.engine.add(model).await {
                        Ok(()) => {
                            rejected.remove(&label);
                            metrics::counter!(m::MODELS_DISCOVERED).increment(1);
                            info!(model = %name, %version, "new model folder validated; serving it");
                            crate::warn_if_unproven(&info);
                        }
                        Err(e) => error!(model = %name, error = %e, "cannot add the model"),
                    }
                }
                Ok(Err(e)) => {
                    error!(model = %name, error = %e, "new model folder failed validation; not serving it (fix it and it is tried again)");
                    metrics::counter!(m::MODELS_REJECTED, "model" => name.clone()).increment(1);
                    metrics::counter!(m::MODEL_FOLDERS_REFUSED, "model" => name.clone(), "reason" => e.reason())
                        .increment(1);
                    rejected.insert(label, fp);
                }
                Err(e) => error!(model = %name, error = %e, "loading the model panicked"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_changes_when_a_file_does() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"1").unwrap();
        let one = fingerprint(dir.path()).unwrap();
        assert_eq!((one.files, one.bytes), (1, 1));
        std::fs::write(dir.path().join("b"), b"22").unwrap();
        let two = fingerprint(dir.path()).unwrap();
        assert_eq!((two.files, two.bytes), (2, 3));
        assert_ne!(one, two);
        assert!(fingerprint(&dir.path().join("missing")).is_none());
    }
}
