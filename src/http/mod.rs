//! The HTTP layer every vendor connection shares: auth (bearer token or OAuth
//! refresh), the account's rate budget, the circuit breaker, and what to do
//! with each kind of reply.
//!
//! One [`Client`] per vendor account. A call goes through:
//! stopped? → breaker → rate budget (account, plus the caller's own) → send →
//! classify the reply:
//!
//! | reply | what happens |
//! |---|---|
//! | 2xx, 207 | returned; rate-limit headers steer the budget |
//! | 429 window (`TEN_SECONDLY_ROLLING`) | wait for the window (or `Retry-After`), send again |
//! | 429 daily (`DAILY`) | [`CallError::DailyLimit`]: stop cleanly, resume tomorrow |
//! | 401 / 403 | with OAuth, refresh the token once and send again; otherwise [`CallError::Auth`] and the client refuses every later call |
//! | 400, 404, 409, 422 | [`CallError::Rejected`] with the vendor's body: the caller isolates the bad rows |
//! | 5xx, timeout, dropped connection | exponential backoff (1 s doubling to 60 s, plus jitter) for idempotent calls, up to `max_attempts`; non-idempotent calls return at once so the caller can check what landed before resending |

pub mod limit;
pub mod shared;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

pub use limit::{Breaker, DailyExhausted, Permit, RateLimiter, account_budget, publish_budgets};

use crate::project::secret::Secret;

/// How a client authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No credentials.
    None,
    /// `Authorization: Bearer <token>` (a private-app token).
    Bearer(Secret),
    /// OAuth 2.0 with a refresh token: the access token is fetched on first
    /// use and refreshed once when a call answers 401.
    OAuth(OAuthConfig),
    /// OAuth 2.0 client credentials: the access token is fetched on first use
    /// and fetched again once when a call answers 401.
    ClientCredentials(ClientCredentials),
    /// OAuth 2.0 JWT bearer flow (Salesforce's server-to-server auth): a
    /// JWT signed with the app's private key is exchanged for an access
    /// token on first use and again once when a call answers 401.
    JwtBearer(JwtBearer),
    /// An API key in a header.
    ApiKeyHeader { header: String, key: Secret },
    /// An API key in a query parameter.
    ApiKeyQuery { param: String, key: Secret },
    /// HTTP basic auth.
    Basic { username: Secret, password: Secret },
    /// The credentials' `${VAR}` is not set: every call fails with this
    /// message (naming the file, line and variable), before anything is sent.
    Missing(String),
}

impl Auth {
    /// A one-way fingerprint of the credentials (never the credentials), so
    /// that callers with the same account share one rate budget.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let material = match self {
            Auth::None | Auth::Missing(_) => String::new(),
            Auth::Bearer(t) => t.expose().to_string(),
            Auth::OAuth(o) => format!("{}\0{}", o.client_id, o.refresh_token.expose()),
            Auth::ClientCredentials(c) => format!("{}\0{}", c.client_id, c.client_secret.expose()),
            // The org is the user's: one budget per (app, user).
            Auth::JwtBearer(j) => format!("{}\0{}", j.client_id, j.username),
            Auth::ApiKeyHeader { key, .. } | Auth::ApiKeyQuery { key, .. } => {
                key.expose().to_string()
            }
            Auth::Basic { username, password } => {
                format!("{}\0{}", username.expose(), password.expose())
            }
        };
        hex::encode(&Sha256::digest(material.as_bytes())[..8])
    }
}

/// The key of a vendor account's shared budget.
pub fn account_key(vendor: &str, base_url: &str, auth: &Auth) -> String {
    format!(
        "{vendor} {} {}",
        base_url.trim_end_matches('/'),
        auth.fingerprint()
    )
}

/// An OAuth 2.0 client-credentials grant.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
}

/// An OAuth 2.0 JWT bearer grant (RFC 7523): `iss` the app's client id,
/// `sub` the user, `aud` the login host, signed RS256 with `private_key`.
#[derive(Debug, Clone)]
pub struct JwtBearer {
    pub token_url: String,
    pub client_id: String,
    pub username: String,
    pub audience: String,
    /// The private key, PEM.
    pub private_key: Secret,
}

/// An OAuth app and the refresh token it was granted.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_token: Secret,
}

/// Retries for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// First backoff; it doubles each attempt.
    pub initial: Duration,
    /// Longest backoff.
    pub max: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1` (attempt counts from 1): `initial ×
    /// 2^(attempt-1)`, capped at `max`, plus up to 500 ms (or half of
    /// `initial`, if smaller) of jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let jitter_cap = (self.initial / 2).min(Duration::from_millis(500));
        let jitter = jitter_cap.mul_f64(rand::random::<f64>());
        exp.min(self.max) + jitter
    }
}

/// A vendor's name as people write it, for messages.
fn pretty(name: &str) -> &str {
    match name {
        "hubspot" => "HubSpot",
        "salesforce" => "Salesforce",
        "rest" => "the API",
        other => other,
    }
}

/// The vendor's rate-limit conventions.
#[derive(Debug, Clone, Copy)]
pub struct Vendor {
    pub name: &'static str,
    /// Header with the window's size.
    pub max_header: &'static str,
    /// Header with what is left in the window.
    pub remaining_header: &'static str,
    /// Header with what is left today.
    pub daily_remaining_header: &'static str,
    /// Whether a 429 or 403 body says the daily budget is spent.
    pub is_daily: fn(&Value) -> bool,
    /// The daily requests left, from headers in a form of the vendor's own
    /// (Salesforce's `Sforce-Limit-Info: api-usage=18/15000`).
    pub daily_remaining: fn(&HeaderMap) -> Option<u64>,
    /// The token reply's `instance_url` becomes the base URL (Salesforce:
    /// each org has its own host, learnt at login).
    pub instance_url_from_token: bool,
}

/// The message of a vendor's error body: `{"message"}`, or Salesforce's
/// `[{"message", "errorCode", "fields"}]`.
pub fn error_message(body: &Value) -> Option<String> {
    if let Some(m) = body["message"].as_str() {
        return Some(m.to_string());
    }
    let items: Vec<String> = body
        .as_array()?
        .iter()
        .filter_map(|e| {
            let m = e["message"].as_str()?;
            Some(match e["errorCode"].as_str() {
                Some(code) => format!("{code}: {m}"),
                None => m.to_string(),
            })
        })
        .collect();
    (!items.is_empty()).then(|| items.join("; "))
}

/// How an error says a vendor refused the credentials (the alerts look for it).
pub const REFUSED_CREDENTIALS: &str = "refused the credentials";

/// What a failed call means for the caller.
#[derive(Debug, Clone)]
pub enum CallError {
    /// 401/403: the credentials are wrong or lack a scope. The client sends
    /// nothing more.
    Auth { status: u16, message: String },
    /// The daily budget is spent; resume after it resets.
    DailyLimit,
    /// The vendor refused the request as invalid (400, 404, 409, 422).
    Rejected { status: u16, body: Value },
    /// Still failing after the allowed attempts (5xx, timeouts, dropped
    /// connections), or failed once on a call that is not safe to resend.
    Transient { message: String, attempts: u32 },
}

impl CallError {
    /// A short category for logs and the sync log.
    pub fn category(&self) -> String {
        match self {
            CallError::Auth { .. } => "AUTH".into(),
            CallError::DailyLimit => "DAILY_LIMIT".into(),
            CallError::Rejected { body, status } => body["category"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP_{status}")),
            CallError::Transient { .. } => "TRANSIENT".into(),
        }
    }

    /// As ferry's error, with who must act: refused credentials are the
    /// vendor's answer that a person must fix (`auth_hint` says what), a
    /// spent budget or a failure that outlasted the retries is the vendor's
    /// and worth running again, and a refused request is the user's.
    pub fn into_error(self, who: &str, auth_hint: &str) -> crate::error::Error {
        use crate::error::Error;
        match &self {
            CallError::Auth { .. } => Error::Vendor {
                vendor: who.to_string(),
                message: format!("{REFUSED_CREDENTIALS} ({}); {auth_hint}", self.message()),
                retryable: false,
            },
            CallError::DailyLimit | CallError::Transient { .. } => Error::Vendor {
                vendor: who.to_string(),
                message: self.message(),
                retryable: true,
            },
            CallError::Rejected { .. } => Error::Input(format!("{who}: {}", self.message())),
        }
    }

    pub fn message(&self) -> String {
        match self {
            CallError::Auth { status, message } => format!("HTTP {status}: {message}"),
            CallError::DailyLimit => "the vendor's daily request budget is spent".into(),
            CallError::Rejected { status, body } => {
                let m = error_message(body).unwrap_or_default();
                let detail: Vec<&str> = body["errors"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|e| e["message"].as_str()).collect())
                    .unwrap_or_default();
                if detail.is_empty() {
                    format!("HTTP {status}: {m}")
                } else {
                    format!("HTTP {status}: {m}: {}", detail.join("; "))
                }
            }
            CallError::Transient { message, attempts } => {
                format!("{message} (after {attempts} attempts)")
            }
        }
    }
}

/// One call.
pub struct Call<'a> {
    pub method: reqwest::Method,
    /// Path and query, appended to the base URL.
    pub path: String,
    pub body: Option<&'a Value>,
    /// A body that is not JSON, with its content type (Salesforce Bulk
    /// API's CSV).
    pub raw: Option<(&'static str, bytes::Bytes)>,
    /// The reply is not JSON (a CSV of job results): its bytes go to
    /// [`Reply::raw`] unparsed, up to [`MAX_RAW_REPLY_BYTES`].
    pub raw_reply: bool,
    /// A dotted path to the reply's records (`results`): the array there is
    /// checked but not parsed; its text goes to [`Reply::records`] and a
    /// null takes its place in [`Reply::body`], so a page is decoded
    /// straight into columns, off the fetching task.
    pub records_at: Option<&'a str>,
    /// Safe to send again when the first reply was lost.
    pub idempotent: bool,
    /// Budgets besides the account's that this call must fit (a sync's own
    /// share, the search endpoint's 4 per second).
    pub limits: Vec<&'a RateLimiter>,
}

impl<'a> Call<'a> {
    pub fn get(path: impl Into<String>) -> Call<'a> {
        Call {
            method: reqwest::Method::GET,
            path: path.into(),
            body: None,
            raw: None,
            raw_reply: false,
            records_at: None,
            idempotent: true,
            limits: Vec::new(),
        }
    }

    pub fn post(path: impl Into<String>, body: &'a Value, idempotent: bool) -> Call<'a> {
        Call {
            method: reqwest::Method::POST,
            path: path.into(),
            body: Some(body),
            raw: None,
            raw_reply: false,
            records_at: None,
            idempotent,
            limits: Vec::new(),
        }
    }

    /// See [`Call::records_at`].
    pub fn records_at(mut self, path: &'a str) -> Call<'a> {
        self.records_at = Some(path);
        self
    }

    pub fn limited_by(mut self, limit: &'a RateLimiter) -> Call<'a> {
        self.limits.push(limit);
        self
    }
}

/// A successful reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The JSON body (`Null` for an empty body such as 204, or when the
    /// call asked for [`Call::raw_reply`]).
    pub body: Value,
    /// The body's bytes, for a call with [`Call::raw_reply`] (else empty).
    pub raw: bytes::Bytes,
    /// For a call with [`Call::records_at`]: the JSON text at that path
    /// (a slice of the body, not a copy), if the path led somewhere.
    pub records: Option<bytes::Bytes>,
    pub headers: HeaderMap,
    /// Size of the body in bytes.
    pub bytes: usize,
    /// Attempts that carried the call (more than 1: an earlier attempt's
    /// reply was lost, so the vendor may have applied it already).
    pub attempts: u32,
    /// When the first attempt was sent.
    pub first_sent: chrono::DateTime<chrono::Utc>,
}

/// Counters for run summaries and benchmarks.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Requests sent (every attempt).
    pub calls: AtomicU64,
    /// 429 replies.
    pub rate_limited: AtomicU64,
    /// Attempts that failed transiently (5xx, timeout, dropped).
    pub transient_failures: AtomicU64,
}

/// A client for one vendor account.
pub struct Client {
    http: reqwest::Client,
    /// The vendor's base URL; a token reply's `instance_url` replaces it
    /// when the vendor says so.
    base: RwLock<String>,
    auth: Auth,
    access: RwLock<(u64, Option<Secret>)>,
    vendor: Vendor,
    account: Arc<RateLimiter>,
    breaker: Breaker,
    retry: RetryPolicy,
    stopped: Mutex<Option<CallError>>,
    scopes: String,
    pub stats: CallStats,
}

enum Attempt {
    Done(Reply),
    Fail(CallError),
    /// Send again after the pause (rate limited: not counted as an attempt).
    RateLimited(Duration),
    /// Send again after refreshing the token.
    Refresh,
    Transient(String),
}

impl Client {
    pub fn new(
        base: &str,
        auth: Auth,
        vendor: Vendor,
        account: Arc<RateLimiter>,
        retry: RetryPolicy,
    ) -> Result<Client, String> {
        if let Auth::Missing(why) = &auth {
            return Err(why.clone());
        }
        let http = reqwest::Client::builder()
            .timeout(retry.timeout)
            // A 307/308 replays a POST of contact data with its credentials:
            // follow a redirect only to the origin it came from.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let same = attempt
                    .previous()
                    .first()
                    .is_some_and(|first| first.origin() == attempt.url().origin());
                if same && attempt.previous().len() < 5 {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let auth_scopes = match &auth {
            Auth::ClientCredentials(c) => Some(c.scopes.join(" ")),
            _ => None,
        };
        let access = match &auth {
            Auth::Bearer(t) => Some(t.clone()),
            Auth::OAuth(_) | Auth::ClientCredentials(_) | Auth::JwtBearer(_) => None,
            // No token to fetch: these put their credentials on each request.
            _ => Some(Secret::new("")),
        };
        Ok(Client {
            http,
            base: RwLock::new(base.trim_end_matches('/').to_string()),
            auth,
            access: RwLock::new((0, access)),
            vendor,
            account,
            breaker: Breaker::new(20, Duration::from_secs(2)).named(vendor.name),
            retry,
            stopped: Mutex::new(None),
            scopes: match &auth_scopes {
                Some(s) => s.clone(),
                None => String::new(),
            },
            stats: CallStats::default(),
        })
    }

    /// The account's budget (shared with every user of this client).
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.account
    }

    /// Requests sent so far.
    pub fn calls(&self) -> u64 {
        self.stats.calls.load(Ordering::SeqCst)
    }

    /// Why the client stopped, if it did.
    pub fn stopped(&self) -> Option<CallError> {
        self.stopped.lock().ok().and_then(|s| s.clone())
    }

    fn stop(&self, why: CallError) -> CallError {
        if let Ok(mut s) = self.stopped.lock()
            && s.is_none()
        {
            *s = Some(why.clone());
        }
        why
    }

    /// Send a call, with the retries and waits described in the module docs.
    pub async fn send(&self, call: Call<'_>) -> Result<Reply, CallError> {
        let mut attempts = 0u32;
        let mut refreshed = false;
        let mut rate_waits = 0u32;
        let first_sent = chrono::Utc::now();
        loop {
            if let Some(why) = self.stopped() {
                return Err(why);
            }
            // Settled below for every outcome that says something about the
            // vendor's health; dropped unsettled otherwise (see Permit).
            let permit = self.breaker.admit().await;
            let mut stamps = Vec::with_capacity(call.limits.len());
            for l in &call.limits {
                let stamp = l
                    .acquire_saying(|| {
                        format!(
                            "waiting for {}'s limit on this endpoint ({})",
                            pretty(self.vendor.name),
                            l.describe()
                        )
                    })
                    .await;
                stamps.push(stamp.map_err(|_| CallError::DailyLimit)?);
            }
            let turn = self
                .account
                .acquire_saying(|| {
                    format!(
                        "waiting for {}'s rate limit ({})",
                        pretty(self.vendor.name),
                        self.account.describe()
                    )
                })
                .await;
            let Ok(stamp) = turn else {
                return Err(self.stop(CallError::DailyLimit));
            };
            attempts += 1;
            let outcome = self.attempt(&call).await;
            for (l, s) in call.limits.iter().zip(stamps) {
                l.complete(s);
            }
            self.account.complete(stamp);
            match outcome {
                Attempt::Done(mut r) => {
                    permit.record(true);
                    r.attempts = attempts;
                    r.first_sent = first_sent;
                    return Ok(r);
                }
                Attempt::Fail(e) => {
                    permit.record(true);
                    return Err(match e {
                        CallError::Auth { .. } | CallError::DailyLimit => self.stop(e),
                        other => other,
                    });
                }
                Attempt::RateLimited(pause) => {
                    drop(permit);
                    attempts -= 1;
                    rate_waits += 1;
                    if rate_waits > 30 {
                        return Err(CallError::Transient {
                            message: "still rate limited after 30 waits".into(),
                            attempts,
                        });
                    }
                    tokio::time::sleep(pause).await;
                }
                Attempt::Refresh => {
                    drop(permit);
                    if refreshed {
                        let e = CallError::Auth {
                            status: 401,
                            message: "the refreshed access token was refused too".into(),
                        };
                        return Err(self.stop(e));
                    }
                    refreshed = true;
                    attempts -= 1;
                    if let Err(e) = self.refresh().await {
                        return Err(self.stop(e));
                    }
                }
                Attempt::Transient(message) => {
                    permit.record(false);
                    self.stats.transient_failures.fetch_add(1, Ordering::SeqCst);
                    if !call.idempotent || attempts >= self.retry.max_attempts {
                        return Err(CallError::Transient { message, attempts });
                    }
                    let pause = self.retry.backoff(attempts);
                    tracing::info!(
                        vendor = self.vendor.name,
                        path = %call.path.split('?').next().unwrap_or_default(),
                        attempt = attempts,
                        pause_ms = pause.as_millis() as u64,
                        "transient failure, retrying: {message}"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn token(&self) -> Result<(u64, Secret), CallError> {
        if let Ok(guard) = self.access.read()
            && let (generation, Some(t)) = &*guard
        {
            return Ok((*generation, t.clone()));
        }
        self.refresh().await?;
        let guard = self.access.read().map_err(|_| CallError::Auth {
            status: 401,
            message: "token lock poisoned".into(),
        })?;
        match &*guard {
            (g, Some(t)) => Ok((*g, t.clone())),
            _ => Err(CallError::Auth {
                status: 401,
                message: "no access token".into(),
            }),
        }
    }

    /// The base URL calls go to now.
    pub fn base(&self) -> String {
        self.base.read().map(|b| b.clone()).unwrap_or_default()
    }

    /// Fetch a new OAuth access token (refresh-token, client-credentials or
    /// JWT bearer grant).
    async fn refresh(&self) -> Result<(), CallError> {
        let assertion;
        let (token_url, form): (&str, Vec<(&str, &str)>) = match &self.auth {
            Auth::JwtBearer(j) => {
                assertion = jwt_assertion(j)?;
                (
                    &j.token_url,
                    vec![
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", assertion.expose()),
                    ],
                )
            }
            Auth::OAuth(o) => (
                &o.token_url,
                vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", o.client_id.as_str()),
                    ("client_secret", o.client_secret.expose()),
                    ("refresh_token", o.refresh_token.expose()),
                ],
            ),
            Auth::ClientCredentials(c) => {
                let mut f = vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", c.client_id.as_str()),
                    ("client_secret", c.client_secret.expose()),
                ];
                if !c.scopes.is_empty() {
                    f.push(("scope", self.scopes.as_str()));
                }
                (&c.token_url, f)
            }
            _ => {
                return Err(CallError::Auth {
                    status: 401,
                    message: "the credentials were refused".into(),
                });
            }
        };
        tracing::info!(vendor = self.vendor.name, "fetching an OAuth access token");
        let reply = self
            .http
            .post(token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| CallError::Auth {
                status: 0,
                message: format!("cannot reach the OAuth token endpoint: {}", e.without_url()),
            })?;
        let status = reply.status().as_u16();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        let Some(token) = body["access_token"].as_str().filter(|_| status == 200) else {
            return Err(CallError::Auth {
                status,
                message: format!(
                    "the OAuth token request was refused ({}): check client_id, client_secret and the refresh token or scopes",
                    body["error_description"]
                        .as_str()
                        .or(body["status"].as_str())
                        .or(body["error"].as_str())
                        .unwrap_or("no access_token in the reply")
                ),
            });
        };
        if self.vendor.instance_url_from_token
            && let Some(instance) = body["instance_url"].as_str()
        {
            match url::Url::parse(instance) {
                Ok(u) if matches!(u.scheme(), "https" | "http") => {
                    if let Ok(mut b) = self.base.write() {
                        *b = instance.trim_end_matches('/').to_string();
                    }
                }
                _ => {
                    return Err(CallError::Auth {
                        status,
                        message: format!(
                            "the token reply's instance_url is not a URL: {instance:?}"
                        ),
                    });
                }
            }
        }
        if let Ok(mut guard) = self.access.write() {
            guard.0 += 1;
            guard.1 = Some(Secret::new(token));
        }
        Ok(())
    }

    async fn attempt(&self, call: &Call<'_>) -> Attempt {
        let (generation, token) = match self.token().await {
            Ok(t) => t,
            Err(e) => return Attempt::Fail(e),
        };
        // An absolute URL (a "next" link) must stay on the vendor's host, so
        // credentials never go anywhere else.
        let base = self.base();
        let url = if call.path.starts_with("http://") || call.path.starts_with("https://") {
            if !same_origin(&call.path, &base) {
                return Attempt::Fail(CallError::Rejected {
                    status: 0,
                    body: serde_json::json!({"message": format!(
                        "refusing to follow a link to another host: {}", call.path
                    )}),
                });
            }
            call.path.clone()
        } else {
            format!("{base}{}", call.path)
        };
        let mut req = self.http.request(call.method.clone(), &url);
        req = match &self.auth {
            Auth::None | Auth::Missing(_) => req,
            Auth::Bearer(_) | Auth::OAuth(_) | Auth::ClientCredentials(_) | Auth::JwtBearer(_) => {
                req.bearer_auth(token.expose())
            }
            Auth::ApiKeyHeader { header, key } => req.header(header.as_str(), key.expose()),
            Auth::ApiKeyQuery { param, key } => req.query(&[(param.as_str(), key.expose())]),
            Auth::Basic { username, password } => {
                req.basic_auth(username.expose(), Some(password.expose()))
            }
        };
        if let Some(b) = call.body {
            req = req.json(b);
        }
        if let Some((content_type, bytes)) = &call.raw {
            req = req
                .header(reqwest::header::CONTENT_TYPE, *content_type)
                .body(bytes.clone());
        }
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        crate::metrics::api_call(self.vendor.name);
        let reply = match req.send().await {
            Ok(r) => r,
            // without_url: a URL may carry an API key in its query.
            Err(e) => return Attempt::Transient(describe(e)),
        };
        let status = reply.status().as_u16();
        let headers = reply.headers().clone();
        let cap = if call.raw_reply {
            MAX_RAW_REPLY_BYTES
        } else {
            MAX_REPLY_BYTES
        };
        let bytes = match read_capped(reply, cap).await {
            Ok(b) => b,
            Err(why) => return Attempt::Transient(why),
        };
        if call.raw_reply && (200..=299).contains(&status) {
            self.observe(&headers);
            return Attempt::Done(Reply {
                status,
                body: Value::Null,
                bytes: bytes.len(),
                raw: bytes,
                records: None,
                headers,
                attempts: 1,
                first_sent: chrono::Utc::now(),
            });
        }
        let mut records = None;
        let parsed: Option<Value> = if bytes.is_empty() {
            Some(Value::Null)
        } else if let Some(path) = call.records_at.filter(|_| (200..=299).contains(&status)) {
            split_at(&bytes, path).ok().map(|(v, r)| {
                records = r;
                v
            })
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        self.observe(&headers);
        let body = match parsed {
            Some(v) => v,
            // A 2xx whose body is not JSON (a proxy's HTML page, a cut or
            // garbled reply) is not evidence of anything: not "no records",
            // not "written". It is a failed call.
            None if (200..=299).contains(&status) => {
                return Attempt::Transient(format!(
                    "HTTP {status} with a reply that is not JSON ({} bytes: {:?}); treated as a failed call",
                    bytes.len(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
                ));
            }
            None => Value::String(String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into()),
        };
        match status {
            200..=299 => Attempt::Done(Reply {
                status,
                body,
                raw: bytes::Bytes::new(),
                records,
                bytes: bytes.len(),
                headers,
                attempts: 1,
                first_sent: chrono::Utc::now(),
            }),
            // Redirects are followed only within the vendor's origin (see
            // Client::new); one that points elsewhere ends here.
            300..=399 => Attempt::Fail(CallError::Rejected {
                status,
                body: serde_json::json!({
                    "category": "REDIRECT_REFUSED",
                    "message": format!(
                        "the vendor redirected the call to {}; ferry follows redirects only within {}, so credentials and records never leave the vendor's host. Check the destination's url",
                        headers.get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(redact_url).unwrap_or_else(|| "another address".into()),
                        redact_url(&base)
                    ),
                }),
            }),
            429 => {
                self.stats.rate_limited.fetch_add(1, Ordering::SeqCst);
                crate::metrics::rate_limited(self.vendor.name);
                if (self.vendor.is_daily)(&body) {
                    self.account.exhaust_daily();
                    return Attempt::Fail(CallError::DailyLimit);
                }
                let pause = retry_after(&headers).unwrap_or_else(|| self.account.interval());
                tracing::info!(
                    vendor = self.vendor.name,
                    pause_ms = pause.as_millis() as u64,
                    policy = body["policyName"].as_str().unwrap_or("unknown"),
                    "rate limited; waiting for the window"
                );
                self.account.pause(pause);
                Attempt::RateLimited(pause)
            }
            401 => {
                let stale = self.access.read().is_ok_and(|g| g.0 != generation);
                if stale {
                    // Another call refreshed the token meanwhile: send again.
                    return Attempt::RateLimited(Duration::ZERO);
                }
                if matches!(
                    self.auth,
                    Auth::OAuth(_) | Auth::ClientCredentials(_) | Auth::JwtBearer(_)
                ) {
                    return Attempt::Refresh;
                }
                Attempt::Fail(CallError::Auth {
                    status,
                    message: error_message(&body).unwrap_or_else(|| "unauthorized".into()),
                })
            }
            // Salesforce answers a spent daily budget 403 REQUEST_LIMIT_EXCEEDED.
            403 if (self.vendor.is_daily)(&body) => {
                self.stats.rate_limited.fetch_add(1, Ordering::SeqCst);
                self.account.exhaust_daily();
                Attempt::Fail(CallError::DailyLimit)
            }
            403 => Attempt::Fail(CallError::Auth {
                status,
                message: error_message(&body).unwrap_or_else(|| "forbidden".into()),
            }),
            400..=499 => Attempt::Fail(CallError::Rejected { status, body }),
            _ => Attempt::Transient(format!(
                "HTTP {status}: {}",
                body["message"].as_str().unwrap_or("server error")
            )),
        }
    }

    fn observe(&self, h: &HeaderMap) {
        let num = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let max = num(self.vendor.max_header).map(|v| v as usize);
        let remaining = num(self.vendor.remaining_header).map(|v| v as usize);
        let daily =
            num(self.vendor.daily_remaining_header).or_else(|| (self.vendor.daily_remaining)(h));
        if max.is_some() || remaining.is_some() || daily.is_some() {
            self.account.observe(max, remaining, daily);
        }
    }
}

/// A JWT bearer assertion: valid three minutes (Salesforce's maximum).
fn jwt_assertion(j: &JwtBearer) -> Result<Secret, CallError> {
    let refused = |message: String| CallError::Auth { status: 0, message };
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(j.private_key.expose().as_bytes()).map_err(
        |e| {
            refused(format!(
                "the JWT private key is not an RSA key in PEM ({e}): check private_key"
            ))
        },
    )?;
    let claims = serde_json::json!({
        "iss": j.client_id,
        "sub": j.username,
        "aud": j.audience,
        "exp": chrono::Utc::now().timestamp() + 180,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .map_err(|e| refused(format!("cannot sign the JWT: {e}")))?;
    Ok(Secret::new(token))
}

/// Parse a JSON body except the value at a dotted path of object keys,
/// which is only checked: the body with a null there, and that value's text
/// as a slice of `bytes`. A path through something other than an object
/// leaves the body whole (and no slice).
pub fn split_at(
    bytes: &bytes::Bytes,
    path: &str,
) -> std::result::Result<(Value, Option<bytes::Bytes>), serde_json::Error> {
    use serde::de::DeserializeSeed;
    let keys: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').collect()
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (value, raw) = Skeleton(&keys).deserialize(&mut de)?;
    de.end()?;
    let raw = raw.map(|r| {
        let text = r.get().as_bytes();
        let start = text.as_ptr() as usize - bytes.as_ptr() as usize;
        bytes.slice(start..start + text.len())
    });
    Ok((value, raw))
}

/// The body's value with the one at `self.0` captured unparsed.
struct Skeleton<'p>(&'p [&'p str]);

impl<'de> serde::de::DeserializeSeed<'de> for Skeleton<'_> {
    type Value = (Value, Option<&'de serde_json::value::RawValue>);
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        use serde::Deserialize;
        match self.0 {
            [] => <&serde_json::value::RawValue>::deserialize(d).map(|r| (Value::Null, Some(r))),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Skeleton<'_> {
    type Value = (Value, Option<&'de serde_json::value::RawValue>);
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        let mut raw = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.0[0] {
                let (v, r) = map.next_value_seed(Skeleton(&self.0[1..]))?;
                raw = r;
                out.insert(key, v);
            } else {
                let v: Value = map.next_value()?;
                out.insert(key, v);
            }
        }
        Ok((Value::Object(out), raw))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        use serde::Deserialize;
        Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(|v| (v, None))
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
        Ok((Value::Bool(v), None))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok((Value::from(v), None))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
        Ok((Value::from(v), None))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok((Value::from(v), None))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok((Value::String(v.to_string()), None))
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok((Value::Null, None))
    }
}

fn same_origin(url: &str, base: &str) -> bool {
    match (url::Url::parse(url), url::Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// The longest pause a `Retry-After` can ask for; longer asks are clamped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The largest reply body ferry reads; a longer one is a failed call.
pub const MAX_REPLY_BYTES: usize = 64 << 20;

/// The largest non-JSON reply ferry reads (a Bulk job's result CSV).
pub const MAX_RAW_REPLY_BYTES: usize = 512 << 20;

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, std::time::SystemTime::now())
}

/// A `Retry-After` value as a pause: delay-seconds (fractions accepted) or
/// an HTTP-date, clamped to `0..=MAX_RETRY_AFTER`. Negative values mean no
/// pause; NaN, infinities and text that is neither form give `None` (the
/// caller waits for the window instead). Never panics.
pub fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() {
            return None;
        }
        return Some(Duration::from_secs_f64(
            secs.clamp(0.0, MAX_RETRY_AFTER.as_secs_f64()),
        ));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// Read a reply's body, refusing one larger than `cap` bytes.
async fn read_capped(mut reply: reqwest::Response, cap: usize) -> Result<bytes::Bytes, String> {
    if reply.content_length().is_some_and(|n| n > cap as u64) {
        return Err(format!(
            "the reply is {} bytes, more than the {cap} ferry reads",
            reply.content_length().unwrap_or_default()
        ));
    }
    let mut buf = bytes::BytesMut::new();
    loop {
        match reply.chunk().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > cap {
                    return Err(format!(
                        "the reply is longer than the {cap} bytes ferry reads"
                    ));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => return Err(format!("reply cut off: {}", describe(e))),
        }
    }
}

/// A URL without its query (which may hold an API key) or user info.
pub fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut url) => {
            url.set_query(None);
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => "an unreadable address".into(),
    }
}

/// A transport error with its causes ("error sending request: tcp connect
/// error: Connection refused"), without the URL (its query may hold a key).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let p = RetryPolicy::default();
        for (attempt, base) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (12, 60)] {
            let b = p.backoff(attempt);
            assert!(b >= Duration::from_secs(base), "attempt {attempt}: {b:?}");
            assert!(
                b <= Duration::from_secs(base) + Duration::from_millis(500),
                "attempt {attempt}: {b:?}"
            );
        }
    }

    /// Regression: `Retry-After: -1`, `1e30` or `NaN` panicked in
    /// `Duration::from_secs_f64` and killed ferry.
    #[test]
    fn retry_after_never_panics_and_is_clamped() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let p = |v: &str| parse_retry_after(v, now);
        assert_eq!(p("-1"), Some(Duration::ZERO));
        assert_eq!(p("1e30"), Some(MAX_RETRY_AFTER));
        assert_eq!(p("NaN"), None);
        assert_eq!(p("inf"), None);
        assert_eq!(p(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(p("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(p("soon"), None);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(p(&later), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(p(&past), Some(Duration::ZERO));
    }

    proptest::proptest! {
        #[test]
        fn retry_after_accepts_any_text(v in "\\PC{0,40}") {
            let d = parse_retry_after(&v, std::time::SystemTime::now());
            proptest::prop_assert!(d.is_none_or(|d| d <= MAX_RETRY_AFTER));
        }

        #[test]
        fn retry_after_accepts_any_number(x in proptest::num::f64::ANY) {
            let d = parse_retry_after(&x.to_string(), std::time::SystemTime::now());
            proptest::prop_assert!(d.is_none_or(|d| d <= MAX_RETRY_AFTER));
        }
    }
}
