//! What the two SQL stores share: time columns, the derived event status, and the reads
//! whose SQL is the same on SQLite and PostgreSQL (`list`, `show`, `seen`, `mark_seen`,
//! `depth`), written once over [`sqlx::Database`].
//!
//! The statements here use `$N` placeholders, which both drivers bind by number, and cast
//! where the backends' integer widths differ, so each reads back the same Rust types.

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::store::*;

/// The derived event status, as SQL over `e.id`: skipped without jobs, else the worst of
/// its jobs' statuses.
pub(super) const STATUS_SQL: &str = "CASE
    WHEN NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_row = e.id) THEN 'skipped'
    WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.event_row = e.id AND j.status = 'dead') THEN 'dead'
    WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.event_row = e.id AND j.status = 'failed') THEN 'failed'
    WHEN EXISTS (SELECT 1 FROM jobs j WHERE j.event_row = e.id AND j.status IN ('pending', 'in_flight')) THEN 'pending'
    ELSE 'done' END";

/// Times are stored as milliseconds since the epoch.
pub(crate) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The inverse of [`millis`]; an out-of-range value reads as the epoch, never a panic.
pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A finish for a claim that no longer holds its job: its lease expired and the job was
/// claimed again (or handed back). The outcome is dropped; the current holder records its own.
pub(crate) fn late_finish(key: &JobKey) {
    tracing::warn!(handler = %key.handler, event_row = key.event_row, claim = key.claim,
        "inbox: an attempt finished after its lease expired and the job was claimed again; its outcome is not recorded");
}

/// The reads both backends run as they are, on the backend's pool.
#[derive(Debug)]
pub(super) struct Reads<'a, DB: Database> {
    pub(super) pool: &'a Pool<DB>,
    /// The column that orders attempts started in the same millisecond (the insertion
    /// order: `rowid` in SQLite, the identity `id` in PostgreSQL).
    pub(super) attempt_order: &'static str,
}

impl<DB> Reads<'_, DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Decode<'t, DB> + Type<DB>,
    for<'t> f64: Decode<'t, DB> + Type<DB>,
    for<'t> String: Decode<'t, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
{
    pub(super) async fn list(&self, filter: &ListFilter) -> Result<Vec<EventSummary>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT e.id, e.route, e.event_id, e.webhook_id, e.event_type, e.received_at, {STATUS_SQL} AS status
             FROM events e) s WHERE (CAST($1 AS TEXT) IS NULL OR status = $1) AND (CAST($2 AS TEXT) IS NULL OR event_type = $2)
             ORDER BY id DESC LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.status.map(EventStatus::as_str))
            .bind(filter.event_type.as_deref())
            .bind(i64::from(filter.limit.max(1)))
            .fetch_all(self.pool)
            .await?;
        Ok(rows.iter().map(summary).collect::<Result<_, _>>()?)
    }

    pub(super) async fn show(&self, event_id: &str) -> Result<Vec<EventDetail>, StoreError> {
        let sql = format!(
            "SELECT e.id, e.route, e.event_id, e.webhook_id, e.event_type, e.received_at, e.claims, {STATUS_SQL} AS status
             FROM events e WHERE e.event_id = $1 ORDER BY e.id"
        );
        let attempts_sql = format!(
            "SELECT started_at, duration_ms, error FROM attempts WHERE event_row = $1 AND handler = $2
             ORDER BY started_at, {}",
            self.attempt_order
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(event_id)
            .fetch_all(self.pool)
            .await?;
        let mut details = Vec::new();
        for row in rows {
            let summary = summary(&row)?;
            let claims: String = row.try_get("claims")?;
            let job_rows = sqlx::query(
                "SELECT handler, status, CAST(attempts AS BIGINT), due_at, last_error FROM jobs
                 WHERE event_row = $1 ORDER BY handler",
            )
            .bind(summary.row)
            .fetch_all(self.pool)
            .await?;
            let mut jobs = Vec::new();
            for j in job_rows {
                let handler: String = j.try_get(0)?;
                let history = sqlx::query(sqlx::AssertSqlSafe(attempts_sql.as_str()))
                    .bind(summary.row)
                    .bind(handler.as_str())
                    .fetch_all(self.pool)
                    .await?
                    .iter()
                    .map(|a| {
                        Ok(AttemptDetail {
                            started_at: from_millis(a.try_get(0)?),
                            duration_ms: a.try_get(1)?,
                            error: a.try_get(2)?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()?;
                jobs.push(JobDetail {
                    handler,
                    status: j.try_get(1)?,
                    attempts: u32::try_from(j.try_get::<i64, _>(2)?).unwrap_or(0),
                    due_at: from_millis(j.try_get(3)?),
                    last_error: j.try_get(4)?,
                    history,
                });
            }
            let claims = serde_json::from_str(&claims).unwrap_or(serde_json::Value::String(claims));
            details.push(EventDetail {
                summary,
                claims,
                jobs,
            });
        }
        Ok(details)
    }

    pub(super) async fn seen(&self, route: &str, event_id: &str) -> Result<bool, StoreError> {
        let found: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM seen WHERE route = $1 AND event_id = $2")
                .bind(route)
                .bind(event_id)
                .fetch_one(self.pool)
                .await?;
        Ok(found > 0)
    }

    pub(super) async fn mark_seen(
        &self,
        route: &str,
        event_id: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO seen (route, event_id, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(route)
        .bind(event_id)
        .bind(millis(at))
        .execute(self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn depth(&self) -> Result<Depth, StoreError> {
        let mut depth = Depth::default();
        for row in sqlx::query("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            .fetch_all(self.pool)
            .await?
        {
            let (status, count): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
            let count = u64::try_from(count).unwrap_or(0);
            match status.as_str() {
                "pending" | "failed" => depth.pending += count,
                "in_flight" => depth.in_flight += count,
                "dead" => depth.dead += count,
                _ => {}
            }
        }
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(e.received_at) FROM jobs j JOIN events e ON e.id = j.event_row
             WHERE j.status IN ('pending', 'failed', 'in_flight')",
        )
        .fetch_one(self.pool)
        .await?;
        depth.oldest_pending_secs =
            oldest.map(|t| (Utc::now() - from_millis(t)).num_milliseconds() as f64 / 1e3);
        Ok(depth)
    }
}

/// One row of `list`/`show`'s event query.
fn summary<R>(row: &R) -> Result<EventSummary, sqlx::Error>
where
    R: Row,
    for<'t> i64: Decode<'t, R::Database> + Type<R::Database>,
    for<'t> String: Decode<'t, R::Database> + Type<R::Database>,
    for<'s> &'s str: ColumnIndex<R>,
{
    let status: String = row.try_get("status")?;
    Ok(EventSummary {
        row: row.try_get("id")?,
        route: row.try_get("route")?,
        event_id: row.try_get("event_id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_type: row.try_get("event_type")?,
        received_at: from_millis(row.try_get("received_at")?),
        status: EventStatus::parse(&status).unwrap_or(EventStatus::Pending),
    })
}
