//! The init step: the application state every handler reaches through its context, built
//! once at start-up from the configuration.

use kinde_webhooks::handler::BoxError;
use kinde_webhooks::{Config, State};

/// Build the shared state. Add what your handlers need here, once: a database pool, an
/// HTTP client, a parsed settings struct. Handlers read it with `ctx.state::<T>()`.
///
/// ```ignore
/// let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
/// Ok(State::new().with(pool))
/// ```
pub async fn init(_config: &Config) -> Result<State, BoxError> {
    Ok(State::new())
}
