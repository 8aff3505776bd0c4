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

#[test]
fn depth_bombs_are_refused_before_decoding() {
    let limits = Limits::default();
    // {"v":1,"model":"m","inputs":[[[[...]]]]} one million levels deep.
    let mut mp = vec![
        0x83, 0xa1, b'v', 0x01, 0xa5, b'm', b'o', b'd', b'e', b'l', 0xa1, b'm',
    ];
    mp.extend_from_slice(&[0xa6, b'i', b'n', b'p', b'u', b't', b's']);
    mp.extend(std::iter::repeat_n(0x91u8, 1_000_000));
    mp.push(0x01);
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
    let mut mp = vec![
        0x83, 0xa1, b'v', 0x01, 0xa5, b'm', b'o', b'd', b'e', b'l', 0xa1, b'm',
    ];
    mp.extend_from_slice(&[0xa6, b'i', b'n', b'p', b'u', b't', b's']);
    mp.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x90]);
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
