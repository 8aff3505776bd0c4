//! The AMQP URL, kept away from logs.

use std::fmt;
use std::path::Path;

use crate::BrokerError;

/// The URL used when neither `AMQP_URL` nor `AMQP_URL_FILE` is set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Heartbeat interval, in seconds, added to URLs that do not set one: heartbeats are
/// the only way to notice a half-open connection, and the broker's default (60 s) is
/// too slow for that.
pub const DEFAULT_HEARTBEAT_S: u16 = 10;

/// An AMQP URL. `Debug` and `Display` print it with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

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
        Ok(Self(url))
    }

    /// The URL from `AMQP_URL`, else from the file named by `AMQP_URL_FILE` (for
    /// mounted secrets), else [`DEFAULT_AMQP_URL`].
    pub fn from_env() -> Result<Self, BrokerError> {
        if let Ok(url) = std::env::var("AMQP_URL") {
            return Self::new(url);
        }
        if let Ok(file) = std::env::var("AMQP_URL_FILE") {
            return Self::from_file(Path::new(&file));
        }
        Self::new(DEFAULT_AMQP_URL)
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
        &self.0
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", redact(&self.0))
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
    fn redact_leaves_urls_without_password_alone() {
        assert_eq!(redact("amqp://host/vh"), "amqp://host/vh");
        assert_eq!(redact("amqp://user@host/vh"), "amqp://user@host/vh");
    }
}
