//! `user.updated`: a typed handler. Kinde also sends this when a user joins or leaves an
//! organization (there is no `organization.user.added`).

use kinde_webhooks::payload::UserPayload;
use kinde_webhooks::{
    Context, Event, HandlerError, Typed, TypedHandler, async_trait, register_handler,
};

/// Logs every user change: type, `event_id`, user id and how many organizations they are in.
#[derive(Debug, Default)]
pub struct LogUserUpdated;

#[async_trait]
impl TypedHandler for LogUserUpdated {
    type Payload = UserPayload;

    async fn handle(
        &self,
        payload: UserPayload,
        event: &Event,
        _ctx: &Context,
    ) -> Result<(), HandlerError> {
        tracing::info!(
            event_type = %event.event_type,
            event_id = %event.event_id,
            user_id = %payload.user.id,
            organizations = payload.user.organizations.len(),
            "user updated"
        );
        Ok(())
    }
}

register_handler!(
    Typed(LogUserUpdated),
    name = "log-user-updated",
    patterns = ["user.updated"]
);
