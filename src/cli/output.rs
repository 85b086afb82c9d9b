//! Printing query results: an aligned table, CSV or a JSON array.

use std::io::Write;

use arrow::record_batch::RecordBatch;

use super::OutputFormat;
use crate::error::{Error, Result};

fn io(e: std::io::Error) -> Error {
    Error::io("<stdout>", e)
}

pub fn print(
    out: &mut impl Write,
    batches: &[RecordBatch],
    format: OutputFormat,
    max_rows: usize,
) -> Result<()> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    match format {
        OutputFormat::Table => {
            let mut shown = Vec::new();
            let mut left = max_rows;
            for b in batches {
                if left == 0 {
                    break;
                }
                let take = left.min(b.num_rows());
                shown.push(b.slice(0, take));
                left -= take;
            }
            if shown.is_empty()
                && let Some(b) = batches.first()
            {
                shown.push(b.slice(0, 0));
            }
            let table = arrow::util::pretty::pretty_format_batches(&shown)?;
            writeln!(out, "{table}").map_err(io)?;
            let noun = if total == 1 { "row" } else { "rows" };
            if total > max_rows {
                writeln!(
                    out,
                    "{total} {noun} ({max_rows} shown; --max-rows or --format csv for all)"
                )
                .map_err(io)?;
            } else {
                writeln!(out, "{total} {noun}").map_err(io)?;
            }
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            for b in batches {
                w.write(b)?;
            }
        }
        OutputFormat::Json => {
            // Null values stay as `"key": null`, so every row has every key.
            let mut w = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            if total == 0 {
                write!(out, "[]").map_err(io)?;
            }
            writeln!(out).map_err(io)?;
        }
    }
    out.flush().map_err(io)
}
