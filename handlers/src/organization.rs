//! `organization.*`: one handler for a whole group. It branches on the typed event kind and
//! reads the payload each type carries.

use kinde_webhooks::payload::{OrganizationPayload, OrganizationRefPayload};
use kinde_webhooks::{
    Context, Event, EventHandler, EventType, HandlerError, async_trait, register_handler,
};

/// Logs every organization event with the organization code.
#[derive(Debug, Default)]
pub struct LogOrganizationEvents;

#[async_trait]
impl EventHandler for LogOrganizationEvents {
    async fn handle(&self, event: &Event, _ctx: &Context) -> Result<(), HandlerError> {
        let code = match event.kind() {
            EventType::OrganizationCreated | EventType::OrganizationUpdated => {
                event.payload::<OrganizationPayload>()?.organization.code
            }
            EventType::OrganizationDeleted => {
                event.payload::<OrganizationRefPayload>()?.organization.code
            }
            // A type Kinde adds to the group later still arrives here: keep it visible.
            _ => event.data["organization"]["code"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        };
        tracing::info!(event_type = %event.event_type, event_id = %event.event_id, org_code = %code, "organization event");
        Ok(())
    }
}

register_handler!(
    LogOrganizationEvents,
    name = "log-organization-events",
    patterns = ["organization.*"]
);
