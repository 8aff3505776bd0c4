//! `surge`: the Surge worker, autoscaler and model tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use surge_broker::{AmqpUrl, Timeouts};
use surge_cli::{init_logging, spawn_signal_handler, LogFormat};
use surge_worker::{BatchPolicy, WorkerConfig};

/// Surge: elastic batch inference on RabbitMQ.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "SURGE_LOG_FORMAT",
        value_enum,
        default_value = "human",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve models: consume jobs, score them in batches, publish results.
    ///
    /// The broker URL comes from AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
    /// or from the file named by AMQP_URL_FILE; its password is never logged. For
    /// amqps://, AMQP_CACERT_FILE names a PEM file of CA certificates to trust (besides
    /// the system's), and AMQP_CLIENT_CERT_FILE and AMQP_CLIENT_KEY_FILE a client
    /// certificate and its key (PEM) for brokers that require one. `?heartbeat=N` in
    /// the URL sets the heartbeat (default 10 s).
    /// SIGTERM/SIGINT drains gracefully; a second signal exits at once.
    Worker(WorkerArgs),
    /// Scale `surge worker` processes on this machine to each model queue's backlog,
    /// down to zero when idle.
    ///
    /// Every --interval it reads each queue's backlog (ready messages) and the jobs in
    /// flight (from its workers' /metrics), learns the service rate (jobs/s per worker)
    /// and runs enough workers to drain the work within --target-drain: up at once,
    /// down only after --scale-down-window, to zero after --cooldown of idleness, never
    /// while a job is in flight. Scale-down drains (SIGTERM, SIGKILL after --grace-s);
    /// a crashed worker is restarted with backoff. Arguments after `--` go to every
    /// worker, e.g. `surge autoscale --max 4 -- --threads 2 --max-batch-rows 256`.
    Autoscale(AutoscaleArgs),
    /// Inspect model folders the way a worker does.
    #[command(subcommand)]
    Models(ModelsCmd),
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ModelsCmd {
    /// Every model folder: version, architecture, input, queue depth, and whether it
    /// loads. Exits non-zero when any folder would not be served.
    List {
        /// Folder holding one sub-folder per model.
        #[arg(long, env = "SURGE_MODELS_DIR", default_value = "models")]
        models_dir: PathBuf,
        /// Queue names, for the queue depths.
        #[command(flatten)]
        topology: surge_cli::TopologyArgs,
        /// Device to load the models on.
        #[arg(long, env = "SURGE_DEVICE", default_value = "cpu")]
        device: surge_model::DeviceSpec,
    },
    /// Scaffold a model folder from a weights file: the layer shapes give model.toml
    /// (mlp only), the preprocessing and golden rows go in, the folder is checked
    /// (golden rows included), then moved into --models-dir whole. Files are written
    /// 0644 and folders 0755, whatever the source files' modes.
    ///
    /// Say what happens to inputs before the network: --preprocessing scaler.json or
    /// --no-preprocessing (one of the two is required: a wrong guess scores wrong
    /// without an error). Golden rows (--golden rows.csv --expect scores.csv, written
    /// with the real model) make every later load prove that the folder scores like
    /// the training code.
    New {
        /// The new model's name (its folder and queue name).
        name: String,
        /// The weights: safetensors with one `<prefix><n>.weight` / `<prefix><n>.bias`
        /// pair per linear layer, in the order of n (`layers.0.weight`, or a PyTorch
        /// nn.Sequential state dict: `0.weight`, `2.weight`, ...).
        #[arg(long)]
        from_safetensors: PathBuf,
        /// Architecture.
        #[arg(long, default_value = "mlp")]
        arch: String,
        /// Folder holding one sub-folder per model.
        #[arg(long, env = "SURGE_MODELS_DIR", default_value = "models")]
        models_dir: PathBuf,
        /// Input feature names in the network's input order, comma-separated. Default:
        /// the --golden file's header when it names exactly as many columns as the
        /// weights take, else f0, f1, ...
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Output names, comma-separated. Default: the --expect file's header when it
        /// fits, else score, or score_0, score_1, ...
        #[arg(long, value_delimiter = ',')]
        outputs: Vec<String>,
        /// Write the versioned layout, <name>/<version>/, beside the versions already
        /// there (a flat model must be converted first; the error says how). Without
        /// it, a flat <name>/ at version 1.0.0.
        #[arg(long)]
        version: Option<String>,
        /// JSON with the fitted StandardScaler's constants: {"mean": [...], "scale":
        /// [...]} (scikit-learn's mean_ and scale_; "std", or "var" whose square root is
        /// taken, work too). Written as [preprocessing] mean/std.
        #[arg(long, conflicts_with = "no_preprocessing")]
        preprocessing: Option<PathBuf>,
        /// The network takes raw inputs: no [preprocessing].
        #[arg(long)]
        no_preprocessing: bool,
        /// Golden inputs: CSV with a header naming the features (any order; other
        /// columns are ignored). Copied to golden/inputs.csv.
        #[arg(long, requires = "expect")]
        golden: Option<PathBuf>,
        /// The outputs the real model gave for --golden, one row per input row, with a
        /// header naming the outputs. Copied to golden/expected.csv.
        #[arg(long, requires = "golden")]
        expect: Option<PathBuf>,
        /// Largest |got - expected| allowed per golden output value.
        #[arg(long, default_value_t = surge_model::golden::DEFAULT_TOLERANCE)]
        tolerance: f32,
        /// Hidden activation: relu, tanh or gelu.
        #[arg(long, default_value = "relu")]
        activation: String,
        /// Output activation: sigmoid, softmax or none.
        #[arg(long, default_value = "sigmoid")]
        output_activation: String,
        /// The part of the tensor names before the layer number (`net` for
        /// `net.0.weight`), for weights files with several numbered groups. Stored as
        /// [mlp] tensor_prefix. Default: the one such prefix the names share.
        #[arg(long)]
        tensor_prefix: Option<String>,
    },
    /// Validate one model folder exactly as `surge worker` would, and run one test
    /// forward pass. Exits non-zero with what is wrong, and where.
    ///
    /// Golden rows in the folder are scored and must match. A tabular model with
    /// neither golden rows nor [preprocessing] passes with a loud warning: nothing
    /// shows that it scores like its training code.
    Check {
        /// The model folder (its name is the model name), or one version folder of it.
        path: PathBuf,
        /// Device to load the model on.
        #[arg(long, env = "SURGE_DEVICE", default_value = "cpu")]
        device: surge_model::DeviceSpec,
        /// Fail, too, when the folder has no golden rows.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Args)]
struct AutoscaleArgs {
    /// Folder holding one sub-folder per model; passed on to the workers.
    #[arg(long, env = "SURGE_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
    /// Scale this model's queue (repeatable). Default: every model folder in
    /// --models-dir, including folders added while it runs.
    #[arg(long = "model", env = "SURGE_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    /// Fewest workers per model (0: scale to zero when idle).
    #[arg(long, env = "SURGE_MIN_WORKERS", default_value_t = 0)]
    min: u32,
    /// Most workers per model.
    #[arg(long, env = "SURGE_MAX_WORKERS", default_value_t = 4)]
    max: u32,
    /// How often to read the queues and the workers, in milliseconds.
    #[arg(long, env = "SURGE_INTERVAL_MS", default_value_t = 250)]
    interval_ms: u64,
    /// Run enough workers to drain the backlog within this many seconds.
    #[arg(long, env = "SURGE_TARGET_DRAIN_S", default_value_t = 10.0)]
    target_drain_s: f64,
    /// Scale down only to the largest need seen during this many seconds.
    #[arg(long, env = "SURGE_SCALE_DOWN_WINDOW_S", default_value_t = 30.0)]
    scale_down_window_s: f64,
    /// Seconds without backlog or in-flight jobs before the last worker stops.
    #[arg(long, env = "SURGE_COOLDOWN_S", default_value_t = 60.0)]
    cooldown_s: f64,
    /// Jobs/s one worker is assumed to serve until the rate has been measured.
    #[arg(long, env = "SURGE_INITIAL_RATE", default_value_t = 100.0)]
    initial_rate: f64,
    /// Seconds a draining worker gets before SIGKILL (its unacked jobs then return to
    /// the queue). Keep it above your longest batch.
    #[arg(long, env = "SURGE_GRACE_S", default_value_t = 30.0)]
    grace_s: f64,
    /// Queue names; passed on to the workers.
    #[command(flatten)]
    topology: surge_cli::TopologyArgs,
    /// Serve the autoscaler's /metrics, /healthz and /readyz here ("off" to disable).
    #[arg(
        long,
        env = "SURGE_AUTOSCALE_METRICS_ADDR",
        default_value = "127.0.0.1:9188"
    )]
    metrics_addr: String,
    /// The `surge` binary to run workers with. Default: this one.
    #[arg(long, env = "SURGE_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// Seconds any broker operation may take before the connection is presumed lost.
    #[arg(long, env = "SURGE_BROKER_TIMEOUT_S", default_value_t = 15)]
    broker_timeout_s: u64,
    /// Arguments for every worker (after `--`).
    #[arg(last = true)]
    worker_args: Vec<String>,
}

fn parse_addr(a: &str, flag: &str) -> Result<Option<SocketAddr>> {
    match a {
        "off" | "" => Ok(None),
        a => {
            Ok(Some(a.parse().with_context(|| {
                format!("{flag} {a:?} is not host:port")
            })?))
        }
    }
}

fn seconds(v: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("{flag} {v} is not a number of seconds"))
}

async fn autoscale(args: AutoscaleArgs) -> Result<()> {
    use surge_autoscale::{AutoscaleConfig, PolicyConfig, WorkerLaunch};
    let url = AmqpUrl::from_env()?;
    let watch_models_dir = args.models.is_empty().then(|| args.models_dir.clone());
    let models = if args.models.is_empty() {
        // At start, every folder there is taken as it is.
        // (Folders refused here are reported by the loop's first look.)
        surge_autoscale::model_folders(&args.models_dir, Duration::ZERO).models
    } else {
        args.models
    };
    anyhow::ensure!(args.max >= 1, "--max must be at least 1");
    anyhow::ensure!(
        args.min <= args.max,
        "--min {} is above --max {}",
        args.min,
        args.max
    );
    anyhow::ensure!(
        args.initial_rate.is_finite() && args.initial_rate > 0.0,
        "--initial-rate must be a positive number of jobs/s"
    );
    let program = match args.worker_bin {
        Some(p) => p,
        None => std::env::current_exe().context("locating the surge binary")?,
    };
    let topology = args.topology.topology()?;
    let mut extra_args = args.topology.to_args();
    extra_args.extend([
        "--models-dir".to_string(),
        args.models_dir.display().to_string(),
    ]);
    extra_args.extend(args.worker_args);
    let op = Duration::from_secs(args.broker_timeout_s.max(1));
    let cfg = AutoscaleConfig {
        url,
        topology,
        models,
        watch_models_dir,
        policy: PolicyConfig {
            min: args.min,
            max: args.max,
            target_drain: seconds(args.target_drain_s, "--target-drain-s")?,
            scale_down_window: seconds(args.scale_down_window_s, "--scale-down-window-s")?,
            cooldown: seconds(args.cooldown_s, "--cooldown-s")?,
            initial_rate: args.initial_rate,
        },
        interval: Duration::from_millis(args.interval_ms.max(10)),
        launch: WorkerLaunch {
            program,
            extra_args,
            grace: seconds(args.grace_s, "--grace-s")?,
        },
        timeouts: Timeouts {
            connect: op,
            operation: op,
        },
        metrics_addr: parse_addr(&args.metrics_addr, "--metrics-addr")?,
    };
    let (trigger, shutdown) = surge_ops::shutdown::channel();
    spawn_signal_handler(trigger)?;
    surge_autoscale::run(cfg, shutdown).await?;
    Ok(())
}

#[derive(Args)]
struct WorkerArgs {
    /// Folder holding one sub-folder per model (each with model.toml and weights).
    #[arg(long, env = "SURGE_MODELS_DIR", default_value = "models")]
    models_dir: PathBuf,
    /// Serve only this model (repeatable). Default: every valid model in --models-dir.
    #[arg(long = "model", env = "SURGE_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    /// Device: cpu, cuda, cuda:N (builds with the `cuda` feature) or auto.
    #[arg(long, env = "SURGE_DEVICE", default_value = "cpu")]
    device: surge_model::DeviceSpec,
    /// Close a batch once it holds this many rows (jobs are never split).
    #[arg(long, env = "SURGE_MAX_BATCH_ROWS", default_value_t = 512)]
    max_batch_rows: usize,
    /// Close a batch of texts once it holds about this many tokens (estimated from the
    /// texts; 0 for no token budget). Rows of numbers count no tokens.
    #[arg(long, env = "SURGE_MAX_BATCH_TOKENS", default_value_t = 16_384)]
    max_batch_tokens: usize,
    /// Close a batch once its oldest job has waited this long, in milliseconds.
    #[arg(long, env = "SURGE_MAX_WAIT_MS", default_value_t = 5)]
    max_wait_ms: u64,
    /// Unacked jobs held per model queue. Default: 2 x --max-batch-rows, within 8..1024.
    /// Lower it when jobs are large (each held job costs its body in memory).
    #[arg(long, env = "SURGE_PREFETCH")]
    prefetch: Option<u16>,
    /// CPU threads for forward passes. Default: every available core when a served
    /// model takes texts (a transformer gains from threads: +50% at 2), else 1 (a small
    /// tabular model next to the broker loses more to a thread pool's spin-waiting than
    /// it gains). Fixed at start. Sets CANDLE_NUM_THREADS and RAYON_NUM_THREADS.
    #[arg(long, env = "SURGE_THREADS")]
    threads: Option<usize>,
    /// Queue names.
    #[command(flatten)]
    topology: surge_cli::TopologyArgs,
    /// Serve /metrics, /healthz and /readyz here ("off" to disable).
    #[arg(long, env = "SURGE_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    metrics_addr: String,
    /// Largest accepted message body, in bytes.
    #[arg(long, env = "SURGE_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Most rows accepted in one job.
    #[arg(long, env = "SURGE_MAX_ROWS_PER_JOB", default_value_t = 65_536)]
    max_rows_per_job: usize,
    /// Seconds any broker operation may take before the connection is presumed lost.
    #[arg(long, env = "SURGE_BROKER_TIMEOUT_S", default_value_t = 15)]
    broker_timeout_s: u64,
    /// Sleep this long before each batch, in milliseconds: slows a worker down on
    /// purpose for fault drills and demos (kill or restart things mid-run).
    #[arg(long, env = "SURGE_BATCH_DELAY_MS", default_value_t = 0, hide = true)]
    batch_delay_ms: u64,
    /// When serving every model: look for new model folders this often, in
    /// milliseconds, and serve each once it validates (0: never look).
    #[arg(long, env = "SURGE_WATCH_MODELS_MS", default_value_t = 1000)]
    watch_models_ms: u64,
    /// Identity reported in results (default: hostname-pid).
    #[arg(long, env = "SURGE_WORKER_ID")]
    worker_id: Option<String>,
}

/// `--threads` when not given: every available core when a model to serve takes texts,
/// else 1 (see `WorkerArgs::threads`).
fn default_threads(models_dir: &std::path::Path, models: &[String]) -> usize {
    let names = if models.is_empty() {
        surge_model::discover(models_dir).unwrap_or_default()
    } else {
        models.to_vec()
    };
    if names.iter().any(|n| surge_model::takes_text(models_dir, n)) {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    }
}

/// The threads for forward passes: `--threads`, or the default for the models served.
fn worker_threads(args: &WorkerArgs) -> usize {
    args.threads
        .unwrap_or_else(|| default_threads(&args.models_dir, &args.models))
        .max(1)
}

async fn worker(args: WorkerArgs) -> Result<()> {
    tracing::info!(
        threads = worker_threads(&args),
        "threads for forward passes"
    );
    let url = AmqpUrl::from_env()?;
    let metrics_addr = parse_addr(&args.metrics_addr, "--metrics-addr")?;
    let mut cfg = WorkerConfig::new(url, args.models_dir);
    cfg.models = args.models;
    cfg.device = args.device;
    cfg.policy = BatchPolicy {
        max_rows: args.max_batch_rows.max(1),
        max_wait: Duration::from_millis(args.max_wait_ms),
        max_tokens: args.max_batch_tokens,
    };
    cfg.prefetch = args.prefetch;
    cfg.topology = args.topology.topology()?;
    cfg.limits.max_message_bytes = args.max_message_bytes;
    cfg.limits.max_rows = args.max_rows_per_job;
    let op = Duration::from_secs(args.broker_timeout_s.max(1));
    cfg.timeouts = Timeouts {
        connect: op,
        operation: op,
    };
    cfg.metrics_addr = metrics_addr;
    cfg.worker_id = args.worker_id;
    cfg.batch_delay = Duration::from_millis(args.batch_delay_ms);
    cfg.watch_models =
        (args.watch_models_ms > 0).then(|| Duration::from_millis(args.watch_models_ms));
    let (trigger, shutdown) = surge_ops::shutdown::channel();
    spawn_signal_handler(trigger)?;
    surge_worker::run(cfg, shutdown).await?;
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    // The environment is set here, while the process has one thread (set_var is only
    // sound then): before the tokio runtime starts its workers.
    if matches!(cli.command, Command::Models(_)) && std::env::var_os("RUST_LOG").is_none() {
        // The model tools print their own findings; log lines would only repeat them.
        std::env::set_var("RUST_LOG", "off");
    }
    if let Command::Worker(args) = &cli.command {
        // Candle sizes its thread pool from these on first use, which comes later.
        let threads = worker_threads(args).to_string();
        std::env::set_var("CANDLE_NUM_THREADS", &threads);
        std::env::set_var("RAYON_NUM_THREADS", &threads);
    }
    let service = match &cli.command {
        Command::Worker(_) => "surge-worker",
        Command::Autoscale(_) => "surge-autoscale",
        Command::Models(_) => "surge-models",
    };
    let telemetry = init_logging(cli.log_format, service);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    runtime.block_on(run(cli));
    // Outside the runtime: the last spans are sent with a blocking call.
    if let Some(t) = telemetry {
        t.shutdown();
    }
}

async fn run(cli: Cli) {
    let result = match cli.command {
        Command::Worker(args) => worker(args).await,
        Command::Autoscale(args) => autoscale(args).await,
        Command::Models(ModelsCmd::List {
            models_dir,
            topology,
            device,
        }) => match topology.topology() {
            Ok(topology) => surge_cli::models::list(&models_dir, &topology, device).await,
            Err(e) => Err(e),
        },
        Command::Models(ModelsCmd::New {
            name,
            from_safetensors,
            arch,
            models_dir,
            features,
            outputs,
            version,
            preprocessing,
            no_preprocessing,
            golden,
            expect,
            tolerance,
            activation,
            output_activation,
            tensor_prefix,
        }) => {
            use surge_cli::models::{Golden, NewModel, Scaling};
            surge_cli::models::new_model(NewModel {
                models_dir: &models_dir,
                name: &name,
                weights: &from_safetensors,
                arch: &arch,
                features,
                outputs,
                version: version.as_deref(),
                activation: &activation,
                output_activation: &output_activation,
                scaling: match (&preprocessing, no_preprocessing) {
                    (Some(p), _) => Some(Scaling::StandardScaler(p)),
                    (None, true) => Some(Scaling::Raw),
                    (None, false) => None,
                },
                golden: golden
                    .as_deref()
                    .zip(expect.as_deref())
                    .map(|(i, e)| Golden {
                        inputs: i,
                        expected: e,
                        tolerance,
                    }),
                tensor_prefix: tensor_prefix.as_deref(),
            })
        }
        Command::Models(ModelsCmd::Check {
            path,
            device,
            strict,
        }) => surge_cli::models::check(&path, device, strict),
    };
    if let Err(e) = result {
        tracing::error!("{e:#}");
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
