//! What to do with one delivery, decided without a broker: score it, answer it at once
//! with an error result, or dead-letter it. One bad job is answered on its own and
//! never reaches a batch, so it cannot fail its batch mates.

use surge_model::Registry;
use surge_protocol::codec::{decode_job, probe_model};
use surge_protocol::{Encoding, ErrorKind, Inputs, Job, JobResult, Limits};

/// The AMQP properties Surge reads, already taken out of the delivery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    /// `message_id`: the job id (required).
    pub message_id: Option<String>,
    /// `content_type`.
    pub content_type: Option<String>,
    /// AMQP `timestamp`, used for queue wait when the body has no `sent_ms`. The AMQP
    /// spec says seconds; many clients put milliseconds: see [`sent_at_ms`].
    pub timestamp: Option<u64>,
}

/// What to do with a delivery.
#[derive(Debug, PartialEq)]
pub enum Disposition {
    /// A valid job for a served model: score it.
    Score {
        /// The job id.
        job_id: String,
        /// The encoding to answer in.
        encoding: Encoding,
        /// The decoded job.
        job: Job,
        /// Milliseconds the job waited in the queue, when known.
        queue_ms: Option<f64>,
        /// How far in the future the job's send time was (the producer's clock is
        /// ahead of this worker's), in ms; 0 normally. `queue_ms` is then 0.
        clock_ahead_ms: u64,
    },
    /// Answer at once with this (error or expired) result.
    Answer {
        /// The encoding to answer in.
        encoding: Encoding,
        /// The result.
        result: Box<JobResult>,
    },
    /// The message cannot be answered: send it to the dead-letter exchange.
    DeadLetter {
        /// Machine-readable reason, for the header and the metric.
        kind: &'static str,
        /// Human-readable reason.
        reason: String,
    },
}

/// Decides what to do with a delivery of `body` with properties `env`, arriving at
/// `now_ms`, on a worker serving `models`.
pub fn prepare(
    env: &Envelope,
    body: &[u8],
    models: &Registry,
    limits: &Limits,
    worker: &str,
    now_ms: u64,
) -> Disposition {
    let Some(job_id) = env.message_id.clone().filter(|id| !id.is_empty()) else {
        return Disposition::DeadLetter {
            kind: "missing_message_id",
            reason: "the message has no message_id property; set it to a unique job id so the result can be matched".into(),
        };
    };
    let encoding = match Encoding::from_content_type(env.content_type.as_deref(), body) {
        Ok(e) => e,
        Err(e) => {
            return Disposition::DeadLetter {
                kind: e.kind_name(),
                reason: e.to_string(),
            }
        }
    };
    let answer = |model: &str, kind: ErrorKind, message: String| Disposition::Answer {
        encoding,
        result: Box::new(JobResult::failure(&job_id, model, kind, message, worker)),
    };
    let mut job = match decode_job(body, encoding, limits) {
        Ok(job) => job,
        Err(e) => {
            return match e.answerable_kind() {
                Some(kind) => {
                    // The job did not decode, but its model may still be readable.
                    let model = probe_model(body, encoding, limits).unwrap_or_default();
                    answer(&model, kind, e.to_string())
                }
                None => Disposition::DeadLetter {
                    kind: e.kind_name(),
                    reason: e.to_string(),
                },
            };
        }
    };
    if !models.serves(&job.model) {
        return answer(
            &job.model.clone(),
            ErrorKind::UnknownModel,
            format!(
                "no model named {:?} is served here (served: {})",
                job.model,
                models.names().join(", ")
            ),
        );
    }
    let Some(info) = models.get(&job.model, job.version.as_deref()) else {
        return answer(
            &job.model.clone(),
            ErrorKind::UnknownVersion,
            format!(
                "model {} has no version {:?} here (served: {})",
                job.model,
                job.version.as_deref().unwrap_or_default(),
                models.versions(&job.model).join(", ")
            ),
        );
    };
    // From here on the job names the version that scores it.
    job.version = Some(info.version.clone());
    if let Some(deadline) = job.deadline_ms {
        if now_ms > deadline {
            return answer(
                &job.model.clone(),
                ErrorKind::Expired,
                format!(
                    "deadline {deadline} passed {} ms before the job was taken",
                    now_ms - deadline
                ),
            );
        }
    }
    let inputs = std::mem::replace(&mut job.inputs, Inputs::Texts(Vec::new()));
    match info.conform(inputs, job.columns.as_deref()) {
        Ok(inputs) => job.inputs = inputs,
        Err(msg) => return answer(&job.model.clone(), ErrorKind::InvalidInput, msg),
    }
    // The rows are in feature order now.
    job.columns = None;
    // (best estimate of the send time, the earliest it can have been)
    let sent = match (job.sent_ms, env.timestamp) {
        (Some(ms), _) => Some((ms, ms)),
        (None, Some(ts)) => Some(sent_at_ms(ts)),
        (None, None) => None,
    };
    let queue_ms = sent.map(|(s, _)| now_ms.saturating_sub(s) as f64);
    // Only a send time that cannot be in the past counts as a clock ahead: a seconds
    // timestamp's middle may be a few hundred ms after now.
    let clock_ahead_ms = sent.map_or(0, |(_, earliest)| earliest.saturating_sub(now_ms));
    Disposition::Score {
        job_id,
        encoding,
        job,
        queue_ms,
        clock_ahead_ms,
    }
}

/// Above this an AMQP `timestamp` is read as milliseconds: in seconds it would be the
/// year 5138, in milliseconds it is after March 1973.
const TIMESTAMP_MS_ABOVE: u64 = 100_000_000_000;

/// The send time, in Unix ms, of an AMQP `timestamp`: the best estimate and the
/// earliest it can have been. The spec says seconds, but pika, amqplib and others pass
/// whatever the caller gives, often milliseconds: a value that can only be milliseconds
/// is read as such. A seconds value has one-second resolution; it is read as the middle
/// of its second, so queue wait is off by at most 0.5 s (send `sent_ms` for exact
/// figures).
pub fn sent_at_ms(timestamp: u64) -> (u64, u64) {
    if timestamp > TIMESTAMP_MS_ABOVE {
        (timestamp, timestamp)
    } else {
        let start = timestamp.saturating_mul(1000);
        (start.saturating_add(500), start)
    }
}

/// Row count of a job's inputs, for batch accounting.
pub fn rows(inputs: &Inputs) -> usize {
    inputs.len()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use surge_model::{InputSpec, ModelInfo};
    use surge_protocol::codec::encode;
    use surge_protocol::{Inputs, Job};

    use super::*;

    fn models() -> Registry {
        let info = ModelInfo {
            name: "m".into(),
            version: "1.0.0".into(),
            architecture: "mlp".into(),
            description: String::new(),
            input: InputSpec::Tabular {
                features: vec!["a".into(), "b".into()],
            },
            output_names: vec!["p".into()],
            dir: PathBuf::new(),
        };
        let old = ModelInfo {
            version: "0.9.0".into(),
            ..info.clone()
        };
        Registry::of(&[info, old])
    }

    #[test]
    fn a_job_gets_the_version_it_names_or_the_newest() {
        let version_of = |version: Option<&str>| {
            let job = Job {
                version: version.map(str::to_string),
                ..Job::new("m", Inputs::rows(&[vec![1.0, 2.0]]))
            };
            let body = encode(&job, Encoding::Json).unwrap();
            match prepare(&env(), &body, &models(), &Limits::default(), "w", 0) {
                Disposition::Score { job, .. } => Ok(job.version),
                Disposition::Answer { result, .. } => {
                    Err(result.error.map(|e| e.message).unwrap_or_default())
                }
                Disposition::DeadLetter { reason, .. } => Err(reason),
            }
        };
        assert_eq!(version_of(None), Ok(Some("1.0.0".into())));
        assert_eq!(version_of(Some("0.9.0")), Ok(Some("0.9.0".into())));
        let err = version_of(Some("9")).unwrap_err();
        assert!(err.contains("served: 0.9.0, 1.0.0"), "{err}");
        // A version smuggled into the name is not a model.
        let job = Job::new("m@0.9.0", Inputs::rows(&[vec![1.0, 2.0]]));
        let body = encode(&job, Encoding::Json).unwrap();
        let d = prepare(&env(), &body, &models(), &Limits::default(), "w", 0);
        assert!(matches!(d, Disposition::Answer { .. }));
    }

    fn env() -> Envelope {
        Envelope {
            message_id: Some("j1".into()),
            content_type: Some("application/json".into()),
            timestamp: None,
        }
    }

    fn run(job: &Job) -> Disposition {
        // MessagePack: unlike JSON it can carry NaN, which must reach the input check.
        let body = encode(job, Encoding::Msgpack).unwrap();
        let env = Envelope {
            content_type: Some("application/msgpack".into()),
            ..env()
        };
        prepare(&env, &body, &models(), &Limits::default(), "w", 1_000)
    }

    fn kind_of(d: &Disposition) -> Option<ErrorKind> {
        match d {
            Disposition::Answer { result, .. } => result.error.as_ref().map(|e| e.kind),
            _ => None,
        }
    }

    #[test]
    fn a_valid_job_is_scored() {
        let mut job = Job::new("m", Inputs::rows(&[vec![1.0, 2.0]]));
        job.sent_ms = Some(900);
        match run(&job) {
            Disposition::Score {
                job_id, queue_ms, ..
            } => {
                assert_eq!(job_id, "j1");
                assert_eq!(queue_ms, Some(100.0));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn amqp_timestamps_in_seconds_or_milliseconds_give_the_queue_wait() {
        let job = Job::new("m", Inputs::rows(&[vec![1.0, 2.0]]));
        let body = encode(&job, Encoding::Json).unwrap();
        let now = 1_764_000_000_250u64;
        let wait = |ts: u64| match prepare(
            &Envelope {
                timestamp: Some(ts),
                ..env()
            },
            &body,
            &models(),
            &Limits::default(),
            "w",
            now,
        ) {
            Disposition::Score {
                queue_ms,
                clock_ahead_ms,
                ..
            } => (queue_ms, clock_ahead_ms),
            other => panic!("{other:?}"),
        };
        // Milliseconds, as pika and amqplib users often send: read as such.
        assert_eq!(wait(now - 1_500), (Some(1_500.0), 0));
        // Seconds, as the spec says: the middle of the second, off by at most 0.5 s.
        assert_eq!(wait(now / 1000 - 2), (Some(1_750.0), 0));
        // A producer whose clock is ahead: 0 wait, and the skew is reported.
        assert_eq!(wait(now + 3_000), (Some(0.0), 3_000));
        // Within its own second a seconds timestamp's middle may lie ahead of now:
        // queue_ms 0, but no clock skew.
        assert_eq!(wait(now / 1000), (Some(0.0), 0));
    }

    #[test]
    fn errors_name_the_model_whenever_it_was_readable() {
        let limits = Limits {
            max_rows: 1,
            ..Limits::default()
        };
        for body in [
            &br#"{"v":1,"model":"m","inputs":[[1,2],[3,4]]}"#[..],
            br#"{"v":1,"model":"m","inputs":"oops"}"#,
            br#"{"v":1,"model":"m","inputs":[[1,2]],"version":7}"#,
        ] {
            match prepare(&env(), body, &models(), &limits, "w", 0) {
                Disposition::Answer { result, .. } => assert_eq!(result.model, "m"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn non_finite_tokens_outside_inputs_are_invalid_job_not_absent() {
        for (body, kind) in [
            (
                &br#"{"v":1,"model":"m","inputs":[[1,2]],"deadline_ms":NaN}"#[..],
                ErrorKind::InvalidJob,
            ),
            (
                br#"{"v":1,"model":"m","inputs":[[1,2]],"sent_ms":Infinity}"#,
                ErrorKind::InvalidJob,
            ),
            (
                br#"{"v":1,"model":"m","inputs":[[1,2]],"deadline_ms":1e999}"#,
                ErrorKind::InvalidJob,
            ),
            (
                br#"{"v":NaN,"model":"m","inputs":[[1,2]]}"#,
                ErrorKind::InvalidJob,
            ),
            // Read as the version named "NaN", which is not served.
            (
                br#"{"v":1,"model":"m","inputs":[[1,2]],"version":NaN}"#,
                ErrorKind::UnknownVersion,
            ),
        ] {
            let d = prepare(&env(), body, &models(), &Limits::default(), "w", 0);
            assert_eq!(
                kind_of(&d),
                Some(kind),
                "{}: {d:?}",
                String::from_utf8_lossy(body)
            );
        }
        // An infinity in a row is reported as one, not as NaN.
        let d = prepare(
            &env(),
            br#"{"v":1,"model":"m","inputs":[[1,-Infinity]]}"#,
            &models(),
            &Limits::default(),
            "w",
            0,
        );
        match d {
            Disposition::Answer { result, .. } => {
                let msg = result.error.unwrap().message;
                assert!(msg.contains("-inf"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_list_body_is_not_a_job() {
        let d = prepare(
            &env(),
            br#"[1,"m",null,[[1,2]]]"#,
            &models(),
            &Limits::default(),
            "w",
            0,
        );
        assert_eq!(kind_of(&d), Some(ErrorKind::InvalidJob), "{d:?}");
        let job = Job::new("m", Inputs::rows(&[vec![1.0, 2.0]]));
        let mp = rmp_serde::to_vec(&job).unwrap(); // positional: an array
        let env = Envelope {
            content_type: Some("application/msgpack".into()),
            ..env()
        };
        let d = prepare(&env, &mp, &models(), &Limits::default(), "w", 0);
        assert_eq!(kind_of(&d), Some(ErrorKind::InvalidJob), "{d:?}");
    }

    #[test]
    fn non_finite_json_and_msgpack_values_are_invalid_input_with_row_and_feature() {
        for body in [
            &br#"{"v":1,"model":"m","inputs":[[1,2],[3,null]]}"#[..],
            br#"{"v":1,"model":"m","inputs":[[1,2],[3,NaN]]}"#,
            br#"{"v":1,"model":"m","inputs":[[1,2],[3,Infinity]]}"#,
            br#"{"v":1,"model":"m","inputs":[[1,2],[3,-Infinity]]}"#,
            br#"{"v":1,"model":"m","inputs":[[1,2],[3,1e999]]}"#,
            br#"{"v":1,"model":"m","inputs":[[1,2],[3,1e39]]}"#,
        ] {
            let d = prepare(&env(), body, &models(), &Limits::default(), "w", 0);
            let msg = match &d {
                Disposition::Answer { result, .. } => result.error.clone().unwrap(),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            };
            assert_eq!(msg.kind, ErrorKind::InvalidInput, "{msg:?}");
            assert!(msg.message.contains("row 1, feature 1 (b)"), "{msg:?}");
        }
        // MessagePack nil, as @msgpack/msgpack writes null.
        let mut body = Vec::new();
        rmp::encode::write_map_len(&mut body, 3).unwrap();
        rmp::encode::write_str(&mut body, "v").unwrap();
        rmp::encode::write_uint(&mut body, 1).unwrap();
        rmp::encode::write_str(&mut body, "model").unwrap();
        rmp::encode::write_str(&mut body, "m").unwrap();
        rmp::encode::write_str(&mut body, "inputs").unwrap();
        rmp::encode::write_array_len(&mut body, 1).unwrap();
        rmp::encode::write_array_len(&mut body, 2).unwrap();
        rmp::encode::write_nil(&mut body).unwrap();
        rmp::encode::write_f64(&mut body, 1.0).unwrap();
        let env = Envelope {
            content_type: Some("application/msgpack".into()),
            ..env()
        };
        let d = prepare(&env, &body, &models(), &Limits::default(), "w", 0);
        let err = match d {
            Disposition::Answer { result, .. } => result.error.unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert!(err.message.contains("row 0, feature 0 (a)"), "{err:?}");
    }

    #[test]
    fn packed_rows_are_scored_and_their_shape_checked() {
        use surge_protocol::codec::encode_job;
        use surge_protocol::Rows;
        let env = Envelope {
            content_type: Some("application/msgpack".into()),
            ..env()
        };
        let job = Job::new("m", Inputs::rows(&[vec![1.0, 2.0], vec![3.0, 4.0]]));
        let body = encode_job(&job, Encoding::Msgpack, true).unwrap();
        match prepare(&env, &body, &models(), &Limits::default(), "w", 0) {
            Disposition::Score { job, .. } => {
                assert_eq!(job.inputs, Inputs::rows(&[vec![1.0, 2.0], vec![3.0, 4.0]]))
            }
            other => panic!("{other:?}"),
        }
        // A block that is not whole rows, the wrong cols, a NaN: invalid_input.
        for rows in [
            Rows::from_flat(vec![1.0, 2.0, 3.0], 2),
            Rows::from_flat(vec![1.0, 2.0, 3.0], 3),
            Rows::from_flat(vec![1.0, f32::NAN], 2),
            Rows::from_flat(vec![1.0, 2.0], 0),
        ] {
            let job = Job::new("m", Inputs::Rows(rows));
            let body = encode_job(&job, Encoding::Msgpack, true).unwrap();
            let d = prepare(&env, &body, &models(), &Limits::default(), "w", 0);
            assert_eq!(kind_of(&d), Some(ErrorKind::InvalidInput), "{d:?}");
        }
    }

    #[test]
    fn columns_in_another_order_give_the_same_rows() {
        let mut job = Job::new("m", Inputs::rows(&[vec![9.0, 2.0, 1.0]]));
        job.columns = Some(vec!["extra".into(), "b".into(), "a".into()]);
        match run(&job) {
            Disposition::Score { job, .. } => {
                assert_eq!(job.inputs, Inputs::rows(&[vec![1.0, 2.0]]))
            }
            other => panic!("{other:?}"),
        }
        job.columns = Some(vec!["extra".into(), "b".into(), "c".into()]);
        let d = run(&job);
        assert_eq!(kind_of(&d), Some(ErrorKind::InvalidInput));
    }

    #[test]
    fn each_bad_input_gets_its_kind() {
        let cases = [
            (
                Job::new("m", Inputs::rows(&[vec![1.0]])),
                ErrorKind::InvalidInput,
            ),
            (
                Job::new("m", Inputs::rows(&[vec![1.0, f32::NAN]])),
                ErrorKind::InvalidInput,
            ),
            (Job::new("m", Inputs::rows(&[])), ErrorKind::InvalidInput),
            (
                Job::new("m", Inputs::Texts(vec!["x".into()])),
                ErrorKind::InvalidInput,
            ),
            (
                Job::new("nope", Inputs::rows(&[vec![1.0, 2.0]])),
                ErrorKind::UnknownModel,
            ),
            (
                Job {
                    version: Some("9".into()),
                    ..Job::new("m", Inputs::rows(&[vec![1.0, 2.0]]))
                },
                ErrorKind::UnknownVersion,
            ),
            (
                Job {
                    deadline_ms: Some(999),
                    ..Job::new("m", Inputs::rows(&[vec![1.0, 2.0]]))
                },
                ErrorKind::Expired,
            ),
            (
                Job {
                    v: 7,
                    ..Job::new("m", Inputs::rows(&[vec![1.0, 2.0]]))
                },
                ErrorKind::UnsupportedVersion,
            ),
        ];
        for (job, kind) in cases {
            assert_eq!(kind_of(&run(&job)), Some(kind), "{job:?}");
        }
    }

    #[test]
    fn undecodable_messages_are_dead_lettered() {
        let m = models();
        let l = Limits::default();
        let d = prepare(&env(), b"{not json", &m, &l, "w", 0);
        assert!(
            matches!(
                d,
                Disposition::DeadLetter {
                    kind: "malformed",
                    ..
                }
            ),
            "{d:?}"
        );
        let no_id = Envelope {
            message_id: None,
            ..env()
        };
        let d = prepare(&no_id, b"{}", &m, &l, "w", 0);
        assert!(matches!(
            d,
            Disposition::DeadLetter {
                kind: "missing_message_id",
                ..
            }
        ));
        let xml = Envelope {
            content_type: Some("text/xml".into()),
            ..env()
        };
        let d = prepare(&xml, b"<a/>", &m, &l, "w", 0);
        assert!(matches!(
            d,
            Disposition::DeadLetter {
                kind: "unsupported_content_type",
                ..
            }
        ));
    }

    #[test]
    fn schema_errors_are_answered() {
        let d = prepare(
            &env(),
            br#"{"v":1,"model":"m","inputs":[[1,"x"]]}"#,
            &models(),
            &Limits::default(),
            "w",
            0,
        );
        assert_eq!(kind_of(&d), Some(ErrorKind::InvalidJob));
        let limits = Limits {
            max_rows: 1,
            ..Limits::default()
        };
        let body = br#"{"v":1,"model":"m","inputs":[[1,2],[3,4]]}"#;
        assert_eq!(
            kind_of(&prepare(&env(), body, &models(), &limits, "w", 0)),
            Some(ErrorKind::TooManyRows)
        );
    }
}
