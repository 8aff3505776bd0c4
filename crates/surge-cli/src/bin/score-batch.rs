//! `score-batch`: a file of rows in, scores out, through RabbitMQ and Surge workers.

use std::io::{BufReader, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use surge_cli::{init_logging, LogFormat};
use surge_client::table::{read_table_with, write_table, Format, ReadOptions, Selection, Table};
use surge_client::{score_table, ScoreConfig};
use surge_worker::broker::{AmqpUrl, Timeouts};
use surge_worker::protocol::{Encoding, Topology};
use tracing::{info, warn};

/// Score a file of rows (CSV or JSON Lines) with a Surge model, through RabbitMQ.
///
/// Rows are split into jobs, published with confirms, scored by `surge worker`
/// processes (started before or after this command), and written out in input order:
/// the input columns, then one column per model output, then `error` (empty when the
/// row scored). Every row is answered exactly once: results that arrive twice are
/// dropped, and jobs whose results are overdue are published again.
///
/// Columns are matched to the model's features by name, so their order in the file
/// does not matter. By default every column that holds numbers is sent under its
/// header name; columns with no number at all (ids, dates, notes) are not sent and
/// come out as they went in; extra numeric columns are ignored by the worker; a missing
/// feature fails its rows with an error that names it. A sent cell that is empty or not
/// a number stops the run before anything is published, naming its row and column.
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
    /// Input file (.csv, .jsonl); `-` for stdin.
    #[arg(long, short)]
    input: String,
    /// Output file (.csv, .jsonl); `-` for stdout.
    #[arg(long, short)]
    output: String,
    /// Input format, when the extension does not say (csv, jsonl).
    #[arg(long)]
    input_format: Option<String>,
    /// Output format, when the extension does not say (csv, jsonl).
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
    /// Rows per job.
    #[arg(long, default_value_t = 256)]
    rows_per_job: usize,
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
    /// Prefix of every exchange and queue name.
    #[arg(long, env = "SURGE_PREFIX", default_value = "surge")]
    prefix: String,
    /// Jobs in flight before their publisher confirms are awaited.
    #[arg(long, default_value_t = 1000)]
    publish_window: usize,
    /// No progress bar and no summary.
    #[arg(long, short)]
    quiet: bool,
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
    surge_worker::protocol::validate_model_name(&model)
        .with_context(|| format!("--model {model:?}"))?;
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
    let mut table = if cli.input == "-" {
        read_table_with(std::io::stdin().lock(), in_format, options)?
    } else {
        let f =
            std::fs::File::open(&cli.input).with_context(|| format!("opening {}", cli.input))?;
        read_table_with(BufReader::new(f), in_format, options)?
    };
    if table.records.is_empty() {
        bail!("{} holds no rows", cli.input);
    }
    let selection = table.select(&cli.columns, cli.text_column.as_deref())?;
    table.adopt_names(&selection);
    report_selection(&table, &selection);

    let mut cfg = ScoreConfig::new(AmqpUrl::from_env()?, model);
    cfg.version = version;
    cfg.topology = Topology::new(cli.prefix);
    cfg.rows_per_job = cli.rows_per_job.max(1);
    cfg.job_timeout = Duration::from_secs(cli.job_timeout.max(1));
    cfg.timeout = (cli.timeout > 0).then(|| Duration::from_secs(cli.timeout));
    cfg.encoding = encoding;
    cfg.pack = !cli.no_pack;
    cfg.idle_hint_after = Duration::from_secs(cli.idle_hint_secs);
    cfg.publish_window = cli.publish_window;
    cfg.timeouts = Timeouts::default();
    cfg.progress = !cli.quiet && std::io::stderr().is_terminal();
    let scored = score_table(&cfg, &table, &selection).await?;

    if cli.output == "-" {
        write_table(
            std::io::stdout().lock(),
            out_format,
            &table,
            &scored.output_names,
            &scored.outcomes,
        )?;
    } else {
        let path = PathBuf::from(&cli.output);
        // Written next to the target and renamed, so a reader never sees half a file.
        let tmp = path.with_extension("partial");
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        write_table(
            std::io::BufWriter::new(f),
            out_format,
            &table,
            &scored.output_names,
            &scored.outcomes,
        )?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    }
    let s = &scored.summary;
    if !cli.quiet {
        eprintln!(
            "score-batch: {} rows in {} jobs: {} scored, {} failed; {:.1}s, {:.0} rows/s; duplicates dropped {}, republished {}, reconnects {}",
            s.rows,
            s.jobs,
            s.rows_ok,
            s.rows_failed,
            s.elapsed.as_secs_f64(),
            s.rows_per_second(),
            s.duplicates,
            s.republished,
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
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("score-batch: error: {e:#}");
            std::process::exit(2);
        }
    }
}
