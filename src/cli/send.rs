//! `send`: sign Kinde-shaped events with the dev key and POST them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use super::{SendArgs, dev_key, fail, load_config, loopback, out};
use crate::config::Config;
use crate::event::EventType;
use crate::samples;
use crate::server::WEBHOOK_ID_HEADER;
use crate::signing::{SigningKey, complete_claims, new_webhook_id};

pub(super) async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    webhook_id: &str,
) -> Result<(u16, String, Duration), String> {
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/jwt")
        .header(WEBHOOK_ID_HEADER, webhook_id)
        .body(token.to_owned())
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Ok((status, body, started.elapsed()))
}

fn read_payload(source: &str) -> Result<Value, String> {
    let name = if source == "-" { "stdin" } else { source };
    let text = if source == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read stdin: {e}"))?
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("cannot read {source}: {e}"))?
    };
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("{name} is not JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!(
            "{name} must hold the whole claims object ({{\"type\": ..., \"data\": ...}})"
        ));
    }
    Ok(value)
}

/// Sign `args.repeat` events and POST them, `args.concurrency` at a time (or print the
/// tokens with `--print`).
pub(super) async fn send(config: Option<PathBuf>, args: SendArgs) -> ExitCode {
    let mut claims = match args.payload.as_deref().map(read_payload).transpose() {
        Ok(c) => c.unwrap_or_else(|| serde_json::json!({})),
        Err(e) => return fail(2, e),
    };
    if let Some(t) = &args.event_type {
        claims["type"] = t.clone().into();
    }
    let Some(event_type) = claims
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return fail(
            2,
            "give an event type (e.g. `send user.created`) or a --payload with a \"type\"",
        );
    };
    if matches!(EventType::from_name(&event_type), EventType::Unknown(_)) {
        let closest = EventType::KNOWN
            .iter()
            .map(|t| (strsim::levenshtein(t.as_str(), &event_type), t))
            .min_by_key(|(distance, _)| *distance);
        let hint = match closest {
            Some((distance, t)) if distance <= 3 => format!(" (did you mean {t}?)"),
            _ => String::new(),
        };
        let data = if claims.get("data").is_none() {
            "; it has no sample data, so it goes with \"data\": {}"
        } else {
            ""
        };
        eprintln!(
            "warning: {event_type} is not one of Kinde's {} event types{hint}{data}; only handlers for `*` (or a matching group) will run it",
            EventType::KNOWN.len()
        );
    }
    if claims.get("data").is_none() {
        claims["data"] = samples::sample_data(&event_type);
    }
    if let Some(id) = &args.event_id {
        claims["event_id"] = id.clone().into();
    }
    if let Some(id) = &args.webhook_id
        && (id.is_empty() || reqwest::header::HeaderValue::from_str(id).is_err())
    {
        return fail(
            2,
            format!(
                "--webhook-id {id:?} cannot be a header value: use visible ASCII without line breaks, e.g. msg_1"
            ),
        );
    }
    let key = match &args.key {
        // A --key that cannot be read or is no key is the command line's fault: 2.
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|pem| {
                SigningKey::from_pem(&pem, args.kid.clone())
                    .map_err(|e| format!("{}: {e}", path.display()))
            })
            .map_err(|e| (2, e)),
        None => dev_key(&args.dir, args.print)
            .map(|key| match &args.kid {
                Some(kid) => key.with_kid(kid.clone()),
                None => key,
            })
            .map_err(|e| (1, e)),
    };
    let key = match key {
        Ok(k) => k,
        Err((code, e)) => return fail(code, e),
    };
    let sign = |_| {
        let claims = complete_claims(claims.clone());
        let event_id = claims["event_id"].as_str().unwrap_or_default().to_owned();
        (event_id, key.sign(&claims))
    };
    if args.print {
        for (_, token) in (0..args.repeat).map(sign) {
            out!("{token}");
        }
        return ExitCode::SUCCESS;
    }
    let url = match args.url.clone() {
        Some(u) => u,
        None => match load_config(config) {
            Ok(c) => default_url(&c, &event_type),
            Err(e) => return fail(2, e),
        },
    };
    let client = reqwest::Client::new();
    let deliveries = (0..args.repeat).map(sign).map(|(event_id, token)| {
        let webhook_id = args.webhook_id.clone().unwrap_or_else(new_webhook_id);
        let (client, url, event_type) = (&client, &url, &event_type);
        async move {
            match post(client, url, &token, &webhook_id).await {
                Ok((status, body, elapsed)) => {
                    out!(
                        "{event_type} {event_id} (webhook-id {webhook_id}) -> {status} in {:.1} ms: {body}",
                        elapsed.as_secs_f64() * 1e3
                    );
                    if status == 404 || status == 405 {
                        out!(
                            "  no webhook route at {url}: --url takes the whole route, e.g. http://127.0.0.1:3000/api/kinde-webhook \
                             (`kinde-webhooks dev` prints its routes)"
                        );
                    }
                    Ok((status, elapsed))
                }
                Err(e) => Err(e),
            }
        }
    });
    let started = Instant::now();
    let results: Vec<Result<(u16, Duration), String>> = futures_util::stream::iter(deliveries)
        .buffer_unordered(args.concurrency as usize)
        .collect()
        .await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return fail(1, format!("{e}; is `kinde-webhooks dev` running?"));
    }
    let answers: Vec<(u16, Duration)> = results.into_iter().flatten().collect();
    if answers.len() > 1 {
        out!("{}", summary(&answers, started.elapsed()));
    }
    if answers
        .iter()
        .all(|(status, _)| (200..300).contains(status))
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// One line for a `--repeat` run: how many, how fast, which statuses, latency percentiles.
fn summary(answers: &[(u16, Duration)], took: Duration) -> String {
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (status, _) in answers {
        *statuses.entry(*status).or_default() += 1;
    }
    let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{n} x {s}")).collect();
    let mut latencies: Vec<Duration> = answers.iter().map(|(_, l)| *l).collect();
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    format!(
        "sent {} events in {:.2} s ({:.0}/s): {}; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        answers.len(),
        took.as_secs_f64(),
        answers.len() as f64 / took.as_secs_f64().max(1e-9),
        statuses.join(", "),
        at(0.5),
        at(0.99),
        at(1.0),
    )
}

/// The first route of `config` that accepts `event_type`, on its bind address.
pub(super) fn default_url(config: &Config, event_type: &str) -> String {
    let routes = config.effective_routes();
    let route = routes
        .iter()
        .find(|r| r.accepts(event_type))
        .unwrap_or(&routes[0]);
    let addr = config
        .bind_addr()
        .map(loopback)
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.server.bind.clone());
    format!("http://{addr}{}", route.path)
}
