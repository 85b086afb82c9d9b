//! `ferry demo` and `ferry generate`: the whole route in one command, with
//! no external services.
//!
//! The demo generates a synthetic GTM dataset ([`generate`]), serves it
//! from the embedded emulators ([`serve`]: HubSpot for the CRM, a REST API
//! for the marketing platform and the sequencer), points the starter
//! project's sources and HubSpot destination at them, runs `ferry build`
//! (extract → seed → run → test → sync) and prints a short report read back
//! from the lake. The lake stays for `ferry query`.
//!
//! With [`Crm::Salesforce`] the CRM half is a Salesforce emulator instead:
//! the project's HubSpot source, destination and syncs give way to those in
//! `salesforce.toml` (beside this file), and `[vars] crm = "salesforce"`
//! switches the staging models to the Salesforce streams.

pub mod generate;
pub mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::console::thousands;
use crate::error::{Error, Result};
use crate::extract::config::SourceSpec;
use crate::http::Auth;
use crate::lake::Lake;
use crate::project::{Project, secret::Secret};
use crate::run::Selection;
use crate::run::build::{self, BuildOptions, BuildReport};
use crate::sim::hubspot::SimConfig;
use generate::Dataset;
use serve::Served;

/// The seed of the demo's dataset.
pub const DEFAULT_SEED: u64 = 42;

/// The CRM the demo runs the starter project on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Crm {
    #[default]
    Hubspot,
    Salesforce,
}

/// The starter project's Salesforce source, destination and syncs.
pub const SALESFORCE_CONFIG: &str = include_str!("salesforce.toml");

/// The starter project with the Salesforce tables in place of HubSpot's.
pub fn salesforce_project(dir: &std::path::Path) -> Result<Project> {
    Project::load_edited(dir, |t| {
        let fragment: toml::Table = toml::from_str(SALESFORCE_CONFIG)
            .map_err(|e| format!("src/demo/salesforce.toml: {e}"))?;
        let table = |t: &mut toml::Table, k: &str| -> std::result::Result<toml::Table, String> {
            match t.remove(k) {
                None => Ok(toml::Table::new()),
                Some(toml::Value::Table(x)) => Ok(x),
                Some(_) => Err(format!("[{k}] is not a table")),
            }
        };
        let mut sources = table(t, "sources")?;
        sources.remove("hubspot");
        let mut destinations = table(t, "destinations")?;
        destinations.remove("hubspot");
        let mut syncs = toml::Table::new();
        let mut vars = table(t, "vars")?;
        vars.insert("crm".into(), toml::Value::String("salesforce".into()));
        let mut f = fragment;
        sources.extend(table(&mut f, "sources")?);
        destinations.extend(table(&mut f, "destinations")?);
        syncs.extend(table(&mut f, "syncs")?);
        t.insert("sources".into(), toml::Value::Table(sources));
        t.insert("destinations".into(), toml::Value::Table(destinations));
        t.insert("syncs".into(), toml::Value::Table(syncs));
        t.insert("vars".into(), toml::Value::Table(vars));
        Ok(())
    })
}

/// Written at the lake root by the demo: a lake holding it may be wiped by
/// the next demo; any other non-empty lake is left alone.
const MARKER: &str = "_ferry/demo";

pub struct DemoOptions {
    /// Contacts to generate.
    pub scale: usize,
    pub seed: u64,
    pub threads: usize,
    /// The HubSpot emulator's rolling 10-second budget.
    pub hubspot_per_10s: usize,
    /// The HubSpot emulator's daily budget.
    pub hubspot_daily: u64,
    pub crm: Crm,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            scale: 2_000,
            seed: DEFAULT_SEED,
            threads: 4,
            // HubSpot Professional and Enterprise: 190 per 10 s.
            hubspot_per_10s: 190,
            // Professional.
            hubspot_daily: 625_000,
            crm: Crm::Hubspot,
        }
    }
}

/// Where the demo writes the health page.
pub fn health_dir(project: &Project) -> std::path::PathBuf {
    project.dir.join("target").join("health")
}

/// The schedules `ferry demo --serve` runs on the demo's emulators:
/// `refresh` extracts every minute, and `model_and_sync` runs the rest of
/// the route after each successful refresh (`after`, the way teams chain a
/// sync to their transform).
pub fn schedules(
    project: &Project,
    vars: &[String],
) -> Result<std::collections::BTreeMap<String, crate::operate::schedule::Schedule>> {
    use crate::operate::schedule::{Schedule, ScheduleSection};
    let section = |run: &str, every: Option<&str>, after: Option<&str>| ScheduleSection {
        cron: None,
        timezone: None,
        every: every.map(str::to_string),
        after: after.map(str::to_string),
        run: run.to_string(),
        select: vec![],
        exclude: vec![],
        vars: if run == "build" {
            vars.to_vec()
        } else {
            vec![]
        },
        sources: vec![],
        syncs: vec![],
        full_refresh: false,
        skip_extract: run == "build",
        skip_sync: false,
        jitter_seconds: Some(0),
        sla_minutes: Some(10),
        // The demo's data does not grow: refreshes find nothing new.
        stalled_minutes: Some(24 * 60),
        owner: Some("you (the demo)".into()),
    };
    let extract: std::collections::BTreeSet<String> = project.extract.keys().cloned().collect();
    let syncs: std::collections::BTreeSet<String> = project.syncs.keys().cloned().collect();
    let names: std::collections::BTreeSet<String> =
        ["refresh".to_string(), "model_and_sync".to_string()].into();
    let mut out = std::collections::BTreeMap::new();
    for (name, sec) in [
        ("refresh", section("extract", Some("1m"), None)),
        ("model_and_sync", section("build", None, Some("refresh"))),
    ] {
        let s = Schedule::resolve(name, &sec, &extract, &syncs, &names, &Default::default())
            .map_err(|e| Error::Internal(format!("demo schedule {name}: {e}")))?;
        out.insert(name.to_string(), s);
    }
    Ok(out)
}

/// The `as_of` the demo scores at.
pub fn as_of_vars() -> Vec<String> {
    vec![format!(
        "as_of={}",
        generate::now().format("%Y-%m-%dT%H:%M:%SZ")
    )]
}

/// What a demo leaves behind: the emulators (still serving, for tests to
/// inspect), the build report and the data.
pub struct Demo {
    pub served: Served,
    /// The Salesforce emulator, for `--crm salesforce`.
    pub salesforce: Option<crate::sim::salesforce::RunningSim>,
    pub report: BuildReport,
    pub data: Arc<Dataset>,
    pub project: Project,
    pub lake: Lake,
    /// Seconds spent printing the report after the build.
    pub report_seconds: f64,
}

impl Demo {
    /// Stop the emulators.
    pub fn stop(self) {
        self.served.hubspot.stop();
        self.served.marketing.stop();
        if let Some(s) = self.salesforce {
            s.stop();
        }
    }
}

/// The sources and destination the starter project must have.
const STARTER_SOURCES: &[&str] = &["marketing", "sequencer"];

/// The demo's login to the Salesforce emulator (its connected app's
/// refresh token).
fn salesforce_auth(sim: &crate::sim::salesforce::RunningSim) -> Auth {
    let app = crate::sim::salesforce::SimConfig::default().app;
    Auth::OAuth(crate::http::OAuthConfig {
        token_url: format!("{}/services/oauth2/token", sim.base_url()),
        client_id: app.client_id,
        client_secret: Secret::new(app.client_secret),
        refresh_token: Secret::new(app.refresh_token),
    })
}

/// Point the starter project at the emulators.
fn aim(
    project: &mut Project,
    served: &Served,
    salesforce: Option<&crate::sim::salesforce::RunningSim>,
    hubspot_per_10s: usize,
) -> Result<()> {
    let not_starter = |what: &str| {
        Error::Input(format!(
            "ferry demo runs the GTM starter project (ferry.toml and models/ at the root of the \
             ferry repository, or written by `ferry init --template gtm DIR`), and this project \
             has no {what}: run it in such a project (--project-dir DIR)"
        ))
    };
    let crm = if salesforce.is_some() {
        "salesforce"
    } else {
        "hubspot"
    };
    for s in STARTER_SOURCES.iter().chain([&crm]) {
        if !project.extract.contains_key(*s) {
            return Err(not_starter(&format!("[sources.{s}]")));
        }
    }
    if !project.destinations.contains_key(crm) {
        return Err(not_starter(&format!("[destinations.{crm}]")));
    }
    let token = SimConfig::default().token;
    for spec in project.extract.values_mut() {
        match spec {
            SourceSpec::Hubspot {
                url,
                auth,
                requests_per_10s,
                lag_margin,
                ..
            } => {
                *url = served.hubspot.base_url();
                *auth = Auth::Bearer(Secret::new(token.clone()));
                *requests_per_10s = hubspot_per_10s;
                // The emulator's search lags writes as HubSpot's does, by
                // less than HubSpot's; the margin need only cover it.
                *lag_margin = SimConfig::default().search_lag * 2;
            }
            SourceSpec::Rest { url, auth, .. } => {
                *url = format!("{}/api/v1", served.marketing.base_url());
                *auth = Auth::Bearer(Secret::new(serve::MARKETING_TOKEN));
            }
            SourceSpec::Salesforce {
                url,
                auth,
                lag_margin,
                ..
            } => {
                if let Some(sf) = salesforce {
                    *url = sf.base_url();
                    *auth = salesforce_auth(sf);
                    // The emulator commits at once: no late SystemModstamps.
                    *lag_margin = std::time::Duration::from_secs(1);
                }
            }
            SourceSpec::Files { .. } => {}
        }
    }
    for d in project.destinations.values_mut() {
        match (d.kind, salesforce) {
            (crate::sync::config::DestinationKind::Salesforce, Some(sf)) => {
                d.url = sf.base_url();
                d.auth = salesforce_auth(sf);
            }
            _ => {
                d.url = served.hubspot.base_url();
                d.auth = Auth::Bearer(Secret::new(token.clone()));
                d.requests_per_10s = hubspot_per_10s;
                d.search_lag = SimConfig::default().search_lag * 2;
            }
        }
    }
    Ok(())
}

/// Empty the lake if a previous demo wrote it; refuse to touch anything else.
async fn reset_lake(lake: &Lake) -> Result<()> {
    let store = lake.store();
    let objects: Vec<_> = store.list(None).try_collect().await?;
    if objects.is_empty() {
    } else if objects.iter().any(|o| o.location.as_ref() == MARKER) {
        for o in &objects {
            store.delete(&o.location).await?;
        }
    } else {
        return Err(Error::Input(format!(
            "the lake at {} already holds data that ferry demo did not write: the demo starts \
             from an empty lake, so point it elsewhere (FERRY_LAKE=lake-demo ferry demo) or \
             empty that one",
            lake.location()
        )));
    }
    store
        .put(
            &object_store::path::Path::from(MARKER),
            bytes::Bytes::from_static(b"written by ferry demo\n").into(),
        )
        .await?;
    Ok(())
}

/// Run the demo on `project`, leaving the emulators running.
pub async fn run(project: Project, lake: Lake, opts: &DemoOptions) -> Result<Demo> {
    let t = Instant::now();
    let data = Arc::new(Dataset::generate(opts.scale, opts.seed));
    run_on(project, lake, data, t.elapsed().as_secs_f64(), opts).await
}

/// Run the demo on a dataset made elsewhere (tests plant their own cases).
pub async fn run_on(
    mut project: Project,
    lake: Lake,
    data: Arc<Dataset>,
    generated: f64,
    opts: &DemoOptions,
) -> Result<Demo> {
    let started = Instant::now();
    reset_lake(&lake).await?;
    let t = Instant::now();
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    let served = serve::serve(
        data.clone(),
        SimConfig {
            ten_secondly: opts.hubspot_per_10s,
            daily: opts.hubspot_daily,
            ..SimConfig::default()
        },
        local,
        local,
    )
    .await?;
    println!(
        "generated {} companies, {} contacts, {} deals (HubSpot emulator at {}), \
         {} campaigns, {} touches, {} form-fill leads, {} email events (marketing API at {}) \
         in {:.1}s + {:.1}s to load",
        thousands(data.companies.len() as u64),
        thousands(data.contacts.len() as u64),
        thousands(data.deals.len() as u64),
        served.hubspot.base_url(),
        thousands(data.campaigns.len() as u64),
        thousands(data.touches.len() as u64),
        thousands(data.leads.len() as u64),
        thousands(data.email_events.len() as u64),
        served.marketing.base_url(),
        generated,
        t.elapsed().as_secs_f64()
    );
    let salesforce = match opts.crm {
        Crm::Hubspot => None,
        Crm::Salesforce => {
            let t = Instant::now();
            let (sim, load) = serve::serve_salesforce(
                data.clone(),
                crate::sim::salesforce::SimConfig::default(),
                local,
            )
            .await?;
            println!(
                "loaded the CRM half into the Salesforce emulator at {} instead: {} accounts, \
                 {} contacts, {} leads, {} opportunities, {} contact roles ({} records refused) in {:.1}s",
                sim.base_url(),
                load.accounts,
                load.contacts,
                load.leads,
                load.opportunities,
                load.contact_roles,
                load.refused,
                t.elapsed().as_secs_f64()
            );
            project = salesforce_project(&project.dir)?;
            Some(sim)
        }
    };
    aim(
        &mut project,
        &served,
        salesforce.as_ref(),
        opts.hubspot_per_10s,
    )?;
    let args = Selection {
        select: vec![],
        exclude: vec![],
        // Score as of the end of the generated data, so the demo's numbers
        // do not drift with the calendar.
        vars: as_of_vars(),
        state: None,
    };
    let report = build::build(
        &project,
        lake.clone(),
        &args,
        &BuildOptions {
            threads: opts.threads,
            ..BuildOptions::default()
        },
    )
    .await?
    .into_result()?;
    let t = Instant::now();
    print_report(&project, &lake, &served, salesforce.as_ref()).await?;
    let page = crate::operate::health::write(&project, &lake, &health_dir(&project)).await?;
    let report_seconds = t.elapsed().as_secs_f64();
    println!(
        "\nthe integration health page: {}\n\ndemo finished in {:.1}s; the lake is at {}. Try:\n  ferry query \"select * from attribution_by_channel\"\n  ferry query \"select persona, count(*) as people, avg(lead_score) as avg_score from contact_scores group by persona order by people desc\"\n  ferry demo --serve   (the page live at http://127.0.0.1:8080/, /metrics, and a schedule firing)",
        page.display(),
        generated + started.elapsed().as_secs_f64(),
        lake.location()
    );
    Ok(Demo {
        served,
        salesforce,
        report,
        data,
        project,
        lake,
        report_seconds,
    })
}

/// Print a query's result as a table, whole numbers with thousands
/// separators (revenue rounded to the unit), and with `total` a last row
/// summing the numeric columns.
async fn show(
    ctx: &datafusion::prelude::SessionContext,
    title: &str,
    sql: &str,
    total: bool,
) -> Result<()> {
    let batches = ctx.sql(sql).await?.collect().await?;
    crate::console::line(format!("\n{title}"));
    crate::console::line(table(&batches, total)?);
    Ok(())
}

/// The rows of `batches` drawn as a table (see [`show`]).
fn table(batches: &[arrow::record_batch::RecordBatch], total: bool) -> Result<String> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, Int64Type};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let Some(first) = batches.first() else {
        return Ok("(no rows)".into());
    };
    let schema = first.schema();
    let n = schema.fields().len();
    let numeric: Vec<bool> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().is_numeric())
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut sums = vec![0f64; n];
    let fmt = |v: f64| crate::run::thousands(v.round() as i64);
    for b in batches {
        for (c, sum) in sums.iter_mut().enumerate().take(n) {
            if !numeric[c] {
                continue;
            }
            let col = arrow::compute::cast(b.column(c), &DataType::Float64)?;
            let col = col.as_primitive::<Float64Type>();
            *sum += col.iter().flatten().sum::<f64>();
        }
        let cells: Vec<Vec<String>> = (0..n)
            .map(|c| {
                let col = b.column(c);
                if numeric[c] {
                    let ints = matches!(
                        col.data_type(),
                        DataType::Int8
                            | DataType::Int16
                            | DataType::Int32
                            | DataType::Int64
                            | DataType::UInt8
                            | DataType::UInt16
                            | DataType::UInt32
                            | DataType::UInt64
                    );
                    let as_f = arrow::compute::cast(col, &DataType::Float64).ok();
                    let as_i = ints
                        .then(|| arrow::compute::cast(col, &DataType::Int64).ok())
                        .flatten();
                    (0..b.num_rows())
                        .map(|r| match (&as_i, &as_f) {
                            (Some(i), _) if i.is_valid(r) => {
                                crate::run::thousands(i.as_primitive::<Int64Type>().value(r))
                            }
                            (None, Some(f)) if f.is_valid(r) => {
                                fmt(f.as_primitive::<Float64Type>().value(r))
                            }
                            _ => String::new(),
                        })
                        .collect()
                } else {
                    match ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default()) {
                        Ok(f) => (0..b.num_rows()).map(|r| f.value(r).to_string()).collect(),
                        Err(_) => vec![String::new(); b.num_rows()],
                    }
                }
            })
            .collect();
        rows.extend((0..b.num_rows()).map(|r| cells.iter().map(|col| col[r].clone()).collect()));
    }
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let total_row: Option<Vec<String>> = total.then(|| {
        (0..n)
            .map(|c| {
                if c == 0 {
                    "total".to_string()
                } else if numeric[c] {
                    fmt(sums[c])
                } else {
                    String::new()
                }
            })
            .collect()
    });
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows.iter().chain(total_row.iter()) {
        for (c, cell) in r.iter().enumerate() {
            width[c] = width[c].max(cell.chars().count());
        }
    }
    let rule = || {
        let mut s = String::from("+");
        for w in &width {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    };
    let line = |cells: &[String], head: bool| {
        let mut s = String::from("|");
        for (c, cell) in cells.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            if numeric[c] && !head {
                s.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
            } else {
                s.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
            }
        }
        s
    };
    let mut out = vec![rule(), line(&header, true), rule()];
    for r in &rows {
        out.push(line(r, false));
    }
    if let Some(t) = &total_row {
        out.push(rule());
        out.push(line(t, false));
    }
    out.push(rule());
    Ok(out.join("\n"))
}

async fn print_report(
    project: &Project,
    lake: &Lake,
    served: &Served,
    salesforce: Option<&crate::sim::salesforce::RunningSim>,
) -> Result<()> {
    let ctx = crate::engine::session(lake).await?;
    let ws = crate::models::Workspace::load(project, &[])?;
    ws.register_views(&ctx, lake).await?;
    show(
        &ctx,
        "rows extracted, by stream",
        "select source || '.' || stream as stream, sum(rows) as rows, \
         sum(rejected_rows) as rejected from ferry.ingestions \
         where source in ('hubspot', 'salesforce', 'marketing', 'sequencer') \
         group by 1 order by 1",
        true,
    )
    .await?;
    show(
        &ctx,
        "rows per model stage",
        "select stage, rows from ( \
           select 1 as n, 'staging: person records (CRM contacts + form fills)' as stage, \
             (select count(*) from int_person_records) as rows \
           union all select 2, 'identity: people', count(*) from dim_people \
           union all select 3, 'identity: accounts (CRM companies deduplicated)', count(*) from dim_accounts \
           union all select 4, 'touches', count(*) from fct_touches \
           union all select 5, 'scored people (synced)', count(*) from contact_scores \
           union all select 6, 'attribution credits', count(*) from attribution_credits \
         ) order by n",
        false,
    )
    .await?;
    show(
        &ctx,
        "lead score distribution",
        "select case when lead_score >= 80 then '80-100' when lead_score >= 60 then '60-79' \
           when lead_score >= 40 then '40-59' when lead_score >= 20 then '20-39' else '0-19' end as lead_score, \
           count(*) as people, sum(case when is_mql then 1 else 0 end) as mqls \
         from contact_scores group by 1 order by 1 desc",
        true,
    )
    .await?;
    // People whose score decayed below the threshold keep their MQL date.
    let decayed = ctx
        .sql("select count(*) from contact_scores where is_mql and lead_score < 60")
        .await?
        .collect()
        .await?;
    let decayed = crate::lake::log::batch_rows_json(&decayed)?
        .first()
        .and_then(|r| r.as_object().and_then(|o| o.values().next().cloned()))
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    if decayed > 0 {
        crate::console::line(format!(
            "(MQL status sticks once reached: {} below 60 became MQLs before their score decayed)",
            crate::run::count(decayed as usize, "person").replace("persons", "people")
        ));
    }
    show(
        &ctx,
        "closed-won revenue by channel under each attribution model",
        "select channel, first_touch, last_touch, linear, time_decay, u_shaped, w_shaped \
         from attribution_by_channel order by linear desc, channel",
        true,
    )
    .await?;
    show(
        &ctx,
        if salesforce.is_some() {
            "sync to Salesforce"
        } else {
            "sync to HubSpot"
        },
        "select sync, status, created, updated, unchanged, rejected, failed, api_calls, rate_limited \
         from ferry.sync_runs order by started_at, sync",
        false,
    )
    .await?;
    match salesforce {
        Some(sf) => {
            let (calls, _) = sf.stats();
            crate::console::line(format!(
                "Salesforce emulator: {} API calls answered",
                crate::run::thousands(calls as i64)
            ));
        }
        None => {
            let (calls, limited) = served.hubspot.stats();
            crate::console::line(format!(
                "HubSpot emulator: {} API calls answered, {} answered 429",
                crate::run::thousands(calls as i64),
                crate::run::thousands(limited as i64)
            ));
        }
    }
    Ok(())
}

/// `ferry generate --out DIR`: every stream as `DIR/<stream>.jsonl`.
pub fn write_jsonl(data: &Dataset, dir: &std::path::Path) -> Result<Vec<(String, usize)>> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    for (stream, n) in data.streams() {
        let path = dir.join(format!("{stream}.jsonl"));
        // Write beside, then rename: a reader never sees half a file.
        let tmp = dir.join(format!(".{stream}.jsonl.tmp"));
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        for i in 0..n {
            serde_json::to_writer(&mut w, &data.record(stream, i))
                .map_err(|e| Error::Internal(e.to_string()))?;
            w.write_all(b"\n").map_err(|e| Error::io(&tmp, e))?;
        }
        w.flush().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        written.push((stream.to_string(), n));
    }
    Ok(written)
}
