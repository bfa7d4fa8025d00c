//! Tracing subscriber set-up from the `[log]` section; `RUST_LOG` wins over `level`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat, is_log_filter};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The servers (`serve`, `dev`): logs are their output.
    Stdout,
    /// Commands whose stdout is their result (`inbox ... --json`).
    Stderr,
}

/// Install the global subscriber. Does nothing if one is already installed (tests).
pub fn init(log: &LogConfig, output: Output) {
    let configured = || EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if is_log_filter(&value) => {
            EnvFilter::try_new(&value).unwrap_or_else(|_| configured())
        }
        Ok(value) if !value.trim().is_empty() => {
            eprintln!(
                "warning: RUST_LOG={value:?} is not a log filter; using [log] level {:?}",
                log.level
            );
            configured()
        }
        _ => configured(),
    };
    // Colour only on a terminal, so piped and collected logs stay plain text.
    let ansi = match output {
        Output::Stdout => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        Output::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(move || -> Box<dyn std::io::Write> {
            match output {
                Output::Stdout => Box::new(std::io::stdout()),
                Output::Stderr => Box::new(std::io::stderr()),
            }
        });
    let _ = match log.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
