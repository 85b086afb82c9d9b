//! Running unattended: the scheduler (with a clock moved by hand), alerts
//! delivered to the Slack and PagerDuty emulators, the health page and
//! `/metrics`, and `ferry serve` itself (two processes on one lake, SIGTERM
//! mid-run).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ferry::lake::Lake;
use ferry::operate::alerts::Alerter;
use ferry::operate::schedule::{self, ManualClock, Runner, Schedule, Scheduler};
use ferry::project::Project;
use ferry::run::{Outcome, Stop};
use ferry::sim::hubspot::SimConfig;
use ferry::sim::pagerduty::{self, PagerDutyConfig};
use ferry::sim::slack::{self, SlackConfig};

use super::sync::{model, project, query, rows, sim};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A project of schedules only (their jobs run by a stand-in).
fn schedules_project(dir: &Path, schedules: &str) -> Project {
    std::fs::write(
        dir.join("ferry.toml"),
        format!("[project]\nname = \"sched\"\n\n{schedules}"),
    )
    .unwrap();
    Project::load(dir).unwrap()
}

/// A runner that records each run and, when gated, waits to be let go.
#[derive(Default)]
struct Recorder {
    runs: Mutex<Vec<(String, DateTime<Utc>)>>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    moved: AtomicUsize,
    clock: Option<Arc<ManualClock>>,
}

#[async_trait::async_trait]
impl Runner for Recorder {
    async fn run(&self, schedule: &Schedule, _stop: Stop) -> ferry::Result<Outcome> {
        let now = self
            .clock
            .as_ref()
            .map(|c| ferry::operate::schedule::Clock::now(c.as_ref()))
            .unwrap_or_else(Utc::now);
        self.runs.lock().unwrap().push((schedule.name.clone(), now));
        if let Some(g) = &self.gate {
            g.acquire().await.unwrap().forget();
        }
        Ok(Outcome {
            run_id: ferry::lake::RunId::new().to_string(),
            ok: true,
            rows_moved: self.moved.load(Ordering::SeqCst) as u64,
            ..Outcome::default()
        })
    }
}

impl Recorder {
    fn names(&self) -> Vec<String> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.0.clone())
            .collect()
    }
}

fn scheduler(project: &Project, runner: Arc<Recorder>, clock: Arc<ManualClock>) -> Scheduler {
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    Scheduler::new(project.schedules.clone(), lake, runner, clock)
}

async fn tick_and_wait(s: &Scheduler) -> Vec<String> {
    let started = s.tick().await;
    s.idle().await;
    started
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_fires_at_its_local_times_and_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let project = schedules_project(
        tmp.path(),
        r#"[schedules.nightly]
cron = "0 6 * * *"
timezone = "America/New_York"
run = "build"
jitter_seconds = 0

[schedules.after_nightly]
after = "nightly"
run = "test"
"#,
    );
    // 2026-03-07 05:00 in New York (EST, UTC-5).
    let clock = Arc::new(ManualClock::new(at("2026-03-07T10:00:00Z")));
    let runner = Arc::new(Recorder::default());
    let s = scheduler(&project, runner.clone(), clock.clone());
    assert!(tick_and_wait(&s).await.is_empty(), "05:00 is not 06:00");
    clock.set(at("2026-03-07T10:59:59Z"));
    assert!(tick_and_wait(&s).await.is_empty());
    clock.set(at("2026-03-07T11:00:00Z"));
    assert_eq!(tick_and_wait(&s).await, ["nightly"], "06:00 EST");
    assert!(
        tick_and_wait(&s)
            .await
            .contains(&"after_nightly".to_string()),
        "the chained schedule runs after its upstream succeeded"
    );
    assert!(tick_and_wait(&s).await.is_empty(), "each fires once");

    // The listing shows the next fire: the next day, 06:00 local. On 8
    // March New York moves to EDT (UTC-4), so the 9 March fire is 10:00 UTC.
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let list = schedule::list(&project, &lake, clock.now_utc())
        .await
        .unwrap();
    let nightly = list.iter().find(|l| l.name == "nightly").unwrap();
    assert_eq!(
        nightly.next,
        Some(at("2026-03-08T10:00:00Z")),
        "6:00 EDT on the day DST starts"
    );
    assert_eq!(
        nightly.state.as_ref().unwrap().last_status.as_deref(),
        Some("success")
    );
    let chained = list.iter().find(|l| l.name == "after_nightly").unwrap();
    assert_eq!(chained.next, None, "an after schedule has no clock");
    clock.set(at("2026-03-08T10:00:00Z"));
    assert_eq!(tick_and_wait(&s).await, ["nightly"]);
    clock.set(at("2026-03-09T09:59:00Z"));
    tick_and_wait(&s).await; // the chained one
    assert!(tick_and_wait(&s).await.is_empty());
    clock.set(at("2026-03-09T10:00:00Z"));
    assert_eq!(tick_and_wait(&s).await, ["nightly"]);
    assert_eq!(runner.names().iter().filter(|n| *n == "nightly").count(), 3);
}

trait NowUtc {
    fn now_utc(&self) -> DateTime<Utc>;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        ferry::operate::schedule::Clock::now(self)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_window_after_downtime_runs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let project = schedules_project(
        tmp.path(),
        "[schedules.hourly]\nevery = \"1h\"\nrun = \"test\"\njitter_seconds = 0\n",
    );
    let clock = Arc::new(ManualClock::new(at("2026-05-01T00:00:00Z")));
    let runner = Arc::new(Recorder::default());
    {
        let s = scheduler(&project, runner.clone(), clock.clone());
        assert_eq!(
            tick_and_wait(&s).await,
            ["hourly"],
            "an interval schedule first fires when first seen"
        );
        clock.set(at("2026-05-01T00:59:00Z"));
        assert!(tick_and_wait(&s).await.is_empty());
    }
    // ferry serve is down for five and a half hours, then starts again.
    clock.set(at("2026-05-01T06:30:00Z"));
    let s = scheduler(&project, runner.clone(), clock.clone());
    assert_eq!(
        tick_and_wait(&s).await,
        ["hourly"],
        "five missed fires: one run"
    );
    assert!(
        tick_and_wait(&s).await.is_empty(),
        "not replayed one by one"
    );
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let state = schedule::load_state(&lake, "hourly")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state.due_at,
        Some(at("2026-05-01T06:00:00Z")),
        "it covered the latest missed fire"
    );
    clock.set(at("2026-05-01T07:00:00Z"));
    assert_eq!(
        tick_and_wait(&s).await,
        ["hourly"],
        "and the schedule keeps its phase"
    );
    assert_eq!(runner.names().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_going_at_its_next_time_is_not_started_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let project = schedules_project(
        tmp.path(),
        "[schedules.often]\nevery = \"1m\"\nrun = \"test\"\njitter_seconds = 0\n",
    );
    let clock = Arc::new(ManualClock::new(at("2026-05-01T00:00:00Z")));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let runner = Arc::new(Recorder {
        gate: Some(gate.clone()),
        ..Default::default()
    });
    let s = scheduler(&project, runner.clone(), clock.clone());
    assert_eq!(s.tick().await, ["often"]);
    for minute in 1..4 {
        clock.set(at(&format!("2026-05-01T00:0{minute}:00Z")));
        assert!(
            s.tick().await.is_empty(),
            "still running at minute {minute}"
        );
    }
    assert_eq!(s.running().len(), 1);
    gate.add_permits(10);
    s.idle().await;
    assert_eq!(
        tick_and_wait(&s).await,
        ["often"],
        "the fires it overlapped are covered by one run"
    );
    assert!(tick_and_wait(&s).await.is_empty());
    assert_eq!(runner.names().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_on_one_lake_run_each_fire_once() {
    let tmp = tempfile::tempdir().unwrap();
    let project = schedules_project(
        tmp.path(),
        "[schedules.a]\nevery = \"1m\"\nrun = \"test\"\njitter_seconds = 0\n\n\
         [schedules.b]\nevery = \"1m\"\nrun = \"test\"\njitter_seconds = 0\n",
    );
    let clock = Arc::new(ManualClock::new(at("2026-05-01T00:00:00Z")));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let runner = Arc::new(Recorder {
        gate: Some(gate.clone()),
        ..Default::default()
    });
    // Two `ferry serve`s (separate lease holders) over the same lake.
    let one = scheduler(&project, runner.clone(), clock.clone());
    let two = scheduler(&project, runner.clone(), clock.clone());
    for minute in 0..5 {
        clock.set(at(&format!("2026-05-01T00:0{minute}:00Z")));
        let (x, y) = tokio::join!(one.tick(), two.tick());
        gate.add_permits(4);
        one.idle().await;
        two.idle().await;
        let mut started: Vec<String> = x.into_iter().chain(y).collect();
        started.sort();
        assert_eq!(
            started,
            ["a", "b"],
            "minute {minute}: each schedule once between the two"
        );
        // Both look again at the same instant: the fire is covered.
        let (x, y) = tokio::join!(one.tick(), two.tick());
        assert!(x.is_empty() && y.is_empty(), "minute {minute}: {x:?} {y:?}");
    }
    assert_eq!(runner.names().len(), 10);
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let ctx = ferry::engine::session(&lake).await.unwrap();
    let b = ctx
        .sql("select schedule, due_at, count(*) as n from ferry.schedule_runs group by 1, 2 having count(*) > 1")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        b.iter().map(|b| b.num_rows()).sum::<usize>(),
        0,
        "no fire ran twice"
    );
}

#[test]
fn schedule_mistakes_are_located_and_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[schedules.x]\ncron = \"0 6 * *\"\nrun = \"build\"\n",
            "is not a cron expression",
        ),
        (
            "[schedules.x]\ncron = \"0 6 * * *\"\ntimezone = \"Mars/Olympus\"\nrun = \"build\"\n",
            "not an IANA time zone",
        ),
        (
            "[schedules.x]\nevery = \"15 minutes\"\nrun = \"build\"\n",
            "unknown unit",
        ),
        (
            "[schedules.x]\nevery = \"15m\"\ncron = \"* * * * *\"\nrun = \"build\"\n",
            "exactly one of",
        ),
        (
            "[schedules.x]\nevery = \"15m\"\nrun = \"deploy\"\n",
            "use \"build\"",
        ),
        (
            "[schedules.x]\nafter = \"y\"\nrun = \"build\"\n",
            "no [schedules.y]",
        ),
        (
            "[schedules.x]\nafter = \"y\"\nrun = \"test\"\n[schedules.y]\nafter = \"x\"\nrun = \"test\"\n",
            "in a circle",
        ),
        (
            "[schedules.x]\nevery = \"15m\"\nrun = \"sync\"\nsyncs = [\"nope\"]\n",
            "is not a [syncs.*]",
        ),
        ("[alerts.channels.ops]\ntype = \"slack\"\n", "needs url"),
        ("[alerts]\nerror_rate = 5\n", "between 0 and 1"),
    ];
    for (toml, want) in cases {
        std::fs::write(
            tmp.path().join("ferry.toml"),
            format!("[project]\nname = \"t\"\n\n{toml}"),
        )
        .unwrap();
        let e = Project::load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains(want), "{toml}\n→ {e}");
        assert!(e.contains("ferry.toml:"), "the file and line: {e}");
    }
}

/// A sync project with a schedule, alerts to the two emulators, and the
/// scheduler and alerter on a hand-moved clock, as `ferry serve` wires them.
struct Rig {
    dir: std::path::PathBuf,
    scheduler: Scheduler,
    alerter: Alerter,
    clock: Arc<ManualClock>,
    finished: tokio::sync::broadcast::Receiver<schedule::Finished>,
}

impl Rig {
    async fn new(
        dir: &Path,
        hubspot: &str,
        slack: &str,
        pagerduty: &str,
        token: Option<&str>,
    ) -> Rig {
        let dir = project(
            dir,
            hubspot,
            &format!(
                r#"{}
[schedules.scores_sync]
every = "1m"
run = "sync"
syncs = ["scores"]
jitter_seconds = 0
stalled_minutes = 15
owner = "revops@example.com"

[alerts]
owner = "data@example.com"

[alerts.channels.ops]
type = "slack"
url = "{slack}"

[alerts.channels.pager]
type = "pagerduty"
url = "{pagerduty}"
routing_key = "{}"
severities = ["critical", "warning"]
"#,
                super::sync::SCORES,
                pagerduty::DEFAULT_ROUTING_KEY
            ),
        );
        if let Some(t) = token {
            std::fs::write(dir.join("secrets.toml"), format!("HS_TOKEN = \"{t}\"\n")).unwrap();
        }
        let project = Arc::new(Project::load(&dir).unwrap());
        let lake = Lake::open(&project.lake, &project.dir).unwrap();
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let scheduler = Scheduler::new(
            project.schedules.clone(),
            lake.clone(),
            Arc::new(schedule::RouteRunner {
                project: project.clone(),
                lake: lake.clone(),
            }),
            clock.clone(),
        );
        let finished = scheduler.subscribe();
        let alerter = Alerter::open(project.clone(), lake).await.unwrap();
        Rig {
            dir,
            scheduler,
            alerter,
            clock,
            finished,
        }
    }

    /// One scheduler tick a minute later, its runs, and the alerts they raise.
    async fn minute(&mut self) {
        let now = ferry::operate::schedule::Clock::now(self.clock.as_ref());
        self.clock.set(now + chrono::Duration::minutes(1));
        self.scheduler.tick().await;
        self.scheduler.idle().await;
        while let Ok(f) = self.finished.try_recv() {
            let changes = self.alerter.on_run(&f.schedule, &f.outcome).await;
            self.alerter.apply(changes).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_rate_over_5_percent_warns_once_and_resolves_when_it_recovers() {
    let hs = sim(SimConfig::default()).await;
    let sl = slack::start(SlackConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let pd = pagerduty::start(PagerDutyConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(tmp.path(), &hs.base_url(), &sl.url(), &pd.url(), None).await;
    let mut data = rows(100, "a");
    for i in 0..10 {
        data[i * 10].1 = Some("not a number".into());
    }
    model(&rig.dir, "scores", &data);

    rig.minute().await;
    assert_eq!(pd.events().len(), 1, "{:?}", pd.events());
    let trigger = &pd.events()[0];
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["payload"]["severity"], "warning");
    assert_eq!(trigger["payload"]["component"], "sync:scores");
    let summary = trigger["payload"]["summary"].as_str().unwrap();
    assert!(summary.contains("10 of 100 rows rejected"), "{summary}");
    let details = &trigger["payload"]["custom_details"];
    assert_eq!(details["owner"], "revops@example.com");
    assert!(
        details["next_action"]
            .as_str()
            .unwrap()
            .contains("--retry-failed")
    );
    let samples = details["details"]["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "the alert names records: {details}");
    assert!(
        samples[0]["key"].as_str().unwrap().starts_with("person"),
        "{samples:?}"
    );
    assert!(
        samples[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("not a number")
    );
    let msgs = sl.messages();
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0]["text"].as_str().unwrap().starts_with("[WARNING]"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[0]["blocks"].as_array().unwrap().len() >= 3,
        "Block Kit with a text fallback"
    );

    // The same 10 rows are refused again: the incident is still open, nothing new is sent.
    rig.minute().await;
    rig.minute().await;
    assert_eq!(pd.events().len(), 1, "one incident, one alert");
    assert_eq!(sl.messages().len(), 1);

    // Fixed in the model: the next run sends them, and the incident resolves.
    for i in 0..10 {
        data[i * 10].1 = Some("50".into());
    }
    model(&rig.dir, "scores", &data);
    rig.minute().await;
    let events = pd.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["event_action"], "resolve");
    assert_eq!(events[1]["dedup_key"], events[0]["dedup_key"]);
    assert!(pd.open_incidents().is_empty());
    let msgs = sl.messages();
    assert_eq!(msgs.len(), 2);
    assert!(
        msgs[1]["text"].as_str().unwrap().starts_with("[RESOLVED]"),
        "{}",
        msgs[1]
    );

    let sent = query(
        &rig.dir,
        "select channel, action, severity, rule, pipeline, delivered from ferry.alerts order by at, channel",
    )
    .await;
    assert_eq!(
        sent,
        [
            [
                "ops",
                "trigger",
                "warning",
                "error_rate",
                "sync:scores",
                "true"
            ],
            [
                "pager",
                "trigger",
                "warning",
                "error_rate",
                "sync:scores",
                "true"
            ],
            [
                "ops",
                "resolve",
                "warning",
                "error_rate",
                "sync:scores",
                "true"
            ],
            [
                "pager",
                "resolve",
                "warning",
                "error_rate",
                "sync:scores",
                "true"
            ],
        ]
        .map(|r| r.map(str::to_string).to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_raises_a_critical_at_once_and_a_failed_delivery_is_retried() {
    let hs = sim(SimConfig::default()).await;
    let sl = slack::start(SlackConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let pd = pagerduty::start(PagerDutyConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(
        tmp.path(),
        &hs.base_url(),
        &sl.url(),
        &pd.url(),
        Some("hs-tok-9f3a77"),
    )
    .await;
    model(&rig.dir, "scores", &rows(20, "a"));
    // Slack is down for the first three attempts (one delivery's retries).
    sl.set_fail_next(3);
    rig.minute().await;
    let crit: Vec<_> = pd
        .events()
        .into_iter()
        .filter(|e| e["payload"]["severity"] == "critical")
        .collect();
    let rules: Vec<&str> = crit
        .iter()
        .map(|e| e["payload"]["class"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"credentials_refused"), "{rules:?}");
    assert!(rules.contains(&"run_failed"), "{rules:?}");
    let cred = crit
        .iter()
        .find(|e| e["payload"]["class"] == "credentials_refused")
        .unwrap();
    assert!(
        cred["payload"]["custom_details"]["next_action"]
            .as_str()
            .unwrap()
            .contains("renew the credentials"),
        "{cred}"
    );
    assert!(
        !cred.to_string().contains("hs-tok-9f3a77"),
        "the token is never in an alert"
    );
    let undelivered = query(
        &rig.dir,
        "select count(*) from ferry.alerts where channel = 'ops' and not delivered",
    )
    .await;
    assert_ne!(
        undelivered[0][0], "0",
        "the failed Slack delivery is on record"
    );
    // The next evaluation retries the Slack delivery, and sends nothing twice to PagerDuty.
    let before = pd.events().len();
    rig.alerter.apply(vec![]).await.unwrap();
    assert!(
        sl.messages()
            .iter()
            .any(|m| m["text"].as_str().unwrap().contains("refused")),
        "{:?}",
        sl.messages()
    );
    assert_eq!(pd.events().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_moving_for_the_window_raises_a_critical() {
    let tmp = tempfile::tempdir().unwrap();
    let sl = slack::start(SlackConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let pd = pagerduty::start(PagerDutyConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let project = Arc::new(schedules_project(
        tmp.path(),
        &format!(
            "[schedules.feed]\nevery = \"5m\"\nrun = \"build\"\njitter_seconds = 0\nstalled_minutes = 15\n\n\
             [alerts.channels.pager]\ntype = \"pagerduty\"\nurl = \"{}\"\nrouting_key = \"{}\"\npipelines = [\"feed\"]\n\n\
             [alerts.channels.ops]\ntype = \"slack\"\nurl = \"{}\"\nseverities = [\"warning\"]\npipelines = [\"feed\"]\n",
            pd.url(),
            pagerduty::DEFAULT_ROUTING_KEY,
            sl.url()
        ),
    ));
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-05-01T00:00:00Z")));
    let runner = Arc::new(Recorder::default());
    runner.moved.store(500, Ordering::SeqCst);
    let s = Scheduler::new(
        project.schedules.clone(),
        lake.clone(),
        runner.clone(),
        clock.clone(),
    );
    let mut alerter = Alerter::open(project.clone(), lake.clone()).await.unwrap();
    tick_and_wait(&s).await; // 500 rows moved at 00:00
    runner.moved.store(0, Ordering::SeqCst);
    for m in [5, 10] {
        clock.set(at(&format!("2026-05-01T00:{m:02}:00Z")));
        tick_and_wait(&s).await;
        let changes = alerter.on_tick(clock.now_utc()).await.unwrap();
        alerter.apply(changes).await.unwrap();
    }
    assert!(
        pd.events().is_empty(),
        "10 minutes of nothing is inside the window"
    );
    clock.set(at("2026-05-01T00:15:00Z"));
    tick_and_wait(&s).await;
    for _ in 0..3 {
        let changes = alerter.on_tick(clock.now_utc()).await.unwrap();
        alerter.apply(changes).await.unwrap();
    }
    let events = pd.events();
    assert_eq!(
        events.len(),
        1,
        "one critical, however often the rules run: {events:?}"
    );
    assert_eq!(events[0]["payload"]["severity"], "critical");
    assert_eq!(events[0]["payload"]["class"], "stalled");
    assert!(
        sl.messages().is_empty(),
        "the Slack channel takes warnings only"
    );
    // Rows move again: resolved.
    runner.moved.store(10, Ordering::SeqCst);
    clock.set(at("2026-05-01T00:20:00Z"));
    tick_and_wait(&s).await;
    let changes = alerter.on_tick(clock.now_utc()).await.unwrap();
    alerter.apply(changes).await.unwrap();
    assert_eq!(pd.events().len(), 2);
    assert_eq!(pd.events()[1]["event_action"], "resolve");
    assert!(pd.open_incidents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_page_and_metrics_show_the_route() {
    let hs = sim(SimConfig::default()).await;
    let sl = slack::start(SlackConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let pd = pagerduty::start(PagerDutyConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(tmp.path(), &hs.base_url(), &sl.url(), &pd.url(), None).await;
    let mut data = rows(40, "a");
    data[3].1 = Some("<script>alert(1)</script>".into());
    model(&rig.dir, "scores", &data);
    rig.minute().await;

    let project = Project::load(&rig.dir).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let server = ferry::serve::start_with(
        &project,
        lake,
        "127.0.0.1:0".parse().unwrap(),
        ferry::serve::ServeOptions {
            schedules: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let page = reqwest::get(format!("{}/", server.url())).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"data-integration="scores" data-kind="sync" data-status="degraded""#),
        "{html}"
    );
    assert!(html.contains("2.5%"), "the error rate of the latest run");
    assert!(
        html.contains("person3@example.com"),
        "the dead-letter row, by key"
    );
    assert!(
        !html.contains("<script>alert(1)</script>"),
        "vendor and model text is escaped"
    );
    assert!(html.contains("&lt;script&gt;"));
    assert!(html.contains(r#"data-schedule="scores_sync""#));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no network assets"
    );

    let text = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter().map(Ok)).unwrap();
    let value = |name: &str, label: (&str, &str)| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(
        value("ferry_sync_rows_total", ("outcome", "created")) >= 39.0,
        "{text}"
    );
    assert!(value("ferry_sync_rows_total", ("outcome", "rejected")) >= 1.0);
    assert!(value("ferry_api_calls_total", ("vendor", "hubspot")) >= 2.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "ferry_api_rate_limited_total")
    );
    assert!(value("ferry_runs_total", ("schedule", "scores_sync")) >= 1.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("ferry_run_duration_seconds"))
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "ferry_api_budget_remaining"),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "ferry_circuit_open")
    );
    server.shutdown().await;
}

/// `ferry serve` as a process, over a project whose schedule extracts from
/// the REST emulator.
fn serve(dir: &Path, port: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--project-dir"])
        .arg(dir)
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--grace-seconds",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

use crate::free_port;

fn sigterm(child: &std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn rest_project(
    dir: &Path,
    per_second: usize,
    schedule: &str,
) -> ferry::sim::rest::RunningRest {
    let rest = ferry::sim::rest::start(
        ferry::sim::rest::RestConfig {
            records: 3000,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("models").join("customer_count.sql"),
        "{{ config(materialized='table') }}\nselect count(distinct id) as n from {{ source('shop', 'customers') }}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "served"

[sources.shop]
type = "rest"
url = "{}"
requests_per_second = {per_second}

[sources.shop.streams.customers]
path = "/cursor/items"
records = "data"
primary_key = "id"
pagination = {{ type = "cursor", cursor_path = "meta.next_cursor", param = "cursor", limit_param = "limit", limit = 50 }}

{schedule}
"#,
            rest.base_url()
        ),
    )
    .unwrap();
    rest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_one_lake_run_each_job_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    two_serves(tmp.path(), None).await;
}

/// The same with the lake on S3: the lease is a conditional write there,
/// and the server cuts some connections after applying a PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_an_s3_lake_run_each_job_exactly_once() {
    let Some(s3) = crate::s3::S3::start(&["--drop-every", "11"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    two_serves(tmp.path(), Some(&s3.lake_toml("served"))).await;
}

async fn two_serves(dir: &Path, lake: Option<&str>) {
    let _rest = rest_project(
        dir,
        1000,
        "[schedules.pull]\nevery = \"2s\"\nrun = \"extract\"\njitter_seconds = 0\n",
    )
    .await;
    if let Some(lake) = lake {
        crate::s3::move_lake(dir, lake);
    }
    let a = serve(dir, free_port());
    let b = serve(dir, free_port());
    tokio::time::sleep(Duration::from_secs(9)).await;
    sigterm(&a);
    sigterm(&b);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let rows = query(
        dir,
        "select cast(due_at as varchar), count(*), min(host), max(host) from ferry.schedule_runs group by 1 order by 1",
    )
    .await;
    assert!(rows.len() >= 3, "a fire every 2 s for 9 s: {rows:?}");
    for r in &rows {
        assert_eq!(r[1], "1", "fire {} ran {} times", r[0], r[1]);
    }
    let hosts: std::collections::BTreeSet<String> = rows.iter().map(|r| r[2].clone()).collect();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout)
    );
    assert!(!hosts.is_empty(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_leaves_resumable_state_and_no_held_lease() {
    let tmp = tempfile::tempdir().unwrap();
    // 3,000 records at 20 requests a second of 100 records: a 1.5 s extract.
    let _rest = rest_project(
        tmp.path(),
        20,
        "[schedules.nightly]\nevery = \"1d\"\nrun = \"build\"\njitter_seconds = 0\n",
    )
    .await;
    let port = free_port();
    let child = serve(tmp.path(), port);
    // Wait until the build is extracting.
    let lease = tmp.path().join("lake/_ferry/schedules/nightly/lease");
    for _ in 0..200 {
        if lease.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(lease.exists(), "the run took its lease");
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stopped"), "{stdout}");
    let held: serde_json::Value = serde_json::from_slice(&std::fs::read(&lease).unwrap()).unwrap();
    assert_eq!(held["released"], true, "the lease was released: {held}");
    let project = Project::load(tmp.path()).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let state = schedule::load_state(&lake, "nightly")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.last_status.as_deref(), Some("stopped"));
    assert_eq!(
        state.due_at, None,
        "a stopped run covers nothing: the fire runs again"
    );
    let stages = query(
        tmp.path(),
        "select stage, status from ferry.run_stages order by stage",
    )
    .await;
    // The stop lands before the stream started or after it finished: either
    // way nothing after the extract ran.
    assert!(
        stages
            .iter()
            .any(|s| s[0] == "extract" && (s[1] == "ok" || s[1] == "stopped")),
        "{stages:?}"
    );
    assert!(
        stages
            .iter()
            .filter(|s| s[0] != "extract" && s[0] != "check")
            .all(|s| s[1] == "skipped"),
        "{stages:?}"
    );

    // The next serve runs it again, from the extract's committed cursor.
    let child = serve(tmp.path(), port);
    let mut done = false;
    for _ in 0..400 {
        if let Some(s) = schedule::load_state(&lake, "nightly").await.unwrap()
            && s.last_status.as_deref() == Some("success")
        {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(done, "{}", String::from_utf8_lossy(&out.stdout));
    let n = query(tmp.path(), "select n from customer_count").await;
    assert_eq!(n, [["3000"]]);
    let landed = query(
        tmp.path(),
        "select count(*), count(distinct id) from shop.customers",
    )
    .await;
    assert_eq!(landed[0][1], "3000", "{landed:?}");
}

#[test]
fn every_alert_shape_is_accepted_by_the_vendor_contracts() {
    // Long text is cut to what Slack and PagerDuty accept.
    let alert = ferry::operate::alerts::Alert {
        severity: ferry::operate::alerts::Severity::Critical,
        rule: "run_failed".into(),
        pipeline: "p".repeat(400),
        schedule: None,
        summary: "s".repeat(5000),
        details: serde_json::json!({"error": "e".repeat(9000)}),
        owner: None,
        next_action: "n".repeat(4000),
    };
    let s = ferry::operate::alerts::slack_payload("proj", &alert, "trigger");
    for b in s["blocks"].as_array().unwrap() {
        if b["type"] == "header" {
            assert!(b["text"]["text"].as_str().unwrap().chars().count() <= 150);
        }
        if b["type"] == "section" {
            assert!(b["text"]["text"].as_str().unwrap().chars().count() <= 3000);
        }
    }
    let p =
        ferry::operate::alerts::pagerduty_payload("proj", &alert, "trigger", &"k".repeat(300), "r");
    assert!(p["payload"]["summary"].as_str().unwrap().chars().count() <= 1024);
    assert!(p["dedup_key"].as_str().unwrap().chars().count() <= 255);
    let _ = BTreeMap::<String, String>::new();
    let _ = Utc.timestamp_opt(0, 0);
}

fn hubspot_event(secret: &str, url: &str, body: &str) -> axum::http::HeaderMap {
    use base64::Engine;
    let ts = Utc::now().timestamp_millis().to_string();
    let sig = ferry::extract::webhook::sign(secret, format!("POST{url}{body}{ts}").as_bytes());
    let mut h = axum::http::HeaderMap::new();
    h.insert(
        "x-hubspot-signature-v3",
        base64::engine::general_purpose::STANDARD
            .encode(sig)
            .parse()
            .unwrap(),
    );
    h.insert("x-hubspot-request-timestamp", ts.parse().unwrap());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_reconciliation_lands_what_the_webhooks_missed() {
    use ferry::sim::hubspot;
    let s = hubspot::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Created ten minutes ago.
    let created = Utc::now() - chrono::Duration::minutes(10);
    let ids: Vec<u64> = s
        .with_crm(|crm| {
            (0..50)
                .map(|i| {
                    let id = crm
                        .create(
                            "contacts",
                            [("email".to_string(), format!("p{i}@x.io"))].into(),
                        )
                        .id;
                    crm.backdate("contacts", id, created, created);
                    id
                })
                .collect()
        })
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let hook_url = "https://ferry.example.com/webhooks/hs_events";
    std::fs::write(
        tmp.path().join("secrets.toml"),
        "HUBSPOT_TOKEN = \"ferry-sim-token\"\nHS_APP_SECRET = \"app-secret\"\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("ferry.toml"),
        format!(
            r#"[project]
name = "recon"

[sources.hubspot]
type = "hubspot"
url = "{}"
token = "${{HUBSPOT_TOKEN}}"
requests_per_10s = 10000
search_per_second = 100
search_lag_margin_seconds = 1

[sources.hubspot.streams.contacts]
properties = ["email"]

[sources.hs_events]
type = "webhook"
preset = "hubspot"
secret = "${{HS_APP_SECRET}}"
public_url = "{hook_url}"
reconcile = {{ with = "hubspot.contacts", settle_minutes = 0 }}

[schedules.catch_up]
every = "20m"
run = "reconcile"
"#,
            s.base_url()
        ),
    )
    .unwrap();
    let project = Project::load(tmp.path()).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    // HubSpot delivers 35 of the 50 creations; 15 are lost (an outage).
    let receiver = ferry::extract::webhook::Receiver::open(
        project.webhooks["hs_events"].clone(),
        lake.clone(),
    )
    .await
    .unwrap();
    let now_ms = created.timestamp_millis();
    let events: Vec<serde_json::Value> = ids[..35]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            serde_json::json!({"eventId": 1000 + i, "subscriptionId": 7, "portalId": 42, "occurredAt": now_ms,
                "subscriptionType": "contact.creation", "objectId": id})
        })
        .collect();
    let body = serde_json::Value::Array(events).to_string();
    receiver
        .accept(
            "POST",
            hook_url,
            &hubspot_event("app-secret", hook_url, &body),
            &axum::body::Bytes::from(body.clone()),
        )
        .await
        .unwrap();
    receiver.land().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let job = project.schedules["catch_up"].job.clone();
    let o = ferry::run::run_job(&project, &lake, &job, Some("catch_up"), &Stop::never())
        .await
        .unwrap();
    assert!(o.ok, "{o:?}");
    let detail = &o.stages[0].detail;
    assert!(detail.contains("50 objects changed"), "{detail}");
    assert!(detail.contains("delivered 35, missed 15"), "{detail}");
    assert_eq!(o.rows_moved, 15);
    let got = query(
        tmp.path(),
        "select count(*), count(distinct contact_id) from hs_events.events where event_type = 'reconciled'",
    )
    .await;
    assert_eq!(got, [["15", "15"]]);
    let payload = query(
        tmp.path(),
        &format!(
            "select payload from hs_events.events where contact_id = '{}'",
            ids[40]
        ),
    )
    .await;
    assert!(
        payload[0][0].contains("p40@x.io"),
        "the API's record is the event's payload: {payload:?}"
    );
    let recorded = query(
        tmp.path(),
        "select stage, rows, detail from ferry.run_stages where command = 'reconcile'",
    )
    .await;
    assert_eq!(
        recorded[0][1], "15",
        "the run's record counts what it found"
    );

    // The same window again: nothing missed twice.
    let o = ferry::run::run_job(&project, &lake, &job, None, &Stop::never())
        .await
        .unwrap();
    assert_eq!(o.rows_moved, 0, "{:?}", o.stages[0].detail);

    // Five contacts edited later, their webhooks lost too.
    s.with_crm(|crm| {
        for id in &ids[..5] {
            crm.touch("contacts", *id, Utc::now());
        }
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let o = ferry::run::run_job(&project, &lake, &job, None, &Stop::never())
        .await
        .unwrap();
    assert!(
        o.stages[0].detail.contains("missed 5"),
        "{}",
        o.stages[0].detail
    );
    let got = query(
        tmp.path(),
        "select count(*) from hs_events.events where event_type = 'reconciled'",
    )
    .await;
    assert_eq!(got, [["20"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_sync_stops_between_batches_and_the_next_run_finishes() {
    use ferry::sim::hubspot::Faults;
    let hs = sim(SimConfig::default()).await;
    let sl = slack::start(SlackConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let pd = pagerduty::start(PagerDutyConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rig = Rig::new(tmp.path(), &hs.base_url(), &sl.url(), &pd.url(), None).await;
    let data = rows(2000, "a");
    model(&rig.dir, "scores", &data);
    // Every call takes 300 ms: the sync's 20 batches take a few seconds.
    hs.set_faults(Faults {
        slow: 1.0,
        slow_ms: 300,
        ..Faults::default()
    });
    rig.clock.set(Utc::now());
    assert_eq!(rig.scheduler.tick().await, ["scores_sync"]);
    tokio::time::sleep(Duration::from_millis(900)).await;
    rig.scheduler.shutdown(Duration::from_secs(30)).await;
    let sent = hs.records("contacts").len();
    assert!(
        sent > 0 && sent < 2000,
        "stopped mid-sync: {sent} records sent"
    );
    let lake = Lake::open(&Project::load(&rig.dir).unwrap().lake, &rig.dir).unwrap();
    let state = schedule::load_state(&lake, "scores_sync")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.last_status.as_deref(), Some("stopped"), "{state:?}");
    for lease in [
        "lake/_ferry/schedules/scores_sync/lease",
        "lake/_ferry/sync_state/scores/lease",
    ] {
        let held: serde_json::Value =
            serde_json::from_slice(&std::fs::read(rig.dir.join(lease)).unwrap()).unwrap();
        assert_eq!(held["released"], true, "{lease}: {held}");
    }
    let runs = query(&rig.dir, "select status from ferry.sync_runs").await;
    assert_eq!(runs, [["stopped"]]);

    // A new scheduler (ferry serve started again) finishes the sync from
    // the batches the CRM confirmed: nobody created twice.
    hs.set_faults(Faults::default());
    let project = Arc::new(Project::load(&rig.dir).unwrap());
    let again = Scheduler::new(
        project.schedules.clone(),
        lake.clone(),
        Arc::new(schedule::RouteRunner {
            project: project.clone(),
            lake: lake.clone(),
        }),
        rig.clock.clone(),
    );
    assert_eq!(
        tick_and_wait(&again).await,
        ["scores_sync"],
        "the stopped fire runs again"
    );
    super::sync::assert_matches(&hs, &data);
    let state = schedule::load_state(&lake, "scores_sync")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.last_status.as_deref(), Some("success"));
}

fn alert(rule: &str, pipeline: &str) -> ferry::operate::alerts::Alert {
    ferry::operate::alerts::Alert {
        severity: ferry::operate::alerts::Severity::Critical,
        rule: rule.into(),
        pipeline: pipeline.into(),
        schedule: Some(pipeline.into()),
        summary: format!("{pipeline}: {rule}"),
        details: serde_json::json!({}),
        owner: None,
        next_action: "look".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serves_announce_an_incident_once_and_a_failed_resolve_is_retried() {
    use ferry::operate::alerts::Change;
    let pd = pagerduty::start(PagerDutyConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let project = Arc::new(schedules_project(
        tmp.path(),
        &format!(
            "[schedules.nightly]\nevery = \"1d\"\nrun = \"build\"\n\n\
             [alerts.channels.pager]\ntype = \"pagerduty\"\nurl = \"{}\"\nrouting_key = \"{}\"\n",
            pd.url(),
            pagerduty::DEFAULT_ROUTING_KEY
        ),
    ));
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    // Two ferry serves on one lake both see the failed run.
    let mut a = Alerter::open(project.clone(), lake.clone()).await.unwrap();
    let mut b = Alerter::open(project.clone(), lake.clone()).await.unwrap();
    let raise = || vec![Change::Raise(alert("run_failed", "nightly"))];
    let (x, y) = tokio::join!(a.apply(raise()), b.apply(raise()));
    x.unwrap();
    y.unwrap();
    assert_eq!(
        pd.events().len(),
        1,
        "one incident, one page: {:?}",
        pd.events()
    );
    // The other process sees the next run succeed; PagerDuty fails the resolve.
    pd.set_fail_next(3);
    let clear = || {
        vec![Change::Clear {
            rule: "run_failed".into(),
            pipeline: "nightly".into(),
        }]
    };
    b.apply(clear()).await.unwrap();
    assert_eq!(
        pd.open_incidents().len(),
        1,
        "the resolve did not get through"
    );
    assert_eq!(
        ferry::operate::alerts::open_incidents(&lake)
            .await
            .unwrap()
            .len(),
        0,
        "resolving, not open"
    );
    // Retried at the next evaluation, once.
    b.apply(vec![]).await.unwrap();
    a.apply(vec![]).await.unwrap();
    assert!(pd.open_incidents().is_empty(), "{:?}", pd.events());
    let resolves = pd
        .events()
        .iter()
        .filter(|e| e["event_action"] == "resolve")
        .count();
    assert_eq!(resolves, 1);
    let failed = query(
        tmp.path(),
        "select count(*) from ferry.alerts where action = 'resolve' and not delivered",
    )
    .await;
    assert_eq!(failed, [["1"]], "the failed attempt is on record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_job_with_nothing_new_is_not_a_stall() {
    let tmp = tempfile::tempdir().unwrap();
    let pd = pagerduty::start(PagerDutyConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let project = Arc::new(schedules_project(
        tmp.path(),
        &format!(
            "[schedules.daily]\nevery = \"1d\"\nrun = \"sync\"\njitter_seconds = 0\n\n\
             [alerts.channels.pager]\ntype = \"pagerduty\"\nurl = \"{}\"\nrouting_key = \"{}\"\npipelines = [\"daily\"]\n",
            pd.url(),
            pagerduty::DEFAULT_ROUTING_KEY
        ),
    ));
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let clock = Arc::new(ManualClock::new(at("2026-05-01T00:00:00Z")));
    let runner = Arc::new(Recorder::default());
    let s = Scheduler::new(
        project.schedules.clone(),
        lake.clone(),
        runner,
        clock.clone(),
    );
    let mut alerter = Alerter::open(project.clone(), lake.clone()).await.unwrap();
    tick_and_wait(&s).await; // nothing to send today
    clock.set(at("2026-05-01T03:00:00Z"));
    let changes = alerter.on_tick(clock.now_utc()).await.unwrap();
    alerter.apply(changes).await.unwrap();
    assert!(pd.events().is_empty(), "{:?}", pd.events());
}

/// A local receiver for the generic JSON webhook channel.
async fn json_receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    use axum::routing::post;
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let state = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let state = state.clone();
            async move {
                state.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_circuit_sla_and_the_daily_digest_reach_their_channels() {
    use ferry::sim::hubspot::Faults;
    let hs = sim(SimConfig::default()).await;
    let (hook, got) = json_receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(
        tmp.path(),
        &hs.base_url(),
        &format!(
            r#"{}
[schedules.scores_sync]
every = "1m"
run = "sync"
syncs = ["scores"]
jitter_seconds = 0
sla_minutes = 30

[alerts]
digest_at = "09:00"
timezone = "Europe/Paris"

[alerts.channels.ops_hook]
type = "webhook"
url = "{hook}"
"#,
            super::sync::SCORES
        ),
    );
    // A daily budget of 18 calls: one sync of 1,500 rows (15 batches) spends over 80% of it.
    let toml = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        toml.replace("max_attempts = 8", "max_attempts = 2\ndaily_limit = 18"),
    )
    .unwrap();
    model(&dir, "scores", &rows(1500, "a"));
    let project = Arc::new(Project::load(&dir).unwrap());
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    // 07:55 UTC = 08:55 in Paris.
    let clock = Arc::new(ManualClock::new(at("2026-06-01T06:55:00Z")));
    let s = Scheduler::new(
        project.schedules.clone(),
        lake.clone(),
        Arc::new(schedule::RouteRunner {
            project: project.clone(),
            lake: lake.clone(),
        }),
        clock.clone(),
    );
    let mut alerter = Alerter::open(project.clone(), lake.clone()).await.unwrap();
    let mut finished = s.subscribe();
    let mut evaluate = async |alerter: &mut Alerter, clock: &ManualClock| {
        while let Ok(f) = finished.try_recv() {
            let c = alerter.on_run(&f.schedule, &f.outcome).await;
            alerter.apply(c).await.unwrap();
        }
        let c = alerter.on_tick(clock.now_utc()).await.unwrap();
        alerter.apply(c).await.unwrap();
    };
    tick_and_wait(&s).await;
    evaluate(&mut alerter, &clock).await;
    let rules = |got: &Arc<Mutex<Vec<serde_json::Value>>>| -> Vec<String> {
        got.lock()
            .unwrap()
            .iter()
            .map(|v| {
                format!(
                    "{}:{}",
                    v["action"].as_str().unwrap(),
                    v["alert"]["rule"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert!(
        rules(&got).contains(&"trigger:budget".to_string()),
        "{:?}",
        got.lock().unwrap()
    );
    let budget = got
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["alert"]["rule"] == "budget")
        .cloned()
        .unwrap();
    assert!(
        budget["alert"]["summary"]
            .as_str()
            .unwrap()
            .contains("of today's API budget spent"),
        "{budget}"
    );
    assert!(
        !budget.to_string().contains("sync-test-token"),
        "no credential in an alert"
    );

    // A vendor's breaker opens (as `Breaker` reports it when most recent
    // calls failed), then closes: one warning, resolved 15 quiet minutes later.
    let vendor = format!("circuit-test-{}", std::process::id());
    ferry::metrics::vendor_seen(&vendor);
    ferry::metrics::circuit(&vendor, true);
    clock.set(at("2026-06-01T06:56:00Z"));
    evaluate(&mut alerter, &clock).await;
    ferry::metrics::circuit(&vendor, false);
    clock.set(at("2026-06-01T06:57:00Z"));
    evaluate(&mut alerter, &clock).await;
    let circuit: Vec<String> = rules(&got)
        .into_iter()
        .filter(|r| r.ends_with(":circuit_open"))
        .collect();
    assert_eq!(
        circuit,
        ["trigger:circuit_open"],
        "open once, not flapping with the breaker"
    );
    hs.set_faults(Faults {
        server_error: 1.0,
        ..Faults::default()
    });
    model(&dir, "scores", &rows(1500, "b"));
    clock.set(at("2026-06-01T06:58:00Z"));
    tick_and_wait(&s).await;
    evaluate(&mut alerter, &clock).await;
    assert!(
        rules(&got).contains(&"trigger:run_failed".to_string()),
        "{:?}",
        rules(&got)
    );

    // Still failing for 40 minutes: the SLA of 30 minutes is missed, once.
    for m in [10, 20, 36] {
        clock.set(at(&format!("2026-06-01T07:{m:02}:00Z")));
        evaluate(&mut alerter, &clock).await;
    }
    let sla = rules(&got).iter().filter(|r| *r == "trigger:sla").count();
    assert_eq!(sla, 1, "{:?}", rules(&got));

    // 09:00 in Paris passed at 07:00 UTC: the digest went out, once.
    evaluate(&mut alerter, &clock).await;
    let digests: Vec<serde_json::Value> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["alert"]["rule"] == "digest")
        .cloned()
        .collect();
    assert_eq!(digests.len(), 1, "{:?}", rules(&got));
    let d = &digests[0]["alert"];
    assert_eq!(d["severity"], "info");
    assert!(d["details"]["records_synced"].as_i64().unwrap() > 0, "{d}");
    assert!(d["details"]["errors_by_category"].is_array());
    assert!(
        rules(&got).contains(&"resolve:circuit_open".to_string()),
        "15 minutes without a trip: {:?}",
        rules(&got)
    );
}

#[test]
fn readme_schedule_and_alert_examples_load_with_the_starter_project() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .filter(|b| {
            (b.contains("[schedules.") || b.contains("[alerts")) && !b.contains("[sources.")
        })
        .collect();
    assert!(blocks.len() >= 2, "the schedules and alerts examples");
    let text = format!(
        "{}\n{}",
        std::fs::read_to_string(root.join("ferry.toml")).unwrap(),
        blocks.join("\n")
    );
    let secrets = ferry::project::SecretSource::new(
        ["SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY"]
            .into_iter()
            .map(|k| (k.to_string(), format!("value-of-{k}")))
            .collect(),
    );
    let p = Project::parse(root, &root.join("ferry.toml"), &text, &secrets, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.schedules.len(), 3);
    assert!(matches!(
        p.schedules["transform_and_sync"].when,
        schedule::When::After(_)
    ));
    assert_eq!(p.alerts.channels.len(), 3);
    assert_eq!(p.alerts.error_rate, 0.05);
}

/// Regression: `ferry serve` got SIGTERM while a schedule had taken its
/// lease but not yet subscribed to the stop. The stop was sent on a channel
/// with no receiver, so it was dropped: the job started without it and ran
/// to `success` instead of stopping (seen in CI, under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sent_while_no_job_runs_still_stops_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let project = schedules_project(
        tmp.path(),
        "[schedules.nightly]\nevery = \"1d\"\nrun = \"build\"\njitter_seconds = 0\n",
    );
    let clock = Arc::new(ManualClock::new(at("2026-03-07T10:00:00Z")));
    let runner = Arc::new(Recorder::default());
    let s = scheduler(&project, runner.clone(), clock.clone());
    s.shutdown(Duration::ZERO).await;
    assert!(
        tick_and_wait(&s).await.is_empty(),
        "nothing starts after a shutdown"
    );
    assert!(runner.names().is_empty());
}
