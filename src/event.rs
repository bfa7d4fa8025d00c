//! The verified Kinde event: the signed envelope plus the facts of its delivery.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::handler::HandlerError;
use crate::payload::Payload;

/// One verified Kinde event, as a handler receives it.
///
/// The envelope fields are typed; `data` stays raw JSON so that event types without a
/// published schema (and types Kinde adds later) still reach their handlers. Typed access
/// is one call away: [`Event::payload`].
#[derive(Debug, Clone)]
pub struct Event {
    /// The event type, e.g. `user.created`. Kept as sent, so unknown types survive.
    pub event_type: String,
    /// `event_` + 32 hex; unique per event, the same for every webhook it is sent to.
    pub event_id: String,
    /// When Kinde says the event happened, with the offset it was written in.
    pub timestamp: DateTime<FixedOffset>,
    /// Who caused the event: the admin UI, the management API or the user.
    pub source: Source,
    /// The type-specific payload, untouched.
    pub data: Value,
    /// Sent on some events alongside `timestamp`.
    pub event_timestamp: Option<DateTime<FixedOffset>>,
    /// Sent on `user.authenticated` and `user.authentication_failed`.
    pub ip_address: Option<String>,
    /// How and when this copy of the event reached us.
    pub delivery: Delivery,
    /// The whole claims object as signed, so fields Kinde adds later are still reachable.
    pub claims: Arc<str>,
}

/// The facts of one delivery, which are not part of the signed payload.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// The `webhook-id` header: the same on every retry of one delivery.
    pub webhook_id: Option<String>,
    /// The path of the route the event arrived on.
    pub route: String,
    /// The issuer (Kinde environment) whose keys verified the event: the route's
    /// `issuer_url`, else `[kinde] issuer_url`. One receiver can serve several
    /// environments (staging and production, or several businesses), one route each.
    pub issuer: String,
    /// When the request was received.
    pub received_at: DateTime<Utc>,
}

/// What caused an event, from the payload's `source` field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Source {
    /// A change made in the Kinde admin UI.
    Admin,
    /// A change made through the management API.
    Api,
    /// An action of the user themself (sign-in, profile change).
    User,
    /// A value Kinde did not document when this crate was written.
    Other(String),
    /// No `source` field at all.
    #[default]
    Missing,
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        Ok(match s.as_deref() {
            None => Source::Missing,
            Some("admin") => Source::Admin,
            Some("api") => Source::Api,
            Some("user") => Source::User,
            Some(other) => Source::Other(other.to_owned()),
        })
    }
}

impl Event {
    /// The event type as a known [`EventType`], or [`EventType::Unknown`].
    pub fn kind(&self) -> EventType {
        EventType::from_name(&self.event_type)
    }

    /// `data` as the typed payload `T`, e.g. [`crate::payload::UserPayload`].
    ///
    /// Fails with a [`HandlerError`] (never a panic) when `T` does not apply to this event
    /// type or when `data` does not fit `T`; `self.data` stays available either way.
    pub fn payload<T: Payload>(&self) -> Result<T, HandlerError> {
        if !T::EVENT_TYPES.contains(&self.event_type.as_str()) {
            return Err(HandlerError::WrongPayload {
                payload: std::any::type_name::<T>(),
                event_type: self.event_type.clone(),
            });
        }
        self.data_as()
    }

    /// `data` deserialized into any `T`, with no check of the event type. For event types
    /// whose shape Kinde does not publish (`passkey.*`, `customer.*`).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        T::deserialize(&self.data).map_err(|source| HandlerError::BadPayload {
            payload: std::any::type_name::<T>(),
            event_type: self.event_type.clone(),
            source,
        })
    }
}

macro_rules! event_types {
    ($($variant:ident => $name:literal,)+) => {
        /// The event types Kinde documents, with a fallback for the ones it adds later.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum EventType {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )+
            /// A type this crate does not know yet. It is still verified and dispatched.
            Unknown(String),
        }

        impl EventType {
            /// Every known type, in Kinde's documentation order.
            pub const KNOWN: &'static [EventType] = &[$(EventType::$variant),+];

            /// The type for a wire name; an unknown name gives [`EventType::Unknown`].
            pub fn from_name(name: &str) -> Self {
                match name {
                    $($name => EventType::$variant,)+
                    other => EventType::Unknown(other.to_owned()),
                }
            }

            /// The wire name, e.g. `user.created`.
            pub fn as_str(&self) -> &str {
                match self {
                    $(EventType::$variant => $name,)+
                    EventType::Unknown(name) => name,
                }
            }
        }
    };
}

event_types! {
    UserCreated => "user.created",
    UserUpdated => "user.updated",
    UserDeleted => "user.deleted",
    UserAuthenticated => "user.authenticated",
    UserAuthenticationFailed => "user.authentication_failed",
    OrganizationCreated => "organization.created",
    OrganizationUpdated => "organization.updated",
    OrganizationDeleted => "organization.deleted",
    RoleCreated => "role.created",
    RoleUpdated => "role.updated",
    RoleDeleted => "role.deleted",
    PermissionCreated => "permission.created",
    PermissionUpdated => "permission.updated",
    PermissionDeleted => "permission.deleted",
    SubscriberCreated => "subscriber.created",
    AccessRequestCreated => "access_request.created",
    PasskeyAdded => "passkey.added",
    PasskeyRemoved => "passkey.removed",
    CustomerAgreementCancelled => "customer.agreement_cancelled",
    CustomerAgreementCreated => "customer.agreement_created",
    CustomerInvoiceOverdue => "customer.invoice_overdue",
    CustomerMeterUsageUpdated => "customer.meter_usage_updated",
    CustomerPaymentFailed => "customer.payment_failed",
    CustomerPaymentSucceeded => "customer.payment_succeeded",
    CustomerPlanCreated => "customer.plan_created",
    CustomerPlanAssigned => "customer.plan_assigned",
    CustomerPlanChanged => "customer.plan_changed",
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_all_27_types_and_round_trips_names() {
        assert_eq!(EventType::KNOWN.len(), 27);
        for t in EventType::KNOWN {
            assert_eq!(&EventType::from_name(t.as_str()), t);
        }
    }

    #[test]
    fn unknown_type_is_kept() {
        let t = EventType::from_name("widget.exploded");
        assert_eq!(t, EventType::Unknown("widget.exploded".into()));
        assert_eq!(t.to_string(), "widget.exploded");
    }

    #[test]
    fn source_tolerates_new_values() {
        let s: Source = serde_json::from_str("\"webhook\"").unwrap();
        assert_eq!(s, Source::Other("webhook".into()));
        let s: Source = serde_json::from_str("null").unwrap();
        assert_eq!(s, Source::Missing);
    }
}
