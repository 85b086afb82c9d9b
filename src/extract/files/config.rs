//! `[sources.<name>]` with `type = "files"`: CSV, JSONL and Parquet drops.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::extract::config::{FileFormat, FileStream, Problem, SourceSpec};
use crate::project::SchemaMode;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSection {
    /// The folder (relative to the project) or object-store URL
    /// (`s3://bucket/drops/`) where files are dropped.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    #[serde(default)]
    pub streams: BTreeMap<String, FileStreamSection>,
}

/// `[sources.<source>.streams.<name>]` of a files source.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStreamSection {
    #[serde(default)]
    pub schema: Option<SchemaMode>,
    /// Which file names belong to this stream (`*` wildcard).
    #[serde(default)]
    pub pattern: Option<String>,
    /// `csv`, `jsonl` or `parquet` (default: by extension).
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// The CSV header this stream expects; a file whose header lacks one of
    /// these is refused before anything lands.
    #[serde(default)]
    pub columns: Vec<String>,
    /// The CSV delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<String>,
}

impl FilesSection {
    pub fn resolve(&self, name: &str) -> Result<SourceSpec, Problem> {
        let Some(location) = self.path.clone() else {
            return Err(Problem::at(
                "",
                "a files source needs path = \"drops/events\" (a folder or s3://, gs://, az:// URL)",
            ));
        };
        let mut streams = Vec::new();
        for (tname, t) in &self.streams {
            let delimiter = match t.delimiter.as_deref() {
                None => b',',
                Some(d) if d.len() == 1 => d.as_bytes()[0],
                Some("\\t") | Some("\t") => b'\t',
                Some(d) => {
                    return Err(Problem::at(
                        format!(".streams.{tname}"),
                        format!("delimiter {d:?} must be one character"),
                    ));
                }
            };
            streams.push(FileStream {
                name: tname.clone(),
                pattern: t.pattern.clone().unwrap_or_else(|| format!("{tname}*")),
                format: t.format,
                columns: t.columns.clone(),
                delimiter,
            });
        }
        if streams.is_empty() {
            return Err(Problem::at(
                "",
                "a files source needs at least one [sources.<name>.streams.<stream>] with a pattern",
            ));
        }
        Ok(SourceSpec::Files {
            name: name.to_string(),
            location,
            streams,
        })
    }
}
