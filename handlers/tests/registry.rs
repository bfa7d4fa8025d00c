//! The bundled handlers register themselves through `inventory` once the crate is linked.
//! (Handlers you add beside them do not break this test: it checks the bundled ones only.)

use kinde_webhooks::Registry;
use kinde_webhooks_handlers as _;

#[test]
fn inventory_holds_every_bundled_handler() {
    let registry = Registry::from_inventory().expect("bundled handlers are linked");
    let bundled = [
        (
            "log-user-created",
            "user.created",
            "kinde_webhooks_handlers::user_created",
        ),
        (
            "log-user-updated",
            "user.updated",
            "kinde_webhooks_handlers::user_updated",
        ),
        (
            "log-organization-events",
            "organization.*",
            "kinde_webhooks_handlers::organization",
        ),
    ];
    for (name, pattern, module) in bundled {
        let entry = registry
            .entries()
            .iter()
            .find(|e| &*e.name == name)
            .unwrap_or_else(|| panic!("{name} is registered"));
        let patterns: Vec<String> = entry.patterns.iter().map(ToString::to_string).collect();
        assert_eq!(patterns, [pattern], "{name}");
        assert_eq!(entry.module, module, "{name}");
        assert!(registry.table()[pattern].contains(&name.to_owned()));
    }
    let org_handlers: Vec<_> = registry
        .handlers_for("organization.deleted")
        .map(|e| e.name.to_string())
        .collect();
    assert!(
        org_handlers.contains(&"log-organization-events".to_owned()),
        "{org_handlers:?}"
    );
}
