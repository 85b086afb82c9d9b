//! The diff's comparison: the snapshot and the model, read as streams
//! (`sql/sync/diff.sql`), met in a compact index of their match keys.
//!
//! A hash join of the two would hold one side's rows (key, hash, record id,
//! as Arrow strings) in its table: 2.5 GiB for 10M keys. Here a key is held
//! as 44 bytes: two 64-bit xxHashes of its text, the confirmed values' md5,
//! the model's rows with it, and a few flags. The rows to send stay in the
//! streams and are decoded as they pass; only the changed rows wait, as
//! compact Arrow batches, for their record ids (read last, from the
//! snapshot).
//!
//! Keys are compared by their 128-bit hash: two different keys are taken
//! for one only if both 64-bit hashes collide, about once in 10^25 diffs of
//! 10M keys, far rarer than the md5 of the values the snapshot already
//! trusts.
//!
//! One bucket ([`super::Part`]) is compared in three reads:
//! 1. the snapshot's keys: one entry each, with its hash and created flag;
//! 2. the model's rows: each finds or makes its key's entry and counts
//!    itself. A key's first row is then `add` (not confirmed), `unchanged`
//!    (same hash) or `change`; adds, changes and the rows of duplicated keys
//!    wait to the end of the read, since a later row may duplicate their
//!    key. A duplicated key whose first row was `unchanged` (and so was not
//!    kept) has its rows read again afterwards, all of them rejected;
//! 3. the snapshot's record ids: keys no model row had are removed, and the
//!    waiting changes get their record's id.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, LargeStringArray, RecordBatch, StringArray,
    StringViewArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::ArrayFormatter;
use datafusion::execution::context::SessionContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use futures::StreamExt;
use twox_hash::XxHash64;

use super::{DiffOp, Part, Row, Tally};
use crate::error::{Error, Result};

/// No waiting changed row.
const NONE: u32 = u32::MAX;

/// In the snapshot: the CRM confirmed this key.
const CONFIRMED: u8 = 1;
/// This sync created the key's record.
const CREATED: u8 = 2;
/// The snapshot has no hash for the key: the model's row counts as
/// unchanged, as SQL's `NULL <> hash` never says changed.
const NO_HASH: u8 = 4;
/// The snapshot's hash is not an md5 this diff wrote: never equal.
const BAD_HASH: u8 = 8;
/// The key's first model row was unchanged (counted, not kept).
const FIRST_UNCHANGED: u8 = 16;
/// The key is duplicated and its first row was not kept: all its rows are
/// read again to be rejected.
const REREAD: u8 = 32;

/// Bytes one key takes in the index: its 32-byte slot with the table's
/// spare room (40), and its share of a changed row's record id and
/// waiting values at 10% changed. Measured with the bench's 10M keys of
/// two values (`cargo bench --profile dev -- sync`): 759-782 MiB in all.
pub const BYTES_PER_KEY: u64 = 64;

/// Bytes a row waiting in the diff takes (a new key's row waits to the
/// end of the model's read): the key, its hash and each value as short
/// plain strings, with their offsets.
pub fn waiting_bytes(columns: usize) -> u64 {
    96 + 24 * columns as u64
}

/// One key's slot: 32 bytes, so that no slot straddles two cache lines.
#[derive(Clone, Copy, Default)]
struct Entry {
    /// The key's hash ([`key_hash`]); all zeros is an empty slot.
    key: [u32; 4],
    /// The confirmed values' md5, its first 64 bits ([`md5_prefix`]).
    hash: u64,
    /// The model's rows with this key (low 24 bits, saturating) and the
    /// flags (high 8).
    meta: u32,
    /// The position of its changed row among those waiting, or [`NONE`].
    slot: u32,
}

const ROWS: u32 = (1 << 24) - 1;

impl Entry {
    fn rows(&self) -> u32 {
        self.meta & ROWS
    }

    fn flags(&self) -> u8 {
        (self.meta >> 24) as u8
    }

    fn has(&self, flag: u8) -> bool {
        self.flags() & flag != 0
    }

    fn set(&mut self, flag: u8) {
        self.meta |= (flag as u32) << 24;
    }

    fn count_row(&mut self) {
        if self.rows() < ROWS {
            self.meta += 1;
        }
    }
}

/// The key's two 64-bit xxHashes (seeds 0 and 1); never all zeros, which
/// marks an empty slot.
fn key_hash(key: &str) -> [u32; 4] {
    let a = XxHash64::oneshot(0, key.as_bytes());
    let b = XxHash64::oneshot(1, key.as_bytes());
    let h = [a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32];
    if h == [0; 4] { [1, 0, 0, 0] } else { h }
}

/// Each byte's value as a lowercase hex digit, or 0xff.
const HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The first 64 bits of a lowercase hex md5, as `ferry_values_md5` writes
/// it; `None` for any other text. Two different values are taken for one
/// only if their md5s agree in these 64 bits: once in 10^19 changed rows.
fn md5_prefix(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let (mut out, mut bad) = (0u64, 0u8);
    for &c in &b[..16] {
        let d = HEX[c as usize];
        bad |= d;
        out = out << 4 | (d & 15) as u64;
    }
    for &c in &b[16..] {
        bad |= HEX[c as usize];
    }
    (bad & 0xf0 == 0).then_some(out)
}

/// The key index: an open-addressing table of [`Entry`]s, probed linearly
/// from the slot the key's hash maps to, at most 80% full.
///
/// Lookups are the diff's cost: each is a read of memory far from the
/// last. A batch's keys are hashed first and their home slots touched in
/// one sweep ([`Index::touch`]), so the reads overlap instead of waiting
/// one by one: 10M inserts and 10M finds take 0.8 s each instead of
/// 2.1 and 2.2 s through a general hash map over a separate entry store.
struct Index {
    slots: Vec<Entry>,
    len: usize,
    /// What the index holds, counted in the engine's memory pool.
    memory: MemoryReservation,
}

impl Index {
    fn new(ctx: &SessionContext, expected: usize) -> Result<Self> {
        let memory =
            MemoryConsumer::new("sync diff: key index").register(&ctx.runtime_env().memory_pool);
        let mut index = Index {
            slots: Vec::new(),
            len: 0,
            memory,
        };
        index.resize(expected.max(1024) * 5 / 4)?;
        Ok(index)
    }

    fn resize(&mut self, cap: usize) -> Result<()> {
        let bytes = cap * std::mem::size_of::<Entry>();
        self.memory.try_grow(bytes)?;
        let old = std::mem::replace(&mut self.slots, vec![Entry::default(); cap]);
        for e in old.iter().filter(|e| e.key != [0; 4]) {
            let mut p = self.home(&e.key);
            while self.slots[p].key != [0; 4] {
                p = if p + 1 == cap { 0 } else { p + 1 };
            }
            self.slots[p] = *e;
        }
        self.memory.shrink(old.len() * std::mem::size_of::<Entry>());
        Ok(())
    }

    fn home(&self, key: &[u32; 4]) -> usize {
        let h = key[0] as u64 | (key[1] as u64) << 32;
        ((h as u128 * self.slots.len() as u128) >> 64) as usize
    }

    /// Fetch a key's home slot ahead of its probe: the fetches of the keys
    /// ahead overlap instead of waiting one by one.
    fn touch(&self, key: Option<&[u32; 4]>) {
        if let Some(k) = key {
            prefetch(&self.slots[self.home(k)]);
        }
    }

    /// Probe `rows` of a batch's `keys` in order, each key's slot read
    /// [`AHEAD`] keys before its probe.
    fn each(
        &mut self,
        keys: &[Option<[u32; 4]>],
        rows: &[usize],
        mut f: impl FnMut(&mut Index, usize, [u32; 4]) -> Result<()>,
    ) -> Result<()> {
        for &r in rows.iter().take(AHEAD) {
            self.touch(keys[r].as_ref());
        }
        for (n, &r) in rows.iter().enumerate() {
            if let Some(&ahead) = rows.get(n + AHEAD) {
                self.touch(keys[ahead].as_ref());
            }
            if let Some(key) = keys[r] {
                f(self, r, key)?;
            }
        }
        Ok(())
    }

    fn find(&self, key: &[u32; 4]) -> Option<usize> {
        let cap = self.slots.len();
        let mut p = self.home(key);
        loop {
            let e = &self.slots[p];
            if e.key == *key {
                return Some(p);
            }
            if e.key == [0; 4] {
                return None;
            }
            p = if p + 1 == cap { 0 } else { p + 1 };
        }
    }

    /// The key's slot, made with `hash` and `flags` when it is new.
    fn find_or_insert(&mut self, key: [u32; 4], hash: u64, flags: u8) -> Result<usize> {
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            self.resize(self.slots.len() * 2)?;
        }
        let cap = self.slots.len();
        let mut p = self.home(&key);
        loop {
            let e = &mut self.slots[p];
            if e.key == key {
                return Ok(p);
            }
            if e.key == [0; 4] {
                *e = Entry {
                    key,
                    hash,
                    meta: (flags as u32) << 24,
                    slot: NONE,
                };
                self.len += 1;
                return Ok(p);
            }
            p = if p + 1 == cap { 0 } else { p + 1 };
        }
    }
}

/// A text column of any of Arrow's string layouts.
enum Texts {
    Utf8(StringArray),
    Large(LargeStringArray),
    View(StringViewArray),
}

impl Texts {
    fn of(col: &ArrayRef) -> Result<Self> {
        Ok(match col.data_type() {
            DataType::Utf8 => Texts::Utf8(col.as_string::<i32>().clone()),
            DataType::LargeUtf8 => Texts::Large(col.as_string::<i64>().clone()),
            DataType::Utf8View => Texts::View(col.as_string_view().clone()),
            _ => Texts::Utf8(
                arrow::compute::cast(col, &DataType::Utf8)?
                    .as_string::<i32>()
                    .clone(),
            ),
        })
    }

    fn get(&self, i: usize) -> Option<&str> {
        match self {
            Texts::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Texts::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Texts::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

fn flags_of(created: &BooleanArray, i: usize) -> u8 {
    if created.is_valid(i) && created.value(i) {
        CREATED
    } else {
        0
    }
}

fn booleans(col: &ArrayRef) -> Result<BooleanArray> {
    Ok(arrow::compute::cast(col, &DataType::Boolean)?
        .as_boolean()
        .clone())
}

/// Rows of a model batch (`_key`, `_v0`.., `_hash`) taken out of it, with
/// string views copied into plain strings: a view batch holds every buffer
/// its views point into, the whole read's pages.
fn take_compact(batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
    let idx = UInt32Array::from(rows.to_vec());
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut cols = Vec::with_capacity(batch.num_columns());
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let taken = arrow::compute::take(c.as_ref(), &idx, None)?;
        let plain = match taken.data_type() {
            DataType::Utf8View => Some(DataType::Utf8),
            DataType::BinaryView => Some(DataType::Binary),
            _ => None,
        };
        let taken = match plain {
            Some(t) => arrow::compute::cast(&taken, &t)?,
            None => taken,
        };
        fields.push(Field::new(f.name(), taken.data_type().clone(), true));
        cols.push(taken);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// Model rows waiting for the end of a read: a compact batch and each
/// row's key hash.
struct Waiting {
    batch: RecordBatch,
    keys: Vec<[u32; 4]>,
}

/// Decodes model rows (`_key`, `_v0`.., `_hash`) into [`Row`]s.
struct Decoder<'a> {
    batch: &'a RecordBatch,
    keys: Texts,
    hashes: Texts,
    values: Vec<ArrayFormatter<'a>>,
}

impl<'a> Decoder<'a> {
    fn new(
        batch: &'a RecordBatch,
        columns: usize,
        options: &'a arrow::util::display::FormatOptions<'a>,
    ) -> Result<Self> {
        let values = (0..columns)
            .map(|i| ArrayFormatter::try_new(batch.column(1 + i).as_ref(), options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Decoder {
            batch,
            keys: Texts::of(batch.column(0))?,
            hashes: Texts::of(batch.column(1 + columns))?,
            values,
        })
    }

    fn row(&self, r: usize, op: DiffOp, reason: Option<String>, created: bool) -> Row {
        Row {
            key: self.keys.get(r).map(str::to_string),
            op,
            reason,
            hash: self.hashes.get(r).map(str::to_string),
            crm_id: None,
            created,
            values: self
                .values
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    (!self.batch.column(1 + i).is_null(r)).then(|| f.value(r).to_string())
                })
                .collect(),
        }
    }
}

fn duplicate_reason(key_name: &str, n: u32, key: &str) -> String {
    format!("duplicate match key: {n} rows have {key_name} = {key}")
}

/// How many keys ahead of its probe a key's slot is fetched
/// ([`Index::touch`]).
const AHEAD: usize = 32;

/// Ask the CPU to bring the cache line holding `value` closer, without
/// waiting for it. An index probe waits on memory (about 250 ns a key
/// here, mostly address translation); a plain read ahead of it stalls the
/// thread as the probe would, a prefetch does not (x86_64's `PREFETCHT0`;
/// elsewhere nothing).
#[inline]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is SSE, which every x86_64 CPU has; it only
    // hints the cache and never reads, writes or faults, whatever the
    // address (here a live reference).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            value as *const T as *const i8,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

async fn stream(
    ctx: &SessionContext,
    sql: &str,
) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
    Ok(ctx.sql(sql).await?.execute_stream().await?)
}

/// The index is split in [`SHARDS`] by a bit of the key's hash, each
/// probed on its own thread: the probes are the diff's cost, and they wait
/// on memory, not on each other.
const SHARDS: usize = 2;

fn shard_of(key: &[u32; 4]) -> usize {
    (key[3] >> 31) as usize % SHARDS
}

/// One shard: its keys, and what its rows added to the tally.
struct Shard {
    index: Index,
    tally: Tally,
    rereads: bool,
    /// Confirmed keys the model has.
    matched: usize,
}

/// Run `f` on every shard with the rows of `keys` whose key falls in it,
/// the shards at once (the first here, the others on scoped threads).
fn per_shard<T: Send>(
    shards: &mut [Shard],
    keys: &[Option<[u32; 4]>],
    f: impl Fn(&mut Shard, &[usize]) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); shards.len()];
    for (r, k) in keys.iter().enumerate() {
        if let Some(k) = k {
            rows[shard_of(k)].push(r);
        }
    }
    std::thread::scope(|s| {
        let f = &f;
        let mut each = shards.iter_mut().zip(&rows);
        let (first, first_rows) = each.next().expect("a shard");
        let others: Vec<_> = each.map(|(sh, r)| s.spawn(move || f(sh, r))).collect();
        let mut out = vec![f(first, first_rows)?];
        for h in others {
            out.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?);
        }
        Ok(out)
    })
}

/// Compare one key bucket: every row counted in `tally`, every row but the
/// unchanged handed to `keep`.
pub async fn compare(
    ctx: &SessionContext,
    part: &Part,
    columns: usize,
    key_name: &str,
    expected_keys: usize,
    tally: &mut Tally,
    keep: &mut impl FnMut(Row) -> Result<()>,
) -> Result<()> {
    let options = super::options();
    let mut shards = (0..SHARDS)
        .map(|_| {
            Ok(Shard {
                index: Index::new(ctx, expected_keys.div_ceil(SHARDS))?,
                tally: Tally::default(),
                rereads: false,
                matched: 0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let hash_keys = |keys: &Texts, n: usize, blank_is_none: bool| -> Vec<Option<[u32; 4]>> {
        (0..n)
            .map(|r| {
                keys.get(r)
                    .filter(|k| !(blank_is_none && k.is_empty()))
                    .map(key_hash)
            })
            .collect()
    };
    let find = |shards: &[Shard], key: &[u32; 4]| -> Option<(usize, usize)> {
        let s = shard_of(key);
        shards[s].index.find(key).map(|i| (s, i))
    };

    // 1. The confirmed keys. A key-less confirmed row is never matched:
    // read 3 removes it.
    let mut keyless = 0;
    let mut s = stream(ctx, &part.snapshot_keys).await?;
    while let Some(batch) = s.next().await {
        let batch = batch?;
        let keys = hash_keys(&Texts::of(batch.column(0))?, batch.num_rows(), false);
        keyless += keys.iter().filter(|k| k.is_none()).count();
        let hashes = Texts::of(batch.column(1))?;
        let created = booleans(batch.column(2))?;
        per_shard(&mut shards, &keys, |sh, rows| {
            sh.index.each(&keys, rows, |index, r, key| {
                let (hash, flags) = match hashes.get(r) {
                    None => (0, NO_HASH),
                    Some(h) => md5_prefix(h).map_or((0, BAD_HASH), |h| (h, 0)),
                };
                index.find_or_insert(key, hash, CONFIRMED | flags | flags_of(&created, r))?;
                Ok(())
            })
        })?;
    }
    drop(s);
    let confirmed: usize = shards.iter().map(|s| s.index.len).sum();

    // 2. The model's rows.
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut blank_matched = false;
    let mut s = stream(ctx, &part.model_rows).await?;
    while let Some(batch) = s.next().await {
        let batch = batch?;
        let texts = Texts::of(batch.column(0))?;
        let keys = hash_keys(&texts, batch.num_rows(), true);
        let hashes = Texts::of(batch.column(1 + columns))?;
        let kept = per_shard(&mut shards, &keys, |sh, rows| {
            let mut kept = Vec::new();
            let Shard {
                index,
                tally,
                rereads,
                matched,
            } = sh;
            index.each(&keys, rows, |index, r, key| {
                let i = index.find_or_insert(key, 0, 0)?;
                let e = &mut index.slots[i];
                e.count_row();
                let created = e.has(CREATED);
                let keep_row = match e.rows() {
                    1 if !e.has(CONFIRMED) => true,
                    1 => {
                        *matched += 1;
                        let same = e.has(NO_HASH)
                            || (!e.has(BAD_HASH)
                                && hashes.get(r).and_then(md5_prefix) == Some(e.hash));
                        if same {
                            e.set(FIRST_UNCHANGED);
                            tally.add(DiffOp::Unchanged, created);
                        }
                        !same
                    }
                    2 if e.has(FIRST_UNCHANGED) => {
                        e.set(REREAD);
                        *rereads = true;
                        tally.sub(DiffOp::Unchanged, created);
                        false
                    }
                    _ => !e.has(REREAD),
                };
                if keep_row {
                    kept.push((r as u32, key));
                }
                Ok(())
            })?;
            Ok(kept)
        })?;
        let blank: Vec<usize> = (0..batch.num_rows())
            .filter(|&r| keys[r].is_none())
            .collect();
        // A blank key matches a confirmed blank key (a join on `=` would),
        // which then is not removed; a NULL key matches nothing.
        blank_matched |= blank.iter().any(|&r| texts.get(r).is_some());
        if !blank.is_empty() {
            let d = Decoder::new(&batch, columns, &options)?;
            for r in blank {
                let reason = format!("empty match key: {key_name} is null or blank");
                tally.add(DiffOp::Reject, false);
                keep(d.row(r, DiffOp::Reject, Some(reason), false))?;
            }
        }
        let mut kept: Vec<(u32, [u32; 4])> = kept.into_iter().flatten().collect();
        if !kept.is_empty() {
            kept.sort_unstable_by_key(|k| k.0);
            let rows: Vec<u32> = kept.iter().map(|k| k.0).collect();
            let batch = take_compact(&batch, &rows)?;
            shards[0]
                .index
                .memory
                .try_grow(batch.get_array_memory_size())?;
            waiting.push(Waiting {
                batch,
                keys: kept.into_iter().map(|k| k.1).collect(),
            });
        }
    }
    drop(s);

    // The adds and rejects are final; the changes wait for their ids. (No
    // key is added from here on, so a slot stays where it is.)
    let mut changes: Vec<(RecordBatch, Vec<(usize, usize)>)> = Vec::new();
    let mut slots = 0u32;
    for w in waiting {
        let d = Decoder::new(&w.batch, columns, &options)?;
        let (mut changed, mut at) = (Vec::new(), Vec::new());
        for (r, key) in w.keys.iter().enumerate() {
            let (sh, i) = find(&shards, key)
                .ok_or_else(|| Error::Internal("a waiting diff row lost its key".into()))?;
            let e = shards[sh].index.slots[i];
            let created = e.has(CREATED);
            if e.rows() > 1 {
                if !e.has(REREAD) {
                    let reason = duplicate_reason(key_name, e.rows(), d.keys.get(r).unwrap_or(""));
                    tally.add(DiffOp::Reject, created);
                    keep(d.row(r, DiffOp::Reject, Some(reason), created))?;
                }
            } else if !e.has(CONFIRMED) {
                tally.add(DiffOp::Add, false);
                keep(d.row(r, DiffOp::Add, None, false))?;
            } else {
                shards[sh].index.slots[i].slot = slots;
                slots += 1;
                changed.push(r as u32);
                at.push((sh, i));
            }
        }
        let size = w.batch.get_array_memory_size();
        if !changed.is_empty() {
            let batch = take_compact(&w.batch, &changed)?;
            shards[0]
                .index
                .memory
                .try_grow(batch.get_array_memory_size())?;
            changes.push((batch, at));
        }
        shards[0].index.memory.shrink(size);
    }

    // 2b. Duplicated keys whose first row was unchanged: every row, again.
    if shards.iter().any(|s| s.rereads) {
        let mut s = stream(ctx, &part.model_rows).await?;
        while let Some(batch) = s.next().await {
            let batch = batch?;
            let texts = Texts::of(batch.column(0))?;
            let d = Decoder::new(&batch, columns, &options)?;
            for (r, key) in hash_keys(&texts, batch.num_rows(), true).iter().enumerate() {
                let Some((sh, i)) = key.as_ref().and_then(|k| find(&shards, k)) else {
                    continue;
                };
                let e = shards[sh].index.slots[i];
                if e.has(REREAD) {
                    let created = e.has(CREATED);
                    let reason = duplicate_reason(key_name, e.rows(), texts.get(r).unwrap_or(""));
                    tally.add(DiffOp::Reject, created);
                    keep(d.row(r, DiffOp::Reject, Some(reason), created))?;
                }
            }
        }
    }

    // 3. Record ids: the removed keys, and the changed rows' records. A
    // steady run, nothing changed and nothing gone, needs neither.
    let matched: usize = shards.iter().map(|s| s.matched).sum();
    if slots == 0 && keyless == 0 && matched == confirmed {
        for sh in &shards {
            tally.merge(&sh.tally);
        }
        return Ok(());
    }
    let mut ids: Vec<Option<String>> = vec![None; slots as usize];
    shards[0]
        .index
        .memory
        .try_grow(ids.len() * std::mem::size_of::<Option<String>>())?;
    let mut s = stream(ctx, &part.snapshot_ids).await?;
    while let Some(batch) = s.next().await {
        let batch = batch?;
        let texts = Texts::of(batch.column(0))?;
        let keys = hash_keys(&texts, batch.num_rows(), false);
        let crm_ids = Texts::of(batch.column(1))?;
        let created = booleans(batch.column(2))?;
        // Per shard: the rows whose key left the model, and the changed
        // rows' slots.
        let found = per_shard(&mut shards, &keys, |sh, rows| {
            let (mut gone, mut slotted) = (Vec::new(), Vec::new());
            sh.index.each(&keys, rows, |index, r, key| {
                match index.find(&key).map(|i| index.slots[i]) {
                    Some(e) if e.rows() > 0 => {
                        if e.slot != NONE {
                            slotted.push((e.slot, r));
                        }
                    }
                    _ => gone.push(r),
                }
                Ok(())
            })?;
            Ok((gone, slotted))
        })?;
        let mut gone: Vec<usize> = (0..batch.num_rows())
            .filter(|&r| keys[r].is_none())
            .collect();
        for (g, slotted) in found {
            gone.extend(
                g.into_iter()
                    .filter(|&r| !(blank_matched && texts.get(r) == Some(""))),
            );
            for (slot, r) in slotted {
                let id = crm_ids.get(r).map(str::to_string);
                shards[0]
                    .index
                    .memory
                    .try_grow(id.as_ref().map_or(0, |s| s.len()))?;
                ids[slot as usize] = id;
            }
        }
        for r in gone {
            let c = flags_of(&created, r) != 0;
            tally.add(DiffOp::Remove, c);
            keep(Row {
                key: texts.get(r).map(str::to_string),
                op: DiffOp::Remove,
                reason: None,
                hash: None,
                crm_id: crm_ids.get(r).map(str::to_string),
                created: c,
                values: vec![None; columns],
            })?;
        }
    }
    drop(s);

    for (batch, at) in changes {
        let d = Decoder::new(&batch, columns, &options)?;
        for (r, &(sh, i)) in at.iter().enumerate() {
            let e = shards[sh].index.slots[i];
            let created = e.has(CREATED);
            let mut row = d.row(r, DiffOp::Change, None, created);
            row.crm_id = ids[e.slot as usize].take();
            tally.add(DiffOp::Change, created);
            keep(row)?;
        }
    }
    for sh in &shards {
        tally.merge(&sh.tally);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_text_parses_only_as_md5_writes_it() {
        let h = "0123456789abcdef0123456789abcdef";
        assert_eq!(md5_prefix(h), Some(0x0123456789abcdef));
        assert_eq!(md5_prefix(&h.to_uppercase()), None);
        assert_eq!(md5_prefix(&h[1..]), None);
        assert_eq!(md5_prefix("é123456789abcdef0123456789abcde"), None);
        assert_eq!(md5_prefix(""), None);
    }

    /// The diff of the registered `model` (`email`, `a`) against `snap`,
    /// its rows dropped.
    async fn compare_only(ctx: &SessionContext, expected: usize) -> Result<()> {
        let part = super::super::diff_part("model", "email", true, &["a".into()], "snap", 1, 0)?;
        let mut tally = Tally::default();
        compare(
            ctx,
            &part,
            1,
            "email",
            expected,
            &mut tally,
            &mut |_| Ok(()),
        )
        .await
    }

    async fn diff(ctx: &SessionContext, model: &str, snapshot: &str) -> (Vec<Row>, Tally) {
        ctx.register_table("model", ctx.sql(model).await.unwrap().into_view())
            .unwrap();
        ctx.register_table("snap", ctx.sql(snapshot).await.unwrap().into_view())
            .unwrap();
        let part =
            super::super::diff_part("model", "email", true, &["a".into()], "snap", 1, 0).unwrap();
        let (mut rows, mut tally) = (Vec::new(), Tally::default());
        compare(ctx, &part, 1, "email", 16, &mut tally, &mut |r| {
            rows.push(r);
            Ok(())
        })
        .await
        .unwrap();
        (rows, tally)
    }

    /// A join on `=` matched a blank model key with a blank confirmed key:
    /// the row is rejected and the confirmed record is not removed. Only a
    /// model without a blank key removes it.
    #[tokio::test]
    async fn a_confirmed_blank_key_is_not_removed_while_the_model_has_one() {
        let snapshot =
            "select * from (values ('', 'id-blank'), ('a@x.io', 'id-a')) as t(_key, _crm_id)";
        let snapshot = format!(
            "select _key, ferry_values_md5('1') as _hash, _crm_id, true as _created from ({snapshot})"
        );
        for (model, removed) in [
            (
                "select * from (values ('  ', '1'), ('a@x.io', '1')) as t(email, a)",
                0,
            ),
            ("select * from (values ('a@x.io', '1')) as t(email, a)", 1),
        ] {
            let ctx = SessionContext::new();
            crate::engine::functions::register(&ctx);
            let (rows, tally) = diff(&ctx, model, &snapshot).await;
            assert_eq!(tally.count(DiffOp::Remove), removed, "{model}");
            let gone: Vec<_> = rows.iter().filter(|r| r.op == DiffOp::Remove).collect();
            if removed == 1 {
                assert_eq!(gone[0].key.as_deref(), Some(""));
                assert_eq!(gone[0].crm_id.as_deref(), Some("id-blank"));
            }
        }
    }

    /// Thousands of keys in batches of 64, into an index sized for 16: it
    /// grows (rehashing every slot) while rows wait, probes wrap around,
    /// and every count and record id still comes out right.
    #[tokio::test]
    async fn an_index_that_outgrows_its_first_size_loses_nothing() {
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_batch_size(64),
        );
        crate::engine::functions::register(&ctx);
        let (rows, tally) = diff(
            &ctx,
            "select concat('K', cast(value as varchar), '@X.io') as email, \
             case when value % 2 = 0 then 'same' else 'new' end as a from generate_series(1, 5000)",
            "select concat('k', cast(value as varchar), '@x.io') as _key, ferry_values_md5('same') as _hash, \
             concat('id', cast(value as varchar)) as _crm_id, value % 3 = 0 as _created from generate_series(1, 4000) \
             union all select concat('g', cast(value as varchar)), ferry_values_md5('same'), 'id-gone', false \
             from generate_series(1, 500)",
        )
        .await;
        assert_eq!(tally.count(DiffOp::Unchanged), 2000);
        assert_eq!(tally.count(DiffOp::Change), 2000);
        assert_eq!(tally.count(DiffOp::Add), 1000);
        assert_eq!(tally.count(DiffOp::Remove), 500);
        assert_eq!(tally.count(DiffOp::Reject), 0);
        for r in &rows {
            let n: Option<u64> = r
                .key
                .as_deref()
                .and_then(|k| k.strip_prefix('k'))
                .and_then(|k| k.strip_suffix("@x.io"))
                .and_then(|k| k.parse().ok());
            match r.op {
                DiffOp::Change => {
                    let n = n.expect("a known key");
                    assert_eq!(r.crm_id, Some(format!("id{n}")));
                    assert_eq!(r.created, n.is_multiple_of(3));
                    assert_eq!(r.values, vec![Some("new".to_string())]);
                }
                DiffOp::Add => assert!(n.is_some_and(|n| n > 4000), "{r:?}"),
                DiffOp::Remove => assert_eq!(r.crm_id.as_deref(), Some("id-gone")),
                _ => panic!("{r:?}"),
            }
        }
    }

    /// Most runs change nothing: they read the snapshot's keys and the
    /// model, and never the record ids (a third read of the snapshot). The
    /// ids here fail to compute if anything reads them.
    #[tokio::test]
    async fn a_steady_run_never_reads_record_ids() {
        let ctx = SessionContext::new();
        crate::engine::functions::register(&ctx);
        let snapshot = "select _key, ferry_values_md5(a) as _hash, cast(_key as bigint) as _crm_id, false as _created \
             from (values ('a@x.io', '1'), ('b@x.io', '2')) as t(_key, a)";
        let (rows, tally) = diff(
            &ctx,
            "select * from (values ('a@x.io', '1'), ('B@x.io', '2')) as t(email, a)",
            snapshot,
        )
        .await;
        assert!(rows.is_empty());
        assert_eq!(tally.count(DiffOp::Unchanged), 2);
        // A change needs its record id: the read that fails is made.
        ctx.deregister_table("model").unwrap();
        ctx.deregister_table("snap").unwrap();
        ctx.register_table(
            "model",
            ctx.sql("select * from (values ('a@x.io', '9'), ('b@x.io', '2')) as t(email, a)")
                .await
                .unwrap()
                .into_view(),
        )
        .unwrap();
        ctx.register_table("snap", ctx.sql(snapshot).await.unwrap().into_view())
            .unwrap();
        let err = compare_only(&ctx, 16).await.expect_err("the ids are read");
        assert!(err.to_string().contains("Cannot cast"), "{err}");
    }

    /// A duplicated key whose first row was unchanged is not kept when it
    /// is read (it is only counted): every row of that key must still come
    /// out rejected, once, and the unchanged count must give it back.
    #[tokio::test]
    async fn a_duplicate_after_an_unchanged_row_rejects_every_row_of_its_key() {
        let ctx = SessionContext::new();
        crate::engine::functions::register(&ctx);
        let hash = "md5(concat_ws(',', concat(cast(character_length('1') as varchar), ':', '1')))";
        let (rows, tally) = diff(
            &ctx,
            "select * from (values ('a@x.io', '1', 1), ('A@x.io', '2', 2), ('b@x.io', '1', 3), ('a@x.io', '1', 4)) \
             as t(email, a, n) order by n",
            &format!(
                "select 'a@x.io' as _key, {hash} as _hash, 'id-a' as _crm_id, true as _created \
                 union all select 'b@x.io', {hash}, 'id-b', false"
            ),
        )
        .await;
        let mut got: Vec<_> = rows
            .iter()
            .map(|r| (r.key.clone(), r.op, r.reason.clone(), r.values.clone()))
            .collect();
        got.sort_by(|x, y| x.3.cmp(&y.3));
        let reason = Some("duplicate match key: 3 rows have email = a@x.io".to_string());
        let a = Some("a@x.io".to_string());
        assert_eq!(
            got,
            vec![
                (
                    a.clone(),
                    DiffOp::Reject,
                    reason.clone(),
                    vec![Some("1".into())]
                ),
                (
                    a.clone(),
                    DiffOp::Reject,
                    reason.clone(),
                    vec![Some("1".into())]
                ),
                (a.clone(), DiffOp::Reject, reason, vec![Some("2".into())]),
            ]
        );
        assert_eq!(tally.count(DiffOp::Unchanged), 1);
        assert_eq!(tally.of(DiffOp::Reject, true), 3);
        assert_eq!(tally.model_rows(), 4);
    }

    /// The index is counted in the engine's pool: past the limit the diff
    /// fails with the pool's error (which names the step and the setting),
    /// instead of growing unseen.
    #[tokio::test]
    async fn the_index_is_refused_past_the_memory_limit() {
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        let rt = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(64 * 1024)))
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(Default::default(), rt);
        crate::engine::functions::register(&ctx);
        ctx.register_table(
            "model",
            ctx.sql("select 'a' as email, 'x' as a")
                .await
                .unwrap()
                .into_view(),
        )
        .unwrap();
        ctx.register_table(
            "snap",
            ctx.sql("select 'a' as _key, 'h' as _hash, 'i' as _crm_id, false as _created")
                .await
                .unwrap()
                .into_view(),
        )
        .unwrap();
        let err = compare_only(&ctx, 100_000)
            .await
            .expect_err("over the limit");
        let text = err.to_string();
        assert!(text.contains("sync diff: key index"), "{text}");
        assert!(text.contains("memory_limit"), "{text}");
    }

    #[test]
    fn the_two_key_hashes_differ() {
        let k = key_hash("a@x.io");
        assert_ne!([k[0], k[1]], [k[2], k[3]]);
        assert_ne!(key_hash("a@x.io"), key_hash("b@x.io"));
    }
}
