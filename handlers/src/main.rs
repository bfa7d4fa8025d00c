//! The bundled server: `kinde-webhooks serve | dev | send | handlers`.

use std::process::ExitCode;

// Link the handlers crate so its `inventory` registrations are kept.
use kinde_webhooks_handlers as _;

fn main() -> ExitCode {
    kinde_webhooks::cli::main(kinde_webhooks_handlers::init)
}
