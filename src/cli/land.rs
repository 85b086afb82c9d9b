//! `ferry land SOURCE.STREAM FILE...`: land JSON files by hand.
//!
//! JSON Lines are streamed line by line; a line that is not valid JSON is
//! quarantined with its file and line number and the rest still lands. A
//! JSON file must hold one array of objects; if it does not parse, nothing
//! of that file lands and the error names the line and column.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::InputFormat;
use crate::error::{Error, Result};
use crate::lake::{Lake, LandReport, Lander, RunId, StreamRef};
use crate::project::Project;

pub async fn run(
    project: &Project,
    lake: Lake,
    stream: &str,
    files: &[PathBuf],
    format: InputFormat,
    allow_rejects: bool,
) -> Result<()> {
    let stream = StreamRef::parse(stream)?;
    let options = project.stream_options(&stream.source, &stream.stream);
    let lander = Lander::new(lake, RunId::new());
    let mut failed = Vec::new();
    let mut rejected = 0;
    for path in files {
        let result = land_file(&lander, &stream, options, path, format).await;
        match result {
            Ok(report) => {
                rejected += report.rejected;
                print_report(path, &stream, &report)
            }
            Err(e) => {
                // With several files, each file's error here and a count at
                // the end; with one, the error once (main prints it).
                if files.len() > 1 {
                    eprintln!("{} {e}", crate::console::error_prefix());
                }
                failed.push(e);
            }
        }
    }
    println!("run {}", lander.run_id());
    if files.len() == 1 && !failed.is_empty() {
        return Err(failed.remove(0));
    }
    if !failed.is_empty() {
        return Err(Error::Input(format!(
            "{} of {} not landed (each error above); the other files landed",
            failed.len(),
            crate::run::count(files.len(), "file")
        )));
    }
    if rejected > 0 && !allow_rejects {
        return Err(Error::Rejected(format!(
            "{} quarantined (select * from ferry.quarantine where stream = '{stream}'); \
             fix them and land again, or pass --allow-rejects to count this as a success",
            crate::run::count(rejected as usize, "row")
        )));
    }
    Ok(())
}

fn print_report(path: &Path, stream: &StreamRef, r: &LandReport) {
    let files = r.files.iter().filter(|f| f.status == "landed").count();
    println!(
        "{}: landed {} rows into {stream} ({files} file{}, {} bytes, schema v{}){}",
        path.display(),
        r.rows,
        if files == 1 { "" } else { "s" },
        r.bytes,
        r.schema_version,
        if r.rejected > 0 {
            format!(
                "; {} rejected to quarantine (select * from ferry.quarantine)",
                r.rejected
            )
        } else {
            String::new()
        }
    );
    for w in &r.warnings {
        println!("  warning: {w}");
    }
}

async fn land_file(
    lander: &Lander,
    stream: &StreamRef,
    options: crate::project::StreamOptions,
    path: &Path,
    format: InputFormat,
) -> Result<LandReport> {
    let file = File::open(path).map_err(|e| Error::user_file(path, e))?;
    let mut reader = BufReader::new(file);
    let format = match format {
        InputFormat::Auto => detect(path, &mut reader)?,
        f => f,
    };
    let name = path.display().to_string();
    match format {
        InputFormat::Json => {
            let value: Value = serde_json::from_reader(reader).map_err(|e| {
                Error::Input(format!(
                    "{name}:{}:{}: not valid JSON ({e}); nothing from this file was landed. \
                     Fix the file, or use --format jsonl for one object per line",
                    e.line(),
                    e.column()
                ))
            })?;
            let records = match value {
                Value::Array(items) => items,
                obj @ Value::Object(_) => vec![obj],
                other => {
                    return Err(Error::Input(format!(
                        "{name}: expected an array of objects, found {}; nothing was landed",
                        match other {
                            Value::String(_) => "a string",
                            Value::Number(_) => "a number",
                            Value::Bool(_) => "a boolean",
                            _ => "null",
                        }
                    )));
                }
            };
            lander
                .land_json(stream, options, records.into_iter().map(Ok))
                .await
        }
        _ => {
            let lines = crate::extract::files::JsonlPieces::new(&name, reader);
            lander.land_pieces(stream, options, lines).await
        }
    }
}

/// `.json` files starting with `[` are arrays; everything else is JSON Lines.
fn detect(path: &Path, reader: &mut BufReader<File>) -> Result<InputFormat> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "jsonl" || ext == "ndjson" {
        return Ok(InputFormat::Jsonl);
    }
    let buf = reader.fill_buf().map_err(|e| Error::io(path, e))?;
    let first = buf.iter().find(|b| !b.is_ascii_whitespace());
    Ok(match first {
        Some(b'[') => InputFormat::Json,
        _ => InputFormat::Jsonl,
    })
}
