//! Handlers built from `config.toml` that pass each matching event on to another system.
//!
//! Today: `[[forward.nats]]`, publishing to NATS JetStream (cargo feature `nats`). A
//! forwarder is an ordinary [`EventHandler`](crate::EventHandler) with a name and patterns:
//! it joins the [`Registry`](crate::Registry) through
//! [`RegistryBuilder::configured`](crate::registry::RegistryBuilder::configured), runs under
//! the same dispatcher, and a failed publish is a handler failure the inbox retries.
//!
//! ```no_run
//! # use kinde_webhooks::{Config, Forwarders, Registry};
//! # async fn start(config: Config) -> Result<(), Box<dyn std::error::Error>> {
//! let forwarders = Forwarders::from_config(&config)?; // no I/O: checks the section
//! forwarders.start().await?; // connects; checks or creates the streams
//! let registry = Registry::builder().inventory().configured(forwarders.handlers()).build()?;
//! # let _ = registry;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "nats")]
mod nats;

#[cfg(feature = "nats")]
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::registry::ConfiguredHandler;

/// The source shown in the handler table for a `[[forward.nats]]` handler.
pub const NATS_SOURCE: &str = "config: [[forward.nats]]";

/// Why the forwarders cannot be built or started. Each stops start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The `[forward]` section does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `[[forward.nats]]` is configured but this binary was built without NATS support.
    #[error(
        "config key forward.nats: this binary was built without the `nats` cargo feature; \
         enable it (kinde-webhooks = {{ features = [\"nats\"] }}) or remove [[forward.nats]]"
    )]
    NatsDisabled,
    /// A NATS forwarder's server, reached at start-up, refused its set-up (a stream that is
    /// missing, cannot be created, or does not take the subjects).
    #[error("[[forward.nats]] {name}: {message}")]
    Nats {
        /// The forwarder's name.
        name: String,
        /// What went wrong and how to fix it.
        message: String,
    },
}

/// How one forwarder's start-up went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwarderStatus {
    /// The forwarder's name.
    pub name: String,
    /// Whether its server answered at start-up. When it did not, events wait (inbox) or are
    /// refused with a 5xx (inline) and retried until it does.
    pub reachable: bool,
    /// One line for the log or the `check` command.
    pub detail: String,
}

/// The forwarders `config.toml` asks for, built once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Forwarders {
    #[cfg(feature = "nats")]
    nats: Vec<Arc<nats::NatsForwarder>>,
}

impl Forwarders {
    /// Build the forwarders of `config.forward` without any I/O: the `handlers` command
    /// lists them, `serve` then [`Forwarders::start`]s them.
    pub fn from_config(config: &Config) -> Result<Self, ForwardError> {
        config.forward.validate(config.delivery.handler_timeout)?;
        #[cfg(feature = "nats")]
        {
            let nats = config
                .forward
                .nats
                .iter()
                .map(|c| Arc::new(nats::NatsForwarder::new(c.clone())))
                .collect();
            Ok(Self { nats })
        }
        #[cfg(not(feature = "nats"))]
        {
            if config.forward.nats.is_empty() {
                Ok(Self {})
            } else {
                Err(ForwardError::NatsDisabled)
            }
        }
    }

    /// Whether no forwarder is configured.
    pub fn is_empty(&self) -> bool {
        #[cfg(feature = "nats")]
        {
            self.nats.is_empty()
        }
        #[cfg(not(feature = "nats"))]
        {
            true
        }
    }

    /// The forwarders as handlers, for [`crate::registry::RegistryBuilder::configured`].
    pub fn handlers(&self) -> Vec<ConfiguredHandler> {
        #[cfg(feature = "nats")]
        {
            self.nats
                .iter()
                .map(|f| ConfiguredHandler {
                    name: f.name().to_owned(),
                    patterns: f.patterns().to_vec(),
                    source: NATS_SOURCE.to_owned(),
                    handler: f.clone(),
                })
                .collect()
        }
        #[cfg(not(feature = "nats"))]
        {
            Vec::new()
        }
    }

    /// Connect every forwarder and check (or create) its stream. A server that does not
    /// answer is not an error: the forwarder keeps reconnecting, and events are retried
    /// until it is back. A server that answers but refuses the set-up is.
    pub async fn start(&self) -> Result<Vec<ForwarderStatus>, ForwardError> {
        #[cfg(feature = "nats")]
        {
            let started = futures_util::future::join_all(self.nats.iter().map(|f| f.start())).await;
            started.into_iter().collect()
        }
        #[cfg(not(feature = "nats"))]
        {
            Ok(Vec::new())
        }
    }
}
