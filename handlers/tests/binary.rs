//! The real `kinde-webhooks` binary, spawned as a user runs it: `serve` against a JWKS
//! served by the test, `dev` with its built-in issuer, and `send`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, Output, serve_jwks};
use kinde_webhooks::samples::sample_claims;
use kinde_webhooks::signing::SigningKey;

const WAIT: Duration = Duration::from_secs(20);

/// A spawned binary whose output is read line by line; killed on drop.
struct Spawned {
    child: Child,
    output: Output,
}

impl Spawned {
    fn start(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Spawned {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(dir)
            .env_remove("KINDE_ISSUER_URL")
            .env_remove("RUST_LOG")
            .env("KINDE_WEBHOOKS_BIND", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kinde-webhooks");
        let output = Output::capture(&mut child);
        Spawned { child, output }
    }

    /// The first line (seen before or arriving within [`WAIT`]) that satisfies `pred`.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.output.wait_for(what, WAIT, pred)
    }

    /// The `http://127.0.0.1:PORT` the server printed it listens on.
    fn base_url(&mut self) -> String {
        let line = self.wait_for("'listening on http://'", |l| {
            l.contains("listening on http://")
        });
        let start = line.find("http://").unwrap();
        line[start..].split_whitespace().next().unwrap().to_owned()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(url: &str, token: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/jwt")
        .header("webhook-id", "msg_test_1")
        .body(token.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml")
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_verifies_a_kinde_token_and_the_bundled_handler_logs_its_event_id() {
    let key = SigningKey::generate().unwrap();
    let issuer = serve_jwks(&key).await;
    let dir = tempfile::tempdir().unwrap();
    // The shipped config, copied so its inbox file lands in the temporary folder.
    let config = dir.path().join("config.toml");
    std::fs::copy(repo_config(), &config).unwrap();
    let mut server = Spawned::start(
        &["serve", "--config", config.to_str().unwrap()],
        dir.path(),
        &[("KINDE_ISSUER_URL", &issuer)],
    );
    let base = server.base_url();
    let claims = sample_claims("user.created");
    let event_id = claims["event_id"].as_str().unwrap().to_owned();
    let token = key.sign(&claims);

    let (status, body) = post(&format!("{base}/api/kinde-webhook"), &token).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let logged = server.wait_for("the handler's log line", |l| {
        l.contains("user created") && l.contains(&event_id)
    });
    assert!(
        logged.contains("kp_0f3c2a9b8e7d4c6b5a4f3e2d1c0b9a87"),
        "{logged}"
    );
    assert!(
        !server.output.seen.iter().any(|l| l.contains(&token)),
        "the token must never be logged"
    );

    // One character of the signature changed.
    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let (status, body) = post(
        &format!("{base}/api/kinde-webhook"),
        &String::from_utf8(forged).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"invalid_signature"}"#)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_demonstrates_the_flow_and_send_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let keys = keys.to_str().unwrap();
    let mut server = Spawned::start(&["dev"], dir.path(), &[("KINDE_WEBHOOKS_DEV_DIR", keys)]);
    let base = server.base_url();
    server.wait_for("'dev: ready'", |l| l.contains("dev: ready"));
    for event_type in ["user.created", "user.updated", "organization.created"] {
        let line = server.wait_for(event_type, |l| {
            l.starts_with(&format!("dev: {event_type} "))
        });
        assert!(line.ends_with(r#"-> 200 {"status":"ok"}"#), "{line}");
    }
    server.wait_for("the organization handler's log", |l| {
        l.contains("organization event") && l.contains("org_5a1b2c3d4e5")
    });
    assert!(Path::new(keys).join("signing-key.pem").exists());

    let url = format!("{base}/api/kinde-webhook");
    let send = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env("KINDE_WEBHOOKS_DEV_DIR", keys)
            .output()
            .unwrap()
    };
    let out = send(&[
        "send",
        "user.updated",
        "--url",
        &url,
        "--event-id",
        "event_0123456789abcdef0123456789abcdef",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("-> 200"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for("user.updated handled", |l| {
        l.contains("user updated") && l.contains("event_0123456789abcdef0123456789abcdef")
    });

    // A type nobody handles is acknowledged, not an error; `send` warns it is not Kinde's.
    let out = send(&["send", "widget.exploded", "--url", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("widget.exploded is not one of Kinde's 27 event types")
            && !stderr.contains("did you mean"),
        "{stderr}"
    );
    // A typo gets the type it was probably meant to be.
    let out = send(&["send", "user.creatd", "--url", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(did you mean user.created?)"), "{stderr}");

    // --repeat ends with a summary line; --repeat 0 is refused.
    let out = send(&[
        "send",
        "user.created",
        "--url",
        &url,
        "--repeat",
        "5",
        "--concurrency",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("-> 200").count(), 5, "{stdout}");
    assert!(
        stdout.contains("sent 5 events in") && stdout.contains("5 x 200; latency p50"),
        "{stdout}"
    );
    let out = send(&["send", "user.created", "--url", &url, "--repeat", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 is not in 1.."));

    // A payload file holds the whole claims object; event_id and timestamp are filled in.
    let payload = dir.path().join("role.json");
    std::fs::write(&payload, r#"{"type":"role.created","data":{"role":{"id":"r1","key":"k","name":"n","is_default_role":false}}}"#).unwrap();
    let out = send(&[
        "send",
        "--payload",
        payload.to_str().unwrap(),
        "--url",
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // --kid signs under another kid: the receiver does not know it (401), `send` exits 1.
    let out = send(&["send", "user.created", "--url", &url, "--kid", "aa:bb"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#"401"#));
    // --key signs with any PEM: here the dev key's own file, so it verifies.
    let pem = Path::new(keys).join("signing-key.pem");
    let out = send(&[
        "send",
        "user.created",
        "--url",
        &url,
        "--key",
        pem.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A receiver that refuses the event makes `send` exit 1.
    let out = send(&["send", "user.created", "--url", &format!("{base}/nope")]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn serve_without_an_issuer_says_how_to_set_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("KINDE_ISSUER_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kinde.issuer_url") && stderr.contains("KINDE_ISSUER_URL"),
        "{stderr}"
    );
}

#[test]
fn no_command_prints_help() {
    let out = Command::new(BIN).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Usage:") && text.contains("serve") && text.contains("dev"),
        "{text}"
    );
}

#[test]
fn handlers_command_prints_the_table() {
    let out = Command::new(BIN).arg("handlers").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    // Handlers you add for the same pattern share its line.
    assert!(
        stdout.lines().any(|l| l.starts_with("organization.*")
            && l.contains("log-organization-events (kinde_webhooks_handlers::organization)")),
        "{stdout}"
    );
    assert!(
        stdout.contains("user.created") && stdout.contains("log-user-created"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_explains_the_verdict_step_by_step() {
    let key = SigningKey::generate().unwrap();
    let issuer = serve_jwks(&key).await;
    let dir = tempfile::tempdir().unwrap();
    let verify = |token: String| {
        let (dir, issuer) = (dir.path().to_owned(), issuer.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["verify", &token, "--issuer", &issuer])
                .current_dir(dir)
                .output()
                .unwrap()
        })
    };
    let token = key.sign(&sample_claims("user.created"));

    let out = verify(token.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for step in [
        "✓ header: alg RS256",
        "✓ kid found",
        "✓ signature verifies",
        "✓ payload: type user.created",
    ] {
        assert!(stdout.contains(step), "{step:?} in:\n{stdout}");
    }
    // Other user.created handlers you add are listed too, in any order.
    let would_run = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("handlers that would run: "))
        .unwrap_or_else(|| panic!("a handlers line in:\n{stdout}"));
    assert!(
        would_run.split(", ").any(|h| h == "log-user-created"),
        "{stdout}"
    );

    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let out = verify(String::from_utf8(forged).unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("✗ signature"), "{stdout}");
    assert!(
        stdout.contains(r#"the server answers 401 {"error":"invalid_signature"}"#),
        "{stdout}"
    );

    let other = SigningKey::generate().unwrap();
    let out = verify(other.sign(&sample_claims("user.created")))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("is not in that key set"), "{stdout}");
    assert!(
        stdout.contains(r#"answers 401 {"error":"unknown_key"}"#),
        "{stdout}"
    );

    let out = verify("a.b".to_owned()).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("✗ header"), "{stdout}");
    assert!(stdout.contains("answers 400"), "{stdout}");

    // A blank token (what an empty stdin gives) is a usage error that says so.
    let out = verify(" ".to_owned()).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no token given"), "{stderr}");
}

#[test]
fn send_with_a_pkcs1_key_says_how_to_convert_it() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("rsa.pem");
    // The block type is what is checked first; the body need not be a real key.
    std::fs::write(
        &pem,
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["send", "user.created", "--print", "--key"])
        .arg(&pem)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("openssl pkcs8 -topk8 -nocrypt"), "{stderr}");
}

#[test]
fn handlers_command_lists_config_built_forwarders_and_refuses_a_taken_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let handlers = |name: &str| {
        let toml = format!(
            "[[forward.nats]]\nname = \"{name}\"\npatterns = [\"user.*\"]\nurl = \"nats://127.0.0.1:9\""
        );
        std::fs::write(&config, toml).unwrap();
        // Listing does not connect: nothing listens on port 9.
        Command::new(BIN)
            .args(["handlers", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = handlers("to-nats");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("user.*          to-nats (config: [[forward.nats]])"),
        "{stdout}"
    );
    let out = handlers("log-user-created");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("two handlers are named \"log-user-created\"")
            && stderr.contains("config: [[forward.nats]]"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_validates_the_config_and_reaches_the_jwks() {
    let key = SigningKey::generate().unwrap();
    let issuer = serve_jwks(&key).await;
    let dir = tempfile::tempdir().unwrap();
    let check = |issuer: Option<String>| {
        let dir = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(BIN);
            cmd.arg("check")
                .current_dir(dir)
                .env_remove("KINDE_ISSUER_URL");
            if let Some(issuer) = issuer {
                cmd.env("KINDE_ISSUER_URL", issuer);
            }
            cmd.output().unwrap()
        })
    };
    let out = check(Some(issuer)).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("1 signing key(s)") && stdout.contains(key.kid()),
        "{stdout}"
    );

    // Nothing listens on port 9 of loopback: the JWKS cannot be reached.
    let out = check(Some("http://127.0.0.1:9".to_owned())).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("✗ JWKS") && stdout.contains("fix: check the issuer is your Kinde domain"),
        "{stdout}"
    );

    let out = check(None).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KINDE_ISSUER_URL"));
}

#[tokio::test]
async fn check_reaches_a_postgres_store_and_says_when_it_cannot() {
    let key = SigningKey::generate().unwrap();
    let issuer = serve_jwks(&key).await;
    let dir = tempfile::tempdir().unwrap();
    let check = |url: String| {
        let (dir, issuer) = (dir.path().to_owned(), issuer.clone());
        tokio::task::spawn_blocking(move || {
            let config = dir.join("pg.toml");
            let schema = format!("kw_check_{}", std::process::id());
            std::fs::write(
                &config,
                format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\nschema = \"{schema}\"\nconnect_timeout = \"1s\"\n"),
            )
            .unwrap();
            Command::new(BIN)
                .args(["--config", config.to_str().unwrap(), "check"])
                .env("KINDE_ISSUER_URL", issuer)
                .env_remove("DATABASE_URL")
                .output()
                .unwrap()
        })
    };

    // Nothing listens on port 9 of loopback.
    let out = check("postgres://postgres@127.0.0.1:9/test".into())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("✗ store"), "{stdout}");
    assert!(
        stdout.contains("✓ JWKS"),
        "the other checks still run: {stdout}"
    );

    let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("skipped: DATABASE_URL not set (the reachable half of this test)");
        return;
    };
    let out = check(url.clone()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("✓ store: PostgreSQL schema kw_check_"),
        "{stdout}"
    );
    // `check` created the schema as `serve` would: drop it.
    let schema = format!("kw_check_{}", std::process::id());
    let status = Command::new("psql")
        .args([
            &url,
            "-qc",
            &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        ])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("note: could not drop schema {schema} (psql missing?)");
    }
}

#[test]
fn verify_without_an_issuer_uses_the_dev_key_of_this_folder() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    std::fs::create_dir(dir.path().join(".kinde-dev")).unwrap();
    std::fs::write(
        dir.path().join(".kinde-dev/signing-key.pem"),
        key.to_pem().unwrap(),
    )
    .unwrap();
    let verify = |token: &str| {
        Command::new(BIN)
            .args(["verify", token])
            .current_dir(dir.path())
            .env_remove("KINDE_ISSUER_URL")
            .env_remove("KINDE_WEBHOOKS_DEV_DIR")
            .output()
            .unwrap()
    };

    let out = verify(&key.sign(&sample_claims("user.created")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("keys from the dev key in .kinde-dev"),
        "{stdout}"
    );
    assert!(stdout.contains("✓ signature verifies"), "{stdout}");
    assert!(!stdout.contains("another issuer"), "{stdout}");

    let stranger = SigningKey::generate().unwrap();
    let out = verify(&stranger.sign(&sample_claims("user.created")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("is not in that key set"), "{stdout}");
}

/// The server's resident memory, from `/proc/<pid>/status` (`VmRSS`), in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Bodies sent one byte per chunk (and never finished) cost what they hold, not a piece of
/// a read buffer per byte: 40 of them, 60,000 chunks each, leave the server's memory about
/// where it was (kept as they arrived, they took tens of megabytes).
#[tokio::test]
async fn bodies_in_one_byte_chunks_cost_what_they_hold() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let mut server = Spawned::start(
        &["dev", "--no-demo"],
        dir.path(),
        &[("KINDE_WEBHOOKS_DEV_DIR", keys.to_str().unwrap())],
    );
    let base = server.base_url();
    server.wait_for("'dev: ready'", |l| l.contains("dev: ready"));
    let addr = base.trim_start_matches("http://").to_owned();
    let before = rss_kib(server.child.id());
    let head =
        "POST /api/kinde-webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let piece = "1\r\na\r\n".repeat(100);
    let mut open = Vec::new();
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        open.push(stream);
    }
    // 600 pieces of 100 one-byte chunks each, round the connections: the server reads a
    // few chunks at a time, as from a sender that trickles them.
    for _ in 0..600 {
        for stream in &mut open {
            stream.write_all(piece.as_bytes()).await.unwrap();
        }
        tokio::task::yield_now().await;
    }
    // Let the server take in what was sent (well within the 10 s body deadline).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown_mib = rss_kib(server.child.id()).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 10,
        "40 bodies of 60,000 one-byte chunks grew the server by {grown_mib} MiB"
    );
    drop(open);
}
