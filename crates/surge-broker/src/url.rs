//! The AMQP URL, kept away from logs, and the list of broker addresses it may name.
//!
//! # Syntax
//!
//! `AMQP_URL` (or the file named by `AMQP_URL_FILE`) holds one URL or several broker
//! addresses, in either of two forms, which may be mixed:
//!
//! * **A host list**: `amqp://user:pass@host1:5672,host2:5672,host3/vhost?heartbeat=10`.
//!   The hosts (each `host`, `host:port` or `[ipv6]:port`; the port defaults to 5672,
//!   5671 for `amqps://`) share the scheme, the credentials, the vhost and the query.
//! * **Full URLs separated by commas**:
//!   `amqp://user:pass@host1/vhost,amqp://user:pass@host2/vhost`. A comma directly
//!   followed by `amqp://` or `amqps://` (spaces allowed) starts the next URL, so each
//!   may carry its own credentials and query.
//!
//! In a file, every non-empty line not starting with `#` is read, and lines are joined
//! with commas (one URL per line works). All addresses must use the same scheme: a
//! fallback from `amqps://` to `amqp://` would silently send credentials in clear text.
//! A comma inside a password must be written `%2C`; a heartbeat of 10 s is added to
//! every address whose query names none.
//!
//! # Order
//!
//! [`AmqpUrl::from_env`] shuffles the addresses once per process (so clients spread
//! over the nodes of a cluster) unless `AMQP_ADDRESS_ORDER=listed`, which keeps them in
//! the order written (the first preferred, the others fallbacks). [`crate::connect`]
//! tries them in that order, starting after the address of the previous successful
//! connection, so a process that lost its connection moves on to the next address.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::tls::TlsFiles;
use crate::BrokerError;

/// The URL used when neither `AMQP_URL` nor `AMQP_URL_FILE` is set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Heartbeat interval, in seconds, added to URLs that do not set one: heartbeats are
/// the only way to notice a half-open connection, and the broker's default (60 s) is
/// too slow for that.
pub const DEFAULT_HEARTBEAT_S: u16 = 10;

/// The variable choosing the order in which addresses are tried: `shuffled` (the
/// default: a random order per process) or `listed` (as written).
pub const ENV_ADDRESS_ORDER: &str = "AMQP_ADDRESS_ORDER";

/// One broker address: a complete single-host URL, kept in its parts so that it can be
/// printed without its password.
#[derive(Clone, PartialEq, Eq)]
struct Address {
    /// `scheme://`
    scheme: String,
    /// `user:password@`, or empty.
    userinfo: String,
    /// `host`, `host:port` or `[v6]:port`.
    host: String,
    /// `/vhost?query`, the heartbeat included.
    tail: String,
}

impl Address {
    fn url(&self) -> String {
        format!("{}{}{}{}", self.scheme, self.userinfo, self.host, self.tail)
    }

    fn redacted(&self) -> String {
        redact(&self.url())
    }
}

/// One AMQP URL or a list of broker addresses (see the [module docs](self) for the
/// syntax), and for `amqps://` the TLS files to use with them. `Debug` and `Display`
/// print the addresses with the password replaced by `***`.
///
/// Clones share the position of the next address to try, so every connection a
/// process opens from one `AmqpUrl` moves through the list together.
#[derive(Clone)]
pub struct AmqpUrl {
    addresses: Vec<Address>,
    tls: TlsFiles,
    next: Arc<AtomicUsize>,
}

impl PartialEq for AmqpUrl {
    fn eq(&self, other: &Self) -> bool {
        self.addresses == other.addresses && self.tls == other.tls
    }
}

impl Eq for AmqpUrl {}

impl AmqpUrl {
    /// Parses one URL or a list of addresses, kept in the order written, adding
    /// `heartbeat=10` to each that names no heartbeat. A malformed list is an error
    /// naming the bad part (with the password redacted).
    pub fn new(url: impl Into<String>) -> Result<Self, BrokerError> {
        let addresses = parse_list(&url.into())?;
        Ok(Self {
            addresses,
            tls: TlsFiles::default(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Uses these TLS files (a private CA, a client certificate). They only make sense
    /// with `amqps://`, so naming any with `amqp://` is an error rather than a
    /// connection that silently goes out in clear text. The files are checked now.
    pub fn with_tls(mut self, tls: TlsFiles) -> Result<Self, BrokerError> {
        if !tls.is_empty() && !self.is_tls() {
            return Err(BrokerError::Tls(format!(
                "TLS files are set ({}, ...) but the URL {} is not amqps://",
                crate::tls::ENV_CACERT_FILE,
                self
            )));
        }
        tls.load()?;
        self.tls = tls;
        Ok(self)
    }

    /// The TLS files used with this URL (empty: the system's CAs, no client
    /// certificate).
    pub fn tls(&self) -> &TlsFiles {
        &self.tls
    }

    /// True for `amqps://` (all addresses share one scheme).
    pub fn is_tls(&self) -> bool {
        self.addresses
            .first()
            .is_some_and(|a| a.scheme == "amqps://")
    }

    /// The URL from `AMQP_URL`, else from the file named by `AMQP_URL_FILE` (for
    /// mounted secrets), else [`DEFAULT_AMQP_URL`] (empty variables count as unset);
    /// with the TLS files named by `AMQP_CACERT_FILE`, `AMQP_CLIENT_CERT_FILE` and
    /// `AMQP_CLIENT_KEY_FILE` (see [`crate::tls`]). Several addresses are shuffled
    /// unless `AMQP_ADDRESS_ORDER=listed`.
    pub fn from_env() -> Result<Self, BrokerError> {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = if let Some(url) = set("AMQP_URL") {
            Self::new(url)?
        } else if let Some(file) = set("AMQP_URL_FILE") {
            Self::from_file(Path::new(&file))?
        } else {
            Self::new(DEFAULT_AMQP_URL)?
        };
        let url = match set(ENV_ADDRESS_ORDER).as_deref().map(str::trim) {
            None | Some("shuffled") => url.shuffled(&mut rand::rng()),
            Some("listed") => url,
            Some(other) => {
                return Err(BrokerError::Url(format!(
                    "{ENV_ADDRESS_ORDER}={other:?}: expected `shuffled` (the default) or `listed`"
                )))
            }
        };
        url.with_tls(TlsFiles::from_env())
    }

    /// Reads the URL from a file: every non-empty line not starting with `#`, joined
    /// with commas (so one address per line works too).
    pub fn from_file(path: &Path) -> Result<Self, BrokerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BrokerError::Url(format!("cannot read {}: {e}", path.display())))?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if lines.is_empty() {
            return Err(BrokerError::Url(format!(
                "{} holds no URL (empty, or only # comments)",
                path.display()
            )));
        }
        Self::new(lines.join(","))
    }

    /// The same addresses in an order drawn from `rng` (a pure function of the rng:
    /// seed it for a reproducible order). The next connection starts at the first.
    pub fn shuffled<R: rand::Rng + ?Sized>(mut self, rng: &mut R) -> Self {
        use rand::seq::SliceRandom;
        self.addresses.shuffle(rng);
        self.next = Arc::new(AtomicUsize::new(0));
        self
    }

    /// How many broker addresses there are (at least one).
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Always false: a URL names at least one address.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The addresses, password redacted, in the order they are tried.
    pub fn redacted_addresses(&self) -> Vec<String> {
        self.addresses.iter().map(Address::redacted).collect()
    }

    /// The host (`host:port` as written) of each address, in the order they are tried.
    pub fn hosts(&self) -> Vec<&str> {
        self.addresses.iter().map(|a| a.host.as_str()).collect()
    }

    /// The full URL of the first address to try, password included: only for handing
    /// to a client library. [`AmqpUrl::expose_address`] gives the others.
    pub fn expose(&self) -> String {
        self.expose_address(0)
    }

    /// The full URL of address `i` (modulo the count), password included: only for
    /// handing to a client library.
    pub fn expose_address(&self, i: usize) -> String {
        self.addresses[i % self.addresses.len()].url()
    }

    /// Address `i` (modulo the count) with its password redacted, for logs.
    pub fn redacted_address(&self, i: usize) -> String {
        self.addresses[i % self.addresses.len()].redacted()
    }

    /// The index of the address the next connection tries first.
    pub fn next_index(&self) -> usize {
        self.next.load(Ordering::Relaxed) % self.addresses.len()
    }

    /// Records that address `i` answered: the next connection (after this one is lost)
    /// starts at the address after it.
    pub(crate) fn connected_to(&self, i: usize) {
        self.next
            .store((i + 1) % self.addresses.len(), Ordering::Relaxed);
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = &self.addresses[0];
        let shared = self.addresses.iter().all(|a| {
            a.scheme == first.scheme && a.userinfo == first.userinfo && a.tail == first.tail
        });
        if shared {
            // The compact form: one scheme, credentials and vhost for every host.
            let hosts: Vec<&str> = self.addresses.iter().map(|a| a.host.as_str()).collect();
            let compact = Address {
                host: hosts.join(","),
                ..first.clone()
            };
            f.write_str(&compact.redacted())
        } else {
            f.write_str(&self.redacted_addresses().join(","))
        }
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({self})")
    }
}

/// Splits `text` into full URLs: a comma followed (after spaces) by `amqp://` or
/// `amqps://` starts a new one.
fn split_urls(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in text.match_indices(',') {
        let after = text[i + 1..].trim_start();
        if after.starts_with("amqp://") || after.starts_with("amqps://") {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Parses one URL or a list (see the module docs) into single-host addresses.
fn parse_list(text: &str) -> Result<Vec<Address>, BrokerError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(BrokerError::Url("the URL is empty".into()));
    }
    let mut out = Vec::new();
    let parts = split_urls(text);
    let many = parts.len() > 1;
    for (n, part) in parts.into_iter().enumerate() {
        let part = part.trim();
        let whose = if many {
            format!("URL {} of the list ({})", n + 1, redact(part))
        } else {
            redact(part)
        };
        if part.is_empty() {
            return Err(BrokerError::Url(format!(
                "URL {} of the list is empty (a doubled or trailing comma?)",
                n + 1
            )));
        }
        let scheme = if part.starts_with("amqps://") {
            "amqps://"
        } else if part.starts_with("amqp://") {
            "amqp://"
        } else {
            return Err(BrokerError::Url(format!(
                "{whose} does not start with amqp:// or amqps://"
            )));
        };
        let rest = &part[scheme.len()..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if tail.contains(',') {
            return Err(BrokerError::Url(format!(
                "{whose}: a comma after the hosts, in {tail:?}; list the hosts before the \
                 vhost (amqp://user:pass@host1,host2/vhost), or separate full URLs with \
                 commas, each starting with amqp:// or amqps:// (a comma in a vhost is %2C)"
            )));
        }
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let mut tail = tail.to_string();
        if !tail.contains("heartbeat=") {
            tail.push(if tail.contains('?') { '&' } else { '?' });
            tail.push_str(&format!("heartbeat={DEFAULT_HEARTBEAT_S}"));
        }
        for (h, host) in hosts.split(',').enumerate() {
            let host = host.trim();
            check_host(host)
                .map_err(|why| BrokerError::Url(format!("{whose}: host {} {why}", h + 1)))?;
            let address = Address {
                scheme: scheme.to_string(),
                userinfo: userinfo.to_string(),
                host: host.to_string(),
                tail: tail.clone(),
            };
            // What the client library will make of it, checked now rather than at the
            // first connection; its message may quote the URL, so it is redacted.
            let url = address.url();
            if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
                let e = e.replace(&url, &address.redacted());
                return Err(BrokerError::Url(format!("{}: {e}", address.redacted())));
            }
            out.push(address);
        }
    }
    if out.iter().any(|a| a.scheme != out[0].scheme) {
        return Err(BrokerError::Url(format!(
            "{} mixes amqp:// and amqps:// addresses: a fallback to amqp:// would send the \
             credentials in clear text; use one scheme",
            out.iter()
                .map(Address::redacted)
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    Ok(out)
}

/// Checks one `host`, `host:port` or `[v6]:port` of a host list; `Err` says why not.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("is empty (a doubled or trailing comma?)".into());
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let Some(close) = v6.find(']') else {
            return Err(format!(
                "{host:?} opens an IPv6 address with [ but never closes it"
            ));
        };
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("{host:?}: expected :port after the ]")),
        };
        (&v6[..close], port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if name.is_empty() {
        return Err(format!("{host:?} has no host name before the port"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '@' | '/' | '?' | '#' | '[' | ']'))
    {
        return Err(format!("{host:?}: {bad:?} cannot appear in a host name"));
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(format!(
                    "{host:?}: the port {port:?} is not a number from 1 to 65535"
                ))
            }
        }
    }
    Ok(())
}

/// Replaces the password of a URL (`scheme://user:password@host`) with `***`.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let u = AmqpUrl::new("amqp://svc:s3cr3t-p@ss@broker:5672/%2f").unwrap();
        assert_eq!(u.to_string(), "amqp://svc:***@broker:5672/%2f?heartbeat=10");
        assert!(!format!("{u:?}").contains("s3cr3t"));
        assert!(u.expose().contains("s3cr3t"));
        let list = AmqpUrl::new("amqp://svc:s3cr3t@h1,h2:5673/v").unwrap();
        assert_eq!(list.to_string(), "amqp://svc:***@h1,h2:5673/v?heartbeat=10");
        assert!(!format!("{list:?}").contains("s3cr3t"));
        assert!(list
            .redacted_addresses()
            .iter()
            .all(|a| !a.contains("s3cr3t")));
    }

    #[test]
    fn keeps_an_explicit_heartbeat() {
        let u = AmqpUrl::new("amqp://a:b@h/v?heartbeat=3").unwrap();
        assert_eq!(u.expose(), "amqp://a:b@h/v?heartbeat=3");
    }

    #[test]
    fn refuses_other_schemes() {
        let err = AmqpUrl::new("http://u:pw@h").unwrap_err().to_string();
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn tls_files_need_amqps() {
        let tls = TlsFiles {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let plain = AmqpUrl::new("amqp://u:pw@h/v").unwrap();
        let err = plain.with_tls(tls.clone()).unwrap_err().to_string();
        assert!(err.contains("not amqps://") && !err.contains("pw"), "{err}");
        let tls_url = AmqpUrl::new("amqps://u:pw@h/v").unwrap();
        let err = tls_url.with_tls(tls).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn redact_leaves_urls_without_password_alone() {
        assert_eq!(redact("amqp://host/vh"), "amqp://host/vh");
        assert_eq!(redact("amqp://user@host/vh"), "amqp://user@host/vh");
    }

    fn exposed(u: &AmqpUrl) -> Vec<String> {
        (0..u.len()).map(|i| u.expose_address(i)).collect()
    }

    fn url_err(text: &str) -> String {
        AmqpUrl::new(text).unwrap_err().to_string()
    }

    #[test]
    fn a_host_list_shares_credentials_vhost_and_query() {
        let u = AmqpUrl::new("amqp://u:p@host1:5672,host2:5673,host3/vh?heartbeat=3").unwrap();
        assert_eq!(
            exposed(&u),
            [
                "amqp://u:p@host1:5672/vh?heartbeat=3",
                "amqp://u:p@host2:5673/vh?heartbeat=3",
                "amqp://u:p@host3/vh?heartbeat=3",
            ]
        );
        assert_eq!(u.hosts(), ["host1:5672", "host2:5673", "host3"]);
        // No vhost, no query, spaces, IPv6.
        let u = AmqpUrl::new(" amqps://u:p@a, [::1]:5671 ").unwrap();
        assert_eq!(
            exposed(&u),
            [
                "amqps://u:p@a?heartbeat=10",
                "amqps://u:p@[::1]:5671?heartbeat=10"
            ]
        );
        assert!(u.is_tls());
        // A password with @ and , (the hosts follow the last @).
        let u = AmqpUrl::new("amqp://u:p@s,s@h1,h2/v").unwrap();
        assert_eq!(u.hosts(), ["h1", "h2"]);
        assert!(u.expose_address(1).starts_with("amqp://u:p@s,s@h2/"));
    }

    #[test]
    fn full_urls_separated_by_commas() {
        let u = AmqpUrl::new(
            "amqp://a:pa@h1:5672/%2f?heartbeat=5, amqp://b:pb@h2/other,amqp://a:pa@h3,h4/%2f",
        )
        .unwrap();
        assert_eq!(
            exposed(&u),
            [
                "amqp://a:pa@h1:5672/%2f?heartbeat=5",
                "amqp://b:pb@h2/other?heartbeat=10",
                "amqp://a:pa@h3/%2f?heartbeat=10",
                "amqp://a:pa@h4/%2f?heartbeat=10",
            ]
        );
        let shown = u.to_string();
        assert!(!shown.contains("pa@") && !shown.contains("pb@"), "{shown}");
        assert!(shown.contains("amqp://b:***@h2/other"), "{shown}");
    }

    #[test]
    fn one_url_is_one_address() {
        let u = AmqpUrl::new(DEFAULT_AMQP_URL).unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(
            u.expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"
        );
    }

    #[test]
    fn malformed_lists_name_the_bad_part_without_the_password() {
        for (text, names) in [
            ("amqp://u:pw@h1,,h2/v", "host 2 is empty"),
            ("amqp://u:pw@h1,/v", "host 2 is empty"),
            ("amqp://u:pw@h1,h2:56x2/v", "\"h2:56x2\": the port \"56x2\""),
            ("amqp://u:pw@h1,h2:0/v", "the port \"0\""),
            ("amqp://u:pw@h1,:5672/v", "\":5672\" has no host name"),
            ("amqp://u:pw@h1,[::1/v", "never closes"),
            ("amqp://u:pw@h1,h 2/v", "' ' cannot appear"),
            ("amqp://u:pw@h1/v,http://h2", "a comma after the hosts"),
            (
                "amqp://u:pw@h1/v,,amqp://u:pw@h2/v",
                "a comma after the hosts",
            ),
            ("amqp://u:pw@h1/v,", "a comma after the hosts"),
            (
                "amqp://u:pw@h1/v, amqps://u:pw@h2/v",
                "mixes amqp:// and amqps://",
            ),
            ("http://u:pw@h1", "does not start with amqp://"),
            ("   ", "empty"),
            (
                "amqp://u:pw@h1/v?heartbeat=x",
                "amqp://u:***@h1/v?heartbeat=x",
            ),
        ] {
            let err = url_err(text);
            assert!(err.contains(names), "{text}: {err}");
            assert!(!err.contains("pw"), "{text}: the password leaks: {err}");
        }
        let err = url_err("amqp://u:pw@h1/v,amqp://u:pw@h2,,h3/v");
        assert!(
            err.contains("URL 2 of the list") && err.contains("host 2"),
            "{err}"
        );
    }

    #[test]
    fn shuffling_is_a_function_of_the_rng_and_spreads() {
        use rand::SeedableRng;
        let list = || AmqpUrl::new("amqp://u:p@a,b,c/v").unwrap();
        let order = |seed| {
            let u = list().shuffled(&mut rand::rngs::StdRng::seed_from_u64(seed));
            u.hosts().join(",")
        };
        assert_eq!(order(7), order(7));
        let mut first = std::collections::BTreeMap::new();
        for seed in 0..300 {
            let o = order(seed);
            assert_eq!(o.len(), 5, "{o}: a host lost or doubled");
            *first.entry(o[..1].to_string()).or_insert(0) += 1;
        }
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first.values().all(|&n| n > 50), "{first:?}");
    }

    #[test]
    fn the_next_connection_starts_after_the_last_address_that_answered() {
        let u = AmqpUrl::new("amqp://u:p@a,b,c/v").unwrap();
        let clone = u.clone();
        assert_eq!(u.next_index(), 0);
        u.connected_to(0);
        assert_eq!(clone.next_index(), 1, "clones share the position");
        u.connected_to(2);
        assert_eq!(u.next_index(), 0);
    }

    #[test]
    fn a_file_may_hold_one_address_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("url");
        std::fs::write(&f, "# brokers\namqp://u:p@h1/v\n\n  amqp://u:p@h2/v  \n").unwrap();
        assert_eq!(AmqpUrl::from_file(&f).unwrap().hosts(), ["h1", "h2"]);
        std::fs::write(&f, "# nothing\n\n").unwrap();
        let err = AmqpUrl::from_file(&f).unwrap_err().to_string();
        assert!(err.contains("holds no URL"), "{err}");
    }
}
