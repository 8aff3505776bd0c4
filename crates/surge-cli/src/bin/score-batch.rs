//! `score-batch`: a file of rows in, scores out, through RabbitMQ and Surge workers.

use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use surge_broker::{AmqpUrl, Timeouts};
use surge_cli::{init_logging, LogFormat};
use surge_client::parquet_io::is_numeric;
use surge_client::resume::{fingerprint, state_path, RunState};
use surge_client::stream::{
    open, open_parquet, Background, ByteBudget, Checkpoint, Encoder, OutputWriter, RowBytes,
    SAMPLE_ROWS,
};
use surge_client::table::{Format, ReadOptions, Selection, Table};
use surge_client::DataType;
use surge_client::{
    new_run_id, score_stream, ClientError, DoneJob, ResumeFrom, ScoreConfig, SourceJob, Summary,
};
use surge_protocol::Encoding;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Score a file of rows (CSV, JSON Lines or Parquet) with a Surge model, through RabbitMQ.
///
/// Rows are split into jobs, published with confirms, scored by `surge worker`
/// processes (started before or after this command), and written out in input order:
/// the input columns (or those --keep names), then one column per model output, then
/// `error` (empty when the row scored). Every row is answered exactly once: results
/// that arrive twice are dropped, and jobs whose results are overdue are published
/// again.
///
/// Files of any length run in bounded memory: the input is read as the run goes, at
/// most --max-in-flight jobs are read and not yet written, and rows are written as soon
/// as every row before them is answered.
///
/// Columns are matched to the model's features by name, so their order in the file
/// does not matter. By default every column that holds numbers is sent under its
/// header name; columns with no number at all (ids, dates, notes) are not sent and
/// come out as they went in; extra numeric columns are ignored by the worker; a missing
/// feature fails its rows with an error that names it. A sent cell that is empty (a
/// Parquet or JSON null) or not a finite number fails its row only, with an
/// `invalid_input` error naming its row and column; the run stops before publishing only
/// when every one of the first 10,000 rows (which also decide which columns hold
/// numbers) has such a cell.
///
/// While no worker consumes the model's queue, score-batch says so after 10 s (on the
/// progress bar, or as a WARN line when stderr is not a terminal), and it says so when
/// every job so far came back as an error, with the first error.
///
/// Exit status: 0 when every row scored; 1 when some rows failed (see the `error`
/// column); 2 on a usage, file or broker error, or --timeout.
///
/// The broker URL comes from AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
/// or the file named by AMQP_URL_FILE; its password is never printed. For amqps://,
/// AMQP_CACERT_FILE names a PEM file of CA certificates to trust (besides the
/// system's), and AMQP_CLIENT_CERT_FILE and AMQP_CLIENT_KEY_FILE a client certificate
/// and its key (PEM) for brokers that require one.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Model to score with; `name@version` pins a version.
    #[arg(long, env = "SURGE_MODEL")]
    model: String,
    /// Input file (.csv, .jsonl, .parquet); `-` for stdin (CSV, JSON Lines).
    #[arg(long, short)]
    input: String,
    /// Output file (.csv, .jsonl, .parquet); `-` for stdout.
    #[arg(long, short)]
    output: String,
    /// Input format, when the extension does not say (csv, jsonl, parquet).
    #[arg(long)]
    input_format: Option<String>,
    /// Output format, when the extension does not say (csv, jsonl, parquet).
    #[arg(long)]
    output_format: Option<String>,
    /// Columns to send (comma-separated), matched to the model's features by name.
    /// `name` sends that column; `file_col=feature` sends the file's `file_col` under
    /// the feature name `feature`. With --no-header, names the file's columns in
    /// order (an empty name skips a column). Default: every column that holds numbers,
    /// under its header name.
    #[arg(long, value_delimiter = ',')]
    columns: Vec<String>,
    /// The CSV input has no header row. Name its columns with --columns; without
    /// it, the values are sent by position and must be in the model's feature order.
    /// The output still gets a header.
    #[arg(long)]
    no_header: bool,
    /// Column holding texts, for text models. Default: a non-numeric column named `text`.
    #[arg(long)]
    text_column: Option<String>,
    /// Input columns to write to the output (comma-separated), in this order. Default:
    /// every input column.
    #[arg(long, value_delimiter = ',')]
    keep: Vec<String>,
    /// Rows per job.
    #[arg(long, default_value_t = 256)]
    rows_per_job: usize,
    /// Jobs read and not yet written out, at most: what bounds memory (with
    /// --max-in-flight-mb). Enough to keep the workers busy; more only costs memory.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Megabytes those jobs hold (their rows as read and the values sent), at most,
    /// counted from reading a job to writing it out.
    #[arg(long, default_value_t = 64)]
    max_in_flight_mb: usize,
    /// Seconds after which a job with no result is published again.
    #[arg(long, default_value_t = 60)]
    job_timeout: u64,
    /// Give up after this many seconds (0: wait for workers indefinitely).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Job encoding: msgpack or json.
    #[arg(long, default_value = "msgpack")]
    encoding: String,
    /// Send rows as the `inputs` list of lists instead of packed (`rows_f32`, one
    /// block of little-endian f32, and `cols`). JSON jobs always send `inputs`.
    #[arg(long)]
    no_pack: bool,
    /// Queue names.
    #[command(flatten)]
    topology: surge_cli::TopologyArgs,
    /// Publishes whose confirm may be outstanding at once. Confirms are taken as they
    /// come, alongside reading and collecting: publishing pauses only at this many.
    #[arg(long, default_value_t = 1000)]
    publish_window: usize,
    /// Run the threads that read the input and write the output at normal priority.
    /// By default (on Linux) they are in the idle scheduling class: they yield the CPU
    /// to a broker and workers on the same machine (11 paired 10M-row CSV runs on 2
    /// cores: 7 shorter by 1-24%, 4 longer by 4-10%). A thread starved of CPU
    /// while the run waits on it (a machine busy with other work) goes back to normal
    /// priority by itself.
    #[arg(long)]
    foreground_io: bool,
    /// No progress bar and no summary.
    #[arg(long, short)]
    quiet: bool,
    /// Continue an interrupted run writing the same --output from the same --input:
    /// the rows it wrote are kept, results waiting in its reply queue (kept an hour)
    /// are taken, and only the rest are published. Refused when the input changed.
    /// Every run to a CSV or JSON Lines file keeps its state in `<output>.state`
    /// until it completes.
    #[arg(long)]
    resume: bool,
    /// Log format.
    #[arg(long, env = "SURGE_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Seconds without a consumer on the model's queue before score-batch says so
    /// (for tests).
    #[arg(long, env = "SURGE_IDLE_HINT_SECS", default_value_t = 10, hide = true)]
    idle_hint_secs: u64,
}

async fn run(cli: Cli) -> Result<i32> {
    let (model, version) = match cli.model.split_once('@') {
        Some((m, v)) => (m.to_string(), Some(v.to_string())),
        None => (cli.model.clone(), None),
    };
    surge_protocol::validate_model_name(&model).with_context(|| format!("--model {model:?}"))?;
    let encoding = match cli.encoding.as_str() {
        "msgpack" => Encoding::Msgpack,
        "json" => Encoding::Json,
        other => bail!("--encoding {other:?}: use msgpack or json"),
    };
    let in_format = Format::resolve(&cli.input, cli.input_format.as_deref())?;
    let out_format = Format::resolve(&cli.output, cli.output_format.as_deref())?;
    if cli.no_header && in_format != Format::Csv {
        bail!("--no-header is for CSV input; JSON Lines objects are named by their keys");
    }
    let options = ReadOptions {
        header: !cli.no_header,
    };
    let started = Instant::now();
    let (mut table, source, types) = if in_format == Format::Parquet {
        if cli.input == "-" {
            bail!("Parquet input must be a file (it is read from its footer), not stdin");
        }
        let (t, s, types) = open_parquet(Path::new(&cli.input), SAMPLE_ROWS)?;
        (t, s, Some(types))
    } else {
        let reader: Box<dyn Read + Send> = if cli.input == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(
                std::fs::File::open(&cli.input)
                    .with_context(|| format!("opening {}", cli.input))?,
            )
        };
        let (t, s) = open(reader, in_format, options, SAMPLE_ROWS)?;
        (t, s, None)
    };
    if table.records.is_empty() {
        bail!(
            "{} holds no rows; give a file with a header and at least one row",
            cli.input
        );
    }
    let selection = table.select(&cli.columns, cli.text_column.as_deref())?;
    if let (Some(types), Selection::Features { cols, .. }) = (&types, &selection) {
        for &c in cols.iter() {
            if !is_numeric(&types[c]) {
                bail!(
                    "column {:?} of {} is {} in the Parquet file, not a number: every feature column must be an integer or float column; convert it, or leave it out (--columns lists the columns to send)",
                    table.columns[c],
                    cli.input,
                    types[c]
                );
            }
        }
    }
    table.adopt_names(&selection);
    report_selection(&table, &selection);
    // A bad cell fails its row only; but when every row read ahead has one, the
    // columns are surely wrong: stop before anything is published.
    if let Err(e) = table.inputs(&selection, 0, table.records.len()) {
        if table.bad_rows(&selection) == table.records.len() {
            return Err(anyhow::anyhow!(
                "{e} (and every one of the first {} rows has such a cell)",
                table.records.len()
            ));
        }
    }
    let keep = table.keep(&cli.keep)?;
    let kept: Vec<String> = keep.iter().map(|&k| table.columns[k].clone()).collect();
    let kept_types = types
        .as_ref()
        .map(|t| keep.iter().map(|&k| t[k].clone()).collect());
    let total_rows = source.exhausted().then_some(table.records.len());
    // The rows read ahead travel in `source` too: the table keeps only the names.
    table.records = Vec::new();
    let columns = match &selection {
        Selection::Features { names, .. } => names.clone(),
        Selection::Text(_) => None,
    };

    let mut cfg = ScoreConfig::new(AmqpUrl::from_env()?, model);
    cfg.version = version;
    cfg.topology = cli.topology.topology()?;
    cfg.rows_per_job = cli.rows_per_job.max(1);
    cfg.job_timeout = Duration::from_secs(cli.job_timeout.max(1));
    cfg.timeout = (cli.timeout > 0).then(|| Duration::from_secs(cli.timeout));
    cfg.encoding = encoding;
    cfg.pack = !cli.no_pack;
    cfg.idle_hint_after = Duration::from_secs(cli.idle_hint_secs);
    cfg.publish_window = cli.publish_window;
    cfg.max_in_flight = cli.max_in_flight.max(1);
    cfg.max_in_flight_bytes = cli.max_in_flight_mb.max(1) << 20;
    cfg.timeouts = Timeouts::default();
    cfg.progress = !cli.quiet && std::io::stderr().is_terminal();

    // The output: stdout, or a file written next to the target and renamed at the
    // end, so a reader never sees half a file.
    let target = (cli.output != "-").then(|| PathBuf::from(&cli.output));
    let tmp = target.as_ref().map(|p| p.with_extension("partial"));
    // Resuming: a state file beside the output (not for stdout or Parquet output,
    // whose footer is written last).
    let resumable = target.is_some() && out_format != Format::Parquet && cli.input != "-";
    let state_file = target.as_ref().filter(|_| resumable).map(|p| state_path(p));
    let state = match (&state_file, cli.resume) {
        (None, true) => bail!(
            "--resume needs an output file of CSV or JSON Lines and an input file (not stdin/stdout, not Parquet output)"
        ),
        (None, false) => None,
        (Some(sf), resume) => {
            let saved = RunState::load(sf)?;
            let input = fingerprint(Path::new(&cli.input))?;
            match (saved, resume) {
                (Some(_), false) => bail!(
                    "{} holds the state of an interrupted run writing {}: add --resume to continue it, or delete it (and {}) to start over",
                    sf.display(),
                    cli.output,
                    tmp.as_ref().map_or(String::new(), |t| t.display().to_string())
                ),
                (None, true) => bail!(
                    "--resume: there is no interrupted run to resume ({} does not exist); run without --resume",
                    sf.display()
                ),
                (Some(st), true) => {
                    if st.input != input {
                        bail!(
                            "--resume refused: {} changed since the interrupted run (its size, modification time or first bytes differ), and resuming would mix two inputs; delete {} and {} to start over",
                            cli.input,
                            sf.display(),
                            tmp.as_ref().map_or(String::new(), |t| t.display().to_string())
                        );
                    }
                    if st.rows_per_job != cfg.rows_per_job {
                        bail!(
                            "--resume refused: the interrupted run had --rows-per-job {}; give the same",
                            st.rows_per_job
                        );
                    }
                    Some(st)
                }
                (None, false) => {
                    let st = RunState {
                        run_id: new_run_id(),
                        input,
                        rows_per_job: cfg.rows_per_job,
                        jobs_written: 0,
                        rows_written: 0,
                        bytes_written: 0,
                        output_names: None,
                    };
                    st.save(sf)?;
                    Some(st)
                }
            }
        }
    };
    let from = match (&state, cli.resume) {
        (Some(st), true) => Some(Checkpoint {
            jobs: st.jobs_written,
            rows: st.rows_written,
            bytes: st.bytes_written,
            names: st.output_names.clone(),
        }),
        _ => None,
    };
    // Every run with a state file names its id (the state file keeps it); only a
    // --resume run picks up where a killed one stopped.
    cfg.run_id = state.as_ref().map(|st| st.run_id.clone());
    cfg.resume = from.as_ref().map(|f| ResumeFrom {
        jobs: f.jobs,
        rows: f.rows,
    });
    if let Some(f) = &from {
        info!(
            jobs = f.jobs,
            rows = f.rows,
            "resuming: the rows already written are kept, the rest are scored"
        );
    }

    // The output: stdout, or a file written next to the target and renamed at the
    // end, so a reader never sees half a file.
    let out: Box<dyn Write + Send> = match (&tmp, &from) {
        (None, _) => Box::new(std::io::stdout()),
        (Some(tmp), None) => Box::new(
            std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?,
        ),
        (Some(tmp), Some(f)) => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(tmp)
                .with_context(|| format!("--resume: opening {}", tmp.display()))?;
            file.set_len(f.bytes)
                .and_then(|()| file.seek(SeekFrom::End(0)).map(|_| ()))
                .with_context(|| format!("--resume: cutting {} back", tmp.display()))?;
            Box::new(file)
        }
    };
    let result = pipeline(
        &cfg,
        table,
        selection,
        keep,
        (kept, kept_types, types),
        // CSV read from a file: its reading thread is the busiest of the run's.
        (
            source,
            cli.input != "-" && in_format == Format::Csv,
            !cli.foreground_io,
        ),
        total_rows,
        columns,
        out,
        out_format,
        (state_file.clone().zip(state), from),
    )
    .await;
    let s = match result {
        Ok(s) => s,
        Err(e) => {
            // Bad input stays bad: nothing to resume. Otherwise the partial output
            // and the state are kept for --resume.
            let keep_state = state_file.is_some() && !matches!(e, ClientError::Input(_));
            if keep_state {
                eprintln!(
                    "score-batch: the rows written so far are kept; rerun the same command with --resume to continue"
                );
            } else {
                if let Some(tmp) = &tmp {
                    let _ = std::fs::remove_file(tmp);
                }
                if let Some(sf) = &state_file {
                    let _ = std::fs::remove_file(sf);
                }
            }
            return Err(e.into());
        }
    };
    if let (Some(tmp), Some(path)) = (&tmp, &target) {
        std::fs::rename(tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    }
    if let Some(sf) = &state_file {
        let _ = std::fs::remove_file(sf);
    }
    let wall = started.elapsed();
    if !cli.quiet {
        eprintln!(
            "score-batch: {} rows in {} jobs: {} scored, {} failed; {:.1}s, {:.0} rows/s (wall, reading to last row written; scoring alone {:.0} rows/s); duplicates dropped {}, republished {}, collected from the killed run {}, reconnects {}",
            s.rows,
            s.jobs,
            s.rows_ok,
            s.rows_failed,
            wall.as_secs_f64(),
            s.rows as f64 / wall.as_secs_f64().max(1e-9),
            s.rows_per_second(),
            s.duplicates,
            s.republished,
            s.collected,
            s.reconnects
        );
        for (kind, n) in &s.failures {
            eprintln!("score-batch:   {n} rows failed with {kind}");
        }
    }
    if s.rows_failed > 0 {
        eprintln!(
            "score-batch: {} of {} rows failed; see the `error` column of {}",
            s.rows_failed, s.rows, cli.output
        );
        return Ok(1);
    }
    Ok(0)
}

/// Jobs the reading thread hands to the run at a time when it reads a CSV file
/// ([`Encoder::in_bursts`]). Stdin goes job by job, as its rows come; so does
/// Parquet, whose reading thread is light (in bursts, a 2M-row Parquet run took 5-7%
/// longer in 14 alternating rounds, for reasons not found).
const READ_BURST: usize = 4;

/// Reading, scoring and writing, overlapped: a thread reads rows into jobs, the run
/// publishes them and collects results (a bounded window in flight), and a thread
/// writes answered jobs in input order.
#[allow(clippy::too_many_arguments)]
async fn pipeline(
    cfg: &ScoreConfig,
    table: Table,
    selection: Selection,
    keep: Vec<usize>,
    (kept, kept_types, types): (Vec<String>, Option<Vec<DataType>>, Option<Vec<DataType>>),
    (source, read_in_bursts, background): (surge_client::stream::RowSource, bool, bool),
    total_rows: Option<usize>,
    columns: Option<Vec<String>>,
    out: Box<dyn Write + Send>,
    out_format: Format,
    (state, from): (Option<(PathBuf, RunState)>, Option<Checkpoint>),
) -> Result<Summary, ClientError> {
    let (src_tx, src_rx) = mpsc::channel::<Result<SourceJob<RowBytes>, ClientError>>(16);
    let (sink_tx, mut sink_rx) = mpsc::channel::<DoneJob<RowBytes>>(64);
    // Every job read and not yet written counts against --max-in-flight-mb, in the
    // channels on either side of the run as well as in its window.
    let budget = Arc::new(ByteBudget::new(cfg.max_in_flight_bytes));
    let encoder = Encoder::new(table, selection, keep, out_format, cfg.rows_per_job)
        .within(Arc::clone(&budget))
        .with_input_types(types.as_deref())
        .in_bursts(if read_in_bursts { READ_BURST } else { 1 })
        .in_background(background)
        .skipping(from.as_ref().map_or(0, |f| f.rows));
    // Named threads, so that a profile tells reading from writing.
    let thread = |name: &str| std::thread::Builder::new().name(name.to_string());
    let no_thread = |e: std::io::Error| ClientError::Output(format!("starting a thread: {e}"));
    // Not joined: it ends at its next job once the run has stopped listening.
    thread("sb-read")
        .spawn(move || encoder.run(source, src_tx))
        .map_err(no_thread)?;
    let writer = thread("sb-write").spawn(move || -> Result<usize, ClientError> {
        let out = std::io::BufWriter::with_capacity(1 << 20, out);
        let mut w = match from {
            Some(f) => OutputWriter::resumed(out, out_format, kept, f),
            None => OutputWriter::new(out, out_format, kept).with_input_types(kept_types),
        };
        let mut saved = Instant::now();
        let mut bg = Background::new(background);
        while let Some(done) = sink_rx.blocking_recv() {
            bg.start();
            let bytes = done.bytes;
            w.write(done)?;
            budget.give_back(bytes);
            // The state follows the output at most 200 ms behind, always after a
            // flush: it never counts bytes that are not in the file.
            if let Some((path, st)) = &state {
                if saved.elapsed() >= Duration::from_millis(200) {
                    saved = Instant::now();
                    if let Some(cp) = w.checkpoint()? {
                        let st = RunState {
                            jobs_written: cp.jobs,
                            rows_written: cp.rows,
                            bytes_written: cp.bytes,
                            output_names: cp.names,
                            ..st.clone()
                        };
                        st.save(path)?;
                    }
                }
            }
            // Answered jobs waiting to be written: the run's window fills behind them.
            bg.end(!sink_rx.is_empty());
        }
        let bad_rows = w.bad_rows();
        w.finish()?;
        Ok(bad_rows)
    });
    let writer = writer.map_err(no_thread)?;
    let scored = score_stream(cfg, columns, total_rows, src_rx, sink_tx).await;
    // The sink is closed now (score_stream owned it): the writer ends.
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| ClientError::Output(format!("the output writer: {e}")))?
        .map_err(|_| ClientError::Output("the output writer panicked".into()))?;
    let mut summary = scored?;
    // Rows with a bad cell went out as zeros and were answered with their job; they
    // are written, and counted, as failed.
    let bad_rows = written?;
    if bad_rows > 0 {
        summary.rows_ok = summary.rows_ok.saturating_sub(bad_rows);
        summary.rows_failed += bad_rows;
        *summary
            .failures
            .entry(surge_client::stream::INVALID_INPUT.to_string())
            .or_default() += bad_rows;
    }
    Ok(summary)
}

/// Says what is sent and how, so a column left out is never a surprise.
fn report_selection(table: &Table, selection: &Selection) {
    let not_sent = table.not_sent(selection);
    match selection {
        Selection::Features { cols, names: None } => warn!(
            columns = cols.len(),
            "the input has no header and no --columns: its values are sent by position, so their order must be the model's feature order; name them with --columns to have them matched by name"
        ),
        Selection::Features {
            names: Some(names), ..
        } => info!(
            sent = names.len(),
            not_sent = ?not_sent,
            "columns are matched to the model's features by name"
        ),
        Selection::Text(c) => info!(text_column = %table.columns[*c], "scoring texts"),
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let telemetry = init_logging(cli.log_format, "score-batch");
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("score-batch: error: {e:#}");
            2
        }
    };
    if let Some(t) = telemetry {
        // The last spans are sent with a blocking call, off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    std::process::exit(code)
}
