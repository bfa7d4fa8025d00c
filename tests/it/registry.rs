//! The inline registry: an empty one is a start-up error that says how to fix it.

use kinde_webhooks::Registry;

#[test]
fn an_empty_registry_names_the_handlers_crate() {
    let message = Registry::builder().build().unwrap_err().to_string();
    assert!(message.contains("kinde_webhooks_handlers"), "{message}");
    // This test binary links no handler crate, so the inventory is empty as well.
    let message = Registry::from_inventory().unwrap_err().to_string();
    assert!(message.contains("kinde_webhooks_handlers"), "{message}");
}
