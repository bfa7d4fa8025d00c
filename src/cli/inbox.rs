//! `inbox list | show | replay | purge`: operate the durable inbox from the shell.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{SecondsFormat, Utc};

use super::{InboxCommand, build_registry, fail, load_config, out};
use crate::config::{Config, redact_url};
use crate::dispatch::Dispatcher;
use crate::handler::{BoxError, State};
use crate::inbox::store::{EventDetail, EventStatus, ListFilter, ReplayTarget};
use crate::inbox::{Inbox, PgStore, SqliteStore, Store};
use crate::registry::Registry;
use crate::telemetry::{self, Output};

pub(super) async fn run<F>(config: Option<PathBuf>, command: InboxCommand, init: F) -> ExitCode
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let config = match load_config(config) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    // stdout carries the result (tables, --json); logs go to stderr.
    telemetry::init(&config.log, Output::Stderr);
    let (store, sqlite): (Arc<dyn Store>, Option<SqliteStore>) =
        if config.store.backend == "postgres" {
            let where_ = match config.store.url.as_deref() {
                Some(url) => format!("schema {} of {}", config.store.schema, redact_url(url)),
                None => format!("schema {}", config.store.schema),
            };
            match PgStore::open(&config.store).await {
                Ok(s) => (Arc::new(s), None),
                Err(e) => return fail(1, format!("cannot open the inbox in {where_}: {e}")),
            }
        } else {
            let path = config.store_path();
            if !path.exists() {
                return fail(
                    1,
                    format!(
                        "no inbox at {}: start the server once, or pass --config",
                        path.display()
                    ),
                );
            }
            match SqliteStore::open(&path, config.store.busy_timeout).await {
                Ok(s) => (Arc::new(s.clone()), Some(s)),
                Err(e) => return fail(1, format!("cannot open the inbox {}: {e}", path.display())),
            }
        };
    let result = match command {
        InboxCommand::List {
            status,
            event_type,
            limit,
            json,
        } => {
            let status = match status
                .as_deref()
                .map(|s| EventStatus::parse(s).ok_or(s))
                .transpose()
            {
                Ok(s) => s,
                Err(bad) => {
                    return fail(
                        2,
                        format!("--status {bad:?}: use pending, failed, dead, done or skipped"),
                    );
                }
            };
            list(
                &*store,
                ListFilter {
                    status,
                    event_type,
                    limit,
                },
                json,
            )
            .await
        }
        InboxCommand::Show { event_id, json } => show(&*store, &event_id, json).await,
        InboxCommand::Replay {
            event_id,
            dead,
            skipped,
            json,
        } => {
            let target = match (event_id, dead, skipped) {
                (Some(id), _, _) => ReplayTarget::Event(id),
                (None, true, _) => ReplayTarget::Dead,
                (None, _, _) => ReplayTarget::Skipped,
            };
            replay(&config, store, sqlite, target, json, init).await
        }
        InboxCommand::Purge {
            older_than,
            dead,
            json,
        } => {
            let age = match crate::config::parse_duration(&older_than)
                .and_then(|d| chrono::Duration::from_std(d).map_err(|e| e.to_string()))
            {
                Ok(a) => a,
                Err(e) => {
                    return fail(
                        2,
                        format!("--older-than: {e}; give a duration like 30d or 12h"),
                    );
                }
            };
            store
                .purge(Utc::now() - age, dead)
                .await
                .map_err(|e| e.to_string())
                .map(|n| {
                    if json {
                        out!("{}", serde_json::json!({ "purged": n }));
                    } else {
                        let what = if dead {
                            "finished, skipped and dead-lettered"
                        } else {
                            "finished and skipped"
                        };
                        out!("purged {n} {what} events received more than {older_than} ago");
                    }
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

/// Stored strings come from signed payloads; keep control characters off the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn time(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn list(store: &dyn Store, filter: ListFilter, json: bool) -> Result<(), String> {
    let events = store.list(&filter).await.map_err(|e| e.to_string())?;
    if json {
        for e in &events {
            out!("{}", serde_json::to_string(e).map_err(|e| e.to_string())?);
        }
        return Ok(());
    }
    out!(
        "{:<20}  {:<7}  {:<28}  {:<38}  {:<20}  WEBHOOK-ID",
        "RECEIVED",
        "STATUS",
        "TYPE",
        "EVENT-ID",
        "ROUTE"
    );
    for e in &events {
        out!(
            "{:<20}  {:<7}  {:<28}  {:<38}  {:<20}  {}",
            time(e.received_at),
            e.status.as_str(),
            clean(&e.event_type),
            clean(&e.event_id),
            clean(&e.route),
            clean(e.webhook_id.as_deref().unwrap_or("-"))
        );
    }
    if events.is_empty() {
        out!("(no events)");
    }
    Ok(())
}

async fn show(store: &dyn Store, event_id: &str, json: bool) -> Result<(), String> {
    let details = store.show(event_id).await.map_err(|e| e.to_string())?;
    if details.is_empty() {
        return Err(format!("no event {event_id} in the inbox"));
    }
    if json {
        out!(
            "{}",
            serde_json::to_string(&details).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    for EventDetail {
        summary: s,
        claims,
        jobs,
    } in &details
    {
        out!(
            "event {} ({}) on {}: {}",
            clean(&s.event_id),
            clean(&s.event_type),
            clean(&s.route),
            s.status
        );
        out!(
            "  received {}, webhook-id {}",
            time(s.received_at),
            clean(s.webhook_id.as_deref().unwrap_or("-"))
        );
        if jobs.is_empty() {
            out!("  no handler matched (skipped)");
        }
        for j in jobs {
            out!(
                "  handler {}: {}, {} attempt(s) since it was last scheduled{}",
                j.handler,
                j.status,
                j.attempts,
                match j.status.as_str() {
                    "pending" | "failed" => format!(", next due {}", time(j.due_at)),
                    "in_flight" => format!(", lease until {}", time(j.due_at)),
                    _ => String::new(),
                }
            );
            for (n, a) in j.history.iter().enumerate() {
                let outcome = clean(a.error.as_deref().unwrap_or("ok"));
                out!(
                    "    #{} {} {:.1} ms: {outcome}",
                    n + 1,
                    time(a.started_at),
                    a.duration_ms
                );
            }
        }
        let claims = serde_json::to_string_pretty(claims).unwrap_or_default();
        out!("  payload:\n    {}", claims.replace('\n', "\n    "));
    }
    Ok(())
}

async fn replay<F>(
    config: &Config,
    store: Arc<dyn Store>,
    sqlite: Option<SqliteStore>,
    target: ReplayTarget,
    json: bool,
    init: F,
) -> Result<(), String>
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let (registry, forwarders) = build_registry(config)?;
    forwarders.start().await.map_err(|e| e.to_string())?;
    let routes = config.effective_routes();
    let matcher = |route: &str, event_type: &str| -> Vec<String> {
        let accepted = routes
            .iter()
            .find(|r| r.path == route)
            .is_none_or(|r| r.accepts(event_type));
        if !accepted {
            return Vec::new();
        }
        registry
            .handlers_for(event_type)
            .map(|e| e.name.to_string())
            .collect()
    };
    if let ReplayTarget::Event(id) = &target
        && store.show(id).await.map_err(|e| e.to_string())?.is_empty()
    {
        return Err(format!("no event {} in the inbox", clean(id)));
    }
    let scheduled = store
        .replay(&target, &matcher)
        .await
        .map_err(|e| e.to_string())?;
    // A server working the SQLite file holds its lock; without one, run the jobs here.
    // PostgreSQL: the servers sharing the schema are woken (NOTIFY) and run them.
    let alone = match &sqlite {
        Some(file) => file.lock_for_serving().map_err(|e| e.to_string())?,
        None => false,
    };
    let ran = if alone && scheduled > 0 {
        Some(run_here(config, registry, store, init).await?)
    } else {
        None
    };
    if json {
        out!(
            "{}",
            serde_json::json!({ "scheduled": scheduled, "ran_here": ran })
        );
    } else {
        match ran {
            Some(n) => {
                out!("scheduled {scheduled} job(s); no server is running, so ran {n} here")
            }
            None if scheduled > 0 && sqlite.is_none() => out!(
                "scheduled {scheduled} job(s); the servers on this database pick them up (none runs them until one is started)"
            ),
            None if scheduled > 0 => {
                out!("scheduled {scheduled} job(s); the running server picks them up")
            }
            None => out!(
                "nothing to replay: no registered handler matches the selected events, or there are none"
            ),
        }
    }
    Ok(())
}

async fn run_here<F>(
    config: &Config,
    registry: Registry,
    store: Arc<dyn Store>,
    init: F,
) -> Result<usize, String>
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let state = init(config)
        .await
        .map_err(|e| format!("the init step failed: {e}"))?;
    let dispatcher = Dispatcher::new(registry, state, config.handlers.clone())
        .with_timeout(Some(config.delivery.handler_timeout));
    let inbox = Inbox::new(store, dispatcher, config.inbox.clone())
        .with_route_issuers(config.route_issuers());
    inbox.run_due().await.map_err(|e| e.to_string())
}
