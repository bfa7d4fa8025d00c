//! Tracing subscriber set-up from the `[log]` section; `RUST_LOG` wins over `level`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

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
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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
