//! The `ferry` command line: parses arguments, sets up logging and the async
//! runtime, and maps errors to messages and exit codes (0 ok, 1 failed,
//! 2 bad usage). Each command is a thin call into the library.

mod extract;
mod land;
mod output;
mod sync;

pub use crate::run::Selection as SelectArgs;
use crate::run::models;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::{Error, Party, Result};
use crate::lake::Lake;
use crate::project::{self, Project};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "The GTM data route in one binary: extract vendor data into a Parquet lake, model it with SQL, sync results back to the CRM"
)]
struct Cli {
    /// The project folder (the one holding ferry.toml) [default: .]. Also
    /// accepted after the subcommand.
    #[arg(long, value_name = "DIR", env = "FERRY_PROJECT_DIR")]
    project_dir: Option<PathBuf>,

    /// The target: a [targets.<name>] of ferry.toml laid over the base
    /// settings, and the output of the dbt profile it renders as. Also
    /// accepted after the subcommand.
    #[arg(long, env = "FERRY_TARGET")]
    target: Option<String>,

    /// More log output on stderr: -v for progress, -vv for debugging.
    /// FERRY_LOG (a tracing filter such as "ferry=debug") overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Run model builds on this Ballista cluster (`df://host:port`, a
    /// scheduler started by `ferry engine scheduler`) instead of in this
    /// process; overrides [engine] url.
    #[arg(long, global = true, value_name = "URL", env = "FERRY_ENGINE")]
    engine: Option<String>,

    #[command(subcommand)]
    command: Command,
}

const EX_CHECK: &str = "Examples:\n  ferry check\n  ferry check --target prod\n  ferry check --select path:models/marts";
const EX_INIT: &str = "Examples:\n  ferry init my-project\n  ferry init --template gtm gtm-demo && ferry demo --project-dir gtm-demo\n  ferry init --name revenue warehouse/";
const EX_LAND: &str = "Examples:\n  ferry land crm.contacts data/contacts.jsonl\n  ferry land billing.invoices exports/*.json --input-format json";
const EX_DEPS: &str = "Examples:\n  ferry deps\n  ferry deps --upgrade";
const EX_SEED: &str = "Examples:\n  ferry seed\n  ferry seed --select country_codes";
const EX_SNAPSHOT: &str =
    "Examples:\n  ferry snapshot\n  ferry snapshot --select contacts_snapshot";
const EX_COMPILE: &str = "Examples:\n  ferry compile\n  ferry compile --select contact_scores   # print its rendered SQL";
const EX_RUN: &str = "Examples:\n  ferry run\n  ferry run --select +contact_scores --threads 2\n  ferry run --select tag:daily --full-refresh --format json";
const EX_TEST: &str = "Examples:\n  ferry test\n  ferry test --select dim_people -v          # every test, passing ones too\n  ferry test --select test_type:unit --format json";
const EX_ENGINE: &str = "Examples:\n  ferry engine scheduler --bind 0.0.0.0:50050\n  ferry engine executor --scheduler sched.internal:50050 --bind 0.0.0.0:50051 --external-host $(hostname)\n  ferry run --engine df://sched.internal:50050";
const EX_SOURCE: &str =
    "Examples:\n  ferry source freshness\n  ferry source freshness --select source:crm";
const EX_DOCS: &str =
    "Examples:\n  ferry docs && open target/docs/index.html\n  ferry docs --serve --port 8081";
const EX_BUILD: &str = "Examples:\n  ferry build\n  ferry build --skip-extract --select +contact_scores\n  ferry build --target sandbox --format json > build.json";
const EX_DEMO: &str = "Examples:\n  ferry demo\n  ferry demo --scale 20000 --seed 7\n  ferry demo --crm salesforce\n  ferry demo --serve --port 8080";
const EX_GENERATE: &str = "Examples:\n  ferry generate --out data/\n  ferry generate --serve --scale 10000   # then HUBSPOT_TOKEN=... ferry build";
const EX_EXTRACT: &str = "Examples:\n  ferry extract\n  ferry extract hubspot.contacts marketing\n  ferry extract --allow-rejects --format json";
const EX_SERVE: &str =
    "Examples:\n  ferry serve\n  ferry serve --host 0.0.0.0 --port 9000 --no-schedules";
const EX_SCHEDULES: &str = "Examples:\n  ferry schedules\n  ferry schedules --format json";
const EX_HEALTH: &str = "Examples:\n  ferry health\n  ferry health --out public/";
const EX_SYNC: &str = "Examples:\n  ferry sync --dry-run\n  ferry sync contact_scores_to_hubspot\n  ferry sync --retry-failed\n  ferry sync contact_scores --workers 4   # 4 partitions, one account budget\n  ferry sync revert 01J9Z3...   # undo one run";
const EX_SIM: &str =
    "Examples:\n  ferry sim hubspot --port 8090\n  ferry sim salesforce --port 8091 --daily 1000";
const EX_QUERY: &str = "Examples:\n  ferry query \"select * from crm.contacts limit 5\"\n  ferry query \"select count(*) from ferry.quarantine\" --format csv\n  ferry query \"select * from contact_scores\" --format json > scores.json";
#[derive(Debug, Subcommand)]
enum Command {
    /// Create a project in DIR: ferry.toml, an example model, sample data, .gitignore.
    #[command(after_help = EX_INIT)]
    Init {
        /// Folder to create the project in (created if missing).
        dir: PathBuf,
        /// Project name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// What to write: `basic` (an example model and contacts to land)
        /// or `gtm` (the starter project `ferry demo` runs).
        #[arg(long, value_enum, default_value_t = project::init::Template::Basic)]
        template: project::init::Template,
    },
    /// Land JSON records from files into the lake as the stream SOURCE.STREAM.
    #[command(after_help = EX_LAND)]
    Land {
        #[command(flatten)]
        project: ProjectArgs,
        /// Target stream, for example crm.contacts.
        stream: String,
        /// JSON Lines files (one object per line) or JSON files holding an array of objects.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The input files' format; auto picks by extension and content.
        #[arg(long = "input-format", alias = "format", value_enum, default_value_t = InputFormat::Auto)]
        format: InputFormat,
        #[command(flatten)]
        rejects: RejectArgs,
    },
    /// Install the packages listed in packages.yml (or dependencies.yml)
    /// into dbt_packages/: local folders and git repositories (at a tag,
    /// branch or commit, optionally a subdirectory), pinned in package-lock.yml.
    #[command(after_help = EX_DEPS)]
    Deps {
        #[command(flatten)]
        project: ProjectArgs,
        /// Resolve again from packages.yml, ignoring package-lock.yml.
        #[arg(long)]
        upgrade: bool,
    },
    /// Load the CSV seeds (under seeds/, or [project] seed_paths) as tables.
    #[command(after_help = EX_SEED)]
    Seed {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Run the snapshots (SCD type 2: each changed row gets a new version,
    /// the old one dbt_valid_to), stored as Delta tables under snapshots/.
    #[command(after_help = EX_SNAPSHOT)]
    Snapshot {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Render and plan models against their upstream schemas without running
    /// anything; with --select, print the rendered SQL.
    #[command(after_help = EX_COMPILE)]
    Compile {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Validate the project without calling a vendor or running a model, in
    /// about a second: ferry.toml and every target, the secrets of every
    /// source and sync, every model compiled against its inputs, every
    /// sync's model, columns and match key, every data test's column, and
    /// the selection. `ferry build` runs it first.
    #[command(after_help = EX_CHECK)]
    Check {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Build the selected models in dependency order.
    #[command(after_help = EX_RUN)]
    Run {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Models built at once (at least 1).
        #[arg(long, default_value_t = 4, value_parser = parse_threads)]
        threads: usize,
        /// Rebuild incremental models from scratch.
        #[arg(long)]
        full_refresh: bool,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Run the data tests of the selected models.
    #[command(after_help = EX_TEST)]
    Test {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// A Ballista cluster for model builds: ferry's scheduler and
    /// executors, which read the project's lake and know ferry's functions.
    #[command(after_help = EX_ENGINE)]
    Engine {
        #[command(subcommand)]
        command: EngineCommand,
    },
    /// Declared sources (dbt's `sources:`).
    #[command(after_help = EX_SOURCE)]
    Source {
        #[command(subcommand)]
        command: SourceCommand,
    },
    /// Write the project's documentation: a static HTML page and a JSON
    /// manifest with the DAG, SQL, columns and column-level lineage.
    #[command(after_help = EX_DOCS)]
    Docs {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Output folder (default: target/docs in the project).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Then serve the page on 127.0.0.1 until Ctrl-C.
        #[arg(long)]
        serve: bool,
        /// The port for --serve (0 picks a free one).
        #[arg(long, default_value_t = 8081)]
        port: u16,
    },
    /// The whole route: extract, seed, run, test, then sync, which runs only
    /// if everything before it succeeded (failing error-severity tests keep
    /// bad data out of the CRM). One summary; recorded in ferry.runs.
    #[command(after_help = EX_BUILD)]
    Build {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Models built at once (at least 1).
        #[arg(long, default_value_t = 4, value_parser = parse_threads)]
        threads: usize,
        /// Rebuild incremental models from scratch.
        #[arg(long)]
        full_refresh: bool,
        /// Build from what is already in the lake.
        #[arg(long)]
        skip_extract: bool,
        /// Stop after the tests.
        #[arg(long)]
        skip_sync: bool,
        #[command(flatten)]
        rejects: RejectArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// The whole route in one command with no external services: generate
    /// a GTM dataset, serve it from the embedded HubSpot and marketing
    /// emulators, run `ferry build` on the starter project, print a report.
    /// The lake stays for `ferry query`.
    #[command(after_help = EX_DEMO)]
    Demo {
        #[command(flatten)]
        project: ProjectArgs,
        /// Contacts to generate (companies, touches, leads, email events and deals follow).
        #[arg(long, default_value_t = 2000)]
        scale: usize,
        /// The random seed of the generated data: the same seed, the same data.
        #[arg(long, default_value_t = crate::demo::DEFAULT_SEED)]
        seed: u64,
        /// Models built at once (at least 1).
        #[arg(long, default_value_t = 4, value_parser = parse_threads)]
        threads: usize,
        /// Then keep `ferry serve` running on the demo's lake and emulators:
        /// the health page at /, /metrics, and two schedules (an extract
        /// every minute, and a build chained after it). SIGTERM or Ctrl-C stops.
        #[arg(long)]
        serve: bool,
        /// The port for --serve.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The CRM to run the route against: the HubSpot emulator, or the
        /// Salesforce emulator (leads, contacts, accounts, opportunities and
        /// contact roles; scores to Ferry_*__c fields; the MQL campaign).
        #[arg(long, value_enum, default_value_t = crate::demo::Crm::Hubspot)]
        crm: crate::demo::Crm,
    },
    /// A deterministic synthetic GTM dataset (companies, contacts, deals,
    /// campaigns, touches, form-fill leads, email events) with the mess of
    /// real vendor data: written as JSON lines (--out) or served by the
    /// emulators for `ferry build` (--serve).
    #[command(after_help = EX_GENERATE)]
    Generate {
        /// Contacts to generate; the other streams follow.
        #[arg(long, default_value_t = 2000)]
        scale: usize,
        /// The random seed: the same seed, the same data.
        #[arg(long, default_value_t = crate::demo::DEFAULT_SEED)]
        seed: u64,
        /// Write DIR/<stream>.jsonl.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Serve the data until Ctrl-C: HubSpot on --hubspot-port, the
        /// marketing and sequencer API on --marketing-port.
        #[arg(long)]
        serve: bool,
        /// The HubSpot emulator's port on 127.0.0.1, with --serve.
        #[arg(long, default_value_t = 8090)]
        hubspot_port: u16,
        /// The marketing and sequencer API's port on 127.0.0.1, with --serve.
        #[arg(long, default_value_t = 8091)]
        marketing_port: u16,
        /// The HubSpot emulator's requests per rolling 10 s.
        #[arg(long, default_value_t = 190)]
        ten_secondly: usize,
    },
    /// Pull vendor streams into the lake (all sources with a type when none
    /// are given): pages, rows, bytes and seconds per stream.
    #[command(after_help = EX_EXTRACT)]
    Extract {
        #[command(flatten)]
        project: ProjectArgs,
        /// `source` or `source.stream`.
        streams: Vec<String>,
        #[command(flatten)]
        rejects: RejectArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// The long-running process: runs [schedules.*] and the alerts, serves
    /// the health page (/), /metrics and webhook endpoints (POST
    /// /webhooks/<source>). SIGTERM or Ctrl-C lets running jobs reach a safe
    /// point, releases their leases, lands pending webhook events and stops.
    #[command(after_help = EX_SERVE)]
    Serve {
        #[command(flatten)]
        project: ProjectArgs,
        /// The port of the health page, /metrics and the webhook endpoints.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Milliseconds between micro-batch landings.
        #[arg(long, default_value_t = 1000)]
        flush_ms: u64,
        /// Do not run schedules (webhooks, page and metrics only).
        #[arg(long)]
        no_schedules: bool,
        /// Seconds running jobs get to reach a safe point at shutdown.
        #[arg(long, default_value_t = 120)]
        grace_seconds: u64,
        /// Seconds between evaluations of the clock-driven alert rules.
        #[arg(long, default_value_t = 60)]
        alert_every_seconds: u64,
    },
    /// List the schedules: when each fires, its last run and outcome, its next fire time.
    #[command(after_help = EX_SCHEDULES)]
    Schedules {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Write the integration health page (what `ferry serve` shows at /) as
    /// static HTML: DIR/index.html.
    #[command(after_help = EX_HEALTH)]
    Health {
        #[command(flatten)]
        project: ProjectArgs,
        /// Output folder (default: target/health in the project).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Reverse-sync models to the CRM: send what changed since the CRM last
    /// confirmed, and log every row's outcome in ferry.sync_log.
    #[command(args_conflicts_with_subcommands = true)]
    #[command(after_help = EX_SYNC)]
    Sync {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(subcommand)]
        action: Option<SyncAction>,
        /// Syncs to run (all in ferry.toml when none are given).
        names: Vec<String>,
        /// Report what would be created, updated, archived, left unchanged or
        /// rejected, with sample before/after values. Reads the CRM; writes nothing.
        #[arg(long)]
        dry_run: bool,
        /// Send only the rows whose last outcome was a failure or a CRM rejection.
        #[arg(long)]
        retry_failed: bool,
        /// Let a mirror sync archive more than max_delete_pct, or run on an empty model.
        #[arg(long)]
        allow_mass_delete: bool,
        /// Take the sync's lock even if another run seems to hold it.
        #[arg(long)]
        break_lock: bool,
        /// Workers sending changed rows, each a partition of the keys, all
        /// under the account's one budget (overrides the syncs' `workers`).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: Option<u16>,
        #[command(flatten)]
        rejects: RejectArgs,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Run a vendor emulator on loopback (for tests and demos).
    #[command(after_help = EX_SIM)]
    Sim {
        #[command(subcommand)]
        vendor: SimVendor,
    },
    /// Run SQL against the lake and print the result.
    #[command(after_help = EX_QUERY)]
    Query {
        #[command(flatten)]
        project: ProjectArgs,
        /// The SQL; tables are <source>.<stream>, ferry.ingestions, ferry.quarantine.
        sql: String,
        /// The output's format: an aligned table, CSV, or a JSON array of
        /// objects (every column in every object, nulls as null).
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// With --format table, print at most this many rows (the total is always shown).
        #[arg(long, default_value_t = 100)]
        max_rows: usize,
    },
}

#[derive(Debug, Subcommand)]
enum SyncAction {
    /// Undo one run of a sync with `revertible = true`: write back the
    /// values it replaced and archive the records it created. Fields
    /// changed in the CRM since are left alone. Logged as a run of its own.
    Revert {
        #[command(flatten)]
        project: ProjectArgs,
        /// The run to undo (see: select run_id, sync, started_at from ferry.sync_runs).
        run_id: String,
        /// Report what would be written back and archived; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Take the sync's lock even if another run seems to hold it.
        #[arg(long)]
        break_lock: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EngineCommand {
    /// Run a scheduler: model builds are sent to it (`--engine
    /// df://HOST:PORT` or [engine] url), and it splits them into tasks for
    /// its executors. Runs until stopped.
    Scheduler {
        #[command(flatten)]
        project: ProjectArgs,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: String,
    },
    /// Run an executor: it registers with the scheduler, runs tasks reading
    /// the lake, and serves their results. Runs until stopped.
    Executor {
        #[command(flatten)]
        project: ProjectArgs,
        /// The scheduler, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Address to serve task results on (other executors and ferry
        /// fetch them here).
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: String,
        /// The host others reach this executor at [default: --bind's].
        #[arg(long)]
        external_host: Option<String>,
        /// Tasks run at once [default: the machine's cores].
        #[arg(long, default_value_t = 0)]
        vcores: usize,
        /// Folder for shuffle files and spills [default: a temporary folder].
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SourceCommand {
    /// How old each source's newest row is, against its freshness
    /// thresholds (`warn_after`, `error_after`), as `dbt source freshness`
    /// reports it; fails when one is stale past `error_after`. Select with
    /// --select source:NAME or source:NAME.TABLE.
    Freshness {
        #[command(flatten)]
        project: ProjectArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
}

#[derive(Debug, Subcommand)]
enum SimVendor {
    /// HubSpot's CRM v3 objects API, with its rate limits and error bodies.
    Hubspot {
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 8090)]
        port: u16,
        /// The bearer token the emulator accepts.
        #[arg(
            long,
            env = "FERRY_SIM_HUBSPOT_TOKEN",
            default_value = "ferry-sim-token",
            hide_env_values = true
        )]
        token: String,
        /// Requests per rolling 10 seconds.
        #[arg(long, default_value_t = 100)]
        ten_secondly: usize,
        /// Requests per day.
        #[arg(long, default_value_t = 250_000)]
        daily: u64,
        /// Share of calls answered 429 (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        fault_429: f64,
        /// Share of calls answered 502.
        #[arg(long, default_value_t = 0.0)]
        fault_5xx: f64,
        /// Share of calls answered slowly, and how slowly.
        #[arg(long, default_value_t = 0.0)]
        fault_slow: f64,
        /// How slow a slow answer is, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        slow_ms: u64,
        /// Share of calls whose connection is dropped.
        #[arg(long, default_value_t = 0.0)]
        fault_drop: f64,
        /// Share of writes applied whose reply is then lost.
        #[arg(long, default_value_t = 0.0)]
        fault_lost_write: f64,
        /// Share of reads and searches answered 200 with an HTML page.
        #[arg(long, default_value_t = 0.0)]
        fault_garbled: f64,
        /// Milliseconds search lags writes (HubSpot's index is not instant).
        #[arg(long, default_value_t = 1000)]
        search_lag_ms: u64,
        /// Store emails as given and echo idProperty (kinder than HubSpot).
        #[arg(long)]
        no_normalize: bool,
    },
    /// A Salesforce org: OAuth (refresh token, JWT bearer), describe,
    /// SOQL queries and sObject Collections, with Salesforce's error bodies
    /// and daily limit.
    Salesforce {
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 8091)]
        port: u16,
        /// The connected app's consumer key and secret, and the refresh
        /// token the emulator accepts.
        #[arg(long, default_value = "ferry-sim-client")]
        client_id: String,
        /// The connected app's consumer secret.
        #[arg(
            long,
            env = "FERRY_SIM_SALESFORCE_SECRET",
            default_value = "ferry-sim-secret",
            hide_env_values = true
        )]
        client_secret: String,
        /// The refresh token the emulator accepts.
        #[arg(
            long,
            env = "FERRY_SIM_SALESFORCE_REFRESH",
            default_value = "ferry-sim-refresh",
            hide_env_values = true
        )]
        refresh_token: String,
        /// A PEM public key: JWT bearer logins signed by its private key are accepted.
        #[arg(long)]
        jwt_public_key: Option<std::path::PathBuf>,
        /// The user JWT assertions must name.
        #[arg(long, default_value = "ferry@example.com")]
        username: String,
        /// API requests per 24 hours.
        #[arg(long, default_value_t = 15_000)]
        daily: u64,
        /// Share of calls answered 503.
        #[arg(long, default_value_t = 0.0)]
        fault_5xx: f64,
        /// Share of calls whose connection is dropped.
        #[arg(long, default_value_t = 0.0)]
        fault_drop: f64,
        /// Share of writes applied whose reply is then lost.
        #[arg(long, default_value_t = 0.0)]
        fault_lost_write: f64,
        /// Bulk API batches per 24 hours (10,000 records each).
        #[arg(long, default_value_t = 15_000)]
        bulk_batches: u64,
        /// Milliseconds from a Bulk job's UploadComplete to InProgress.
        #[arg(long, default_value_t = 300)]
        bulk_start_ms: u64,
        /// Milliseconds a Bulk job spends on each 10,000-record batch.
        #[arg(long, default_value_t = 100)]
        bulk_batch_ms: u64,
        /// Share of Bulk jobs that fail part-way (the rest unprocessed).
        #[arg(long, default_value_t = 0.0)]
        fault_job_failure: f64,
    },
}

/// `--project-dir` and `--target` after a subcommand that reads a project
/// (init, generate and sim do not).
#[derive(Debug, Clone, Default, clap::Args)]
struct ProjectArgs {
    /// The project folder (the one holding ferry.toml) [default: .; env: FERRY_PROJECT_DIR].
    #[arg(long, value_name = "DIR")]
    project_dir: Option<PathBuf>,
    /// A [targets.<name>] of ferry.toml laid over the base settings (and
    /// the dbt profile output it renders as) [env: FERRY_TARGET].
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
}

/// `--format` of the commands that report a run.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
struct ReportArgs {
    /// How the outcome is printed: `text` for people, or `json`: one JSON
    /// document on stdout (shape in README, "Machine-readable output"),
    /// the human lines on stderr.
    #[arg(long = "format", value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Default, clap::Args)]
struct RejectArgs {
    /// Exit 0 even when rows or files were refused on the way (quarantined
    /// rows, refused files, rows the CRM rejected); without it such a run
    /// exits 3. Failures still exit 1.
    #[arg(long)]
    allow_rejects: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    Auto,
    Jsonl,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// Entry point of the `ferry` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.command.report().format == ReportFormat::Json;
    crate::console::configure(cli.verbose, json);
    init_logging(cli.verbose);
    let target = cli
        .command
        .project()
        .and_then(|p| p.target.clone())
        .or(cli.target.clone());
    if let Some(t) = target {
        let _ = crate::models::project::TARGET.set(t);
    }
    // Deep query plans are decoded by recursion (a Ballista scheduler or
    // executor decoding a model's plan; Ballista's own binaries take 32 MiB):
    // stack is reserved, and committed only as it is used.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 * 1024 * 1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.name();
    // On a worker, not on this thread: the worker that sees a socket ready
    // runs the task waiting for it, with no hand-off between threads (an
    // extraction's fetching loop waits on the network once per page).
    let outcome = runtime.block_on(async {
        match tokio::spawn(run(cli)).await {
            Ok(outcome) => outcome,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A command that failed before its own document: one anyway.
            if json && !crate::console::emitted() {
                crate::run::json::emit_outcome(command, Some(&e), serde_json::json!({}));
            }
            eprintln!("{} {e}", crate::console::error_prefix());
            if e.party() != Party::User {
                eprintln!("({})", e.who_acts());
            }
            if matches!(e, Error::Rejected(_)) {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

impl Command {
    /// `--project-dir` and `--target` given after the subcommand.
    fn project(&self) -> Option<&ProjectArgs> {
        match self {
            Command::Init { .. } | Command::Generate { .. } | Command::Sim { .. } => None,
            Command::Land { project, .. }
            | Command::Deps { project, .. }
            | Command::Seed { project, .. }
            | Command::Snapshot { project, .. }
            | Command::Check { project, .. }
            | Command::Compile { project, .. }
            | Command::Run { project, .. }
            | Command::Test { project, .. }
            | Command::Docs { project, .. }
            | Command::Build { project, .. }
            | Command::Demo { project, .. }
            | Command::Extract { project, .. }
            | Command::Serve { project, .. }
            | Command::Schedules { project, .. }
            | Command::Health { project, .. }
            | Command::Query { project, .. }
            | Command::Source {
                command: SourceCommand::Freshness { project, .. },
            }
            | Command::Engine {
                command:
                    EngineCommand::Scheduler { project, .. } | EngineCommand::Executor { project, .. },
            }
            | Command::Sync {
                action: Some(SyncAction::Revert { project, .. }),
                ..
            } => Some(project),
            Command::Sync { project, .. } => Some(project),
        }
    }

    /// The `--format` of a command that has one.
    fn report(&self) -> ReportArgs {
        match self {
            Command::Run { report, .. }
            | Command::Test { report, .. }
            | Command::Build { report, .. }
            | Command::Extract { report, .. }
            | Command::Schedules { report, .. }
            | Command::Sync { report, .. } => *report,
            _ => ReportArgs::default(),
        }
    }

    /// The subcommand's name, for its JSON document.
    fn name(&self) -> &'static str {
        match self {
            Command::Run { .. } => "run",
            Command::Test { .. } => "test",
            Command::Build { .. } => "build",
            Command::Extract { .. } => "extract",
            Command::Schedules { .. } => "schedules",
            Command::Sync { .. } => "sync",
            _ => "ferry",
        }
    }
}

fn init_logging(verbose: u8) {
    // delta-rs warns about its own merge metrics on every MERGE, and
    // Ballista's scheduler on every stage of ferry's executors, whose tasks
    // report no metrics on purpose (`engine::cluster`).
    let quiet = "deltalake_core::operations=error,ballista_scheduler::state::execution_stage=error";
    let default = match verbose {
        0 => format!("warn,{quiet}"),
        1 => format!("warn,{quiet},ferry=info"),
        // ferry's own detail; dependencies stay at warnings.
        _ => format!("warn,{quiet},ferry=debug"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(crate::console::color_stderr())
        .with_target(false)
        .try_init();
}

/// SIGTERM (how schedulers and container runtimes stop a process) or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(e) => tracing::warn!("cannot listen for SIGTERM: {e}"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub(crate) fn serve_banner(project: &Project, url: &str, schedules: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ferry serve listening on {url}");
    let _ = writeln!(out, "  GET  {url}/          the integration health page");
    let _ = writeln!(out, "  GET  {url}/metrics   Prometheus metrics");
    for name in project.webhooks.keys() {
        let _ = writeln!(out, "  POST {url}/webhooks/{name}");
    }
    if schedules {
        for s in project.schedules.values() {
            let _ = writeln!(
                out,
                "  schedule {:<20} {} → {}",
                s.name,
                s.when.describe(),
                s.job.describe()
            );
        }
    }
    let _ = out.flush();
}

async fn print_schedules(project: &Project, lake: &Lake) -> Result<()> {
    use crate::console::line;
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    if project.schedules.is_empty() {
        line(
            "no schedules: add a [schedules.<name>] to ferry.toml (cron, every or after, and run)",
        );
        crate::run::json::emit("schedules", &Ok(()), serde_json::json!({ "schedules": [] }));
        return Ok(());
    }
    let now = chrono::Utc::now();
    line(format!(
        "{:<20} {:<34} {:<28} {:<34} next fire (UTC)",
        "schedule", "when", "runs", "last run"
    ));
    let mut docs = Vec::new();
    for l in crate::operate::schedule::list(project, lake, now).await? {
        let state = l.state.as_ref();
        let last = match state {
            Some(s) if s.last_status.is_some() => format!(
                "{} {}",
                s.last_status.as_deref().unwrap_or(""),
                s.last_started.map(fmt).unwrap_or_default()
            ),
            _ => "never".to_string(),
        };
        let next = l
            .next
            .map(fmt)
            .unwrap_or_else(|| "after its upstream succeeds".into());
        line(format!(
            "{:<20} {:<34} {:<28} {:<34} {next}",
            l.name, l.when, l.job, last
        ));
        let error = state.and_then(|s| s.last_error.clone());
        if let Some(e) = &error {
            line(format!(
                "{:<20} last error: {}",
                "",
                e.lines().next().unwrap_or("")
            ));
        }
        docs.push(serde_json::json!({
            "name": l.name,
            "when": l.when,
            "job": l.job,
            "last_status": state.and_then(|s| s.last_status.clone()),
            "last_started_at": state.and_then(|s| s.last_started).map(|t| t.to_rfc3339()),
            "last_error": error,
            "next_fire_at": l.next.map(|t| t.to_rfc3339()),
        }));
    }
    crate::run::json::emit(
        "schedules",
        &Ok(()),
        serde_json::json!({ "schedules": docs }),
    );
    Ok(())
}

/// `--threads N`: at least one.
fn parse_threads(v: &str) -> std::result::Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (models built at once)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{v:?} is not a whole number")),
    }
}

/// `--engine`, when given: it overrides `[engine] url`.
static ENGINE_FLAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `HOST:PORT` of a flag.
fn socket(text: &str, flag: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            Error::Input(format!(
                "{flag} {text:?}: expected HOST:PORT, such as 127.0.0.1:50050"
            ))
        })
}

fn open(dir: &std::path::Path) -> Result<(Project, Lake)> {
    let mut project = Project::load(dir)?;
    if let Some(url) = ENGINE_FLAG.get() {
        project.engine.url = Some(
            crate::engine::cluster::parse_url(url)
                .map_err(|e| Error::Input(format!("--engine: {e}")))?,
        );
    }
    tracing::debug!(?project, "loaded project");
    crate::engine::memory::configure(project.engine.clone())?;
    let lake = Lake::open(&project.lake, &project.dir)?;
    tracing::debug!(lake = %lake.location(), "opened lake");
    Ok((project, lake))
}

async fn run(cli: Cli) -> Result<()> {
    let dir = cli
        .command
        .project()
        .and_then(|p| p.project_dir.clone())
        .or(cli.project_dir)
        .unwrap_or_else(|| PathBuf::from("."));
    if let Some(url) = &cli.engine {
        let _ = ENGINE_FLAG.set(url.clone());
    }
    match cli.command {
        Command::Init {
            dir,
            name,
            template,
            ..
        } => {
            if let Some(n) = &name
                && n.trim().is_empty()
            {
                return Err(Error::Input("--name must not be empty".into()));
            }
            let written = project::init::init(&dir, name.as_deref(), template)?;
            println!("Created a ferry project in {}:", dir.display());
            if template == project::init::Template::Gtm {
                println!(
                    "  {} files: ferry.toml, models/, sql/, .gitignore",
                    written.len()
                );
                println!(
                    "\nNext:\n  ferry --project-dir {d} demo      # the whole route on embedded emulators",
                    d = dir.display()
                );
                return Ok(());
            }
            for path in written {
                println!("  {}", path.display());
            }
            println!(
                "\nNext:\n  ferry --project-dir {d} land crm.contacts {d}/data/contacts.jsonl\n  \
                 ferry --project-dir {d} query \"select country, count(*) from crm.contacts group by country\"",
                d = dir.display()
            );
            Ok(())
        }
        Command::Land {
            stream,
            files,
            format,
            rejects,
            ..
        } => {
            let (project, lake) = open(&dir)?;
            land::run(
                &project,
                lake,
                &stream,
                &files,
                format,
                rejects.allow_rejects,
            )
            .await
        }
        Command::Seed { select, .. } => {
            let (project, lake) = open(&dir)?;
            models::seed(&project, lake, &select).await
        }
        Command::Check { select, .. } => {
            let (project, lake) = open(&dir)?;
            crate::run::check::run(&project, &lake, &select).await
        }
        Command::Compile { select, .. } => {
            let (project, lake) = open(&dir)?;
            models::compile(&project, lake, &select).await
        }
        Command::Run {
            select,
            threads,
            full_refresh,
            report: _,
            ..
        } => {
            let (project, lake) = open(&dir)?;
            models::run(&project, lake, &select, threads, full_refresh).await
        }
        Command::Test {
            select, report: _, ..
        } => {
            let (project, lake) = open(&dir)?;
            models::test(&project, lake, &select).await
        }
        Command::Snapshot { select, .. } => {
            let (project, lake) = open(&dir)?;
            models::snapshot(&project, lake, &select).await
        }
        Command::Engine {
            command: EngineCommand::Scheduler { bind, .. },
        } => {
            let (_project, lake) = open(&dir)?;
            let bind = socket(&bind, "--bind")?;
            eprintln!(
                "ferry engine scheduler: listening on {bind} for the lake at {}",
                lake.location()
            );
            crate::engine::cluster::serve_scheduler(&lake, bind).await
        }
        Command::Engine {
            command:
                EngineCommand::Executor {
                    scheduler,
                    bind,
                    external_host,
                    vcores,
                    work_dir,
                    ..
                },
        } => {
            let (_project, lake) = open(&dir)?;
            let bind = socket(&bind, "--bind")?;
            if let Some(d) = &work_dir {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            eprintln!(
                "ferry engine executor: serving on {bind} for the scheduler at {scheduler}, the lake at {}",
                lake.location()
            );
            crate::engine::cluster::serve_executor(
                &lake,
                crate::engine::cluster::ExecutorOptions {
                    scheduler,
                    bind,
                    external_host,
                    vcores,
                    work_dir: work_dir.map(|d| d.display().to_string()),
                },
            )
            .await
        }
        Command::Source {
            command: SourceCommand::Freshness { select, .. },
        } => {
            let (project, lake) = open(&dir)?;
            models::source_freshness(&project, lake, &select)
                .await
                .map(|_| ())
        }
        Command::Docs {
            select,
            out,
            serve,
            port,
            ..
        } => {
            let (project, lake) = open(&dir)?;
            let out = out.unwrap_or_else(|| project.dir.join("target").join("docs"));
            models::docs(&project, lake, &select, &out).await?;
            if serve {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                crate::serve::docs(out, addr, shutdown_signal()).await?;
            }
            Ok(())
        }
        Command::Build {
            select,
            threads,
            full_refresh,
            skip_extract,
            skip_sync,
            rejects,
            report: _,
            ..
        } => {
            let (project, lake) = open(&dir)?;
            let opts = crate::run::BuildOptions {
                threads,
                full_refresh,
                skip_extract,
                skip_sync,
                stop: crate::run::Stop::never(),
                schedule: None,
            };
            let report = crate::run::build::build(&project, lake, &select, &opts).await?;
            let result = report
                .clone()
                .into_result_with(rejects.allow_rejects)
                .map(|_| ());
            report.json(&result);
            result
        }
        Command::Demo {
            scale,
            seed,
            threads,
            serve,
            port,
            crm,
            ..
        } => {
            if !dir.join(crate::project::CONFIG_FILE).exists()
                && !dir.join("dbt_project.yml").exists()
            {
                return Err(Error::Project(format!(
                    "no ferry.toml in {}: ferry demo runs the GTM starter project. Write it with \
                     `ferry init --template gtm gtm-demo`, then run `ferry --project-dir gtm-demo demo`",
                    dir.display()
                )));
            }
            let (project, lake) = open(&dir)?;
            let opts = crate::demo::DemoOptions {
                scale,
                seed,
                threads,
                crm,
                ..crate::demo::DemoOptions::default()
            };
            let mut demo = crate::demo::run(project, lake, &opts).await?;
            if serve {
                demo.project.schedules =
                    crate::demo::schedules(&demo.project, &crate::demo::as_of_vars())?;
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let server = crate::serve::start_with(
                    &demo.project,
                    demo.lake.clone(),
                    addr,
                    crate::serve::ServeOptions::default(),
                )
                .await?;
                println!();
                serve_banner(&demo.project, &server.url(), true);
                println!("the first refresh starts now; SIGTERM or Ctrl-C stops");
                shutdown_signal().await;
                server.shutdown().await;
            }
            demo.stop();
            Ok(())
        }
        Command::Generate {
            scale,
            seed,
            out,
            serve,
            hubspot_port,
            marketing_port,
            ten_secondly,
            ..
        } => {
            if out.is_none() && !serve {
                return Err(Error::Input(
                    "say where the data goes: --out DIR (JSON lines) and/or --serve (emulators)"
                        .into(),
                ));
            }
            let t = std::time::Instant::now();
            let data = std::sync::Arc::new(crate::demo::generate::Dataset::generate(scale, seed));
            if let Some(dir) = &out {
                for (stream, n) in crate::demo::write_jsonl(&data, dir)? {
                    println!(
                        "{:<14} {n:>10} records  {}",
                        stream,
                        dir.join(format!("{stream}.jsonl")).display()
                    );
                }
                println!("generated in {:.1}s", t.elapsed().as_secs_f64());
            }
            if serve {
                let served = crate::demo::serve::serve(
                    data,
                    crate::sim::hubspot::SimConfig {
                        ten_secondly,
                        ..Default::default()
                    },
                    ([127, 0, 0, 1], hubspot_port).into(),
                    ([127, 0, 0, 1], marketing_port).into(),
                )
                .await?;
                // The servers keep running if nobody reads this (a closed pipe).
                use std::io::Write;
                let _ = writeln!(
                    std::io::stdout(),
                    "HubSpot emulator at {} (token {}), marketing and sequencer API at {}/api/v1 (token {}).\n\
                     In another shell: HUBSPOT_TOKEN={} MARKETING_API_TOKEN={} ferry build\nCtrl-C stops.",
                    served.hubspot.base_url(),
                    crate::sim::hubspot::SimConfig::default().token,
                    served.marketing.base_url(),
                    crate::demo::serve::MARKETING_TOKEN,
                    crate::sim::hubspot::SimConfig::default().token,
                    crate::demo::serve::MARKETING_TOKEN,
                );
                let _ = tokio::signal::ctrl_c().await;
            }
            Ok(())
        }
        Command::Serve {
            port,
            host,
            flush_ms,
            no_schedules,
            grace_seconds,
            alert_every_seconds,
            ..
        } => {
            let (project, lake) = open(&dir)?;
            let addr: std::net::SocketAddr = format!("{host}:{port}")
                .parse()
                .map_err(|e| Error::Input(format!("--host {host}: {e}")))?;
            let opts = crate::serve::ServeOptions {
                flush: std::time::Duration::from_millis(flush_ms),
                schedules: !no_schedules,
                alert_every: std::time::Duration::from_secs(alert_every_seconds.max(1)),
                grace: std::time::Duration::from_secs(grace_seconds),
                ..Default::default()
            };
            let server = crate::serve::start_with(&project, lake, addr, opts).await?;
            serve_banner(&project, &server.url(), !no_schedules);
            shutdown_signal().await;
            println!("ferry serve: stopping (running jobs stop at a safe point)");
            server.shutdown().await;
            println!("ferry serve: stopped");
            Ok(())
        }
        Command::Deps { upgrade, .. } => {
            let dir = &dir;
            let installed = crate::models::deps::install(dir, upgrade)?;
            if installed.is_empty() {
                println!(
                    "no packages: list them in packages.yml (packages: [{{local: ../pkg}}, {{git: <url>, revision: <tag>}}])"
                );
            } else {
                println!(
                    "{} package(s) in {}/, pinned in {}",
                    installed.len(),
                    crate::models::deps::PACKAGES_DIR,
                    crate::models::deps::LOCK_FILE
                );
            }
            Ok(())
        }
        Command::Schedules { .. } => {
            let (project, lake) = open(&dir)?;
            print_schedules(&project, &lake).await
        }
        Command::Health { out, .. } => {
            let (project, lake) = open(&dir)?;
            let out = out.unwrap_or_else(|| project.dir.join("target").join("health"));
            let t = std::time::Instant::now();
            let path = crate::operate::health::write(&project, &lake, &out).await?;
            println!(
                "wrote the health page to {} in {:.2}s",
                path.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Extract {
            streams,
            rejects,
            report: _,
            ..
        } => {
            let (project, lake) = open(&dir)?;
            extract::run(&project, lake, &streams, rejects.allow_rejects).await
        }
        Command::Sync {
            action:
                Some(SyncAction::Revert {
                    run_id,
                    dry_run,
                    break_lock,
                    ..
                }),
            ..
        } => {
            let (project, lake) = open(&dir)?;
            let opts = crate::sync::SyncOptions {
                dry_run,
                break_lock,
                ..Default::default()
            };
            sync::revert(&project, lake, &run_id, &opts).await
        }
        Command::Sync {
            action: None,
            names,
            dry_run,
            retry_failed,
            allow_mass_delete,
            break_lock,
            workers,
            rejects,
            report: _,
            ..
        } => {
            let (project, lake) = open(&dir)?;
            let opts = crate::sync::SyncOptions {
                dry_run,
                retry_failed,
                allow_mass_delete,
                break_lock,
                shutdown: None,
                revert: None,
                workers: workers.map(usize::from),
            };
            sync::run(&project, lake, &names, &opts, rejects.allow_rejects).await
        }
        Command::Sim { vendor, .. } => match vendor {
            SimVendor::Hubspot {
                port,
                token,
                ten_secondly,
                daily,
                fault_429,
                fault_5xx,
                fault_slow,
                slow_ms,
                fault_drop,
                fault_lost_write,
                fault_garbled,
                search_lag_ms,
                no_normalize,
            } => {
                let config = crate::sim::hubspot::SimConfig {
                    token,
                    oauth: None,
                    ten_secondly,
                    daily,
                    search_per_second: 4,
                    search_lag: std::time::Duration::from_millis(search_lag_ms),
                    association_page: 500,
                    normalize: !no_normalize,
                    faults: crate::sim::hubspot::Faults {
                        rate_limited: fault_429,
                        server_error: fault_5xx,
                        slow: fault_slow,
                        slow_ms,
                        dropped: fault_drop,
                        lost_after_write: fault_lost_write,
                        garbled: fault_garbled,
                        write_error: 0.0,
                    },
                };
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let sim = crate::sim::hubspot::start(config, addr).await?;
                println!("HubSpot emulator listening on {}", sim.base_url());
                let _ = tokio::signal::ctrl_c().await;
                sim.stop();
                Ok(())
            }
            SimVendor::Salesforce {
                port,
                client_id,
                client_secret,
                refresh_token,
                jwt_public_key,
                username,
                daily,
                fault_5xx,
                fault_drop,
                fault_lost_write,
                bulk_batches,
                bulk_start_ms,
                bulk_batch_ms,
                fault_job_failure,
            } => {
                let public_key_pem = match jwt_public_key {
                    Some(p) => Some(std::fs::read_to_string(&p).map_err(|e| {
                        Error::Input(format!("{}: cannot read the public key: {e}", p.display()))
                    })?),
                    None => None,
                };
                let config = crate::sim::salesforce::SimConfig {
                    app: crate::sim::salesforce::ConnectedApp {
                        client_id,
                        client_secret,
                        refresh_token,
                        public_key_pem,
                        username,
                    },
                    daily,
                    query_page: 2_000,
                    bulk_batches,
                    bulk_start_ms,
                    bulk_batch_ms,
                    query_results_page: crate::sim::salesforce::SimConfig::default()
                        .query_results_page,
                    faults: crate::sim::salesforce::Faults {
                        server_error: fault_5xx,
                        dropped: fault_drop,
                        lost_after_write: fault_lost_write,
                        slow: 0.0,
                        slow_ms: 0,
                        job_failure: fault_job_failure,
                    },
                };
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let sim = crate::sim::salesforce::start(config, addr).await?;
                println!(
                    "Salesforce emulator listening on {} (login and instance)",
                    sim.base_url()
                );
                let _ = tokio::signal::ctrl_c().await;
                sim.stop();
                Ok(())
            }
        },
        Command::Query {
            sql,
            format,
            max_rows,
            ..
        } => {
            let (project, lake) = open(&dir)?;
            let ctx = crate::engine::session(&lake).await?;
            // View models are not persisted: plan them so they can be queried.
            if project.dir.join("models").is_dir() {
                match crate::models::Workspace::load(&project, &[]) {
                    Ok(ws) => ws.register_views(&ctx, &lake).await?,
                    Err(e) => tracing::warn!("models are not queryable: {e}"),
                }
            }
            let batches = crate::engine::read_only(&ctx, &sql)
                .await?
                .collect()
                .await?;
            let mut out = std::io::stdout().lock();
            output::print(&mut out, &batches, format, max_rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand, nested ones included, with its path.
    fn all(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            out.push((p.clone(), sub.clone()));
            all(sub, p, out);
        }
    }

    #[test]
    fn every_flag_of_every_subcommand_says_what_it_does() {
        let cli = Cli::command();
        let mut subs = Vec::new();
        all(&cli, "ferry".into(), &mut subs);
        let mut undocumented = Vec::new();
        for (path, cmd) in &subs {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    undocumented.push(format!("{path} {id}"));
                }
            }
        }
        assert!(
            undocumented.is_empty(),
            "flags without help: {undocumented:?}"
        );
    }

    #[test]
    fn every_top_level_subcommand_shows_examples() {
        let cli = Cli::command();
        let missing: Vec<&str> = cli
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .filter(|c| {
                !c.get_after_help()
                    .is_some_and(|h| h.to_string().contains("Examples:\n  ferry "))
            })
            .map(|c| c.get_name())
            .collect();
        assert!(
            missing.is_empty(),
            "subcommands without examples: {missing:?}"
        );
    }

    #[test]
    fn init_generate_and_sim_do_not_offer_a_project_dir() {
        let cli = Cli::command();
        for name in ["init", "generate", "sim"] {
            let cmd = cli.find_subcommand(name).unwrap();
            assert!(
                cmd.get_arguments().all(|a| a.get_id() != "project_dir"),
                "{name} offers --project-dir"
            );
        }
        let build = cli.find_subcommand("build").unwrap();
        assert!(build.get_arguments().any(|a| a.get_id() == "project_dir"));
    }
}
