//! Every example in `examples/` runs to the end and shows what it is for. `cargo test`
//! builds the examples beside the test binaries; this runs them.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// `target/<profile>/examples/<name>`, beside this test binary's `deps/`.
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let path = profile_dir.join("examples").join(name);
    path.exists().then_some(path)
}

/// Run the example; assert exit 0 within a minute and that stdout holds every `expected`.
fn run(name: &str, expected: &[&str]) {
    let Some(path) = example(name) else {
        println!(
            "skipped: example {name} is not built (`cargo test` builds examples; `cargo build --examples`)"
        );
        return;
    };
    let started = Instant::now();
    let mut child = Command::new(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    while child.try_wait().expect("wait for the example").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("example {name} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("example output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "example {name} failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    for line in expected {
        assert!(
            stdout.contains(line),
            "example {name} did not print {line:?}:\n{stdout}"
        );
    }
}

#[test]
fn split_vs_grouped_acknowledges_an_unrouted_event_without_dispatch() {
    run(
        "split_vs_grouped",
        &[
            "handlers run: user-directory",
            "handlers run: org-directory",
            "outcome=\"unrouted\"} 1",
        ],
    );
}

#[test]
fn typed_handler_turns_a_wrong_shape_into_a_500() {
    run(
        "typed_handler",
        &[
            "sync-user: INSERT user",
            "<- 500 {\"error\":\"handler_failed\"}",
        ],
    );
}

#[test]
fn database_handler_stores_each_event_once_across_retries() {
    run(
        "database_handler",
        &["3 rows for 3 events and 5 deliveries"],
    );
}

#[test]
fn forward_http_retries_the_downstream_and_delivers_once() {
    run(
        "forward_http",
        &[
            "forward-http: done after 2 attempt(s)",
            "2 events stored, each once",
        ],
    );
}
