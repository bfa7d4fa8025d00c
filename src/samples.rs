//! Sample `data` for every known event type, shaped as Kinde sends it. Used by `send`,
//! the `dev` server's demo events, and tests.

use serde_json::{Value, json};

use crate::event::EventType;

/// Sample `data` for `event_type`; an unknown type gets an empty object.
pub fn sample_data(event_type: &str) -> Value {
    let user_id = "kp_0f3c2a9b8e7d4c6b5a4f3e2d1c0b9a87";
    let org = "org_5a1b2c3d4e5";
    let role_id = "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9";
    let permission_id = "0b6f1f3e-2c4d-4e5f-8a9b-0c1d2e3f4a5b";
    let customer =
        json!({"id": "customer_2c4e6a8b0d1f3e5a", "agreement_id": "agreement_9a8b7c6d5e4f"});
    match EventType::from_name(event_type) {
        EventType::UserCreated | EventType::UserUpdated => json!({"user": {
            "id": user_id, "email": "sam@example.com", "username": "sam", "first_name": "Sam",
            "last_name": "Rivera", "phone": null, "is_suspended": false, "is_password_reset_requested": false,
            "organizations": [{"code": org, "roles": [{"id": role_id, "key": "admin"}],
                               "permissions": [{"id": permission_id, "key": "read:reports"}]}]}}),
        EventType::UserDeleted
        | EventType::UserAuthenticated
        | EventType::UserAuthenticationFailed => {
            json!({"user": {"id": user_id}})
        }
        EventType::OrganizationCreated => {
            json!({"organization": {"code": org, "name": "Acme Corp", "handle": "acme", "external_id": null}})
        }
        EventType::OrganizationUpdated => json!({"organization": {"code": org, "name": "Acme Corp",
            "handle": "acme", "external_id": null, "is_allow_registrations": true}}),
        EventType::OrganizationDeleted => json!({"organization": {"code": org}}),
        EventType::RoleCreated | EventType::RoleUpdated => {
            json!({"role": {"id": role_id, "key": "billing-admin",
            "name": "Billing admin", "description": null, "is_default_role": false}})
        }
        EventType::RoleDeleted => json!({"role": {"id": role_id}}),
        EventType::PermissionCreated | EventType::PermissionUpdated => json!({"permission": {
            "id": permission_id, "key": "read:reports", "name": "Read reports", "description": null}}),
        EventType::PermissionDeleted => json!({"permission": {"id": permission_id}}),
        EventType::SubscriberCreated => {
            json!({"subscriber": {"id": "sub_7c1e2d3f4a5b", "email": "sam@example.com",
            "first_name": "Sam", "last_name": "Rivera", "user_id": user_id}})
        }
        EventType::AccessRequestCreated => json!({"access_request": {"email": "sam@example.com",
            "first_name": "Sam", "last_name": "Rivera", "user_id": user_id}}),
        EventType::PasskeyAdded | EventType::PasskeyRemoved => {
            json!({"user": {"id": user_id}, "passkey": {"id": "passkey_3c5e7a9b1d2f"}})
        }
        EventType::CustomerPaymentFailed
        | EventType::CustomerPaymentSucceeded
        | EventType::CustomerInvoiceOverdue => {
            json!({"customer": customer, "invoice": {"amount": 4900, "currency": "usd"}})
        }
        EventType::CustomerMeterUsageUpdated => {
            json!({"customer": customer, "meter": {"key": "api_calls", "usage": 1200}})
        }
        EventType::CustomerPlanCreated
        | EventType::CustomerPlanAssigned
        | EventType::CustomerPlanChanged => {
            json!({"customer": customer, "plan": {"code": "pro", "name": "Pro"}})
        }
        EventType::CustomerAgreementCreated | EventType::CustomerAgreementCancelled => {
            json!({"customer": customer})
        }
        EventType::Unknown(_) => json!({}),
    }
}

/// A complete claims object for `event_type`: sample data, a fresh `event_id`, the
/// timestamp now. `user.authenticated*` also get an `ip_address`.
pub fn sample_claims(event_type: &str) -> Value {
    let mut claims = json!({"type": event_type, "data": sample_data(event_type)});
    if event_type.starts_with("user.authentica") {
        claims["ip_address"] = json!("203.0.113.24");
    }
    crate::signing::complete_claims(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::*;

    #[test]
    fn every_known_type_has_data_and_published_shapes_parse() {
        for t in EventType::KNOWN {
            let data = sample_data(t.as_str());
            assert!(data.as_object().is_some_and(|o| !o.is_empty()), "{t}");
        }
        fn fits<T: Payload>() {
            for t in T::EVENT_TYPES {
                serde_json::from_value::<T>(sample_data(t)).unwrap_or_else(|e| panic!("{t}: {e}"));
            }
        }
        fits::<UserPayload>();
        fits::<UserRefPayload>();
        fits::<OrganizationPayload>();
        fits::<OrganizationRefPayload>();
        fits::<RolePayload>();
        fits::<RoleRefPayload>();
        fits::<PermissionPayload>();
        fits::<PermissionRefPayload>();
        fits::<SubscriberPayload>();
        fits::<AccessRequestPayload>();
    }
}
