//! Several replicas of the real binary on one PostgreSQL database: every event handled once
//! however the deliveries and their duplicates are spread, a replica killed under load
//! (its claims taken over after their lease), and the database cut off for a while (503,
//! then 200, nothing acknowledged lost).
//!
//! Needs `DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`); without it each
//! test prints `skipped: DATABASE_URL not set` and passes. Each test makes its own schema
//! (`kw_rep_*`, dropped at the end, also when it fails) and holds [`SERIAL`], so the
//! replicas' pools (3 connections each, plus one for `LISTEN`) share the database with no
//! other test of this binary; nextest runs them serially through a test group.
//!
//! What is observed: each replica's JSON log (the bundled `log-user-created` handler logs
//! every event_id it runs; `event stored` and `duplicate delivery` lines count what each
//! replica received), and the schema's tables read directly (job status, how many times a
//! job was claimed, how many attempts were recorded).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, post, serve_jwks, user_created_jobs};
use kinde_webhooks::samples::sample_claims;
use kinde_webhooks::signing::{SigningKey, new_webhook_id};
use kinde_webhooks::testing::TestSchema;
// Linked so the registry below sees the same handlers as the binary.
use kinde_webhooks_handlers as _;
use serde_json::Value;
use sqlx::{Connection, PgConnection, Row};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const ROUTE: &str = "/api/kinde-webhook";
const OK_BODY: &str = r#"{"status":"ok"}"#;
/// How long replicas may take to print their address (they start together and migrate).
const START: Duration = Duration::from_secs(30);
/// How long acknowledged events may take to be handled once the replicas can work.
const HANDLED: Duration = Duration::from_secs(30);
/// `[inbox] shutdown_grace` in the test configuration.
const GRACE: Duration = Duration::from_secs(2);

/// One test at a time on the database.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `DATABASE_URL`, or `None` after saying the test is skipped.
fn database_url() -> Option<String> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    if url.is_none() {
        eprintln!("skipped: DATABASE_URL not set");
    }
    url
}

/// The test's own schema (dropped at the end, also when the test panics), read directly.
struct Schema(TestSchema);

impl Schema {
    fn new(url: &str) -> Schema {
        Schema(TestSchema::new(url))
    }

    /// A connection (not through any proxy) whose `search_path` is this schema.
    async fn connect(&self) -> PgConnection {
        let mut conn = PgConnection::connect(self.0.url())
            .await
            .expect("connect to DATABASE_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET search_path TO \"{}\"",
            self.0.name()
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    }

    /// Every job of the schema, with its event id.
    async fn jobs(&self) -> Vec<JobRow> {
        let mut conn = self.connect().await;
        let rows = sqlx::query(
            "SELECT e.event_id, j.handler, j.status, j.attempts, j.claim_seq,
                 (SELECT COUNT(*) FROM attempts a WHERE a.event_row = j.event_row AND a.handler = j.handler)
             FROM events e JOIN jobs j ON j.event_row = e.id",
        )
        .fetch_all(&mut conn)
        .await
        .expect("read the jobs");
        let _ = conn.close().await;
        rows.iter()
            .map(|r| JobRow {
                event_id: r.get(0),
                handler: r.get(1),
                status: r.get(2),
                attempts: r.get(3),
                claims: r.get(4),
                recorded: r.get(5),
            })
            .collect()
    }

    /// The claims held right now: (event row, handler, claim number) of every job in flight.
    async fn in_flight(&self) -> HashSet<(i64, String, i64)> {
        let mut conn = self.connect().await;
        let rows = sqlx::query(
            "SELECT event_row, handler, claim_seq FROM jobs WHERE status = 'in_flight'",
        )
        .fetch_all(&mut conn)
        .await
        .expect("read the claims");
        let _ = conn.close().await;
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// How many rows each event_id has in `events` (one route: one each).
    async fn event_rows(&self) -> HashMap<String, i64> {
        let mut conn = self.connect().await;
        let rows = sqlx::query("SELECT event_id, COUNT(*) FROM events GROUP BY event_id")
            .fetch_all(&mut conn)
            .await
            .expect("read the events");
        let _ = conn.close().await;
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    /// Wait until every id in `ids` is stored with all its jobs done and no job of the
    /// schema is left pending, in flight or failed; the jobs then.
    async fn wait_all_done(&self, ids: &HashSet<String>, within: Duration) -> Vec<JobRow> {
        let deadline = Instant::now() + within;
        loop {
            let jobs = self.jobs().await;
            let stored: HashSet<&str> = jobs.iter().map(|j| j.event_id.as_str()).collect();
            let missing = ids
                .iter()
                .filter(|id| !stored.contains(id.as_str()))
                .count();
            let open: Vec<&JobRow> = jobs.iter().filter(|j| j.status != "done").collect();
            if missing == 0 && open.is_empty() {
                return jobs;
            }
            if Instant::now() >= deadline {
                let mut by_status: HashMap<&str, usize> = HashMap::new();
                for j in &open {
                    *by_status.entry(&j.status).or_default() += 1;
                }
                panic!(
                    "after {within:?}: {missing} of {} acknowledged events not stored, \
                     {} jobs not done ({by_status:?}), e.g. {:?}",
                    ids.len(),
                    open.len(),
                    open.iter().take(3).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One (event, handler) job as the store holds it.
#[derive(Debug)]
#[allow(dead_code)] // `handler` and `attempts` show in failure messages (Debug).
struct JobRow {
    event_id: String,
    handler: String,
    status: String,
    attempts: i32,
    /// `claim_seq`: how many times a worker claimed it.
    claims: i64,
    /// Rows in `attempts`: outcomes recorded.
    recorded: i64,
}

/// The replicas' shared settings: a config file, a JWKS served by the test, the schema.
struct Cluster {
    dir: TempDir,
    config: PathBuf,
    issuer: String,
    key: SigningKey,
    /// What the replicas connect to (DATABASE_URL, or a proxy in front of it).
    replica_url: String,
    schema: Schema,
}

impl Cluster {
    /// `handler_timeout` and `lease` as in `[delivery]` / `[inbox]` (lease must be longer).
    async fn new(url: &str, replica_url: &str, handler_timeout: &str, lease: &str) -> Cluster {
        let key = SigningKey::generate().unwrap();
        let issuer = serve_jwks(&key).await;
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::new(url);
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
bind = "127.0.0.1:0"

[delivery]
mode = "inbox"
handler_timeout = "{handler_timeout}"

[store]
backend = "postgres"
schema = "{schema}"
max_connections = 3
statement_timeout = "2s"
connect_timeout = "1s"

[inbox]
workers = 4
lease = "{lease}"
poll_interval = "200ms"
shutdown_grace = "{grace}s"

[[routes]]
path = "{ROUTE}"
patterns = ["*"]

[log]
level = "info"
format = "json"
"#,
                schema = schema.0.name(),
                grace = GRACE.as_secs()
            ),
        )
        .unwrap();
        Cluster {
            dir,
            config,
            issuer,
            key,
            replica_url: replica_url.to_owned(),
            schema,
        }
    }

    /// `n` replicas of `kinde-webhooks serve`, started together; once each printed its address.
    fn start(&self, n: usize) -> Vec<Replica> {
        let mut replicas: Vec<Replica> = (0..n)
            .map(|i| {
                let mut child = Command::new(BIN)
                    .args(["serve", "--config"])
                    .arg(&self.config)
                    .current_dir(self.dir.path())
                    .env_remove("RUST_LOG")
                    .env("DATABASE_URL", &self.replica_url)
                    .env("KINDE_ISSUER_URL", &self.issuer)
                    .env("KINDE_WEBHOOKS_BIND", "127.0.0.1:0")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn kinde-webhooks");
                let output = common::Output::capture(&mut child);
                Replica {
                    name: format!("r{i}"),
                    child,
                    output,
                    base: String::new(),
                    lines: Vec::new(),
                }
            })
            .collect();
        for r in &mut replicas {
            let line = r.output.wait_for("'listening on http://'", START, |l| {
                l.contains("listening on http://")
            });
            let addr = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["addr"].as_str().map(str::to_owned))
                .unwrap_or_else(|| panic!("no addr in {line}"));
            r.base = format!("http://{addr}");
        }
        replicas
    }

    /// A fresh signed user.created event: (event_id, token).
    fn user_created(&self) -> (String, String) {
        let claims = sample_claims("user.created");
        let id = claims["event_id"].as_str().unwrap().to_owned();
        (id, self.key.sign(&claims))
    }
}

/// A running replica whose output is collected line by line; killed on drop.
struct Replica {
    name: String,
    child: Child,
    output: common::Output,
    base: String,
    /// Every line it wrote, once it exited.
    lines: Vec<String>,
}

impl Replica {
    fn url(&self) -> String {
        format!("{}{ROUTE}", self.base)
    }

    /// `kill -9`.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.lines = self.output.collect();
    }

    /// `kill -9` at a moment it holds claims, so a test of the takeover always has one to
    /// take over: freeze it (SIGSTOP), let the other replicas finish what they run (their
    /// handlers take milliseconds), and kill it if jobs are still in flight under the same
    /// claims a moment later (only the frozen replica can hold them); else let it go on
    /// (SIGCONT) and try again. The claims it held when it died.
    async fn kill_holding_claims(&mut self, schema: &Schema) -> usize {
        let signal = |name: &str, pid: u32| {
            let status = Command::new("kill")
                .args([name, &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill {name} failed: {status}");
        };
        let pid = self.child.id();
        for _ in 0..100 {
            signal("-STOP", pid);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let first = schema.in_flight().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let held: Vec<_> = schema
                .in_flight()
                .await
                .into_iter()
                .filter(|claim| first.contains(claim))
                .collect();
            if !held.is_empty() {
                self.kill();
                return held.len();
            }
            signal("-CONT", pid);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} never held a claim in 100 tries", self.name);
    }

    /// `kill -TERM`; its exit status (a kill -9 and a panic if it outlives `within`).
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success(), "kill -TERM failed: {kill}");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.lines = self.output.collect();
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} did not exit within {within:?} of SIGTERM; last output:\n{}",
                    self.name,
                    tail(&self.lines)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM every replica still running: each exits 0 within the grace (plus a margin).
fn stop_all(replicas: &mut [Replica]) {
    for r in replicas.iter_mut() {
        if r.child.try_wait().unwrap().is_none() {
            let status = r.terminate(GRACE + Duration::from_secs(5));
            assert_eq!(
                status.code(),
                Some(0),
                "{} exited with {status}:\n{}",
                r.name,
                tail(&r.lines)
            );
        }
    }
}

fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The JSON log lines whose message is `message`, by event_id.
fn count_messages(lines: &[String], message: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["message"] != message {
            continue;
        }
        // The handler logs event_id itself; request lines carry it in their span.
        let id = v["event_id"]
            .as_str()
            .or_else(|| v["span"]["event_id"].as_str())
            .unwrap_or_default();
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The distinct warning and error messages in these lines, with how often each came.
fn warnings(lines: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["level"] == "WARN" || v["level"] == "ERROR" {
            let message = v["message"].as_str().unwrap_or_default().to_owned();
            *counts.entry(message).or_insert(0) += 1;
        }
    }
    counts
}

/// How many times the bundled handler ran each event, in these lines.
fn handled(lines: &[String]) -> HashMap<String, usize> {
    count_messages(lines, "user created")
}

/// One POST: an event's token to a replica.
#[derive(Debug, Clone)]
struct Delivery {
    event_id: String,
    token: String,
    replica: usize,
    webhook_id: String,
}

/// What a load run saw.
#[derive(Debug, Default)]
struct Sent {
    /// (event_id, replica) of every `200 {"status":"ok"}`.
    acks: Vec<(String, usize)>,
    /// Requests that got no answer (connection refused or reset).
    unanswered: usize,
    /// Answers other than 200 ok: (status, body).
    other: Vec<(u16, String)>,
    took: Duration,
}

impl Sent {
    fn acked(&self) -> HashSet<String> {
        self.acks.iter().map(|(id, _)| id.clone()).collect()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Send `deliveries`, `in_flight` at once, each to its replica. With `failover`, a
/// delivery that got no answer or a 5xx goes to the next replica (as a load balancer and
/// Kinde's retries would), up to once per replica. Once `after` answers came, call
/// `interrupt`; the load keeps going.
async fn send(
    urls: &[String],
    deliveries: Vec<Delivery>,
    in_flight: usize,
    failover: bool,
    after: usize,
    interrupt: impl FnOnce(),
) -> Sent {
    let started = Instant::now();
    let queue = Arc::new(Mutex::new(VecDeque::from(deliveries)));
    let answers = Arc::new(AtomicUsize::new(0));
    let urls: Arc<Vec<String>> = Arc::new(urls.to_vec());
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (queue, answers, client, urls) =
            (queue.clone(), answers.clone(), client.clone(), urls.clone());
        tasks.spawn(async move {
            let mut sent = Sent::default();
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some(d) = next else {
                    return sent;
                };
                let tries = if failover { urls.len() } else { 1 };
                for t in 0..tries {
                    let replica = (d.replica + t) % urls.len();
                    let result = post(&client, &urls[replica], &d.token, &d.webhook_id).await;
                    answers.fetch_add(1, Ordering::SeqCst);
                    match result {
                        Ok((200, body)) if body == OK_BODY => {
                            sent.acks.push((d.event_id.clone(), replica));
                            break;
                        }
                        Ok((status, body)) => {
                            let retry = status >= 500;
                            sent.other.push((status, body));
                            if !retry {
                                break;
                            }
                        }
                        Err(_) => sent.unanswered += 1,
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers.load(Ordering::SeqCst) < after {
        assert!(
            Instant::now() < deadline,
            "only {} answers within 30 s",
            answers.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    interrupt();
    let mut all = Sent::default();
    while let Some(sent) = tasks.join_next().await {
        let sent = sent.unwrap();
        all.acks.extend(sent.acks);
        all.unanswered += sent.unanswered;
        all.other.extend(sent.other);
    }
    all.took = started.elapsed();
    all
}

/// `count` fresh events, spread round-robin over `replicas`, each with its own webhook-id.
fn spread(cluster: &Cluster, count: usize, replicas: usize) -> Vec<Delivery> {
    (0..count)
        .map(|i| {
            let (event_id, token) = cluster.user_created();
            Delivery {
                event_id,
                token,
                replica: i % replicas,
                webhook_id: new_webhook_id(),
            }
        })
        .collect()
}

/// Three replicas, 1,000 events spread over them (24 in flight) and 120 duplicates sent to
/// other replicas alongside the original (same event, new or same webhook-id): every event
/// is stored once and handled exactly once, by one replica, under one claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_handle_every_event_once() {
    let Some(url) = database_url() else { return };
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let cluster = Cluster::new(&url, &url, "5s", "30s").await;
    let mut replicas = cluster.start(3);
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();

    let mut deliveries = Vec::new();
    let mut duplicates = 0;
    for (i, d) in spread(&cluster, 1000, 3).into_iter().enumerate() {
        let mut copies = Vec::new();
        // Every 10th event again at the next replica, right behind it (so both are in
        // flight together), half with the same webhook-id (a Kinde retry), half with a new
        // one (a second webhook); every 30th a third copy at the third replica.
        if i % 10 == 0 {
            let webhook_id = if i % 20 == 0 {
                d.webhook_id.clone()
            } else {
                new_webhook_id()
            };
            copies.push(Delivery {
                replica: (d.replica + 1) % 3,
                webhook_id,
                ..d.clone()
            });
        }
        if i % 30 == 0 {
            copies.push(Delivery {
                replica: (d.replica + 2) % 3,
                webhook_id: new_webhook_id(),
                ..d.clone()
            });
        }
        duplicates += copies.len();
        deliveries.push(d);
        deliveries.extend(copies);
    }
    let total = deliveries.len();
    let ids: HashSet<String> = deliveries.iter().map(|d| d.event_id.clone()).collect();
    let sent = send(&urls, deliveries, 24, false, 0, || {}).await;
    assert!(
        sent.other.is_empty() && sent.unanswered == 0,
        "every delivery must get 200: {} unanswered, others {:?}",
        sent.unanswered,
        &sent.other[..sent.other.len().min(5)]
    );
    assert_eq!(sent.acks.len(), total);

    let jobs = cluster.schema.wait_all_done(&ids, HANDLED).await;
    let handled_at = started.elapsed();
    stop_all(&mut replicas);

    // The store: one row per event, one job per (event, handler), each claimed once and
    // recorded once.
    let rows = cluster.schema.event_rows().await;
    assert_eq!(rows.len(), ids.len(), "events stored");
    assert!(rows.values().all(|&n| n == 1), "an event stored twice");
    assert_eq!(jobs.len(), ids.len() * user_created_jobs());
    let odd: Vec<&JobRow> = jobs
        .iter()
        .filter(|j| j.attempts != 1 || j.claims != 1 || j.recorded != 1)
        .collect();
    assert!(
        odd.is_empty(),
        "{} jobs not claimed, run and recorded exactly once, e.g. {:?}",
        odd.len(),
        &odd[..odd.len().min(5)]
    );

    // The logs: across replicas, each event stored once and handled once.
    let mut all_handled: HashMap<String, usize> = HashMap::new();
    let mut stored_total = 0;
    let mut duplicate_total = 0;
    let mut shares = Vec::new();
    for r in &replicas {
        let h = handled(&r.lines);
        let stored: usize = count_messages(&r.lines, "event stored").values().sum();
        let dup: usize = count_messages(&r.lines, "duplicate delivery; already stored")
            .values()
            .sum();
        let received = sent
            .acks
            .iter()
            .filter(|(_, at)| urls[*at] == r.url())
            .count();
        shares.push(format!(
            "{}: received {received} (stored {stored}, duplicate {dup}), handled {}",
            r.name,
            h.values().sum::<usize>()
        ));
        assert!(
            !h.is_empty(),
            "{} handled nothing: the replicas did not share the work",
            r.name
        );
        assert!(
            !r.lines
                .iter()
                .any(|l| l.contains("after its lease expired")),
            "{}: a late finish:\n{}",
            r.name,
            tail(&r.lines)
        );
        stored_total += stored;
        duplicate_total += dup;
        for (id, n) in h {
            *all_handled.entry(id).or_default() += n;
        }
    }
    assert_eq!(
        stored_total,
        ids.len(),
        "'event stored' lines across replicas"
    );
    assert_eq!(duplicate_total, duplicates, "'duplicate delivery' lines");
    let twice: Vec<(&String, &usize)> = all_handled.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "events not handled exactly once across replicas: {:?}",
        &twice[..twice.len().min(5)]
    );
    assert_eq!(
        all_handled.keys().cloned().collect::<HashSet<_>>(),
        ids,
        "handled = sent"
    );
    eprintln!(
        "3 replicas: {} events + {duplicates} duplicates sent in {:?} ({:.0}/s), all handled \
         {handled_at:?} after start; {}",
        ids.len(),
        sent.took,
        total as f64 / sent.took.as_secs_f64(),
        shares.join("; ")
    );
}

/// Three replicas under load, one killed with SIGKILL: every event acknowledged (by any of
/// them, the killed one included) is handled by the survivors, the killed replica's claims
/// once their lease expires. At least once: a job the killed replica was running may run
/// twice, but only a job that was claimed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_nothing() {
    let Some(url) = database_url() else { return };
    let _serial = SERIAL.lock().await;
    let lease = Duration::from_secs(3);
    let cluster = Cluster::new(&url, &url, "1s", "3s").await;
    let mut replicas = cluster.start(3);
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();

    let deliveries = spread(&cluster, 600, 3);
    let ids: HashSet<String> = deliveries.iter().map(|d| d.event_id.clone()).collect();
    let mut killed = None;
    let victim = &mut replicas[1];
    let schema = &cluster.schema;
    let sent = send(&urls, deliveries, 24, true, 200, || {
        let held = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(victim.kill_holding_claims(schema))
        });
        killed = Some((Instant::now(), held));
    })
    .await;
    let (killed_at, held_at_kill) = killed.unwrap();
    assert!(
        sent.other.iter().all(|(status, _)| *status == 503),
        "unexpected answers {:?}",
        sent.other
    );
    let acked = sent.acked();
    assert_eq!(
        acked, ids,
        "with failover every event is acknowledged by some replica"
    );
    let by_victim: HashSet<&String> = sent
        .acks
        .iter()
        .filter(|(_, at)| *at == 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        by_victim.len() >= 30,
        "the victim acknowledged only {}",
        by_victim.len()
    );

    let jobs = cluster.schema.wait_all_done(&acked, lease + HANDLED).await;
    let all_done_after_kill = killed_at.elapsed();
    stop_all(&mut replicas);

    let mut runs: HashMap<String, usize> = HashMap::new();
    for r in &replicas {
        for (id, n) in handled(&r.lines) {
            *runs.entry(id).or_default() += n;
        }
    }
    let never: Vec<&String> = acked.iter().filter(|id| !runs.contains_key(*id)).collect();
    assert!(
        never.is_empty(),
        "{} acknowledged events never handled, e.g. {:?}",
        never.len(),
        &never[..never.len().min(5)]
    );
    // A second run needs a second claim: only a claim of the dead replica, expired, is
    // claimed again. Every outcome is recorded once (the dead replica recorded none of the
    // claims it lost).
    let reclaimed: HashSet<&str> = jobs
        .iter()
        .filter(|j| j.claims > 1)
        .map(|j| j.event_id.as_str())
        .collect();
    let ran_twice: Vec<&String> = runs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    for id in &ran_twice {
        assert!(
            reclaimed.contains(id.as_str()),
            "{id} ran twice without being claimed again"
        );
    }
    let unrecorded: Vec<&JobRow> = jobs.iter().filter(|j| j.recorded != 1).collect();
    assert!(
        unrecorded.is_empty(),
        "jobs whose outcome is not recorded exactly once: {:?}",
        &unrecorded[..unrecorded.len().min(5)]
    );
    // It died holding claims (one job per user.created event): each was claimed again.
    assert!(
        reclaimed.len() >= held_at_kill,
        "the killed replica held {held_at_kill} claims, only {} events were claimed again",
        reclaimed.len()
    );
    eprintln!(
        "kill -9 under load: {} events acknowledged ({} by the killed replica, {} answers lost \
         and retried elsewhere, {} 503s) in {:?}; it died holding {held_at_kill} claims; {} \
         claims taken over after the {lease:?} lease, {} events ran twice; all done \
         {all_done_after_kill:?} after the kill",
        acked.len(),
        by_victim.len(),
        sent.unanswered,
        sent.other.len(),
        sent.took,
        reclaimed.len(),
        ran_twice.len(),
    );
}

/// A TCP proxy in front of PostgreSQL that the test can cut (listener closed, every open
/// connection closed) and restore on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: String,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            tasks: Arc::default(),
        };
        proxy.accept(listener);
        proxy
    }

    fn accept(&self, listener: TcpListener) {
        let (tasks, upstream) = (self.tasks.clone(), self.upstream.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accepting.abort_handle());
    }

    /// Close the listener and every connection: the database is unreachable.
    async fn cut(&self) {
        // Twice: a connection accepted while the first round was aborting is caught next.
        for _ in 0..2 {
            for task in self.tasks.lock().unwrap().drain(..) {
                task.abort();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Listen again on the same port.
    async fn restore(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("proxy: rebinding {}: {e}; retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("proxy: cannot listen on {} again: {e}", self.addr),
            }
        };
        self.accept(listener);
    }
}

/// Where the host and port of a `postgres://` URL are: `start..end`.
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (host, end)
}

/// `host:port` of a `postgres://` URL (port 5432 when it names none).
fn host_port(url: &str) -> String {
    let (start, end) = authority(url);
    let authority = &url[start..end];
    if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    }
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let (start, end) = authority(url);
    format!("{}{addr}{}", &url[..start], &url[end..])
}

/// GET /readyz: status and body.
async fn readyz(base: &str) -> (u16, String) {
    match client().get(format!("{base}/readyz")).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Two replicas reach PostgreSQL through a proxy the test cuts for a few seconds: before,
/// deliveries get 200; during the cut, 503 `store_unavailable` within about
/// `connect_timeout` and /readyz 503; after it, /readyz 200 again and deliveries 200
/// (those refused during the cut included, as Kinde would retry them). Every acknowledged
/// event is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_unreachable_for_a_while_loses_nothing() {
    let Some(url) = database_url() else { return };
    let _serial = SERIAL.lock().await;
    let proxy = Proxy::start(host_port(&url)).await;
    let replica_url = through(&url, proxy.addr);
    assert_ne!(replica_url, url, "the replicas must go through the proxy");
    let cluster = Cluster::new(&url, &replica_url, "1s", "3s").await;
    let mut replicas = cluster.start(2);
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    for r in &replicas {
        assert_eq!(
            readyz(&r.base).await.0,
            200,
            "{} ready before the cut",
            r.name
        );
    }

    // Before: acknowledged; the cut comes right after, perhaps with some still to handle.
    let before = send(&urls, spread(&cluster, 150, 2), 16, false, 0, || {}).await;
    assert!(
        before.other.is_empty() && before.unanswered == 0,
        "before the cut: {:?}, {} unanswered",
        before.other,
        before.unanswered
    );
    let mut acked = before.acked();
    assert_eq!(acked.len(), 150);

    proxy.cut().await;
    let cut_at = Instant::now();
    let refused = spread(&cluster, 30, 2);
    let during = send(&urls, refused.clone(), 8, false, 0, || {}).await;
    assert!(
        during.acks.is_empty() && during.unanswered == 0,
        "during the cut nothing can be stored: {} acknowledged, {} unanswered",
        during.acks.len(),
        during.unanswered
    );
    assert!(
        during
            .other
            .iter()
            .all(|(status, body)| *status == 503 && body.contains("store_unavailable")),
        "during the cut: {:?}",
        during.other
    );
    // 8 at a time, each refused after about connect_timeout (1 s).
    let per_request = during.took / (30 / 8 + 1);
    assert!(
        per_request < Duration::from_secs(4),
        "503 took {per_request:?} per request"
    );
    for r in &replicas {
        let (status, body) = readyz(&r.base).await;
        assert_eq!(status, 503, "{} /readyz during the cut: {body}", r.name);
        assert!(body.contains("store_not_writable"), "{body}");
    }
    let outage = Duration::from_secs(4);
    if let Some(left) = outage.checked_sub(cut_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let cut_for = cut_at.elapsed();
    proxy.restore().await;
    let restored_at = Instant::now();

    let deadline = restored_at + Duration::from_secs(20);
    for r in &replicas {
        loop {
            let (status, body) = readyz(&r.base).await;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready 20 s after the database came back: {status} {body}",
                r.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ready_after = restored_at.elapsed();

    // After: Kinde's retries of the refused deliveries, and new events.
    let mut again = refused;
    again.extend(spread(&cluster, 150, 2));
    let after = send(&urls, again, 16, false, 0, || {}).await;
    assert!(
        after.other.is_empty() && after.unanswered == 0,
        "after the cut: {:?}, {} unanswered",
        after.other,
        after.unanswered
    );
    acked.extend(after.acked());
    assert_eq!(acked.len(), 330);

    cluster.schema.wait_all_done(&acked, HANDLED).await;
    let all_done = restored_at.elapsed();
    stop_all(&mut replicas);
    let mut runs: HashMap<String, usize> = HashMap::new();
    let mut said: BTreeMap<String, usize> = BTreeMap::new();
    for r in &replicas {
        for (id, n) in handled(&r.lines) {
            *runs.entry(id).or_default() += n;
        }
        for (message, n) in warnings(&r.lines) {
            *said.entry(message).or_default() += n;
        }
    }
    let never: Vec<&String> = acked.iter().filter(|id| !runs.contains_key(*id)).collect();
    assert!(
        never.is_empty(),
        "{} acknowledged events never handled, e.g. {:?}",
        never.len(),
        &never[..never.len().min(5)]
    );
    eprintln!("warnings and errors the replicas logged: {said:#?}");
    eprintln!(
        "database cut for {cut_for:?}: {} refused with 503 ({:?} each, 8 at a time); ready \
         {ready_after:?} after it came back; {} acknowledged events all handled {all_done:?} \
         after ({} ran twice)",
        during.other.len(),
        per_request,
        acked.len(),
        runs.values().filter(|n| **n > 1).count()
    );
}
