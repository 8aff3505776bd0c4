//! Model names: they travel as routing keys and name folders under `models/`, so the
//! rules are strict enough to be safe in both places.

use thiserror::Error;

/// Longest accepted model name, in bytes (AMQP queue names are capped at 255).
pub const MAX_MODEL_NAME_LEN: usize = 64;

/// Why a model name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name was empty.
    #[error("model name is empty")]
    Empty,
    /// The name was longer than [`MAX_MODEL_NAME_LEN`].
    #[error("model name is {len} bytes long; the limit is {MAX_MODEL_NAME_LEN}")]
    TooLong {
        /// Length of the refused name.
        len: usize,
    },
    /// The name held a character outside `[a-z0-9._-]`, or did not start with `[a-z0-9]`.
    #[error("model name {name:?} may only hold lowercase letters, digits, '.', '_' and '-', and must start with a letter or digit")]
    BadCharacter {
        /// The refused name (already known to be at most 64 bytes).
        name: String,
    },
    /// The name contained `..`, which could leave the models directory.
    #[error("model name {name:?} contains '..'")]
    DotDot {
        /// The refused name.
        name: String,
    },
}

/// Checks a model name (also used for version names). Accepts `[a-z0-9][a-z0-9._-]*`
/// without `..`, at most [`MAX_MODEL_NAME_LEN`] bytes.
pub fn validate_model_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_MODEL_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if !ok_first || !ok_rest {
        return Err(NameError::BadCharacter {
            name: name.to_string(),
        });
    }
    if name.contains("..") {
        return Err(NameError::DotDot {
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "breast-cancer",
            "all-minilm-l6-v2",
            "m1",
            "a.b_c-d",
            "1.0.0",
        ] {
            assert_eq!(validate_model_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_names_that_could_escape_or_confuse() {
        assert_eq!(validate_model_name(""), Err(NameError::Empty));
        for n in ["../etc", "a/b", "Upper", ".hidden"] {
            assert!(
                matches!(validate_model_name(n), Err(NameError::BadCharacter { .. })),
                "{n}"
            );
        }
        assert!(matches!(
            validate_model_name("a..b"),
            Err(NameError::DotDot { .. })
        ));
        assert!(matches!(
            validate_model_name(&"a".repeat(65)),
            Err(NameError::TooLong { len: 65 })
        ));
    }
}
