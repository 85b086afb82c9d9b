//! Every persisted model's rows, as a test or a bench compares two runs of
//! a project: read back with `ferry query`, floats rounded to 9 significant
//! digits (a sum's last bits depend on the order partitions add up in),
//! sorted. Used by `tests/it/cluster.rs` and, included by path, by
//! `benches/cluster.rs`.

use std::path::Path;
use std::process::Command;

/// Call `each` with every model's name and rows, one model at a time (a
/// bench's models may not fit in memory together). `ferry` makes the
/// command for the project at `dir`.
pub fn each_model(
    dir: &Path,
    ferry: impl Fn() -> Command,
    mut each: impl FnMut(String, Vec<String>),
) {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("lake/models"))
        .expect("the lake's models")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for name in names {
        let out = ferry()
            .args(["query", &format!("select * from {name}"), "--format", "csv"])
            .output()
            .expect("ferry query");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut rows: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                line.split(',')
                    .map(|f| match f.parse::<f64>() {
                        Ok(x) if f.contains('.') || f.contains('e') => format!("{x:.9e}"),
                        _ => f.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        rows.sort_unstable();
        each(name, rows);
    }
}
