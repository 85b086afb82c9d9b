//! `ferry serve`: the long-running side of ferry. Today it receives signed
//! webhooks: `POST /webhooks/<source>` for each `[sources.<source>]` with
//! `type = "webhook"`, and `GET /health`. Each source's events land in
//! micro-batches (`flush` interval) as `<source>.events`.

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
use crate::project::Project;

type Receivers = Arc<BTreeMap<String, Arc<Receiver>>>;

async fn webhook(
    State(receivers): State<Receivers>,
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
            Json(json!({"accepted": a.accepted, "duplicates": a.duplicates})),
        )
            .into_response(),
        Err(refused) => {
            tracing::warn!(source = %source, "webhook refused: {}", refused.message());
            (refused.status(), Json(json!({"error": refused.message()}))).into_response()
        }
    }
}

async fn health(State(receivers): State<Receivers>) -> Response {
    Json(json!({"status": "ok", "webhooks": receivers.keys().collect::<Vec<_>>()})).into_response()
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    http: JoinHandle<()>,
    landers: Vec<JoinHandle<()>>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, land what is in the inbox, and return.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.http.abort();
        for l in self.landers {
            let _ = l.await;
        }
    }

    /// Stop without landing (as a crash would): the inbox stays in the lake.
    pub fn kill(self) {
        self.http.abort();
        for l in self.landers {
            l.abort();
        }
    }
}

/// Start serving on `addr`, landing every `flush`.
pub async fn start(
    project: &Project,
    lake: Lake,
    addr: SocketAddr,
    flush: Duration,
) -> Result<Server> {
    if project.webhooks.is_empty() {
        return Err(Error::Input(
            "nothing to serve: add a [sources.<name>] with type = \"webhook\", a preset and a secret".into(),
        ));
    }
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
    let app = Router::new()
        .route("/webhooks/{source}", post(webhook))
        .route("/health", get(health))
        // The per-source limit is checked in `accept` (413); this caps what
        // is read at all, with room to answer 413 rather than reset.
        .layer(DefaultBodyLimit::max(max_body + 1))
        .with_state(receivers);
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
    })
}
