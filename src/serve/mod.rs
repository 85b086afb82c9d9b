//! `ferry serve`: the one long-running process of a deployment.
//!
//! - `POST /webhooks/<source>` for each `[sources.<source>]` with `type =
//!   "webhook"`: signed events land in micro-batches (`flush` interval) as
//!   `<source>.events`.
//! - The scheduler ([`crate::operate::schedule`]) runs `[schedules.*]`, and
//!   the alerter ([`crate::operate::alerts`]) evaluates the rules after each
//!   run and every `alert_every`.
//! - `GET /` the integration health page, `GET /metrics` Prometheus' text
//!   format, `GET /health` a JSON liveness answer.
//!
//! [`Server::shutdown`] (SIGTERM or Ctrl-C in the CLI) asks running jobs to
//! stop at a safe point, waits for them (their leases are released), then
//! lands what the webhook inbox holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::extract::webhook::Receiver;
use crate::lake::Lake;
use crate::operate::alerts::Alerter;
use crate::operate::schedule::{RouteRunner, Scheduler, SystemClock};
use crate::project::Project;

type Receivers = Arc<BTreeMap<String, Arc<Receiver>>>;

#[derive(Clone)]
struct App {
    receivers: Receivers,
    project: Arc<Project>,
    lake: Lake,
    scheduler: Option<Arc<Scheduler>>,
}

async fn webhook(
    State(App { receivers, .. }): State<App>,
    Path(source): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(r) = receivers.get(&source) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no webhook source {source}")})),
        )
            .into_response();
    };
    let url = match &r.spec.public_url {
        Some(u) => u.clone(),
        None => format!(
            "http://{}{}",
            headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost"),
            uri.path_and_query()
                .map(|p| p.as_str())
                .unwrap_or(uri.path())
        ),
    };
    match r.accept("POST", &url, &headers, &body).await {
        Ok(a) => (
            StatusCode::OK,
            Json(json!({"accepted": a.accepted, "duplicates": a.duplicates, "quarantined": a.quarantined})),
        )
            .into_response(),
        Err(refused) => {
            tracing::warn!(source = %source, "webhook refused: {}", refused.message());
            (refused.status(), Json(json!({"error": refused.message()}))).into_response()
        }
    }
}

async fn health(State(app): State<App>) -> Response {
    Json(json!({
        "status": "ok",
        "webhooks": app.receivers.keys().collect::<Vec<_>>(),
        "schedules": app.project.schedules.keys().collect::<Vec<_>>(),
        "running": app.scheduler.as_ref().map(|s| s.running()).unwrap_or_default(),
    }))
    .into_response()
}

async fn page(State(app): State<App>) -> Response {
    match crate::operate::health::page(&app.project, &app.lake, chrono::Utc::now()).await {
        Ok(html) => (
            StatusCode::OK,
            [
                ("content-type", "text/html; charset=utf-8"),
                ("cache-control", "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain; charset=utf-8")],
            format!(
                "the health page could not be read from the lake: {e}\n({})",
                e.who_acts()
            ),
        )
            .into_response(),
    }
}

async fn metrics() -> Response {
    crate::http::publish_budgets();
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(),
    )
        .into_response()
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    http: JoinHandle<()>,
    landers: Vec<JoinHandle<()>>,
    scheduler: Option<Arc<Scheduler>>,
    background: Vec<JoinHandle<()>>,
    alerts_stop: Option<tokio::sync::watch::Sender<bool>>,
    grace: Duration,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The scheduler, when schedules are served.
    pub fn scheduler(&self) -> Option<&Arc<Scheduler>> {
        self.scheduler.as_ref()
    }

    /// Stop starting jobs, let running ones reach a safe point (up to the
    /// grace period; their leases are released), stop accepting, land what
    /// is in the inbox, and return.
    pub async fn shutdown(self) {
        // Stored even when nothing listens yet (see `Scheduler::shutdown`).
        self.stop.send_replace(true);
        if let Some(s) = &self.scheduler {
            s.shutdown(self.grace).await;
        }
        if let Some(a) = &self.alerts_stop {
            a.send_replace(true);
        }
        for b in self.background {
            let _ = tokio::time::timeout(Duration::from_secs(15), b).await;
        }
        self.http.abort();
        for l in self.landers {
            let _ = l.await;
        }
    }

    /// Stop without landing (as a crash would): the inbox stays in the lake.
    pub fn kill(self) {
        for b in self.background {
            b.abort();
        }
        self.http.abort();
        for l in self.landers {
            l.abort();
        }
    }
}

/// What `ferry serve` runs besides the webhooks.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Between webhook micro-batch landings.
    pub flush: Duration,
    /// Run `[schedules.*]` (and the alerts).
    pub schedules: bool,
    /// Between scheduler ticks.
    pub poll: Duration,
    /// Between evaluations of the clock-driven alert rules.
    pub alert_every: Duration,
    /// How long running jobs get to reach a safe point at shutdown.
    pub grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            flush: Duration::from_secs(1),
            schedules: true,
            poll: Duration::from_secs(1),
            alert_every: Duration::from_secs(60),
            grace: Duration::from_secs(120),
        }
    }
}

/// Start serving webhooks on `addr`, landing every `flush` (no schedules).
pub async fn start(
    project: &Project,
    lake: Lake,
    addr: SocketAddr,
    flush: Duration,
) -> Result<Server> {
    start_with(
        project,
        lake,
        addr,
        ServeOptions {
            flush,
            schedules: false,
            ..ServeOptions::default()
        },
    )
    .await
}

/// Start serving on `addr`: webhooks, the page, metrics, and with
/// `opts.schedules` the scheduler and the alerts.
pub async fn start_with(
    project: &Project,
    lake: Lake,
    addr: SocketAddr,
    opts: ServeOptions,
) -> Result<Server> {
    let flush = opts.flush;
    let mut receivers = BTreeMap::new();
    let max_body = project
        .webhooks
        .values()
        .map(|w| w.max_body_bytes)
        .max()
        .unwrap_or(1 << 20);
    for spec in project.webhooks.values() {
        receivers.insert(
            spec.name.clone(),
            Arc::new(Receiver::open(spec.clone(), lake.clone()).await?),
        );
    }
    let (stop, watch) = tokio::sync::watch::channel(false);
    let landers = receivers
        .values()
        .map(|r| tokio::spawn(r.clone().run(flush, watch.clone())))
        .collect();
    let receivers: Receivers = Arc::new(receivers);
    let project_arc = Arc::new(project.clone());
    let mut background = Vec::new();
    let mut alerts_stop_tx: Option<tokio::sync::watch::Sender<bool>> = None;
    let scheduler = if opts.schedules && !project.schedules.is_empty() {
        let scheduler = Arc::new(Scheduler::new(
            project.schedules.clone(),
            lake.clone(),
            Arc::new(RouteRunner {
                project: project_arc.clone(),
                lake: lake.clone(),
            }),
            Arc::new(SystemClock),
        ));
        let mut alerter = Alerter::open(project_arc.clone(), lake.clone()).await?;
        let mut finished = scheduler.subscribe();
        // The alerter outlives the scheduler at shutdown, so runs that end
        // in the grace period are alerted on too.
        let (alerts_stop, mut stop_alerts) = tokio::sync::watch::channel(false);
        alerts_stop_tx = Some(alerts_stop);
        let every = opts.alert_every;
        let lake_for_alerts = lake.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            // The clock-driven rules run in one process per lake: the
            // holder of the alerts lease (runs are alerted on by the
            // process that ran them).
            let mut clock_lease: Option<crate::lake::lease::Lease> = None;
            loop {
                let changes = tokio::select! {
                    f = finished.recv() => match f {
                        Ok(f) => alerter.on_run(&f.schedule, &f.outcome).await,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!("alerts skipped {n} finished runs");
                            continue;
                        }
                        Err(_) => break,
                    },
                    _ = tick.tick() => {
                        if clock_lease.as_ref().is_some_and(|l| !l.watch().held()) {
                            clock_lease = None;
                        }
                        if clock_lease.is_none() {
                            clock_lease = crate::lake::lease::Lease::acquire(
                                &lake_for_alerts,
                                object_store::path::Path::from_iter([crate::lake::layout::META, "alerts", "lease"]),
                                "alerts",
                                "the alert rules",
                                Duration::from_secs(60),
                                false,
                                1,
                            )
                            .await
                            .ok();
                        }
                        if clock_lease.is_none() {
                            // Another ferry serve evaluates the clock; still
                            // retry this process's pending deliveries.
                            Vec::new()
                        } else {
                            match alerter.on_tick(chrono::Utc::now()).await {
                                Ok(c) => c,
                                Err(e) => {
                                    tracing::warn!("alert rules not evaluated: {e}");
                                    continue;
                                }
                            }
                        }
                    },
                    _ = stop_alerts.changed() => break,
                };
                if let Err(e) = alerter.apply(changes).await {
                    tracing::warn!("alerts not recorded: {e}");
                }
            }
            // Runs that finished while stopping.
            while let Ok(f) = finished.try_recv() {
                let changes = alerter.on_run(&f.schedule, &f.outcome).await;
                if let Err(e) = alerter.apply(changes).await {
                    tracing::warn!("alerts not recorded: {e}");
                }
            }
            if let Some(l) = clock_lease {
                let _ = l.release().await;
            }
        }));
        background.push(tokio::spawn(
            scheduler.clone().run(opts.poll, watch.clone()),
        ));
        Some(scheduler)
    } else {
        None
    };
    let state = App {
        receivers,
        project: project_arc,
        lake: lake.clone(),
        scheduler: scheduler.clone(),
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/webhooks/{source}", post(webhook))
        .route("/health", get(health))
        // The per-source limit is checked in `accept` (413); this caps what
        // is read at all, with room to answer 413 rather than reset.
        .layer(DefaultBodyLimit::max(max_body + 1))
        .with_state(state);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("server stopped: {e}");
        }
    });
    Ok(Server {
        addr,
        stop,
        http,
        landers,
        scheduler,
        background,
        alerts_stop: alerts_stop_tx,
        grace: opts.grace,
    })
}

/// `ferry docs --serve`: the docs folder's `index.html` at `/` and
/// `manifest.json`, read from disk on each request (so `ferry docs` run
/// again in another shell shows at the next reload), until `stop` resolves.
pub async fn docs(
    dir: std::path::PathBuf,
    addr: SocketAddr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    async fn file(dir: std::path::PathBuf, name: &'static str, mime: &'static str) -> Response {
        match tokio::fs::read(dir.join(name)).await {
            Ok(bytes) => ([(axum::http::header::CONTENT_TYPE, mime)], bytes).into_response(),
            Err(e) => (
                StatusCode::NOT_FOUND,
                format!("{}: {e}; run `ferry docs` first", dir.join(name).display()),
            )
                .into_response(),
        }
    }
    let (page, manifest) = (dir.clone(), dir);
    let app = Router::new()
        .route(
            "/",
            get(move || file(page.clone(), "index.html", "text/html; charset=utf-8")),
        )
        .route(
            "/manifest.json",
            get(move || file(manifest.clone(), "manifest.json", "application/json")),
        );
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {addr}: {e} (try another --port)")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Input(format!("{addr}: {e}")))?;
    crate::console::line(format!(
        "serving the docs at http://{local}/ (Ctrl-C stops)"
    ));
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| Error::Input(format!("docs server on {local}: {e}")))
}
