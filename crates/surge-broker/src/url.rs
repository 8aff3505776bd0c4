//! The AMQP URL, kept away from logs.

use std::fmt;
use std::path::Path;

use crate::tls::TlsFiles;
use crate::BrokerError;

/// The URL used when neither `AMQP_URL` nor `AMQP_URL_FILE` is set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Heartbeat interval, in seconds, added to URLs that do not set one: heartbeats are
/// the only way to notice a half-open connection, and the broker's default (60 s) is
/// too slow for that.
pub const DEFAULT_HEARTBEAT_S: u16 = 10;

/// An AMQP URL, and for `amqps://` the TLS files to use with it. `Debug` and
/// `Display` print the URL with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    url: String,
    tls: TlsFiles,
}

impl AmqpUrl {
    /// Wraps a URL, adding `heartbeat=10` when it names no heartbeat.
    pub fn new(url: impl Into<String>) -> Result<Self, BrokerError> {
        let mut url: String = url.into().trim().to_string();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(BrokerError::Url(format!(
                "{} does not start with amqp:// or amqps://",
                redact(&url)
            )));
        }
        if !url.contains("heartbeat=") {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("heartbeat={DEFAULT_HEARTBEAT_S}"));
        }
        Ok(Self {
            url,
            tls: TlsFiles::default(),
        })
    }

    /// Uses these TLS files (a private CA, a client certificate). They only make sense
    /// with `amqps://`, so naming any with `amqp://` is an error rather than a
    /// connection that silently goes out in clear text. The files are checked now.
    pub fn with_tls(mut self, tls: TlsFiles) -> Result<Self, BrokerError> {
        if !tls.is_empty() && !self.url.starts_with("amqps://") {
            return Err(BrokerError::Tls(format!(
                "TLS files are set ({}, ...) but the URL {} is not amqps://",
                crate::tls::ENV_CACERT_FILE,
                redact(&self.url)
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

    /// The URL from `AMQP_URL`, else from the file named by `AMQP_URL_FILE` (for
    /// mounted secrets), else [`DEFAULT_AMQP_URL`] (empty variables count as unset); with the TLS files named by
    /// `AMQP_CACERT_FILE`, `AMQP_CLIENT_CERT_FILE` and `AMQP_CLIENT_KEY_FILE` (see
    /// [`crate::tls`]).
    pub fn from_env() -> Result<Self, BrokerError> {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = if let Some(url) = set("AMQP_URL") {
            Self::new(url)?
        } else if let Some(file) = set("AMQP_URL_FILE") {
            Self::from_file(Path::new(&file))?
        } else {
            Self::new(DEFAULT_AMQP_URL)?
        };
        url.with_tls(TlsFiles::from_env())
    }

    /// Reads the URL from a file (first non-empty line).
    pub fn from_file(path: &Path) -> Result<Self, BrokerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BrokerError::Url(format!("cannot read {}: {e}", path.display())))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        Self::new(line)
    }

    /// The full URL, password included: only for handing to the client library.
    pub fn expose(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", redact(&self.url))
    }
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
}
