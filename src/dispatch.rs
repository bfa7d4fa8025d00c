//! Runs the handlers that match one event and collects what each of them did.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::join_all;

use crate::event::Event;
use crate::handler::{Context, HandlerError, State, panic_message};
use crate::registry::{Entry, Registry};

/// Hands events to the registry's handlers, with the application state.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    registry: Arc<Registry>,
    state: Arc<State>,
    settings: Arc<HashMap<String, Arc<toml::Value>>>,
    timeout: Option<Duration>,
}

/// What one handler did with one event.
#[derive(Debug)]
pub struct HandlerOutcome {
    /// The handler's name.
    pub handler: Arc<str>,
    /// `Ok`, or why it failed (a caught panic included).
    pub result: Result<(), HandlerError>,
}

/// What all the matching handlers of one event did.
#[derive(Debug, Default)]
pub struct Report {
    /// One entry per matching handler, in registration order. Empty: nothing matched.
    pub outcomes: Vec<HandlerOutcome>,
}

impl Report {
    /// Whether every handler that ran succeeded (true when none ran).
    pub fn all_ok(&self) -> bool {
        self.outcomes.iter().all(|o| o.result.is_ok())
    }

    /// Whether no handler matched the event.
    pub fn unhandled(&self) -> bool {
        self.outcomes.is_empty()
    }
}

impl Dispatcher {
    /// A dispatcher over `registry` giving handlers `state` and their `[handlers.<name>]`
    /// settings.
    pub fn new(registry: Registry, state: State, settings: HashMap<String, toml::Value>) -> Self {
        let settings = settings
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        Self {
            registry: Arc::new(registry),
            state: Arc::new(state),
            settings: Arc::new(settings),
            timeout: None,
        }
    }

    /// Cancel a handler call that runs longer than `timeout` (a failed attempt).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest one handler call may run (`None`: no limit).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Run the handler registered as `name` on `event`; `None` if no such handler exists.
    pub async fn run_named(&self, name: &str, event: &Event) -> Option<Result<(), HandlerError>> {
        let entry = self.registry.entries().iter().find(|e| &*e.name == name)?;
        Some(self.run_one(entry, event).await.result)
    }

    /// The registry this dispatcher runs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Run every handler that matches the event, concurrently. One failing (or panicking)
    /// does not stop the others; each outcome is logged with the handler's name.
    pub async fn dispatch(&self, event: &Event) -> Report {
        let runs = self
            .registry
            .handlers_for(&event.event_type)
            .map(|entry| self.run_one(entry, event));
        Report {
            outcomes: join_all(runs).await,
        }
    }

    async fn run_one(&self, entry: &Entry, event: &Event) -> HandlerOutcome {
        let ctx = Context::new(
            self.state.clone(),
            entry.name.clone(),
            self.settings.get(&*entry.name).cloned(),
        );
        let started = Instant::now();
        let call = AssertUnwindSafe(entry.handler.handle(event, &ctx)).catch_unwind();
        let caught = match self.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Ok(Err(HandlerError::TimedOut(limit)))),
            None => call.await,
        };
        let result =
            caught.unwrap_or_else(|panic| Err(HandlerError::Panicked(panic_message(&*panic))));
        let elapsed = started.elapsed();
        crate::metrics::handler_call(&entry.name, &event.event_type, elapsed, result.is_ok());
        // Microsecond precision is plenty, and keeps log lines free of float noise.
        let elapsed_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        match &result {
            Ok(()) => tracing::debug!(handler = %entry.name, elapsed_ms, "handler succeeded"),
            Err(error) => {
                tracing::warn!(handler = %entry.name, elapsed_ms, %error, "handler failed")
            }
        }
        HandlerOutcome {
            handler: entry.name.clone(),
            result,
        }
    }
}
