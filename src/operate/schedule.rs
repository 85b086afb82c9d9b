//! Schedules: `[schedules.<name>]` in `ferry.toml`, and the scheduler that
//! `ferry serve` runs.
//!
//! A schedule fires on a cron expression in a time zone, on an interval, or
//! after another schedule succeeds (`after`), and runs a [`Job`]. What the
//! scheduler promises:
//!
//! - **One run per fire, across processes.** A due schedule is run only
//!   under its lease (`_ferry/schedules/<name>/lease`); its state is read
//!   again once the lease is held, so a second `ferry serve` that saw the
//!   same fire finds it already covered.
//! - **No overlap.** A schedule still running when its next time comes is
//!   not started again; that fire is covered by the next run.
//! - **Missed fires run once.** After downtime, every fire missed is covered
//!   by one run (its `due_at` is the latest fire time passed), not replayed.
//! - **Jitter.** Each schedule fires a fixed offset (from its name, below
//!   `jitter_seconds`) after its time, so many schedules do not call one
//!   vendor in the same second, and the offset shown is the one used.
//! - **State after the run.** The schedule's state (`state.json`) and its
//!   row in `ferry.schedule_runs` are written after the job ended; a process
//!   killed mid-run leaves the fire uncovered, so it runs again, and each
//!   stage resumes from its own committed state.
//!
//! Time comes from a [`Clock`], so tests move it by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout::META;
use crate::lake::lease::Lease;
use crate::lake::tables::{self, ScheduleRunRow};
use crate::project::Project;
use crate::run::{Job, Outcome, Selection, Stop};

/// `[schedules.<name>]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// A cron expression (5 fields, or 6 with seconds first).
    pub cron: Option<String>,
    /// An IANA time zone for `cron` (default UTC).
    pub timezone: Option<String>,
    /// An interval instead of cron: "30s", "15m", "2h", "1d".
    pub every: Option<String>,
    /// Run when this schedule succeeds, instead of on a clock.
    pub after: Option<String>,
    /// What to run: build, extract, sync, test or reconcile.
    pub run: String,
    #[serde(default)]
    pub select: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub vars: Vec<String>,
    /// For `run = "extract"`: `source` or `source.stream` (all when empty);
    /// for `run = "reconcile"`: webhook sources (all with reconcile when empty).
    #[serde(default)]
    pub sources: Vec<String>,
    /// For `run = "sync"`: sync names (all when empty).
    #[serde(default)]
    pub syncs: Vec<String>,
    #[serde(default)]
    pub full_refresh: bool,
    #[serde(default)]
    pub skip_extract: bool,
    #[serde(default)]
    pub skip_sync: bool,
    /// The fire offset is below this (default 30; 0 turns jitter off).
    pub jitter_seconds: Option<u64>,
    /// Warn when the last success is older than this.
    pub sla_minutes: Option<u64>,
    /// Critical when nothing moved for this long (default 15).
    pub stalled_minutes: Option<u64>,
    /// Who acts on this pipeline's alerts.
    pub owner: Option<String>,
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum When {
    Cron {
        expr: String,
        cron: Box<croner::Cron>,
        tz: Tz,
    },
    Every(Duration),
    After(String),
}

impl When {
    pub fn describe(&self) -> String {
        match self {
            When::Cron { expr, tz, .. } => format!("cron \"{expr}\" {tz}"),
            When::Every(d) => format!("every {}", human(*d)),
            When::After(up) => format!("after {up}"),
        }
    }
}

/// A resolved schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub when: When,
    pub job: Job,
    /// This schedule's fixed offset after each fire time.
    pub jitter: Duration,
    pub sla_minutes: Option<u64>,
    pub stalled_minutes: u64,
    pub owner: Option<String>,
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// "30s", "15m", "2h", "1d".
pub fn parse_interval(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("every = {s:?}: write a number and a unit, e.g. \"15m\""))?;
    let per = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        u => {
            return Err(format!(
                "every = {s:?}: unknown unit {u:?}; use s, m, h or d"
            ));
        }
    };
    let secs = n.saturating_mul(per);
    if secs == 0 {
        return Err(format!("every = {s:?} must be at least 1s"));
    }
    if secs > 366 * 86_400 {
        return Err(format!(
            "every = {s:?} is over a year; use cron for rare jobs"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// The fixed offset of `name` below `max` seconds.
fn jitter_of(name: &str, max: u64) -> Duration {
    if max == 0 {
        return Duration::ZERO;
    }
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_bytes());
    let n = u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]));
    Duration::from_millis(n % (max * 1000))
}

impl Schedule {
    /// Check and resolve `[schedules.<name>]`. `extract` and `syncs` are the
    /// project's names, for checking what the schedule runs.
    pub fn resolve(
        name: &str,
        s: &ScheduleSection,
        extract: &BTreeSet<String>,
        syncs: &BTreeSet<String>,
        schedules: &BTreeSet<String>,
        reconcilable: &BTreeSet<String>,
    ) -> std::result::Result<Schedule, String> {
        let when = match (&s.cron, &s.every, &s.after) {
            (Some(expr), None, None) => {
                let cron = croner::Cron::from_str(expr.trim()).map_err(|e| {
                    format!("cron = {expr:?} is not a cron expression: {e}. Example: \"0 6 * * *\" (06:00 every day)")
                })?;
                let tz = match &s.timezone {
                    None => Tz::UTC,
                    Some(t) => Tz::from_str(t.trim()).map_err(|_| {
                        format!("timezone = {t:?} is not an IANA time zone (e.g. \"America/New_York\", \"Europe/Paris\", \"UTC\")")
                    })?,
                };
                When::Cron {
                    expr: expr.trim().to_string(),
                    cron: Box::new(cron),
                    tz,
                }
            }
            (None, Some(every), None) => When::Every(parse_interval(every)?),
            (None, None, Some(up)) => {
                if up == name {
                    return Err("after names the schedule itself".into());
                }
                if !schedules.contains(up) {
                    return Err(format!(
                        "after = {up:?}: no [schedules.{up}] (defined: {:?})",
                        schedules.iter().collect::<Vec<_>>()
                    ));
                }
                When::After(up.clone())
            }
            _ => {
                return Err("give exactly one of cron (with timezone), every, or after".into());
            }
        };
        if s.timezone.is_some() && s.cron.is_none() {
            return Err("timezone applies to cron only".into());
        }
        let selection = Selection {
            select: s.select.clone(),
            exclude: s.exclude.clone(),
            vars: s.vars.clone(),
            state: None,
        };
        let models_only = |what: &str| -> std::result::Result<(), String> {
            if !s.sources.is_empty() || !s.syncs.is_empty() {
                return Err(format!(
                    "run = \"{what}\" takes select/exclude/vars; sources and syncs are for run = \"extract\" and \"sync\""
                ));
            }
            Ok(())
        };
        let no_models = |what: &str| -> std::result::Result<(), String> {
            if !s.select.is_empty() || !s.exclude.is_empty() || !s.vars.is_empty() {
                return Err(format!(
                    "run = \"{what}\" does not take select/exclude/vars"
                ));
            }
            Ok(())
        };
        let job = match s.run.as_str() {
            "build" => {
                models_only("build")?;
                Job::Build {
                    selection,
                    full_refresh: s.full_refresh,
                    skip_extract: s.skip_extract,
                    skip_sync: s.skip_sync,
                }
            }
            "test" => {
                models_only("test")?;
                Job::Test { selection }
            }
            "extract" => {
                no_models("extract")?;
                for src in &s.sources {
                    let source = src.split('.').next().unwrap_or(src);
                    if !extract.contains(source) {
                        return Err(format!(
                            "sources: {src:?} is not an extraction source (defined: {:?})",
                            extract.iter().collect::<Vec<_>>()
                        ));
                    }
                }
                Job::Extract {
                    streams: s.sources.clone(),
                }
            }
            "sync" => {
                no_models("sync")?;
                for n in &s.syncs {
                    if !syncs.contains(n) {
                        return Err(format!(
                            "syncs: {n:?} is not a [syncs.*] (defined: {:?})",
                            syncs.iter().collect::<Vec<_>>()
                        ));
                    }
                }
                Job::Sync {
                    names: s.syncs.clone(),
                }
            }
            "reconcile" => {
                no_models("reconcile")?;
                if reconcilable.is_empty() {
                    return Err("run = \"reconcile\": no webhook source has reconcile = { with = \"<source>.<stream>\" }".into());
                }
                for src in &s.sources {
                    if !reconcilable.contains(src) {
                        return Err(format!(
                            "sources: {src:?} is not a webhook source with reconcile (those with: {:?})",
                            reconcilable.iter().collect::<Vec<_>>()
                        ));
                    }
                }
                Job::Reconcile {
                    sources: s.sources.clone(),
                }
            }
            other => {
                return Err(format!(
                    "run = {other:?}: use \"build\", \"extract\", \"sync\", \"test\" or \"reconcile\""
                ));
            }
        };
        if !matches!(job, Job::Build { .. }) && (s.full_refresh || s.skip_extract || s.skip_sync) {
            return Err("full_refresh, skip_extract and skip_sync apply to run = \"build\"".into());
        }
        let jitter = s.jitter_seconds.unwrap_or(30);
        if jitter > 3_600 {
            return Err(format!("jitter_seconds = {jitter} is over an hour"));
        }
        if s.stalled_minutes.is_some_and(|m| m > 60 * 24 * 366)
            || s.sla_minutes.is_some_and(|m| m > 60 * 24 * 366)
        {
            return Err("sla_minutes and stalled_minutes must be under a year".into());
        }
        Ok(Schedule {
            name: name.to_string(),
            jitter: jitter_of(name, jitter),
            when,
            job,
            sla_minutes: s.sla_minutes,
            stalled_minutes: s.stalled_minutes.unwrap_or(15),
            owner: s.owner.clone(),
        })
    }

    /// Whether "nothing moved" means something for this schedule: it moves
    /// data (not tests; not reconciliation, which moves rows only when
    /// webhooks failed), and `stalled_minutes` is not 0.
    pub fn watches_throughput(&self) -> bool {
        self.stalled_minutes > 0 && !matches!(self.job, Job::Test { .. } | Job::Reconcile { .. })
    }

    /// The next fire time (jitter included) after the one `state` covers.
    /// `None` for `after` schedules, which fire on their upstream.
    pub fn next_fire(&self, state: &State) -> Option<DateTime<Utc>> {
        let jitter = chrono::Duration::from_std(self.jitter).unwrap_or_default();
        match &self.when {
            When::Cron { cron, tz, .. } => {
                let base = state.due_at.unwrap_or(state.since);
                let local = tz.from_utc_datetime(&base.naive_utc());
                let next = cron.find_next_occurrence(&local, false).ok()?;
                Some(next.with_timezone(&Utc) + jitter)
            }
            When::Every(d) => {
                let d = chrono::Duration::from_std(*d).ok()?;
                Some(match state.due_at {
                    Some(last) => last + d,
                    None => state.since + jitter,
                })
            }
            When::After(_) => None,
        }
    }

    /// The fire time a run starting at `now` covers: the latest passed
    /// (so every missed fire is covered by this one run).
    fn covered(&self, state: &State, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.next_fire(state)?;
        if now < first {
            return None;
        }
        let jitter = chrono::Duration::from_std(self.jitter).unwrap_or_default();
        match &self.when {
            When::Cron { cron, tz, .. } => {
                let local = tz.from_utc_datetime(&(now - jitter).naive_utc());
                let prev = cron.find_previous_occurrence(&local, true).ok()?;
                // Stored without the jitter: the next fire adds it again.
                Some(prev.with_timezone(&Utc).max(first - jitter))
            }
            When::Every(d) => {
                let d = chrono::Duration::from_std(*d).ok()?;
                let k = ((now - first).num_milliseconds() / d.num_milliseconds().max(1)) as i32;
                Some(first + d * k)
            }
            When::After(_) => None,
        }
    }
}

/// A schedule's state in the lake (`_ferry/schedules/<name>/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// When the scheduler first saw the schedule: the anchor of its first fire.
    pub since: DateTime<Utc>,
    /// The fire time the last run covered.
    pub due_at: Option<DateTime<Utc>>,
    pub last_run_id: Option<String>,
    /// `success`, `failed` or `stopped`.
    pub last_status: Option<String>,
    pub last_started: Option<DateTime<Utc>>,
    pub last_finished: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The last successful run, and when.
    pub last_success_run_id: Option<String>,
    pub last_success_at: Option<DateTime<Utc>>,
    /// When a run last moved a row.
    pub last_moved_at: Option<DateTime<Utc>>,
    /// Runs since then that moved nothing.
    #[serde(default)]
    pub runs_without_rows: u64,
    /// For `after` schedules: the upstream success this schedule last ran on.
    pub after_run: Option<String>,
}

impl State {
    fn new(now: DateTime<Utc>) -> State {
        State {
            since: now,
            due_at: None,
            last_run_id: None,
            last_status: None,
            last_started: None,
            last_finished: None,
            last_error: None,
            last_success_run_id: None,
            last_success_at: None,
            last_moved_at: None,
            runs_without_rows: 0,
            after_run: None,
        }
    }
}

fn state_path(name: &str) -> Path {
    Path::from_iter([META, "schedules", name, "state.json"])
}

fn lease_path(name: &str) -> Path {
    Path::from_iter([META, "schedules", name, "lease"])
}

/// The stored state of `name`, if the scheduler has seen it.
pub async fn load_state(lake: &Lake, name: &str) -> Result<Option<State>> {
    match lake.store().get(&state_path(name)).await {
        Ok(g) => {
            let bytes = g.bytes().await?;
            serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Table(format!(
                    "{}: not a schedule state ({e}); delete it to start the schedule afresh",
                    state_path(name)
                ))
            })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn save_state(lake: &Lake, name: &str, state: &State) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::Internal(e.to_string()))?;
    lake.store()
        .put(&state_path(name), PutPayload::from(bytes))
        .await?;
    Ok(())
}

/// The first time a schedule is seen, its anchor is written (create-only,
/// so two processes agree on it).
async fn state_or_anchor(lake: &Lake, name: &str, now: DateTime<Utc>) -> Result<State> {
    if let Some(s) = load_state(lake, name).await? {
        return Ok(s);
    }
    let fresh = State::new(now);
    let bytes = serde_json::to_vec_pretty(&fresh).map_err(|e| Error::Internal(e.to_string()))?;
    match crate::lake::log::put_once(lake.store().as_ref(), &state_path(name), bytes).await {
        Ok(()) => Ok(fresh),
        Err(_) => Ok(load_state(lake, name).await?.unwrap_or(fresh)),
    }
}

/// Whether `schedule` is due at `now`, and the fire it would cover.
async fn due(
    lake: &Lake,
    schedule: &Schedule,
    state: &State,
    now: DateTime<Utc>,
) -> Result<Option<Due>> {
    match &schedule.when {
        When::After(up) => {
            let Some(upstream) = load_state(lake, up).await? else {
                return Ok(None);
            };
            match &upstream.last_success_run_id {
                Some(run) if state.after_run.as_ref() != Some(run) => Ok(Some(Due {
                    at: upstream.last_success_at.unwrap_or(now),
                    after_run: Some(run.clone()),
                })),
                _ => Ok(None),
            }
        }
        _ => Ok(schedule.covered(state, now).map(|at| Due {
            at,
            after_run: None,
        })),
    }
}

#[derive(Debug, Clone)]
struct Due {
    at: DateTime<Utc>,
    after_run: Option<String>,
}

/// Where time comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock moved by hand (tests).
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock(Mutex::new(at))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        if let Ok(mut t) = self.0.lock() {
            *t = at;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.lock().map(|t| *t).unwrap_or_else(|_| Utc::now())
    }
}

/// What runs a schedule's job: the route runner, or a stand-in in tests.
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    async fn run(&self, schedule: &Schedule, stop: Stop) -> Result<Outcome>;
}

/// The route runner ([`crate::run::run_job`]).
pub struct RouteRunner {
    pub project: Arc<Project>,
    pub lake: Lake,
}

#[async_trait::async_trait]
impl Runner for RouteRunner {
    async fn run(&self, schedule: &Schedule, stop: Stop) -> Result<Outcome> {
        crate::run::run_job(
            &self.project,
            &self.lake,
            &schedule.job,
            Some(&schedule.name),
            &stop,
        )
        .await
    }
}

/// A finished scheduled run, as the alerts see it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub schedule: String,
    pub outcome: Outcome,
    pub at: DateTime<Utc>,
}

/// The scheduler of one `ferry serve`.
pub struct Scheduler {
    schedules: BTreeMap<String, Schedule>,
    lake: Lake,
    runner: Arc<dyn Runner>,
    clock: Arc<dyn Clock>,
    /// This process's name in leases and `ferry.schedule_runs`.
    holder: String,
    running: Arc<Mutex<BTreeSet<String>>>,
    /// Schedules whose last record could not be written: not started
    /// again before this time (no tight loop on a failing lake).
    backoff: Arc<Mutex<BTreeMap<String, std::time::Instant>>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    finished: tokio::sync::broadcast::Sender<Finished>,
    /// Held by a tick while it starts jobs: shutdown waits for it, so a job
    /// whose lease was just taken is in `tasks` (and stopped, releasing
    /// the lease) before shutdown waits for the tasks.
    ticking: tokio::sync::Mutex<()>,
}

/// Takes a schedule out of the running set however its task ends (a
/// panicking job included), so it is not parked for good.
struct Running {
    name: String,
    set: Arc<Mutex<BTreeSet<String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut r) = self.set.lock() {
            r.remove(&self.name);
        }
    }
}

impl Scheduler {
    pub fn new(
        schedules: BTreeMap<String, Schedule>,
        lake: Lake,
        runner: Arc<dyn Runner>,
        clock: Arc<dyn Clock>,
    ) -> Scheduler {
        let (stop_tx, _) = tokio::sync::watch::channel(false);
        let (finished, _) = tokio::sync::broadcast::channel(256);
        Scheduler {
            schedules,
            lake,
            runner,
            clock,
            holder: format!(
                "serve-{}-{}-{}",
                crate::lake::lease::host(),
                std::process::id(),
                &uuid::Uuid::now_v7().simple().to_string()[24..]
            ),
            running: Arc::new(Mutex::new(BTreeSet::new())),
            backoff: Arc::new(Mutex::new(BTreeMap::new())),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            stop_tx,
            finished,
            ticking: tokio::sync::Mutex::new(()),
        }
    }

    pub fn schedules(&self) -> &BTreeMap<String, Schedule> {
        &self.schedules
    }

    /// Finished runs, as they end.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Finished> {
        self.finished.subscribe()
    }

    /// Schedules running in this process now.
    pub fn running(&self) -> BTreeSet<String> {
        self.running.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Start every schedule due at the clock's now (each in its own task);
    /// returns the ones started.
    pub async fn tick(&self) -> Vec<String> {
        let _ticking = self.ticking.lock().await;
        let now = self.clock.now();
        let mut started = Vec::new();
        if *self.stop_tx.borrow() {
            return started;
        }
        for schedule in self.schedules.values() {
            if self.running().contains(&schedule.name) {
                continue;
            }
            let backing_off = self
                .backoff
                .lock()
                .map(|b| {
                    b.get(&schedule.name)
                        .is_some_and(|t| *t > std::time::Instant::now())
                })
                .unwrap_or(false);
            if backing_off {
                continue;
            }
            match self.try_start(schedule, now).await {
                Ok(true) => started.push(schedule.name.clone()),
                Ok(false) => {}
                Err(e) => tracing::warn!(schedule = %schedule.name, "not started: {e}"),
            }
        }
        started
    }

    async fn try_start(&self, schedule: &Schedule, now: DateTime<Utc>) -> Result<bool> {
        let state = state_or_anchor(&self.lake, &schedule.name, now).await?;
        if due(&self.lake, schedule, &state, now).await?.is_none() {
            return Ok(false);
        }
        let lease = match Lease::acquire(
            &self.lake,
            lease_path(&schedule.name),
            &self.holder,
            &format!("schedule {}", schedule.name),
            Duration::from_secs(30),
            false,
            1,
        )
        .await
        {
            Ok(l) => l,
            Err(Error::Input(why)) if why.contains("is already running") => {
                tracing::debug!(schedule = %schedule.name, "held elsewhere: {why}");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        // Shutting down, or another process covered this fire while we looked.
        if *self.stop_tx.borrow() {
            lease.release().await?;
            return Ok(false);
        }
        let Some(state) = load_state(&self.lake, &schedule.name).await? else {
            lease.release().await?;
            return Ok(false);
        };
        let Some(fire) = due(&self.lake, schedule, &state, now).await? else {
            lease.release().await?;
            return Ok(false);
        };
        if let Ok(mut r) = self.running.lock() {
            r.insert(schedule.name.clone());
        }
        tracing::info!(schedule = %schedule.name, due_at = %fire.at, "starting {}", schedule.job.describe());
        println!(
            "schedule {}: starting {} (due {})",
            schedule.name,
            schedule.job.describe(),
            fire.at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        // The job stops at a safe point when ferry shuts down, or when this
        // process no longer holds the schedule's lease.
        let (job_tx, job_rx) = tokio::sync::watch::channel(false);
        let mut global = self.stop_tx.subscribe();
        let watch = lease.watch();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = global.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = job_tx.closed() => return,
                }
                let lost = !watch.held();
                if *global.borrow() || lost {
                    if lost {
                        tracing::error!(
                            "lost the schedule's lease: stopping the job at its next safe point"
                        );
                    }
                    let _ = job_tx.send(true);
                    return;
                }
            }
        });
        let ctx = RunCtx {
            schedule: schedule.clone(),
            lake: self.lake.clone(),
            runner: self.runner.clone(),
            clock: self.clock.clone(),
            holder: self.holder.clone(),
            running: Running {
                name: schedule.name.clone(),
                set: self.running.clone(),
            },
            backoff: self.backoff.clone(),
            stop: Stop::new(job_rx),
            finished: self.finished.clone(),
        };
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.spawn(ctx.run(lease, state, fire));
        }
        Ok(true)
    }

    /// Wait for every running job to end.
    pub async fn idle(&self) {
        loop {
            let next = {
                let Ok(mut tasks) = self.tasks.lock() else {
                    return;
                };
                if tasks.is_empty() {
                    return;
                }
                // Take the set out so the lock is not held across the await.
                std::mem::take(&mut *tasks)
            };
            let mut set = next;
            while set.join_next().await.is_some() {}
        }
    }

    /// Run until `shutdown` fires: tick every `poll`.
    pub async fn run(
        self: Arc<Self>,
        poll: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            self.tick().await;
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
    }

    /// Ask running jobs to stop at their next safe point and wait up to
    /// `grace` for them; jobs still running after that are abandoned (their
    /// stages' committed state stands; their fires run again).
    pub async fn shutdown(&self, grace: Duration) {
        // Stored even with no receiver: `send` drops the value when no job
        // has subscribed yet, and a job starting next would then never stop.
        self.stop_tx.send_replace(true);
        let waited = async {
            // A tick starting jobs finishes first (it starts none after this).
            drop(self.ticking.lock().await);
            self.idle().await
        };
        if tokio::time::timeout(grace, waited).await.is_err() {
            tracing::warn!("jobs still running after {grace:?}: abandoning them");
            if let Ok(mut tasks) = self.tasks.lock() {
                tasks.abort_all();
            }
        }
    }
}

struct RunCtx {
    schedule: Schedule,
    lake: Lake,
    runner: Arc<dyn Runner>,
    clock: Arc<dyn Clock>,
    holder: String,
    running: Running,
    backoff: Arc<Mutex<BTreeMap<String, std::time::Instant>>>,
    stop: Stop,
    finished: tokio::sync::broadcast::Sender<Finished>,
}

impl RunCtx {
    async fn run(self, lease: Lease, mut state: State, fire: Due) {
        let name = self.schedule.name.clone();
        let started = self.clock.now();
        let t = std::time::Instant::now();
        let outcome = match self.runner.run(&self.schedule, self.stop.clone()).await {
            Ok(o) => o,
            Err(e) => Outcome {
                run_id: crate::lake::RunId::new().to_string(),
                error: Some(e.to_string()),
                auth_refused: e.to_string().contains(crate::http::REFUSED_CREDENTIALS),
                ..Outcome::default()
            },
        };
        let finished = self.clock.now();
        let status = if outcome.ok {
            "success"
        } else if outcome.stopped {
            "stopped"
        } else {
            "failed"
        };
        let seconds = t.elapsed().as_secs_f64();
        if let Err(e) = self
            .commit(
                &lease, &mut state, &fire, &outcome, status, started, finished, seconds,
            )
            .await
        {
            tracing::error!(schedule = %name, "the run's record was not written: {e}; the fire runs again in a minute");
            if let Ok(mut b) = self.backoff.lock() {
                b.insert(
                    name.clone(),
                    std::time::Instant::now() + Duration::from_secs(60),
                );
            }
        }
        if let Err(e) = lease.release().await {
            tracing::warn!(schedule = %name, "lease not released: {e}");
        }
        crate::metrics::run_finished(&name, status, seconds);
        if outcome.ok {
            crate::metrics::last_success(&name, finished.timestamp_millis() as f64 / 1000.0);
        }
        println!(
            "schedule {name}: {status} in {seconds:.1}s (run {}){}",
            outcome.run_id,
            outcome
                .error
                .as_deref()
                .map(|e| format!(": {}", e.lines().next().unwrap_or("")))
                .unwrap_or_default()
        );
        drop(self.running);
        let _ = self.finished.send(Finished {
            schedule: name,
            outcome,
            at: finished,
        });
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        lease: &Lease,
        state: &mut State,
        fire: &Due,
        outcome: &Outcome,
        status: &str,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        seconds: f64,
    ) -> Result<()> {
        let name = &self.schedule.name;
        let row = ScheduleRunRow {
            schedule: name.clone(),
            run_id: outcome.run_id.clone(),
            due_at: tables::ts(fire.at),
            status: status.to_string(),
            error: outcome.error.clone(),
            rows_moved: outcome.rows_moved as i64,
            rejected: outcome.rejected as i64,
            attempted: outcome.attempted as i64,
            api_calls: outcome.api_calls as i64,
            rate_limited: outcome.rate_limited as i64,
            auth_refused: outcome.auth_refused,
            host: self.holder.clone(),
            lease_generation: lease.generation() as i64,
            seconds,
            started_at: tables::ts(started),
            finished_at: tables::ts(finished),
        };
        // Only the lease holder records the run: a run whose lease was taken
        // over (it ran past its renewal) must not cover the fire.
        lease.check()?;
        tables::append(
            &self.lake,
            &format!("{}/{name}", tables::SCHEDULE_RUNS),
            tables::schedule_runs_schema(),
            &outcome.run_id,
            &[row],
        )
        .await?;
        // A stopped run covers nothing: its fire runs again.
        if !outcome.stopped {
            state.due_at = Some(fire.at);
            if fire.after_run.is_some() {
                state.after_run = fire.after_run.clone();
            }
        }
        state.last_run_id = Some(outcome.run_id.clone());
        state.last_status = Some(status.to_string());
        state.last_started = Some(started);
        state.last_finished = Some(finished);
        state.last_error = outcome.error.clone();
        if outcome.ok {
            state.last_success_run_id = Some(outcome.run_id.clone());
            state.last_success_at = Some(finished);
        }
        if outcome.rows_moved > 0 {
            state.last_moved_at = Some(finished);
            state.runs_without_rows = 0;
        } else if outcome.ok {
            state.runs_without_rows += 1;
        }
        lease.check()?;
        save_state(&self.lake, name, state).await
    }
}

/// One line of `ferry schedules`.
#[derive(Debug, Clone)]
pub struct Listing {
    pub name: String,
    pub when: String,
    pub job: String,
    pub state: Option<State>,
    pub next: Option<DateTime<Utc>>,
}

/// Every schedule with its state and next fire time (as of `now`).
pub async fn list(project: &Project, lake: &Lake, now: DateTime<Utc>) -> Result<Vec<Listing>> {
    let mut out = Vec::new();
    for s in project.schedules.values() {
        let state = load_state(lake, &s.name).await?;
        // Not seen by a scheduler yet: its first fire is counted from now.
        let anchor = state.clone().unwrap_or_else(|| State::new(now));
        let next = s.next_fire(&anchor).map(|t| {
            // A fire already passed runs at the next tick.
            t.max(now)
        });
        out.push(Listing {
            name: s.name.clone(),
            when: s.when.describe(),
            job: s.job.describe(),
            state,
            next,
        });
    }
    Ok(out)
}

/// `after` chains must end at a clock: no cycles.
pub fn check_chains(schedules: &BTreeMap<String, Schedule>) -> std::result::Result<(), String> {
    for start in schedules.values() {
        let mut seen = vec![start.name.clone()];
        let mut at = start;
        while let When::After(up) = &at.when {
            if seen.contains(up) {
                seen.push(up.clone());
                return Err(format!(
                    "schedules run after each other in a circle: {}; one of them needs cron or every",
                    seen.join(" → ")
                ));
            }
            seen.push(up.clone());
            match schedules.get(up) {
                Some(next) => at = next,
                None => break,
            }
        }
    }
    Ok(())
}
