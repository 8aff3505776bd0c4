//! TLS for `amqps://` URLs: a private CA to trust and a client certificate to present,
//! both read from PEM files.
//!
//! | variable | meaning |
//! |---|---|
//! | `AMQP_CACERT_FILE` | PEM file of CA certificates to trust, in addition to the system's |
//! | `AMQP_CLIENT_CERT_FILE` | PEM file of the client certificate (then its chain), for brokers that ask for one |
//! | `AMQP_CLIENT_KEY_FILE` | PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1, unencrypted) |
//!
//! The files are read again at every connect, so certificates rotated on disk (a
//! mounted Kubernetes secret, say) are picked up at the next reconnect. The key never
//! reaches a log: [`TlsFiles`] holds and prints only paths.

use std::path::{Path, PathBuf};

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use crate::BrokerError;

/// Environment variable naming the PEM file of CA certificates to trust.
pub const ENV_CACERT_FILE: &str = "AMQP_CACERT_FILE";
/// Environment variable naming the PEM file of the client certificate.
pub const ENV_CLIENT_CERT_FILE: &str = "AMQP_CLIENT_CERT_FILE";
/// Environment variable naming the PEM file of the client certificate's key.
pub const ENV_CLIENT_KEY_FILE: &str = "AMQP_CLIENT_KEY_FILE";

/// Where the TLS material lives. Empty (the default) means: trust the system's CA
/// certificates and present no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates to trust (PEM), added to the system's.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and its chain (PEM).
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    /// The paths named by `AMQP_CACERT_FILE`, `AMQP_CLIENT_CERT_FILE` and
    /// `AMQP_CLIENT_KEY_FILE` (unset or empty variables are ignored).
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            ca_cert: var(ENV_CACERT_FILE),
            client_cert: var(ENV_CLIENT_CERT_FILE),
            client_key: var(ENV_CLIENT_KEY_FILE),
        }
    }

    /// True when no file is named.
    pub fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }

    /// Reads the files into lapin's TLS configuration. A certificate without its key
    /// (or the reverse) is an error, not a silent anonymous connection.
    pub fn load(&self) -> Result<OwnedTLSConfig, BrokerError> {
        let cert_chain = match &self.ca_cert {
            Some(p) => Some(read_pem(p, ENV_CACERT_FILE, "CERTIFICATE")?),
            None => None,
        };
        let identity = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read_pem(cert, ENV_CLIENT_CERT_FILE, "CERTIFICATE")?.into_bytes(),
                key: read_pem(key, ENV_CLIENT_KEY_FILE, "PRIVATE KEY")?.into_bytes(),
            }),
            (Some(_), None) => {
                return Err(BrokerError::Tls(format!(
                    "{ENV_CLIENT_CERT_FILE} is set but {ENV_CLIENT_KEY_FILE} is not: a client certificate needs its key"
                )))
            }
            (None, Some(_)) => {
                return Err(BrokerError::Tls(format!(
                    "{ENV_CLIENT_KEY_FILE} is set but {ENV_CLIENT_CERT_FILE} is not: a client key needs its certificate"
                )))
            }
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// Reads a PEM file and checks that it holds a block whose label contains `label`.
/// Errors name the variable and the path, never the content.
fn read_pem(path: &Path, var: &str, label: &str) -> Result<String, BrokerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BrokerError::Tls(format!("{var}: cannot read {}: {e}", path.display())))?;
    let has_block = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(label));
    if !has_block {
        return Err(BrokerError::Tls(format!(
            "{var}: {} holds no PEM {label} block",
            path.display()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nsecretkeymaterial\n-----END PRIVATE KEY-----\n";

    #[test]
    fn empty_means_system_roots_and_no_identity() {
        let t = TlsFiles::default();
        assert!(t.is_empty());
        assert_eq!(t.load().unwrap(), OwnedTLSConfig::default());
    }

    #[test]
    fn loads_ca_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
        );
        std::fs::write(&ca, CERT).unwrap();
        std::fs::write(&cert, CERT).unwrap();
        std::fs::write(&key, KEY).unwrap();
        let t = TlsFiles {
            ca_cert: Some(ca),
            client_cert: Some(cert),
            client_key: Some(key),
        };
        let c = t.load().unwrap();
        assert_eq!(c.cert_chain.as_deref(), Some(CERT));
        assert!(matches!(c.identity, Some(OwnedIdentity::PKCS8 { .. })));
        // Debug shows paths, never key material.
        assert!(!format!("{t:?}").contains("secretkeymaterial"));
    }

    #[test]
    fn half_an_identity_or_a_wrong_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, CERT).unwrap();
        let only_cert = TlsFiles {
            client_cert: Some(cert.clone()),
            ..TlsFiles::default()
        };
        assert!(only_cert
            .load()
            .unwrap_err()
            .to_string()
            .contains(ENV_CLIENT_KEY_FILE));
        let key_is_a_cert = TlsFiles {
            client_cert: Some(cert.clone()),
            client_key: Some(cert),
            ..TlsFiles::default()
        };
        let err = key_is_a_cert.load().unwrap_err().to_string();
        assert!(
            err.contains("PRIVATE KEY") && !err.contains("MIIB"),
            "{err}"
        );
        let missing = TlsFiles {
            ca_cert: Some(dir.path().join("nope.pem")),
            ..TlsFiles::default()
        };
        assert!(missing.load().unwrap_err().to_string().contains("nope.pem"));
    }
}
