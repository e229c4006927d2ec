//! Typed configuration from environment variables. Each process builds its own config struct with
//! these readers, so a missing or malformed value stops it at start with one line that names the
//! variable, instead of failing later deep inside a request.

use std::fmt::Display;
use std::str::FromStr;

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

/// The variable's value, or `None` when unset or empty.
pub fn optional(variable: &'static str) -> Option<String> {
    std::env::var(variable).ok().filter(|v| !v.is_empty())
}

/// The variable's value; an error naming it when unset or empty.
pub fn required(variable: &'static str) -> Result<String, ConfigError> {
    optional(variable).ok_or_else(|| ConfigError {
        variable,
        problem: "must be set".into(),
    })
}

/// The variable's value, or `default` when unset.
pub fn or_default(variable: &'static str, default: &str) -> String {
    optional(variable).unwrap_or_else(|| default.to_owned())
}

/// The variable parsed as `T`, or `default` when unset; an error naming it when malformed.
pub fn parsed<T>(variable: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match optional(variable) {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|e| ConfigError {
            variable,
            problem: format!("cannot parse {raw:?}: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_variable_in_one_line() {
        let error = ConfigError {
            variable: "PARLEY_X",
            problem: "must be set".into(),
        };
        assert_eq!(error.to_string(), "PARLEY_X: must be set");
        assert!(!error.to_string().contains('\n'));
    }
}
