//! Serving: the accept loop, with the connection-level limits `axum::serve` does not expose
//! (request-head size and read deadline, connection count).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::Webhooks;
use crate::config::LimitsConfig;

/// After shutdown is asked, how long requests in progress may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed `accept` (out of file descriptors, say), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serve `webhooks.app()` on `listener` until `shutdown` completes, keeping the key set
/// fresh and, in inbox mode, running the inbox's workers. The first JWKS fetch happens
/// after the listener is serving, so a JWKS that is down does not stop the server from
/// starting (it answers 503 until keys arrive). On shutdown: stop accepting, finish the
/// requests in progress, then let the workers finish or release their jobs.
pub async fn run(
    listener: TcpListener,
    webhooks: Webhooks,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with(listener, webhooks, Router::new(), shutdown).await
}

/// [`run`], with `extra` routes merged into the app (the `dev` server's JWKS).
pub async fn run_with(
    listener: TcpListener,
    webhooks: Webhooks,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    webhooks.log_startup();
    let background = webhooks.spawn_background();
    let metrics = match (
        &webhooks.shared.metrics.bind,
        webhooks.shared.metrics.enabled,
    ) {
        (Some(bind), true) => {
            let listener = TcpListener::bind(bind).await?;
            tracing::info!(addr = %bind, "metrics on http://{bind}/metrics");
            let router = webhooks.metrics_router();
            Some(tokio::spawn(
                async move { axum::serve(listener, router).await },
            ))
        }
        _ => None,
    };
    let app = webhooks.app().merge(extra);
    serve(listener, app, &webhooks.shared.limits, shutdown).await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    background.shutdown().await;
    Ok(())
}

/// The accept loop: HTTP/1.1 (what Kinde speaks), each connection under the head limits,
/// at most `max_connections` at once (further clients wait in the listen backlog).
///
/// HTTP/1 only, on purpose: hyper's HTTP/1 `header_read_timeout` runs from the moment a
/// connection waits for a request head, the first one included, so a client that connects
/// and sends nothing is dropped; auto-detecting HTTP/2 would first wait, with no deadline,
/// for enough bytes to tell the protocols apart.
async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &LimitsConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    let service = app.map_request(|req: Request<Incoming>| req.map(Body::new));
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; closing"),
    }
}
