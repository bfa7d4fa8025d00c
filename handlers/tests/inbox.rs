//! The durable inbox through the real binary: every event answered 200 is handled even when
//! the server is killed (`kill -9`) under load or stopped with SIGTERM, a duplicate across a
//! restart runs its handler once, one inbox file serves one server, and the `inbox` commands
//! (`list`, `show`, `replay`, `purge`) work over a real store.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, post, serve_jwks, user_created_jobs};
use kinde_webhooks::samples::sample_claims;
// Linked so the registry below sees the same handlers as the binary.
use kinde_webhooks::signing::{SigningKey, new_webhook_id};
use kinde_webhooks_handlers as _;
use serde_json::{Value, json};
use tempfile::TempDir;

const ROUTE: &str = "/api/kinde-webhook";
/// How long a server may take to print its address, or a CLI command to finish.
const START: Duration = Duration::from_secs(20);
/// How long the events answered 200 may take to be handled after a (re)start.
const HANDLED: Duration = Duration::from_secs(30);
/// `[inbox] shutdown_grace` in the test configuration.
const GRACE: Duration = Duration::from_secs(2);
const OK_BODY: &str = r#"{"status":"ok"}"#;

/// The bundled user.created handler's job in `inbox show --json` output.
fn bundled_job(shown: &Value) -> &Value {
    shown[0]["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["handler"] == "log-user-created"))
        .expect("the bundled log-user-created job")
}

/// A tempdir holding a config (inbox mode, `inbox.db` beside it) and a JWKS served by the test.
struct Fixture {
    dir: TempDir,
    config: PathBuf,
    issuer: String,
    key: SigningKey,
}

impl Fixture {
    async fn new(workers: usize) -> Fixture {
        let key = SigningKey::generate().unwrap();
        let issuer = serve_jwks(&key).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
bind = "127.0.0.1:0"

[delivery]
mode = "inbox"
handler_timeout = "5s"

[store]
path = "inbox.db"

[inbox]
workers = {workers}
lease = "30s"
poll_interval = "200ms"
shutdown_grace = "{grace}s"

[[routes]]
path = "{ROUTE}"
patterns = ["*"]

[log]
level = "info"
format = "human"
"#,
                grace = GRACE.as_secs()
            ),
        )
        .unwrap();
        Fixture {
            dir,
            config,
            issuer,
            key,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env("KINDE_ISSUER_URL", &self.issuer)
            .env("KINDE_WEBHOOKS_BIND", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// `kinde-webhooks serve` on this config, once it printed its address.
    fn serve(&self) -> Server {
        let mut child = self
            .command(&["serve"])
            .spawn()
            .expect("spawn kinde-webhooks");
        let output = common::Output::capture(&mut child);
        let mut server = Server {
            child,
            output,
            base: String::new(),
        };
        let line = server.wait_for("'listening on http://'", START, |l| {
            l.contains("listening on http://")
        });
        let start = line.find("http://").unwrap();
        server.base = line[start..].split_whitespace().next().unwrap().to_owned();
        server
    }

    /// A CLI command on this config (`--config` appended), bounded by [`START`].
    fn cli(&self, args: &[&str]) -> Output {
        let mut child = self.command(args).spawn().expect("spawn kinde-webhooks");
        let read = |mut stream: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = stream.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = read(Box::new(child.stdout.take().unwrap()));
        let stderr = read(Box::new(child.stderr.take().unwrap()));
        let status = wait_within(&mut child, START)
            .unwrap_or_else(|| panic!("`kinde-webhooks {}` did not finish", args.join(" ")));
        Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }

    /// A CLI command that must succeed; its stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`kinde-webhooks {}` failed ({}):\n{stdout}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `inbox list --status STATUS --json --limit 1000`, parsed (JSON lines).
    fn list(&self, status: &str) -> Vec<Value> {
        self.cli_ok(&[
            "inbox", "list", "--status", status, "--json", "--limit", "1000",
        ])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
    }

    /// The event ids `inbox list --status STATUS` shows.
    fn listed(&self, status: &str) -> HashSet<String> {
        self.list(status)
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Poll `inbox list --status pending` until it is empty.
    async fn wait_nothing_pending(&self) {
        let deadline = Instant::now() + HANDLED;
        loop {
            let pending = self.listed("pending");
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} events still pending after {HANDLED:?}",
                pending.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A fresh signed user.created event: (event_id, token).
    fn user_created(&self) -> (String, String) {
        let claims = sample_claims("user.created");
        let id = claims["event_id"].as_str().unwrap().to_owned();
        (id, self.key.sign(&claims))
    }
}

/// A running `kinde-webhooks serve` whose output is collected line by line; killed on drop.
struct Server {
    child: Child,
    output: common::Output,
    base: String,
}

impl Server {
    fn url(&self) -> String {
        format!("{}{ROUTE}", self.base)
    }

    /// The first line (seen before or arriving within `within`) that satisfies `pred`.
    fn wait_for(&mut self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.output.wait_for(what, within, pred)
    }

    /// Take the lines that arrived, waiting at most `wait` for the first one.
    fn pump(&mut self, wait: Duration) {
        self.output.pump(wait);
    }

    /// How many times the user.created handler logged each event id in this run so far.
    fn handled(&mut self) -> HashMap<String, usize> {
        self.pump(Duration::ZERO);
        handled(&self.output.seen)
    }

    /// Once the process is gone: every line it wrote (the readers run to end of file).
    fn collect(&mut self) -> Vec<String> {
        self.output.collect()
    }

    /// `kill -9`; every line it wrote.
    fn kill(&mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.collect()
    }

    /// `kill -TERM`; its exit status, how long it took to exit, and every line it wrote.
    fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration, Vec<String>) {
        let sent = Instant::now();
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success(), "kill -TERM failed: {kill}");
        match wait_within(&mut self.child, within) {
            Some(status) => {
                let took = sent.elapsed();
                (status, took, self.collect())
            }
            None => {
                let lines = self.kill();
                panic!(
                    "the server did not exit within {within:?} of SIGTERM; output:\n{}",
                    lines.join("\n")
                );
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's exit status, or `None` if it still runs after `within`.
fn wait_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many times the bundled user.created handler logged each event id:
/// `... user created event_type=user.created event_id=<id> user_id=...`.
fn handled<'a>(lines: impl IntoIterator<Item = &'a String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        let Some(at) = line.find("user created") else {
            continue;
        };
        let fields = &line[at..];
        if let Some(start) = fields.find("event_id=") {
            let id = fields[start + "event_id=".len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default();
            *counts.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// Wait until every id in `ids` was handled, in `earlier` runs' output or `server`'s.
fn wait_handled(server: &mut Server, earlier: &[String], ids: &HashSet<String>) {
    let deadline = Instant::now() + HANDLED;
    loop {
        let counts = handled(earlier.iter().chain(&server.output.seen));
        let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} of {} events answered 200 were never handled within {HANDLED:?}, e.g. {:?}; \
                 last output:\n{}",
                missing.len(),
                ids.len(),
                &missing[..missing.len().min(5)],
                server.output.seen[server.output.seen.len().saturating_sub(40)..].join("\n")
            );
        }
        server.pump(Duration::from_millis(100));
    }
}

/// POST one token that must be acknowledged.
async fn post_ok(url: &str, token: &str, webhook_id: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answer = post(&client, url, token, webhook_id).await;
    assert_eq!(answer, Ok((200, OK_BODY.to_owned())));
}

/// What a load run saw.
#[derive(Debug, Default)]
struct Load {
    /// The event ids answered `200 {"status":"ok"}`: Kinde would not send them again.
    acked: HashSet<String>,
    /// Requests that got no answer (connection refused or reset): not acknowledged.
    unanswered: usize,
    /// Answers other than 200.
    other: Vec<(u16, String)>,
}

/// Send `events` with `in_flight` requests at once; once `after` answers came, call
/// `interrupt` (the load keeps going: later requests fail to connect), then let the rest
/// finish.
async fn load(
    url: &str,
    events: Vec<(String, String)>,
    in_flight: usize,
    after: usize,
    interrupt: impl FnOnce(),
) -> Load {
    let queue = Arc::new(Mutex::new(VecDeque::from(events)));
    let answers = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (queue, answers, client, url) = (
            queue.clone(),
            answers.clone(),
            client.clone(),
            url.to_owned(),
        );
        tasks.spawn(async move {
            let mut results = Vec::new();
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some((id, token)) = next else {
                    return results;
                };
                let result = post(&client, &url, &token, &new_webhook_id()).await;
                if result.is_ok() {
                    answers.fetch_add(1, Ordering::SeqCst);
                }
                results.push((id, result));
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while answers.load(Ordering::SeqCst) < after {
        assert!(
            Instant::now() < deadline,
            "only {} answers within 20 s",
            answers.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    interrupt();
    let mut load = Load::default();
    while let Some(results) = tasks.join_next().await {
        for (id, result) in results.unwrap() {
            match result {
                Ok((200, body)) if body == OK_BODY => {
                    load.acked.insert(id);
                }
                Ok(answer) => load.other.push(answer),
                Err(_) => load.unanswered += 1,
            }
        }
    }
    load
}

/// `kill -9` under load, three times over one inbox: every event answered 200 is handled
/// (by the killed run or the next), nothing stays pending and `inbox list` shows them done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let started = Instant::now();
    let fx = Fixture::new(8).await;
    let mut server = fx.serve();
    // Output of the runs that ended; handlers may have logged there.
    let mut earlier: Vec<String> = Vec::new();
    // Acknowledged events the killed run had not handled yet: the restarts' work.
    let mut left_to_restarts = 0;
    for cycle in 1..=3 {
        let events: Vec<(String, String)> = (0..500).map(|_| fx.user_created()).collect();
        let url = server.url();
        let mut killed = Vec::new();
        let load = load(&url, events, 32, 150, || killed = server.kill()).await;
        let by_killed = handled(&killed);
        let left = load
            .acked
            .iter()
            .filter(|id| !by_killed.contains_key(*id))
            .count();
        left_to_restarts += left;
        earlier.extend(killed);
        assert!(
            load.other.iter().all(|(status, _)| *status == 503),
            "cycle {cycle}: unexpected answers {:?}",
            load.other
        );
        assert!(
            load.acked.len() >= 150 && load.acked.len() < 500,
            "cycle {cycle}: the kill should land mid-load: {} acknowledged, {} unanswered",
            load.acked.len(),
            load.unanswered
        );

        server = fx.serve();
        wait_handled(&mut server, &earlier, &load.acked);
        fx.wait_nothing_pending().await;
        let done = fx.listed("done");
        let not_done: Vec<&String> = load.acked.difference(&done).collect();
        assert!(
            not_done.is_empty(),
            "cycle {cycle}: {} acknowledged events are not listed done, e.g. {:?}",
            not_done.len(),
            &not_done[..not_done.len().min(5)]
        );
        for status in ["failed", "dead"] {
            assert_eq!(fx.listed(status), HashSet::new(), "cycle {cycle}: {status}");
        }
        eprintln!(
            "cycle {cycle}: {} acknowledged ({left} left to the restart), {} unanswered, \
             all handled ({:?} so far)",
            load.acked.len(),
            load.unanswered,
            started.elapsed()
        );
    }
    assert!(
        left_to_restarts > 0,
        "the kills never left acknowledged work to a restart: the test proved nothing"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// SIGTERM while events flow: the server exits 0 within the shutdown grace, leaves no job
/// in flight, and every event answered 200 is handled by it or after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_cleanly_and_loses_nothing() {
    let fx = Fixture::new(8).await;
    let mut server = fx.serve();
    let events: Vec<(String, String)> = (0..400).map(|_| fx.user_created()).collect();
    let url = server.url();
    let mut stopped = None;
    let load = load(&url, events, 16, 100, || {
        // Margin over the grace for process start-up and teardown under a busy test run.
        stopped = Some(server.terminate(GRACE + Duration::from_secs(3)));
    })
    .await;
    let (status, took, first_run) = stopped.unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; output:\n{}",
        first_run.join("\n")
    );
    assert!(
        took <= GRACE + Duration::from_secs(1),
        "exited {took:?} after SIGTERM; shutdown_grace is {GRACE:?}"
    );
    assert!(
        first_run.iter().any(|l| l.contains("shutting down")),
        "{}",
        first_run.join("\n")
    );
    assert!(
        load.other.iter().all(|(status, _)| *status == 503),
        "unexpected answers {:?}",
        load.other
    );
    assert!(load.acked.len() >= 100, "{} acknowledged", load.acked.len());

    let mut server = fx.serve();
    wait_handled(&mut server, &first_run, &load.acked);
    fx.wait_nothing_pending().await;
    let done = fx.listed("done");
    assert!(load.acked.is_subset(&done), "acknowledged events not done");
    assert!(
        !server
            .output
            .seen
            .iter()
            .any(|l| l.contains("left in flight")),
        "a graceful shutdown leaves no job in flight:\n{}",
        server.output.seen.join("\n")
    );
    let (status, _, _) = server.terminate(GRACE + Duration::from_secs(3));
    assert_eq!(status.code(), Some(0));
    eprintln!(
        "sigterm: exited in {took:?}; {} acknowledged, {} unanswered",
        load.acked.len(),
        load.unanswered
    );
}

/// `inbox list | show | replay | purge` over the store a real server wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_commands_over_a_real_store() {
    let fx = Fixture::new(8).await;
    let mut server = fx.serve();

    // A type nobody handles: acknowledged, stored as skipped.
    let widget = sample_claims("widget.exploded");
    let widget_id = widget["event_id"].as_str().unwrap().to_owned();
    post_ok(&server.url(), &fx.key.sign(&widget), "msg_widget").await;
    let (user_id, user_token) = fx.user_created();
    post_ok(&server.url(), &user_token, "msg_user").await;
    server.wait_for("the user.created handler", START, |l| {
        l.contains("user created") && l.contains(&user_id)
    });

    let skipped = fx.list("skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["event_id"], widget_id.as_str());
    assert_eq!(skipped[0]["event_type"], "widget.exploded");
    assert_eq!(skipped[0]["status"], "skipped");
    assert_eq!(skipped[0]["route"], ROUTE);
    assert_eq!(skipped[0]["webhook_id"], "msg_widget");

    let shown: Value =
        serde_json::from_str(&fx.cli_ok(&["inbox", "show", &widget_id, "--json"])).unwrap();
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["claims"], widget, "the signed claims, as received");
    assert_eq!(shown[0]["status"], "skipped");
    assert_eq!(shown[0]["jobs"], json!([]));

    // Server running: it holds the inbox, so replay only schedules and the server runs it.
    let out = fx.cli_ok(&["inbox", "replay", &user_id]);
    assert_eq!(
        out.trim(),
        format!(
            "scheduled {} job(s); the running server picks them up",
            user_created_jobs()
        )
    );
    let deadline = Instant::now() + HANDLED;
    while server.handled().get(&user_id) != Some(&2) {
        assert!(
            Instant::now() < deadline,
            "the server did not run the replayed job:\n{}",
            server.output.seen.join("\n")
        );
        server.pump(Duration::from_millis(50));
    }

    let (status, _, _) = server.terminate(GRACE + Duration::from_secs(3));
    assert_eq!(status.code(), Some(0));

    // No handler matches widget.exploded: nothing to schedule, nothing to run.
    let out = fx.cli_ok(&["inbox", "replay", "--skipped", "--json"]);
    assert_eq!(out.trim(), r#"{"ran_here":null,"scheduled":0}"#);
    let out = fx.cli_ok(&["inbox", "replay", "--skipped"]);
    assert_eq!(
        out.trim(),
        "nothing to replay: no registered handler matches the selected events, or there are none"
    );
    // A mistyped event id is an error, not a quiet success.
    let out = fx.cli(&["inbox", "replay", "event_nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no event event_nope in the inbox"));

    // Server stopped: the command runs the job itself.
    let out = fx.cli(&["inbox", "replay", &user_id, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let summary: Value = stdout
        .lines()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("scheduled").is_some())
        })
        .unwrap_or_else(|| panic!("no JSON summary in:\n{stdout}"));
    let n = user_created_jobs();
    assert_eq!(summary, json!({"scheduled": n, "ran_here": n}));
    let shown: Value =
        serde_json::from_str(&fx.cli_ok(&["inbox", "show", &user_id, "--json"])).unwrap();
    let job = bundled_job(&shown);
    assert_eq!(job["handler"], "log-user-created");
    assert_eq!(job["status"], "done");
    assert_eq!(
        job["history"].as_array().unwrap().len(),
        3,
        "received, replayed by the server, replayed here: {job}"
    );

    // Purge everything finished: the done user.created and the skipped widget.
    let out = fx.cli_ok(&["inbox", "purge", "--older-than", "0s", "--json"]);
    let purged: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(purged["purged"].as_u64().unwrap() > 0, "{purged}");
    assert_eq!(purged, json!({"purged": 2}));
    assert_eq!(fx.listed("done"), HashSet::new());
    assert_eq!(fx.listed("skipped"), HashSet::new());
}

/// `inbox replay <id>` with no server running runs the handler in this process: its log
/// line (with the event_id) must show in the command's output, as it would in the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_replay_without_a_server_shows_the_handler_log() {
    let fx = Fixture::new(8).await;
    let mut server = fx.serve();
    let (id, token) = fx.user_created();
    post_ok(&server.url(), &token, "msg_user").await;
    server.wait_for("the handler", START, |l| {
        l.contains("user created") && l.contains(&id)
    });
    let (status, _, _) = server.terminate(GRACE + Duration::from_secs(3));
    assert_eq!(status.code(), Some(0));

    let out = fx.cli(&["inbox", "replay", &id, "--json"]);
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{output}");
    assert!(
        output.contains(&format!(
            r#"{{"ran_here":{n},"scheduled":{n}}}"#,
            n = user_created_jobs()
        )),
        "{output}"
    );
    let lines: Vec<String> = output.lines().map(str::to_owned).collect();
    assert_eq!(
        handled(&lines).get(&id),
        Some(&1),
        "`inbox replay` ran the job here: the handler's log line should be in its output:\n{output}"
    );
}

/// One SQLite inbox serves one server: a second refuses to start and says why, and the
/// first keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_inbox_refuses_to_start() {
    let fx = Fixture::new(8).await;
    let mut first = fx.serve();

    let out = fx.cli(&["serve"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second server must not run: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stderr.contains("another kinde-webhooks server"), "{stderr}");
    assert!(!stdout.contains("listening on"), "{stdout}");

    let (id, token) = fx.user_created();
    post_ok(&first.url(), &token, "msg_after_refusal").await;
    first.wait_for("the handler", START, |l| {
        l.contains("user created") && l.contains(&id)
    });
}

/// The same event (same token, so same event_id) before and after a restart, under two
/// webhook-ids: both answered 200, the handler runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_across_a_restart_is_handled_once() {
    let fx = Fixture::new(8).await;
    let (id, token) = fx.user_created();

    let mut server = fx.serve();
    post_ok(&server.url(), &token, "msg_first").await;
    server.wait_for("the handler", START, |l| {
        l.contains("user created") && l.contains(&id)
    });
    let (status, _, first_run) = server.terminate(GRACE + Duration::from_secs(3));
    assert_eq!(status.code(), Some(0));

    let mut server = fx.serve();
    post_ok(&server.url(), &token, "msg_second").await;
    server.wait_for("the duplicate noticed", START, |l| {
        l.contains("duplicate delivery") && l.contains(&id)
    });
    // A later event handled means the workers went past anything the duplicate could queue.
    let (later, later_token) = fx.user_created();
    post_ok(&server.url(), &later_token, "msg_later").await;
    server.wait_for("the later event handled", START, |l| {
        l.contains("user created") && l.contains(&later)
    });
    fx.wait_nothing_pending().await;
    let (status, _, second_run) = server.terminate(GRACE + Duration::from_secs(3));
    assert_eq!(status.code(), Some(0));

    let counts = handled(first_run.iter().chain(&second_run));
    assert_eq!(counts.get(&id), Some(&1), "handled once across both runs");

    let shown_json: Value =
        serde_json::from_str(&fx.cli_ok(&["inbox", "show", &id, "--json"])).unwrap();
    let shown = shown_json.as_array().unwrap();
    assert_eq!(shown.len(), 1, "stored once: {shown:?}");
    assert_eq!(shown[0]["webhook_id"], "msg_first");
    assert_eq!(shown[0]["status"], "done");
    let history = bundled_job(&shown_json)["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "one attempt: {history:?}");
}
