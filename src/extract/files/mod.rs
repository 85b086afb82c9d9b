//! File drops: CSV, JSONL and Parquet files in a folder or an object-store
//! prefix, each landed once.
//!
//! For each file matching a stream's pattern (in path order): read it, hash
//! it (SHA-256), skip it if a file with that content was landed before, check
//! a CSV header against the declared columns (a mismatch refuses the file
//! whole, naming the columns, and nothing lands), land its rows (bad rows go
//! to quarantine with `file:line` and the reason), and only then record the
//! content hash in `_ferry/extract_state/<source>/<stream>/files/`. Every
//! file's rows and errors are in `ferry.ingestions` (`source_file`).

pub mod config;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::config::{FileFormat, FileStream, SourceSpec};
use super::{Source, StreamRun};
use crate::error::{Error, Result};
use crate::lake::layout::META;
use crate::lake::{Lake, Rejected};

pub struct FileSource {
    name: String,
    files: Lake,
    streams: Vec<FileStream>,
}

impl FileSource {
    pub fn new(spec: &SourceSpec, project_dir: &std::path::Path) -> Result<FileSource> {
        let SourceSpec::Files {
            name,
            location,
            streams,
        } = spec
        else {
            return Err(Error::Internal("not a files source".into()));
        };
        let files = Lake::from_url(location, project_dir, &Default::default())?;
        Ok(FileSource {
            name: name.clone(),
            files,
            streams: streams.clone(),
        })
    }
}

/// `*` matches any run of characters; everything else literally.
pub fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// A CSV header name as a column name: lower case, runs of other characters as `_`.
pub fn column_name(header: &str) -> String {
    let mut out = String::new();
    for c in header.trim().chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// Check a CSV header against the declared columns. `Err` says what is missing,
/// pairing each missing column with the closest unexpected one.
pub fn check_header(
    file: &str,
    header: &[String],
    declared: &[String],
) -> std::result::Result<(), String> {
    if declared.is_empty() {
        return Ok(());
    }
    let norm = |s: &String| s.trim().to_lowercase();
    let have: Vec<String> = header.iter().map(norm).collect();
    let missing: Vec<&String> = declared
        .iter()
        .filter(|d| !have.contains(&norm(d)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let declared_n: Vec<String> = declared.iter().map(norm).collect();
    let unexpected: Vec<&String> = header
        .iter()
        .filter(|h| !declared_n.contains(&norm(h)))
        .collect();
    let pairs: Vec<String> = missing
        .iter()
        .map(|m| {
            match unexpected
                .iter()
                .min_by_key(|u| strsim::levenshtein(&norm(u), &norm(m)))
            {
                Some(u) => format!("{u:?} where {m:?} is declared"),
                None => format!("{m:?} is missing"),
            }
        })
        .collect();
    Err(format!(
        "{file}: the header does not match the declared columns: {}. Nothing from this file was landed; \
         fix the file (or `columns` in ferry.toml) and drop it again",
        pairs.join("; ")
    ))
}

/// CSV records read one at a time from `R`, as JSON objects keyed by column
/// name, or rejected rows with `file:line`, the reason and the raw text.
pub struct CsvRecords<'a, R: std::io::Read> {
    file: String,
    reader: csv::Reader<R>,
    names: Vec<String>,
    rec: csv::ByteRecord,
    done: bool,
    /// The input's bytes between two offsets (a quarantined row's raw text).
    raw_text: RawText<'a>,
}

/// Reads the input's bytes between two offsets.
pub type RawText<'a> = Box<dyn Fn(u64, u64) -> String + Send + 'a>;

/// At most this much of a bad row's raw text is kept.
const MAX_RAW: u64 = 64 * 1024;

fn lossy_row(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\r', '\n'])
        .to_string()
}

/// [`RawText`] over bytes in memory.
pub fn raw_in(bytes: &[u8]) -> RawText<'_> {
    Box::new(move |from, to| {
        let at = |o: u64| usize::try_from(o).unwrap_or(usize::MAX).min(bytes.len());
        let (from, to) = (at(from), at(to.min(from.saturating_add(MAX_RAW))));
        lossy_row(&bytes[from..to.max(from)])
    })
}

/// [`RawText`] over a file on disk.
fn raw_on_disk(path: std::path::PathBuf) -> RawText<'static> {
    Box::new(move |from, to| {
        use std::io::{Read, Seek};
        let len = to.saturating_sub(from).min(MAX_RAW);
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        let read = std::fs::File::open(&path).and_then(|mut f| {
            f.seek(std::io::SeekFrom::Start(from))?;
            let n = f.read(&mut buf)?;
            Ok(n)
        });
        match read {
            Ok(n) => lossy_row(&buf[..n]),
            Err(_) => String::new(),
        }
    })
}

impl<'a, R: std::io::Read> CsvRecords<'a, R> {
    /// Read and check the header; `Err` refuses the whole file (a header
    /// that does not match the declared columns, or two headers that become
    /// one column), before any record is read.
    pub fn open(
        file: &str,
        input: R,
        raw_text: RawText<'a>,
        delimiter: u8,
        declared: &[String],
    ) -> std::result::Result<CsvRecords<'a, R>, String> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .has_headers(false)
            .from_reader(input);
        let mut rec = csv::StringRecord::new();
        let header: Vec<String> = match reader.read_record(&mut rec) {
            Ok(true) => rec
                .iter()
                .map(|x| x.trim_start_matches('\u{feff}').to_string())
                .collect(),
            Err(e) => return Err(format!("{file}:1: cannot read the header: {e}")),
            Ok(false) => return Err(format!("{file}: the file is empty (no header)")),
        };
        check_header(file, &header, declared)?;
        let names: Vec<String> = header.iter().map(|h| column_name(h)).collect();
        // Two headers that become one column would silently lose one's values.
        for (i, n) in names.iter().enumerate() {
            if let Some(j) = names[..i].iter().position(|m| m == n) {
                return Err(format!(
                    "{file}:1: the headers {:?} (column {}) and {:?} (column {}) both become the column {n:?}. \
                     Nothing from this file was landed; rename one of them and drop the file again",
                    header[j],
                    j + 1,
                    header[i],
                    i + 1
                ));
            }
        }
        Ok(CsvRecords {
            file: file.to_string(),
            reader,
            names,
            rec: csv::ByteRecord::new(),
            done: false,
            raw_text,
        })
    }

    /// The raw text of the record that started at `from`, as in the file.
    fn raw(&self, from: u64) -> String {
        (self.raw_text)(from, self.reader.position().byte())
    }
}

impl<R: std::io::Read> Iterator for CsvRecords<'_, R> {
    type Item = std::result::Result<Value, Rejected>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let start = self.reader.position().clone();
            match self.reader.read_byte_record(&mut self.rec) {
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Ok(true)
                    if self.rec.len() == 1 && self.rec.get(0).is_some_and(<[u8]>::is_empty) => {}
                Ok(true) => {
                    let origin = Some(format!("{}:{}", self.file, start.line()));
                    if self.rec.len() != self.names.len() {
                        return Some(Err(Rejected {
                            origin,
                            reason: format!(
                                "expected {} fields (as in the header), found {}",
                                self.names.len(),
                                self.rec.len()
                            ),
                            record: self.raw(start.byte()),
                        }));
                    }
                    let mut m = Map::new();
                    for (n, v) in self.names.iter().zip(self.rec.iter()) {
                        match std::str::from_utf8(v) {
                            Ok("") => m.insert(n.clone(), Value::Null),
                            Ok(t) => m.insert(n.clone(), json!(t)),
                            Err(_) => {
                                return Some(Err(Rejected {
                                    origin,
                                    reason: format!("column {n}: not valid UTF-8"),
                                    record: self.raw(start.byte()),
                                }));
                            }
                        };
                    }
                    return Some(Ok(Value::Object(m)));
                }
                Err(e) => {
                    let at = e.position().cloned().unwrap_or_else(|| start.clone());
                    // The reader resumes at the next record; one that cannot
                    // move on ends the file (never a loop).
                    if self.reader.is_done() || self.reader.position().byte() <= start.byte() {
                        self.done = true;
                    }
                    return Some(Err(Rejected {
                        origin: Some(format!("{}:{}", self.file, at.line())),
                        reason: format!("not valid CSV: {e}"),
                        record: self.raw(start.byte()),
                    }));
                }
            }
        }
    }
}

/// Parse CSV bytes into records keyed by column name, and rejected rows.
pub fn parse_csv(
    file: &str,
    bytes: &[u8],
    delimiter: u8,
    declared: &[String],
) -> std::result::Result<(Vec<Value>, Vec<Rejected>), String> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for r in CsvRecords::open(file, bytes, raw_in(bytes), delimiter, declared)? {
        match r {
            Ok(v) => good.push(v),
            Err(r) => bad.push(r),
        }
    }
    Ok((good, bad))
}

/// A JSONL file's lines decoded straight into record batches of
/// [`crate::lake::land::JSON_BATCH_ROWS`] objects (no tree of values per
/// line); a line that is not an object is refused with its line number.
pub struct JsonlPieces<R: std::io::BufRead> {
    file: String,
    lines: std::io::Lines<R>,
    line: usize,
    done: bool,
    pending: std::collections::VecDeque<Rejected>,
}

impl<R: std::io::BufRead> JsonlPieces<R> {
    pub fn new(file: &str, input: R) -> JsonlPieces<R> {
        JsonlPieces {
            file: file.to_string(),
            lines: input.lines(),
            line: 0,
            done: false,
            pending: Default::default(),
        }
    }
}

impl<R: std::io::BufRead> Iterator for JsonlPieces<R> {
    type Item = Result<crate::lake::land::Piece>;

    fn next(&mut self) -> Option<Self::Item> {
        use crate::lake::land::Piece;
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(Ok(Piece::Rejected(r)));
            }
            if self.done {
                return None;
            }
            let mut block = crate::lake::json::Lines::new();
            while block.rows() < crate::lake::land::JSON_BATCH_ROWS {
                self.line += 1;
                let line = match self.lines.next() {
                    None => {
                        self.done = true;
                        break;
                    }
                    Some(Ok(l)) => l,
                    Some(Err(e)) => {
                        self.pending.push_back(Rejected {
                            origin: Some(format!("{}:{}", self.file, self.line)),
                            reason: format!("cannot read the line: {e}"),
                            record: String::new(),
                        });
                        continue;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                let reason = match block.push(&line) {
                    Ok(None) => continue,
                    Ok(Some(_)) => "expected a JSON object on this line".to_string(),
                    Err(e) => format!("invalid JSON: {e}"),
                };
                self.pending.push_back(Rejected {
                    origin: Some(format!("{}:{}", self.file, self.line)),
                    reason,
                    record: line,
                });
            }
            if block.rows() > 0 {
                return Some(block.finish().map(Piece::Batch));
            }
        }
    }
}

/// Parse JSONL bytes: one object per line, decoded into record batches;
/// anything else is rejected with its line.
pub fn parse_jsonl(
    file: &str,
    bytes: &[u8],
) -> Result<(Vec<arrow::record_batch::RecordBatch>, Vec<Rejected>)> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for piece in JsonlPieces::new(file, lossy_lines(bytes)) {
        match piece? {
            crate::lake::land::Piece::Batch(b) => good.push(b),
            crate::lake::land::Piece::Rejected(r) => bad.push(r),
        }
    }
    Ok((good, bad))
}

/// Bytes as UTF-8 text for line reading (invalid sequences replaced).
fn lossy_lines(bytes: &[u8]) -> std::io::Cursor<Vec<u8>> {
    std::io::Cursor::new(String::from_utf8_lossy(bytes).into_owned().into_bytes())
}

/// A dropped file copied to a local temporary file while its SHA-256 is
/// computed, so it is parsed from disk in pieces, never held in memory
/// whole. The copy is removed when this is dropped.
struct Staged {
    path: std::path::PathBuf,
    sha: String,
    bytes: u64,
}

impl Staged {
    async fn fetch(store: &dyn ObjectStore, location: &Path) -> Result<Staged> {
        use tokio::io::AsyncWriteExt;
        let path = std::env::temp_dir().join(format!("ferry-drop-{}", uuid::Uuid::now_v7()));
        let mut out = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::io(&path, e))?;
        // Removed when dropped, also if the download fails half-way.
        let mut staged = Staged {
            path: path.clone(),
            sha: String::new(),
            bytes: 0,
        };
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut body = store.get(location).await?.into_stream();
        while let Some(chunk) = body.try_next().await? {
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::io(&path, e))?;
        }
        out.flush().await.map_err(|e| Error::io(&path, e))?;
        staged.sha = hex::encode(hasher.finalize());
        staged.bytes = bytes;
        Ok(staged)
    }

    fn open(&self) -> Result<std::fs::File> {
        std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn manifest_path(source: &str, stream: &str, sha: &str) -> Path {
    Path::from_iter([
        META,
        "extract_state",
        source,
        stream,
        "files",
        &format!("{sha}.json"),
    ])
}

#[async_trait]
impl Source for FileSource {
    fn streams(&self) -> Vec<String> {
        self.streams.iter().map(|s| s.name.clone()).collect()
    }

    async fn extract(&self, stream: &str, run: &mut StreamRun<'_>) -> Result<Option<Value>> {
        let s = self
            .streams
            .iter()
            .find(|x| x.name == stream)
            .ok_or_else(|| Error::Input(format!("source {} has no stream {stream}", self.name)))?
            .clone();
        let store = self.files.store().clone();
        let mut listed: Vec<Path> = match store.list(None).try_collect::<Vec<_>>().await {
            Ok(l) => l.into_iter().map(|o| o.location).collect(),
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        listed.retain(|p| p.filename().is_some_and(|n| matches(&s.pattern, n)));
        listed.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        for path in listed {
            let name = path.to_string();
            let staged = Staged::fetch(store.as_ref(), &path).await?;
            let sha = staged.sha.clone();
            let size = usize::try_from(staged.bytes).unwrap_or(usize::MAX);
            let manifest = manifest_path(&self.name, stream, &sha);
            match run.lake().store().head(&manifest).await {
                Ok(_) => {
                    tracing::info!(file = %name, "already landed (same content); skipping");
                    run.skipped_file();
                    continue;
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let format = s.format.or_else(|| {
                let lower = name.to_lowercase();
                if lower.ends_with(".csv") || lower.ends_with(".tsv") {
                    Some(FileFormat::Csv)
                } else if lower.ends_with(".jsonl")
                    || lower.ends_with(".ndjson")
                    || lower.ends_with(".json")
                {
                    Some(FileFormat::Jsonl)
                } else if lower.ends_with(".parquet") {
                    Some(FileFormat::Parquet)
                } else {
                    None
                }
            });
            let report = match format {
                None => {
                    run.reject_file(&name, &format!("{name}: unknown format: set format = \"csv\", \"jsonl\" or \"parquet\" on the stream")).await?;
                    continue;
                }
                Some(FileFormat::Csv) => {
                    let input = std::io::BufReader::new(staged.open()?);
                    let raw = raw_on_disk(staged.path.clone());
                    match CsvRecords::open(&name, input, raw, s.delimiter, &s.columns) {
                        Ok(records) => run.land_file_records(&name, records, size).await?,
                        Err(why) => {
                            tracing::error!("{why}");
                            run.reject_file(&name, &why).await?;
                            continue;
                        }
                    }
                }
                Some(FileFormat::Jsonl) => {
                    let input = std::io::BufReader::new(staged.open()?);
                    run.land_file_pieces(&name, JsonlPieces::new(&name, input), size)
                        .await?
                }
                Some(FileFormat::Parquet) => {
                    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
                    let reader = |f: std::fs::File| {
                        ParquetRecordBatchReaderBuilder::try_new(f).and_then(|b| b.build())
                    };
                    // Read through once (a batch at a time) so that a file
                    // whose pages are corrupt is refused whole, then land it
                    // (again a batch at a time); the stream's other files
                    // still land.
                    let checked = match reader(staged.open()?) {
                        Ok(mut r) => r
                            .try_for_each(|b| b.map(|_| ()))
                            .map_err(|e| format!("{name}: a corrupt Parquet file (its data cannot be read: {e}); nothing from it was landed")),
                        Err(e) => Err(format!("{name}: not a readable Parquet file: {e}")),
                    };
                    if let Err(why) = checked {
                        run.reject_file(&name, &why).await?;
                        continue;
                    }
                    let batches = reader(staged.open()?)?.map_while(std::result::Result::ok);
                    run.land_file_batches(&name, batches, size).await?
                }
            };
            // The content is durable: remember it so it never lands twice.
            let entry = json!({"path": name, "sha256": sha, "rows": report.rows, "rejected": report.rejected,
                               "landed_at": chrono::Utc::now().to_rfc3339()});
            match crate::lake::log::put_once(
                run.lake().store().as_ref(),
                &manifest,
                entry.to_string().into_bytes(),
            )
            .await
            {
                Ok(()) | Err(Error::Storage(object_store::Error::AlreadyExists { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_mismatch_names_the_columns() {
        let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = check_header(
            "a.csv",
            &h(&["Email", "Company", "Title"]),
            &h(&["Email", "Company Name"]),
        )
        .unwrap_err();
        assert!(
            e.contains("\"Company\" where \"Company Name\" is declared"),
            "{e}"
        );
        assert!(
            check_header(
                "a.csv",
                &h(&["email", " Company Name ", "x"]),
                &h(&["Email", "Company Name"])
            )
            .is_ok()
        );
    }

    /// Regression: "Email" and "email " both became the column `email`,
    /// and one silently overwrote the other in every row.
    #[test]
    fn headers_that_become_one_column_are_refused_by_name() {
        let e = parse_csv("a.csv", b"Email,email \nx@y.z,w@y.z\n", b',', &[]).unwrap_err();
        assert!(
            e.contains("\"Email\" (column 1) and \"email \" (column 2)"),
            "{e}"
        );
        assert!(e.contains("a.csv:1"), "{e}");
    }

    /// Regression: a row the CSV parser refused was quarantined with an
    /// empty record, so it could not be fixed and dropped again.
    #[test]
    fn a_quarantined_csv_row_keeps_its_raw_text() {
        let bytes = b"a,b\n1,2\n\"open,3\n";
        let (good, bad) = parse_csv("t.csv", bytes, b',', &[]).unwrap();
        assert_eq!(good.len(), 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].record.contains("\"open"), "{:?}", bad[0]);
        assert!(
            bad[0]
                .origin
                .as_deref()
                .unwrap_or_default()
                .starts_with("t.csv:")
        );
    }

    #[test]
    fn patterns() {
        assert!(matches("attendees*.csv", "attendees-2026-11.csv"));
        assert!(matches("*.csv", "a.csv"));
        assert!(!matches("*.csv", "a.csv.tmp"));
        assert!(matches("a*b*c", "a-x-b-y-c"));
        assert!(!matches("a*b*c", "a-x-c"));
    }

    proptest! {
        /// Any CSV written with the csv crate parses back to the same cells,
        /// and rows with the wrong field count are rejected with their line.
        #[test]
        fn csv_round_trips(rows in prop::collection::vec(prop::collection::vec("[a-z ,\"\\n]{0,6}", 3), 0..20), short in 0usize..20) {
            let mut w = csv::WriterBuilder::new().flexible(true).from_writer(Vec::new());
            w.write_record(["A", "B", "C"]).unwrap();
            for (i, r) in rows.iter().enumerate() {
                if i == short { w.write_record(&r[..2]).unwrap(); } else { w.write_record(r).unwrap(); }
            }
            let bytes = w.into_inner().unwrap();
            let (good, bad) = parse_csv("t.csv", &bytes, b',', &["a".into(), "b".into(), "c".into()]).unwrap();
            let expect_bad = usize::from(short < rows.len());
            prop_assert_eq!(bad.len(), expect_bad);
            prop_assert_eq!(good.len(), rows.len() - expect_bad);
            let mut gi = 0;
            for (i, r) in rows.iter().enumerate() {
                if i == short { continue; }
                for (k, cell) in ["a", "b", "c"].iter().zip(r) {
                    let got = &good[gi][*k];
                    if cell.is_empty() { prop_assert!(got.is_null()); } else { prop_assert_eq!(got.as_str().unwrap(), cell.as_str()); }
                }
                gi += 1;
            }
        }
    }
}
