//! One vendor account's budget, shared by every ferry process that uses it,
//! through the lake.
//!
//! In one process, every sync and extractor of an account already waits in
//! one [`RateLimiter`]. Across processes (two `ferry sync` runs, a scheduled
//! build beside a manual sync) the lake is what they share:
//!
//! - `_ferry/accounts/<account>/members/<member>.json`: each process using
//!   the account renews its entry every [`PERIOD`]; entries not renewed for
//!   three periods are gone. Each process sends at most its share (the
//!   window divided by the live members). A process that finds others
//!   already sending waits one window (plus a period) before its first call,
//!   so that what they sent at their full share has left the vendor's window
//!   by then.
//! - `_ferry/accounts/<account>/daily/<YYYY-MM-DD>/<member>-<seq>.json`:
//!   calls made, written every 30 s and when the process leaves (each file
//!   written once, and read once by each process); a process's daily budget is the
//!   account's limit less what every process logged today (the vendor's own
//!   daily-remaining header, when it sends one, still has the last word).
//!
//! The account is named by a one-way hash of its URL and credentials.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::RateLimiter;
use crate::error::Result;
use crate::lake::Lake;

/// How often a member renews its entry and re-reads the others'.
pub const PERIOD: Duration = Duration::from_secs(2);

/// Every this many periods (30 s), a member logs its calls and re-reads the
/// day's total: the daily budget needs no finer grain, and the day's files
/// stay few.
const DAILY_EVERY: u64 = 15;

/// Calls in daily files already read: they are written once, so each is
/// read once per process.
static READ: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u64>>> =
    std::sync::LazyLock::new(Default::default);

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    expires_at_ms: i64,
    pid: u32,
    #[serde(default)]
    host: String,
    #[serde(default)]
    boot: String,
}

impl Entry {
    /// Renewed lately, and not a process of this machine that is gone (a
    /// killed run's entry must not slow the next run down).
    fn live(&self, now_ms: i64) -> bool {
        use crate::lake::lease::{alive, boot, host};
        let here = self.host == host() && self.boot == boot();
        self.expires_at_ms > now_ms && (!here || alive(self.pid))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Calls {
    calls: u64,
}

/// This process's membership of an account's shared budget. Dropping it
/// stops the renewals; [`Member::leave`] also removes the entry at once.
pub struct Member {
    lake: Lake,
    entry: Path,
    dir: Path,
    me: String,
    limiter: Arc<RateLimiter>,
    /// Calls logged so far, and the next log file's number.
    tally: Arc<std::sync::Mutex<(u64, u64)>>,
    task: tokio::task::JoinHandle<()>,
}

/// Log the calls sent since the last log file.
async fn log_calls(
    lake: &Lake,
    dir: &Path,
    me: &str,
    limiter: &RateLimiter,
    tally: &std::sync::Mutex<(u64, u64)>,
) {
    let sent = limiter.sent_total();
    let (logged, seq) = tally.lock().map(|t| *t).unwrap_or((sent, 0));
    if sent <= logged {
        return;
    }
    let path = dir
        .clone()
        .join("daily")
        .join(today())
        .join(format!("{me}-{seq:06}.json"));
    let body = serde_json::to_vec(&Calls {
        calls: sent - logged,
    })
    .unwrap_or_default();
    if crate::lake::log::put_once(lake.store().as_ref(), &path, body)
        .await
        .is_ok()
        && let Ok(mut t) = tally.lock()
    {
        *t = (sent, seq + 1);
    }
}

fn account_dir(account_key: &str) -> Path {
    use sha2::Digest;
    let h = hex::encode(&sha2::Sha256::digest(account_key.as_bytes())[..8]);
    Path::from_iter([crate::lake::layout::META, "accounts", &h])
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// Live members other than `me`.
async fn others(lake: &Lake, dir: &Path, me: &str) -> Result<usize> {
    let prefix = dir.clone().join("members");
    let listed: Vec<object_store::ObjectMeta> =
        match lake.store().list(Some(&prefix)).try_collect().await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
    let now = chrono::Utc::now().timestamp_millis();
    let mut n = 0;
    for o in listed {
        if o.location.filename() == Some(&format!("{me}.json")) {
            continue;
        }
        let Ok(g) = lake.store().get(&o.location).await else {
            continue;
        };
        let Ok(bytes) = g.bytes().await else { continue };
        if serde_json::from_slice::<Entry>(&bytes).is_ok_and(|e| e.live(now)) {
            n += 1;
        }
    }
    Ok(n)
}

/// Calls every process logged for the account today, and those of `me`.
async fn logged_today(lake: &Lake, dir: &Path, me: &str) -> Result<(u64, u64)> {
    let prefix = dir.clone().join("daily").join(today());
    let listed: Vec<object_store::ObjectMeta> =
        match lake.store().list(Some(&prefix)).try_collect().await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
    let (mut all, mut mine) = (0u64, 0u64);
    for o in listed {
        let key = o.location.to_string();
        let cached = READ.lock().ok().and_then(|m| m.get(&key).copied());
        let calls = match cached {
            Some(c) => c,
            None => {
                let Ok(g) = lake.store().get(&o.location).await else {
                    continue;
                };
                let Ok(bytes) = g.bytes().await else { continue };
                let Ok(c) = serde_json::from_slice::<Calls>(&bytes) else {
                    continue;
                };
                if let Ok(mut m) = READ.lock() {
                    m.insert(key, c.calls);
                }
                c.calls
            }
        };
        all = all.saturating_add(calls);
        if o.location
            .filename()
            .is_some_and(|f| f.starts_with(&format!("{me}-")))
        {
            mine = mine.saturating_add(calls);
        }
    }
    Ok((all, mine))
}

async fn renew(lake: &Lake, entry: &Path) -> Result<()> {
    let e = Entry {
        expires_at_ms: chrono::Utc::now().timestamp_millis() + 3 * PERIOD.as_millis() as i64,
        pid: std::process::id(),
        host: crate::lake::lease::host(),
        boot: crate::lake::lease::boot(),
    };
    let bytes = serde_json::to_vec(&e).map_err(|e| crate::error::Error::Internal(e.to_string()))?;
    lake.store().put(entry, PutPayload::from(bytes)).await?;
    Ok(())
}

/// Join the shared budget of `account_key` (see [`super::account_key`]).
/// `daily_limit` is the account's daily budget, if it has one.
pub async fn join(
    lake: &Lake,
    account_key: &str,
    limiter: Arc<RateLimiter>,
    daily_limit: Option<u64>,
) -> Result<Member> {
    let dir = account_dir(account_key);
    let me = uuid::Uuid::now_v7().to_string();
    let entry = dir.clone().join("members").join(format!("{me}.json"));
    renew(lake, &entry).await?;
    let busy = others(lake, &dir, &me).await?;
    limiter.set_share(busy + 1);
    if let Some(limit) = daily_limit {
        let (all, _) = logged_today(lake, &dir, &me).await?;
        limiter.account_daily(limit, all, 0);
    }
    if busy > 0 {
        // What the others sent at their full share must leave the vendor's
        // window before this process adds its own.
        let wait = limiter.interval() + PERIOD;
        tracing::info!(
            others = busy,
            wait_ms = wait.as_millis() as u64,
            "other ferry processes use this account; sharing its budget"
        );
        limiter.pause(wait);
    }
    let tally = Arc::new(std::sync::Mutex::new((limiter.sent_total(), 0u64)));
    let task = {
        let (lake, entry, dir, me) = (lake.clone(), entry.clone(), dir.clone(), me.clone());
        let (limiter, tally) = (limiter.clone(), tally.clone());
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                tokio::time::sleep(PERIOD).await;
                tick += 1;
                if let Err(e) = renew(&lake, &entry).await {
                    tracing::warn!(
                        "could not renew this process's share of the account budget: {e}"
                    );
                }
                if let Ok(n) = others(&lake, &dir, &me).await {
                    limiter.set_share(n + 1);
                }
                if !tick.is_multiple_of(DAILY_EVERY) {
                    continue;
                }
                log_calls(&lake, &dir, &me, &limiter, &tally).await;
                if let Some(limit) = daily_limit
                    && let Ok((all, mine)) = logged_today(&lake, &dir, &me).await
                {
                    let unlogged = limiter
                        .sent_total()
                        .saturating_sub(tally.lock().map(|t| t.0).unwrap_or(0));
                    limiter.account_daily(limit, all.saturating_sub(mine), mine + unlogged);
                }
            }
        })
    };
    Ok(Member {
        lake: lake.clone(),
        entry,
        dir,
        me,
        limiter,
        tally,
        task,
    })
}

impl Member {
    /// Stop sharing: the entry is removed, so the others' shares grow at
    /// their next renewal.
    pub async fn leave(self) {
        self.task.abort();
        log_calls(&self.lake, &self.dir, &self.me, &self.limiter, &self.tally).await;
        let _ = self.lake.store().delete(&self.entry).await;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}
