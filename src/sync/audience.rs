//! `mode = "audience"`: keep a CRM audience (a HubSpot list, a Salesforce
//! campaign's members) equal to the model's keys.
//!
//! The diff is the field syncs' own (the key is the only value hashed):
//! keys new to the model are looked up (their CRM ids) and added, keys that
//! left it are removed by the id their add confirmed. Each batch's outcomes
//! are logged (`add`, `remove`) once the CRM answered, which is the commit,
//! so a killed run resends at most the batches in flight (membership calls
//! are idempotent). The mirror guard applies to removals: an empty model,
//! or more than `max_delete_pct` of the members leaving, stops the run
//! before anything is sent unless `--allow-mass-delete`.

use std::collections::HashMap;

use datafusion::execution::context::SessionContext;

use super::diff::{self, DiffOp, Row};
use super::state::LogRow;
use super::{Fate, Run, SAMPLES, Sample};
use crate::error::{Error, Result};
use crate::http::CallError;

impl Run<'_> {
    /// One audience run (the model's schema is already checked).
    pub(super) async fn audience(&self, ctx: &SessionContext, model: &str) -> Result<()> {
        let sync = self.sync;
        let vendor = self.dest.capabilities().vendor;
        let Some(aud) = self.dest.audiences() else {
            return Err(Error::Input(format!(
                "sync {}: {vendor} has no audiences ferry can keep; use a field sync",
                sync.name
            )));
        };
        let name = sync.audience.clone().unwrap_or_default();
        let unique = self
            .dest
            .prepare(&sync.object, &sync.key_property, &[])
            .await?;
        diff::register_snapshot(ctx, self.lake, &sync.name).await?;
        let plan = diff::plan(
            ctx,
            model,
            &sync.key_column,
            self.dest.case_insensitive(&sync.key_property),
            std::slice::from_ref(&sync.key_column),
        )
        .await?;
        let (mut adds, mut removes, mut rejects) = (Vec::new(), Vec::new(), Vec::new());
        // Members still in the segment are only counted (the diff's tally);
        // the rows that enter or leave it are read.
        let scanned = diff::scan(
            ctx,
            &plan,
            || self.stopped(),
            |row| {
                match row.op {
                    DiffOp::Add => adds.push(row),
                    DiffOp::Remove => removes.push(row),
                    DiffOp::Change | DiffOp::Unchanged => {}
                    DiffOp::Reject => {
                        let mut l = LogRow::error(
                            row.key.as_deref(),
                            "reject",
                            "rejected",
                            "INVALID_KEY",
                            row.reason.as_deref().unwrap_or("invalid match key"),
                        );
                        l.hash = row.hash.clone();
                        rejects.push(l);
                    }
                }
                Ok(())
            },
        )
        .await?;
        let Some(tally) = scanned else {
            return Ok(());
        };
        let kept = tally.count(DiffOp::Change) + tally.count(DiffOp::Unchanged);
        let members = kept + tally.count(DiffOp::Remove);
        self.add(|c| {
            c.unchanged = kept;
            c.rejected = rejects.len() as u64;
        });
        // The mass-removal guard, before any call that changes the audience.
        if !self.opts.allow_mass_delete && !removes.is_empty() {
            if kept == 0 && adds.is_empty() {
                return Err(Error::Input(format!(
                    "sync {}: model {} is empty, so every member of audience {name:?} ({}) would be removed. \
                     Nothing was sent. If that is intended, run again with --allow-mass-delete",
                    sync.name,
                    sync.model,
                    removes.len()
                )));
            }
            let pct = removes.len() as f64 * 100.0 / members.max(1) as f64;
            if pct > sync.max_delete_pct {
                return Err(Error::Input(format!(
                    "sync {}: {} of {members} members of audience {name:?} would be removed ({pct:.1}%), more than \
                     max_delete_pct = {}. Nothing was sent. Check model {}; if this is intended, run again with \
                     --allow-mass-delete",
                    sync.name,
                    removes.len(),
                    sync.max_delete_pct,
                    sync.model
                )));
            }
        }
        if self.opts.dry_run {
            if let Ok(mut samples) = self.samples.lock() {
                for (row, action) in adds
                    .iter()
                    .map(|r| (r, "add"))
                    .chain(removes.iter().map(|r| (r, "remove")))
                    .take(SAMPLES)
                {
                    samples.push(Sample {
                        key: row.key.clone().unwrap_or_default(),
                        action,
                        before: Default::default(),
                        after: Default::default(),
                    });
                }
            }
            self.add(|c| {
                c.created = adds.len() as u64;
                c.archived = removes.len() as u64;
            });
            return Ok(());
        }
        self.log.append(&rejects).await?;
        if adds.is_empty() && removes.is_empty() {
            return Ok(());
        }
        let audience = match aud.audience(&sync.object, &name, true).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                return Err(Error::Internal(format!(
                    "{vendor} did not create audience {name:?}"
                )));
            }
            Err(e) => return Err(self.dest.stop_error(e)),
        };
        tracing::info!(sync = %sync.name, audience = %audience, add = adds.len(), remove = removes.len(), "keeping audience {name:?}");
        let lookup_batch = sync
            .batch_size
            .min(self.dest.capabilities().max_batch)
            .max(1);
        let per_call = aud.max_members().max(1).min(lookup_batch);
        for part in adds.chunks(per_call) {
            if self.stopped() {
                self.add(|c| c.not_sent += part.len() as u64);
                continue;
            }
            self.log.check()?;
            let logs = self.add_members(aud, &audience, unique, part).await;
            self.log.append(&logs).await?;
        }
        for part in removes.chunks(aud.max_members().max(1)) {
            if self.stopped() {
                self.add(|c| c.not_sent += part.len() as u64);
                continue;
            }
            self.log.check()?;
            let ids: Vec<String> = part.iter().filter_map(|r| r.crm_id.clone()).collect();
            let logs = match aud.remove(&audience, &sync.object, &ids).await {
                Ok(fates) => self.member_logs("remove", part, fates),
                Err(e) => self.members_failed("remove", part, e),
            };
            self.log.append(&logs).await?;
        }
        Ok(())
    }

    /// Look one batch of new members up, then add them.
    async fn add_members(
        &self,
        aud: &dyn super::destination::Audiences,
        audience: &str,
        unique: bool,
        part: &[Row],
    ) -> Vec<LogRow> {
        let sync = self.sync;
        let keys: Vec<String> = part.iter().filter_map(|r| r.key.clone()).collect();
        let found = match self
            .dest
            .lookup(&sync.object, &sync.key_property, unique, &keys, &[])
            .await
        {
            Ok(f) => f,
            Err(e) => return self.members_failed("add", part, e),
        };
        let mut logs = Vec::new();
        let mut ready: Vec<(&Row, String)> = Vec::new();
        for r in part {
            let key = r.key.clone().unwrap_or_default();
            let nk = self.dest.normalize_key(&key);
            let reject = |category: &str, message: String| {
                let mut l = LogRow::error(Some(&key), "add", "rejected", category, &message);
                l.hash = r.hash.clone();
                l
            };
            if let Some(why) = found.unresolved.get(&nk) {
                logs.push(reject("LOOKUP_UNRESOLVED", why.clone()));
                continue;
            }
            match found.found.get(&nk).map(Vec::as_slice) {
                Some([e]) => ready.push((r, e.id.clone())),
                Some(many) if many.len() > 1 => logs.push(reject(
                    "AMBIGUOUS_MATCH",
                    format!(
                        "{} CRM records have {} = {key}: merge them, or match on a unique property",
                        many.len(),
                        sync.key_property
                    ),
                )),
                _ => logs.push(reject(
                    "OBJECT_NOT_FOUND",
                    format!(
                        "no {} record has {} = {key}: an audience adds existing records only; create them with a field sync first",
                        sync.object, sync.key_property
                    ),
                )),
            }
        }
        self.add(|c| c.rejected += logs.len() as u64);
        if ready.is_empty() {
            return logs;
        }
        let ids: Vec<String> = ready.iter().map(|(_, id)| id.clone()).collect();
        let rows: Vec<Row> = ready
            .iter()
            .map(|(r, id)| Row {
                crm_id: Some(id.clone()),
                ..(*r).clone()
            })
            .collect();
        let more = match aud.add(audience, &sync.object, &ids).await {
            Ok(fates) => self.member_logs("add", &rows, fates),
            Err(e) => self.members_failed("add", &rows, e),
        };
        logs.extend(more);
        logs
    }

    /// Log rows of a membership call's per-id outcomes.
    fn member_logs(
        &self,
        operation: &'static str,
        rows: &[Row],
        fates: Vec<(String, Fate)>,
    ) -> Vec<LogRow> {
        let by_id: HashMap<String, Fate> = fates.into_iter().collect();
        rows.iter()
            .map(|r| {
                let key = r.key.clone().unwrap_or_default();
                let id = r.crm_id.clone().unwrap_or_default();
                let mut l = match by_id.get(&id) {
                    Some(Fate::Written(_)) => {
                        self.add(|c| {
                            if operation == "add" {
                                c.created += 1
                            } else {
                                c.archived += 1
                            }
                        });
                        LogRow::ok(&key, operation, Some(id.clone()), false)
                    }
                    Some(Fate::Refused(f)) => {
                        self.add(|c| {
                            if f.transient {
                                c.failed += 1
                            } else {
                                c.rejected += 1
                            }
                        });
                        let mut l = LogRow::error(
                            Some(&key),
                            operation,
                            if f.transient { "failed" } else { "rejected" },
                            &f.category,
                            &f.message,
                        );
                        l.response = f.response.clone();
                        l
                    }
                    // Not mentioned: sent again next run (membership calls
                    // are idempotent).
                    Some(Fate::Unknown(_)) | None => {
                        self.add(|c| c.failed += 1);
                        LogRow::error(
                            Some(&key),
                            operation,
                            "failed",
                            "NO_RESULT",
                            by_id
                                .get(&id)
                                .and_then(|f| match f {
                                    Fate::Unknown(w) => Some(w.as_str()),
                                    _ => None,
                                })
                                .unwrap_or("the reply did not mention this record"),
                        )
                    }
                };
                l.crm_id = Some(id);
                l.hash = r.hash.clone();
                l
            })
            .collect()
    }

    /// A membership call that failed as a whole.
    fn members_failed(&self, operation: &'static str, rows: &[Row], e: CallError) -> Vec<LogRow> {
        if matches!(e, CallError::Auth { .. } | CallError::DailyLimit) {
            self.add(|c| c.not_sent += rows.len() as u64);
            self.set_stop(e);
            return Vec::new();
        }
        let transient = matches!(e, CallError::Transient { .. });
        self.add(|c| {
            if transient {
                c.failed += rows.len() as u64
            } else {
                c.rejected += rows.len() as u64
            }
        });
        rows.iter()
            .map(|r| {
                let mut l = LogRow::error(
                    r.key.as_deref(),
                    operation,
                    if transient { "failed" } else { "rejected" },
                    &e.category(),
                    &e.message(),
                );
                l.crm_id = r.crm_id.clone();
                l.hash = r.hash.clone();
                l
            })
            .collect()
    }
}
