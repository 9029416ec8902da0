//! The engine shared by [`TtlStore`](crate::TtlStore) and [`TimerStore`](crate::TimerStore):
//! entries that carry a time (expiry or due time, millis), with an index ordered by that time so
//! that "everything due by `now`" costs O(due), not O(all).
//!
//! Two column families in one RocksDB instance, written in the same batches:
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `default` (changelogged) | entry key | `[1u8][time: i64 BE][payload]` |
//! | `by_time` (local only) | `[time as order-preserving u64 BE][entry key]` | empty |
//!
//! Only the entries go to the changelog; restore rebuilds the index from them. Index entries
//! that disagree with their entry (possible only after a crash under at-least-once) are dropped
//! when met.

use crate::error::{Error, Result};
use crate::rocks::{PRIMARY, StoreCore, StoreIter, prefix_successor};
use crate::types::RestoreBatch;

pub(crate) const COLUMNS: &[&str] = &[rocksdb::DEFAULT_COLUMN_FAMILY_NAME, "by_time"];
const INDEX: usize = 1;
const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 9;

/// Encodes an entry value: `[1][time BE][payload]`.
pub(crate) fn encode_entry(time: i64, payload: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER_LEN + payload.len());
    value.push(FORMAT_V1);
    value.extend_from_slice(&time.to_be_bytes());
    value.extend_from_slice(payload);
    value
}

/// Decodes an entry value into `(time, payload)`.
pub(crate) fn decode_entry(value: &[u8]) -> Result<(i64, &[u8]), &'static str> {
    if value.len() < HEADER_LEN {
        return Err("value is shorter than its 9-byte header");
    }
    if value[0] != FORMAT_V1 {
        return Err("unknown value format version");
    }
    let mut time = [0; 8];
    time.copy_from_slice(&value[1..HEADER_LEN]);
    Ok((i64::from_be_bytes(time), &value[HEADER_LEN..]))
}

/// Big-endian bytes of `time` with the sign bit flipped, so byte order is numeric order.
fn time_bytes(time: i64) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

fn index_key(time: i64, key: &[u8]) -> Vec<u8> {
    let mut index = Vec::with_capacity(8 + key.len());
    index.extend_from_slice(&time_bytes(time));
    index.extend_from_slice(key);
    index
}

fn decode_index_key(index: &[u8]) -> Option<(i64, &[u8])> {
    let (time, key) = index.split_first_chunk::<8>()?;
    Some(((u64::from_be_bytes(*time) ^ (1 << 63)) as i64, key))
}

/// An entry with its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimedEntry {
    pub(crate) key: Vec<u8>,
    pub(crate) time: i64,
    pub(crate) payload: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct TimedCore {
    core: StoreCore,
}

impl TimedCore {
    pub(crate) fn new(core: StoreCore) -> Self {
        TimedCore { core }
    }

    pub(crate) fn core(&self) -> &StoreCore {
        &self.core
    }

    pub(crate) fn core_mut(&mut self) -> &mut StoreCore {
        &mut self.core
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<(i64, Vec<u8>)> {
        decode_entry(value)
            .map(|(time, payload)| (time, payload.to_vec()))
            .map_err(|reason| Error::CorruptEntry {
                store: self.core.name().to_owned(),
                path: self.core.path().to_owned(),
                key: key.to_vec(),
                reason,
            })
    }

    /// `(time, payload)` of `key`, pending writes included, whatever the time.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<(i64, Vec<u8>)>> {
        self.core
            .get_with(PRIMARY, key, |v| v.map(|v| self.decode(key, v)))?
            .transpose()
    }

    /// Sets `key` to `(time, payload)`, moving its index entry; returns the previous entry.
    pub(crate) fn set(
        &mut self,
        key: Vec<u8>,
        time: i64,
        payload: &[u8],
        logged: bool,
    ) -> Result<Option<(i64, Vec<u8>)>> {
        let previous = self.get(&key)?;
        if let Some((old_time, _)) = &previous
            && *old_time != time
        {
            self.core
                .write(INDEX, index_key(*old_time, &key), None, false);
        }
        self.core
            .write(INDEX, index_key(time, &key), Some(Vec::new()), false);
        self.core
            .write(PRIMARY, key, Some(encode_entry(time, payload)), logged);
        Ok(previous)
    }

    /// Removes `key` and its index entry; returns the removed entry.
    pub(crate) fn remove(&mut self, key: &[u8], logged: bool) -> Result<Option<(i64, Vec<u8>)>> {
        let previous = self.get(key)?;
        if let Some((time, _)) = &previous {
            self.core.write(INDEX, index_key(*time, key), None, false);
            self.core.write(PRIMARY, key.to_vec(), None, logged);
        }
        Ok(previous)
    }

    /// Removes and returns up to `limit` entries with `time <= now`, in `(time, key)` order,
    /// queueing a changelog tombstone for each.
    pub(crate) fn pop_due(&mut self, now: i64, limit: usize) -> Result<Vec<TimedEntry>> {
        let mut due = Vec::new();
        let mut stale = Vec::new();
        {
            let upper = now.checked_add(1).map(time_bytes);
            for item in self
                .core
                .iter(INDEX, None, upper.as_ref().map(|u| &u[..]))?
            {
                if due.len() >= limit {
                    break;
                }
                let (index, _) = item?;
                match self.check_index(&index)? {
                    Some(entry) => due.push(entry),
                    None => stale.push(index),
                }
            }
        }
        for index in stale {
            self.core.write(INDEX, index, None, false);
        }
        for entry in &due {
            self.core
                .write(INDEX, index_key(entry.time, &entry.key), None, false);
            self.core.write(PRIMARY, entry.key.clone(), None, true);
        }
        Ok(due)
    }

    /// The entry an index key points to, if the entry still has that time.
    fn check_index(&self, index: &[u8]) -> Result<Option<TimedEntry>> {
        let Some((time, key)) = decode_index_key(index) else {
            return Ok(None);
        };
        Ok(match self.get(key)? {
            Some((entry_time, payload)) if entry_time == time => Some(TimedEntry {
                key: key.to_vec(),
                time,
                payload,
            }),
            _ => None,
        })
    }

    /// The earliest time of any entry.
    pub(crate) fn next_time(&self) -> Result<Option<i64>> {
        for item in self.core.iter(INDEX, None, None)? {
            let (index, _) = item?;
            if let Some(entry) = self.check_index(&index)? {
                return Ok(Some(entry.time));
            }
        }
        Ok(None)
    }

    /// Entries whose key starts with `prefix`, in key order, whatever their time.
    pub(crate) fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<TimedEntry>> {
        let upper = prefix_successor(prefix);
        let iter: StoreIter<'_> = self.core.iter(PRIMARY, Some(prefix), upper.as_deref())?;
        iter.map(|item| -> Result<TimedEntry> {
            let (key, value) = item?;
            let (time, payload) = self.decode(&key, &value)?;
            Ok(TimedEntry { key, time, payload })
        })
        .collect()
    }

    /// Replays changelog records: each goes through `set`/`remove` (so the index follows) into
    /// the pending set, which is then written in one batch.
    pub(crate) fn restore_batch<K, V>(
        &mut self,
        records: impl IntoIterator<Item = (i64, K, Option<V>)>,
    ) -> Result<RestoreBatch>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        self.core.ensure_restorable()?;
        let mut stats = RestoreBatch::default();
        for (offset, key, value) in records {
            if self.core.applied_offset().max(stats.last_offset) >= Some(offset) {
                stats.skipped += 1;
                continue;
            }
            let key = key.as_ref();
            let applied = match value {
                Some(value) => match decode_entry(value.as_ref()) {
                    Ok((time, payload)) => self.set(key.to_vec(), time, payload, false).map(drop),
                    Err(reason) => Err(Error::CorruptChangelog {
                        store: self.core.name().to_owned(),
                        offset,
                        reason,
                    }),
                },
                None => self.remove(key, false).map(drop),
            };
            if let Err(e) = applied {
                self.core.abort();
                return Err(e);
            }
            stats.applied += 1;
            stats.last_offset = Some(offset);
        }
        if stats.applied > 0 {
            self.core.finish_restore(stats.last_offset)?;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_encoding_round_trips_and_rejects_garbage() {
        for time in [i64::MIN, -1, 0, 1, 600_000, i64::MAX] {
            let value = encode_entry(time, b"payload");
            assert_eq!(decode_entry(&value), Ok((time, &b"payload"[..])));
        }
        assert!(decode_entry(b"short").is_err());
        assert!(decode_entry(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn index_keys_sort_by_time_then_key_including_negative_times() {
        let mut keys = [
            index_key(5, b"b"),
            index_key(-3, b"z"),
            index_key(5, b"a"),
            index_key(i64::MIN, b"m"),
            index_key(i64::MAX, b"a"),
            index_key(0, b""),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| decode_index_key(k).map(|(t, k)| (t, k.to_vec())))
            .collect();
        assert_eq!(
            decoded,
            vec![
                Some((i64::MIN, b"m".to_vec())),
                Some((-3, b"z".to_vec())),
                Some((0, vec![])),
                Some((5, b"a".to_vec())),
                Some((5, b"b".to_vec())),
                Some((i64::MAX, b"a".to_vec())),
            ]
        );
    }
}
