//! Leases: one holder at a time for a job (a sync), on any lake store.
//!
//! A lease is one small JSON object in the lake. It is taken by
//! create-if-absent, or, when the holder's lease expired (or was released,
//! or its process is gone from this very machine), by a conditional update
//! on the version that was read: of two processes taking over the same dead
//! lease, exactly one wins. The holder renews the expiry in the background
//! (every third of the time to live) by conditional update; if a renewal
//! finds another version, the lease was lost and [`Lease::check`], which the
//! holder calls before each commit, fails from then on. Release is a
//! conditional update to `released` (never a delete, which could remove a
//! successor's lease).
//!
//! Each acquisition increments the lease's `generation`, a sequence that
//! only grows whatever the machines' clocks say; syncs order their state
//! files by it.
//!
//! A store that silently overwrites (an S3 bucket without conditional
//! writes configured) cannot hold a lease: [`probe`] checks the store once
//! per process and refuses with the setting to change.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lake::Lake;

/// How long a lease lasts without renewal.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// What a lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseBody {
    /// Who holds it (a run id).
    pub holder: String,
    pub host: String,
    /// This boot of this machine (Linux `boot_id`): a cloned or restarted
    /// machine is another machine, whatever its host name.
    pub boot: String,
    pub pid: u32,
    /// Grows by one at each acquisition.
    pub generation: u64,
    /// Milliseconds since the epoch.
    pub expires_at_ms: i64,
    pub released: bool,
    pub since: String,
}

#[derive(Debug)]
struct Held {
    body: LeaseBody,
    version: UpdateVersion,
    /// When the lease runs out, by this process's monotonic clock.
    deadline: Instant,
    lost: Option<String>,
}

/// A lease this process holds.
pub struct Lease {
    lake: Lake,
    path: Path,
    ttl: Duration,
    held: Arc<Mutex<Held>>,
    renewer: tokio::task::JoinHandle<()>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// This boot of this machine, and this process's pid namespace: a process
/// in another container (its own pids, maybe the same host name under host
/// networking) is on another "machine" for pid checks.
pub(crate) fn boot() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().to_string())
        .unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{boot} {ns}")
}

/// Whether process `pid` runs on this machine (Linux: `/proc`).
pub(crate) fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

fn version_of(r: &object_store::PutResult) -> UpdateVersion {
    UpdateVersion {
        e_tag: r.e_tag.clone(),
        version: r.version.clone(),
    }
}

impl Lease {
    /// Take the lease at `path` for `holder`. `what` names the job in
    /// errors. `force` takes it even from a live holder (`--break-lock`).
    /// `first_generation` is the generation of a lease created new.
    pub async fn acquire(
        lake: &Lake,
        path: Path,
        holder: &str,
        what: &str,
        ttl: Duration,
        force: bool,
        first_generation: u64,
    ) -> Result<Lease> {
        probe(lake).await?;
        let store = lake.store().clone();
        let body = |generation: u64| LeaseBody {
            holder: holder.to_string(),
            host: host(),
            boot: boot(),
            pid: std::process::id(),
            generation,
            expires_at_ms: now_ms() + ttl.as_millis() as i64,
            released: false,
            since: chrono::Utc::now().to_rfc3339(),
        };
        for _ in 0..5 {
            let current = match store.get(&path).await {
                Ok(g) => {
                    let meta = g.meta.clone();
                    let bytes = g.bytes().await?;
                    Some((
                        serde_json::from_slice::<LeaseBody>(&bytes).ok(),
                        UpdateVersion {
                            e_tag: meta.e_tag,
                            version: meta.version,
                        },
                    ))
                }
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let (mine, mode) = match current {
                None => (body(first_generation), PutMode::Create),
                Some((old, version)) => {
                    if let Some(old) = &old {
                        let expired = old.released || old.expires_at_ms < now_ms();
                        let same_machine = old.host == host() && old.boot == boot();
                        let dead = same_machine && !alive(old.pid);
                        if !(expired || dead || force) {
                            return Err(Error::Input(format!(
                                "{what} is already running (run {}, pid {} on {}, since {}; its lease runs to {}). \
                                 Wait for it to finish; if that process is gone for good, run again with --break-lock",
                                old.holder,
                                old.pid,
                                old.host,
                                old.since,
                                chrono::DateTime::from_timestamp_millis(old.expires_at_ms)
                                    .map(|t| t.to_rfc3339())
                                    .unwrap_or_default()
                            )));
                        }
                        if !old.released && !expired {
                            tracing::warn!(holder = %old.holder, "taking over the lease of {what}: its process is gone");
                        }
                    }
                    let generation = old.map_or(first_generation, |o| {
                        (o.generation + 1).max(first_generation)
                    });
                    (body(generation), PutMode::Update(version))
                }
            };
            let bytes = serde_json::to_vec(&mine).map_err(|e| Error::Internal(e.to_string()))?;
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            match store.put_opts(&path, PutPayload::from(bytes), opts).await {
                Ok(r) => {
                    let held = Arc::new(Mutex::new(Held {
                        body: mine,
                        version: version_of(&r),
                        deadline: Instant::now() + ttl,
                        lost: None,
                    }));
                    let renewer =
                        tokio::spawn(renew(lake.clone(), path.clone(), ttl, held.clone()));
                    return Ok(Lease {
                        lake: lake.clone(),
                        path,
                        ttl,
                        held,
                        renewer,
                    });
                }
                // Another process won the race: look again.
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Input(format!(
            "could not take the lease of {what} at {path}: other processes kept taking it first"
        )))
    }

    /// The lease's generation (grows by one at each acquisition).
    pub fn generation(&self) -> u64 {
        self.held.lock().map(|h| h.body.generation).unwrap_or(0)
    }

    /// Fails if the lease is no longer this process's (taken over, or not
    /// renewed in time): call before each commit.
    pub fn check(&self) -> Result<()> {
        let h = self
            .held
            .lock()
            .map_err(|_| Error::Internal("lease state poisoned".into()))?;
        if let Some(why) = &h.lost {
            return Err(Error::Input(format!(
                "this run lost its lease ({why}); it stopped before committing more. Another run holds {}",
                self.path
            )));
        }
        // A margin: the commit must land before anyone may take over.
        if Instant::now() + self.ttl / 6 >= h.deadline {
            return Err(Error::Context {
                message: format!(
                    "this run could not renew its lease {} in time (the lake did not answer); it stopped before committing more",
                    self.path
                ),
                party: crate::error::Party::Storage,
                retryable: true,
            });
        }
        Ok(())
    }

    /// A handle that says whether the lease is still held, for a watcher
    /// that stops the job when it is not (the lease was taken over, or could
    /// not be renewed in time).
    pub fn watch(&self) -> LeaseWatch {
        LeaseWatch {
            held: self.held.clone(),
            ttl: self.ttl,
        }
    }

    /// Give the lease up (a conditional update to `released`).
    pub async fn release(self) -> Result<()> {
        self.renewer.abort();
        let (body, version) = {
            let h = self
                .held
                .lock()
                .map_err(|_| Error::Internal("lease state poisoned".into()))?;
            if h.lost.is_some() {
                return Ok(());
            }
            let mut b = h.body.clone();
            b.released = true;
            b.expires_at_ms = 0;
            (b, h.version.clone())
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
        let opts = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        match self
            .lake
            .store()
            .put_opts(&self.path, PutPayload::from(bytes.clone()), opts)
            .await
        {
            Ok(_) => Ok(()),
            // A renewal in flight when the renewer was stopped may have
            // moved the version: if the lease is still ours, release that.
            Err(object_store::Error::Precondition { .. }) => {
                let g = self.lake.store().get(&self.path).await?;
                let version = UpdateVersion {
                    e_tag: g.meta.e_tag.clone(),
                    version: g.meta.version.clone(),
                };
                let now: Option<LeaseBody> = serde_json::from_slice(&g.bytes().await?).ok();
                if now.is_some_and(|b| b.holder == body.holder && b.generation == body.generation) {
                    let opts = PutOptions {
                        mode: PutMode::Update(version),
                        ..Default::default()
                    };
                    match self
                        .lake
                        .store()
                        .put_opts(&self.path, PutPayload::from(bytes), opts)
                        .await
                    {
                        Ok(_) | Err(object_store::Error::Precondition { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// See [`Lease::watch`].
#[derive(Clone)]
pub struct LeaseWatch {
    held: Arc<Mutex<Held>>,
    ttl: Duration,
}

impl LeaseWatch {
    /// Still held, with time to commit before anyone may take over.
    pub fn held(&self) -> bool {
        self.held
            .lock()
            .map(|h| h.lost.is_none() && Instant::now() + self.ttl / 6 < h.deadline)
            .unwrap_or(false)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

async fn renew(lake: Lake, path: Path, ttl: Duration, held: Arc<Mutex<Held>>) {
    let every = (ttl / 3).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let (mut body, version) = match held.lock() {
            Ok(h) if h.lost.is_none() => (h.body.clone(), h.version.clone()),
            _ => return,
        };
        body.expires_at_ms = now_ms() + ttl.as_millis() as i64;
        let Ok(bytes) = serde_json::to_vec(&body) else {
            return;
        };
        let sent = Instant::now();
        let opts = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        let r = lake
            .store()
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await;
        let Ok(mut h) = held.lock() else { return };
        match r {
            Ok(r) => {
                h.version = version_of(&r);
                h.body = body;
                h.deadline = sent + ttl;
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => {
                tracing::error!(%path, "lease lost: another process took it over");
                h.lost = Some("another process took it over".into());
                return;
            }
            // Transient: try again at the next tick; check() fails once the
            // deadline comes near without a renewal.
            Err(e) => tracing::warn!(%path, "could not renew the lease: {e}"),
        }
    }
}

static PROBED: std::sync::LazyLock<Mutex<HashSet<String>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashSet::new()));

/// Check once per process that the lake's store honours create-if-absent
/// and conditional update, which leases (and write-once files) rely on.
pub async fn probe(lake: &Lake) -> Result<()> {
    if PROBED
        .lock()
        .map(|p| p.contains(lake.location()))
        .unwrap_or(false)
    {
        return Ok(());
    }
    let store = lake.store();
    let path = Path::from_iter([
        crate::lake::layout::META,
        "probe",
        &uuid::Uuid::now_v7().to_string(),
    ]);
    let refuse = |what: &str| {
        Error::Input(format!(
            "the lake's store at {} does not honour {what}, so two processes could both write what only one may. \
             Nothing was sent. On S3, set conditional writes in [lake.options]: aws_conditional_put = \"etag\" \
             (S3, MinIO, R2 support it); on other stores, use one that supports conditional writes",
            lake.location()
        ))
    };
    let create = |b: &'static str| {
        store.put_opts(
            &path,
            PutPayload::from(b),
            PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            },
        )
    };
    let first = create("1").await?;
    let twice = create("2").await;
    let result = match twice {
        Err(object_store::Error::AlreadyExists { .. }) => {
            let stale = UpdateVersion {
                e_tag: Some("\"ferry-probe-stale\"".into()),
                version: None,
            };
            let wrong = store
                .put_opts(
                    &path,
                    PutPayload::from("3"),
                    PutOptions {
                        mode: PutMode::Update(stale),
                        ..Default::default()
                    },
                )
                .await;
            match wrong {
                Err(object_store::Error::Precondition { .. }) => {
                    let right = store
                        .put_opts(
                            &path,
                            PutPayload::from("4"),
                            PutOptions {
                                mode: PutMode::Update(version_of(&first)),
                                ..Default::default()
                            },
                        )
                        .await;
                    match right {
                        Ok(_) => Ok(()),
                        Err(object_store::Error::NotImplemented { .. }) => {
                            Err(refuse("conditional update"))
                        }
                        Err(e) => Err(e.into()),
                    }
                }
                Err(object_store::Error::NotImplemented { .. }) | Ok(_) => {
                    Err(refuse("conditional update (a stale version was accepted)"))
                }
                Err(e) => Err(e.into()),
            }
        }
        Ok(_) => Err(refuse(
            "create-if-absent (a second create overwrote the first)",
        )),
        Err(object_store::Error::NotImplemented { .. }) => Err(refuse("create-if-absent")),
        Err(e) => Err(e.into()),
    };
    let _ = store.delete(&path).await;
    if result.is_ok()
        && let Ok(mut p) = PROBED.lock()
    {
        p.insert(lake.location().to_string());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (tempfile::TempDir, Lake) {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(
            &crate::project::LakeConfig {
                url: "lake".into(),
                options: Default::default(),
            },
            dir.path(),
        )
        .unwrap();
        (dir, lake)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_local_lake_honours_conditional_writes() {
        let (_d, lake) = local();
        probe(&lake).await.unwrap();
        probe(&Lake::memory()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_lease_is_refused_and_a_released_one_taken_with_a_new_generation() {
        let (_d, lake) = local();
        let p = Path::from("_ferry/t/lease");
        let a = Lease::acquire(&lake, p.clone(), "a", "job", DEFAULT_TTL, false, 1)
            .await
            .unwrap();
        assert_eq!(a.generation(), 1);
        let e = Lease::acquire(&lake, p.clone(), "b", "job", DEFAULT_TTL, false, 1)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("already running"), "{e}");
        a.release().await.unwrap();
        let b = Lease::acquire(&lake, p.clone(), "b", "job", DEFAULT_TTL, false, 1)
            .await
            .unwrap();
        assert_eq!(b.generation(), 2);
        b.check().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_whose_lease_was_taken_over_fails_its_next_check() {
        let (_d, lake) = local();
        let p = Path::from("_ferry/t/lease");
        let ttl = Duration::from_millis(300);
        let a = Lease::acquire(&lake, p.clone(), "a", "job", ttl, false, 1)
            .await
            .unwrap();
        let b = Lease::acquire(&lake, p.clone(), "b", "job", ttl, true, 1)
            .await
            .unwrap();
        tokio::time::sleep(ttl).await;
        assert!(a.check().is_err(), "a still believes it holds the lease");
        b.check().unwrap();
    }

    /// Regression: takeover was read-delete-create, so two processes taking
    /// over one dead lock could both win.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_taking_over_a_dead_lease_only_one_wins() {
        let (_d, lake) = local();
        let p = Path::from("_ferry/t/lease");
        // A lease that expired long ago.
        let dead = LeaseBody {
            holder: "dead".into(),
            host: "elsewhere".into(),
            boot: "x".into(),
            pid: 1,
            generation: 7,
            expires_at_ms: 0,
            released: false,
            since: String::new(),
        };
        lake.store()
            .put(&p, PutPayload::from(serde_json::to_vec(&dead).unwrap()))
            .await
            .unwrap();
        for _ in 0..20 {
            let takers = (0..8).map(|i| {
                let lake = lake.clone();
                let p = p.clone();
                tokio::spawn(async move {
                    Lease::acquire(&lake, p, &format!("t{i}"), "job", DEFAULT_TTL, false, 1).await
                })
            });
            let results = futures::future::join_all(takers).await;
            let won: Vec<Lease> = results
                .into_iter()
                .filter_map(|r| r.unwrap().ok())
                .collect();
            assert_eq!(won.len(), 1, "{} processes won one lease", won.len());
            for w in won {
                w.release().await.unwrap();
            }
        }
    }
}
