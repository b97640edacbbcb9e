//! The live keyed state of one stateful instance.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::checkpoint::StateEntry;
use super::routing::KeyRange;
use crate::error::EngineError;
use crate::hash::{key_hash, StableHasher};

/// `key -> value` state owned by the engine on behalf of an operator.
///
/// The operator only ever sees `&mut V` for the key of the tuple it is
/// processing; the engine can therefore snapshot, restore and split the map
/// without the operator's help.
#[derive(Debug)]
pub struct KeyedState<K, V> {
    map: HashMap<K, V, BuildHasherDefault<StableHasher>>,
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
    /// The value for `key`, created with `V::default()` on first use.
    pub fn get_or_default(&mut self, key: K) -> &mut V {
        self.map.entry(key).or_default()
    }

    /// The value for `key`, if there is one.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Encodes every entry with its routing hash: the processing-state part
    /// of a checkpoint.
    pub fn snapshot(&self) -> Result<Vec<StateEntry>, EngineError> {
        let mut entries = Vec::with_capacity(self.map.len());
        for (k, v) in &self.map {
            entries.push(StateEntry {
                hash: key_hash(k),
                key: encode(k)?,
                value: encode(v)?,
            });
        }
        // Sorted by hash, a checkpoint is canonical (equal states encode
        // equally) and partitioning keeps each part sorted.
        entries.sort_unstable_by(|a, b| (a.hash, &a.key).cmp(&(b.hash, &b.key)));
        Ok(entries)
    }

    /// Rebuilds state from checkpoint entries, refusing entries outside
    /// `range` (they belong to another instance) or with a wrong hash.
    pub fn restore(entries: &[StateEntry], range: KeyRange) -> Result<Self, EngineError> {
        let mut state = KeyedState::default();
        for entry in entries {
            let key: K = decode(&entry.key)?;
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
            state.map.insert(key, decode(&entry.value)?);
        }
        Ok(state)
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    bincode::serialize(value).map_err(|e| EngineError::Checkpoint(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EngineError> {
    bincode::deserialize(bytes).map_err(|e| EngineError::Checkpoint(format!("decode: {e}")))
}
