//! `ferry extract`: pull vendor streams into the lake and print a summary per stream.

use crate::error::Result;
use crate::extract::{self, StreamSummary};
use crate::lake::Lake;
use crate::project::Project;

pub async fn run(project: &Project, lake: Lake, selection: &[String]) -> Result<()> {
    let print = |s: &StreamSummary| {
        println!(
            "{:<32} {:>6} pages {:>10} rows {:>12} bytes {:>8.1}s{}{}",
            s.stream,
            s.pages,
            s.rows,
            s.bytes,
            s.seconds,
            if s.quarantined > 0 {
                format!("  ({} quarantined)", s.quarantined)
            } else {
                String::new()
            },
            s.cursor
                .as_ref()
                .map(|c| format!("  cursor {}", extract::text(c)))
                .unwrap_or_default()
        );
    };
    let summaries = extract::extract(project, &lake, selection, print).await?;
    let rows: u64 = summaries.iter().map(|s| s.rows).sum();
    println!("extracted {rows} rows from {} streams", summaries.len());
    Ok(())
}
