//! Rate limiting and circuit breaking for vendor APIs.
//!
//! A [`RateLimiter`] holds one vendor account's budget: a rolling window
//! (HubSpot: 100 requests per 10 s) and an optional daily budget. Every call
//! to the account waits in [`RateLimiter::acquire`] before it is sent, so all
//! syncs and extracts sharing the account share the budget. The vendor's
//! rate-limit headers steer it ([`RateLimiter::observe`]): when the vendor
//! reports less budget left than ferry has counted (another app uses the same
//! account), the window is topped up so ferry slows down before a 429.
//!
//! A [`Breaker`] stops sending when most recent calls failed, waits, and lets
//! one probe through before resuming.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Margin added to the window so a request never arrives at the vendor just
/// before its oldest predecessor leaves the vendor's window.
const WINDOW_MARGIN: Duration = Duration::from_millis(60);

/// One budget per vendor account in this process, keyed by [`account_key`]:
/// every extractor and sync that talks to the same account waits in the same
/// limiter. Entries live as long as someone holds them.
static ACCOUNTS: std::sync::LazyLock<
    Mutex<std::collections::HashMap<String, std::sync::Weak<RateLimiter>>>,
> = std::sync::LazyLock::new(|| Mutex::new(std::collections::HashMap::new()));

/// The calls in the window of an account's last limiter, kept when it is
/// dropped, for the next one of the same account.
type Recent = (VecDeque<Instant>, Option<Instant>);
static RECENT: std::sync::LazyLock<Mutex<std::collections::HashMap<String, Recent>>> =
    std::sync::LazyLock::new(|| Mutex::new(std::collections::HashMap::new()));

/// The shared budget for `key`, created with these limits if nobody holds it.
pub fn account_budget(
    key: &str,
    max: usize,
    interval: Duration,
    daily: Option<u64>,
) -> std::sync::Arc<RateLimiter> {
    let Ok(mut map) = ACCOUNTS.lock() else {
        return std::sync::Arc::new(RateLimiter::new(max, interval, daily));
    };
    if let Some(existing) = map.get(key).and_then(std::sync::Weak::upgrade) {
        return existing;
    }
    let mut limiter = RateLimiter::new(max, interval, daily);
    // The vendor's window still holds what the account's previous limiter
    // in this process sent (an extract just before a sync in one build):
    // start from those calls, not from an empty window and a 429.
    if let Some((sent, paused_until)) = RECENT.lock().ok().and_then(|mut r| r.remove(key))
        && let Ok(w) = limiter.inner.get_mut()
    {
        let now = Instant::now();
        w.sent = sent
            .into_iter()
            .filter(|t| now.duration_since(*t) < w.interval + WINDOW_MARGIN)
            .collect();
        w.paused_until = paused_until.filter(|p| *p > now);
    }
    limiter.account = Some(key.to_string());
    let fresh = std::sync::Arc::new(limiter);
    map.retain(|_, w| w.strong_count() > 0);
    map.insert(key.to_string(), std::sync::Arc::downgrade(&fresh));
    fresh
}

/// Publish every live account's daily budget to the metrics (and return
/// them as `(account, limit, remaining)`; the account is named by vendor and
/// URL, never by credential).
pub fn publish_budgets() -> Vec<(String, u64, u64)> {
    let live: Vec<(String, std::sync::Arc<RateLimiter>)> = match ACCOUNTS.lock() {
        Ok(map) => map
            .iter()
            .filter_map(|(k, w)| w.upgrade().map(|l| (k.clone(), l)))
            .collect(),
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for (key, limiter) in live {
        if let Some((limit, remaining)) = limiter.daily() {
            // "<vendor> <url> <fingerprint>": drop the fingerprint.
            let name = match key.rsplit_once(' ') {
                Some((head, _)) if head.contains(' ') => head.to_string(),
                _ => key.clone(),
            };
            let name = match name.split_once(' ') {
                Some((vendor, url)) => format!("{vendor} {}", super::redact_url(url)),
                None => name,
            };
            crate::metrics::budget(&name, limit, remaining);
            out.push((name, limit, remaining));
        }
    }
    out
}

/// The daily budget is spent: no call may be sent until it resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyExhausted;

#[derive(Debug)]
struct Window {
    max: usize,
    interval: Duration,
    sent: VecDeque<Instant>,
    paused_until: Option<Instant>,
    daily_remaining: Option<u64>,
    daily_limit: Option<u64>,
    /// Processes sharing the account's window (this one included); each
    /// sends at most `max / share` per window.
    share: usize,
    /// Requests sent since this limiter was made.
    sent_total: u64,
}

/// One account's request budget.
#[derive(Debug)]
pub struct RateLimiter {
    inner: Mutex<Window>,
    /// The account (from [`account_budget`]), whose window outlives this.
    account: Option<String>,
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        let Some(account) = self.account.take() else {
            return;
        };
        if let Ok(w) = self.inner.get_mut()
            && let Ok(mut recent) = RECENT.lock()
        {
            recent.insert(account, (std::mem::take(&mut w.sent), w.paused_until));
        }
    }
}

impl RateLimiter {
    /// `max` requests per rolling `interval`, and `daily` requests per day if set.
    pub fn new(max: usize, interval: Duration, daily: Option<u64>) -> RateLimiter {
        RateLimiter {
            inner: Mutex::new(Window {
                max: max.max(1),
                interval,
                sent: VecDeque::new(),
                paused_until: None,
                daily_remaining: daily,
                daily_limit: daily,
                share: 1,
                sent_total: 0,
            }),
            account: None,
        }
    }

    /// The daily budget and what is left of it, if the account has one.
    pub fn daily(&self) -> Option<(u64, u64)> {
        let w = self.inner.lock().ok()?;
        Some((w.daily_limit?, w.daily_remaining?))
    }

    /// Wait until a request may be sent, and count it. Returns the request's
    /// stamp for [`RateLimiter::complete`].
    pub async fn acquire(&self) -> Result<Instant, DailyExhausted> {
        loop {
            let wait = {
                let Ok(mut w) = self.inner.lock() else {
                    return Ok(Instant::now());
                };
                let now = Instant::now();
                if w.daily_remaining == Some(0) {
                    return Err(DailyExhausted);
                }
                let interval = w.interval;
                while w
                    .sent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= interval + WINDOW_MARGIN)
                {
                    w.sent.pop_front();
                }
                match w.paused_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        w.paused_until = None;
                        let cap = (w.max / w.share.max(1)).max(1);
                        if w.sent.len() < cap {
                            w.sent.push_back(now);
                            w.sent_total += 1;
                            if let Some(d) = w.daily_remaining.as_mut() {
                                *d = d.saturating_sub(1);
                            }
                            return Ok(now);
                        }
                        let oldest = w.sent.front().copied().unwrap_or(now);
                        (oldest + interval + WINDOW_MARGIN).saturating_duration_since(now)
                    }
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// The reply to the request stamped `stamp` arrived: count the request
    /// from now on. The vendor counted it from when it arrived there, which is
    /// somewhere between the two; counting from the reply means a slow
    /// network or a busy machine can never make ferry send into a window the
    /// vendor still considers full.
    pub fn complete(&self, stamp: Instant) {
        let Ok(mut w) = self.inner.lock() else {
            return;
        };
        if let Some(slot) = w.sent.iter_mut().find(|t| **t == stamp) {
            *slot = Instant::now();
            w.sent.make_contiguous().sort();
        }
    }

    /// Steer by what the vendor reported after a call: its window size, what
    /// is left in the window, and what is left today.
    pub fn observe(
        &self,
        max: Option<usize>,
        remaining: Option<usize>,
        daily_remaining: Option<u64>,
    ) {
        let Ok(mut w) = self.inner.lock() else {
            return;
        };
        if let Some(m) = max
            && m > 0
            && m < w.max
        {
            w.max = m;
        }
        if let Some(r) = remaining {
            // The vendor counts more calls than ferry sent: someone else
            // shares the account. Count theirs too (this process's part of
            // them when other ferry processes share the window).
            let used_by_vendor = w.max.saturating_sub(r).div_ceil(w.share.max(1));
            let now = Instant::now();
            while w.sent.len() < used_by_vendor {
                w.sent.push_back(now);
            }
        }
        if let Some(d) = daily_remaining {
            w.daily_remaining = Some(w.daily_remaining.map_or(d, |mine| mine.min(d)));
        }
    }

    /// `n` processes (this one included) share the account's window now.
    pub fn set_share(&self, n: usize) {
        if let Ok(mut w) = self.inner.lock() {
            w.share = n.max(1);
        }
    }

    /// Requests this limiter let through so far.
    pub fn sent_total(&self) -> u64 {
        self.inner.lock().map(|w| w.sent_total).unwrap_or(0)
    }

    /// Other processes used `others` of today's `limit`: what is left for
    /// this one is at most `limit - others - what this one sent today`.
    pub fn account_daily(&self, limit: u64, others: u64, mine_today: u64) {
        if let Ok(mut w) = self.inner.lock() {
            let left = limit.saturating_sub(others).saturating_sub(mine_today);
            w.daily_remaining = Some(w.daily_remaining.map_or(left, |d| d.min(left)));
        }
    }

    /// Send nothing for `pause` (after a 429 for the rolling window).
    pub fn pause(&self, pause: Duration) {
        if let Ok(mut w) = self.inner.lock() {
            let until = Instant::now() + pause;
            if w.paused_until.is_none_or(|u| u < until) {
                w.paused_until = Some(until);
            }
        }
    }

    /// The vendor said the daily budget is spent.
    pub fn exhaust_daily(&self) {
        if let Ok(mut w) = self.inner.lock() {
            w.daily_remaining = Some(0);
        }
    }

    /// `190 per 10 s`: the window as progress bars name it.
    pub fn describe(&self) -> String {
        self.inner
            .lock()
            .map(|w| {
                let cap = (w.max / w.share.max(1)).max(1);
                format!("{cap} per {} s", w.interval.as_secs_f64())
            })
            .unwrap_or_default()
    }

    /// [`RateLimiter::acquire`], saying on the progress bars what it waits
    /// for (`what`) once the wait is longer than a blink.
    pub async fn acquire_saying(
        &self,
        what: impl FnOnce() -> String,
    ) -> Result<Instant, DailyExhausted> {
        let turn = self.acquire();
        tokio::pin!(turn);
        tokio::select! {
            r = &mut turn => return r,
            _ = tokio::time::sleep(Duration::from_millis(150)) => {}
        }
        let until = self.inner.lock().ok().and_then(|w| {
            w.paused_until
                .or_else(|| w.sent.front().map(|t| *t + w.interval + WINDOW_MARGIN))
        });
        let _shown = crate::console::waiting(what(), until);
        turn.await
    }

    /// The rolling window's length.
    pub fn interval(&self) -> Duration {
        self.inner
            .lock()
            .map(|w| w.interval)
            .unwrap_or(Duration::from_secs(10))
    }
}

#[derive(Debug)]
enum BreakerState {
    Closed,
    Open { until: Instant },
    Probing,
}

#[derive(Debug)]
struct BreakerInner {
    recent: VecDeque<bool>,
    state: BreakerState,
    cooldown: Duration,
    trips: u64,
}

impl Drop for Breaker {
    fn drop(&mut self) {
        if let Ok(b) = self.inner.lock()
            && !matches!(b.state, BreakerState::Closed)
        {
            crate::metrics::circuit(self.vendor, false);
        }
    }
}

/// Opens when more than half of the last `window` calls failed (with at least
/// `window / 2` calls seen); after a cool-down one probe call goes through,
/// and its success closes the breaker again. Each consecutive trip doubles the
/// cool-down, up to a minute.
#[derive(Debug)]
pub struct Breaker {
    /// The vendor, for the `ferry_circuit_open` metric.
    vendor: &'static str,
    window: usize,
    base_cooldown: Duration,
    inner: Mutex<BreakerInner>,
}

impl Breaker {
    pub fn new(window: usize, cooldown: Duration) -> Breaker {
        Breaker {
            vendor: "unnamed",
            window: window.max(2),
            base_cooldown: cooldown,
            inner: Mutex::new(BreakerInner {
                recent: VecDeque::new(),
                state: BreakerState::Closed,
                cooldown,
                trips: 0,
            }),
        }
    }

    /// The breaker of `vendor`'s client (named in the metrics).
    pub fn named(mut self, vendor: &'static str) -> Breaker {
        self.vendor = vendor;
        crate::metrics::vendor_seen(vendor);
        self
    }

    /// Wait until a call may be sent. The returned [`Permit`] must be settled
    /// with [`Permit::record`] once the call's outcome is known; a permit
    /// dropped unsettled (the call was rate limited, refreshed its token,
    /// stopped on the daily budget, timed out in the caller or was cancelled)
    /// says nothing about the vendor's health, so a probe dropped that way
    /// hands the probe to the next caller instead of leaving everyone parked.
    pub async fn admit(&self) -> Permit<'_> {
        loop {
            let wait = {
                let Ok(mut b) = self.inner.lock() else {
                    return Permit::new(self, false);
                };
                let now = Instant::now();
                match b.state {
                    BreakerState::Closed => return Permit::new(self, false),
                    BreakerState::Open { until } if until <= now => {
                        tracing::info!("circuit breaker: sending one probe call");
                        b.state = BreakerState::Probing;
                        return Permit::new(self, true);
                    }
                    BreakerState::Open { until } => until - now,
                    BreakerState::Probing => Duration::from_millis(50),
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// A probe ended without an outcome: let the next caller probe.
    fn unsettled_probe(&self) {
        if let Ok(mut b) = self.inner.lock()
            && matches!(b.state, BreakerState::Probing)
        {
            b.state = BreakerState::Open {
                until: Instant::now(),
            };
        }
    }

    /// Record a call's outcome (`ok = false` for 5xx, timeouts, dropped
    /// connections). Prefer [`Permit::record`], which also settles a probe.
    pub fn record(&self, ok: bool) {
        let Ok(mut b) = self.inner.lock() else {
            return;
        };
        if matches!(b.state, BreakerState::Probing) {
            if ok {
                tracing::info!("circuit breaker: probe succeeded, resuming");
                b.state = BreakerState::Closed;
                crate::metrics::circuit(self.vendor, false);
                b.recent.clear();
                b.cooldown = self.base_cooldown;
            } else {
                b.cooldown = (b.cooldown * 2).min(Duration::from_secs(60));
                b.state = BreakerState::Open {
                    until: Instant::now() + b.cooldown,
                };
            }
            return;
        }
        b.recent.push_back(ok);
        while b.recent.len() > self.window {
            b.recent.pop_front();
        }
        let failed = b.recent.iter().filter(|ok| !**ok).count();
        if matches!(b.state, BreakerState::Closed)
            && b.recent.len() >= self.window / 2
            && failed * 2 > b.recent.len()
        {
            b.trips += 1;
            tracing::warn!(
                failed,
                of = b.recent.len(),
                pause_ms = b.cooldown.as_millis() as u64,
                "circuit breaker open: most recent calls failed; pausing before a probe"
            );
            crate::metrics::circuit(self.vendor, true);
            b.state = BreakerState::Open {
                until: Instant::now() + b.cooldown,
            };
        }
    }

    /// How many times the breaker opened.
    pub fn trips(&self) -> u64 {
        self.inner.lock().map(|b| b.trips).unwrap_or(0)
    }
}

/// Leave to send one call through a [`Breaker`]; see [`Breaker::admit`].
#[must_use = "settle the permit with record() once the call's outcome is known"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl<'a> Permit<'a> {
    fn new(breaker: &'a Breaker, probe: bool) -> Permit<'a> {
        Permit {
            breaker,
            probe,
            settled: false,
        }
    }

    /// The call's outcome: `ok = false` for 5xx, timeouts, dropped connections.
    pub fn record(mut self, ok: bool) {
        self.settled = true;
        self.breaker.record(ok);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.unsettled_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_spaces_calls_to_the_window() {
        let l = RateLimiter::new(5, Duration::from_millis(200), None);
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire().await.unwrap();
        }
        // The sixth call had to wait for the first to leave the window.
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_request_counts_from_its_reply() {
        let l = RateLimiter::new(2, Duration::from_millis(200), None);
        let start = Instant::now();
        let first = l.acquire().await.unwrap();
        let second = l.acquire().await.unwrap();
        // The replies take 100 ms: the slots free 200 ms after that, not
        // 200 ms after sending.
        tokio::time::sleep(Duration::from_millis(100)).await;
        l.complete(first);
        l.complete(second);
        l.acquire().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn daily_budget_stops_calls() {
        let l = RateLimiter::new(100, Duration::from_secs(10), Some(2));
        assert!(l.acquire().await.is_ok());
        assert!(l.acquire().await.is_ok());
        assert_eq!(l.acquire().await, Err(DailyExhausted));
    }

    #[tokio::test]
    async fn vendor_headers_shrink_the_budget() {
        let l = RateLimiter::new(10, Duration::from_millis(300), None);
        // The vendor says only 1 call is left: another app used 9.
        l.observe(None, Some(1), None);
        let start = Instant::now();
        l.acquire().await.unwrap();
        l.acquire().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    /// Regression: the sync's limiter, made after the extract's was
    /// dropped in the same `ferry build`, started with an empty window
    /// while the vendor's still held the extract's calls: a 429.
    #[tokio::test]
    async fn the_next_limiter_of_an_account_starts_from_the_last_ones_window() {
        let first = account_budget("test/acct-next", 2, Duration::from_millis(400), None);
        first.acquire().await.unwrap();
        first.acquire().await.unwrap();
        drop(first);
        let next = account_budget("test/acct-next", 2, Duration::from_millis(400), None);
        let start = Instant::now();
        next.acquire().await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "the window was full: the call had to wait ({:?})",
            start.elapsed()
        );
    }

    #[test]
    fn one_budget_per_account() {
        let a = account_budget("test/acct-1", 10, Duration::from_secs(10), None);
        let b = account_budget("test/acct-1", 99, Duration::from_secs(10), None);
        let c = account_budget("test/acct-2", 10, Duration::from_secs(10), None);
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert!(!std::sync::Arc::ptr_eq(&a, &c));
    }

    #[tokio::test]
    async fn breaker_opens_on_failures_and_probes() {
        let b = Breaker::new(4, Duration::from_millis(100));
        b.record(false);
        b.record(false);
        assert_eq!(b.trips(), 1);
        let start = Instant::now();
        let probe = b.admit().await; // the probe, after the cool-down
        assert!(start.elapsed() >= Duration::from_millis(90));
        probe.record(true);
        // Closed again: the history starts over, so one failure does not trip it.
        b.record(false);
        assert_eq!(b.trips(), 1);
        b.record(false);
        assert_eq!(b.trips(), 2);
    }

    /// Regression: a 429 (or a token refresh, a daily stop, a cancelled call)
    /// answering the probe left the breaker probing forever, and every later
    /// call waited in `admit` for good.
    #[tokio::test]
    async fn a_probe_answered_429_does_not_park_every_call() {
        let b = Breaker::new(2, Duration::from_millis(20));
        b.record(false);
        b.record(false);
        let probe = b.admit().await;
        drop(probe); // rate limited: no outcome for the breaker
        let next = tokio::time::timeout(Duration::from_secs(2), b.admit()).await;
        assert!(next.is_ok(), "the next call never got through the breaker");
        next.unwrap().record(true);
        // Closed again: calls pass at once.
        let t = Instant::now();
        b.admit().await.record(true);
        assert!(t.elapsed() < Duration::from_millis(40));
    }
}
