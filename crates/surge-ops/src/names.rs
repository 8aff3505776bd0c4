//! Metric names shared across processes: what a worker exports is what the
//! autoscaler, the bench and the tests scrape, so each name is written once, here.

/// The metrics `surge worker` exports on `/metrics`.
pub mod worker {
    /// Jobs answered, by `model` and `status` (`ok`, `error`, `expired`).
    pub const JOBS: &str = "surge_jobs_total";
    /// Rows scored, by `model`.
    pub const ROWS: &str = "surge_rows_total";
    /// Jobs answered with an error, by `kind`.
    pub const ERRORS: &str = "surge_errors_total";
    /// Messages sent to the dead-letter exchange, by `reason`.
    pub const DEAD_LETTERED: &str = "surge_dead_lettered_total";
    /// Rows per forward pass.
    pub const BATCH_ROWS: &str = "surge_batch_rows";
    /// Seconds per forward pass, by `model`.
    pub const INFERENCE_SECONDS: &str = "surge_inference_seconds";
    /// Seconds jobs waited in the queue (from `sent_ms` or the AMQP timestamp).
    pub const QUEUE_WAIT_SECONDS: &str = "surge_queue_wait_seconds";
    /// Jobs delivered to this worker and not yet acknowledged.
    pub const IN_FLIGHT: &str = "surge_jobs_in_flight";
    /// 1 while connected to the broker and consuming.
    pub const CONNECTED: &str = "surge_connected";
    /// Ready messages in a model's queue, by `model` (read every few seconds).
    pub const QUEUE_BACKLOG: &str = "surge_queue_backlog";
    /// Consumers on a model's queue, by `model`.
    pub const QUEUE_CONSUMERS: &str = "surge_queue_consumers";
    /// Estimated seconds for the queue's consumers to drain its backlog at this worker's
    /// measured rate, by `model` (0 when empty): scale on this to meet a deadline.
    pub const TIME_TO_DRAIN: &str = "surge_time_to_drain_seconds";
    /// Model folders found after start, validated and served.
    pub const MODELS_DISCOVERED: &str = "surge_models_discovered_total";
    /// Model folders found after start that failed validation, by `model` (the
    /// hot-discovery part of [`MODEL_FOLDERS_REFUSED`], kept for existing dashboards).
    pub const MODELS_REJECTED: &str = "surge_model_rejected_total";
    /// Model folders this worker refused to serve, at start or after, by `model` and
    /// `reason` (`mixed_layout`, `golden_mismatch`, `spec`, `weights`, `files`, ...: see
    /// `ModelError::reason`). Each refusal also logs an ERROR line saying why.
    pub const MODEL_FOLDERS_REFUSED: &str = "surge_model_folders_refused_total";
    /// Reconnections after a lost connection.
    pub const RECONNECTS: &str = "surge_reconnects_total";
    /// Jobs whose send time was in the future (the producer's clock is ahead).
    pub const CLOCK_AHEAD: &str = "surge_jobs_clock_ahead_total";
}

/// The metrics `surge autoscale` exports on `/metrics`.
pub mod autoscale {
    /// Desired workers, by `model`.
    pub const DESIRED: &str = "surge_autoscale_desired_replicas";
    /// Running (not draining) workers, by `model`.
    pub const RUNNING: &str = "surge_autoscale_replicas";
    /// Workers draining, by `model`.
    pub const DRAINING: &str = "surge_autoscale_draining_replicas";
    /// Running workers connected to the broker, by `model`.
    pub const CONNECTED: &str = "surge_autoscale_connected_replicas";
    /// Ready messages in the model's queue, by `model`.
    pub const BACKLOG: &str = "surge_queue_backlog";
    /// Jobs delivered to workers and not yet acked, by `model`.
    pub const IN_FLIGHT: &str = "surge_autoscale_jobs_in_flight";
    /// Estimated seconds to drain backlog + in flight at the measured rate with the
    /// running workers (0 when there is nothing to drain), by `model`.
    pub const TIME_TO_DRAIN: &str = "surge_time_to_drain_seconds";
    /// Measured (or assumed) jobs/s per worker, by `model`.
    pub const RATE: &str = "surge_autoscale_jobs_per_second_per_worker";
    /// Scaling actions, by `model` and `direction` (`up`, `down`).
    pub const DECISIONS: &str = "surge_autoscale_decisions_total";
    /// Worker processes that exited without being asked, by `model`.
    pub const CRASHES: &str = "surge_autoscale_worker_crashes_total";
    /// Model folders refused as a whole (a folder mixing the flat and versioned layouts),
    /// by `model` and `reason`; each refusal also logs an ERROR line saying how to fix it.
    pub const MODEL_FOLDERS_REFUSED: &str = "surge_model_folders_refused_total";
    /// Seconds of worker process lifetime so far (running and draining), by `model`: the
    /// pay-per-use bill. Only ever grows (a gauge because it counts fractions).
    pub const WORKER_SECONDS: &str = "surge_autoscale_worker_seconds";
}
