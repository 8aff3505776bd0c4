//! Picking up a killed run: a state file beside the output says which run it was (its
//! id names its durable reply queue and its job ids), which input it read (size,
//! modification time and a hash of its first mebibyte), and how much of the output is
//! written (jobs, rows and bytes, saved after the output is flushed). A resumed run
//! cuts the partial output back to those bytes, skips those rows of the input, takes
//! the results of the killed run waiting in its reply queue (their jobs are not
//! published again), and publishes the rest under the same ids; any result that
//! arrives twice is dropped.

use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ClientError;

/// What identifies an input file well enough to refuse resuming with another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// FNV-1a of the first mebibyte, in hex.
    pub head: String,
}

/// FNV-1a, 64 bits: stable across builds, unlike `DefaultHasher`.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// The fingerprint of the file at `path`.
pub fn fingerprint(path: &Path) -> Result<Fingerprint, ClientError> {
    let err = |e: std::io::Error| ClientError::Input(format!("{}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(err)?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let mut head = Vec::with_capacity(1 << 20);
    std::fs::File::open(path)
        .map_err(err)?
        .take(1 << 20)
        .read_to_end(&mut head)
        .map_err(err)?;
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(&head);
    Ok(Fingerprint {
        size: meta.len(),
        mtime_ns,
        head: format!("{:016x}", h.finish()),
    })
}

/// The state of a run, saved beside its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The run's id.
    pub run_id: String,
    /// The input it reads.
    pub input: Fingerprint,
    /// Rows per job (a resumed run must split the input the same way).
    pub rows_per_job: usize,
    /// Jobs written to the output.
    pub jobs_written: usize,
    /// Rows written to the output.
    pub rows_written: usize,
    /// Bytes of the partial output that hold them.
    pub bytes_written: u64,
    /// The output columns (`None` until the header is written).
    pub output_names: Option<Vec<String>>,
}

/// The state file of output `output`: `<output>.state`.
pub fn state_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

impl RunState {
    /// The state saved at `path`, if there is one.
    pub fn load(path: &Path) -> Result<Option<Self>, ClientError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ClientError::Input(format!(
                    "{} is not a score-batch state file ({e}); delete it and the .partial output to start over",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::Input(format!("{}: {e}", path.display()))),
        }
    }

    /// Saves the state at `path` (written beside it and renamed: never half a file).
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let err = |e: std::io::Error| ClientError::Output(format!("{}: {e}", path.display()));
        let tmp = path.with_extension("state-tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| ClientError::Output(e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_and_a_changed_input_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "a\n1\n").unwrap();
        let f1 = fingerprint(&input).unwrap();
        let state = RunState {
            run_id: "sb-1".into(),
            input: f1.clone(),
            rows_per_job: 2,
            jobs_written: 3,
            rows_written: 6,
            bytes_written: 40,
            output_names: Some(vec!["p".into()]),
        };
        let path = state_path(&dir.path().join("out.csv"));
        assert!(path.ends_with("out.csv.state"));
        assert_eq!(RunState::load(&path).unwrap(), None);
        state.save(&path).unwrap();
        assert_eq!(RunState::load(&path).unwrap(), Some(state));
        std::fs::write(&input, "a\n2\n").unwrap();
        assert_ne!(fingerprint(&input).unwrap().head, f1.head);
    }
}
