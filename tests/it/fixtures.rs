//! Each sample payload in `tests/fixtures/`, signed and delivered, reaches the handlers of
//! its type with its data intact and typed.

use chrono::{DateTime, Timelike};
use kinde_webhooks::payload::{OrganizationPayload, RolePayload, UserPayload, UserRefPayload};
use kinde_webhooks::signing::SigningKey;
use kinde_webhooks::{Event, EventType, HandlerError, Registry, Source};
use serde_json::Value;

use crate::utils::{JwksServer, ROUTE, Recorder, TestServer, fixture, fixture_names, key, ok};

/// A receiver with one recorder per event group and one for everything.
struct Setup {
    key: SigningKey,
    _jwks: JwksServer,
    server: TestServer,
    users: Recorder,
    orgs: Recorder,
    roles: Recorder,
    billing: Recorder,
    all: Recorder,
}

impl Setup {
    async fn start() -> Self {
        let key = key();
        let jwks = JwksServer::start(&[&key]).await;
        let (users, orgs, roles, billing, all) = (
            Recorder::new(),
            Recorder::new(),
            Recorder::new(),
            Recorder::new(),
            Recorder::new(),
        );
        let registry = Registry::builder()
            .handler("users", &["user.*"], users.clone())
            .handler("orgs", &["organization.*"], orgs.clone())
            .handler("roles", &["role.*"], roles.clone())
            .handler("billing", &["customer.*"], billing.clone())
            .handler("all", &["*"], all.clone());
        let server = TestServer::with_handlers(&jwks, registry).await;
        Self {
            key,
            _jwks: jwks,
            server,
            users,
            orgs,
            roles,
            billing,
            all,
        }
    }

    /// Sign the fixture as it is and POST it with `webhook-id: msg_<name>`; assert 200.
    async fn deliver(&self, name: &str) {
        let token = self.key.sign(&fixture(name));
        let webhook_id = format!("msg_{name}");
        let (status, body) = self.server.post(ROUTE, token, Some(&webhook_id)).await;
        assert_eq!((status, body), (200, ok()), "{name}");
    }

    /// The one event the group recorder `group` saw, after checking that the catch-all saw
    /// the same single event and every other group recorder saw nothing.
    fn only_in(&self, group: &Recorder) -> Event {
        let groups = [&self.users, &self.orgs, &self.roles, &self.billing];
        for other in groups.into_iter().filter(|r| !std::ptr::eq(*r, group)) {
            assert_eq!(other.types(), Vec::<String>::new());
        }
        let event = group.only();
        assert_eq!(self.all.only().event_id, event.event_id);
        event
    }
}

/// What every delivered fixture keeps: envelope, delivery facts and the signed claims.
fn assert_envelope(event: &Event, name: &str) {
    let sample = fixture(name);
    assert_eq!(event.event_type, sample["type"]);
    assert_eq!(event.event_id, sample["event_id"]);
    assert_eq!(event.data, sample["data"]);
    assert_eq!(
        event.timestamp,
        DateTime::parse_from_rfc3339(sample["timestamp"].as_str().unwrap()).unwrap()
    );
    assert_eq!(
        event.delivery.webhook_id.as_deref(),
        Some(&*format!("msg_{name}"))
    );
    assert_eq!(event.delivery.route, ROUTE);
    let claims: Value = serde_json::from_str(&event.claims).unwrap();
    assert_eq!(claims, sample);
}

#[tokio::test(flavor = "multi_thread")]
async fn user_created_reaches_user_handlers_with_a_typed_user() {
    let s = Setup::start().await;
    s.deliver("user.created").await;

    let event = s.only_in(&s.users);
    assert_envelope(&event, "user.created");
    assert_eq!(event.kind(), EventType::UserCreated);
    assert_eq!(event.source, Source::Admin);
    assert_eq!(event.timestamp.to_rfc3339(), "2026-02-03T12:00:00+00:00");
    assert_eq!(event.event_timestamp, Some(event.timestamp));
    assert_eq!(event.ip_address, None);

    let user = event.payload::<UserPayload>().unwrap().user;
    assert_eq!(user.id, "kp_1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a");
    assert_eq!(user.email, None);
    assert_eq!(user.username, None);
    assert_eq!(user.phone, None);
    assert_eq!(user.first_name.as_deref(), Some("Test"));
    assert_eq!(user.last_name.as_deref(), Some(""));
    assert!(!user.is_suspended);
    assert!(!user.is_password_reset_requested);
    assert_eq!(user.organizations.len(), 1);
    let org = &user.organizations[0];
    assert_eq!(org.code, "org_7b8c9d0e1f2");
    let roles: Vec<_> = org.roles.iter().map(|r| (&*r.id, &*r.key)).collect();
    assert_eq!(roles, [("9c8b7a6f-5e4d-4c3b-8a2f-1e0d9c8b7a6f", "admin")]);
    let permissions: Vec<_> = org.permissions.iter().map(|p| (&*p.id, &*p.key)).collect();
    assert_eq!(
        permissions,
        [("0b6f1f3e-2c4d-4e5f-8a9b-0c1d2e3f4a5b", "read:reports")]
    );
    assert!(matches!(
        event.payload::<RolePayload>(),
        Err(HandlerError::WrongPayload { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn user_updated_keeps_microseconds_and_offset() {
    let s = Setup::start().await;
    s.deliver("user.updated").await;

    let event = s.only_in(&s.users);
    assert_envelope(&event, "user.updated");
    assert_eq!(event.kind(), EventType::UserUpdated);
    assert_eq!(local_time(&event), (36_000, 592_145, (17, 41, 45)));
    assert_eq!(
        event
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        "2024-05-01T17:41:45.592145+10:00"
    );
    assert_eq!(event.event_timestamp, None);

    let user = event.payload::<UserPayload>().unwrap().user;
    assert_eq!(user.id, "kp_0f3c2a9b8e7d4c6b5a4f3e2d1c0b9a87");
    assert_eq!(user.email.as_deref(), Some("sam@example.com"));
    assert_eq!(user.username.as_deref(), Some("sam"));
    assert_eq!(user.first_name.as_deref(), Some("Sam"));
    assert_eq!(user.last_name.as_deref(), Some("Rivera"));
    assert_eq!(user.organizations.len(), 1);
    assert_eq!(user.organizations[0].code, "org_5a1b2c3d4e5");
    // `null` roles and permissions read as none.
    assert!(user.organizations[0].roles.is_empty());
    assert!(user.organizations[0].permissions.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn user_authenticated_carries_the_user_ref_and_ip_address() {
    let s = Setup::start().await;
    s.deliver("user.authenticated").await;

    let event = s.only_in(&s.users);
    assert_envelope(&event, "user.authenticated");
    assert_eq!(event.kind(), EventType::UserAuthenticated);
    assert_eq!(event.source, Source::User);
    assert_eq!(event.ip_address.as_deref(), Some("203.0.113.24"));
    assert_eq!(local_time(&event), (0, 101_000, (8, 15, 2)));
    let user = event.payload::<UserRefPayload>().unwrap().user;
    assert_eq!(user.id, "kp_0f3c2a9b8e7d4c6b5a4f3e2d1c0b9a87");
}

#[tokio::test(flavor = "multi_thread")]
async fn organization_updated_reaches_organization_handlers_typed() {
    let s = Setup::start().await;
    s.deliver("organization.updated").await;

    let event = s.only_in(&s.orgs);
    assert_envelope(&event, "organization.updated");
    assert_eq!(event.kind(), EventType::OrganizationUpdated);
    assert_eq!(event.source, Source::Api);
    assert_eq!(local_time(&event), (-5 * 3600, 999_999, (23, 59, 59)));
    let org = event.payload::<OrganizationPayload>().unwrap().organization;
    assert_eq!(org.code, "org_5a1b2c3d4e5");
    assert_eq!(org.name.as_deref(), Some("Acme Corp"));
    assert_eq!(org.handle.as_deref(), Some("acme"));
    assert_eq!(org.external_id, None);
    assert_eq!(org.is_allow_registrations, Some(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn role_created_reaches_role_handlers_typed() {
    let s = Setup::start().await;
    s.deliver("role.created").await;

    let event = s.only_in(&s.roles);
    assert_envelope(&event, "role.created");
    assert_eq!(event.kind(), EventType::RoleCreated);
    assert_eq!(event.source, Source::Admin);
    let role = event.payload::<RolePayload>().unwrap().role;
    assert_eq!(role.id, "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9");
    assert_eq!(role.key, "billing-admin");
    assert_eq!(role.name.as_deref(), Some("Billing admin"));
    assert_eq!(role.description, None);
    assert!(!role.is_default_role);
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_payment_failed_keeps_its_raw_data() {
    let s = Setup::start().await;
    s.deliver("customer.payment_failed").await;

    let event = s.only_in(&s.billing);
    assert_envelope(&event, "customer.payment_failed");
    assert_eq!(event.kind(), EventType::CustomerPaymentFailed);
    assert_eq!(event.source, Source::Api);
    assert_eq!(local_time(&event), (0, 500_000, (0, 0, 3)));
    assert_eq!(event.data["customer"]["id"], "customer_2c4e6a8b0d1f3e5a");
    assert_eq!(
        event.data["customer"]["agreement_id"],
        "agreement_9a8b7c6d5e4f"
    );
    assert_eq!(event.data["invoice"]["amount"], 4900);
    assert_eq!(event.data["invoice"]["currency"], "usd");
    assert!(matches!(
        event.payload::<UserPayload>(),
        Err(HandlerError::WrongPayload { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_is_acknowledged_and_reaches_the_catch_all() {
    let s = Setup::start().await;
    let names = fixture_names();
    assert_eq!(names.len(), 6, "{names:?}");
    for name in &names {
        s.deliver(name).await;
    }
    let types: Vec<String> = names
        .iter()
        .map(|n| fixture(n)["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(s.all.types(), types);
    let group_total = [&s.users, &s.orgs, &s.roles, &s.billing]
        .iter()
        .map(|r| r.events().len())
        .sum::<usize>();
    assert_eq!(group_total, names.len());
}

/// The offset (seconds east of UTC), the microseconds and the wall-clock time of the
/// event's timestamp: neither the offset nor the precision may be lost.
fn local_time(event: &Event) -> (i32, u32, (u32, u32, u32)) {
    let t = event.timestamp;
    (
        t.offset().local_minus_utc(),
        t.timestamp_subsec_micros(),
        (t.hour(), t.minute(), t.second()),
    )
}

/// `typed` (serialised) holds only what `raw` holds: every field equal, except that a
/// `null` or missing list in `raw` reads as an empty one.
fn assert_contained(typed: &Value, raw: &Value, path: &str) {
    match (typed, raw) {
        (Value::Object(t), Value::Object(r)) => {
            for (k, v) in t {
                let at = format!("{path}.{k}");
                assert_contained(v, r.get(k).unwrap_or(&Value::Null), &at);
            }
        }
        (Value::Array(t), Value::Array(r)) => {
            assert_eq!(t.len(), r.len(), "{path}");
            for (i, (tv, rv)) in t.iter().zip(r).enumerate() {
                assert_contained(tv, rv, &format!("{path}[{i}]"));
            }
        }
        (Value::Array(t), Value::Null) => assert!(t.is_empty(), "{path}"),
        _ => assert_eq!(typed, raw, "{path}"),
    }
}

/// Parse `data` as `T`, serialise it, parse it again: the same value, and nothing the
/// payload did not say.
fn round_trip<T>(data: &Value, what: &str)
where
    T: kinde_webhooks::payload::Payload + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let typed: T = serde_json::from_value(data.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let json = serde_json::to_value(&typed).unwrap();
    let again: T = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(again, typed, "{what}");
    assert_contained(&json, data, what);
}

/// Round-trip the `data` of `event_type` through the typed payload its type has, if any.
/// Returns whether it had one.
fn round_trip_typed(event_type: &str, data: &Value, what: &str) -> bool {
    use kinde_webhooks::payload::*;
    match EventType::from_name(event_type) {
        EventType::UserCreated | EventType::UserUpdated => round_trip::<UserPayload>(data, what),
        EventType::UserDeleted
        | EventType::UserAuthenticated
        | EventType::UserAuthenticationFailed => round_trip::<UserRefPayload>(data, what),
        EventType::OrganizationCreated | EventType::OrganizationUpdated => {
            round_trip::<OrganizationPayload>(data, what)
        }
        EventType::OrganizationDeleted => round_trip::<OrganizationRefPayload>(data, what),
        EventType::RoleCreated | EventType::RoleUpdated => round_trip::<RolePayload>(data, what),
        EventType::RoleDeleted => round_trip::<RoleRefPayload>(data, what),
        EventType::PermissionCreated | EventType::PermissionUpdated => {
            round_trip::<PermissionPayload>(data, what)
        }
        EventType::PermissionDeleted => round_trip::<PermissionRefPayload>(data, what),
        EventType::SubscriberCreated => round_trip::<SubscriberPayload>(data, what),
        EventType::AccessRequestCreated => round_trip::<AccessRequestPayload>(data, what),
        _ => return false,
    }
    true
}

#[test]
fn every_fixture_round_trips_through_its_typed_payload() {
    let mut typed = 0;
    for name in fixture_names() {
        let sample = fixture(&name);
        let event_type = sample["type"].as_str().unwrap();
        assert!(
            !matches!(EventType::from_name(event_type), EventType::Unknown(_)),
            "{name}: {event_type} is one of the 27 known types"
        );
        if round_trip_typed(event_type, &sample["data"], &name) {
            typed += 1;
        }
    }
    // customer.payment_failed has no published schema; the other five are typed.
    assert_eq!(typed, 5);
}

#[test]
fn the_sample_of_every_known_type_round_trips_and_tolerates_nulls() {
    for event_type in EventType::KNOWN {
        let name = event_type.as_str();
        assert_eq!(EventType::from_name(name), event_type.clone());
        let data = kinde_webhooks::samples::sample_data(name);
        round_trip_typed(name, &data, name);
        // Kinde adds fields and sends nulls for lists: neither breaks the typed read.
        let mut grown = data.clone();
        if let Some(obj) = grown.as_object_mut()
            && let Some((_, inner)) = obj.iter_mut().next()
            && let Some(inner) = inner.as_object_mut()
        {
            inner.insert("added_by_kinde_later".into(), serde_json::json!({"x": 1}));
            for list in ["organizations", "roles", "permissions"] {
                if inner.contains_key(list) {
                    inner.insert(list.into(), Value::Null);
                }
            }
        }
        round_trip_typed(name, &grown, &format!("{name} (grown)"));
    }
}
