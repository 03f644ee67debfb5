//! Log set-up shared by the project's binaries, so every process writes the
//! same way: lines on standard error, filtered by `RUST_LOG` (default
//! `info`), human-readable or one JSON object per line (`LOG_FORMAT`), with
//! colours only on a terminal.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting up logging: {0}")]
pub struct LogError(String);

/// Installs the process's log subscriber.
///
/// # Errors
///
/// [`LogError`] when a subscriber is already installed.
pub fn init_logs(format: LogFormat) -> Result<(), LogError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| LogError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_subscriber_is_refused_with_a_clear_error() {
        init_logs(LogFormat::Json).expect("first subscriber");
        let err = init_logs(LogFormat::Plain).expect_err("second subscriber");
        assert!(err.to_string().starts_with("setting up logging: "), "{err}");
    }
}
