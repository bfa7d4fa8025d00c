//! Helpers shared by the tests that spawn the real `kinde-webhooks` binary (`binary.rs`,
//! `inbox.rs`, `replicas.rs`): its path, a JWKS endpoint served by the test, a reader of a
//! spawned process's output, and a POST of a token.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::get;
use kinde_webhooks::Registry;
use kinde_webhooks::signing::SigningKey;

/// The `kinde-webhooks` binary built for these tests.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_kinde-webhooks");

/// A JWKS endpoint on 127.0.0.1:0 serving `key`; returns its base URL.
pub(crate) async fn serve_jwks(key: &SigningKey) -> String {
    let jwks = key.jwks();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || async move { Json(jwks) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// POST a token with a `webhook-id`; the status and body, or why no answer came.
// inbox.rs and replicas.rs post; binary.rs compiles this module without using it.
#[allow(dead_code)]
pub(crate) async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    webhook_id: &str,
) -> Result<(u16, String), String> {
    let response = client
        .post(url)
        .header("content-type", "application/jwt")
        .header("webhook-id", webhook_id)
        .body(token.to_owned())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// How many jobs one user.created event gets: the bundled handler, plus any a user added.
#[allow(dead_code)] // as `post`
pub(crate) fn user_created_jobs() -> usize {
    Registry::from_inventory()
        .expect("handlers linked")
        .handlers_for("user.created")
        .count()
}

/// A child's stdout and stderr, read line by line on two threads into one channel.
pub(crate) struct Output {
    lines: Receiver<String>,
    readers: Vec<JoinHandle<()>>,
    /// Every line taken from the channel so far, in arrival order.
    pub(crate) seen: Vec<String>,
}

impl Output {
    /// Start reading `child`'s piped stdout and stderr (both must be `Stdio::piped()`).
    pub(crate) fn capture(child: &mut Child) -> Output {
        let (tx, lines) = channel();
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            }));
        }
        Output {
            lines,
            readers,
            seen: Vec::new(),
        }
    }

    /// The first line (seen before or arriving within `within`) that satisfies `pred`.
    pub(crate) fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        if let Some(line) = self.seen.iter().find(|l| pred(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {what} within {within:?}; output so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Take the lines that arrived, waiting at most `wait` for the first one.
    // Only inbox.rs polls output; binary.rs compiles this module without using it.
    #[allow(dead_code)]
    pub(crate) fn pump(&mut self, wait: Duration) {
        match self.lines.recv_timeout(wait) {
            Ok(line) => self.seen.push(line),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Once the process is gone: every line it wrote (the readers run to end of file).
    // Only inbox.rs stops servers and reads all they wrote; binary.rs compiles this module
    // without using it.
    #[allow(dead_code)]
    pub(crate) fn collect(&mut self) -> Vec<String> {
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}
