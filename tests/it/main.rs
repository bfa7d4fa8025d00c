//! Integration tests: a real receiver on a loopback port, a real JWKS endpoint, real RS256
//! signatures, and handlers that record what they were given.

mod bad_input;
mod environments;
mod examples;
mod fixtures;
mod forged;
mod hostile;
mod inbox;
mod keys;
mod kit;
mod metrics;
mod nats;
mod props;
mod registry;
mod routes;
mod store;
mod subscriptions;
mod utils;
