//! Reverse sync: model rows back into the CRM.
//!
//! One run of a sync:
//!
//! 1. take the sync's lease in the lake ([`crate::lake::lease`]; every
//!    commit below first checks the run still holds it);
//! 2. check the CRM object and properties (one call) and learn whether the
//!    match property is unique;
//! 3. diff the model against the snapshot of what the CRM last confirmed
//!    (`sql/sync/*.sql`, in DataFusion): added, changed, removed, unchanged,
//!    rejected (empty or duplicate key);
//! 4. refuse a mirror run that would archive too much;
//! 5. send added and changed rows in batches, concurrently up to the
//!    account's limit: look records up where needed (non-unique key,
//!    `update`/`insert` modes, `if_empty` fields), apply ownership policies,
//!    write, split rejected batches in halves to isolate bad rows, and look
//!    before resending a create whose reply was lost;
//! 6. after each batch the CRM answered, append its outcomes to
//!    `ferry.sync_log`; that file is the commit. A killed run loses at most
//!    the batches in flight, and the next run's diff sends exactly what is
//!    not confirmed;
//! 7. archive (mirror) or release removed rows, write a new snapshot, record
//!    the run in `ferry.sync_runs`, release the lease.

mod audience;
pub mod config;
pub mod destination;
pub mod diff;
pub mod hubspot;
pub mod salesforce;
pub mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use datafusion::execution::context::SessionContext;
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::http::CallError;
use crate::lake::Lake;
use crate::lake::layout::RunId;
use crate::project::Project;
use config::{Mode, Policy, Sync};
use destination::{Destination, Existing, Fate, Op, Outcome, Outgoing, Refusal, Written};
use diff::{DiffOp, Row};
use state::{LogRow, LogWriter};

/// Check that the model (`schema`) has the sync's match column and every
/// mapped column; the error names the sync, the column and the model's
/// columns, nearest first.
pub fn check_columns(sync: &Sync, schema: &datafusion::common::DFSchema) -> Result<()> {
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let columns = sync.fields.iter().map(|f| &f.column);
    for c in columns.chain([&sync.key_column]) {
        if schema.field_with_unqualified_name(c).is_err() {
            return Err(Error::Input(format!(
                "sync {}: model {} has no column {c:?}{} (its columns: {}). Fix [syncs.{}] in ferry.toml, or the model",
                sync.name,
                sync.model,
                crate::models::project::suggest(c, &names),
                names.join(", "),
                sync.name
            )));
        }
    }
    Ok(())
}

/// Check every sync whose model is registered in `ctx` (compiled, not
/// run): its columns (see [`check_columns`]). Returns how many were checked.
pub async fn check_all(
    project: &Project,
    ctx: &SessionContext,
    models: &[String],
) -> Result<usize> {
    let mut checked = 0;
    for sync in project.syncs.values() {
        if !models.contains(&sync.model) {
            continue;
        }
        let model = diff::quote_relation(&sync.model);
        let df = ctx
            .sql(&format!("select * from {model} limit 0"))
            .await
            .map_err(|e| {
                Error::Input(format!(
                    "sync {}: cannot plan model {}: {e}",
                    sync.name, sync.model
                ))
            })?;
        check_columns(sync, df.schema())?;
        checked += 1;
    }
    Ok(checked)
}

/// Why a run stopped when ferry was asked to shut down.
pub const SHUTTING_DOWN: &str = "ferry is shutting down; the rest is sent next run";

/// Command-line switches for a run.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Compute and report, write nothing (lookups still read the CRM).
    pub dry_run: bool,
    /// Send only the rows that failed or were rejected by the CRM last time.
    pub retry_failed: bool,
    /// Let `mirror` archive more than `max_delete_pct`, or run on an empty model.
    pub allow_mass_delete: bool,
    /// Take the lease even if another run seems to hold it.
    pub break_lock: bool,
    /// Set when ferry is shutting down (SIGTERM): the run stops between
    /// batches, as on a spent daily budget, and the rest is sent next run.
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    /// Revert this run of the sync instead of syncing (`ferry sync revert`).
    pub revert: Option<String>,
    /// Workers sending changed rows, instead of the sync's `workers`.
    pub workers: Option<usize>,
}

/// What a run did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub archived: u64,
    pub unchanged: u64,
    /// Rejected by the diff (bad key) or by the CRM (bad value, not found...).
    pub rejected: u64,
    /// Transient failures that outlasted the retries; sent again next run.
    pub failed: u64,
    /// `insert` mode: the record exists and was left alone.
    pub skipped: u64,
    /// Left the model and were released without archiving.
    pub released: u64,
    /// Not sent because the run stopped (auth, daily limit): sent next run.
    pub not_sent: u64,
    /// Writes whose fate is unknown (the reply was lost, or a create may
    /// have happened): settled by a read before the record is written again.
    pub unknown: u64,
}

/// A sample change for `--dry-run`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub key: String,
    pub action: &'static str,
    pub before: BTreeMap<String, String>,
    pub after: BTreeMap<String, String>,
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub sync: String,
    pub run_id: RunId,
    pub mode: Mode,
    pub dry_run: bool,
    pub counts: Counts,
    pub api_calls: u64,
    pub rate_limited: u64,
    pub seconds: f64,
    /// Why the run stopped early (the rest is sent next run).
    pub stopped: Option<String>,
    pub samples: Vec<Sample>,
}

impl SyncReport {
    /// Whether every row ended where the model says.
    pub fn clean(&self) -> bool {
        self.stopped.is_none()
            && self.counts.failed == 0
            && self.counts.rejected == 0
            && self.counts.unknown == 0
    }
}

/// Runs syncs; keeps one client per destination account so that syncs to the
/// same account share its rate budget.
pub struct Syncer {
    project: Project,
    lake: Lake,
    accounts: HashMap<String, Arc<dyn destination::Account>>,
}

const SAMPLES: usize = 5;

/// Current CRM values by normalized match key, from the lake copy.
type CrmCopy = HashMap<String, Existing>;

/// Keys (normalized) whose last write's fate is unknown.
type Pending = HashMap<String, Unsettled>;

/// A revertible run's view of each row's record before it writes: the
/// record as found (`None`: not found), and whether that is known (a
/// record the CRM confirmed earlier but a lagging search missed is not).
type Previous = HashMap<String, (Option<Existing>, bool)>;

/// A key whose writes since it was last settled have unknown fates.
#[derive(Debug, Clone, Copy)]
struct Unsettled {
    /// When the first of them was sent: a record the CRM created since then
    /// was created by this sync.
    first: chrono::DateTime<Utc>,
    /// When the latest was sent: the CRM's search may miss it until
    /// `search_lag` after this.
    last_sent: chrono::DateTime<Utc>,
}

/// Whether the CRM's value is the one a run wrote: text equal up to case
/// and surrounding space, or numbers equal (CRMs echo `42` as `42.0`).
fn same_value(crm: &str, wrote: &str) -> bool {
    let (a, b) = (crm.trim(), wrote.trim());
    a.eq_ignore_ascii_case(b)
        || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y)
}

/// How far the CRM's clock may be ahead of ferry's when judging whether a
/// record was created after ferry first tried to create it.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

impl Syncer {
    pub fn new(project: &Project, lake: Lake) -> Syncer {
        Syncer {
            project: project.clone(),
            lake,
            accounts: HashMap::new(),
        }
    }

    /// Use `account` for the destination `name` (instead of opening the
    /// one `ferry.toml` configures): how tests plug in a destination.
    pub fn with_account(mut self, name: &str, account: Arc<dyn destination::Account>) -> Syncer {
        self.accounts.insert(name.to_string(), account);
        self
    }

    fn destination(&mut self, sync: &Sync) -> Result<Box<dyn Destination>> {
        if let Some(a) = self.accounts.get(&sync.destination) {
            return Ok(a.destination(sync));
        }
        let cfg = self
            .project
            .destinations
            .get(&sync.destination)
            .ok_or_else(|| {
                Error::Input(format!(
                    "sync {} names destination {:?}, which is not defined",
                    sync.name, sync.destination
                ))
            })?;
        let account = destination::open(cfg)?;
        self.accounts.insert(cfg.name.clone(), account.clone());
        Ok(account.destination(sync))
    }

    /// Revert one run: write back the values it replaced and archive the
    /// records it created (see [`Run::revert`]). Logged as a run of its sync.
    pub async fn revert(&mut self, run_id: &str, opts: &SyncOptions) -> Result<SyncReport> {
        let Some(sync) = state::sync_of_revertible_run(&self.lake, run_id).await? else {
            return Err(Error::Input(format!(
                "run {run_id} recorded no previous values, so it cannot be reverted: only runs of syncs with \
                 revertible = true can be (find run ids with: select run_id, sync, started_at from ferry.sync_runs)"
            )));
        };
        let opts = SyncOptions {
            dry_run: opts.dry_run,
            retry_failed: false,
            allow_mass_delete: opts.allow_mass_delete,
            break_lock: opts.break_lock,
            shutdown: opts.shutdown.clone(),
            revert: Some(run_id.to_string()),
            workers: None,
        };
        self.run(&sync, &opts).await
    }

    /// Run one sync.
    pub async fn run(&mut self, name: &str, opts: &SyncOptions) -> Result<SyncReport> {
        let sync = self.project.syncs.get(name).cloned().ok_or_else(|| {
            let known: Vec<&String> = self.project.syncs.keys().collect();
            Error::Input(format!(
                "no sync named {name:?} in ferry.toml (defined: {known:?})"
            ))
        })?;
        let dest = self.destination(&sync)?;
        let dest = dest.as_ref();
        let max_in_flight = self
            .project
            .destinations
            .get(&sync.destination)
            .map(|d| d.max_in_flight)
            .unwrap_or(usize::MAX)
            .min(dest.capabilities().max_in_flight);
        let retry = self
            .project
            .destinations
            .get(&sync.destination)
            .map(|d| d.retry)
            .unwrap_or_default();
        let run_id = RunId::new();
        let started = Utc::now();
        let lease = if opts.dry_run {
            None
        } else {
            state::refuse_legacy_lock(&self.lake, &sync.name, opts.break_lock).await?;
            let first = state::first_generation(&self.lake, &sync.name).await?;
            Some(Arc::new(
                crate::lake::lease::Lease::acquire(
                    &self.lake,
                    state::lease_path(&sync.name),
                    run_id.as_str(),
                    &format!("sync {}", sync.name),
                    crate::lake::lease::DEFAULT_TTL,
                    opts.break_lock,
                    first,
                )
                .await?,
            ))
        };
        // Other ferry processes using the same account share its budgets.
        let mut members = Vec::new();
        if lease.is_some() {
            for b in dest.budgets() {
                members.push(
                    crate::http::shared::join(&self.lake, &b.key, b.limiter, b.daily_limit).await?,
                );
            }
        }
        let (calls0, limited0) = dest.usage();
        let run = Run {
            sync: &sync,
            dest,
            lake: &self.lake,
            project: &self.project,
            opts,
            log: LogWriter::new(self.lake.clone(), &sync.name, run_id.clone(), lease.clone()),
            max_in_flight,
            retry,
            counts: Mutex::new(Counts::default()),
            samples: Mutex::new(Vec::new()),
            stop: Mutex::new(None),
            queue: Mutex::new(None),
            run_id: run_id.clone(),
        };
        let clock = Instant::now();
        let outcome = run.execute().await;
        let (calls1, limited1) = dest.usage();
        let counts = run.counts.lock().map(|c| c.clone()).unwrap_or_default();
        let stopped = run.stop.lock().ok().and_then(|s| s.clone());
        let samples = run.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let report = SyncReport {
            sync: sync.name.clone(),
            run_id: run_id.clone(),
            mode: sync.mode,
            dry_run: opts.dry_run,
            counts: counts.clone(),
            api_calls: calls1 - calls0,
            rate_limited: limited1 - limited0,
            seconds: clock.elapsed().as_secs_f64(),
            stopped: stopped
                .as_ref()
                .map(|e| dest.stop_error(e.clone()).to_string()),
            samples,
        };
        if !opts.dry_run {
            let status = match (&outcome, &stopped) {
                (Err(_), _) => "failed",
                (Ok(()), Some(_)) => "stopped",
                _ if !report.clean() => "partial",
                _ => "success",
            };
            let row = state::RunRow {
                mode: if opts.revert.is_some() {
                    "revert".into()
                } else {
                    sync.mode.as_str().into()
                },
                status: status.into(),
                counts: [
                    counts.created as i64,
                    counts.updated as i64,
                    counts.archived as i64,
                    counts.unchanged as i64,
                    counts.rejected as i64,
                    counts.failed as i64,
                ],
                api_calls: report.api_calls as i64,
                rate_limited: report.rate_limited as i64,
                error: outcome
                    .as_ref()
                    .err()
                    .map(|e| e.to_string())
                    .or(report.stopped.clone()),
                started_at: started,
            };
            if let Err(e) = state::record_run(&self.lake, &sync.name, &run_id, &row).await {
                tracing::warn!(sync = %sync.name, "could not record the run in ferry.sync_runs: {e}");
            }
        }
        drop(run);
        for member in members {
            member.leave().await;
        }
        if let Some(lease) = lease.and_then(|l| Arc::try_unwrap(l).ok()) {
            lease.release().await?;
        }
        outcome?;
        Ok(report)
    }
}

/// Split rows into `n` partitions by a hash of their key: a record is
/// only ever in one partition, so no two workers write it.
fn partition(rows: Vec<Row>, n: usize) -> Vec<Vec<Row>> {
    use std::hash::{Hash, Hasher};
    let mut parts: Vec<Vec<Row>> = (0..n).map(|_| Vec::new()).collect();
    for r in rows {
        let mut h = std::hash::DefaultHasher::new();
        r.key.hash(&mut h);
        parts[(h.finish() % n as u64) as usize].push(r);
    }
    parts
}

/// Run futures each on its own thread (on a multi-threaded runtime;
/// concurrently on this task otherwise) and return their outputs in order. The futures borrow from the caller, so they run on
/// scoped threads that drive them with the runtime's handle (its I/O and
/// timers), while this worker thread steps aside (`block_in_place`).
async fn in_parallel<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let handle = tokio::runtime::Handle::current();
    if futures.len() <= 1 || handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return futures::future::join_all(futures).await;
    }
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let threads: Vec<_> = futures
                .into_iter()
                .map(|f| {
                    let handle = handle.clone();
                    scope.spawn(move || handle.block_on(f))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    })
}

/// One run in progress.
struct Run<'a> {
    sync: &'a Sync,
    dest: &'a dyn Destination,
    lake: &'a Lake,
    project: &'a Project,
    opts: &'a SyncOptions,
    log: LogWriter,
    max_in_flight: usize,
    retry: crate::http::RetryPolicy,
    counts: Mutex<Counts>,
    samples: Mutex<Vec<Sample>>,
    stop: Mutex<Option<CallError>>,
    /// Rows planned for asynchronous jobs and not yet in one, when this
    /// run uses jobs (see [`destination::Jobs`]).
    queue: Mutex<Option<Vec<JobQueue>>>,
    run_id: RunId,
}

/// The rows of one operation waiting for a job, and their size.
#[derive(Debug)]
struct JobQueue {
    op: Op,
    rows: Vec<Queued>,
    bytes: usize,
}

/// A row planned for a job, with what its log row needs.
#[derive(Debug, Clone)]
struct Queued {
    out: Outgoing,
    hash: Option<String>,
    was_created: bool,
    may_create: bool,
}

impl Queued {
    fn bytes(&self) -> usize {
        self.out.key.len()
            + self
                .out
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>()
    }
}

/// What to do with one row after looking at the CRM.
#[derive(Debug)]
enum Action {
    Send(Op, Outgoing),
    /// Nothing to write (insert mode: exists; update: every field is owned by the CRM).
    Noop {
        id: String,
        skipped: bool,
    },
    Reject {
        category: &'static str,
        message: String,
    },
    /// An earlier create's fate is unknown and the CRM's search may not show
    /// it yet: write nothing, look again next run.
    Wait {
        since: chrono::DateTime<Utc>,
    },
}

impl Run<'_> {
    fn add(&self, f: impl FnOnce(&mut Counts)) {
        if let Ok(mut c) = self.counts.lock() {
            f(&mut c);
        }
    }

    fn stopped(&self) -> bool {
        if self.opts.shutdown.as_ref().is_some_and(|s| *s.borrow()) {
            self.set_stop(CallError::Transient {
                message: SHUTTING_DOWN.into(),
                attempts: 0,
            });
        }
        self.stop.lock().map(|s| s.is_some()).unwrap_or(true)
    }

    fn set_stop(&self, e: CallError) {
        if let Ok(mut s) = self.stop.lock()
            && s.is_none()
        {
            tracing::error!(sync = %self.sync.name, "stopping: {}", e.message());
            *s = Some(e);
        }
    }

    fn properties(&self) -> Vec<String> {
        self.sync
            .fields
            .iter()
            .map(|f| f.property.clone())
            .collect()
    }

    fn has_if_empty(&self) -> bool {
        self.sync.fields.iter().any(|f| f.policy == Policy::IfEmpty)
    }

    async fn execute(&self) -> Result<()> {
        if let Some(id) = &self.opts.revert {
            return self.revert(id).await;
        }
        let sync = self.sync;
        // The model and its columns first: a mapping mistake costs no call.
        let ctx = crate::engine::session(self.lake).await?;
        if self.project.dir.join("models").is_dir() {
            match crate::models::Workspace::load(self.project, &[]) {
                Ok(ws) => ws.register_views(&ctx, self.lake).await?,
                Err(e) => tracing::warn!("models are not queryable: {e}"),
            }
        }
        let model = diff::quote_relation(&sync.model);
        let model_schema = match ctx.sql(&format!("select * from {model} limit 0")).await {
            Ok(df) => df.schema().clone(),
            Err(e) => {
                return Err(Error::Input(format!(
                    "sync {}: cannot read model {:?}: {e}. Run `ferry run` first, or fix model in [syncs.{}]",
                    sync.name, sync.model, sync.name
                )));
            }
        };
        check_columns(sync, &model_schema)?;
        if sync.mode == Mode::Audience {
            return self.audience(&ctx, &model).await;
        }
        let columns: Vec<String> = sync.fields.iter().map(|f| f.column.clone()).collect();
        let unique = self
            .dest
            .prepare(&sync.object, &sync.key_property, &self.properties())
            .await?;
        // Jobs an earlier run left open are settled before the diff, so
        // their rows count as sent and are never uploaded again.
        self.resume_jobs().await?;
        if self.stopped() {
            return Ok(());
        }
        diff::register_snapshot(&ctx, self.lake, &sync.name).await?;
        let plan = diff::plan(
            &ctx,
            &model,
            &sync.key_column,
            self.dest.case_insensitive(&sync.key_property),
            &columns,
        )
        .await?;
        let guarded = sync.mode == Mode::Mirror && !self.opts.allow_mass_delete;
        let empty_model = |to_archive: u64| {
            Error::Input(format!(
                "sync {}: model {} is empty, so mirror would archive every record this sync created ({to_archive}). \
                 Nothing was sent. If that is intended, run again with --allow-mass-delete",
                sync.name, sync.model
            ))
        };
        // An empty model is refused before the diff is read: every row of
        // the snapshot would be a removal held in memory.
        if guarded && plan.model_rows == (0, true) {
            let created = diff::count(
                &ctx,
                &format!("select count(*) from {} where _created", diff::SNAPSHOT),
            )
            .await?;
            return Err(empty_model(created));
        }

        let copy = self.crm_copy(&ctx).await?;

        let retry_keys = if self.opts.retry_failed {
            Some(self.failed_keys(&ctx).await?)
        } else {
            None
        };

        // One pass over the diff: every row counted, the rows that are not
        // unchanged kept. Nothing is sent or logged before the mirror guard
        // below has seen the counts.
        let mut pending: Vec<Row> = Vec::new();
        let mut removed: Vec<Row> = Vec::new();
        let mut rejects: Vec<LogRow> = Vec::new();
        let scanned = diff::scan(
            &ctx,
            &plan,
            || self.stopped(),
            |mut row| {
                if let Some(keys) = &retry_keys
                    && !row.key.as_ref().is_some_and(|k| keys.contains(k))
                {
                    return Ok(());
                }
                match row.op {
                    DiffOp::Add | DiffOp::Change => pending.push(row),
                    DiffOp::Remove => {
                        // Archiving or releasing needs the key and record id,
                        // not the values.
                        row.values = Vec::new();
                        removed.push(row)
                    }
                    DiffOp::Reject => {
                        let mut l = LogRow::error(
                            row.key.as_deref(),
                            "reject",
                            "rejected",
                            "INVALID_KEY",
                            row.reason.as_deref().unwrap_or("invalid match key"),
                        );
                        l.hash = row.hash.clone();
                        l.payload = Some(self.model_values(&row));
                        rejects.push(l);
                    }
                    DiffOp::Unchanged => {}
                }
                Ok(())
            },
        )
        .await?;
        let Some(tally) = scanned else {
            return Ok(());
        };
        let to_archive = tally.of(DiffOp::Remove, true);
        if guarded {
            if tally.model_rows() == 0 {
                return Err(empty_model(to_archive));
            }
            let snapshot_rows = plan.snapshot_rows;
            let pct = if snapshot_rows > 0 {
                to_archive as f64 * 100.0 / snapshot_rows as f64
            } else {
                0.0
            };
            if pct > sync.max_delete_pct {
                return Err(Error::Input(format!(
                    "sync {}: mirror would archive {to_archive} of {snapshot_rows} synced records ({pct:.1}%), \
                     more than max_delete_pct = {}. Nothing was sent. Check model {}; if this is intended, \
                     run again with --allow-mass-delete",
                    sync.name, sync.max_delete_pct, sync.model
                )));
            }
        }
        let unsettled = self.pending_keys(&ctx).await?;
        if !unsettled.is_empty() {
            tracing::info!(sync = %sync.name, keys = unsettled.len(), "settling writes whose outcome was unknown before writing those records again");
        }
        self.add(|c| c.unchanged = tally.count(DiffOp::Unchanged));
        if !rejects.is_empty() {
            tracing::warn!(sync = %sync.name, rows = rejects.len(), "rows rejected: empty or duplicate match key (see ferry.sync_log)");
            self.add(|c| c.rejected += rejects.len() as u64);
            if !self.opts.dry_run {
                self.log.append(&rejects).await?;
            }
        }

        // Send, up to max_in_flight batches at once. A run large enough for
        // jobs plans its rows batch by batch (lookups, ownership) and hands
        // them to jobs as they fill; jobs run alongside the planning.
        let caps = self.dest.capabilities();
        let jobs = self
            .dest
            .jobs()
            .filter(|j| !self.opts.dry_run && pending.len() >= j.threshold().max(1));
        if let Some(j) = jobs {
            tracing::info!(sync = %sync.name, rows = pending.len(), threshold = j.threshold(), "sending by asynchronous jobs ({} Bulk API)", caps.vendor);
            if let Ok(mut q) = self.queue.lock() {
                *q = Some(Vec::new());
            }
        }
        let batch = sync.batch_size.min(caps.max_batch).max(1);
        let size = |r: &Row| {
            r.key.as_ref().map_or(0, |k| k.len())
                + r.values.iter().flatten().map(|v| v.len()).sum::<usize>()
        };
        let copy = copy.as_ref();
        let unsettled = &unsettled;
        // Several workers: the keys split into partitions, each sent by its
        // own worker on its own thread, sharing the account's budget (one
        // limiter) and the destination's calls in flight. Jobs keep one
        // queue: their rows are sent by the vendor's own asynchronous jobs.
        let workers = self
            .opts
            .workers
            .unwrap_or(sync.workers)
            .clamp(1, self.max_in_flight.max(1));
        if workers > 1 && jobs.is_none() {
            let total = pending.len();
            let bar = crate::console::bar(
                total as u64,
                &format!("rows → {} {} ({workers} workers)", caps.vendor, sync.object),
            );
            let in_flight = (self.max_in_flight / workers).max(1);
            let bar = &bar;
            let parts = partition(pending, workers);
            tracing::info!(sync = %sync.name, rows = total, workers, in_flight, "sending in partitions");
            let sends = parts.into_iter().map(|part| {
                let chunks = destination::batches(part, batch, caps.max_bytes, size);
                async move {
                    let mut results = futures::stream::iter(chunks.into_iter().map(|c| {
                        let n = c.len() as u64;
                        let sent = self.chunk(c, unique, copy, unsettled);
                        async move {
                            let r = sent.await;
                            bar.inc(n);
                            r
                        }
                    }))
                    .buffer_unordered(in_flight);
                    let mut first_error = None;
                    while let Some(r) = results.next().await {
                        if let Err(e) = r {
                            tracing::error!(sync = %sync.name, "batch failed: {e}");
                            first_error.get_or_insert(e);
                        }
                    }
                    first_error
                }
            });
            let errors = in_parallel(sends.collect()).await;
            bar.finish_and_clear();
            if let Some(e) = errors.into_iter().flatten().next() {
                return Err(e);
            }
            return self.finish(removed).await;
        }
        let chunks: Vec<Vec<Row>> = destination::batches(pending, batch, caps.max_bytes, size);
        let (tx, rx) = futures::channel::mpsc::channel::<(Op, Vec<Queued>)>(0);
        let job_error: Mutex<Option<Error>> = Mutex::new(None);
        let total: usize = chunks.iter().map(Vec::len).sum();
        let bar = crate::console::bar(
            total as u64,
            &format!("rows → {} {}", caps.vendor, sync.object),
        );
        let planning = async {
            let mut tx = tx;
            let mut results = futures::stream::iter(chunks.into_iter().map(|c| {
                let n = c.len() as u64;
                let sent = self.chunk(c, unique, copy, unsettled);
                let bar = &bar;
                async move {
                    let r = sent.await;
                    bar.inc(n);
                    r
                }
            }))
            .buffer_unordered(self.max_in_flight.max(1));
            let mut first_error = None;
            while let Some(r) = results.next().await {
                if let Err(e) = r {
                    tracing::error!(sync = %sync.name, "batch failed: {e}");
                    first_error.get_or_insert(e);
                }
                if let Some(j) = jobs {
                    for job in self.full_jobs(j, false) {
                        let _ = futures::SinkExt::send(&mut tx, job).await;
                    }
                }
            }
            drop(results);
            if let Some(j) = jobs {
                for job in self.full_jobs(j, true) {
                    let _ = futures::SinkExt::send(&mut tx, job).await;
                }
            }
            first_error
        };
        let running = async {
            let mut running = rx
                .map(|(op, rows)| self.run_job(op, rows))
                .buffer_unordered(jobs.map_or(1, |j| j.max_in_flight().max(1)));
            while let Some(r) = running.next().await {
                if let Err(e) = r {
                    tracing::error!(sync = %sync.name, "job failed: {e}");
                    if let Ok(mut slot) = job_error.lock() {
                        slot.get_or_insert(e);
                    }
                }
            }
        };
        let (first_error, ()) = futures::join!(planning, running);
        bar.finish_and_clear();
        if let Some(e) = first_error.or_else(|| job_error.lock().ok().and_then(|mut e| e.take())) {
            return Err(e);
        }
        self.finish(removed).await
    }

    /// After the sends: removals, then the new snapshot.
    async fn finish(&self, removed: Vec<Row>) -> Result<()> {
        // Removed rows: mirror archives what this sync created; the rest are released.
        if !removed.is_empty() && !self.stopped() {
            self.removals(removed).await?;
        }

        if !self.opts.dry_run {
            // A fresh session: the run's own session has cached the log's
            // file listing from before this run wrote to it.
            let fresh = crate::engine::session(self.lake).await?;
            self.compact(&fresh).await?;
        }
        Ok(())
    }

    /// Revert run `id`: for each record it wrote, write back the values it
    /// replaced (fields changed in the CRM since are left alone, logged
    /// `CHANGED_SINCE`), and archive the records it created. Only what the
    /// run confirmed (`ok` in the sync log) is reverted.
    async fn revert(&self, id: &str) -> Result<()> {
        let sync = self.sync;
        let unique = self
            .dest
            .prepare(&sync.object, &sync.key_property, &self.properties())
            .await?;
        let before = state::previous_values(self.lake, &sync.name, id).await?;
        // What the run wrote, per key.
        let ctx = crate::engine::session(self.lake).await?;
        let written = ctx
            .sql(&format!(
                "select key, crm_id, payload from ferry.sync_log where run_id = '{}' and sync = '{}' \
                 and status = 'ok' and operation in ('create', 'update', 'upsert')",
                id.replace('\'', "''"),
                sync.name.replace('\'', "''")
            ))
            .await?
            .collect()
            .await?;
        let mut wrote: HashMap<String, (Option<String>, BTreeMap<String, String>)> = HashMap::new();
        for b in &written {
            use arrow::array::{Array, AsArray};
            let cast =
                |i: usize| arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8);
            let (k, c, p) = (cast(0)?, cast(1)?, cast(2)?);
            let (k, c, p) = (
                k.as_string::<i32>(),
                c.as_string::<i32>(),
                p.as_string::<i32>(),
            );
            for i in 0..b.num_rows() {
                let payload = if p.is_null(i) {
                    BTreeMap::new()
                } else {
                    serde_json::from_str(p.value(i)).unwrap_or_default()
                };
                wrote.insert(
                    k.value(i).to_string(),
                    ((!c.is_null(i)).then(|| c.value(i).to_string()), payload),
                );
            }
        }
        let mut seen = HashSet::new();
        let before: Vec<state::PreviousRow> = before
            .into_iter()
            .filter(|r| wrote.contains_key(&r.key) && seen.insert(r.key.clone()))
            .collect();
        if before.is_empty() {
            tracing::info!(sync = %sync.name, run = id, "run {id} confirmed no writes; nothing to revert");
            return Ok(());
        }
        let properties = self.properties();
        let max = self.dest.capabilities().max_batch.max(1);
        for part in before.chunks(max) {
            if self.stopped() {
                self.add(|c| c.not_sent += part.len() as u64);
                continue;
            }
            let keys: Vec<String> = part.iter().map(|r| r.key.clone()).collect();
            let current = match self
                .dest
                .lookup(&sync.object, &sync.key_property, unique, &keys, &properties)
                .await
            {
                Ok(l) => l,
                Err(e @ (CallError::Auth { .. } | CallError::DailyLimit)) => {
                    self.set_stop(e);
                    self.add(|c| c.not_sent += part.len() as u64);
                    continue;
                }
                Err(e) => return Err(self.dest.stop_error(e)),
            };
            let mut logs = Vec::new();
            let mut updates = Vec::new();
            let mut archives = Vec::new();
            for r in part {
                let (crm_id, payload) = &wrote[&r.key];
                let now = current
                    .found
                    .get(&self.dest.normalize_key(&r.key))
                    .and_then(|m| m.first());
                let Some(now) = now else {
                    logs.push(LogRow::error(Some(&r.key), "revert", "rejected", "NOT_FOUND",
                        &format!("run {id} wrote this record, but the CRM no longer has it (deleted or merged since): nothing to revert")));
                    self.add(|c| c.rejected += 1);
                    continue;
                };
                // Fields changed in the CRM since the run wrote them.
                let changed: Vec<&String> = payload
                    .iter()
                    .filter(|(k, v)| {
                        !same_value(now.properties.get(*k).map_or("", String::as_str), v)
                    })
                    .map(|(k, _)| k)
                    .collect();
                if !r.existed {
                    if !changed.is_empty() {
                        logs.push(LogRow::error(Some(&r.key), "revert", "rejected", "CHANGED_SINCE",
                            &format!("run {id} created this record, but {} changed in the CRM since, so it is not archived",
                                changed.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "))));
                        self.add(|c| c.rejected += 1);
                        continue;
                    }
                    archives.push(Outgoing::new(
                        r.key.clone(),
                        Some(now.id.clone()).or(crm_id.clone()),
                        BTreeMap::new(),
                    ));
                    continue;
                }
                let Some(previous) = r
                    .previous
                    .as_deref()
                    .and_then(|p| serde_json::from_str::<BTreeMap<String, String>>(p).ok())
                else {
                    logs.push(LogRow::error(Some(&r.key), "revert", "rejected", "PREVIOUS_UNKNOWN",
                        &format!("the CRM's search did not show this record when run {id} wrote it, so the values it replaced are unknown")));
                    self.add(|c| c.rejected += 1);
                    continue;
                };
                let restore: BTreeMap<String, String> = previous
                    .into_iter()
                    .filter(|(k, _)| !changed.contains(&k))
                    .collect();
                if !changed.is_empty() {
                    let mut l = LogRow::error(
                        Some(&r.key),
                        "revert",
                        "rejected",
                        "CHANGED_SINCE",
                        &format!(
                            "{} changed in the CRM since run {id} wrote it: left as it is now",
                            changed
                                .iter()
                                .map(|c| c.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    l.crm_id = Some(now.id.clone());
                    logs.push(l);
                }
                if restore.is_empty() {
                    if changed.is_empty() {
                        self.add(|c| c.unchanged += 1);
                    } else {
                        self.add(|c| c.skipped += 1);
                    }
                    continue;
                }
                if self.opts.dry_run
                    && let Ok(mut samples) = self.samples.lock()
                    && samples.len() < SAMPLES
                {
                    samples.push(Sample {
                        key: r.key.clone(),
                        action: "update",
                        before: restore
                            .keys()
                            .map(|k| {
                                (
                                    k.clone(),
                                    now.properties.get(k).cloned().unwrap_or_default(),
                                )
                            })
                            .collect(),
                        after: restore.clone(),
                    });
                }
                updates.push(Outgoing::new(r.key.clone(), Some(now.id.clone()), restore));
            }
            if self.opts.dry_run {
                self.add(|c| {
                    c.updated += updates.len() as u64;
                    c.archived += archives.len() as u64;
                });
                continue;
            }
            for (op, outs) in [(Op::Update, updates), (Op::Archive, archives)] {
                if outs.is_empty() {
                    continue;
                }
                let sent_at = Utc::now();
                for (o, outcome, attempts) in self.send_split(op, outs).await {
                    let mut l = self.outcome_row(
                        op,
                        &o,
                        outcome.fate,
                        attempts,
                        None,
                        false,
                        false,
                        sent_at,
                    );
                    l.error_message
                        .get_or_insert_with(|| format!("revert of run {id}"));
                    logs.push(l);
                }
            }
            if !self.opts.dry_run {
                self.log.append(&logs).await?;
            }
        }
        Ok(())
    }

    /// The CRM's current values of the `if_empty` properties from the lake
    /// copy named in `crm_copy`, newest row per key, if the copy is fresh and
    /// has the columns; otherwise `None` (the CRM is read instead).
    async fn crm_copy(&self, ctx: &SessionContext) -> Result<Option<CrmCopy>> {
        let Some(cfg) = &self.sync.crm_copy else {
            return Ok(None);
        };
        if !self.has_if_empty() && !self.sync.revertible {
            return Ok(None);
        }
        let table = diff::quote_relation(&cfg.table);
        let df = match ctx.sql(&format!("select * from {table} limit 0")).await {
            Ok(df) => df,
            Err(e) => {
                tracing::warn!(sync = %self.sync.name, table = %cfg.table, "crm_copy is not readable ({e}); reading current values from the CRM");
                return Ok(None);
            }
        };
        let schema = df.schema().clone();
        let has = |c: &str| schema.field_with_unqualified_name(c).is_ok();
        let id_col = self
            .dest
            .capabilities()
            .id_columns
            .iter()
            .copied()
            .find(|c| has(c));
        let props: Vec<&str> = self
            .sync
            .fields
            .iter()
            .filter(|f| f.policy == Policy::IfEmpty || self.sync.revertible)
            .map(|f| f.property.as_str())
            .collect();
        let missing: Vec<&str> = props
            .iter()
            .copied()
            .chain([
                self.sync.key_property.as_str(),
                crate::lake::layout::LOADED_AT_COLUMN,
            ])
            .filter(|c| !has(c))
            .collect();
        let Some(id_col) = id_col.filter(|_| missing.is_empty()) else {
            tracing::warn!(
                sync = %self.sync.name, table = %cfg.table,
                "crm_copy lacks columns {missing:?} (or id); reading current values from the CRM"
            );
            return Ok(None);
        };
        let newest = ctx
            .sql(&format!(
                "select arrow_cast(max({}), 'Int64') from {table}",
                crate::lake::layout::LOADED_AT_COLUMN
            ))
            .await?
            .collect()
            .await?;
        let newest = newest
            .first()
            .map(|b| {
                arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(0))
            })
            .filter(|a| arrow::array::Array::is_valid(*a, 0))
            .map(|a| a.value(0));
        let fresh_after = Utc::now().timestamp_micros() - (cfg.max_age_minutes as i64) * 60_000_000;
        if newest.is_none_or(|t| t < fresh_after) {
            tracing::info!(sync = %self.sync.name, table = %cfg.table, "crm_copy is older than max_age_minutes; reading current values from the CRM");
            return Ok(None);
        }
        let key = format!(
            "lower(trim(cast({} as varchar)))",
            diff::quote_ident(&self.sync.key_property)
        );
        let cols: Vec<String> = props
            .iter()
            .map(|p| format!("cast({} as varchar)", diff::quote_ident(p)))
            .collect();
        let sql = format!(
            "select _k, _id{} from (select {key} as _k, cast({} as varchar) as _id{}, \
             row_number() over (partition by {key} order by {} desc) as _rn from {table}) where _rn = 1",
            (0..props.len())
                .map(|i| format!(", _p{i}"))
                .collect::<String>(),
            diff::quote_ident(id_col),
            cols.iter()
                .enumerate()
                .map(|(i, c)| format!(", {c} as _p{i}"))
                .collect::<String>(),
            crate::lake::layout::LOADED_AT_COLUMN,
        );
        let mut copy = CrmCopy::new();
        for b in ctx.sql(&sql).await?.collect().await? {
            let strings: Vec<arrow::array::ArrayRef> = b
                .columns()
                .iter()
                .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8))
                .collect::<std::result::Result<_, _>>()?;
            let col = |i: usize| arrow::array::AsArray::as_string::<i32>(&strings[i]).clone();
            let (k, id) = (col(0), col(1));
            let values: Vec<_> = (0..props.len()).map(|i| col(2 + i)).collect();
            for r in 0..b.num_rows() {
                if arrow::array::Array::is_null(&k, r) || arrow::array::Array::is_null(&id, r) {
                    continue;
                }
                let mut properties = BTreeMap::new();
                for (p, v) in props.iter().zip(&values) {
                    if arrow::array::Array::is_valid(v, r) {
                        properties.insert(p.to_string(), v.value(r).to_string());
                    }
                }
                copy.insert(
                    k.value(r).to_string(),
                    Existing {
                        id: id.value(r).to_string(),
                        properties,
                        created_at: None,
                    },
                );
            }
        }
        tracing::info!(sync = %self.sync.name, table = %cfg.table, keys = copy.len(), "judging if_empty fields from the lake copy");
        Ok(Some(copy))
    }

    /// Keys whose newest outcome is a CRM rejection or a failure.
    async fn failed_keys(&self, ctx: &SessionContext) -> Result<HashSet<String>> {
        let sql = format!(
            "select key from (select key, status, operation, row_number() over (partition by key order by at desc) as rn \
             from ferry.sync_log where sync = '{}') where rn = 1 and status in ('failed', 'rejected', 'unknown', 'not_sent') and operation <> 'reject'",
            self.sync.name.replace('\'', "''")
        );
        let batches = ctx.sql(&sql).await?.collect().await?;
        let mut keys = HashSet::new();
        for b in &batches {
            let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
            let a = arrow::array::AsArray::as_string::<i32>(&col);
            for i in 0..arrow::array::Array::len(a) {
                if arrow::array::Array::is_valid(a, i) {
                    keys.insert(a.value(i).to_string());
                }
            }
        }
        Ok(keys)
    }

    /// Keys with an `unknown` outcome after their last settled (`ok` or
    /// `rejected`) one, with the earliest such attempt: the CRM may hold the
    /// effect of a write begun then.
    async fn pending_keys(&self, ctx: &SessionContext) -> Result<Pending> {
        let name = self.sync.name.replace('\'', "''");
        // Rows logged while a record waited, or when its lookup failed,
        // are not sends: they do not move `last_sent`.
        let sql = format!(
            "with log as (select key, status, operation, at from ferry.sync_log where sync = '{name}' and key is not null \
             and key in (select key from ferry.sync_log where sync = '{name}' and status = 'unknown')), \
             settled as (select key, max(at) as settled_at from log where status in ('ok', 'rejected', 'not_sent') group by key) \
             select l.key, arrow_cast(min(l.at), 'Int64') as first, \
             arrow_cast(coalesce(max(case when l.operation not in ('wait', 'lookup') then l.at end), min(l.at)), 'Int64') as last_sent \
             from log l left join settled s on l.key = s.key \
             where l.status = 'unknown' and (s.settled_at is null or l.at > s.settled_at) group by l.key"
        );
        let batches = match ctx.sql(&sql).await {
            Ok(df) => df.collect().await?,
            // No log yet (a first run): nothing is pending.
            Err(e) if e.to_string().contains("not found") => return Ok(Pending::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Pending::new();
        for b in &batches {
            let keys = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
            let keys = arrow::array::AsArray::as_string::<i32>(&keys);
            let col = |i: usize| {
                arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(i))
                    .clone()
            };
            let (first, last) = (col(1), col(2));
            for i in 0..b.num_rows() {
                if let (Some(first), Some(last_sent)) = (
                    chrono::DateTime::from_timestamp_micros(first.value(i)),
                    chrono::DateTime::from_timestamp_micros(last.value(i)),
                ) {
                    out.insert(
                        self.dest.normalize_key(keys.value(i)),
                        Unsettled { first, last_sent },
                    );
                }
            }
        }
        Ok(out)
    }

    fn model_values(&self, row: &Row) -> String {
        let m: BTreeMap<&str, &Option<String>> = self
            .sync
            .fields
            .iter()
            .zip(&row.values)
            .map(|(f, v)| (f.column.as_str(), v))
            .collect();
        serde_json::to_string(&m).unwrap_or_default()
    }

    /// The properties to send for `row`, under each field's ownership policy.
    /// `current` is the CRM record when known; `creating` when it will be new.
    fn payload(
        &self,
        row: &Row,
        current: Option<&Existing>,
        creating: bool,
    ) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        for (f, v) in self.sync.fields.iter().zip(&row.values) {
            match (v, f.policy) {
                (None, Policy::Overwrite) => {
                    p.insert(f.property.clone(), String::new());
                }
                (None, _) => {}
                (Some(v), Policy::IfEmpty) => {
                    let empty = creating
                        || current.is_some_and(|c| {
                            c.properties
                                .get(&f.property)
                                .is_none_or(|x| x.trim().is_empty())
                        });
                    if empty {
                        p.insert(f.property.clone(), v.clone());
                    }
                }
                (Some(v), _) => {
                    p.insert(f.property.clone(), v.clone());
                }
            }
        }
        p
    }

    /// Decide what to do with each row of a batch. Returns the actions and
    /// the keys whose existing CRM record this sync created in an earlier
    /// write whose reply was lost.
    async fn plan(
        &self,
        rows: &[Row],
        unique: bool,
        copy: Option<&CrmCopy>,
        pending: &Pending,
    ) -> Result<(Vec<Action>, HashSet<String>, Previous), CallError> {
        let sync = self.sync;
        // Upserts by a unique key and updates by a unique key need no lookup,
        // unless an if_empty field needs the CRM's current value (or this is a
        // dry run, which reports creates and updates apart).
        // A destination that cannot update by key (Salesforce's upsert
        // creates) finds records' ids first.
        let by_key = self.dest.capabilities().ops.contains(&Op::UpdateByKey);
        let need_lookup = !unique
            || sync.mode == Mode::Insert
            || (sync.mode == Mode::Update && !by_key)
            || self.has_if_empty()
            || sync.revertible
            || self.opts.dry_run;
        let mut absent_from_copy: HashSet<String> = HashSet::new();
        let mut unresolved: HashMap<String, String> = HashMap::new();
        let found = if need_lookup {
            let keys: Vec<String> = rows.iter().filter_map(|r| r.key.clone()).collect();
            // A fresh lake copy answers if_empty for the keys it holds, when
            // that is all the lookup is for. A key the copy lacks is new
            // since the copy (an upsert creates it), unless an earlier write
            // of it is pending: only those are read from the CRM.
            let from_copy =
                copy.filter(|_| unique && sync.mode != Mode::Insert && !self.opts.dry_run);
            let mut found: HashMap<String, Vec<Existing>> = HashMap::new();
            let mut ask = Vec::new();
            for k in keys {
                let nk = self.dest.normalize_key(&k);
                match from_copy.map(|c| c.get(&nk)) {
                    Some(Some(e)) => {
                        found.insert(nk, vec![e.clone()]);
                    }
                    Some(None) if !pending.contains_key(&nk) => {
                        absent_from_copy.insert(nk);
                    }
                    _ => ask.push(k),
                }
            }
            if !ask.is_empty() {
                let l = self
                    .dest
                    .lookup(
                        &sync.object,
                        &sync.key_property,
                        unique,
                        &ask,
                        &self.properties(),
                    )
                    .await?;
                found.extend(l.found);
                unresolved = l.unresolved;
            }
            found
        } else {
            HashMap::new()
        };
        let mut ours = HashSet::new();
        let mut previous = Previous::new();
        let mut actions = Vec::with_capacity(rows.len());
        for row in rows {
            let key = row.key.clone().unwrap_or_default();
            let nk = self.dest.normalize_key(&key);
            if sync.revertible {
                let current = found.get(&nk).and_then(|m| m.first()).cloned();
                let known = current.is_some() || row.crm_id.is_none();
                previous.insert(key.clone(), (current, known));
            }
            let unsettled = pending.get(&nk).copied();
            let since = unsettled.map(|u| u.first);
            let matches: &[Existing] = found.get(&nk).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(why) = unresolved.get(&nk) {
                actions.push(Action::Reject {
                    category: "LOOKUP_UNRESOLVED",
                    message: format!("{} = {key}: {why}", sync.key_property),
                });
                continue;
            }
            if matches.len() > 1 {
                let ids: Vec<&str> = matches.iter().map(|m| m.id.as_str()).collect();
                actions.push(Action::Reject {
                    category: "AMBIGUOUS_MATCH",
                    message: format!(
                        "{} CRM records have {} = {key} (ids {}): merge them in the CRM or match on a unique property",
                        matches.len(),
                        sync.key_property,
                        ids.join(", ")
                    ),
                });
                continue;
            }
            let current = matches.first();
            // A record created since an earlier create of ours went unanswered
            // is the one we created.
            if let (Some(since), Some(e)) = (since, current)
                && e.created_at.is_some_and(|at| at + CLOCK_SKEW >= since)
            {
                ours.insert(key.clone());
            }
            // The CRM confirmed this record to an earlier run: a search that
            // does not show it yet (HubSpot's index lags writes) must not
            // make it a create. Its current values stay unknown, so if_empty
            // fields are not sent for it.
            let confirmed = row.crm_id.as_ref().map(|id| Existing {
                id: id.clone(),
                properties: BTreeMap::new(),
                created_at: None,
            });
            let existing = current.or(confirmed.as_ref().filter(|_| !unique));
            let out = |op: Op, id: Option<String>, creating: bool| {
                let mut o = Outgoing::new(key.clone(), id, self.payload(row, current, creating));
                o.pending_since = since;
                Action::Send(op, o)
            };
            let action = match (sync.mode, unique, existing) {
                // A dry run reports an upsert of a key the CRM lacks as a create.
                (Mode::Upsert | Mode::Mirror, true, None) if self.opts.dry_run => {
                    out(Op::Create, None, true)
                }
                // Not found (or not looked up): the upsert creates it. A key
                // a fresh CRM copy lacks is taken as new (no lookup), with its
                // if_empty fields: the copy's `max_age_minutes` bounds how
                // old "fresh" may be (a record created in the CRM since the
                // copy would get them too).
                (Mode::Upsert | Mode::Mirror, true, e) => out(
                    Op::Upsert,
                    None,
                    e.is_none() && (need_lookup || absent_from_copy.contains(&nk)),
                ),
                (Mode::Upsert | Mode::Mirror | Mode::Insert, false, None)
                    if unsettled.is_some_and(|u| {
                        Utc::now() - u.last_sent
                            < chrono::TimeDelta::from_std(self.dest.search_lag(unique))
                                .unwrap_or_default()
                    }) =>
                {
                    Action::Wait {
                        since: unsettled.map_or_else(Utc::now, |u| u.last_sent),
                    }
                }
                (Mode::Upsert | Mode::Mirror, false, None) => out(Op::Create, None, true),
                (Mode::Upsert | Mode::Mirror | Mode::Update, false, Some(e)) => {
                    out(Op::Update, Some(e.id.clone()), false)
                }
                (Mode::Update, true, Some(e)) => out(Op::Update, Some(e.id.clone()), false),
                (Mode::Update, true, None) if !need_lookup => out(Op::UpdateByKey, None, false),
                (Mode::Update, _, None) => Action::Reject {
                    category: "OBJECT_NOT_FOUND",
                    message: format!(
                        "no CRM record has {} = {key}; mode = \"update\" never creates records",
                        sync.key_property
                    ),
                },
                (Mode::Insert, _, Some(e)) => Action::Noop {
                    id: e.id.clone(),
                    skipped: true,
                },
                (Mode::Insert, _, None) => out(Op::Create, None, true),
                // Audience runs add and remove members (audience.rs).
                (Mode::Audience, ..) => Action::Reject {
                    category: "AUDIENCE",
                    message: "an audience sync adds and removes members; it writes no fields"
                        .into(),
                },
            };
            // An update with nothing left to write (every field owned by the CRM).
            let action = match action {
                Action::Send(Op::Update | Op::UpdateByKey, o) if o.properties.is_empty() => {
                    Action::Noop {
                        id: o.id.unwrap_or_default(),
                        skipped: false,
                    }
                }
                Action::Send(Op::Upsert, o) if o.properties.is_empty() && existing.is_some() => {
                    Action::Noop {
                        id: existing.map(|e| e.id.clone()).unwrap_or_default(),
                        skipped: false,
                    }
                }
                a => a,
            };
            actions.push(action);
        }
        if self.opts.dry_run
            && let Ok(mut samples) = self.samples.lock()
        {
            for (row, a) in rows.iter().zip(&actions) {
                if samples.len() >= SAMPLES {
                    break;
                }
                if let Action::Send(op, o) = a {
                    let key = row.key.clone().unwrap_or_default();
                    let nk = self.dest.normalize_key(&key);
                    let before = found
                        .get(&nk)
                        .and_then(|m| m.first())
                        .map(|e| {
                            o.properties
                                .keys()
                                .map(|k| {
                                    (k.clone(), e.properties.get(k).cloned().unwrap_or_default())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let action = match (op, found.contains_key(&nk)) {
                        (Op::Create, _) | (Op::Upsert, false) => "create",
                        _ => "update",
                    };
                    samples.push(Sample {
                        key,
                        action,
                        before,
                        after: o.properties.clone(),
                    });
                }
            }
        }
        Ok((actions, ours, previous))
    }

    /// Plan, send and commit one batch of added/changed rows.
    async fn chunk(
        &self,
        rows: Vec<Row>,
        unique: bool,
        copy: Option<&CrmCopy>,
        pending: &Pending,
    ) -> Result<()> {
        if self.stopped() {
            self.add(|c| c.not_sent += rows.len() as u64);
            return Ok(());
        }
        // A run whose lease was taken over sends nothing more.
        if let Err(e) = self.log.check() {
            self.add(|c| c.not_sent += rows.len() as u64);
            return Err(e);
        }
        let (actions, ours, previous) = match self.plan(&rows, unique, copy, pending).await {
            Ok(a) => a,
            Err(e @ (CallError::Auth { .. } | CallError::DailyLimit)) => {
                self.set_stop(e);
                self.add(|c| c.not_sent += rows.len() as u64);
                return Ok(());
            }
            Err(e) => {
                // The lookup failed: nothing is known about these records, so
                // none is sent (not created, not overwritten); they stay
                // pending. A key whose earlier write is unknown stays so.
                let logs: Vec<LogRow> = rows
                    .iter()
                    .map(|r| {
                        let pending_key = r
                            .key
                            .as_deref()
                            .is_some_and(|k| pending.contains_key(&self.dest.normalize_key(k)));
                        let status = if pending_key { "unknown" } else { "failed" };
                        let mut l = LogRow::error(
                            r.key.as_deref(),
                            "lookup",
                            status,
                            &e.category(),
                            &format!("the lookup failed, so nothing was sent: {}", e.message()),
                        );
                        l.hash = r.hash.clone();
                        l
                    })
                    .collect();
                self.add(|c| c.failed += logs.len() as u64);
                if !self.opts.dry_run {
                    self.log.append(&logs).await?;
                }
                return Ok(());
            }
        };
        let by_key: HashMap<String, &Row> = rows
            .iter()
            .map(|r| (r.key.clone().unwrap_or_default(), r))
            .collect();
        let mut logs: Vec<LogRow> = Vec::new();
        let mut groups: BTreeMap<u8, (Op, Vec<Outgoing>)> = BTreeMap::new();
        for (row, action) in rows.iter().zip(actions) {
            let key = row.key.clone().unwrap_or_default();
            match action {
                Action::Send(op, o) => {
                    let slot = match op {
                        Op::Upsert => 0,
                        Op::Create => 1,
                        Op::Update => 2,
                        Op::UpdateByKey => 3,
                        Op::Archive => 4,
                    };
                    groups.entry(slot).or_insert((op, Vec::new())).1.push(o);
                }
                Action::Noop { id, skipped } => {
                    let mut l = LogRow::ok(
                        &key,
                        if skipped { "skip" } else { "update" },
                        Some(id),
                        row.created || ours.contains(&key),
                    );
                    l.hash = row.hash.clone();
                    l.attempts = 0;
                    logs.push(l);
                    self.add(|c| {
                        if skipped {
                            c.skipped += 1
                        } else {
                            c.updated += 1
                        }
                    });
                }
                Action::Reject { category, message } => {
                    let mut l = LogRow::error(Some(&key), "reject", "rejected", category, &message);
                    l.hash = row.hash.clone();
                    l.payload = Some(self.model_values(row));
                    logs.push(l);
                    self.add(|c| c.rejected += 1);
                }
                Action::Wait { since } => {
                    let mut l = LogRow::error(
                        Some(&key),
                        "wait",
                        "unknown",
                        "PENDING_CREATE",
                        &format!(
                            "a create sent at {} may have been applied; the CRM's search may not show it yet, so it is looked up again next run before anything is sent",
                            since.to_rfc3339()
                        ),
                    );
                    l.hash = row.hash.clone();
                    l.attempts = 0;
                    logs.push(l);
                    self.add(|c| c.unknown += 1);
                }
            }
        }
        // Write-ahead for revert: the values this batch replaces, durable
        // before anything is sent.
        if self.sync.revertible && !self.opts.dry_run {
            let recorded: Vec<state::PreviousRow> = groups
                .values()
                .flat_map(|(_, outs)| outs.iter())
                .filter_map(|o| {
                    let (current, known) = previous.get(&o.key)?;
                    Some(state::PreviousRow {
                        key: o.key.clone(),
                        crm_id: current
                            .as_ref()
                            .map(|e| e.id.clone())
                            .or_else(|| o.id.clone()),
                        existed: current.is_some() || !known,
                        previous: known.then(|| {
                            let values: BTreeMap<&String, String> = o
                                .properties
                                .keys()
                                .filter(|k| !k.eq_ignore_ascii_case(&self.sync.key_property))
                                .map(|k| {
                                    (
                                        k,
                                        current
                                            .as_ref()
                                            .and_then(|e| e.properties.get(k).cloned())
                                            .unwrap_or_default(),
                                    )
                                })
                                .collect();
                            serde_json::to_string(&values).unwrap_or_default()
                        }),
                    })
                })
                .collect();
            if !recorded.is_empty() {
                self.log.check()?;
                state::record_previous(self.lake, &self.sync.name, &self.run_id, &recorded).await?;
            }
        }
        // Rows for jobs wait in the queue (their log rows are written when
        // the job's results are read).
        if let Some(j) = self.dest.jobs()
            && let Ok(mut q) = self.queue.lock()
            && let Some(queue) = q.as_mut()
        {
            groups.retain(|_, (op, outs)| {
                if !j.ops().contains(op) {
                    return true;
                }
                let slot = match queue.iter().position(|q| q.op == *op) {
                    Some(i) => i,
                    None => {
                        queue.push(JobQueue {
                            op: *op,
                            rows: Vec::new(),
                            bytes: 0,
                        });
                        queue.len() - 1
                    }
                };
                let q = &mut queue[slot];
                for o in outs.drain(..) {
                    let row = by_key.get(&o.key).copied();
                    let queued = Queued {
                        hash: row.and_then(|r| r.hash.clone()),
                        was_created: row.is_some_and(|r| r.created) || ours.contains(&o.key),
                        may_create: *op == Op::Upsert && row.is_some_and(|r| r.op == DiffOp::Add),
                        out: o,
                    };
                    q.bytes += queued.bytes();
                    q.rows.push(queued);
                }
                false
            });
        }
        if self.opts.dry_run {
            for (op, outs) in groups.values() {
                let n = outs.len() as u64;
                match op {
                    Op::Create => self.add(|c| c.created += n),
                    _ => self.add(|c| c.updated += n),
                }
            }
            return Ok(());
        }
        // Write-ahead: a create found by a lagging search, or a mirror's
        // upsert of a new record, is logged `unknown` before it is sent, so
        // a run killed before the reply leaves a trace: the next run waits
        // for the search to catch up and looks before writing it again, and
        // knows that a record created since then is this sync's.
        let intents: Vec<LogRow> = groups
            .values()
            .filter(|(op, _)| {
                (*op == Op::Create && !self.dest.search_lag(unique).is_zero())
                    || (*op == Op::Upsert && self.sync.mode == Mode::Mirror)
            })
            .flat_map(|(op, outs)| outs.iter().map(move |o| (*op, o)))
            .filter(|(op, o)| {
                *op == Op::Create || by_key.get(&o.key).is_some_and(|r| r.op == DiffOp::Add)
            })
            .map(|(op, o)| {
                let mut l = LogRow::error(
                    Some(&o.key),
                    op.as_str(),
                    "unknown",
                    "IN_FLIGHT",
                    "sent; if no outcome follows, the run stopped before the CRM answered and the record is looked up before it is written again",
                );
                l.attempts = 0;
                l
            })
            .collect();
        self.log.check()?;
        self.log.append(&intents).await?;
        let intended: HashSet<String> = intents.iter().filter_map(|l| l.key.clone()).collect();
        for (_, (op, outs)) in groups {
            let sent_at = Utc::now();
            let sent: Vec<(Outgoing, Outcome, u32)> = if op == Op::Create {
                self.create_safely(outs, unique).await
            } else {
                self.send_split(op, outs).await
            };
            for (o, outcome, attempts) in sent {
                let row = by_key.get(&o.key).copied();
                let hash = row.and_then(|r| r.hash.clone());
                let was_created = row.is_some_and(|r| r.created) || ours.contains(&o.key);
                // A create, or an upsert of a record the CRM may not have had,
                // may have happened when its reply was lost.
                let may_create = op == Op::Create
                    || (op == Op::Upsert && row.is_some_and(|r| r.op == DiffOp::Add));
                logs.push(self.outcome_row(
                    op,
                    &o,
                    outcome.fate,
                    attempts,
                    hash,
                    was_created,
                    may_create,
                    sent_at,
                ));
            }
        }
        // Records logged as about to be sent that never were (the run
        // stopped: auth, daily budget): settled as not sent, so their
        // write-ahead rows do not leave them waiting or widen whose records
        // this sync created.
        let answered: HashSet<&str> = logs.iter().filter_map(|l| l.key.as_deref()).collect();
        let unsent: Vec<LogRow> = intended
            .iter()
            .filter(|k| !answered.contains(k.as_str()))
            .map(|k| {
                let mut l = LogRow::error(
                    Some(k),
                    "create",
                    "not_sent",
                    "NOT_SENT",
                    "the run stopped before this record was sent; it is sent next run",
                );
                l.attempts = 0;
                l
            })
            .collect();
        logs.extend(unsent);
        // The commit: this batch's outcomes are durable before the batch counts as done.
        self.log.append(&logs).await
    }

    /// The log row of one record's outcome (counted).
    #[allow(clippy::too_many_arguments)]
    fn outcome_row(
        &self,
        op: Op,
        o: &Outgoing,
        fate: Fate,
        attempts: u32,
        hash: Option<String>,
        was_created: bool,
        may_create: bool,
        sent_at: chrono::DateTime<Utc>,
    ) -> LogRow {
        let payload = serde_json::to_string(&o.properties).ok();
        match fate {
            Fate::Written(Written { id, created }) => {
                self.add(|c| {
                    if op == Op::Archive {
                        c.archived += 1
                    } else if created {
                        c.created += 1
                    } else {
                        c.updated += 1
                    }
                });
                let mut l = LogRow::ok(&o.key, op.as_str(), Some(id), created || was_created);
                l.hash = hash;
                l.payload = payload;
                l.attempts = attempts as i64;
                l
            }
            Fate::Refused(r) if r.transient && may_create => {
                self.unknown_row(o, op, &r.message, sent_at, hash, payload, attempts)
            }
            Fate::Unknown(why) if may_create => {
                self.unknown_row(o, op, &why, sent_at, hash, payload, attempts)
            }
            Fate::Unknown(why) => self.refused_row(
                o,
                op,
                Refusal::no_result(why),
                was_created,
                hash,
                payload,
                attempts,
            ),
            Fate::Refused(r) => self.refused_row(o, op, r, was_created, hash, payload, attempts),
        }
    }

    /// Take the queued rows that fill a job (all of them when `all`).
    fn full_jobs(&self, j: &dyn destination::Jobs, all: bool) -> Vec<(Op, Vec<Queued>)> {
        let Ok(mut q) = self.queue.lock() else {
            return Vec::new();
        };
        let Some(queue) = q.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for q in queue.iter_mut() {
            let full = q.rows.len() >= j.max_rows() || q.bytes >= j.max_bytes();
            if !(all || full) || q.rows.is_empty() {
                continue;
            }
            let rows = std::mem::take(&mut q.rows);
            q.bytes = 0;
            let mut parts =
                destination::batches(rows, j.max_rows(), Some(j.max_bytes()), Queued::bytes);
            // Short of a full job: it waits for more rows.
            if !all
                && let Some(last) = parts.pop_if(|p| {
                    p.len() < j.max_rows()
                        && p.iter().map(Queued::bytes).sum::<usize>() * 10 < j.max_bytes() * 9
                })
            {
                q.bytes = last.iter().map(Queued::bytes).sum();
                q.rows = last;
            }
            out.extend(parts.into_iter().map(|p| (q.op, p)));
        }
        out
    }

    /// Send one job's rows: open the job, record it in the lake, upload,
    /// wait, log every row's outcome. Rows the vendor's allowance does not
    /// cover go by calls instead.
    async fn run_job(&self, op: Op, rows: Vec<Queued>) -> Result<()> {
        let Some(jobs) = self.dest.jobs() else {
            return Err(Error::Internal(
                "a job for a destination without jobs".into(),
            ));
        };
        if self.stopped() {
            self.add(|c| c.not_sent += rows.len() as u64);
            return Ok(());
        }
        self.log.check()?;
        let sync = self.sync;
        if !jobs.affordable(rows.len()) {
            tracing::warn!(sync = %sync.name, rows = rows.len(), "the vendor's allowance of jobs for today does not cover these rows; sending them by calls");
            let max = self.dest.capabilities().max_batch.max(1);
            for part in rows.chunks(max) {
                let meta: HashMap<&str, &Queued> =
                    part.iter().map(|q| (q.out.key.as_str(), q)).collect();
                let sent_at = Utc::now();
                let sent = self
                    .send_split(op, part.iter().map(|q| q.out.clone()).collect())
                    .await;
                let logs: Vec<LogRow> = sent
                    .into_iter()
                    .map(|(o, outcome, attempts)| {
                        let q = meta.get(o.key.as_str());
                        self.outcome_row(
                            op,
                            &o,
                            outcome.fate,
                            attempts,
                            q.and_then(|q| q.hash.clone()),
                            q.is_some_and(|q| q.was_created),
                            q.is_some_and(|q| q.may_create),
                            sent_at,
                        )
                    })
                    .collect();
                self.log.append(&logs).await?;
            }
            return Ok(());
        }
        let job = match jobs.open(&sync.object, op, &sync.key_property).await {
            Ok(id) => id,
            Err(e) => return self.job_refused(op, &rows, e).await,
        };
        let record = state::JobRecord {
            job: job.clone(),
            object: sync.object.clone(),
            operation: op.as_str().to_string(),
            key_property: sync.key_property.clone(),
            run_id: self.run_id.as_str().to_string(),
            opened_at: Utc::now(),
        };
        let job_rows: Vec<state::JobRow> = rows
            .iter()
            .map(|q| state::JobRow {
                key: q.out.key.clone(),
                crm_id: q.out.id.clone(),
                hash: q.hash.clone(),
                payload: serde_json::to_string(&q.out.properties).unwrap_or_default(),
                created: q.was_created,
                may_create: q.may_create,
            })
            .collect();
        // The record first: from here on, a killed run resumes this job.
        if let Err(e) = state::record_job(self.lake, &sync.name, &record, &job_rows).await {
            let _ = jobs.abort(&job).await;
            return Err(e);
        }
        tracing::info!(sync = %sync.name, job = %job, rows = rows.len(), "uploading to job {job}");
        let outs: Vec<Outgoing> = rows.iter().map(|q| q.out.clone()).collect();
        if let Err(e) = jobs.upload(&job, op, &sync.key_property, &outs).await {
            // The destination aborted it: none of its rows is processed.
            self.job_refused(op, &rows, e).await?;
            return state::settle_job(self.lake, &sync.name, &job).await;
        }
        self.settle(&record, op, rows, outs).await
    }

    /// Wait for a job and log its rows' outcomes; then its record goes.
    async fn settle(
        &self,
        record: &state::JobRecord,
        op: Op,
        rows: Vec<Queued>,
        outs: Vec<Outgoing>,
    ) -> Result<()> {
        let Some(jobs) = self.dest.jobs() else {
            return Err(Error::Internal(
                "a job for a destination without jobs".into(),
            ));
        };
        let finish = jobs.finish(&record.job, op, &record.key_property, &outs);
        // A shutdown does not wait for the job: its record stays, and the
        // next run waits for it instead.
        let finished = match self.opts.shutdown.clone() {
            Some(mut stop) => {
                let stopping = async move {
                    while !*stop.borrow() {
                        if stop.changed().await.is_err() {
                            futures::future::pending::<()>().await;
                        }
                    }
                };
                tokio::select! {
                    r = finish => Some(r),
                    () = stopping => None,
                }
            }
            None => Some(finish.await),
        };
        let Some(finished) = finished else {
            tracing::info!(sync = %self.sync.name, job = %record.job, "shutting down while job {} runs; the next run settles it", record.job);
            self.add(|c| c.unknown += rows.len() as u64);
            self.set_stop(CallError::Transient {
                message: SHUTTING_DOWN.into(),
                attempts: 0,
            });
            return Ok(());
        };
        match finished {
            Ok(Some(outcomes)) => {
                let logs: Vec<LogRow> = rows
                    .iter()
                    .zip(outcomes)
                    .map(|(q, o)| {
                        let mut l = self.outcome_row(
                            op,
                            &q.out,
                            o.fate,
                            1,
                            q.hash.clone(),
                            q.was_created,
                            q.may_create,
                            record.opened_at,
                        );
                        // Which job carried the row, and which run opened it.
                        let mut r =
                            serde_json::json!({"job": record.job, "opened_by": record.run_id});
                        if let Some(v) = l.response.take() {
                            r["result"] =
                                serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
                        }
                        l.response = Some(r.to_string());
                        l
                    })
                    .collect();
                self.log.append(&logs).await?;
            }
            // Never started: aborted, and its rows go through the diff again.
            Ok(None) => {
                tracing::info!(sync = %self.sync.name, job = %record.job, "job {} was never closed; aborted, its rows are sent again", record.job);
                self.add(|c| c.not_sent += rows.len() as u64);
            }
            Err(e) => {
                // The job may still be processing: its record stays, and the
                // next run waits for it before sending anything.
                tracing::warn!(sync = %self.sync.name, job = %record.job, "cannot read job {} yet ({}); the next run settles it", record.job, e.message());
                self.add(|c| c.unknown += rows.len() as u64);
                if matches!(e, CallError::Auth { .. } | CallError::DailyLimit) {
                    self.set_stop(e);
                }
                return Ok(());
            }
        }
        state::settle_job(self.lake, &self.sync.name, &record.job).await
    }

    /// A job that could not be opened or uploaded: nothing of it was
    /// processed. Its rows are logged failed (sent again next run) or
    /// rejected, or the run stops.
    async fn job_refused(&self, op: Op, rows: &[Queued], e: CallError) -> Result<()> {
        if matches!(e, CallError::Auth { .. } | CallError::DailyLimit) {
            self.add(|c| c.not_sent += rows.len() as u64);
            self.set_stop(e);
            return Ok(());
        }
        let transient = matches!(e, CallError::Transient { .. });
        let r = Refusal {
            category: e.category(),
            message: format!(
                "the job was refused, so none of its rows was processed: {}",
                e.message()
            ),
            response: match &e {
                CallError::Rejected { body, .. } => Some(body.to_string()),
                _ => None,
            },
            transient,
        };
        let logs: Vec<LogRow> = rows
            .iter()
            .map(|q| {
                self.refused_row(
                    &q.out,
                    op,
                    r.clone(),
                    q.was_created,
                    q.hash.clone(),
                    serde_json::to_string(&q.out.properties).ok(),
                    1,
                )
            })
            .collect();
        self.log.append(&logs).await
    }

    /// Settle the jobs earlier runs left open (killed while a job ran).
    async fn resume_jobs(&self) -> Result<()> {
        let open = state::open_jobs(self.lake, &self.sync.name).await?;
        if open.is_empty() {
            return Ok(());
        }
        if self.opts.dry_run {
            tracing::warn!(sync = %self.sync.name, jobs = open.len(), "jobs of an earlier run are not settled yet; the next real run waits for them first");
            return Ok(());
        }
        if self.dest.jobs().is_none() {
            return Err(Error::Input(format!(
                "sync {}: {} job(s) of an earlier run are recorded in the lake, but destination {:?} has no jobs. \
                 Point the sync back at the destination that ran them, or delete {} after checking them in the CRM",
                self.sync.name,
                open.len(),
                self.sync.destination,
                state::state_prefix(&self.sync.name).join("jobs")
            )));
        }
        for (record, rows) in open {
            let op = match record.operation.as_str() {
                "upsert" => Op::Upsert,
                "update" => Op::Update,
                other => {
                    return Err(Error::Internal(format!(
                        "job {} records operation {other:?}",
                        record.job
                    )));
                }
            };
            tracing::info!(sync = %self.sync.name, job = %record.job, rows = rows.len(), "resuming job {} of run {}", record.job, record.run_id);
            let queued: Vec<Queued> = rows
                .into_iter()
                .map(|r| Queued {
                    out: Outgoing::new(
                        r.key,
                        r.crm_id,
                        serde_json::from_str(&r.payload).unwrap_or_default(),
                    ),
                    hash: r.hash,
                    was_created: r.created,
                    may_create: r.may_create,
                })
                .collect();
            let outs = queued.iter().map(|q| q.out.clone()).collect();
            self.settle(&record, op, queued, outs).await?;
            if self.stopped() {
                break;
            }
        }
        Ok(())
    }

    /// The log row of a write whose fate is unknown, timed at its first
    /// attempt: a record created since then was created by this sync.
    #[allow(clippy::too_many_arguments)]
    fn unknown_row(
        &self,
        o: &Outgoing,
        op: Op,
        why: &str,
        sent_at: chrono::DateTime<Utc>,
        hash: Option<String>,
        payload: Option<String>,
        attempts: u32,
    ) -> LogRow {
        self.add(|c| c.unknown += 1);
        let mut l = LogRow::error(
            Some(&o.key),
            op.as_str(),
            "unknown",
            "UNKNOWN_OUTCOME",
            &format!(
                "{why}; the write may have been applied, so the record is looked up before it is written again"
            ),
        );
        l.hash = hash;
        l.payload = payload;
        l.attempts = attempts as i64;
        l.at = Some(sent_at);
        l
    }

    /// The log row of a record the CRM refused (or that failed transiently).
    #[allow(clippy::too_many_arguments)]
    fn refused_row(
        &self,
        o: &Outgoing,
        op: Op,
        r: Refusal,
        was_created: bool,
        hash: Option<String>,
        payload: Option<String>,
        attempts: u32,
    ) -> LogRow {
        let status = if r.transient { "failed" } else { "rejected" };
        self.add(|c| {
            if r.transient {
                c.failed += 1
            } else {
                c.rejected += 1
            }
        });
        let mut l = LogRow::error(Some(&o.key), op.as_str(), status, &r.category, &r.message);
        l.crm_id = o.id.clone();
        l.created = was_created;
        l.hash = hash;
        l.payload = payload;
        l.response = r.response;
        l.attempts = attempts as i64;
        l
    }

    /// Send one group; a batch refused as a whole is split in halves until
    /// the bad records are alone, unless the refusal applies to every
    /// record alike. Returns every record's outcome and how many calls
    /// carried it. Records not sent because the run stopped are left out.
    async fn send_split(&self, op: Op, rows: Vec<Outgoing>) -> Vec<(Outgoing, Outcome, u32)> {
        let mut out = Vec::new();
        let mut stack: Vec<(Vec<Outgoing>, u32)> = vec![(rows, 0)];
        let refuse_all = |out: &mut Vec<(Outgoing, Outcome, u32)>,
                          part: Vec<Outgoing>,
                          r: Refusal,
                          tries: u32| {
            for o in part {
                let key = o.key.clone();
                out.push((
                    o,
                    Outcome {
                        key,
                        fate: Fate::Refused(r.clone()),
                    },
                    tries,
                ));
            }
        };
        while let Some((mut part, tries)) = stack.pop() {
            if self.stopped() {
                self.add(|c| c.not_sent += part.len() as u64);
                continue;
            }
            match self
                .dest
                .write(&self.sync.object, op, &self.sync.key_property, &part)
                .await
            {
                Ok(outcomes) => {
                    let mut by_key: HashMap<String, Outcome> =
                        outcomes.into_iter().map(|o| (o.key.clone(), o)).collect();
                    for o in part {
                        let outcome = by_key.remove(&o.key).unwrap_or_else(|| Outcome {
                            key: o.key.clone(),
                            fate: Fate::Unknown("no outcome for this record".into()),
                        });
                        out.push((o, outcome, tries + 1));
                    }
                }
                Err(e @ CallError::Rejected { .. })
                    if part.len() > 1 && !self.dest.refuses_every_row(&e) =>
                {
                    let right = part.split_off(part.len() / 2);
                    stack.push((right, tries + 1));
                    stack.push((part, tries + 1));
                }
                Err(e @ CallError::Rejected { .. }) => {
                    let body = match &e {
                        CallError::Rejected { body, .. } => Some(body.to_string()),
                        _ => None,
                    };
                    let r = Refusal {
                        category: e.category(),
                        message: e.message(),
                        response: body,
                        transient: false,
                    };
                    refuse_all(&mut out, part, r, tries + 1);
                }
                Err(e @ CallError::Transient { .. }) => {
                    let attempts = match &e {
                        CallError::Transient { attempts, .. } => *attempts,
                        _ => 1,
                    };
                    let r = Refusal {
                        category: e.category(),
                        message: e.message(),
                        response: None,
                        transient: true,
                    };
                    refuse_all(&mut out, part, r, tries + attempts);
                }
                Err(e) => {
                    self.add(|c| c.not_sent += part.len() as u64);
                    self.set_stop(e);
                }
            }
        }
        out
    }

    /// Creates are not idempotent, so a create is never sent blind twice.
    /// When its reply is lost (or does not mention a record), the record's
    /// fate is unknown. Where the CRM's lookups see writes at once (a unique
    /// key, read by batch read), the records are looked up: found once, the
    /// create happened; found twice, it is ambiguous (dead-lettered with the
    /// ids); reported absent after a transport failure, it is sent again. A
    /// lookup that fails, a 2xx reply that left a record out, or a lookup by
    /// a lagging search settles nothing: the record is logged `unknown` and
    /// settled by a read next run, before anything is written for it.
    async fn create_safely(
        &self,
        rows: Vec<Outgoing>,
        unique: bool,
    ) -> Vec<(Outgoing, Outcome, u32)> {
        let mut done = Vec::new();
        let mut pending = rows;
        let mut attempt = 0u32;
        let consistent = self.dest.search_lag(unique).is_zero();
        let unknown = |o: Outgoing, why: String, tries: u32| {
            let key = o.key.clone();
            (
                o,
                Outcome {
                    key,
                    fate: Fate::Unknown(why),
                },
                tries,
            )
        };
        while !pending.is_empty() && !self.stopped() {
            attempt += 1;
            let sent = self.send_split(Op::Create, pending).await;
            pending = Vec::new();
            // (record, tries, whether the reply was lost in transport)
            let mut lost: Vec<(Outgoing, u32, String, bool)> = Vec::new();
            for (o, outcome, tries) in sent {
                match outcome.fate {
                    Fate::Refused(r) if r.transient => lost.push((o, tries, r.message, true)),
                    Fate::Unknown(why) => lost.push((o, tries, why, false)),
                    fate => done.push((
                        o,
                        Outcome {
                            key: outcome.key,
                            fate,
                        },
                        tries,
                    )),
                }
            }
            if lost.is_empty() {
                break;
            }
            if !consistent || attempt >= self.retry.max_attempts {
                done.extend(lost.into_iter().map(|(o, t, why, _)| unknown(o, why, t)));
                break;
            }
            tokio::time::sleep(self.retry.backoff(attempt)).await;
            let keys: Vec<String> = lost.iter().map(|(o, ..)| o.key.clone()).collect();
            let found = match self
                .dest
                .lookup(
                    &self.sync.object,
                    &self.sync.key_property,
                    unique,
                    &keys,
                    &[],
                )
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    let why = format!("the lookup after a lost create failed: {}", e.message());
                    if matches!(e, CallError::Auth { .. } | CallError::DailyLimit) {
                        self.set_stop(e);
                    }
                    done.extend(
                        lost.into_iter()
                            .map(|(o, t, _, _)| unknown(o, why.clone(), t)),
                    );
                    break;
                }
            };
            for (o, tries, why, transport) in lost {
                let nk = self.dest.normalize_key(&o.key);
                if let Some(reason) = found.unresolved.get(&nk) {
                    done.push(unknown(
                        o,
                        format!("{why}; the lookup after it: {reason}"),
                        tries,
                    ));
                    continue;
                }
                match found.found.get(&nk).map(Vec::as_slice) {
                    Some([e]) => {
                        tracing::info!(key = %o.key, id = %e.id, "a create whose reply was lost did happen; not sending it again");
                        let outcome = Outcome {
                            key: o.key.clone(),
                            fate: Fate::Written(Written {
                                id: e.id.clone(),
                                created: true,
                            }),
                        };
                        done.push((o, outcome, tries));
                    }
                    Some(many) if many.len() > 1 => {
                        let ids: Vec<&str> = many.iter().map(|m| m.id.as_str()).collect();
                        let outcome = Outcome {
                            key: o.key.clone(),
                            fate: Fate::Refused(Refusal {
                                category: "AMBIGUOUS_MATCH".into(),
                                message: format!(
                                    "after a lost create, {} CRM records have {} = {} (ids {}): merge them in the CRM",
                                    many.len(),
                                    self.sync.key_property,
                                    o.key,
                                    ids.join(", ")
                                ),
                                response: None,
                                transient: false,
                            }),
                        };
                        done.push((o, outcome, tries));
                    }
                    // Absent after a transport failure: the create never
                    // landed, so it is sent again.
                    _ if transport => pending.push(o),
                    // A 2xx reply left it out: never re-sent in this run.
                    _ => done.push(unknown(o, why, tries)),
                }
            }
        }
        done
    }

    /// Archive removed records this sync created (mirror); release the rest.
    async fn removals(&self, removed: Vec<Row>) -> Result<()> {
        let (archive, release): (Vec<Row>, Vec<Row>) = removed
            .into_iter()
            .partition(|r| self.sync.mode == Mode::Mirror && r.created && r.crm_id.is_some());
        if self.opts.dry_run {
            self.add(|c| {
                c.archived += archive.len() as u64;
                c.released += release.len() as u64;
            });
            return Ok(());
        }
        let logs: Vec<LogRow> = release
            .iter()
            .map(|r| {
                let mut l = LogRow::ok(
                    r.key.as_deref().unwrap_or_default(),
                    "forget",
                    r.crm_id.clone(),
                    r.created,
                );
                l.attempts = 0;
                l
            })
            .collect();
        self.add(|c| c.released += logs.len() as u64);
        self.log.append(&logs).await?;
        let batch = self
            .sync
            .batch_size
            .min(self.dest.capabilities().max_batch)
            .max(1);
        for chunk in archive.chunks(batch) {
            if self.stopped() {
                self.add(|c| c.not_sent += chunk.len() as u64);
                continue;
            }
            let outs: Vec<Outgoing> = chunk
                .iter()
                .map(|r| {
                    Outgoing::new(
                        r.key.clone().unwrap_or_default(),
                        r.crm_id.clone(),
                        BTreeMap::new(),
                    )
                })
                .collect();
            let mut logs = Vec::new();
            for (o, outcome, tries) in self.send_split(Op::Archive, outs).await {
                let mut l = match outcome.fate {
                    Fate::Written(_) => {
                        self.add(|c| c.archived += 1);
                        LogRow::ok(&o.key, "archive", o.id.clone(), true)
                    }
                    Fate::Refused(r) => {
                        self.refused_row(&o, Op::Archive, r, true, None, None, tries)
                    }
                    Fate::Unknown(why) => self.refused_row(
                        &o,
                        Op::Archive,
                        Refusal::no_result(why),
                        true,
                        None,
                        None,
                        tries,
                    ),
                };
                l.attempts = tries as i64;
                logs.push(l);
            }
            self.log.append(&logs).await?;
        }
        Ok(())
    }

    /// Fold the log into a new snapshot so the next run reads one file.
    async fn compact(&self, ctx: &SessionContext) -> Result<()> {
        self.log.check()?;
        let micros = Utc::now().timestamp_micros();
        diff::register_snapshot(ctx, self.lake, &self.sync.name).await?;
        let mut batches = ctx
            .sql(&format!(
                "select cast('snapshot' as varchar) as run_id, cast('{}' as varchar) as sync, _key as key, \
                 cast('snapshot' as varchar) as operation, cast('ok' as varchar) as status, _crm_id as crm_id, \
                 _created as created, _hash as hash, _payload as payload, cast(null as varchar) as error_category, \
                 cast(null as varchar) as error_message, cast(null as varchar) as response, cast(0 as bigint) as attempts, \
                 arrow_cast({micros}, 'Timestamp(Microsecond, Some(\"UTC\"))') as at from {}",
                self.sync.name.replace('\'', "''"),
                diff::SNAPSHOT
            ))
            .await?
            .execute_stream()
            .await?;
        // Encoded as the rows arrive: the snapshot is held once, as
        // compressed Parquet, not also as Arrow batches.
        let schema = state::log_schema();
        let mut file = crate::lake::log::Encoder::new(schema.clone())?;
        while let Some(b) = futures::StreamExt::next(&mut batches).await {
            let b = b?;
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            file.write(&arrow::record_batch::RecordBatch::try_new(
                schema.clone(),
                cols,
            )?)?;
        }
        let bytes = file.finish()?;
        let path = state::snapshot_path(&self.sync.name, self.log.generation());
        crate::lake::log::put_once(self.lake.store().as_ref(), &path, bytes).await?;
        state::prune_snapshots(self.lake, &self.sync.name).await
    }
}
