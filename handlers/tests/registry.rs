//! The bundled handlers register themselves through `inventory` once the crate is linked.

use kinde_webhooks::Registry;
use kinde_webhooks_handlers as _;

#[test]
fn inventory_holds_every_bundled_handler() {
    let registry = Registry::from_inventory().expect("bundled handlers are linked");
    let mut names: Vec<String> = registry
        .entries()
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "log-organization-events",
            "log-user-created",
            "log-user-updated"
        ]
    );
    let table = registry.table();
    assert_eq!(table["organization.*"], ["log-organization-events"]);
    assert_eq!(registry.handlers_for("organization.deleted").count(), 1);
    assert_eq!(registry.handlers_for("role.created").count(), 0);
}
