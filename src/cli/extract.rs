//! `ferry extract`: pull vendor streams into the lake and print a summary
//! per stream. A failed stream does not stop the others; the command fails
//! (exit 1) when one did, and ends with exit 3 when rows or files were
//! refused on the way, unless `--allow-rejects`.

use crate::error::{Error, Result};
use crate::extract;
use crate::lake::Lake;
use crate::project::Project;
use crate::run::{console, count, json, rejects_detail, stream_line, thousands};

pub async fn run(
    project: &Project,
    lake: Lake,
    selection: &[String],
    allow_rejects: bool,
) -> Result<()> {
    let t = std::time::Instant::now();
    let print = |s: &extract::StreamSummary| {
        let mut line = stream_line(s);
        if s.error.is_none()
            && let Some(c) = &s.cursor
        {
            line.push_str(&format!("  cursor {}", extract::text(c)));
        }
        console::line(line);
    };
    let done = match extract::extract_until(project, &lake, selection, print, || false).await {
        Ok(x) => x,
        Err(e) => {
            let r = Err(e);
            json::emit("extract", &r, serde_json::json!({"streams": []}));
            return r;
        }
    };
    let rows: u64 = done.streams.iter().map(|s| s.rows).sum();
    let failed: Vec<&str> = done
        .streams
        .iter()
        .filter(|s| s.error.is_some())
        .map(|s| s.stream.as_str())
        .collect();
    let rejects = rejects_detail(&done.streams);
    let mut summary = format!(
        "extracted {} rows from {} in {:.1}s",
        thousands(rows),
        count(done.streams.len() - failed.len(), "stream"),
        t.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        summary.push_str(&format!(
            "; {} FAILED: {}",
            count(failed.len(), "stream"),
            failed.join(", ")
        ));
    }
    if !rejects.is_empty() {
        summary.push_str(&format!("; {rejects}"));
    }
    console::line(summary);
    let streams: Vec<serde_json::Value> = done.streams.iter().map(json::stream).collect();
    let outcome = if !failed.is_empty() {
        done.into_result().map(|_| ()).map_err(|e| {
            e.context(|m| {
                format!(
                    "{m}. What landed before each failure stays and the next run goes on from the last cursor; \
                     see: select * from ferry.extract_runs where status = 'failed'"
                )
            })
        })
    } else if !rejects.is_empty() && !allow_rejects {
        Err(Error::Rejected(format!(
            "the extract finished, but {rejects}. Fix the input, or pass --allow-rejects to count this as a success"
        )))
    } else {
        Ok(())
    };
    json::emit(
        "extract",
        &outcome,
        serde_json::json!({ "seconds": t.elapsed().as_secs_f64(), "streams": streams }),
    );
    outcome
}
