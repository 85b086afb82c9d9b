//! The process's metrics, served by `ferry serve` at `/metrics` in
//! Prometheus' text format (the Prometheus project's `prometheus-client`).
//! A ground-floor module: every stage records into it, it imports none.
//!
//! | metric | labels |
//! |---|---|
//! | `ferry_rows_extracted_total` (rows the vendor sent), `ferry_rows_landed_total`, `ferry_rows_quarantined_total` | `stream` |
//! | `ferry_sync_rows_total` | `sync`, `outcome` (created, updated, archived, unchanged, rejected, failed, unknown, not_sent) |
//! | `ferry_api_calls_total`, `ferry_api_rate_limited_total` | `vendor` |
//! | `ferry_run_duration_seconds` (histogram), `ferry_runs_total` | `schedule`, `status` on the counter |
//! | `ferry_last_success_timestamp_seconds` | `pipeline` |
//! | `ferry_circuit_open` (breakers open now), `ferry_circuit_trips_total` | `vendor` |
//! | `ferry_api_budget_remaining`, `ferry_api_budget_daily_limit` | `account` (vendor and URL, no credential) |
//!
//! Counters start at zero with the process, as Prometheus expects of
//! counters; the lake keeps the history (`ferry.runs`, `ferry.sync_runs`...).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabel {
    sync: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendorLabel {
    vendor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabel {
    schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabel {
    schedule: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabel {
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabel {
    account: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn run_buckets() -> Histogram {
    // 0.1 s to about 27 minutes.
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

struct Metrics {
    registry: Registry,
    extracted: Family<StreamLabel, Counter>,
    landed: Family<StreamLabel, Counter>,
    quarantined: Family<StreamLabel, Counter>,
    sync_rows: Family<SyncLabel, Counter>,
    calls: Family<VendorLabel, Counter>,
    limited: Family<VendorLabel, Counter>,
    durations: Family<ScheduleLabel, Histogram, fn() -> Histogram>,
    runs: Family<RunLabel, Counter>,
    last_success: Family<PipelineLabel, FloatGauge>,
    circuit_open: Family<VendorLabel, Gauge>,
    circuit_trips: Family<VendorLabel, Counter>,
    budget_remaining: Family<AccountLabel, Gauge>,
    budget_limit: Family<AccountLabel, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let m = Metrics {
        registry: Registry::default(),
        extracted: Family::default(),
        landed: Family::default(),
        quarantined: Family::default(),
        sync_rows: Family::default(),
        calls: Family::default(),
        limited: Family::default(),
        durations: Family::new_with_constructor(run_buckets),
        runs: Family::default(),
        last_success: Family::default(),
        circuit_open: Family::default(),
        circuit_trips: Family::default(),
        budget_remaining: Family::default(),
        budget_limit: Family::default(),
    };
    registry.register(
        "ferry_rows_extracted",
        "Rows the vendor sent (landed plus quarantined)",
        m.extracted.clone(),
    );
    registry.register(
        "ferry_rows_landed",
        "Rows landed in the lake",
        m.landed.clone(),
    );
    registry.register(
        "ferry_rows_quarantined",
        "Rows quarantined (ferry.quarantine)",
        m.quarantined.clone(),
    );
    registry.register(
        "ferry_sync_rows",
        "Sync rows by outcome",
        m.sync_rows.clone(),
    );
    registry.register(
        "ferry_api_calls",
        "Vendor API requests sent (every attempt)",
        m.calls.clone(),
    );
    registry.register(
        "ferry_api_rate_limited",
        "Vendor API replies that were 429",
        m.limited.clone(),
    );
    registry.register(
        "ferry_run_duration_seconds",
        "Scheduled run durations",
        m.durations.clone(),
    );
    registry.register("ferry_runs", "Scheduled runs by outcome", m.runs.clone());
    registry.register(
        "ferry_last_success_timestamp_seconds",
        "Unix time of the pipeline's last successful run",
        m.last_success.clone(),
    );
    registry.register(
        "ferry_circuit_open",
        "Circuit breakers open now",
        m.circuit_open.clone(),
    );
    registry.register(
        "ferry_circuit_trips",
        "Times a circuit breaker opened",
        m.circuit_trips.clone(),
    );
    registry.register(
        "ferry_api_budget_remaining",
        "Requests left in the account's daily budget",
        m.budget_remaining.clone(),
    );
    registry.register(
        "ferry_api_budget_daily_limit",
        "The account's daily request budget",
        m.budget_limit.clone(),
    );
    Metrics { registry, ..m }
});

/// Calls and 429s counted for the job running in this task (see [`counting`]).
#[derive(Debug, Default)]
pub struct CallCount {
    pub calls: AtomicU64,
    pub rate_limited: AtomicU64,
}

tokio::task_local! {
    static JOB_CALLS: std::sync::Arc<CallCount>;
}

/// Run `fut`, counting the vendor calls it makes (in this task).
pub async fn counting<F: std::future::Future>(fut: F) -> (F::Output, u64, u64) {
    let count = std::sync::Arc::new(CallCount::default());
    let out = JOB_CALLS.scope(count.clone(), fut).await;
    (
        out,
        count.calls.load(Ordering::Relaxed),
        count.rate_limited.load(Ordering::Relaxed),
    )
}

/// A request was sent to `vendor`.
pub fn api_call(vendor: &str) {
    let l = VendorLabel {
        vendor: vendor.to_string(),
    };
    METRICS.calls.get_or_create(&l).inc();
    // Present from the first call, so "no 429s" reads as 0, not as absent.
    METRICS.limited.get_or_create(&l).inc_by(0);
    let _ = JOB_CALLS.try_with(|c| c.calls.fetch_add(1, Ordering::Relaxed));
}

/// `vendor` answered 429.
pub fn rate_limited(vendor: &str) {
    METRICS
        .limited
        .get_or_create(&VendorLabel {
            vendor: vendor.to_string(),
        })
        .inc();
    let _ = JOB_CALLS.try_with(|c| c.rate_limited.fetch_add(1, Ordering::Relaxed));
}

/// A stream landed `rows` and quarantined `quarantined`.
pub fn extracted(stream: &str, rows: u64, quarantined: u64) {
    let l = StreamLabel {
        stream: stream.to_string(),
    };
    METRICS
        .extracted
        .get_or_create(&l)
        .inc_by(rows + quarantined);
    METRICS.landed.get_or_create(&l).inc_by(rows);
    METRICS.quarantined.get_or_create(&l).inc_by(quarantined);
}

/// A sync's rows, by outcome.
pub fn sync_rows(sync: &str, outcomes: &[(&str, u64)]) {
    for (outcome, n) in outcomes {
        METRICS
            .sync_rows
            .get_or_create(&SyncLabel {
                sync: sync.to_string(),
                outcome: outcome.to_string(),
            })
            .inc_by(*n);
    }
}

/// A scheduled run ended.
pub fn run_finished(schedule: &str, status: &str, seconds: f64) {
    METRICS
        .durations
        .get_or_create(&ScheduleLabel {
            schedule: schedule.to_string(),
        })
        .observe(seconds);
    METRICS
        .runs
        .get_or_create(&RunLabel {
            schedule: schedule.to_string(),
            status: status.to_string(),
        })
        .inc();
}

/// `pipeline` succeeded at `unix_seconds`.
pub fn last_success(pipeline: &str, unix_seconds: f64) {
    METRICS
        .last_success
        .get_or_create(&PipelineLabel {
            pipeline: pipeline.to_string(),
        })
        .set(unix_seconds);
}

/// A breaker for `vendor` opened (`true`) or closed (`false`).
pub fn circuit(vendor: &str, open: bool) {
    let l = VendorLabel {
        vendor: vendor.to_string(),
    };
    if open {
        METRICS.circuit_open.get_or_create(&l).inc();
        METRICS.circuit_trips.get_or_create(&l).inc();
    } else {
        METRICS.circuit_open.get_or_create(&l).dec();
    }
}

/// Per vendor: breakers open now, and trips since the process started.
pub fn circuits() -> Vec<(String, i64, i64)> {
    // Families cannot be iterated; the vendors are the ones that called.
    vendors()
        .into_iter()
        .map(|vendor| {
            let l = VendorLabel { vendor };
            let open = METRICS.circuit_open.get_or_create(&l).get();
            let trips = METRICS.circuit_trips.get_or_create(&l).get() as i64;
            (l.vendor, open, trips)
        })
        .collect()
}

static VENDORS: LazyLock<std::sync::Mutex<std::collections::BTreeSet<String>>> =
    LazyLock::new(Default::default);

/// Remember that `vendor` is in use (so [`circuits`] can list it).
/// Its circuit series start at 0, so a dashboard sees a closed breaker
/// rather than no series until the first trip.
pub fn vendor_seen(vendor: &str) {
    if let Ok(mut v) = VENDORS.lock()
        && !v.contains(vendor)
    {
        v.insert(vendor.to_string());
        let l = VendorLabel {
            vendor: vendor.to_string(),
        };
        let _ = METRICS.circuit_open.get_or_create(&l);
        let _ = METRICS.circuit_trips.get_or_create(&l);
    }
}

fn vendors() -> Vec<String> {
    VENDORS
        .lock()
        .map(|v| v.iter().cloned().collect())
        .unwrap_or_default()
}

/// Per account: daily limit, remaining, and the day it was read.
type Budgets = std::collections::BTreeMap<String, (u64, u64, chrono::NaiveDate)>;

static BUDGETS: LazyLock<std::sync::Mutex<Budgets>> = LazyLock::new(Default::default);

/// The daily budgets last published, as `(account, limit, remaining)`; a
/// figure from an earlier (UTC) day reads as a fresh budget.
pub fn budgets() -> Vec<(String, u64, u64)> {
    let today = chrono::Utc::now().date_naive();
    BUDGETS
        .lock()
        .map(|b| {
            b.iter()
                .map(|(k, (limit, remaining, day))| {
                    (
                        k.clone(),
                        *limit,
                        if *day == today { *remaining } else { *limit },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An account's daily budget now.
pub fn budget(account: &str, limit: u64, remaining: u64) {
    if let Ok(mut b) = BUDGETS.lock() {
        b.insert(
            account.to_string(),
            (limit, remaining, chrono::Utc::now().date_naive()),
        );
    }
    let l = AccountLabel {
        account: account.to_string(),
    };
    METRICS
        .budget_remaining
        .get_or_create(&l)
        .set(remaining as i64);
    METRICS.budget_limit.get_or_create(&l).set(limit as i64);
}

/// Every metric in Prometheus' text exposition format.
pub fn encode() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &METRICS.registry).is_err() {
        out.clear();
    }
    out
}
