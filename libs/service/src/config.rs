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

/// How log lines are written: `PARLEY_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.eq_ignore_ascii_case("json") {
            Ok(Self::Json)
        } else if raw.eq_ignore_ascii_case("pretty") {
            Ok(Self::Pretty)
        } else {
            Err("expected json or pretty".into())
        }
    }
}

/// What every Parley process reads the same way, with each default written once. A process
/// keeps its own config struct for the rest and fills these fields from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonConfig {
    /// `NATS_URL`: one server, or a cluster's seeds separated by commas (default
    /// [`parley_nats::DEFAULT_URL`]).
    pub nats_url: String,
    /// `PARLEY_STREAM_REPLICAS`: replicas of the streams and buckets the process creates
    /// (default 1; 3 on a cluster).
    pub stream_replicas: usize,
    /// `PARLEY_LOG_FORMAT`: `pretty` (default) or `json`.
    pub log_format: LogFormat,
}

impl CommonConfig {
    /// Reads the shared variables. (Each worker reads `PARLEY_ADMIN_LISTEN` itself, with a
    /// default of its own; the gateway serves its probes and metrics on its API port.)
    pub fn from_env() -> Result<Self, ConfigError> {
        let stream_replicas = parsed("PARLEY_STREAM_REPLICAS", 1usize)?;
        if !(1..=5).contains(&stream_replicas) {
            return Err(ConfigError {
                variable: "PARLEY_STREAM_REPLICAS",
                problem: "must be between 1 and 5 (JetStream's limit)".into(),
            });
        }
        Ok(Self {
            nats_url: or_default("NATS_URL", parley_nats::DEFAULT_URL),
            stream_replicas,
            log_format: parsed("PARLEY_LOG_FORMAT", LogFormat::default())?,
        })
    }

    /// A process on `nats_url` with one replica: what tests start.
    pub fn local(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            stream_replicas: 1,
            log_format: LogFormat::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse_in_any_case_and_refuse_the_rest() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("pretty".parse::<LogFormat>(), Ok(LogFormat::Pretty));
        assert!("jsno".parse::<LogFormat>().is_err());
    }

    #[test]
    fn a_local_config_has_one_replica_and_pretty_logs() {
        let config = CommonConfig::local("nats://127.0.0.1:1");
        assert_eq!(config.stream_replicas, 1);
        assert_eq!(config.log_format, LogFormat::Pretty);
    }

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
