//! Typed `data` for every event shape Kinde publishes.
//!
//! Every struct tolerates `null` where Kinde may send it and ignores fields Kinde adds
//! later. `passkey.*` and `customer.*` have no published schema: read those through
//! [`crate::Event::data`] or [`crate::Event::data_as`].

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};

/// A typed `data` shape and the event types that carry it.
pub trait Payload: DeserializeOwned + Send + 'static {
    /// The event types whose `data` has this shape.
    const EVENT_TYPES: &'static [&'static str];
}

/// `null` and a missing field both read as the default (an empty list, say).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

macro_rules! payload {
    ($(#[$doc:meta])* $name:ident { $field:ident: $ty:ty } => [$($t:literal),+]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
        #[non_exhaustive]
        pub struct $name {
            #[allow(missing_docs)]
            pub $field: $ty,
        }

        impl Payload for $name {
            const EVENT_TYPES: &'static [&'static str] = &[$($t),+];
        }
    };
}

payload!(
    /// `data` of `user.created` and `user.updated`.
    UserPayload { user: User } => ["user.created", "user.updated"]
);
payload!(
    /// `data` of `user.deleted`, `user.authenticated` and `user.authentication_failed`.
    UserRefPayload { user: UserRef } => ["user.deleted", "user.authenticated", "user.authentication_failed"]
);
payload!(
    /// `data` of `organization.created` and `organization.updated`.
    OrganizationPayload { organization: Organization } => ["organization.created", "organization.updated"]
);
payload!(
    /// `data` of `organization.deleted`.
    OrganizationRefPayload { organization: OrganizationRef } => ["organization.deleted"]
);
payload!(
    /// `data` of `role.created` and `role.updated`.
    RolePayload { role: Role } => ["role.created", "role.updated"]
);
payload!(
    /// `data` of `role.deleted`.
    RoleRefPayload { role: IdRef } => ["role.deleted"]
);
payload!(
    /// `data` of `permission.created` and `permission.updated`.
    PermissionPayload { permission: Permission } => ["permission.created", "permission.updated"]
);
payload!(
    /// `data` of `permission.deleted`.
    PermissionRefPayload { permission: IdRef } => ["permission.deleted"]
);
payload!(
    /// `data` of `subscriber.created`.
    SubscriberPayload { subscriber: Subscriber } => ["subscriber.created"]
);
payload!(
    /// `data` of `access_request.created`.
    AccessRequestPayload { access_request: AccessRequest } => ["access_request.created"]
);

/// A Kinde user, as sent on `user.created` and `user.updated`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct User {
    /// `kp_` + 32 hex.
    pub id: String,
    /// Absent for users who signed up by phone or username.
    #[serde(default)]
    pub email: Option<String>,
    /// Set only when the tenant uses usernames.
    #[serde(default)]
    pub username: Option<String>,
    /// May be empty or `null`.
    #[serde(default)]
    pub first_name: Option<String>,
    /// May be empty or `null`.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Set only when the tenant collects phone numbers.
    #[serde(default)]
    pub phone: Option<String>,
    /// Whether an admin suspended the user.
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_suspended: bool,
    /// Whether the user must reset their password at the next sign-in.
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_password_reset_requested: bool,
    /// The organizations the user belongs to; `null` reads as none.
    #[serde(default, deserialize_with = "null_as_default")]
    pub organizations: Vec<UserOrganization>,
}

/// One organization membership of a [`User`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct UserOrganization {
    /// `org_` + 11 hex.
    pub code: String,
    /// The user's roles in this organization; `null` reads as none.
    #[serde(default, deserialize_with = "null_as_default")]
    pub roles: Vec<KeyRef>,
    /// The user's permissions in this organization; `null` reads as none.
    #[serde(default, deserialize_with = "null_as_default")]
    pub permissions: Vec<KeyRef>,
}

/// A role or permission as a user carries it: its id and its key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct KeyRef {
    /// A UUID.
    pub id: String,
    /// The key used in code, e.g. `admin` or `read:reports`.
    pub key: String,
}

/// A user known by id only (deleted, authenticated, authentication failed).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct UserRef {
    /// `kp_` + 32 hex.
    pub id: String,
}

/// A Kinde organization, as sent on `organization.created` and `organization.updated`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Organization {
    /// `org_` + 11 hex.
    pub code: String,
    /// The display name.
    #[serde(default)]
    pub name: Option<String>,
    /// The URL-safe handle.
    #[serde(default)]
    pub handle: Option<String>,
    /// Your own id for the organization, when you set one.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Sent on `organization.updated` only.
    #[serde(default)]
    pub is_allow_registrations: Option<bool>,
}

/// An organization known by code only (`organization.deleted`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct OrganizationRef {
    /// `org_` + 11 hex.
    pub code: String,
}

/// A role, as sent on `role.created` and `role.updated`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Role {
    /// A UUID.
    pub id: String,
    /// The key used in code.
    pub key: String,
    /// The display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text, often `null`.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether new users get this role.
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_default_role: bool,
}

/// A permission, as sent on `permission.created` and `permission.updated`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Permission {
    /// A UUID.
    pub id: String,
    /// The key used in code.
    pub key: String,
    /// The display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text, often `null`.
    #[serde(default)]
    pub description: Option<String>,
}

/// A role or permission known by id only (the `*.deleted` events).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct IdRef {
    /// A UUID.
    pub id: String,
}

/// A subscriber, as sent on `subscriber.created`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Subscriber {
    /// The subscriber's id.
    pub id: String,
    /// The address the subscriber signed up with.
    #[serde(default)]
    pub email: Option<String>,
    /// May be `null`.
    #[serde(default)]
    pub first_name: Option<String>,
    /// May be `null`.
    #[serde(default)]
    pub last_name: Option<String>,
    /// The Kinde user behind the subscriber, when there is one.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// An access request, as sent on `access_request.created`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct AccessRequest {
    /// The address access was requested for.
    #[serde(default)]
    pub email: Option<String>,
    /// May be `null`.
    #[serde(default)]
    pub first_name: Option<String>,
    /// May be `null`.
    #[serde(default)]
    pub last_name: Option<String>,
    /// The Kinde user behind the request, when there is one.
    #[serde(default)]
    pub user_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_tolerates_nulls_and_new_fields() {
        let p: UserPayload = serde_json::from_value(json!({"user": {
            "id": "kp_1", "email": null, "first_name": null, "last_name": "",
            "is_suspended": null, "organizations": [{"code": "org_1", "roles": null, "permissions": null}],
            "brand_new_field": {"x": 1}
        }}))
        .unwrap();
        assert_eq!(p.user.id, "kp_1");
        assert_eq!(p.user.organizations[0].roles, vec![]);
        assert!(!p.user.is_suspended);
    }

    #[test]
    fn a_missing_required_field_is_an_error_not_a_panic() {
        let r: Result<RolePayload, _> = serde_json::from_value(json!({"role": {"id": "x"}}));
        assert!(r.is_err());
    }
}
