//! What a test stands on and what it leaves behind: [`Bed`] (broker, prefix, folder),
//! the [`Cleanup`] guard for its queues and exchanges, and [`OwnedVhost`] for a vhost of
//! its own. Each guard cleans up however the test ends.

use super::*;

/// What an end-to-end test starts from: the broker (checked, so the test fails loudly
/// when it is down), a prefix no other test uses, a scratch folder, and the [`Cleanup`]
/// guard that deletes the prefix's queues and exchanges for `models` when the test ends.
///
/// `let bed = Bed::new("e2e", &["breast-cancer"]).await;`
pub struct Bed {
    /// A connection to the shared broker.
    pub conn: lapin::Connection,
    /// The test's unique prefix ([`unique_prefix`]).
    pub prefix: String,
    /// A scratch folder, removed with the bed.
    pub dir: tempfile::TempDir,
    /// Deletes the test's broker objects on drop.
    pub cleanup: Cleanup,
}

impl Bed {
    /// Checks the broker, makes the prefix from `test`, the folder and the guard.
    pub async fn new(test: &str, models: &[&str]) -> Self {
        let conn = require_broker().await;
        let prefix = unique_prefix(test);
        let cleanup = Cleanup::new(&prefix, models);
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        Self {
            conn,
            prefix,
            dir,
            cleanup,
        }
    }

    /// Writes `n` breast-cancer rows ([`write_rows_csv`]) to `rows.csv` in the bed's
    /// folder: `(that input, scores.csv beside it for the output, the rows written)`.
    pub fn rows_csv(&self, n: usize) -> (PathBuf, PathBuf, Vec<Vec<f32>>) {
        rows_csv_in(self.dir.path(), n)
    }
}

/// [`Bed::rows_csv`] in any folder.
pub fn rows_csv_in(dir: &Path, n: usize) -> (PathBuf, PathBuf, Vec<Vec<f32>>) {
    let input = dir.join("rows.csv");
    let rows = write_rows_csv(&input, n);
    (input, dir.join("scores.csv"), rows)
}

/// A drop guard for a test's broker objects: when it goes out of scope, however the
/// test ends (a failed assertion too), every queue and exchange of its topology is
/// deleted (score-batch deletes its own reply queues).
///
/// Create it right after the prefix: `let _cleanup = Cleanup::new(&prefix, &["breast-cancer"]);`
pub struct Cleanup {
    topo: Topology,
    models: Vec<String>,
}

impl Cleanup {
    /// Guards the unsharded topology of `prefix` for `models`.
    pub fn new(prefix: &str, models: &[&str]) -> Self {
        Self::topology(Topology::new(prefix), models)
    }

    /// Guards `topo` (with its shards) for `models`, and for every shipped model too: a
    /// worker that serves every folder declares a queue for each.
    pub fn topology(topo: Topology, models: &[&str]) -> Self {
        let mut all: Vec<String> = models.iter().map(|m| m.to_string()).collect();
        if let Ok(entries) = std::fs::read_dir(models_dir()) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    all.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        all.sort();
        all.dedup();
        Self { topo, models: all }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Drop cannot await, and the test's own runtime may be the one dropping us: the
        // deletion runs on a thread of its own, with its own runtime, bounded in time.
        let topo = self.topo.clone();
        let models = std::mem::take(&mut self.models);
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let models: Vec<&str> = models.iter().map(String::as_str).collect();
            // The timeout is made inside the runtime: its timer needs one.
            rt.block_on(async {
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), delete_topology(&topo, &models))
                        .await;
            });
        });
        let _ = worker.join();
    }
}

/// Deletes every queue (shards too) and exchange of `topo` for `models`.
async fn delete_topology(topo: &Topology, models: &[&str]) {
    let Ok(conn) = surge_broker::connect(
        &amqp_url(),
        "surge-tests-cleanup",
        &Timeouts {
            connect: Duration::from_secs(5),
            operation: Duration::from_secs(10),
        },
    )
    .await
    else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let mut queues: Vec<String> = models
        .iter()
        .flat_map(|m| topo.job_queues(m))
        .map(|(q, _)| q)
        .collect();
    queues.push(topo.dead_queue());
    queues.push(topo.results_queue());
    for q in queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [topo.jobs_exchange(), topo.dead_exchange()] {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "cleanup".into()).await;
}

/// A vhost (and users) a test made on the shared broker, deleted however the test
/// ends.
pub struct OwnedVhost {
    /// The vhost's name.
    pub vhost: String,
    /// Users to delete with it.
    pub users: Vec<String>,
}

impl OwnedVhost {
    /// A vhost named after `test` ([`unique_prefix`]), guest allowed in, and its URL on
    /// the shared broker; deleted with everything in it when dropped.
    pub async fn for_guest(test: &str) -> (Self, String) {
        let owned = Self {
            vhost: unique_prefix(test),
            users: Vec::new(),
        };
        rabbitmqctl(&["add_vhost", &owned.vhost]).await;
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &owned.vhost,
            "guest",
            ".*",
            ".*",
            ".*",
        ])
        .await;
        let url = format!("amqp://guest:guest@127.0.0.1:5672/{}", owned.vhost);
        (owned, url)
    }
}

// Drop cannot await: plain blocking `rabbitmqctl` calls, each a second or two.
impl Drop for OwnedVhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
        for u in &self.users {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["delete_user", u])
                .output();
        }
    }
}
