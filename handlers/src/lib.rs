//! The bundled Kinde webhook handlers: copy one, rename it, make it do your work.
//!
//! Every handler registers itself next to its definition with
//! [`kinde_webhooks::register_handler!`]; nothing else needs to list it. The `kinde-webhooks`
//! binary links this crate (`use kinde_webhooks_handlers as _;`) so the registrations are
//! kept, and calls [`init`] once at start-up to build the state handlers share.
//!
//! # Layout
//! - [`user_created`]: a typed handler for `user.created`.
//! - [`user_updated`]: a typed handler for `user.updated`.
//! - [`organization`]: one handler for the whole `organization.*` group.
//! - [`state`]: the init step: application state built once at start-up.

pub mod organization;
pub mod state;
pub mod user_created;
pub mod user_updated;

pub use state::init;
