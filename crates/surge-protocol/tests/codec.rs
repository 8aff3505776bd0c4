//! Round trips and hostile bodies through the public codec API.

use rand::{Rng, RngCore, SeedableRng};
use surge_protocol::codec::{decode_job, decode_result, encode};
use surge_protocol::{
    DecodeError, Encoding, ErrorKind, Inputs, Job, JobResult, Limits, ResultError, Status, Timings,
};

const BOTH: [Encoding; 2] = [Encoding::Json, Encoding::Msgpack];

fn sample_jobs() -> Vec<Job> {
    let mut full = Job::new(
        "breast-cancer",
        Inputs::rows(&[vec![1.5, -2.0, 0.0], vec![3.25, 4.0, 1e-3]]),
    );
    full.version = Some("1.0.0".into());
    full.deadline_ms = Some(1_900_000_000_000);
    full.sent_ms = Some(1_800_000_000_000);
    vec![
        full,
        Job::new(
            "all-minilm-l6-v2",
            Inputs::Texts(vec!["hello".into(), "wörld, \"quoted\"".into()]),
        ),
        Job::new("m", Inputs::rows(&[])),
    ]
}

fn sample_results() -> Vec<JobResult> {
    let ok = JobResult {
        v: 1,
        job_id: "run-1-0".into(),
        model: "breast-cancer".into(),
        version: Some("1.0.0".into()),
        status: Status::Ok,
        output_names: vec!["malignant_probability".into()],
        outputs: vec![vec![0.25], vec![0.75]],
        error: None,
        worker: "host-1".into(),
        timings: Timings {
            queue_ms: Some(3.5),
            inference_ms: 0.25,
            batch_rows: 512,
        },
    };
    let mut err = JobResult::failure(
        "j2",
        "nope",
        ErrorKind::UnknownModel,
        "no model nope",
        "host-1",
    );
    err.error = Some(ResultError {
        kind: ErrorKind::UnknownModel,
        message: "no model named nope is served".into(),
    });
    let expired = JobResult::failure("j3", "m", ErrorKind::Expired, "deadline passed", "w");
    assert_eq!(expired.status, Status::Expired);
    vec![ok, err, expired]
}

#[test]
fn every_message_type_round_trips_in_both_encodings() {
    let limits = Limits::default();
    for enc in BOTH {
        for job in sample_jobs() {
            let bytes = encode(&job, enc).unwrap();
            assert_eq!(decode_job(&bytes, enc, &limits).unwrap(), job, "{enc:?}");
        }
        for result in sample_results() {
            let bytes = encode(&result, enc).unwrap();
            assert_eq!(
                decode_result(&bytes, enc, &limits).unwrap(),
                result,
                "{enc:?}"
            );
        }
    }
}

#[test]
fn json_documented_example_decodes() {
    let body = br#"{"v":1,"model":"breast-cancer","inputs":[[17.99,10.38],[20,17]],"deadline_ms":1900000000000}"#;
    let job = decode_job(body, Encoding::Json, &Limits::default()).unwrap();
    assert_eq!(
        job.inputs,
        Inputs::rows(&[vec![17.99, 10.38], vec![20.0, 17.0]])
    );
}

#[test]
fn content_type_selects_or_sniffs_the_encoding() {
    assert_eq!(
        Encoding::from_content_type(Some("application/json; charset=utf-8"), b"").unwrap(),
        Encoding::Json
    );
    assert_eq!(
        Encoding::from_content_type(Some("application/msgpack"), b"").unwrap(),
        Encoding::Msgpack
    );
    assert_eq!(
        Encoding::from_content_type(None, b"  {\"v\":1}").unwrap(),
        Encoding::Json
    );
    assert_eq!(
        Encoding::from_content_type(None, &[0x82]).unwrap(),
        Encoding::Msgpack
    );
    assert!(matches!(
        Encoding::from_content_type(Some("text/xml"), b""),
        Err(DecodeError::UnsupportedContentType(_))
    ));
}

#[test]
fn ten_thousand_random_byte_strings_are_errors_not_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let limits = Limits::default();
    let mut buf = vec![0u8; 512];
    for i in 0..10_000 {
        let len = rng.random_range(0..512);
        rng.fill_bytes(&mut buf[..len]);
        // Some strings start with a plausible map header so the decoder gets further.
        if i % 3 == 0 && len > 0 {
            buf[0] = 0x84;
        }
        for enc in BOTH {
            assert!(decode_job(&buf[..len], enc, &limits).is_err());
            assert!(decode_result(&buf[..len], enc, &limits).is_err());
        }
    }
}

/// `{"v":1,"model":"m","inputs":<inputs>}` in MessagePack, `inputs` as raw bytes.
fn msgpack_job_with_inputs(inputs: &[u8]) -> Vec<u8> {
    let mut mp = vec![
        0x83, 0xa1, b'v', 0x01, 0xa5, b'm', b'o', b'd', b'e', b'l', 0xa1, b'm',
    ];
    mp.extend_from_slice(&[0xa6, b'i', b'n', b'p', b'u', b't', b's']);
    mp.extend_from_slice(inputs);
    mp
}

#[test]
fn depth_bombs_are_refused_before_decoding() {
    let limits = Limits::default();
    // {"v":1,"model":"m","inputs":[[[[...]]]]} one million levels deep.
    let mut inputs = vec![0x91u8; 1_000_000];
    inputs.push(0x01);
    let mp = msgpack_job_with_inputs(&inputs);
    assert_eq!(
        decode_job(&mp, Encoding::Msgpack, &limits),
        Err(DecodeError::TooDeep { max: 16 })
    );
    let json = format!(
        "{{\"v\":1,\"model\":\"m\",\"inputs\":{}}}",
        "[".repeat(1_000_000)
    );
    assert_eq!(
        decode_job(json.as_bytes(), Encoding::Json, &limits),
        Err(DecodeError::TooDeep { max: 16 })
    );
    assert_eq!(DecodeError::TooDeep { max: 16 }.answerable_kind(), None);
}

#[test]
fn length_bombs_are_refused_without_allocating() {
    let limits = Limits::default();
    // inputs: array32 claiming 4,294,967,295 rows, in a 30-byte body.
    let mp = msgpack_job_with_inputs(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x90]);
    let err = decode_job(&mp, Encoding::Msgpack, &limits).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("claims 4294967295"), "{err}");
}

#[test]
fn oversized_bodies_are_refused_before_parsing() {
    let limits = Limits {
        max_message_bytes: 1024,
        ..Limits::default()
    };
    let big = vec![b' '; 2048];
    for enc in BOTH {
        let err = decode_job(&big, enc, &limits).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                size: 2048,
                max: 1024
            }
        );
        assert_eq!(err.answerable_kind(), Some(ErrorKind::TooLarge));
    }
}

#[test]
fn unknown_versions_are_named_not_guessed() {
    let limits = Limits::default();
    // A v2 body with a shape v1 does not know.
    let body = br#"{"v":2,"model":"m","payload":{"x":1}}"#;
    assert_eq!(
        decode_job(body, Encoding::Json, &limits),
        Err(DecodeError::UnsupportedVersion { got: 2 })
    );
    // A v2 body that happens to fit v1's shape.
    let body = br#"{"v":2,"model":"m","inputs":[[1]]}"#;
    let err = decode_job(body, Encoding::Json, &limits).unwrap_err();
    assert_eq!(err, DecodeError::UnsupportedVersion { got: 2 });
    assert!(err.to_string().contains("speaks version 1"));
    // Missing version is a broken job, answered as invalid_job.
    let body = br#"{"model":"m","inputs":[[1]]}"#;
    let err = decode_job(body, Encoding::Json, &limits).unwrap_err();
    assert_eq!(err.answerable_kind(), Some(ErrorKind::InvalidJob));
}

#[test]
fn schema_errors_are_answerable_and_syntax_errors_are_not() {
    let limits = Limits::default();
    let mixed = br#"{"v":1,"model":"m","inputs":[[1,2],"text"]}"#;
    let err = decode_job(mixed, Encoding::Json, &limits).unwrap_err();
    assert!(
        err.to_string()
            .contains("a job holds only rows or only texts"),
        "{err}"
    );
    assert_eq!(err.answerable_kind(), Some(ErrorKind::InvalidJob));
    let wrong_type = br#"{"v":1,"model":"m","inputs":[[1,"x"]]}"#;
    assert_eq!(
        decode_job(wrong_type, Encoding::Json, &limits)
            .unwrap_err()
            .answerable_kind(),
        Some(ErrorKind::InvalidJob)
    );
    let broken = br#"{"v":1,"model":"m","inputs":[[1,2]"#;
    assert_eq!(
        decode_job(broken, Encoding::Json, &limits)
            .unwrap_err()
            .answerable_kind(),
        None
    );
}

#[test]
fn too_many_rows_is_answerable() {
    let limits = Limits {
        max_rows: 2,
        ..Limits::default()
    };
    let job = Job::new("m", Inputs::rows(&vec![vec![1.0]; 3]));
    for enc in BOTH {
        let err = decode_job(&encode(&job, enc).unwrap(), enc, &limits).unwrap_err();
        assert_eq!(err, DecodeError::TooManyRows { rows: 3, max: 2 });
        assert_eq!(err.answerable_kind(), Some(ErrorKind::TooManyRows));
    }
}

/// A packed job written by hand, as another client library would: `rows_f32` as a
/// MessagePack bin of `bytes`, and `cols`.
fn packed_body(bytes: &[u8], cols: u64, columns: Option<&[&str]>) -> Vec<u8> {
    let mut b = Vec::new();
    let fields = 4 + u32::from(columns.is_some());
    rmp::encode::write_map_len(&mut b, fields).unwrap();
    rmp::encode::write_str(&mut b, "v").unwrap();
    rmp::encode::write_uint(&mut b, 1).unwrap();
    rmp::encode::write_str(&mut b, "model").unwrap();
    rmp::encode::write_str(&mut b, "m").unwrap();
    rmp::encode::write_str(&mut b, "rows_f32").unwrap();
    rmp::encode::write_bin(&mut b, bytes).unwrap();
    rmp::encode::write_str(&mut b, "cols").unwrap();
    rmp::encode::write_uint(&mut b, cols).unwrap();
    if let Some(names) = columns {
        rmp::encode::write_str(&mut b, "columns").unwrap();
        rmp::encode::write_array_len(&mut b, names.len() as u32).unwrap();
        for n in names {
            rmp::encode::write_str(&mut b, n).unwrap();
        }
    }
    b
}

#[test]
fn the_packed_decoder_holds_on_random_blocks_lengths_and_cols() {
    // Property: for any block and any cols, decoding never panics or over-allocates,
    // and the rows are whole (and bit-exact) exactly when the block is a whole number
    // of rows of `cols` little-endian floats; otherwise a shape error says why.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let limits = Limits::default();
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -0.0,
        1e-45,
    ];
    for _ in 0..5_000 {
        let n_bytes = rng.random_range(0..400usize);
        let mut bytes = vec![0u8; n_bytes];
        rng.fill_bytes(&mut bytes);
        // Sprinkle non-finite and extreme values where whole floats sit.
        for chunk in bytes.chunks_exact_mut(4) {
            if rng.random_range(0..8) == 0 {
                let v = specials[rng.random_range(0..specials.len())];
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
        let cols: u64 = match rng.random_range(0..4) {
            0 => 0,
            1 => u64::MAX,
            2 => rng.random_range(1..1u64 << 40),
            _ => rng.random_range(1..40),
        };
        let body = packed_body(&bytes, cols, None);
        let job = decode_job(&body, Encoding::Msgpack, &limits).unwrap();
        let Inputs::Rows(rows) = &job.inputs else {
            panic!("packed rows decoded as texts")
        };
        let whole = n_bytes % 4 == 0
            && usize::try_from(cols)
                .ok()
                .is_some_and(|c| c > 0 && (n_bytes / 4) % c == 0);
        let empty = n_bytes == 0;
        assert_eq!(
            rows.shape_error().is_none(),
            whole || empty,
            "{n_bytes} bytes, cols {cols}: {:?}",
            rows.shape_error()
        );
        if whole {
            let c = cols as usize;
            assert_eq!(rows.len(), n_bytes / 4 / c);
            assert_eq!(rows.cols(), c);
            for (got, want) in rows.values().iter().zip(bytes.chunks_exact(4)) {
                assert_eq!(got.to_bits(), u32::from_le_bytes(want.try_into().unwrap()));
            }
        }
    }
}

#[test]
fn packed_rows_travel_bit_exact_and_are_refused_where_they_cannot_be() {
    let limits = Limits::default();
    let rows = vec![
        vec![1.5f32, -0.0, f32::MIN_POSITIVE],
        vec![3.25, 1e-45, -7.0],
    ];
    let mut job = Job::new("m", Inputs::rows(&rows));
    job.columns = Some(vec!["a".into(), "b".into(), "c".into()]);
    let body = surge_protocol::codec::encode_job(&job, Encoding::Msgpack, true).unwrap();
    assert_eq!(decode_job(&body, Encoding::Msgpack, &limits).unwrap(), job);
    // JSON cannot carry bytes: encode_job falls back to `inputs`...
    let json = surge_protocol::codec::encode_job(&job, Encoding::Json, true).unwrap();
    assert!(String::from_utf8_lossy(&json).contains("\"inputs\""));
    // ...and a JSON rows_f32, as a string or a list, is a schema error.
    for body in [
        &br#"{"v":1,"model":"m","rows_f32":"AADAPwAAAIA=","cols":2}"#[..],
        br#"{"v":1,"model":"m","rows_f32":[0,0,192,63],"cols":1}"#,
    ] {
        let err = decode_job(body, Encoding::Json, &limits).unwrap_err();
        assert_eq!(err.answerable_kind(), Some(ErrorKind::InvalidJob), "{err}");
        assert!(err.to_string().contains("MessagePack bin"), "{err}");
    }
    // Both forms at once, or rows_f32 without cols: schema errors, named.
    let mut both = packed_body(&[0; 8], 2, None);
    both[0] = 0x85;
    rmp::encode::write_str(&mut both, "inputs").unwrap();
    rmp::encode::write_array_len(&mut both, 0).unwrap();
    let err = decode_job(&both, Encoding::Msgpack, &limits).unwrap_err();
    assert!(
        err.to_string().contains("both inputs and rows_f32"),
        "{err}"
    );
    // Too many packed rows: the row limit applies to them too.
    let small = Limits {
        max_rows: 2,
        ..Limits::default()
    };
    let body = packed_body(&[0; 12], 1, None);
    assert_eq!(
        decode_job(&body, Encoding::Msgpack, &small).unwrap_err(),
        DecodeError::TooManyRows { rows: 3, max: 2 }
    );
}
