//! Parquet in and out of score-batch on the real broker: the tabular model (features of
//! several Arrow types, kept columns with their types, scores as Float32, `error` null
//! when a row scored), the text model (an embedding as FixedSizeList<Float32>), and bad
//! input named by column and row: a missing feature, a string column given as a
//! feature, a null in a feature, a damaged file, an empty file.

use std::fs::File;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{
    Array, ArrayRef, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use surge_testkit::*;

async fn score_batch(
    model: &str,
    prefix: &str,
    input: &Path,
    output: &Path,
    extra: &[&str],
) -> Output {
    Command::new(bin("score-batch"))
        .args(["--model", model, "--prefix", prefix, "--timeout", "240"])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("running score-batch")
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("building the record batch");
    let f = File::create(path).expect("creating the file");
    let mut w = ArrowWriter::try_new(f, schema, None).expect("creating the Parquet writer");
    w.write(&batch).expect("writing the file");
    w.close().expect("closing the Parquet writer");
}

fn read_parquet(path: &Path) -> RecordBatch {
    let f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("reading the Parquet footer")
        .build()
        .expect("building the Parquet reader");
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("reading the file")).collect();
    let schema = batches[0].schema();
    arrow_select_concat(&schema, &batches)
}

/// Concatenates batches column by column (the test reads small files).
fn arrow_select_concat(schema: &Arc<Schema>, batches: &[RecordBatch]) -> RecordBatch {
    if batches.len() == 1 {
        return batches[0].clone();
    }
    panic!("expected one batch in {schema:?}, got {}", batches.len());
}

/// The sample's rows: 30 features each.
fn sample_rows() -> (Vec<String>, Vec<Vec<f32>>) {
    let mut rdr = csv::Reader::from_path(models_dir().join("breast-cancer/sample.csv"))
        .expect("opening the CSV file");
    let header = rdr
        .headers()
        .expect("reading the CSV header")
        .iter()
        .map(String::from)
        .collect();
    let rows = rdr
        .records()
        .map(|r| {
            r.expect("reading a CSV record")
                .iter()
                .map(|c| c.parse().unwrap_or_else(|e| panic!("{c}: {e}")))
                .collect()
        })
        .collect();
    (header, rows)
}

/// The sample as Parquet: `row_id` (Int64), `note` (Utf8), the first feature as
/// Float32 and the rest as Float64; `change` edits a feature column before writing.
fn sample_parquet(path: &Path, change: impl Fn(&str, ArrayRef) -> Option<ArrayRef>) {
    let (header, rows) = sample_rows();
    let n = rows.len();
    let mut cols: Vec<(String, ArrayRef)> = vec![
        (
            "row_id".into(),
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
        ),
        (
            "note".into(),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("p-{i}")),
            )),
        ),
    ];
    for (j, name) in header.iter().enumerate() {
        let a: ArrayRef = if j == 0 {
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r[j])))
        } else {
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r[j] as f64),
            ))
        };
        if let Some(a) = change(name, a) {
            cols.push((name.clone(), a));
        }
    }
    write_parquet(
        path,
        cols.iter().map(|(n, a)| (n.as_str(), a.clone())).collect(),
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs breast-cancer score-batch on input it must refuse: exit 2, before any broker
/// work; returns its stderr.
async fn refused(prefix: &str, input: &Path, output: &Path, extra: &[&str]) -> String {
    let out = score_batch("breast-cancer", prefix, input, output, extra).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    stderr(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabular_rows_in_and_out_of_parquet_and_bad_input_named() {
    let bed = Bed::new("pq", &["breast-cancer"]).await;
    let (prefix, dir) = (bed.prefix.clone(), &bed.dir);
    let p = |name: &str| dir.path().join(name);
    let (_, rows) = sample_rows();
    let expected = reference_scores(&rows);

    // Bad input is refused before the broker is asked, naming what is wrong.
    sample_parquet(&p("typed.parquet"), |name, a| {
        Some(if name == "mean_area" {
            Arc::new(StringArray::from_iter_values(
                (0..a.len()).map(|i| format!("v{i}")),
            )) as ArrayRef
        } else {
            a
        })
    });
    let features = feature_names().join(",");
    let x = p("x.parquet");
    let err = refused(&prefix, &p("typed.parquet"), &x, &["--columns", &features]).await;
    assert!(
        err.contains("column \"mean_area\"") && err.contains("Utf8"),
        "a string column given as a feature is named with its type: {err}"
    );
    std::fs::write(p("damaged.parquet"), b"PAR1 this is not parquet at all").unwrap();
    let err = refused(&prefix, &p("damaged.parquet"), &x, &[]).await;
    assert!(err.contains("not a readable Parquet file"), "{err}");
    std::fs::write(p("empty.parquet"), b"").unwrap();
    let err = refused(&prefix, &p("empty.parquet"), &x, &[]).await;
    assert!(err.contains("not a readable Parquet file"), "{err}");
    write_parquet(
        &p("norows.parquet"),
        vec![(
            "mean_radius",
            Arc::new(Float64Array::from(Vec::<f64>::new())) as ArrayRef,
        )],
    );
    let err = refused(&prefix, &p("norows.parquet"), &x, &[]).await;
    assert!(err.contains("holds no rows"), "{err}");
    assert!(!p("x.parquet").exists(), "no output for refused input");

    let mut w = WorkerProc::spawn(&prefix, "w-pq", dir.path(), &["--model", "breast-cancer"]);
    w.wait_ready(Duration::from_secs(30)).await;

    // Parquet in, Parquet out: kept columns with their types, scores as Float32.
    sample_parquet(&p("rows.parquet"), |_, a| Some(a));
    let out = score_batch(
        "breast-cancer",
        &prefix,
        &p("rows.parquet"),
        &p("scores.parquet"),
        &["--rows-per-job", "40", "--keep", "row_id,note"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got = read_parquet(&p("scores.parquet"));
    let schema = got.schema();
    let shape: Vec<(String, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("row_id".to_string(), DataType::Int64),
            ("note".to_string(), DataType::Utf8),
            ("malignant_probability".to_string(), DataType::Float32),
            ("error".to_string(), DataType::Utf8),
        ]
    );
    assert_eq!(got.num_rows(), rows.len());
    let ids = got
        .column(0)
        .as_primitive::<arrow_array::types::Int64Type>();
    let scores = got.column(2).as_primitive::<Float32Type>();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(ids.value(i), i as i64, "row {i} out of order");
        assert!(got.column(3).is_null(i), "row {i} has an error");
        assert!(
            (scores.value(i) - want).abs() <= 1e-6,
            "row {i}: {} vs in-process {}",
            scores.value(i),
            want
        );
    }

    // A null feature fails its row only, named by row and column; the other rows
    // are scored.
    sample_parquet(&p("null.parquet"), |name, a| {
        Some(if name == "mean_area" {
            let mut v: Vec<Option<f64>> = a
                .as_any()
                .downcast_ref::<Float64Array>()
                .map(|x| x.iter().collect())
                .unwrap_or_default();
            v[41] = None;
            Arc::new(Float64Array::from(v)) as ArrayRef
        } else {
            a
        })
    });
    let out = score_batch(
        "breast-cancer",
        &prefix,
        &p("null.parquet"),
        &p("null-scores.parquet"),
        &["--rows-per-job", "40", "--keep", "row_id"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 rows failed with invalid_input"),
        "{}",
        stderr(&out)
    );
    let got = read_parquet(&p("null-scores.parquet"));
    assert_eq!(got.num_rows(), rows.len());
    let scores = got.column(1).as_primitive::<Float32Type>();
    let errors = got.column(2).as_string::<i32>();
    for (i, want) in expected.iter().enumerate() {
        if i == 41 {
            assert!(scores.is_null(i), "the bad row has no score");
            assert!(
                errors
                    .value(i)
                    .starts_with("invalid_input: row 42, column \"mean_area\" is empty"),
                "a null feature is named by row and column: {}",
                errors.value(i)
            );
            continue;
        }
        assert!(errors.is_null(i), "row {i}: {}", errors.value(i));
        assert!((scores.value(i) - want).abs() <= 1e-6, "row {i}");
    }

    // Parquet in, CSV out; a missing feature fails every row naming it.
    sample_parquet(&p("missing.parquet"), |name, a| {
        (name != "mean_area").then_some(a)
    });
    let out = score_batch(
        "breast-cancer",
        &prefix,
        &p("missing.parquet"),
        &p("missing.csv"),
        &["--rows-per-job", "100"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let mut rdr = csv::Reader::from_path(p("missing.csv")).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header.last().map(String::as_str), Some("error"));
    let mut n = 0;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        assert!(
            rec[header.len() - 1].contains("missing columns: mean_area"),
            "{:?}",
            &rec[header.len() - 1]
        );
        n += 1;
    }
    assert_eq!(n, rows.len());

    w.stop(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_in_and_embeddings_out_of_parquet() {
    let _conn = require_broker().await;
    const MODEL: &str = "all-minilm-l6-v2";
    assert!(
        models_dir().join(MODEL).join("model.safetensors").is_file(),
        "models/{MODEL}/model.safetensors is missing: run `make models` (make test does)"
    );
    let prefix = unique_prefix("pqtext");
    let _cleanup = Cleanup::new(&prefix, &[MODEL]);
    let dir = tempfile::tempdir().unwrap();
    // The first three texts of the reference fixture, with their sentence-transformers
    // embeddings.
    let path = workspace().join("crates/surge-model/tests/fixtures/minilm_reference.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases: Vec<(String, Vec<f32>)> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .take(3)
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                c["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            )
        })
        .collect();
    let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
    let input = dir.path().join("texts.parquet");
    write_parquet(
        &input,
        vec![
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..3)) as ArrayRef,
            ),
            (
                "text",
                Arc::new(StringArray::from_iter_values(texts)) as ArrayRef,
            ),
        ],
    );
    let mut w = WorkerProc::spawn(
        &prefix,
        "w-pqtext",
        dir.path(),
        &["--model", MODEL, "--threads", "2"],
    );
    w.wait_ready(Duration::from_secs(60)).await;
    let output = dir.path().join("embeddings.parquet");
    let out = score_batch(MODEL, &prefix, &input, &output, &["--rows-per-job", "2"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got = read_parquet(&output);
    let schema = got.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "text", "embedding", "error"]);
    match schema.field(2).data_type() {
        DataType::FixedSizeList(item, 384) => assert_eq!(item.data_type(), &DataType::Float32),
        other => panic!("embedding is {other}"),
    }
    assert_eq!(got.num_rows(), 3);
    let emb = got.column(2).as_fixed_size_list();
    for (i, (_, want)) in cases.iter().enumerate() {
        assert!(got.column(3).is_null(i), "row {i} has an error");
        let v = emb.value(i);
        let v = v.as_primitive::<Float32Type>();
        let (a, b) = (v.values(), want);
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (n(a) * n(b));
        assert!(
            cosine >= 0.9999,
            "row {i}: cosine {cosine} to sentence-transformers"
        );
    }
    w.stop(Duration::from_secs(20)).await;
}
