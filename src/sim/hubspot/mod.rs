//! A local HubSpot: the CRM v3 objects API that ferry's extractor and syncer
//! use, following HubSpot's published contract (see `shared/HUBSPOT.md`):
//!
//! - `GET  /crm/v3/objects/{type}`: list with `limit` (≤ 100), `after`, `properties`, `archived`;
//! - `POST /crm/v3/objects/{type}/search`: filter groups, sorts, `limit` (≤ 200),
//!   `after`, `total`; at most 10,000 results per query (400 past that) and its own
//!   limit of 4 requests per second (its replies carry no rate-limit headers);
//! - `POST /crm/v3/objects/{type}/batch/{read,create,update,upsert,archive}`: at most
//!   100 inputs; 200/201, 207 with per-record errors, 400 for a bad batch (unknown
//!   property, invalid value), 409 for a duplicate unique value, 204 for archive;
//! - `GET|POST /crm/v3/properties/{type}`: property definitions, including custom
//!   unique properties (`hasUniqueValue`).
//!
//! Every call needs `Authorization: Bearer <token>` (401 otherwise). Calls
//! count against a rolling 10-second window and a daily budget, reported in the
//! `X-HubSpot-RateLimit-*` headers; over either, the reply is HubSpot's 429 body
//! with `policyName` `TEN_SECONDLY_ROLLING` or `DAILY`. Faults can be injected:
//! a share of calls answered 429 or 502, answered slowly, or dropped mid-reply.

mod api;
pub mod store;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
pub use store::{Crm, Record};

/// Injected faults, each a share of calls between 0 and 1.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answered 429 (`TEN_SECONDLY_ROLLING`) regardless of the real budget.
    pub rate_limited: f64,
    /// Answered 502.
    pub server_error: f64,
    /// Answered after `slow_ms`.
    pub slow: f64,
    pub slow_ms: u64,
    /// The connection is dropped after the status line.
    pub dropped: f64,
    /// A write is applied, then its reply is lost (the connection drops, as
    /// when a gateway times out after HubSpot wrote the records).
    pub lost_after_write: f64,
    /// A read or search is answered `200` with an HTML page (a proxy's or
    /// a maintenance page) instead of JSON.
    pub garbled: f64,
    /// A write is answered 502 before HubSpot applies it.
    pub write_error: f64,
}

/// An OAuth app whose refresh token `POST /oauth/v1/token` accepts.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
}

/// Emulator settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The bearer token accepted from the start (a private-app token, or an
    /// OAuth access token until [`RunningSim::expire_tokens`]).
    pub token: String,
    /// The OAuth app that may refresh access tokens, if any.
    pub oauth: Option<OAuthApp>,
    /// Requests per rolling 10 seconds (HubSpot Free/Starter: 100).
    pub ten_secondly: usize,
    /// Requests per day (Free/Starter: 250,000).
    pub daily: u64,
    /// Search requests per second (4).
    pub search_per_second: usize,
    /// How long `/search` misses a write (HubSpot's index lags writes; list
    /// and batch read see them at once). Writes planted through
    /// [`RunningSim::with_crm`] are indexed at once.
    pub search_lag: Duration,
    /// Store unique values as HubSpot does (emails trimmed and lower-cased)
    /// and do not echo `idProperty` in upsert and update replies.
    pub normalize: bool,
    /// Associations per record in one v4 page (HubSpot: 500); more page
    /// with `paging.next.after`.
    pub association_page: usize,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token: "ferry-sim-token".into(),
            oauth: None,
            ten_secondly: 100,
            daily: 250_000,
            search_per_second: 4,
            search_lag: Duration::from_secs(1),
            normalize: true,
            association_page: 500,
            faults: Faults::default(),
        }
    }
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub rate_limited: AtomicU64,
    pub token_refreshes: AtomicU64,
}

pub(crate) struct State {
    pub config: SimConfig,
    pub crm: Mutex<Crm>,
    /// Access tokens currently accepted.
    pub tokens: Mutex<std::collections::BTreeSet<String>>,
    window: Mutex<VecDeque<Instant>>,
    search_window: Mutex<VecDeque<Instant>>,
    daily_used: AtomicU64,
    pub stats: Stats,
    /// The faults in force (tests change them while the emulator runs).
    faults: Mutex<Faults>,
    /// Replies of this many next successful writes are lost after the write.
    lose_writes: AtomicU64,
}

/// Why a call was refused by a limit.
pub(crate) enum Limited {
    TenSecondly,
    Daily,
    Search,
}

/// Budget left after a call, for the rate-limit headers.
pub(crate) struct Budget {
    pub remaining: usize,
    pub daily_remaining: u64,
}

impl State {
    fn new(config: SimConfig) -> State {
        let search_lag = config.search_lag;
        let faults = Mutex::new(config.faults.clone());
        State {
            tokens: Mutex::new([config.token.clone()].into_iter().collect()),
            config,
            crm: Mutex::new({
                let mut crm = Crm::default();
                crm.search_lag = search_lag;
                crm
            }),
            window: Mutex::new(VecDeque::new()),
            search_window: Mutex::new(VecDeque::new()),
            daily_used: AtomicU64::new(0),
            stats: Stats::default(),
            faults,
            lose_writes: AtomicU64::new(0),
        }
    }

    pub(crate) fn faults(&self) -> Faults {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Whether this write's reply is one of the lost ones.
    pub(crate) fn take_lost_write(&self) -> bool {
        self.lose_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Count a call against the limits.
    pub(crate) fn take(&self, search: bool) -> std::result::Result<Budget, Limited> {
        let now = Instant::now();
        if search {
            let mut w = self.search_window.lock().map_err(|_| Limited::Search)?;
            while w
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
            {
                w.pop_front();
            }
            if w.len() >= self.config.search_per_second {
                return Err(Limited::Search);
            }
            w.push_back(now);
        }
        let mut w = self.window.lock().map_err(|_| Limited::TenSecondly)?;
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(10))
        {
            w.pop_front();
        }
        if self.daily_used.load(Ordering::SeqCst) >= self.config.daily {
            return Err(Limited::Daily);
        }
        if w.len() >= self.config.ten_secondly {
            return Err(Limited::TenSecondly);
        }
        w.push_back(now);
        let used = self.daily_used.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Budget {
            remaining: self.config.ten_secondly - w.len(),
            daily_remaining: self.config.daily.saturating_sub(used),
        })
    }
}

/// A running emulator.
pub struct RunningSim {
    pub addr: SocketAddr,
    state: Arc<State>,
    handle: JoinHandle<()>,
}

impl RunningSim {
    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Live (not archived) records of a type, by id.
    pub fn records(&self, kind: &str) -> Vec<Record> {
        self.state
            .crm
            .lock()
            .map(|crm| {
                crm.types
                    .get(kind)
                    .map(|t| {
                        t.records
                            .values()
                            .filter(|r| !r.archived)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Calls answered, and calls refused with 429.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.state.stats.calls.load(Ordering::SeqCst),
            self.state.stats.rate_limited.load(Ordering::SeqCst),
        )
    }

    /// Change the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.state.faults.lock() {
            *f = faults;
        }
    }

    /// The next `n` successful writes are applied, then their replies are
    /// lost (the connection drops), as when a gateway times out after
    /// HubSpot wrote the records.
    pub fn lose_next_writes(&self, n: u64) {
        self.state.lose_writes.store(n, Ordering::SeqCst);
    }

    /// Every access token issued so far stops working (as when an OAuth
    /// access token expires); a refresh through `/oauth/v1/token` issues a new one.
    pub fn expire_tokens(&self) {
        if let Ok(mut set) = self.state.tokens.lock() {
            set.clear();
        }
    }

    /// Start a new day: the daily budget is whole again (HubSpot resets it
    /// at midnight in the account's time zone).
    pub fn reset_daily(&self) {
        self.state.daily_used.store(0, Ordering::SeqCst);
    }

    /// OAuth token refreshes answered.
    pub fn token_refreshes(&self) -> u64 {
        self.state.stats.token_refreshes.load(Ordering::SeqCst)
    }

    /// Run `f` on the CRM (tests use it to plant records or read state).
    pub fn with_crm<T>(&self, f: impl FnOnce(&mut Crm) -> T) -> Option<T> {
        self.state.crm.lock().ok().map(|mut crm| f(&mut crm))
    }

    /// Stop serving.
    pub fn stop(self) {
        self.handle.abort();
    }
}

/// Start the emulator on `addr` (port 0 picks a free port).
pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<RunningSim> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let state = Arc::new(State::new(config));
    let app = api::router(state.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("hubspot emulator stopped: {e}");
        }
    });
    Ok(RunningSim {
        addr,
        state,
        handle,
    })
}
