//! Receive Kinde webhooks in Rust: prove each one came from Kinde, then hand the event to
//! every handler that registered for its type.
//!
//! Kinde POSTs each event as a bare RS256-signed JWT. This crate verifies it against the
//! tenant's JWKS (fetched once, cached, refreshed on an unknown `kid`), parses the claims
//! into an [`Event`], and dispatches it to the [`EventHandler`]s whose patterns match its
//! type. Handlers register themselves with [`register_handler!`]; there is no central switch.
//!
//! # Example
//!
//! A handler, registered next to its definition, and the receiver serving it. Here the
//! issuer is the test kit's stand-in for Kinde (feature `testing`); in production it is
//! `https://<your_subdomain>.kinde.com` (`KINDE_ISSUER_URL`), and the bundled binary or
//! [`run`] serves [`Webhooks::app`] on your port.
//!
//! ```standalone_crate
//! use kinde_webhooks::payload::UserPayload;
//! use kinde_webhooks::testing::TestIssuer;
//! use kinde_webhooks::{
//!     Config, Context, Event, HandlerError, Registry, State, Typed, TypedHandler, Webhooks,
//!     async_trait, register_handler,
//! };
//!
//! /// Provisions every new user.
//! struct Provision;
//!
//! #[async_trait]
//! impl TypedHandler for Provision {
//!     type Payload = UserPayload;
//!
//!     async fn handle(&self, p: UserPayload, e: &Event, _: &Context) -> Result<(), HandlerError> {
//!         println!("{}: provision {}", e.event_id, p.user.id);
//!         Ok(())
//!     }
//! }
//!
//! register_handler!(Typed(Provision), name = "provision", patterns = ["user.created"]);
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kinde = TestIssuer::start().await;
//! let mut config = Config::default(); // or Config::load(Some(path)): config.toml + env
//! config.kinde.issuer_url = Some(kinde.url());
//! config.delivery.mode = kinde_webhooks::config::DeliveryMode::Inline;
//! let webhooks = Webhooks::open(&config, Registry::from_inventory()?, State::new()).await?;
//!
//! // Serve it: `kinde_webhooks::run(listener, webhooks, shutdown)`, or mount
//! // `webhooks.router()` in your own axum app. Here one request goes straight in:
//! use tower::ServiceExt;
//! let token = kinde.sign(&kinde.event("user.created"));
//! let request = axum::http::Request::post("/api/kinde-webhook").body(axum::body::Body::from(token))?;
//! let response = webhooks.router().oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`cli`]: the bundled server's command line (`serve`, `dev`, `send`, `handlers`).
//! - [`config`]: `config.toml` + environment, with defaults and validation.
//! - [`event`]: the verified event envelope, its delivery facts and the known event types.
//! - [`payload`]: typed `data` for every shape Kinde publishes.
//! - [`verify`]: token parsing and RS256 verification; knows nothing of HTTP.
//! - [`jwks`]: the key store: JWKS fetching, caching, single-flight refresh with cooldown.
//! - [`metrics`]: the Prometheus metrics and what they count.
//! - [`handler`]: the handler traits, the handler context and registration.
//! - [`registry`]: event-type patterns and the registry built from them.
//! - [`dedup`]: inline mode's bounded in-memory dedup.
//! - [`inbox`]: the durable inbox: store before the 200, then workers with retries.
//! - [`dispatch`]: runs the matching handlers of one event and collects their outcomes.
//! - [`forward`]: handlers built from config that pass events on (`[[forward.nats]]`).
//! - [`server`]: the axum router for the webhook routes, and `run` for the bundled server.
//! - [`reply`]: the one place where an outcome becomes an HTTP status and body.
//! - [`signing`]: signs Kinde-shaped events with a local RSA key (dev mode, `send`, tests).
//! - [`samples`]: sample `data` for every known event type.
//! - [`telemetry`]: tracing subscriber set-up from the `[log]` section.
//! - `testing` (feature `testing`): a test kit: an issuer of your own, the real server on
//!   a loopback port, a recording handler.

pub mod cli;
pub mod config;
pub mod dedup;
pub mod dispatch;
pub mod event;
pub mod forward;
pub mod handler;
pub mod inbox;
pub mod jwks;
pub mod metrics;
pub mod payload;
pub mod registry;
pub mod reply;
pub mod samples;
pub mod server;
pub mod signing;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verify;

pub use async_trait::async_trait;
pub use config::Config;
pub use dispatch::Dispatcher;
pub use event::{Delivery, Event, EventType, Source};
pub use forward::Forwarders;
pub use handler::{
    Context, EventHandler, HandlerError, HandlerRegistration, State, Typed, TypedHandler,
};
pub use registry::{Pattern, Registry};
pub use server::{Background, StartError, Webhooks, run};
pub use verify::{Verifier, VerifyError};

#[doc(hidden)]
pub mod __private {
    pub use inventory;
}

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
