//! What a handler is, what it is given, and how it registers itself.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::event::Event;
use crate::payload::Payload;

/// Boxed error type handlers return from the code they call.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Handles verified events of the types it subscribed to.
///
/// Implement it, then register it next to its definition with [`crate::register_handler!`].
/// A handler is built once at start-up and shared by all requests, so it must be
/// `Send + Sync`; per-request work belongs in `handle`.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handle one event. An `Err` makes the delivery fail (500 in inline mode) so Kinde
    /// retries it; the other handlers of the event still run.
    async fn handle(&self, event: &Event, ctx: &Context) -> Result<(), HandlerError>;
}

/// A handler for one typed payload: it receives `data` already parsed.
///
/// Wrap it in [`Typed`] to register it. A `data` that does not fit `Payload` becomes a
/// [`HandlerError::BadPayload`] before `handle` is called.
#[async_trait]
pub trait TypedHandler: Send + Sync + 'static {
    /// The shape of `data` this handler reads, e.g. [`crate::payload::UserPayload`].
    type Payload: Payload;

    /// Handle one event whose `data` parsed as `Self::Payload`.
    async fn handle(
        &self,
        payload: Self::Payload,
        event: &Event,
        ctx: &Context,
    ) -> Result<(), HandlerError>;
}

/// Adapts a [`TypedHandler`] to [`EventHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Typed<H>(pub H);

#[async_trait]
impl<H: TypedHandler> EventHandler for Typed<H> {
    async fn handle(&self, event: &Event, ctx: &Context) -> Result<(), HandlerError> {
        let payload = event.payload::<H::Payload>()?;
        self.0.handle(payload, event, ctx).await
    }
}

/// Why a handler failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// `data` did not deserialize into the payload type the handler asked for.
    #[error("data of {event_type} does not fit {payload}: {source}")]
    BadPayload {
        /// The Rust type that was asked for.
        payload: &'static str,
        /// The event type that was received.
        event_type: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A typed payload was asked for an event type that does not carry it.
    #[error("{payload} is not the data of {event_type}")]
    WrongPayload {
        /// The Rust type that was asked for.
        payload: &'static str,
        /// The event type that was received.
        event_type: String,
    },
    /// The handler's `[handlers.<name>]` settings are missing or do not fit.
    #[error("settings of handler {handler}: {message}")]
    Settings {
        /// The handler's name.
        handler: String,
        /// What is wrong with them.
        message: String,
    },
    /// Application state the handler needs was not provided at start-up.
    #[error(
        "no {0} in the application state: insert it in the init step (in a test: TestServer::builder(..).state(..))"
    )]
    MissingState(&'static str),
    /// The handler's own work failed; a retry may succeed.
    #[error("{0}")]
    Failed(#[source] BoxError),
    /// The handler's work failed and retrying cannot help: the inbox dead-letters it at once.
    #[error("{0}")]
    Permanent(#[source] BoxError),
    /// The handler ran past its timeout and was cancelled.
    #[error("handler timed out after {0:?}")]
    TimedOut(std::time::Duration),
    /// The handler panicked; the panic was caught and harmed nothing else.
    #[error("handler panicked: {0}")]
    Panicked(String),
}

impl HandlerError {
    /// Wrap any error from the handler's own work.
    pub fn other(err: impl Into<BoxError>) -> Self {
        HandlerError::Failed(err.into())
    }

    /// A failure described by a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        HandlerError::Failed(message.to_string().into())
    }

    /// A failure no retry can fix (a record that can never be valid, say): the inbox
    /// dead-letters it after this attempt instead of retrying.
    pub fn permanent(err: impl Into<BoxError>) -> Self {
        HandlerError::Permanent(err.into())
    }

    /// Whether retrying is pointless: an explicit [`HandlerError::permanent`], or `data`,
    /// settings or state that will not change by themselves.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            HandlerError::Permanent(_)
                | HandlerError::BadPayload { .. }
                | HandlerError::WrongPayload { .. }
                | HandlerError::Settings { .. }
                | HandlerError::MissingState(_)
        )
    }
}

/// Shared application state, built once at start-up by the user's init step and handed to
/// every handler through its [`Context`]: a database pool, an HTTP client, anything `Clone`.
#[derive(Debug, Clone, Default)]
pub struct State {
    values: axum::http::Extensions,
}

impl State {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a value; a later value of the same type replaces the earlier one.
    pub fn with<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.values.insert(value);
        self
    }

    /// Add a value in place.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(value);
    }

    /// The value of type `T`, if one was added.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.values.get::<T>()
    }
}

/// What a handler is given besides the event: the application state and its own settings.
#[derive(Debug, Clone)]
pub struct Context {
    state: Arc<State>,
    handler: Arc<str>,
    settings: Option<Arc<toml::Value>>,
}

impl Context {
    pub(crate) fn new(
        state: Arc<State>,
        handler: Arc<str>,
        settings: Option<Arc<toml::Value>>,
    ) -> Self {
        Self {
            state,
            handler,
            settings,
        }
    }

    /// The name the running handler registered with.
    pub fn handler_name(&self) -> &str {
        &self.handler
    }

    /// The application state value of type `T`, or [`HandlerError::MissingState`].
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<&T, HandlerError> {
        self.state
            .get::<T>()
            .ok_or(HandlerError::MissingState(std::any::type_name::<T>()))
    }

    /// The whole application state.
    pub fn app_state(&self) -> &State {
        &self.state
    }

    /// The handler's own `[handlers.<name>]` section of `config.toml`, deserialized.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        let err = |message: String| HandlerError::Settings {
            handler: self.handler.to_string(),
            message,
        };
        let value = self.settings.as_deref().ok_or_else(|| {
            err(format!(
                "no [handlers.{}] section in the config",
                self.handler
            ))
        })?;
        value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| err(e.to_string()))
    }
}

/// One handler registration, written by [`crate::register_handler!`] and collected by
/// `inventory`. Plain data: the registry is built from these at start-up.
#[derive(Debug)]
pub struct HandlerRegistration {
    /// Unique, stable name: used in logs, metrics and the inbox.
    pub name: &'static str,
    /// The event-type patterns it subscribes to: `user.created`, `user.*` or `*`.
    pub patterns: &'static [&'static str],
    /// The module it was registered in, for the handler table.
    pub module: &'static str,
    /// Builds the handler once, at start-up.
    pub make: fn() -> Box<dyn EventHandler>,
}

inventory::collect!(HandlerRegistration);

/// Register a handler in one line next to its definition.
///
/// ```standalone_crate
/// use kinde_webhooks::{Context, Event, EventHandler, HandlerError, Registry, async_trait};
///
/// struct WelcomeEmail;
///
/// #[async_trait]
/// impl EventHandler for WelcomeEmail {
///     async fn handle(&self, _event: &Event, _ctx: &Context) -> Result<(), HandlerError> {
///         Ok(())
///     }
/// }
///
/// kinde_webhooks::register_handler!(WelcomeEmail, name = "welcome-email", patterns = ["user.created"]);
/// // A `TypedHandler` registers wrapped: `register_handler!(Typed(SyncOrg), name = ..., patterns = [...])`.
///
/// let registry = Registry::from_inventory().unwrap();
/// assert!(registry.handlers_for("user.created").any(|e| &*e.name == "welcome-email"));
/// ```
///
/// The handler expression is evaluated once, when the registry is built.
#[macro_export]
macro_rules! register_handler {
    ($handler:expr, name = $name:literal, patterns = [$($pattern:literal),+ $(,)?] $(,)?) => {
        $crate::__private::inventory::submit! {
            $crate::HandlerRegistration {
                name: $name,
                patterns: &[$($pattern),+],
                module: ::core::module_path!(),
                make: || -> ::std::boxed::Box<dyn $crate::EventHandler> {
                    ::std::boxed::Box::new($handler)
                },
            }
        }
    };
}

/// The message of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
