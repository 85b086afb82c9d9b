//! The destination contract is small: an in-memory CRM in a few dozen
//! lines (below, `Memory`) is a destination the syncer diffs, batches,
//! logs and resumes against like HubSpot.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry::http::CallError;
use ferry::sync::config::Sync;
use ferry::sync::destination::{
    Account, Capabilities, Destination, Existing, Fate, Lookup, Op, Outcome, Outgoing, Written,
};
use ferry::sync::{SyncOptions, Syncer};

use super::sync::{SCORES, model, project, rows};

/// A record: its id and properties.
type Record = (String, BTreeMap<String, String>);

/// Records by key. Writes at most 7 records a call.
#[derive(Default)]
struct Memory {
    records: Mutex<BTreeMap<String, Record>>,
    calls: Mutex<u64>,
}

struct Handle(Arc<Memory>);

impl Account for Handle {
    fn destination(&self, _sync: &Sync) -> Box<dyn Destination> {
        Box::new(Handle(self.0.clone()))
    }
}

#[async_trait]
impl Destination for Handle {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            vendor: "memory",
            ops: &[Op::Upsert],
            max_batch: 7,
            max_bytes: None,
            max_in_flight: 2,
            id_columns: &["id"],
        }
    }

    async fn prepare(&self, _: &str, _: &str, _: &[String]) -> ferry::Result<bool> {
        Ok(true)
    }

    async fn lookup(
        &self,
        _: &str,
        _: &str,
        _: bool,
        keys: &[String],
        _: &[String],
    ) -> Result<Lookup, CallError> {
        let records = self.0.records.lock().unwrap();
        let mut found = HashMap::new();
        for k in keys {
            if let Some((id, properties)) = records.get(k) {
                let e = Existing {
                    id: id.clone(),
                    properties: properties.clone(),
                    created_at: None,
                };
                found.insert(k.clone(), vec![e]);
            }
        }
        Ok(Lookup {
            found,
            unresolved: HashMap::new(),
        })
    }

    async fn write(
        &self,
        _: &str,
        _: Op,
        _: &str,
        rows: &[Outgoing],
    ) -> Result<Vec<Outcome>, CallError> {
        assert!(rows.len() <= 7, "the syncer kept to max_batch");
        *self.0.calls.lock().unwrap() += 1;
        let mut records = self.0.records.lock().unwrap();
        let next = records.len();
        Ok(rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let created = !records.contains_key(&r.key);
                let entry = records
                    .entry(r.key.clone())
                    .or_insert_with(|| (format!("m{}", next + i), BTreeMap::new()));
                entry.1.extend(r.properties.clone());
                Outcome {
                    key: r.key.clone(),
                    fate: Fate::Written(Written {
                        id: entry.0.clone(),
                        created,
                    }),
                }
            })
            .collect())
    }

    fn usage(&self) -> (u64, u64) {
        (*self.0.calls.lock().unwrap(), 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_in_a_few_dozen_lines_is_synced_like_hubspot() {
    let tmp = tempfile::tempdir().unwrap();
    // The HubSpot profile in ferry.toml is never opened: the test's
    // account stands in for the destination `hubspot`.
    let dir = project(tmp.path(), "http://127.0.0.1:9", SCORES);
    let mut data = rows(30, "a");
    model(&dir, "scores", &data);
    let memory = Arc::new(Memory::default());
    let run = |memory: Arc<Memory>| {
        let dir = dir.clone();
        async move {
            let project = ferry::project::Project::load(&dir).unwrap();
            let lake = ferry::lake::Lake::open(&project.lake, &project.dir).unwrap();
            Syncer::new(&project, lake)
                .with_account("hubspot", Arc::new(Handle(memory)))
                .run("scores", &SyncOptions::default())
                .await
                .unwrap()
        }
    };
    let first = run(memory.clone()).await;
    assert_eq!(
        (first.counts.created, first.api_calls),
        (30, 5),
        "30 rows in calls of 7: {first:?}"
    );
    let stored = memory.records.lock().unwrap().clone();
    assert_eq!(stored.len(), 30);
    assert_eq!(stored["person3@example.com"].1["ferry_lead_score"], "21");

    // Only what changed is sent, and nothing when nothing did.
    data[3].1 = Some("99".into());
    model(&dir, "scores", &data);
    let second = run(memory.clone()).await;
    assert_eq!(
        (
            second.counts.updated,
            second.counts.unchanged,
            second.api_calls
        ),
        (1, 29, 1)
    );
    assert_eq!(
        memory.records.lock().unwrap()["person3@example.com"].1["ferry_lead_score"],
        "99"
    );
    let third = run(memory.clone()).await;
    assert_eq!((third.counts.unchanged, third.api_calls), (30, 0));
}
