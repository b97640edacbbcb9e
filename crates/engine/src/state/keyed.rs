//! The live keyed state of one stateful instance.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::checkpoint::{SharedBytes, StateEntry};
use super::routing::KeyRange;
use crate::error::EngineError;
use crate::hash::{key_hash, StableHasher};

/// `key -> value` state owned by the engine on behalf of an operator.
///
/// The operator only ever sees `&mut V` for the key of the tuple it is
/// processing; the engine can therefore snapshot, restore and split the map
/// without the operator's help.
///
/// Beside each value it counts the operator's accesses to the key, so that a
/// scale out can split the range where the *load* halves rather than where
/// the key count does (a few hot keys would otherwise leave one half with
/// most of the work). The counter is halved at every snapshot, so it weighs
/// recent load most: each checkpoint interval counts half as much as the
/// next.
#[derive(Debug)]
pub struct KeyedState<K, V> {
    map: HashMap<K, Slot<V>, BuildHasherDefault<StableHasher>>,
}

/// A value and its recent load.
#[derive(Debug, Default)]
struct Slot<V> {
    value: V,
    /// Accesses since the last snapshot plus half the count before it. An
    /// atomic only because [`KeyedState::snapshot`] decays it through `&self`
    /// (the state is never shared between threads: every access is relaxed,
    /// and the hot path bumps it through `&mut` without any atomic operation).
    load: AtomicU32,
}

impl<K, V> Default for KeyedState<K, V> {
    fn default() -> Self {
        KeyedState {
            map: HashMap::default(),
        }
    }
}

impl<K, V> KeyedState<K, V>
where
    K: Hash + Eq + Serialize + DeserializeOwned,
    V: Default + Serialize + DeserializeOwned,
{
    /// The value for `key`, created with `V::default()` on first use. This
    /// is how the engine hands state to the operator, so it is what counts as
    /// load on the key.
    pub fn get_or_default(&mut self, key: K) -> &mut V {
        let slot = self.map.entry(key).or_default();
        let load = slot.load.get_mut();
        *load = load.saturating_add(1);
        &mut slot.value
    }

    /// The value for `key`, if there is one. Inspection, not processing: it
    /// does not count as load.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|slot| &slot.value)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Encodes every entry with its routing hash and recent load: the
    /// processing-state part of a checkpoint. Halves every key's load
    /// counter, so that the next snapshot weighs the accesses since this one
    /// most.
    pub fn snapshot(&self) -> Result<Vec<StateEntry>, EngineError> {
        // Sorted by hash, a checkpoint is canonical (equal states encode
        // equally) and partitioning keeps each part sorted. Sorting
        // references before encoding moves less memory than sorting entries
        // would, and lays the encoded bytes out in the order the checkpoint
        // is written in.
        let mut sorted: Vec<(u64, &K, &Slot<V>)> = self
            .map
            .iter()
            .map(|(k, slot)| (key_hash(k), k, slot))
            .collect();
        sorted.sort_unstable_by_key(|(hash, _, _)| *hash);
        // Every key and value is encoded into one buffer that the entries
        // share: no allocation per key.
        let mut bytes = Vec::new();
        let mut spans = Vec::with_capacity(sorted.len());
        for (hash, k, slot) in sorted {
            let load = slot.load.load(Ordering::Relaxed);
            slot.load.store(load / 2, Ordering::Relaxed);
            let start = bytes.len();
            encode_into(&mut bytes, k)?;
            let middle = bytes.len();
            encode_into(&mut bytes, &slot.value)?;
            spans.push((hash, load, start..middle, middle..bytes.len()));
        }
        let bytes = SharedBytes::new(bytes)?;
        let mut entries: Vec<StateEntry> = spans
            .into_iter()
            .map(|(hash, load, key, value)| bytes.entry(hash, load, key, value))
            .collect();
        // Distinct keys with equal hashes (rare) go in encoded-key order.
        for run in entries.chunk_by_mut(|a, b| a.hash == b.hash) {
            run.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        }
        Ok(entries)
    }

    /// Rebuilds state from checkpoint entries, refusing entries outside
    /// `range` (they belong to another instance) or with a wrong hash. Keys
    /// keep the load they had, so a restored or split instance can be split
    /// again by load before it has seen much input.
    pub fn restore(entries: &[StateEntry], range: KeyRange) -> Result<Self, EngineError> {
        let mut state = KeyedState::default();
        state.map.reserve(entries.len());
        for entry in entries {
            let key: K = decode(entry.key())?;
            let hash = key_hash(&key);
            if hash != entry.hash {
                return Err(EngineError::Checkpoint(format!(
                    "entry hash {:#x} does not match its key (hash {hash:#x}); \
                     was the checkpoint written by another build?",
                    entry.hash
                )));
            }
            if !range.contains(hash) {
                return Err(EngineError::Checkpoint(format!(
                    "entry hash {hash:#x} is outside the instance's range {range:?}"
                )));
            }
            let slot = Slot {
                value: decode(entry.value())?,
                load: AtomicU32::new(entry.load),
            };
            state.map.insert(key, slot);
        }
        Ok(state)
    }
}

fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), EngineError> {
    bincode::serialize_into(out, value).map_err(|e| EngineError::Checkpoint(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EngineError> {
    bincode::deserialize(bytes).map_err(|e| EngineError::Checkpoint(format!("decode: {e}")))
}
