//! The store contract, run against both backends with the same assertions (SQLite in a
//! temporary file, PostgreSQL in a schema of its own), then the inbox end to end over
//! PostgreSQL through the real HTTP server.
//!
//! PostgreSQL parts need `DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`);
//! without it they print `skipped: DATABASE_URL not set` and only SQLite runs. Every test
//! here holds [`PG`] while it runs, so they use the database one at a time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kinde_webhooks::config::StoreConfig;
use kinde_webhooks::inbox::store::{
    EventStatus, Finished, Job, ListFilter, NewEvent, Outcome, ReplayTarget,
};
use kinde_webhooks::inbox::{Enqueued, PgStore, SqliteStore, Store, StoreError};
use kinde_webhooks::testing::TestSchema;
use kinde_webhooks::{Config, Registry};
use serde_json::json;
use tempfile::TempDir;

use crate::utils::{DEADLINE, JwksServer, Recorder, TestServer, eventually, key, ok, sign_event};

/// One test at a time on the database: small pools, well under its `max_connections`.
static PG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LONG: Duration = Duration::from_secs(60);

/// Open the PostgreSQL store in `schema`.
async fn open(schema: &TestSchema) -> PgStore {
    PgStore::open(&schema.store_config())
        .await
        .expect("open the PostgreSQL store")
}

/// A store under test and what keeps it alive (its file, its schema).
struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    _file: Option<TempDir>,
    _schema: Option<TestSchema>,
}

/// SQLite, and PostgreSQL when `DATABASE_URL` is set.
async fn backends() -> Vec<Backend> {
    let dir = TempDir::new().expect("temporary folder");
    let sqlite = SqliteStore::open(&dir.path().join("inbox.db"), Duration::from_secs(1))
        .await
        .expect("open the SQLite store");
    let mut all = vec![Backend {
        name: "sqlite",
        store: Arc::new(sqlite),
        _file: Some(dir),
        _schema: None,
    }];
    if let Some(schema) = TestSchema::from_env() {
        all.push(Backend {
            name: "postgres",
            store: Arc::new(open(&schema).await),
            _file: None,
            _schema: Some(schema),
        });
    }
    all
}

fn new_event(route: &str, event_id: &str, handlers: &[&str]) -> NewEvent {
    let claims = json!({"type": "user.created", "event_id": event_id,
                        "timestamp": "2026-01-01T00:00:00Z", "data": {"user": {"id": "kp_1"}}});
    NewEvent {
        route: route.into(),
        event_id: event_id.into(),
        webhook_id: Some(format!("msg_{event_id}")),
        issuer: "https://acme.kinde.com".into(),
        event_type: "user.created".into(),
        claims: claims.to_string().into(),
        received_at: Utc::now(),
        handlers: handlers.iter().map(|h| Arc::from(*h)).collect(),
    }
}

fn finished(job: &Job, outcome: Outcome) -> Finished {
    Finished {
        key: job.key.clone(),
        outcome,
        started_at: Utc::now(),
        duration: Duration::from_millis(3),
    }
}

fn done(job: &Job) -> Finished {
    finished(job, Outcome::Done)
}

/// The one job of `handler` on the first stored event `event_id`: (status, attempts, history length).
async fn job_state(store: &dyn Store, event_id: &str, handler: &str) -> (String, u32, usize) {
    let detail = store.show(event_id).await.expect("show").remove(0);
    let job = detail
        .jobs
        .into_iter()
        .find(|j| j.handler == handler)
        .expect("the job");
    (job.status, job.attempts, job.history.len())
}

async fn status(store: &dyn Store, event_id: &str) -> EventStatus {
    store.show(event_id).await.expect("show")[0].summary.status
}

fn matcher(handlers: &'static [&'static str]) -> impl Fn(&str, &str) -> Vec<String> + Send + Sync {
    move |_: &str, _: &str| handlers.iter().map(|h| h.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_dedup_on_route_and_event_id() {
    let _db = PG.lock().await;
    for b in backends().await {
        let store = &b.store;
        let name = b.name;
        assert_eq!(
            store
                .enqueue(new_event("/a", "event_d", &["h"]))
                .await
                .unwrap(),
            Enqueued::Stored,
            "{name}"
        );
        assert_eq!(
            store
                .enqueue(new_event("/a", "event_d", &["h"]))
                .await
                .unwrap(),
            Enqueued::Duplicate,
            "{name}"
        );
        // The same event on another route is another delivery.
        assert_eq!(
            store
                .enqueue(new_event("/b", "event_d", &["h"]))
                .await
                .unwrap(),
            Enqueued::Stored,
            "{name}"
        );
        // Ten copies at once: one stored.
        let copies = (0..10).map(|_| store.enqueue(new_event("/a", "event_race", &["h"])));
        let results = futures_util::future::join_all(copies).await;
        let stored = results
            .iter()
            .filter(|r| matches!(r, Ok(Enqueued::Stored)))
            .count();
        assert_eq!(stored, 1, "{name}: {results:?}");
        assert!(results.iter().all(Result::is_ok), "{name}");
        assert_eq!(store.show("event_d").await.unwrap().len(), 2, "{name}");
        let jobs = store.claim(100, LONG).await.unwrap();
        assert_eq!(jobs.len(), 3, "{name}: one job per stored event");
        store.writable().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_concurrent_claimers_never_share_a_job() {
    let _db = PG.lock().await;
    for b in backends().await {
        let name = b.name;
        for i in 0..40 {
            b.store
                .enqueue(new_event("/a", &format!("event_c{i}"), &["h1", "h2"]))
                .await
                .unwrap();
        }
        let claimers = (0..4).map(|_| {
            let store = b.store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let jobs = store.claim(3, LONG).await.expect("claim");
                    if jobs.is_empty() {
                        return mine;
                    }
                    mine.extend(jobs.into_iter().map(|j| (j.key.event_row, j.key.handler)));
                }
            })
        });
        let mut all = Vec::new();
        for claimed in futures_util::future::join_all(claimers).await {
            all.extend(claimed.unwrap());
        }
        let distinct: HashSet<_> = all.iter().cloned().collect();
        assert_eq!(all.len(), 80, "{name}: every job claimed");
        assert_eq!(distinct.len(), 80, "{name}: no job claimed twice");
        let depth = b.store.depth().await.unwrap();
        assert_eq!((depth.pending, depth.in_flight), (0, 80), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_an_expired_lease_is_claimed_again_and_the_late_finish_changes_nothing() {
    let _db = PG.lock().await;
    for b in backends().await {
        let (store, name) = (&*b.store, b.name);
        store
            .enqueue(new_event("/a", "event_l", &["h"]))
            .await
            .unwrap();
        let first = store.claim(10, Duration::from_millis(300)).await.unwrap();
        assert_eq!(first.len(), 1, "{name}");
        assert!(
            store.claim(10, LONG).await.unwrap().is_empty(),
            "{name}: held while the lease runs"
        );
        let due = store.next_due().await.unwrap().expect("the lease expiry");
        assert!(due > Utc::now(), "{name}: due when the lease expires");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let second = store.claim(10, LONG).await.unwrap();
        assert_eq!(second.len(), 1, "{name}: claimed again after the lease");
        assert_eq!(
            (second[0].key.event_row, &second[0].key.handler),
            (first[0].key.event_row, &first[0].key.handler),
            "{name}"
        );
        assert_ne!(second[0].key.claim, first[0].key.claim, "{name}");

        // The first holder comes back late: neither its outcome nor its release count.
        store
            .finish(finished(
                &first[0],
                Outcome::Dead {
                    error: "late".into(),
                },
            ))
            .await
            .unwrap();
        store.release(vec![first[0].key.clone()]).await.unwrap();
        assert_eq!(
            job_state(store, "event_l", "h").await,
            ("in_flight".into(), 0, 0),
            "{name}"
        );
        assert!(store.claim(10, LONG).await.unwrap().is_empty(), "{name}");

        store.finish(done(&second[0])).await.unwrap();
        assert_eq!(
            job_state(store, "event_l", "h").await,
            ("done".into(), 1, 1),
            "{name}"
        );
        assert_eq!(status(store, "event_l").await, EventStatus::Done, "{name}");
        // A finish after the job is done changes nothing either.
        store.finish(done(&second[0])).await.unwrap();
        assert_eq!(job_state(store, "event_l", "h").await.1, 1, "{name}");
    }
}

/// Writes that reach the store together (the SQLite writer takes them as one batch and puts
/// a run of enqueues, or of finishes, in as one statement) end as if made one by one.
#[tokio::test(flavor = "multi_thread")]
async fn contract_writes_sent_together_end_as_if_made_one_by_one() {
    let _db = PG.lock().await;
    for b in backends().await {
        let (store, name) = (&*b.store, b.name);
        // 30 events at once, each given twice (the copy right after it, or 15 later), and
        // one with no handlers.
        let ids: Vec<String> = (0..30).map(|i| format!("event_t{i}")).collect();
        let mut given: Vec<NewEvent> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            given.push(new_event("/a", id, &["h1", "h2"]));
            if i % 2 == 0 {
                given.push(new_event("/a", id, &["h1", "h2"]));
            }
        }
        given.extend(
            ids.iter()
                .skip(1)
                .step_by(2)
                .map(|id| new_event("/a", id, &["h1"])),
        );
        given.push(new_event("/a", "event_t_none", &[]));
        let outcomes =
            futures_util::future::join_all(given.into_iter().map(|e| store.enqueue(e))).await;
        let outcomes: Vec<Enqueued> = outcomes.into_iter().map(Result::unwrap).collect();
        let stored = outcomes.iter().filter(|e| **e == Enqueued::Stored).count();
        assert_eq!(stored, 31, "{name}: each event once: {outcomes:?}");
        // The first copy given is the one kept: its jobs, not a later copy's.
        for (i, id) in ids.iter().enumerate() {
            let detail = store.show(id).await.unwrap();
            assert_eq!(detail.len(), 1, "{name}: {id}");
            let mut handlers: Vec<_> = detail[0].jobs.iter().map(|j| j.handler.clone()).collect();
            handlers.sort();
            assert_eq!(handlers, ["h1", "h2"], "{name}: {id} ({i})");
        }
        assert_eq!(
            status(store, "event_t_none").await,
            EventStatus::Skipped,
            "{name}"
        );

        let jobs = store.claim(100, LONG).await.unwrap();
        assert_eq!(jobs.len(), 60, "{name}");
        // Finish them all at once: h1 done, h2 retried, and some h1 finished twice (done,
        // then dead): one of the two is recorded, whichever the store took first (SQLite
        // takes them in order; PostgreSQL runs them on connections of their own).
        let mut finishes = Vec::new();
        let mut twice = HashSet::new();
        for (i, job) in jobs.iter().enumerate() {
            if job.key.handler == "h1" {
                finishes.push(done(job));
                if i % 5 == 0 {
                    twice.insert(job.key.event_row);
                    let error = "again".into();
                    finishes.push(finished(job, Outcome::Dead { error }));
                }
            } else {
                let due_at = Utc::now() + chrono::Duration::seconds(60);
                let error = format!("no {}", job.key.event_row);
                finishes.push(finished(job, Outcome::Retry { error, due_at }));
            }
        }
        for r in futures_util::future::join_all(finishes.into_iter().map(|f| store.finish(f))).await
        {
            r.unwrap();
        }
        assert!(!twice.is_empty());
        for id in &ids {
            let webhook_id = format!("msg_{id}");
            let job = jobs
                .iter()
                .find(|j| j.webhook_id.as_ref() == Some(&webhook_id));
            let row = job.unwrap().key.event_row;
            let (h1, attempts, history) = job_state(store, id, "h1").await;
            assert_eq!(
                (attempts, history),
                (1, 1),
                "{name}: {id}: one outcome recorded"
            );
            if twice.contains(&row) && name == "postgres" {
                assert!(h1 == "done" || h1 == "dead", "{name}: {id}: {h1}");
            } else {
                assert_eq!(h1, "done", "{name}: {id}");
            }
            let h2 = job_state(store, id, "h2").await;
            assert_eq!(h2, ("failed".into(), 1, 1), "{name}: {id}");
            let detail = store.show(id).await.unwrap().remove(0);
            let h2 = detail.jobs.iter().find(|j| j.handler == "h2").unwrap();
            let expected = format!("no {row}");
            assert_eq!(h2.last_error.as_deref(), Some(&*expected), "{name}: {id}");
        }
        assert!(
            store.claim(100, LONG).await.unwrap().is_empty(),
            "{name}: retries are not due"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_retry_then_dead_and_release() {
    let _db = PG.lock().await;
    for b in backends().await {
        let (store, name) = (&*b.store, b.name);
        store
            .enqueue(new_event("/a", "event_r", &["h"]))
            .await
            .unwrap();
        let job = store.claim(10, LONG).await.unwrap().remove(0);
        assert_eq!(job.attempts, 0, "{name}");
        assert_eq!(job.webhook_id.as_deref(), Some("msg_event_r"), "{name}");
        let due_at = Utc::now() + chrono::Duration::milliseconds(200);
        store
            .finish(finished(
                &job,
                Outcome::Retry {
                    error: "try again".into(),
                    due_at,
                },
            ))
            .await
            .unwrap();
        assert_eq!(
            status(store, "event_r").await,
            EventStatus::Failed,
            "{name}"
        );
        assert!(
            store.claim(10, LONG).await.unwrap().is_empty(),
            "{name}: not due yet"
        );
        let next = store.next_due().await.unwrap().unwrap();
        assert_eq!(next.timestamp_millis(), due_at.timestamp_millis(), "{name}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let job = store.claim(10, LONG).await.unwrap().remove(0);
        assert_eq!(job.attempts, 1, "{name}");

        // Shutdown hands it back: due now, no attempt counted.
        store.release(vec![job.key.clone()]).await.unwrap();
        assert_eq!(
            job_state(store, "event_r", "h").await,
            ("pending".into(), 1, 1),
            "{name}"
        );
        let job = store.claim(10, LONG).await.unwrap().remove(0);
        assert_eq!(job.attempts, 1, "{name}");
        store
            .finish(finished(
                &job,
                Outcome::Dead {
                    error: "for good".into(),
                },
            ))
            .await
            .unwrap();
        assert_eq!(status(store, "event_r").await, EventStatus::Dead, "{name}");
        let detail = store.show("event_r").await.unwrap().remove(0);
        let errors: Vec<_> = detail.jobs[0]
            .history
            .iter()
            .map(|a| a.error.clone())
            .collect();
        assert_eq!(
            errors,
            [Some("try again".to_owned()), Some("for good".to_owned())],
            "{name}"
        );
        assert_eq!(detail.jobs[0].last_error.as_deref(), Some("for good"));
        assert_eq!(detail.claims["event_id"], "event_r", "{name}");
        let depth = store.depth().await.unwrap();
        assert_eq!(
            (depth.pending, depth.in_flight, depth.dead),
            (0, 0, 1),
            "{name}"
        );
        assert_eq!(depth.oldest_pending_secs, None, "{name}");
        assert_eq!(store.next_due().await.unwrap(), None, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_replay_dead_skipped_and_one_event() {
    let _db = PG.lock().await;
    for b in backends().await {
        let (store, name) = (&*b.store, b.name);
        store
            .enqueue(new_event("/a", "event_mixed", &["ok", "bad"]))
            .await
            .unwrap();
        store
            .enqueue(new_event("/a", "event_none", &[]))
            .await
            .unwrap();
        assert_eq!(
            status(store, "event_none").await,
            EventStatus::Skipped,
            "{name}"
        );
        for job in store.claim(10, LONG).await.unwrap() {
            let outcome = if job.key.handler == "ok" {
                Outcome::Done
            } else {
                Outcome::Dead {
                    error: "broken".into(),
                }
            };
            store.finish(finished(&job, outcome)).await.unwrap();
        }
        assert_eq!(
            status(store, "event_mixed").await,
            EventStatus::Dead,
            "{name}"
        );

        let both = matcher(&["ok", "bad"]);
        assert_eq!(
            store.replay(&ReplayTarget::Dead, &both).await.unwrap(),
            1,
            "{name}: only the dead job"
        );
        assert_eq!(
            job_state(store, "event_mixed", "bad").await,
            ("pending".into(), 0, 1),
            "{name}"
        );
        assert_eq!(
            job_state(store, "event_mixed", "ok").await.0,
            "done",
            "{name}"
        );

        // A named event re-runs every handler that is not in flight.
        let claimed = store.claim(10, LONG).await.unwrap();
        assert_eq!(claimed.len(), 1, "{name}");
        assert_eq!(
            store
                .replay(&ReplayTarget::Event("event_mixed".into()), &both)
                .await
                .unwrap(),
            1,
            "{name}: the done job, not the one in flight"
        );
        store.finish(done(&claimed[0])).await.unwrap();

        assert_eq!(
            store
                .replay(&ReplayTarget::Skipped, &matcher(&["new"]))
                .await
                .unwrap(),
            1,
            "{name}"
        );
        assert_eq!(
            status(store, "event_none").await,
            EventStatus::Pending,
            "{name}"
        );
        assert_eq!(
            store
                .replay(&ReplayTarget::Skipped, &matcher(&["new"]))
                .await
                .unwrap(),
            0,
            "{name}: no longer skipped"
        );
        let handlers: HashSet<String> = store
            .claim(10, LONG)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.key.handler)
            .collect();
        assert_eq!(
            handlers,
            HashSet::from(["ok".to_owned(), "new".to_owned()]),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_purge_seen_and_list() {
    let _db = PG.lock().await;
    for b in backends().await {
        let (store, name) = (&*b.store, b.name);
        let old = |id: &str, handlers: &[&str]| {
            let mut e = new_event("/a", id, handlers);
            e.received_at = Utc::now() - chrono::Duration::days(40);
            e
        };
        store.enqueue(old("event_old_done", &["h"])).await.unwrap();
        store.enqueue(old("event_old_dead", &["h"])).await.unwrap();
        store.enqueue(old("event_old_skip", &[])).await.unwrap();
        for job in store.claim(10, LONG).await.unwrap() {
            let dead = job.claims.contains("event_old_dead");
            let outcome = if dead {
                Outcome::Dead { error: "x".into() }
            } else {
                Outcome::Done
            };
            store.finish(finished(&job, outcome)).await.unwrap();
        }
        store
            .enqueue(old("event_old_pending", &["h"]))
            .await
            .unwrap();
        store
            .enqueue(new_event("/a", "event_new", &[]))
            .await
            .unwrap();

        let filter = |status, limit| ListFilter {
            status,
            event_type: None,
            limit,
        };
        let listed = store.list(&filter(None, 10)).await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "event_new",
                "event_old_pending",
                "event_old_skip",
                "event_old_dead",
                "event_old_done"
            ],
            "{name}: newest first"
        );
        assert_eq!(store.list(&filter(None, 2)).await.unwrap().len(), 2);
        let skipped = store
            .list(&filter(Some(EventStatus::Skipped), 10))
            .await
            .unwrap();
        assert_eq!(skipped.len(), 2, "{name}");
        let other_type = ListFilter {
            event_type: Some("role.created".into()),
            ..filter(None, 10)
        };
        assert!(store.list(&other_type).await.unwrap().is_empty(), "{name}");

        assert!(!store.seen("/a", "event_s").await.unwrap(), "{name}");
        store
            .mark_seen("/a", "event_s", Utc::now() - chrono::Duration::days(40))
            .await
            .unwrap();
        store.mark_seen("/a", "event_s", Utc::now()).await.unwrap();
        assert!(store.seen("/a", "event_s").await.unwrap(), "{name}");
        assert!(!store.seen("/b", "event_s").await.unwrap(), "{name}");

        let month_ago = Utc::now() - chrono::Duration::days(30);
        assert_eq!(
            store.purge(month_ago, false).await.unwrap(),
            2,
            "{name}: done and skipped"
        );
        assert!(!store.seen("/a", "event_s").await.unwrap(), "{name}");
        assert_eq!(
            store.purge(month_ago, true).await.unwrap(),
            1,
            "{name}: dead too"
        );
        let left: Vec<String> = store
            .list(&filter(None, 10))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(left, ["event_new", "event_old_pending"], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_replicas_starting_together_migrate_once_and_wake_each_other() {
    let _db = PG.lock().await;
    let Some(schema) = TestSchema::from_env() else {
        return;
    };
    let config = schema.store_config();
    let opened = futures_util::future::join_all((0..3).map(|_| PgStore::open(&config))).await;
    let stores: Vec<PgStore> = opened
        .into_iter()
        .map(|s| s.expect("every replica opens"))
        .collect();
    let mut wake_ups = stores[0].wake_ups().expect("PostgreSQL has wake-ups");
    // The listener announces itself once it listens.
    tokio::time::timeout(DEADLINE, wake_ups.changed())
        .await
        .expect("the listener connects")
        .unwrap();
    stores[1]
        .enqueue(new_event("/a", "event_w", &["h"]))
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, wake_ups.changed())
        .await
        .expect("another replica's enqueue wakes this one")
        .unwrap();
    // A duplicate stores nothing and wakes no one.
    stores[2]
        .enqueue(new_event("/a", "event_w", &["h"]))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), wake_ups.changed())
            .await
            .is_err()
    );
    let mut conn = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(schema.url()).await.unwrap()
    };
    let versions: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{}\".schema_migrations ORDER BY version",
        schema.name()
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(versions, [1, 2], "each migration applied once");
    drop(wake_ups);
    for store in &stores {
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_unreachable_fails_fast_with_a_store_error() {
    // Nothing listens on port 1: no DATABASE_URL needed.
    let config = StoreConfig {
        backend: "postgres".into(),
        url: Some("postgres://postgres@127.0.0.1:1/test".into()),
        connect_timeout: Duration::from_millis(500),
        ..StoreConfig::default()
    };
    let started = Instant::now();
    let opened = PgStore::open(&config).await;
    assert!(matches!(opened, Err(StoreError::Database(_))), "{opened:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// An inbox-mode config on PostgreSQL (this test's schema) with fast retries.
fn pg_server_config(jwks: &JwksServer, schema: &TestSchema, extra: &str) -> Config {
    let mut config = jwks.config(&format!(
        "[delivery]\nmode = \"inbox\"\nhandler_timeout = \"300ms\"\n\
         [inbox]\nretry_base = \"20ms\"\nretry_cap = \"50ms\"\nmax_attempts = 3\nlease = \"30s\"\n{extra}"
    ));
    config.store = schema.store_config();
    config.validate().expect("valid test config");
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_inbox_end_to_end_dedup_and_retries_over_http() {
    let _db = PG.lock().await;
    let Some(schema) = TestSchema::from_env() else {
        return;
    };
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    let recorder = Recorder::new();
    let failing = Recorder::failing();
    let registry = Registry::builder()
        .handler("rec", &["user.*"], recorder.clone())
        .handler("fails", &["user.updated"], failing.clone());
    let server = TestServer::open(
        pg_server_config(&jwks, &schema, "poll_interval = \"20ms\""),
        registry,
    )
    .await;
    server.wait_for_keys().await;
    let (status, body) = crate::utils::send(server.client().get(server.url("/readyz"))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

    let token = sign_event(
        &k,
        json!({"type": "user.created", "event_id": "event_pg1", "data": {"user": {"id": "kp_1"}}}),
    );
    let copies = (0..5).map(|i| {
        let (server, token) = (&server, token.clone());
        async move {
            server
                .post("/api/kinde-webhook", token, Some(&format!("msg_{i}")))
                .await
        }
    });
    for answer in futures_util::future::join_all(copies).await {
        assert_eq!(answer, (200, ok()));
    }
    let store = server.webhooks().inbox().unwrap().store().clone();
    eventually("event_pg1 done", || async {
        store.show("event_pg1").await.unwrap()[0].summary.status == EventStatus::Done
    })
    .await;
    assert_eq!(recorder.only().event_id, "event_pg1");

    let updated = sign_event(
        &k,
        json!({"type": "user.updated", "event_id": "event_pg2", "data": {"user": {"id": "kp_1"}}}),
    );
    assert_eq!(server.deliver(updated).await, (200, ok()));
    eventually("event_pg2 dead", || async {
        store.show("event_pg2").await.unwrap()[0].summary.status == EventStatus::Dead
    })
    .await;
    let detail = store.show("event_pg2").await.unwrap().remove(0);
    let fails = detail.jobs.iter().find(|j| j.handler == "fails").unwrap();
    assert_eq!((fails.attempts, fails.history.len()), (3, 3));
    assert_eq!(failing.events().len(), 3);
    assert_eq!(recorder.events().len(), 2, "the other handler ran once");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_work_stored_by_another_replica_wakes_an_idle_server() {
    let _db = PG.lock().await;
    let Some(schema) = TestSchema::from_env() else {
        return;
    };
    let jwks = JwksServer::start(&[&key()]).await;
    let recorder = Recorder::new();
    // Workers poll only every minute: only a wake-up gets the job run within the deadline.
    let server = TestServer::open(
        pg_server_config(&jwks, &schema, "poll_interval = \"60s\""),
        Registry::builder().handler("rec", &["*"], recorder.clone()),
    )
    .await;
    // Let the workers go idle (first claim found nothing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = open(&schema).await;
    assert_eq!(
        other
            .enqueue(new_event("/api/kinde-webhook", "event_other", &["rec"]))
            .await
            .unwrap(),
        Enqueued::Stored
    );
    eventually(
        "the idle server to run the other replica's event",
        || async { !recorder.events().is_empty() },
    )
    .await;
    assert_eq!(recorder.only().event_id, "event_other");
    drop(server);
    other.close().await;
}

/// An inbox server on SQLite (its own file in `dir`) with fast retries.
fn sqlite_server_config(jwks: &JwksServer, dir: &TempDir, extra: &str) -> Config {
    let mut config = jwks.config(&format!(
        "[delivery]\nmode = \"inbox\"\nhandler_timeout = \"300ms\"\n\
         [inbox]\nretry_base = \"20ms\"\nretry_cap = \"50ms\"\nmax_attempts = 3\nlease = \"30s\"\n{extra}"
    ));
    config.store.path = dir.path().join("inbox.db");
    config.validate().expect("valid test config");
    config
}

/// Signed event ids and types that PostgreSQL cannot store (a NUL byte, which TEXT
/// refuses; 3 KB of incompressible characters, past the btree row limit of the
/// (route, event_id) key) made every delivery of the event 503 `store_unavailable` on
/// PostgreSQL, so Kinde retried it for 36 h, while SQLite took it. Both backends now
/// refuse them at verification (400 `invalid_payload`), as they do control characters
/// (CR/LF would start forged log lines), and the next ordinary event is stored.
#[tokio::test(flavor = "multi_thread")]
async fn event_ids_and_types_a_store_cannot_hold_are_refused_alike_on_both_backends() {
    let _db = PG.lock().await;
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    let dir = TempDir::new().expect("temporary folder");
    let mut servers = vec![("sqlite", sqlite_server_config(&jwks, &dir, ""), None)];
    if let Some(schema) = TestSchema::from_env() {
        servers.push((
            "postgres",
            pg_server_config(&jwks, &schema, ""),
            Some(schema),
        ));
    }
    // Incompressible (so PostgreSQL cannot shrink the index row) and 3,040 bytes long.
    let long_id: String = (0..95u64)
        .map(|i| {
            format!(
                "{:016x}{:016x}",
                i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                i ^ 0xdead_beef
            )
        })
        .collect();
    let hostile = [
        (
            "a NUL in event_id",
            json!({"type": "user.created", "event_id": "event_a\u{0}b"}),
        ),
        (
            "a NUL in type",
            json!({"type": "user.created\u{0}", "event_id": "event_nul_type"}),
        ),
        (
            "a 3 KB event_id",
            json!({"type": "user.created", "event_id": long_id}),
        ),
        (
            "a 3 KB type",
            json!({"type": format!("user.{long_id}"), "event_id": "event_long_type"}),
        ),
        (
            "CR/LF in event_id",
            json!({"type": "user.created", "event_id": "event_x\r\nINFO forged"}),
        ),
        (
            "a tab in type",
            json!({"type": "user.\tcreated", "event_id": "event_tab"}),
        ),
    ];
    for (backend, config, _schema) in servers {
        let recorder = Recorder::new();
        let server = TestServer::open(
            config,
            Registry::builder().handler("rec", &["*"], recorder.clone()),
        )
        .await;
        server.wait_for_keys().await;
        for (what, claims) in &hostile {
            let answer = server.deliver(sign_event(&k, claims.clone())).await;
            assert_eq!(
                answer,
                (400, crate::utils::error("invalid_payload")),
                "{backend}: {what}"
            );
        }
        let fine = sign_event(
            &k,
            json!({"type": "user.created", "event_id": "event_fine"}),
        );
        assert_eq!(server.deliver(fine).await, (200, ok()), "{backend}");
        recorder.wait_for(1).await;
        let store = server.webhooks().inbox().unwrap().store().clone();
        let stored = store
            .list(&ListFilter {
                limit: 100,
                ..ListFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            stored.len(),
            1,
            "{backend}: only the fine event is stored: {stored:?}"
        );
        assert_eq!(recorder.only().event_id, "event_fine", "{backend}");
    }
}

/// A handler whose error names a value holding a NUL (`data` may carry `\u0000`): SQLite
/// records it, but PostgreSQL TEXT refuses it, so `finish` failed, the job stayed in flight
/// and ran again after every lease, never counted, never dead-lettered. The NUL is now
/// written as `\0` and the outcome recorded on both backends.
#[tokio::test(flavor = "multi_thread")]
async fn a_handler_error_holding_a_nul_is_recorded_on_both_backends() {
    struct Nul;
    #[kinde_webhooks::async_trait]
    impl kinde_webhooks::EventHandler for Nul {
        async fn handle(
            &self,
            event: &kinde_webhooks::Event,
            _ctx: &kinde_webhooks::Context,
        ) -> Result<(), kinde_webhooks::HandlerError> {
            let name = event.data["name"].as_str().unwrap_or_default();
            Err(kinde_webhooks::HandlerError::permanent(format!(
                "bad name {name}"
            )))
        }
    }
    let _db = PG.lock().await;
    let k = key();
    let jwks = JwksServer::start(&[&k]).await;
    let dir = TempDir::new().expect("temporary folder");
    let poll = "poll_interval = \"20ms\"";
    let mut servers = vec![("sqlite", sqlite_server_config(&jwks, &dir, poll), None)];
    if let Some(schema) = TestSchema::from_env() {
        servers.push((
            "postgres",
            pg_server_config(&jwks, &schema, poll),
            Some(schema),
        ));
    }
    for (backend, config, _schema) in servers {
        let server =
            TestServer::open(config, Registry::builder().handler("nul", &["*"], Nul)).await;
        server.wait_for_keys().await;
        let token = sign_event(
            &k,
            json!({"type": "user.created", "event_id": "event_nul_error", "data": {"name": "a\u{0}b"}}),
        );
        assert_eq!(server.deliver(token).await, (200, ok()), "{backend}");
        let store = server.webhooks().inbox().unwrap().store().clone();
        eventually(&format!("{backend}: the event dead-lettered"), || async {
            store.show("event_nul_error").await.unwrap()[0]
                .summary
                .status
                == EventStatus::Dead
        })
        .await;
        let detail = store.show("event_nul_error").await.unwrap().remove(0);
        let job = &detail.jobs[0];
        assert_eq!((job.attempts, job.history.len()), (1, 1), "{backend}");
        let error = job.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("bad name a"), "{backend}: {error:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_purge_works_through_a_backlog_larger_than_one_batch() {
    let _db = PG.lock().await;
    for b in backends().await {
        let (store, name) = (&b.store, b.name);
        let enqueues = (0..2_500).map(|i| {
            let mut e = new_event("/a", &format!("event_backlog_{i}"), &[]);
            e.received_at = Utc::now() - chrono::Duration::days(40);
            let store = store.clone();
            async move { store.enqueue(e).await }
        });
        for stored in futures_util::future::join_all(enqueues).await {
            assert_eq!(stored.unwrap(), Enqueued::Stored, "{name}");
        }
        store
            .enqueue(new_event("/a", "event_recent", &[]))
            .await
            .unwrap();

        let month_ago = Utc::now() - chrono::Duration::days(30);
        assert_eq!(
            store.purge(month_ago, false).await.unwrap(),
            2_500,
            "{name}"
        );
        let left = store
            .list(&ListFilter {
                status: None,
                event_type: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "{name}");
        assert_eq!(left[0].event_id, "event_recent", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_a_claimed_job_carries_the_issuer_its_event_was_verified_by() {
    let _db = PG.lock().await;
    for b in backends().await {
        let (store, name) = (&*b.store, b.name);
        let mut staging = new_event("/hooks", "event_from_staging", &["h"]);
        staging.issuer = "https://acme-staging.kinde.com".into();
        store.enqueue(staging).await.unwrap();

        let jobs = store.claim(10, LONG).await.unwrap();
        assert_eq!(jobs.len(), 1, "{name}");
        assert_eq!(
            jobs[0].issuer.as_deref(),
            Some("https://acme-staging.kinde.com"),
            "{name}: the issuer is stored, not looked up from today's config"
        );
    }
}

/// The test kit's way to the shared store, as a user's test takes it: a `TestSchema`'s
/// `[store]` TOML given to a `TestServer` in inbox mode. The event is stored in that
/// schema, the handler runs from the inbox, and the schema is gone once the test drops it.
#[tokio::test(flavor = "multi_thread")]
async fn the_kit_runs_a_test_server_on_a_schema_of_its_own_and_drops_it() {
    let _db = PG.lock().await;
    let Some(schema) = TestSchema::from_env() else {
        return;
    };
    let issuer = kinde_webhooks::testing::TestIssuer::start().await;
    let server = kinde_webhooks::testing::TestServer::builder(&issuer)
        .toml(&format!(
            "[delivery]\nmode = \"inbox\"\n[inbox]\npoll_interval = \"20ms\"\n{}",
            schema.store_toml()
        ))
        .handler("rec", &["user.created"], Recorder::new())
        .start()
        .await;
    let event = issuer.event("user.created");
    assert_eq!(server.send(&event).await, (200, ok()));
    assert_eq!(server.wait_for("rec", 1).await[0].event_id, event.id());

    let (url, name) = (schema.url().to_owned(), schema.name().to_owned());
    let schemas = || async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let stored: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT event_id FROM \"{name}\".events"
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&name)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        (stored, exists)
    };
    assert_eq!(schemas().await, (vec![event.id().to_owned()], true));
    drop(server);
    drop(schema);
    assert_eq!(
        schemas().await,
        (vec![], false),
        "dropped with the TestSchema"
    );
}
