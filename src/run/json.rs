//! The `--format json` documents of `run`, `test`, `build`, `extract`,
//! `sync` and `schedules`: one object on stdout per command, whose shape
//! is documented in README ("Machine-readable output") and pinned by the
//! binary tests. Every document has `version`, `command`, `status`
//! (`success`, `failed` or `rejected`) and `error` (null on success); keys
//! are never left out (null instead), so a script can index them.

use serde_json::{Value, json};

use super::build::Stage;
use crate::extract::StreamSummary;
use crate::models::artifacts::NodeResult;
use crate::models::run::ModelResult;
use crate::sync::SyncReport;

/// The document's version: bumped when a key changes meaning or goes away.
pub const VERSION: u32 = 1;

pub fn model(r: &ModelResult) -> Value {
    json!({
        "name": r.name,
        "unique_id": r.unique_id,
        "materialized": r.materialized.as_str(),
        "status": r.status.as_str(),
        "rows": r.rows,
        "seconds": r.seconds,
        "error": r.error,
    })
}

/// A test result, from its run_results entry (`test.<project>.<name>` or
/// `unit_test.<project>.<model>.<name>`).
pub fn test(n: &NodeResult) -> Value {
    // `unit_test.<project>.<model>.<name>`, `test.<project>.<name>`.
    let (kind, name) = match n.unique_id.split_once('.') {
        Some(("unit_test", rest)) => ("unit", rest.rsplit('.').next().unwrap_or(rest)),
        Some((_, rest)) => ("data", rest.split_once('.').map_or(rest, |(_, r)| r)),
        None => ("data", n.unique_id.as_str()),
    };
    json!({
        "name": name,
        "kind": kind,
        "unique_id": n.unique_id,
        "status": n.status,
        "failures": n.failures,
        "seconds": n.seconds,
        "message": n.message,
    })
}

pub fn stream(s: &StreamSummary) -> Value {
    let (source, name) = s.stream.split_once('.').unwrap_or((s.stream.as_str(), ""));
    json!({
        "stream": s.stream,
        "source": source,
        "name": name,
        "status": if s.error.is_some() { "failed" } else { "success" },
        "pages": s.pages,
        "rows": s.rows,
        "bytes": s.bytes,
        "quarantined_rows": s.quarantined,
        "refused_files": s.rejected_files,
        "skipped_files": s.skipped_files,
        "seconds": s.seconds,
        "cursor": s.cursor,
        "error": s.error,
    })
}

pub fn sync(r: &SyncReport) -> Value {
    let c = &r.counts;
    let status = if r.stopped.is_some() || c.failed > 0 || c.unknown > 0 {
        "failed"
    } else if c.rejected > 0 {
        "rejected"
    } else {
        "success"
    };
    json!({
        "sync": r.sync,
        "run_id": r.run_id.to_string(),
        "mode": r.mode.as_str(),
        "dry_run": r.dry_run,
        "status": status,
        "created": c.created,
        "updated": c.updated,
        "archived": c.archived,
        "unchanged": c.unchanged,
        "rejected": c.rejected,
        "failed": c.failed,
        "skipped": c.skipped,
        "released": c.released,
        "not_sent": c.not_sent,
        "unknown": c.unknown,
        "api_calls": r.api_calls,
        "rate_limited": r.rate_limited,
        "seconds": r.seconds,
        "stopped": r.stopped,
        "error": null,
    })
}

/// A sync that could not run at all.
pub fn sync_error(name: &str, e: &crate::error::Error) -> Value {
    json!({
        "sync": name, "run_id": null, "mode": null, "dry_run": null, "status": "failed",
        "created": 0, "updated": 0, "archived": 0, "unchanged": 0, "rejected": 0,
        "failed": 0, "skipped": 0, "released": 0, "not_sent": 0, "unknown": 0,
        "api_calls": 0, "rate_limited": 0, "seconds": 0.0, "stopped": null,
        "error": e.to_string(),
    })
}

pub fn stage(s: &Stage) -> Value {
    json!({
        "stage": s.name,
        "status": s.status,
        "seconds": s.seconds,
        "rows": s.rows,
        "rejected": s.rejected,
        "api_calls": s.api_calls,
        "rate_limited": s.rate_limited,
        "detail": s.detail,
    })
}

/// The outer document: `command`, `status`, `error`, then the command's own keys.
pub fn document(
    command: &str,
    error: Option<&crate::error::Error>,
    body: serde_json::Map<String, Value>,
) -> Value {
    let (status, error) = match error {
        None => ("success", Value::Null),
        Some(crate::error::Error::Rejected(m)) => ("rejected", json!(m)),
        Some(e) => ("failed", json!(e.to_string())),
    };
    let mut doc = serde_json::Map::new();
    doc.insert("version".into(), json!(VERSION));
    doc.insert("command".into(), json!(command));
    doc.insert("status".into(), json!(status));
    doc.insert("error".into(), error);
    doc.extend(body);
    Value::Object(doc)
}

/// Print `command`'s document when `--format json` asked for one.
pub fn emit(command: &str, result: &crate::error::Result<()>, body: Value) {
    emit_outcome(command, result.as_ref().err(), body)
}

/// [`emit`] for a command that failed with `error` (or succeeded: `None`).
pub fn emit_outcome(command: &str, error: Option<&crate::error::Error>, body: Value) {
    if !crate::console::json() {
        return;
    }
    let body = match body {
        Value::Object(m) => m,
        other => {
            let mut m = serde_json::Map::new();
            m.insert("result".into(), other);
            m
        }
    };
    crate::console::emit(&document(command, error, body));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_keeps_every_key_and_names_the_outcome() {
        let ok = document("run", None, serde_json::Map::new());
        assert_eq!(ok["status"], "success");
        assert!(ok.as_object().unwrap().contains_key("error"));
        assert!(ok["error"].is_null());
        let rejected = document(
            "extract",
            Some(&crate::error::Error::Rejected("3 rows quarantined".into())),
            serde_json::Map::new(),
        );
        assert_eq!(rejected["status"], "rejected");
        assert_eq!(rejected["error"], "3 rows quarantined");
        let failed = document(
            "sync",
            Some(&crate::error::Error::Input("no".into())),
            serde_json::Map::new(),
        );
        assert_eq!(failed["status"], "failed");
    }

    #[test]
    fn test_names_drop_their_prefixes() {
        let n = NodeResult {
            unique_id: "unit_test.gtm.contact_scores.scores_decay".into(),
            status: "pass",
            started_at: chrono::Utc::now(),
            completed_at: chrono::Utc::now(),
            seconds: 0.1,
            message: None,
            failures: Some(0),
            rows: None,
        };
        let v = test(&n);
        assert_eq!(v["kind"], "unit");
        assert_eq!(v["name"], "scores_decay");
        let d = NodeResult {
            unique_id: "test.gtm.unique_dim_people_person_id".into(),
            ..n
        };
        assert_eq!(test(&d)["kind"], "data");
        assert_eq!(test(&d)["name"], "unique_dim_people_person_id");
    }
}
