//! score-batch's file work alone, no broker, for profiling it: reads FILE (CSV, or
//! Parquet by extension) into jobs as score-batch does, every column kept and the
//! numeric ones sent, and prints the reading thread's time per row. With `KEEP=1` it
//! also answers each job with one score per row and writes them to OUT (CSV or
//! Parquet by extension), timing the writer. The host is idle but for it, so each
//! time is about its thread's CPU. `cargo run --release -p surge-client --example
//! io_bench -- FILE OUT [rows_per_job]`; FILE from `surge-bench gen-rows`.

use std::path::Path;
use std::time::Instant;

use surge_client::stream::{open, open_parquet, Encoder, OutputWriter, SAMPLE_ROWS};
use surge_client::table::{Format, ReadOptions};
use surge_client::tracker::PlannedJob;
use surge_client::DoneJob;
use surge_protocol::{Inputs, JobResult, Timings};

fn format_of(p: &str) -> Format {
    if p.ends_with(".parquet") {
        Format::Parquet
    } else {
        Format::Csv
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(output)) = (args.get(1), args.get(2)) else {
        return Err("usage: io_bench FILE OUT [rows_per_job]".into());
    };
    let per: usize = args.get(3).map_or(Ok(256), |s| s.parse())?;
    let (in_fmt, out_fmt) = (format_of(input), format_of(output));
    let (mut table, source, types) = if in_fmt == Format::Parquet {
        let (t, s, ty) = open_parquet(Path::new(input), SAMPLE_ROWS)?;
        (t, s, Some(ty))
    } else {
        let f = Box::new(std::fs::File::open(input)?);
        let (t, s) = open(f, in_fmt, ReadOptions { header: true }, SAMPLE_ROWS)?;
        (t, s, None)
    };
    let selection = table.select(&[], None)?;
    table.adopt_names(&selection);
    let keep = table.keep(&[])?;
    let kept: Vec<String> = keep.iter().map(|&k| table.columns[k].clone()).collect();
    let kept_types = types
        .as_ref()
        .map(|t| keep.iter().map(|&k| t[k].clone()).collect());
    table.records = Vec::new();
    let encoder = Encoder::new(table, selection, keep, out_fmt, per)
        .with_input_types(types.as_deref())
        .in_bursts(4);
    let keep_jobs = std::env::var("KEEP").is_ok();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || {
        let t = Instant::now();
        encoder.run(source, tx);
        t.elapsed().as_secs_f64()
    });
    let mut jobs = Vec::new();
    let mut read_rows = 0;
    while let Some(j) = rx.blocking_recv() {
        let j = j?;
        read_rows += j.inputs.len();
        if keep_jobs {
            jobs.push(j);
        }
    }
    let read_cpu = reader.join().map_err(|_| "reader panicked")?;
    let read_wall = t0.elapsed().as_secs_f64();
    if !keep_jobs {
        println!(
            "rows {read_rows}: read {:.0} ns/row ({:.2} s wall)",
            read_cpu * 1e9 / read_rows as f64,
            read_wall
        );
        return Ok(());
    }
    let rows: usize = jobs.iter().map(|j| j.inputs.len()).sum();
    // Encode as the run does, to count the job bodies' cost too.
    let t = Instant::now();
    let mut body_bytes = 0;
    for j in &jobs {
        if let Inputs::Rows(r) = &j.inputs {
            body_bytes += r.to_le_bytes().len();
        }
    }
    let encode_cpu = t.elapsed().as_secs_f64();
    let mut start = 0;
    let done: Vec<DoneJob<_>> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, j)| {
            let n = j.inputs.len();
            let outputs = (0..n)
                .map(|r| vec![(r as f32 * 0.37).sin().abs()])
                .collect();
            let job = PlannedJob {
                id: format!("run-{i}"),
                start,
                end: start + n,
            };
            start += n;
            DoneJob {
                result: JobResult::ok(
                    job.id.clone(),
                    "m",
                    "1",
                    vec!["malignant_probability".into()],
                    outputs,
                    "w",
                    Timings::default(),
                ),
                job,
                payload: j.payload,
                bytes: j.bytes,
            }
        })
        .collect();
    let t = Instant::now();
    let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(output)?);
    let mut w = OutputWriter::new(out, out_fmt, kept).with_input_types(kept_types);
    for d in done {
        w.write(d)?;
    }
    w.finish()?;
    let write_cpu = t.elapsed().as_secs_f64();
    let ns = |s: f64| s * 1e9 / rows as f64;
    println!(
        "rows {rows}: read {:.0} ns/row ({:.2} s with the queue), job bodies {:.0} ns/row ({body_bytes} B), write {:.0} ns/row",
        ns(read_cpu),
        read_wall,
        ns(encode_cpu),
        ns(write_cpu)
    );
    Ok(())
}
