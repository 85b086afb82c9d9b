//! The `ferry` command line: parses arguments, sets up logging and the async
//! runtime, and maps errors to messages and exit codes (0 ok, 1 failed,
//! 2 bad usage). Each command is a thin call into the library.

mod land;
mod output;

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
    about = "The GTM data route in one binary: land vendor data in a Parquet lake and query it with SQL"
)]
struct Cli {
    /// The project folder (the one holding ferry.toml).
    #[arg(long, global = true, default_value = ".", env = "FERRY_PROJECT_DIR")]
    project_dir: PathBuf,

    /// More log output on stderr: -v for progress, -vv for debugging.
    /// FERRY_LOG (a tracing filter such as "ferry=debug") overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a project in DIR: ferry.toml, an example model, sample data, .gitignore.
    Init {
        /// Folder to create the project in (created if missing).
        dir: PathBuf,
        /// Project name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Land JSON records from files into the lake as the stream SOURCE.STREAM.
    Land {
        /// Target stream, for example crm.contacts.
        stream: String,
        /// JSON Lines files (one object per line) or JSON files holding an array of objects.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Input format; auto picks by extension and content.
        #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
        format: InputFormat,
    },
    /// Run SQL against the lake and print the result.
    Query {
        /// The SQL; tables are <source>.<stream>, ferry.ingestions, ferry.quarantine.
        sql: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// With --format table, print at most this many rows (the total is always shown).
        #[arg(long, default_value_t = 100)]
        max_rows: usize,
    },
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
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if e.party() == Party::Ferry {
                eprintln!("(this looks like a bug in ferry)");
            } else if e.retryable() {
                eprintln!("(this may be temporary: running the command again may succeed)");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "warn,ferry=info",
        _ => "info,ferry=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn open(dir: &std::path::Path) -> Result<(Project, Lake)> {
    let project = Project::load(dir)?;
    tracing::debug!(?project, "loaded project");
    let lake = Lake::open(&project.lake, &project.dir)?;
    tracing::debug!(lake = %lake.location(), "opened lake");
    Ok((project, lake))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { dir, name } => {
            if let Some(n) = &name
                && n.trim().is_empty() {
                    return Err(Error::Input("--name must not be empty".into()));
                }
            let written = project::init::init(&dir, name.as_deref())?;
            println!("Created a ferry project in {}:", dir.display());
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
        } => {
            let (project, lake) = open(&cli.project_dir)?;
            land::run(&project, lake, &stream, &files, format).await
        }
        Command::Query {
            sql,
            format,
            max_rows,
        } => {
            let (_, lake) = open(&cli.project_dir)?;
            let ctx = crate::engine::session(&lake).await?;
            let batches = ctx.sql(&sql).await?.collect().await?;
            let mut out = std::io::stdout().lock();
            output::print(&mut out, &batches, format, max_rows)
        }
    }
}
