//! `user.created`: a typed handler. It receives `data` already parsed as a
//! [`UserPayload`]; here it logs the event, where your code would provision the user.

use kinde_webhooks::payload::UserPayload;
use kinde_webhooks::{
    Context, Event, HandlerError, Typed, TypedHandler, async_trait, register_handler,
};

/// Logs every new user: type, `event_id` and user id.
#[derive(Debug, Default)]
pub struct LogUserCreated;

#[async_trait]
impl TypedHandler for LogUserCreated {
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
            "user created"
        );
        Ok(())
    }
}

register_handler!(
    Typed(LogUserCreated),
    name = "log-user-created",
    patterns = ["user.created"]
);
