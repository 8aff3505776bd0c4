//! A private RabbitMQ node for one test: its own name, ports, data and config in a
//! temporary folder, so a test can stop it, restart it, give it a TLS listener or a
//! short `consumer_timeout`, without touching the shared broker on 5672 that every
//! other test (and every other engineer) uses.
//!
//! The node is started from the installed `rabbitmq-server` scripts with every path
//! and port overridden, a cookie of its own, and a babysitter process that stops it
//! when the test process goes away for any reason (panic, SIGKILL), so no node
//! outlives its test. Starting one takes about 7 s on a loaded 2-core machine.
//!
//! [`Cluster`] starts several such nodes with one cookie and joins them into a
//! RabbitMQ cluster (about 20 s for three: 12 s booting in parallel, 8 s joining).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion without blocking the test's runtime.
async fn output_of(cmd: Command) -> std::io::Result<Output> {
    tokio::process::Command::from(cmd).output().await
}

/// Polls `child` (never blocking) until it exits; SIGKILL after `within`.
async fn reap(mut child: Child, within: Duration) {
    let deadline = Instant::now() + within;
    while let Ok(None) = child.try_wait() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the RabbitMQ scripts live (Debian/Ubuntu package layout); overridable with
/// `SURGE_RABBITMQ_BIN`.
fn rabbit_bin(name: &str) -> PathBuf {
    let dir =
        std::env::var("SURGE_RABBITMQ_BIN").unwrap_or_else(|_| "/usr/lib/rabbitmq/bin".into());
    let p = Path::new(&dir).join(name);
    assert!(
        p.is_file(),
        "{} is missing: the private-node tests need the rabbitmq-server package (or SURGE_RABBITMQ_BIN)",
        p.display()
    );
    p
}

/// What the node should be configured with.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Add a TLS listener with a private CA made for the test; clients must present a
    /// certificate signed by it.
    pub tls: bool,
    /// `consumer_timeout` in ms, checked every second (instead of every minute).
    pub consumer_timeout_ms: Option<u64>,
    /// The Erlang cookie (letters only); nodes that are to form a cluster share one.
    /// `None`: a cookie of the node's own.
    pub cookie: Option<String>,
}

/// The certificates made for a TLS node, as PEM files.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// Another CA, which signed nothing the node uses.
    pub wrong_ca: PathBuf,
    /// A client certificate signed by `ca`.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// A client certificate signed by `wrong_ca`.
    pub wrong_client_cert: PathBuf,
    /// Its key.
    pub wrong_client_key: PathBuf,
}

/// A running private node; stopped on drop.
pub struct PrivateNode {
    /// Erlang node name, for `rabbitmqctl -n`.
    pub name: String,
    /// AMQP port on 127.0.0.1.
    pub port: u16,
    /// AMQPS port on 127.0.0.1, when started with TLS.
    pub tls_port: Option<u16>,
    /// The node's certificates, when started with TLS.
    pub certs: Option<Certs>,
    dist_port: u16,
    dir: tempfile::TempDir,
    server: Option<Child>,
    babysitter: Option<Child>,
}

/// Where a node's distribution port is picked. RabbitMQ's CLI tools (`rabbitmqctl`
/// run with the node's environment) listen 10000 to 10010 ports above it, here in
/// 30000..32010, so no listener port is ever picked there: one node's `rabbitmqctl
/// wait` could take another node's AMQP port as it boots (seen once: `eaddrinuse` on
/// 31292, the CLI port of a node whose distribution port was 21292).
const DIST_PORTS: std::ops::Range<u16> = 20_000..22_000;
/// Where AMQP and AMQPS listener ports are picked (RabbitMQ's usual 25672 excluded).
const LISTENER_PORTS: std::ops::Range<u16> = 22_000..30_000;

/// A port of `range` (below Linux's ephemeral range, 32768+), free now, not in
/// `avoid`: a port in the ephemeral range can be taken by an outgoing connection
/// between our check and the node's bind.
pub(crate) fn quiet_port(range: std::ops::Range<u16>, avoid: &[u16]) -> u16 {
    let width = u128::from(range.end - range.start);
    for _ in 0..200 {
        let p = range.start + (uuid::Uuid::new_v4().as_u128() % width) as u16;
        if p == 25_672 || avoid.contains(&p) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()
        {
            return p;
        }
    }
    panic!("no free port found in {range:?}");
}

async fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    let out = output_of(cmd)
        .await
        .expect("openssl is needed for the TLS tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a CA and a certificate signed by it (EC P-256, valid two days).
async fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=surge test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )
    .await;
}

async fn make_leaf(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("writing the file");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    )
    .await;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
    .await;
}

/// Makes a private CA, a server certificate for localhost/127.0.0.1, client
/// certificates, and a second (wrong) CA, in `dir`.
pub async fn make_certs(dir: &Path) -> Certs {
    make_ca(dir, "ca").await;
    make_ca(dir, "wrong-ca").await;
    make_leaf(
        dir,
        "ca",
        "server",
        "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .await;
    let client_ext =
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";
    make_leaf(dir, "ca", "client", "surge-worker", client_ext).await;
    make_leaf(
        dir,
        "wrong-ca",
        "wrong-client",
        "surge-intruder",
        client_ext,
    )
    .await;
    Certs {
        ca: dir.join("ca.pem"),
        wrong_ca: dir.join("wrong-ca.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        wrong_client_cert: dir.join("wrong-client.pem"),
        wrong_client_key: dir.join("wrong-client.key"),
    }
}

impl PrivateNode {
    /// Starts a node named after `tag` and waits until it accepts connections.
    pub async fn start(tag: &str, opts: NodeOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("surge-node-{tag}-"))
            .tempdir()
            .expect("creating a temporary directory");
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("surge-t-{tag}-{suffix}@localhost");
        let port = quiet_port(LISTENER_PORTS, &[]);
        let dist_port = quiet_port(DIST_PORTS, &[]);
        let tls_port = opts.tls.then(|| quiet_port(LISTENER_PORTS, &[port]));
        let d = dir.path();
        // Our own cookie, written before anything starts: the node and rabbitmqctl
        // would otherwise race to create different ones.
        let cookie = opts.cookie.clone().unwrap_or_else(new_cookie);
        let cookie_path = d.join(".erlang.cookie");
        std::fs::write(&cookie_path, cookie).expect("writing the file");
        set_mode(&cookie_path, 0o400);
        std::fs::write(d.join("env.conf"), "").expect("writing the file");
        std::fs::write(d.join("enabled_plugins"), "[].\n").expect("writing the file");
        let mut conf = format!("listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n");
        let mut advanced = String::from("[].\n");
        let certs = if opts.tls {
            Some(make_certs(d).await)
        } else {
            None
        };
        if let (Some(tls_port), Some(c)) = (tls_port, &certs) {
            conf.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n",
                c.ca.display(),
                d.join("server.pem").display(),
                d.join("server.key").display()
            ));
        }
        if let Some(ms) = opts.consumer_timeout_ms {
            conf.push_str(&format!("consumer_timeout = {ms}\n"));
            // The timeout is checked on the channel tick, every minute by default.
            advanced = "[{rabbit, [{channel_tick_interval, 1000}]}].\n".into();
        }
        std::fs::write(d.join("rabbitmq.conf"), conf).expect("writing the file");
        std::fs::write(d.join("advanced.config"), advanced).expect("writing the file");
        let mut node = Self {
            name,
            port,
            tls_port,
            certs,
            dist_port,
            dir,
            server: None,
            babysitter: None,
        };
        node.launch().await;
        node.babysit();
        node
    }

    fn env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        cmd.env("HOME", d)
            .env("RABBITMQ_CONF_ENV_FILE", d.join("env.conf"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env_remove("RABBITMQ_NODE_PORT");
    }

    /// Starts the server process (again, after [`PrivateNode::stop_node`]) and waits
    /// for it; its data folder is kept, so durable queues come back.
    pub async fn launch(&mut self) {
        let started = Instant::now();
        let log =
            std::fs::File::create(self.dir.path().join("server.out")).expect("creating the file");
        let mut cmd = Command::new(rabbit_bin("rabbitmq-server"));
        self.env(&mut cmd);
        let child = cmd
            .stdout(Stdio::from(
                log.try_clone().expect("cloning the log file handle"),
            ))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting rabbitmq-server");
        self.server = Some(child);
        let pid = self.dir.path().join("pid");
        let pid = pid.to_string_lossy().into_owned();
        let waited = self.try_ctl(&["wait", "--timeout", "90", &pid]).await;
        if let Err(e) = waited {
            panic!(
                "private node {} did not start: {e}\n{}",
                self.name,
                std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default()
            );
        }
        // `wait` returns when the app runs; the listener follows within moments.
        self.wait_listening(Duration::from_secs(20)).await;
        println!(
            "private node {} up on 127.0.0.1:{} in {:.1}s",
            self.name,
            self.port,
            started.elapsed().as_secs_f64()
        );
    }

    /// A process that stops the node once the test process is gone, however it ends.
    fn babysit(&mut self) {
        let mut cmd = Command::new("sh");
        self.env(&mut cmd);
        let child = cmd
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; {} -n {} stop >/dev/null 2>&1",
                std::process::id(),
                rabbit_bin("rabbitmqctl").display(),
                self.name
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the node babysitter");
        self.babysitter = Some(child);
    }

    /// Runs `rabbitmqctl -n <node> args...`; `Err` with its output when it fails.
    pub async fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        self.try_tool("rabbitmqctl", args).await
    }

    /// Runs RabbitMQ's CLI `tool` (`rabbitmqctl`, `rabbitmq-queues`) as
    /// `tool -n <node> args...`; `Err` with its output when it fails.
    pub async fn try_tool(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let out = output_of(self.tool(tool, args))
            .await
            .map_err(|e| format!("{tool}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// `tool -n <node> args...` with the node's environment, not started yet.
    fn tool(&self, tool: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(rabbit_bin(tool));
        self.env(&mut cmd);
        cmd.args(["-n", &self.name]).args(args);
        cmd
    }

    /// Runs `rabbitmqctl -n <node> args...`, panicking when it fails.
    pub async fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args)
            .await
            .unwrap_or_else(|e| panic!("rabbitmqctl {args:?} on {}: {e}", self.name))
    }

    /// Stops the whole node (the Erlang VM exits); [`PrivateNode::launch`] brings it
    /// back with its data.
    pub async fn stop_node(&mut self) {
        self.ctl(&["stop"]).await;
        if let Some(c) = self.server.take() {
            reap(c, Duration::from_secs(30)).await;
        }
    }

    /// Kills the node's Erlang VM with SIGKILL (no goodbye to clients or peers), as a
    /// crashed machine would; [`PrivateNode::launch`] brings it back with its data.
    pub async fn kill_node(&mut self) {
        let pid = std::fs::read_to_string(self.dir.path().join("pid")).unwrap_or_default();
        let pid = pid.trim();
        assert!(
            !pid.is_empty(),
            "node {} has no pid file: is it running?",
            self.name
        );
        let mut kill = Command::new("kill");
        kill.args(["-KILL", pid]);
        let out = output_of(kill).await.expect("running kill -KILL");
        assert!(
            out.status.success(),
            "kill -KILL {pid} ({}) failed",
            self.name
        );
        if let Some(c) = self.server.take() {
            reap(c, Duration::from_secs(30)).await;
        }
        let _ = std::fs::remove_file(self.dir.path().join("pid"));
    }

    /// Joins the cluster of `first` (`stop_app`, `join_cluster`, `start_app`) and waits
    /// until this node listens again. Both nodes must share a cookie
    /// ([`NodeOptions::cookie`]).
    pub async fn join(&self, first: &PrivateNode) {
        self.ctl(&["stop_app"]).await;
        self.ctl(&["join_cluster", &first.name]).await;
        self.ctl(&["start_app"]).await;
        self.wait_listening(Duration::from_secs(30)).await;
    }

    async fn wait_listening(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "node {} never listened",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:<port>`, for a host list.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`, with `query` appended (e.g.
    /// `heartbeat=2`).
    pub fn url(&self, query: &str) -> String {
        with_query(
            &format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
            query,
        )
    }

    /// `amqps://guest:guest@localhost:<tls port>/%2f` (TLS nodes only).
    pub fn tls_url(&self) -> String {
        let p = self
            .tls_port
            .unwrap_or_else(|| panic!("node was started without TLS"));
        format!("amqps://guest:guest@localhost:{p}/%2f")
    }

    /// The node's main log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join("log")
                .join(format!("{}.log", self.name)),
        )
        .unwrap_or_default()
    }
}

/// A fresh Erlang cookie: `SURGE` and random capital letters.
pub fn new_cookie() -> String {
    let letters: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_uppercase()
        .chars()
        .filter(char::is_ascii_alphabetic)
        .collect();
    format!("SURGE{letters}")
}

fn with_query(url: &str, query: &str) -> String {
    if query.is_empty() {
        url.to_string()
    } else {
        format!("{url}?{query}")
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

// Drop cannot await: the guard stops the node with plain blocking calls, bounded by
// `rabbitmqctl stop` and a 20 s kill deadline.
impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = self.tool("rabbitmqctl", &["stop"]).output();
        if let Some(mut c) = self.server.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while let Ok(None) = c.try_wait() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(mut b) = self.babysitter.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
    }
}

/// Several private nodes joined into one RabbitMQ cluster (same host, distinct node
/// names and ports, one cookie). Stopped on drop.
pub struct Cluster {
    /// The nodes; every other one joined the first.
    pub nodes: Vec<PrivateNode>,
    /// How long starting and joining took.
    pub formed_in: Duration,
}

impl Cluster {
    /// Starts `n` nodes (in parallel) and joins nodes 1.. to node 0.
    pub async fn start(tag: &str, n: usize) -> Self {
        let started = Instant::now();
        let cookie = new_cookie();
        let nodes: Vec<PrivateNode> = futures_util::future::join_all((0..n).map(|i| {
            let opts = NodeOptions {
                cookie: Some(cookie.clone()),
                ..NodeOptions::default()
            };
            let tag = format!("{tag}{i}");
            async move { PrivateNode::start(&tag, opts).await }
        }))
        .await;
        let booted = started.elapsed();
        for node in &nodes[1..] {
            node.join(&nodes[0]).await;
        }
        let status = nodes[0].ctl(&["cluster_status"]).await;
        for node in &nodes {
            assert!(
                status.contains(&node.name),
                "{} is not in the cluster: {status}",
                node.name
            );
        }
        let formed_in = started.elapsed();
        println!(
            "cluster of {n} formed in {:.1}s ({:.1}s booting the nodes in parallel, {:.1}s joining)",
            formed_in.as_secs_f64(),
            booted.as_secs_f64(),
            (formed_in - booted).as_secs_f64()
        );
        Self { nodes, formed_in }
    }

    /// One URL listing the nodes' hosts in `order` (indices into `nodes`), e.g.
    /// `amqp://guest:guest@127.0.0.1:p2,127.0.0.1:p0/%2f?query`.
    pub fn url(&self, order: &[usize], query: &str) -> String {
        let hosts: Vec<String> = order.iter().map(|&i| self.nodes[i].host()).collect();
        with_query(
            &format!("amqp://guest:guest@{}/%2f", hosts.join(",")),
            query,
        )
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// `(leader, members)` of the quorum queue `queue`, asked of the first node that
    /// answers.
    pub async fn quorum_leader(&self, queue: &str) -> (String, Vec<String>) {
        let mut errors = Vec::new();
        for node in &self.nodes {
            match node
                .try_ctl(&[
                    "list_queues",
                    "-q",
                    "--no-table-headers",
                    "name",
                    "leader",
                    "members",
                ])
                .await
            {
                Ok(text) => {
                    for line in text.lines() {
                        let cols: Vec<&str> = line.split('\t').collect();
                        if cols.len() >= 3 && cols[0] == queue {
                            let members = cols[2]
                                .trim_matches(|c| c == '[' || c == ']')
                                .split(',')
                                .map(|m| m.trim().trim_matches('\'').to_string())
                                .filter(|m| !m.is_empty())
                                .collect();
                            return (cols[1].trim().to_string(), members);
                        }
                    }
                    errors.push(format!("{}: no {queue} in {text}", node.name));
                }
                Err(e) => errors.push(format!("{}: {e}", node.name)),
            }
        }
        panic!("no leader found for {queue}: {}", errors.join("; "));
    }
}
