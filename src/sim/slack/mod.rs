//! An emulator of Slack incoming webhooks
//! (<https://api.slack.com/messaging/webhooks>): one webhook URL,
//! `POST /services/{team}/{bot}/{token}`, that takes a JSON message and
//! answers in Slack's plain-text style (`ok`, or an error code as the body).
//!
//! The contract it follows:
//!
//! | condition | status | body |
//! |---|---|---|
//! | team or bot other than `T000`/`B000` | 403 | `invalid_token` |
//! | token other than `XXXXXXXX` | 404 | `no_service` |
//! | body is not a JSON object | 400 | `invalid_payload` |
//! | no non-empty `text` and no non-empty `blocks` | 400 | `no_text` |
//! | `text` over 40,000 characters | 400 | `msg_too_long` |
//! | `blocks` not an array of at most 50 known blocks, a `section` text over 3,000 characters, a `header` text not `plain_text` or over 150 characters | 400 | `invalid_blocks` |
//! | accepted | 200 | `ok` |
//!
//! Known block types are `section`, `header`, `context`, `divider`,
//! `actions`, `image` and `rich_text`; only `section` and `header` are
//! checked further. Only JSON bodies are taken (Slack also takes a
//! form-encoded `payload=`; this emulator answers that `invalid_payload`).
//!
//! Misbehaviours, for testing a client's retries: the next
//! [`SlackConfig::rate_limit_next`] posts are answered 429 with
//! `Retry-After: 1` and body `rate_limited`, then the next
//! [`SlackConfig::fail_next`] posts 500 with body `internal_error`
//! (settable while running with [`RunningSlack::set_rate_limit_next`] and
//! [`RunningSlack::set_fail_next`]). Both count only posts to the right
//! URL, and come before the body is looked at. Rejected and failed posts
//! are not recorded; [`RunningSlack::messages`] holds the accepted ones.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// The workspace (team) id in the webhook URL.
pub const TEAM: &str = "T000";
/// The bot (integration) id in the webhook URL.
pub const BOT: &str = "B000";
/// The secret token that ends the webhook URL.
pub const TOKEN: &str = "XXXXXXXX";

/// Longest `text`, in characters.
const MAX_TEXT: usize = 40_000;
/// Most blocks in one message.
const MAX_BLOCKS: usize = 50;
/// Longest `section` block text, in characters.
const MAX_SECTION_TEXT: usize = 3_000;
/// Longest `header` block text, in characters.
const MAX_HEADER_TEXT: usize = 150;

const BLOCK_TYPES: &[&str] = &[
    "section",
    "header",
    "context",
    "divider",
    "actions",
    "image",
    "rich_text",
];

/// Emulator settings.
#[derive(Debug, Clone, Default)]
pub struct SlackConfig {
    /// Answer the next N posts 500.
    pub fail_next: usize,
    /// Answer the next N posts 429 with `Retry-After: 1` (before any 500s).
    pub rate_limit_next: usize,
}

struct Inner {
    fail_next: usize,
    rate_limit_next: usize,
    messages: Vec<Value>,
}

type Shared = Arc<Mutex<Inner>>;

enum Fault {
    Limited,
    Failed,
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn rate_limited() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::RETRY_AFTER, "1"),
        ],
        "rate_limited",
    )
        .into_response()
}

/// A `{"type": ..., "text": ...}` text object: its type and text.
fn text_object(t: &Value) -> Option<(&str, &str)> {
    let kind = t.get("type")?.as_str()?;
    let text = t.get("text")?.as_str()?;
    matches!(kind, "plain_text" | "mrkdwn").then_some((kind, text))
}

fn valid_block(block: &Value) -> bool {
    // `get` on anything but an object is None: a non-object block is invalid.
    let Some(kind) = block.get("type").and_then(Value::as_str) else {
        return false;
    };
    if !BLOCK_TYPES.contains(&kind) {
        return false;
    }
    match kind {
        "section" => match block.get("text") {
            // A section without text must have fields.
            None => block.get("fields").is_some_and(Value::is_array),
            Some(t) => text_object(t).is_some_and(|(_, s)| s.chars().count() <= MAX_SECTION_TEXT),
        },
        "header" => block
            .get("text")
            .and_then(text_object)
            .is_some_and(|(k, s)| k == "plain_text" && s.chars().count() <= MAX_HEADER_TEXT),
        _ => true,
    }
}

const NO_BLOCKS: &[Value] = &[];

/// The payload if Slack would take it, else Slack's error code.
fn validate(body: &[u8]) -> std::result::Result<Value, &'static str> {
    let payload: Value = serde_json::from_slice(body).map_err(|_| "invalid_payload")?;
    let Some(obj) = payload.as_object() else {
        return Err("invalid_payload");
    };
    let text = match obj.get("text") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("invalid_payload"),
    };
    let blocks = match obj.get("blocks") {
        None | Some(Value::Null) => NO_BLOCKS,
        Some(Value::Array(b)) => b.as_slice(),
        Some(_) => return Err("invalid_blocks"),
    };
    if text.is_empty() && blocks.is_empty() {
        return Err("no_text");
    }
    if text.chars().count() > MAX_TEXT {
        return Err("msg_too_long");
    }
    if blocks.len() > MAX_BLOCKS || !blocks.iter().all(valid_block) {
        return Err("invalid_blocks");
    }
    Ok(payload)
}

async fn webhook(
    AxState(s): AxState<Shared>,
    Path((team, bot, token)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if team != TEAM || bot != BOT {
        return text(StatusCode::FORBIDDEN, "invalid_token");
    }
    if token != TOKEN {
        return text(StatusCode::NOT_FOUND, "no_service");
    }
    let fault = s.lock().map(|mut st| {
        if st.rate_limit_next > 0 {
            st.rate_limit_next -= 1;
            Some(Fault::Limited)
        } else if st.fail_next > 0 {
            st.fail_next -= 1;
            Some(Fault::Failed)
        } else {
            None
        }
    });
    match fault {
        Ok(None) => {}
        Ok(Some(Fault::Limited)) => return rate_limited(),
        Ok(Some(Fault::Failed)) | Err(_) => {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
        }
    }
    let payload = match validate(&body) {
        Ok(p) => p,
        Err(code) => return text(StatusCode::BAD_REQUEST, code),
    };
    match s.lock() {
        Ok(mut st) => st.messages.push(payload),
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    }
    text(StatusCode::OK, "ok")
}

/// A running Slack webhook emulator.
pub struct RunningSlack {
    pub addr: SocketAddr,
    state: Shared,
    handle: JoinHandle<()>,
}

impl RunningSlack {
    /// The webhook URL to post messages to.
    pub fn url(&self) -> String {
        format!("http://{}/services/{TEAM}/{BOT}/{TOKEN}", self.addr)
    }

    /// Every accepted message, in the order it arrived.
    pub fn messages(&self) -> Vec<Value> {
        self.state
            .lock()
            .map(|s| s.messages.clone())
            .unwrap_or_default()
    }

    /// Answer the next `n` posts 500.
    pub fn set_fail_next(&self, n: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.fail_next = n;
        }
    }

    /// Answer the next `n` posts 429 with `Retry-After: 1`.
    pub fn set_rate_limit_next(&self, n: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.rate_limit_next = n;
        }
    }

    pub fn stop(self) {
        self.handle.abort();
    }
}

/// Start the emulator on `addr` (port 0 picks a free port).
pub async fn start(config: SlackConfig, addr: SocketAddr) -> Result<RunningSlack> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let state: Shared = Arc::new(Mutex::new(Inner {
        fail_next: config.fail_next,
        rate_limit_next: config.rate_limit_next,
        messages: Vec::new(),
    }));
    let app = Router::new()
        .route("/services/{team}/{bot}/{token}", post(webhook))
        .with_state(state.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("Slack emulator stopped: {e}");
        }
    });
    Ok(RunningSlack {
        addr,
        state,
        handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn slack(config: SlackConfig) -> RunningSlack {
        start(config, ([127, 0, 0, 1], 0).into()).await.unwrap()
    }

    #[tokio::test]
    async fn accepts_a_message_and_records_it() {
        let slack = slack(SlackConfig::default()).await;
        let message = json!({
            "text": "3 deals closed",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Deals"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "*3* closed"}},
                {"type": "divider"},
            ],
        });
        let r = reqwest::Client::new()
            .post(slack.url())
            .json(&message)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
        assert_eq!(slack.messages(), vec![message]);
        slack.stop();
    }

    #[tokio::test]
    async fn rejects_bad_shapes_with_slack_error_bodies() {
        let slack = slack(SlackConfig::default()).await;
        let c = reqwest::Client::new();
        let long_header = "h".repeat(151);
        let cases = [
            ("not json".to_string(), 400_u16, "invalid_payload"),
            (json!({"text": ""}).to_string(), 400, "no_text"),
            (json!({"blocks": []}).to_string(), 400, "no_text"),
            (
                json!({"text": "x".repeat(40_001)}).to_string(),
                400,
                "msg_too_long",
            ),
            (
                json!({"blocks": [{"type": "video"}]}).to_string(),
                400,
                "invalid_blocks",
            ),
            (
                json!({"blocks": [{"type": "header", "text": {"type": "plain_text", "text": long_header}}]})
                    .to_string(),
                400,
                "invalid_blocks",
            ),
            (
                json!({"blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "*h*"}}]})
                    .to_string(),
                400,
                "invalid_blocks",
            ),
        ];
        for (body, status, error) in cases {
            let r = c.post(slack.url()).body(body.clone()).send().await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{body}");
            assert_eq!(r.text().await.unwrap(), error, "{body}");
        }
        let wrong = format!("http://{}/services/{TEAM}/{BOT}/nope", slack.addr);
        let r = c
            .post(wrong)
            .body("{\"text\":\"hi\"}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
        assert_eq!(r.text().await.unwrap(), "no_service");
        assert!(slack.messages().is_empty());
        slack.stop();
    }

    #[tokio::test]
    async fn rate_limits_then_fails_then_accepts() {
        let slack = slack(SlackConfig {
            fail_next: 1,
            rate_limit_next: 1,
        })
        .await;
        let c = reqwest::Client::new();
        let post = || c.post(slack.url()).json(&json!({"text": "hi"})).send();
        let r = post().await.unwrap();
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        assert_eq!(r.text().await.unwrap(), "rate_limited");
        assert_eq!(post().await.unwrap().status().as_u16(), 500);
        assert_eq!(post().await.unwrap().status().as_u16(), 200);
        assert_eq!(slack.messages().len(), 1);
        slack.stop();
    }
}
