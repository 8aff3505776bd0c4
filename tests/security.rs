//! Security: nobody gets in who should not, and no secret reaches a log.
//!
//! * `amqps://` against a private node's TLS listener, with a CA made by the test: the
//!   right CA and a client certificate connect (a worker and score-batch run a job
//!   over TLS); a wrong CA, no client certificate, or a certificate from another CA
//!   are refused.
//! * The per-role users of `compose/rabbitmq/definitions.json`, imported into a vhost
//!   of the test's own on the shared broker: a worker and score-batch run with them
//!   (the producer's URL from `AMQP_URL_FILE`); neither password appears in any log
//!   line; the worker's credentials cannot publish to `surge.jobs`.

use std::path::Path;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use surge_broker::{AmqpUrl, BrokerError, Timeouts, TlsFiles};
use surge_testkit::figures::{self, parse_summary};
use surge_testkit::node::{NodeOptions, PrivateNode};
use surge_testkit::*;

fn quick() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        operation: Duration::from_secs(5),
    }
}

async fn try_connect(url: &str, tls: TlsFiles) -> Result<lapin::Connection, BrokerError> {
    let url = AmqpUrl::new(url)?.with_tls(tls)?;
    surge_broker::connect(&url, "surge-tests-tls", &quick()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca_and_client_certificates() {
    let node = PrivateNode::start(
        "tls",
        NodeOptions {
            tls: true,
            ..NodeOptions::default()
        },
    )
    .await;
    let c = node.certs.clone().unwrap();
    let url = node.tls_url();
    let good = TlsFiles {
        ca_cert: Some(c.ca.clone()),
        client_cert: Some(c.client_cert.clone()),
        client_key: Some(c.client_key.clone()),
    };

    // The right CA and a client certificate it signed: connected, over TLS.
    let conn = try_connect(&url, good.clone())
        .await
        .unwrap_or_else(|e| panic!("the right CA must connect: {e}\n{}", node.log_text()));
    let ch = conn.create_channel().await.unwrap();
    ch.close(200, "".into()).await.unwrap();
    conn.close(200, "".into()).await.unwrap();

    // A wrong CA: the client refuses the broker's certificate.
    let wrong_ca = TlsFiles {
        ca_cert: Some(c.wrong_ca.clone()),
        ..good.clone()
    };
    let e = try_connect(&url, wrong_ca).await.err();
    assert!(
        e.is_some(),
        "a broker certificate from another CA was accepted"
    );
    println!("wrong CA refused: {}", e.unwrap());

    // No client certificate: the broker refuses us.
    let anonymous = TlsFiles {
        ca_cert: Some(c.ca.clone()),
        ..TlsFiles::default()
    };
    let e = try_connect(&url, anonymous).await.err();
    assert!(
        e.is_some(),
        "the broker accepted a client without a certificate"
    );
    println!("no client certificate refused: {}", e.unwrap());

    // A client certificate from another CA: refused too.
    let intruder = TlsFiles {
        ca_cert: Some(c.ca.clone()),
        client_cert: Some(c.wrong_client_cert.clone()),
        client_key: Some(c.wrong_client_key.clone()),
    };
    let e = try_connect(&url, intruder).await.err();
    assert!(
        e.is_some(),
        "the broker accepted a certificate from another CA"
    );
    println!("foreign client certificate refused: {}", e.unwrap());

    // The plain-text port of the same node is not the TLS one: amqps:// to it fails.
    let e = try_connect(
        &format!("amqps://guest:guest@localhost:{}/%2f", node.port),
        good.clone(),
    )
    .await
    .err();
    assert!(
        e.is_some(),
        "TLS handshake against a plain listener succeeded"
    );

    // The binaries take the same files from the environment: a run over amqps://.
    let dir = tempfile::tempdir().unwrap();
    let (input, output, rows) = rows_csv_in(dir.path(), 500);
    let env = [
        ("AMQP_URL", url.as_str()),
        ("AMQP_CACERT_FILE", c.ca.to_str().unwrap()),
        ("AMQP_CLIENT_CERT_FILE", c.client_cert.to_str().unwrap()),
        ("AMQP_CLIENT_KEY_FILE", c.client_key.to_str().unwrap()),
    ];
    let mut w = WorkerProc::spawn_with_env("surge", "w-tls", dir.path(), &[], &env);
    w.wait_ready(Duration::from_secs(30)).await;
    let sb = spawn_score_batch_with_env("surge", &input, &output, &["--rows-per-job", "50"], &env);
    let out = sb.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", w.log_text());
    let s = parse_summary(&stderr).unwrap();
    let got = read_output(&output);
    figures::report("amqps", &s, &got, 0, &output);
    assert_exactly_once_and_correct(&got, &reference_scores(&rows));
    // A worker given a CA file with an amqp:// URL refuses to start rather than
    // connect in clear text.
    let plain = node.url("");
    let mut bad = WorkerProc::spawn_with_env(
        "surge",
        "w-plain",
        dir.path(),
        &[],
        &[
            ("AMQP_URL", plain.as_str()),
            ("AMQP_CACERT_FILE", c.ca.to_str().unwrap()),
        ],
    );
    assert!(!bad.wait_exit(Duration::from_secs(30)).await.success());
    assert!(
        bad.log_text().contains("not amqps://"),
        "{}",
        bad.log_text()
    );
    w.stop(Duration::from_secs(30)).await;
}

const PRODUCER_PASSWORD: &str = "producer-dev-password";
const WORKER_PASSWORD: &str = "worker-dev-password";

/// Imports `compose/rabbitmq/definitions.json` with its vhost renamed to `vhost` and
/// its users prefixed with `tag`; returns the renamed users.
async fn import_roles(tag: &str, vhost: &str, dir: &Path) -> Vec<String> {
    let path = workspace().join("compose/rabbitmq/definitions.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut defs: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut users = Vec::new();
    for u in defs["users"].as_array_mut().unwrap() {
        let name = format!("{tag}-{}", u["name"].as_str().unwrap());
        u["name"] = name.clone().into();
        users.push(name);
    }
    defs["vhosts"] = serde_json::json!([{ "name": vhost }]);
    for p in defs["permissions"].as_array_mut().unwrap() {
        assert_eq!(p["vhost"], "/", "definitions.json targets vhost /");
        p["vhost"] = vhost.into();
        p["user"] = format!("{tag}-{}", p["user"].as_str().unwrap()).into();
    }
    let file = dir.join("definitions.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&defs).unwrap()).unwrap();
    // rabbitmqctl reads the file as the rabbitmq user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    rabbitmqctl(&["import_definitions", file.to_str().unwrap()]).await;
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_role_users_work_and_no_password_reaches_a_log() {
    let _conn = require_broker().await;
    let tag = unique_prefix("roles");
    let dir = tempfile::tempdir().unwrap();
    let mut owned = OwnedVhost {
        vhost: tag.clone(),
        users: Vec::new(),
    };
    owned.users = import_roles(&tag, &tag, dir.path()).await;
    let worker_url = format!(
        "amqp://{tag}-surge-worker:{WORKER_PASSWORD}@127.0.0.1:5672/{}",
        owned.vhost
    );
    let producer_url = format!(
        "amqp://{tag}-surge-producer:{PRODUCER_PASSWORD}@127.0.0.1:5672/{}",
        owned.vhost
    );

    // A worker (URL in AMQP_URL, JSON logs) and score-batch (URL in AMQP_URL_FILE),
    // at debug level, with the role credentials.
    let url_file = dir.path().join("producer-url");
    std::fs::write(&url_file, format!("{producer_url}\n")).unwrap();
    let (input, output, rows) = rows_csv_in(dir.path(), 1_000);
    let mut w = WorkerProc::spawn_with_env(
        "surge",
        "w-roles",
        dir.path(),
        &["--log-format", "json"],
        &[("AMQP_URL", &worker_url), ("RUST_LOG", "debug")],
    );
    w.wait_ready(Duration::from_secs(30)).await;
    let sb = spawn_score_batch_with_env(
        "surge",
        &input,
        &output,
        &["--rows-per-job", "50"],
        &[
            ("AMQP_URL", ""),
            ("AMQP_URL_FILE", url_file.to_str().unwrap()),
            ("RUST_LOG", "debug"),
        ],
    );
    let out = sb.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}\n{}", w.log_text());
    let s = parse_summary(&stderr).unwrap();
    let got = read_output(&output);
    figures::report("per-role users", &s, &got, 0, &output);
    assert_exactly_once_and_correct(&got, &reference_scores(&rows));

    // The worker's credentials cannot publish a job.
    let wurl = AmqpUrl::new(&worker_url).unwrap();
    let conn = surge_broker::connect(&wurl, "surge-tests-intruder", &quick())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let refused = async {
        ch.basic_publish(
            "surge.jobs".into(),
            "breast-cancer".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_message_id("intruder".into()),
        )
        .await?
        .await
    }
    .await;
    let err = match refused {
        Err(e) => e.to_string(),
        Ok(c) => {
            // The refusal closes the channel; a confirm may race it.
            let again = ch
                .basic_publish(
                    "surge.jobs".into(),
                    "breast-cancer".into(),
                    BasicPublishOptions::default(),
                    b"{}",
                    BasicProperties::default(),
                )
                .await;
            assert!(again.is_err(), "worker credentials published a job: {c:?}");
            again.err().unwrap().to_string()
        }
    };
    assert!(err.contains("ACCESS_REFUSED"), "{err}");
    println!("worker credentials publishing to surge.jobs: {err}");
    // ... and the producer's credentials can.
    let purl = AmqpUrl::new(&producer_url).unwrap();
    let pconn = surge_broker::connect(&purl, "surge-tests-producer", &quick())
        .await
        .unwrap();
    let pch = pconn.create_channel().await.unwrap();
    pch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    surge_broker::publish::publish_confirmed(
        &pch,
        "surge.jobs",
        "breast-cancer",
        b"{\"v\":1,\"model\":\"breast-cancer\",\"inputs\":[]}",
        BasicProperties::default().with_message_id("producer-ok".into()),
        &quick(),
    )
    .await
    .unwrap();

    w.stop(Duration::from_secs(30)).await;
    // No password in any line any process wrote.
    let logs = [w.log_text(), stderr.into_owned(), stdout.into_owned()];
    let lines: usize = logs.iter().map(|l| l.lines().count()).sum();
    for secret in [WORKER_PASSWORD, PRODUCER_PASSWORD] {
        for log in &logs {
            assert!(!log.contains(secret), "a password reached a log:\n{log}");
        }
    }
    assert!(
        logs[0].contains(&format!("{tag}-surge-worker:***@")),
        "the worker should log its redacted URL:\n{}",
        logs[0]
    );
    println!("FIGURES secrets: {lines} log lines at debug level, 0 contain a password");
    drop(owned);
}
