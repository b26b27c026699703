//! The HTTP server that `run` starts beside the scheduler: liveness and
//! readiness checks for the service manager, and metrics for Prometheus.
//!
//! | route | response |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when the database answers and has every migration; 503 with a one-line reason otherwise |
//! | `GET /metrics` | the metrics in the Prometheus text format |
//!
//! [`router`] builds the routes, so other routes can be merged into them
//! before [`start`] serves them.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::HttpSettings;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Upper bound of one readiness check, connection included. A probe
/// that waits longer than this would itself time out in most orchestrators.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Pool that readiness checks query. `run` gives them a pool of their
    /// own ([`crate::db::probe_pool`]), so a tick holding every worker
    /// connection does not make the process look unready.
    pub pool: PgPool,
    /// The worker's metrics, which `/metrics` encodes.
    pub metrics: Metrics,
}

/// Builds the routes of the health checks and the metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Binds `address`, with an error that names it when the port is taken
/// or the address does not belong to this host.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|error| {
        anyhow::anyhow!(
            "failed to bind the HTTP server to {address} ({error}); set http.address to a free address, or http.enabled = false"
        )
    })
}

/// Serves `router` on `listener` until `shutdown` completes, then lets
/// requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    info!(address = %address, "HTTP server listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    info!(address = %address, "HTTP server stopped");
    Ok(())
}

/// The server task that [`start`] spawned, if `http.enabled` is true.
pub struct ServerTask(Option<JoinHandle<std::io::Result<()>>>);

/// Binds `http.address` and serves `router` in the background until
/// `shutdown` is requested. Does nothing when `http.enabled` is false.
pub async fn start(
    settings: &HttpSettings,
    router: Router,
    mut shutdown: Shutdown,
) -> anyhow::Result<ServerTask> {
    if !settings.enabled {
        info!("HTTP server disabled (http.enabled = false)");
        return Ok(ServerTask(None));
    }
    let listener = bind(settings.address.0).await?;
    let stopped = async move { shutdown.requested().await };
    Ok(ServerTask(Some(tokio::spawn(serve(
        listener, router, stopped,
    )))))
}

impl ServerTask {
    /// Waits up to `grace` for the server to finish the requests in
    /// progress after shutdown was requested. A client that keeps a
    /// request open longer is cut off when the process exits.
    pub async fn join(self, grace: Duration) {
        let Some(task) = self.0 else {
            return;
        };
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(error = %error, "HTTP server failed"),
            Ok(Err(error)) => warn!(error = %error, "HTTP server task ended abnormally"),
            Err(_) => warn!(
                grace_seconds = grace.as_secs(),
                "HTTP requests still open at the end of the grace period"
            ),
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match check_ready(&state.pool).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => {
            // Debug level: an orchestrator probes every few seconds, and the
            // ticks already log a database outage as errors.
            debug!(%reason, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
        }
    }
}

/// Checks that the database runs `SELECT 1` and has every embedded
/// migration, within [`READY_TIMEOUT`]. Returns the reason as one line
/// when it does not.
pub async fn check_ready(pool: &PgPool) -> Result<(), String> {
    let check = async {
        sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map_err(|error| one_line(&format!("database unavailable: {error}")))?;
        let missing = crate::db::migration_status(pool)
            .await
            .map_err(|error| {
                one_line(&format!("failed to read the applied migrations: {error:#}"))
            })?
            .missing
            .len();
        if missing > 0 {
            return Err(format!(
                "database is missing {missing} migration(s); run `session-steward migrate`"
            ));
        }
        Ok(())
    };
    tokio::time::timeout(READY_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "database did not answer within {} ms",
                READY_TIMEOUT.as_millis()
            ))
        })
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            warn!(error = %error, "failed to encode the metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to encode the metrics\n",
            )
                .into_response()
        }
    }
}

/// Joins the lines of `text` with spaces, so a reason fits one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
