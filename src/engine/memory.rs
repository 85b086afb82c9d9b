//! How much memory queries may use, and where they spill past it.
//!
//! One memory pool serves the whole process: every session ferry makes
//! (the concurrent models of a run, the sync's diff, `ferry query`) draws
//! from it, so `[engine] memory_limit` bounds them together rather than each
//! one. Operators that can spill (sorts, aggregations, sort-merge joins,
//! repartitions) write to the spill folder when their share runs out; the
//! rest (a hash join's build side) fail with a message that names the
//! setting. The pool is DataFusion's `FairSpillPool`, so several spilling
//! models share the limit evenly instead of the first one starving the
//! others, wrapped in a `TrackConsumersPool` so an error names the largest
//! consumers.
//!
//! The default limit is half of the machine's memory (the cgroup's limit
//! when there is one, as in a container), leaving the rest to what the pool
//! does not count: Parquet and Delta buffers, the allocator, the OS cache.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};

use crate::error::{Error, Result};

/// `[engine]` resolved: the memory limit in bytes and the spill settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Bytes every query of the process may hold together.
    pub memory_limit: u64,
    /// Where spill files go (`None`: the OS temporary folder).
    pub spill_dir: Option<PathBuf>,
    /// Spilling allowed at all; without it a query past the limit fails.
    pub spill: bool,
    /// The most the spill files may hold at once.
    pub max_spill: u64,
    /// A Ballista cluster model builds run on (`df://host:port`;
    /// [`super::cluster`]); `None`: this process.
    pub url: Option<String>,
    /// Partitions each stage of a cluster query is split into (`None`:
    /// this machine's cores).
    pub cluster_partitions: Option<usize>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            memory_limit: machine_memory() / 2,
            spill_dir: None,
            spill: true,
            max_spill: 100 * GIB,
            url: None,
            cluster_partitions: None,
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

impl EngineSettings {
    /// Settings from `[engine]`'s values: `memory_limit` as a size
    /// (`"4GiB"`, `"512MB"`) or a share of the machine (`"50%"`),
    /// `max_spill` as a size. Errors say what is expected.
    pub fn resolve(
        memory_limit: Option<&str>,
        spill_dir: Option<PathBuf>,
        spill: Option<bool>,
        max_spill: Option<&str>,
        url: Option<&str>,
    ) -> std::result::Result<EngineSettings, (&'static str, String)> {
        let mut s = EngineSettings::default();
        if let Some(u) = url {
            s.url = Some(super::cluster::parse_url(u).map_err(|e| ("url", e))?);
        }
        if let Some(m) = memory_limit {
            s.memory_limit = match m.trim().strip_suffix('%') {
                Some(p) => {
                    let share: f64 = p.trim().parse().ok().filter(|v| *v > 0.0 && *v <= 100.0).ok_or((
                        "memory_limit",
                        format!("{m:?} is not a share of memory: write a percentage from 1% to 100%, or a size such as \"8GiB\""),
                    ))?;
                    (machine_memory() as f64 * share / 100.0) as u64
                }
                None => parse_size(m).map_err(|e| ("memory_limit", e))?,
            };
            if s.memory_limit < 16 * MIB {
                return Err((
                    "memory_limit",
                    format!(
                        "{m:?} is below 16MiB, too little to run a query; give at least \"256MiB\""
                    ),
                ));
            }
        }
        if let Some(m) = max_spill {
            s.max_spill = parse_size(m).map_err(|e| ("max_spill", e))?;
        }
        s.spill_dir = spill_dir;
        s.spill = spill.unwrap_or(true);
        Ok(s)
    }

    /// One line for `-v` and the run's log: the limit and the spill folder.
    pub fn describe(&self) -> String {
        let spill = match (&self.spill, &self.spill_dir) {
            (false, _) => "no spilling".to_string(),
            (true, Some(d)) => format!(
                "spilling to {} (at most {})",
                d.display(),
                size(self.max_spill)
            ),
            (true, None) => format!(
                "spilling to the OS temporary folder (at most {})",
                size(self.max_spill)
            ),
        };
        format!("memory limit {} ({spill})", size(self.memory_limit))
    }
}

/// A size with a unit: `"512MiB"`, `"4GB"`, `"2g"`, `"1048576"` (bytes).
/// Binary and decimal units are both taken as binary (as most tools do for
/// memory).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || {
        format!("{text:?} is not a size: write a number and a unit, such as \"512MiB\" or \"8GiB\"")
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => 1024 * GIB,
        _ => return Err(bad()),
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// `4.0 GiB`, `512.0 MiB`.
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= GIB {
        format!("{:.1} GiB", b / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.1} MiB", b / MIB as f64)
    } else {
        format!("{:.1} KiB", b / KIB as f64)
    }
}

/// The machine's memory: the cgroup's limit when one is set (containers),
/// else the physical memory; 8 GiB when neither can be read.
pub fn machine_memory() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let physical = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * KIB)
    });
    match (cgroup, physical) {
        (Some(c), Some(p)) => c.min(p),
        (Some(c), None) => c,
        (None, Some(p)) => p,
        (None, None) => 8 * GIB,
    }
}

/// Spill files merged in one pass; more are merged in several.
const MERGE_FAN_IN: usize = 8;

static SETTINGS: OnceLock<EngineSettings> = OnceLock::new();
static POOL: OnceLock<Arc<dyn MemoryPool>> = OnceLock::new();

/// Set the process's engine settings (once: a project's `[engine]`, before
/// its first session). A second call with other settings is refused, since
/// sessions already running draw from the first pool.
pub fn configure(settings: EngineSettings) -> Result<()> {
    let set = SETTINGS.get_or_init(|| settings.clone());
    if *set != settings {
        return Err(Error::Internal(format!(
            "the engine was configured twice ({} then {})",
            set.describe(),
            settings.describe()
        )));
    }
    tracing::debug!("engine: {}", set.describe());
    Ok(())
}

/// The settings in force (the defaults until [`configure`]).
pub fn settings() -> &'static EngineSettings {
    SETTINGS.get_or_init(EngineSettings::default)
}

fn pool() -> Arc<dyn MemoryPool> {
    POOL.get_or_init(|| {
        let limit = usize::try_from(settings().memory_limit).unwrap_or(usize::MAX);
        Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(limit),
            NonZeroUsize::new(5).expect("5 is not zero"),
        ))
    })
    .clone()
}

/// A runtime for one session: the process's memory pool, and a disk
/// manager over the spill folder. Each session has its own object store
/// registry (sessions over different lakes coexist in one process).
pub fn runtime() -> Result<Arc<RuntimeEnv>> {
    let s = settings();
    let mode = match (&s.spill, &s.spill_dir) {
        (false, _) => DiskManagerMode::Disabled,
        (true, Some(dir)) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            DiskManagerMode::Directories(vec![dir.clone()])
        }
        (true, None) => DiskManagerMode::OsTmpDirectory,
    };
    RuntimeEnvBuilder::new()
        .with_memory_pool(pool())
        .with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_mode(mode)
                .with_max_temp_directory_size(s.max_spill)
                // A merge reads a batch from every spill file at once: left
                // unbounded (DataFusion's default), a big sort's merge needs
                // more memory than the limit it spilled under.
                .with_max_spill_merge_fan_in(MERGE_FAN_IN),
        )
        .build_arc()
        .map_err(Error::Query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("4GB"), Ok(4 * GIB));
        assert_eq!(parse_size(" 2 g "), Ok(2 * GIB));
        assert_eq!(parse_size("1.5GiB"), Ok(3 * GIB / 2));
        assert_eq!(parse_size("1048576"), Ok(MIB));
        assert!(
            parse_size("lots")
                .unwrap_err()
                .contains("\"lots\" is not a size")
        );
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn a_share_of_memory_and_too_small_a_limit() {
        let half = EngineSettings::resolve(Some("50%"), None, None, None, None).unwrap();
        assert_eq!(half.memory_limit, machine_memory() / 2);
        let (key, msg) = EngineSettings::resolve(Some("150%"), None, None, None, None).unwrap_err();
        assert_eq!(key, "memory_limit");
        assert!(msg.contains("percentage"), "{msg}");
        let (_, msg) = EngineSettings::resolve(Some("1MiB"), None, None, None, None).unwrap_err();
        assert!(msg.contains("below 16MiB"), "{msg}");
        assert!(machine_memory() >= 64 * MIB);
    }

    proptest! {
        /// Whatever is written, a size is read or refused: never a panic.
        #[test]
        fn parse_size_never_panics(text in "\\PC{0,24}") {
            let _ = parse_size(&text);
            let _ = EngineSettings::resolve(Some(&text), None, None, Some(&text), None);
        }

        #[test]
        fn written_sizes_read_back(n in 0u64..1_000_000, unit in prop::sample::select(vec!["", "KiB", "MiB", "GiB"])) {
            let scale = match unit { "" => 1, "KiB" => KIB, "MiB" => MIB, _ => GIB };
            prop_assert_eq!(parse_size(&format!("{n}{unit}")), Ok(n * scale));
        }
    }
}
