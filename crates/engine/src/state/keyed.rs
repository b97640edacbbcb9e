//! The live keyed state of one stateful instance.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::checkpoint::{SharedBytes, StateEntry};
use super::routing::KeyRange;
use crate::error::EngineError;
use crate::hash::key_hash;

/// `key -> value` state owned by the engine on behalf of an operator.
///
/// The operator only ever sees `&mut V` for the key of the tuple it is
/// processing; the engine can therefore snapshot, restore and split the map
/// without the operator's help.
///
/// Because every write goes through [`KeyedState::get_or_default`], the map
/// knows which keys changed since its last snapshot: an incremental
/// snapshot ([`KeyedState::snapshot_changes`]) encodes only those, so a
/// checkpoint costs the instance's thread time in proportion to what
/// changed, not to the size of the state.
///
/// Beside each value it counts the operator's accesses to the key, so that a
/// scale out can split the range where the *load* halves rather than where
/// the key count does (a few hot keys would otherwise leave one half with
/// most of the work). The count halves at every snapshot, so it weighs
/// recent load most: each checkpoint interval counts half as much as the
/// next. The halving is lazy (a key's count is brought up to date when the
/// key is next touched or snapshotted), so an incremental snapshot never
/// visits unchanged keys; whoever folds it into an earlier checkpoint halves
/// the loads of the keys it does not list ([`super::Checkpoint::apply`]).
#[derive(Debug)]
pub struct KeyedState<K, V> {
    map: HashMap<K, Slot<V>, rustc_hash::FxBuildHasher>,
    /// Snapshots taken (one more after a restore): the clock of load decay.
    epoch: u32,
    /// Keys accessed since the last snapshot, each once.
    changed: Vec<K>,
    /// Encoded bytes of every key and value, as of each one's last snapshot.
    encoded_bytes: u64,
}

/// A value and its recent load.
#[derive(Debug)]
struct Slot<V> {
    value: V,
    /// Recent load as of epoch `epoch`: accesses in that epoch plus half the
    /// load before it. It halves for every epoch since.
    load: u32,
    /// The epoch `load` was counted in.
    epoch: u32,
    /// Accessed since the last snapshot (so listed in `changed`).
    changed: bool,
    /// Encoded size of key and value at the key's last snapshot.
    encoded: u32,
}

impl<V> Slot<V> {
    /// The load as of `epoch` (at or after the slot's own).
    fn load_at(&self, epoch: u32) -> u32 {
        self.load.checked_shr(epoch - self.epoch).unwrap_or(0)
    }
}

impl<K, V> Default for KeyedState<K, V> {
    fn default() -> Self {
        KeyedState {
            map: HashMap::default(),
            epoch: 0,
            changed: Vec::new(),
            encoded_bytes: 0,
        }
    }
}

impl<K, V> KeyedState<K, V>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    V: Default + Serialize + DeserializeOwned,
{
    /// The value for `key`, created with `V::default()` on first use. This
    /// is how the engine hands state to the operator, so it is what counts as
    /// load on the key, and what marks the key changed.
    pub fn get_or_default(&mut self, key: K) -> &mut V {
        let epoch = self.epoch;
        let slot = match self.map.entry(key) {
            Entry::Occupied(occupied) => {
                if !occupied.get().changed {
                    self.changed.push(occupied.key().clone());
                }
                occupied.into_mut()
            }
            Entry::Vacant(vacant) => {
                self.changed.push(vacant.key().clone());
                vacant.insert(Slot {
                    value: V::default(),
                    load: 0,
                    epoch,
                    changed: true,
                    encoded: 0,
                })
            }
        };
        slot.load = slot.load_at(epoch).saturating_add(1);
        slot.epoch = epoch;
        slot.changed = true;
        &mut slot.value
    }

    /// The value for `key`, if there is one. Inspection, not processing: it
    /// does not count as load.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|slot| &slot.value)
    }

    /// Reads the slot of `key` without using it, so that a
    /// [`KeyedState::get_or_default`] soon after finds it in the cache.
    /// Several warmed in a row have their cache misses overlap, where each
    /// one processed in turn would stall on its own (docs/BENCH.md, "Keys
    /// looked up ahead"). Inspection, not processing: not counted as load.
    pub fn warm(&self, key: &K) {
        std::hint::black_box(self.map.get(key).map(|slot| slot.load));
    }

    /// Whether the map outgrows a core's cache, so that most lookups miss
    /// it and warming keys ahead ([`KeyedState::warm`]) pays for itself.
    pub fn outgrows_cache(&self) -> bool {
        const CACHE_BYTES: usize = 1 << 20;
        self.map.capacity() * std::mem::size_of::<(K, Slot<V>)>() > CACHE_BYTES
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of keys changed since the last snapshot.
    pub fn changed(&self) -> usize {
        self.changed.len()
    }

    /// Encoded bytes of all keys and values, as of their last snapshots:
    /// about what a full checkpoint of the state holds.
    pub fn encoded_bytes(&self) -> u64 {
        self.encoded_bytes
    }

    /// Encodes every entry with its routing hash and recent load: the
    /// processing-state part of a full checkpoint. Starts a new epoch: the
    /// next incremental snapshot lists what changes from now on.
    pub fn snapshot(&mut self) -> Result<Vec<StateEntry>, EngineError> {
        // Sorted by hash, a checkpoint is canonical (equal states encode
        // equally) and partitioning keeps each part sorted. Sorting
        // references before encoding moves less memory than sorting entries
        // would, and lays the encoded bytes out in checkpoint order.
        let mut sorted: Vec<(u64, &K, &mut Slot<V>)> = self
            .map
            .iter_mut()
            .map(|(k, slot)| (key_hash(k), k, slot))
            .collect();
        sorted.sort_unstable_by_key(|(hash, _, _)| *hash);
        let mut encoder = Encoder::with_capacity(sorted.len(), self.epoch);
        for (hash, key, slot) in sorted {
            encoder.add(hash, key, slot)?;
        }
        self.encoded_bytes = encoder.bytes_after;
        self.changed.clear();
        self.epoch += 1;
        encoder.finish()
    }

    /// Encodes the entries of the keys changed since the last snapshot
    /// only: the processing-state part of an incremental checkpoint, which
    /// [`super::Checkpoint::apply`] folds into the checkpoint of that
    /// snapshot. Costs time in proportion to the changed keys alone.
    pub fn snapshot_changes(&mut self) -> Result<Vec<StateEntry>, EngineError> {
        let changed = std::mem::take(&mut self.changed);
        let mut order: Vec<(u64, usize)> = changed
            .iter()
            .enumerate()
            .map(|(i, key)| (key_hash(key), i))
            .collect();
        order.sort_unstable();
        let mut encoder = Encoder::with_capacity(order.len(), self.epoch);
        for (hash, i) in order {
            let key = &changed[i];
            if let Some(slot) = self.map.get_mut(key) {
                encoder.add(hash, key, slot)?;
            }
        }
        self.encoded_bytes = self.encoded_bytes - encoder.bytes_before + encoder.bytes_after;
        // The list's allocation serves the next epoch.
        self.changed = changed;
        self.changed.clear();
        self.epoch += 1;
        encoder.finish()
    }

    /// Rebuilds state from checkpoint entries, refusing entries outside
    /// `range` (they belong to another instance) or with a wrong hash. Keys
    /// keep their load, halved as the snapshot that recorded it would have
    /// halved it, so a restored or split instance can be split again by load
    /// before it has seen much input, and its snapshots equal those the
    /// original instance would have taken.
    pub fn restore(entries: &[StateEntry], range: KeyRange) -> Result<Self, EngineError> {
        let mut state = KeyedState {
            epoch: 1,
            ..KeyedState::default()
        };
        // Decoding every entry first, then inserting them, takes about
        // half the time of inserting each as it is decoded (256,000 Linear
        // Road accounts: 54 against 98 ms).
        let mut decoded = Vec::with_capacity(entries.len());
        for entry in entries {
            let (key, slot) = decode_entry::<K, V>(entry, range)?;
            state.encoded_bytes += u64::from(slot.encoded);
            decoded.push((key, slot));
        }
        state.map.reserve(decoded.len());
        for (key, slot) in decoded {
            state.map.insert(key, slot);
        }
        Ok(state)
    }

    /// Folds one step of changes into the state: the entries of an
    /// incremental checkpoint taken after what this state was restored
    /// from (and after any step before it), each list with the range its
    /// keys must lie in. Listed keys take their values and loads, the
    /// others' loads halve. With one list, the state then equals restoring
    /// the checkpoint folded with it ([`super::Checkpoint::apply`]): a
    /// part of a live split is restored ahead of its stop this way, then
    /// caught up with the changes since. A live merge's two partitions,
    /// joined while staged, catch up in steps of one increment of each
    /// ([`catch_up_steps`]).
    pub fn apply_changes(
        &mut self,
        changes: &[(&[StateEntry], KeyRange)],
    ) -> Result<(), EngineError> {
        // A new epoch halves every load not listed, lazily.
        self.epoch += 1;
        self.map
            .reserve(changes.iter().map(|(entries, _)| entries.len()).sum());
        for (entries, range) in changes {
            for entry in *entries {
                let (key, slot) = decode_entry::<K, V>(entry, *range)?;
                let encoded = u64::from(slot.encoded);
                let slot = Slot {
                    epoch: self.epoch - 1,
                    ..slot
                };
                if let Some(old) = self.map.insert(key, slot) {
                    self.encoded_bytes -= u64::from(old.encoded);
                }
                self.encoded_bytes += encoded;
            }
        }
        Ok(())
    }

    /// Makes room for `additional` more keys ahead of when they come, so
    /// that taking them ([`KeyedState::absorb`]) does not grow the map then.
    pub fn reserve(&mut self, additional: usize) {
        self.map.reserve(additional);
    }

    /// Takes every key of `other`, the state of the partition next to
    /// this one's range (a live merge's, joined while both are staged):
    /// each key keeps its value, size and load as of its own state's
    /// epoch, so that the joined state equals what restoring the two
    /// partitions' merged checkpoint gives ([`super::Checkpoint::merge`]).
    /// The smaller map moves into the larger: it costs time in proportion
    /// to the smaller's keys.
    pub fn absorb(&mut self, mut other: KeyedState<K, V>) {
        let room = |s: &Self| s.map.capacity() - s.map.len();
        // Into the one with room for the other's keys (made ahead:
        // [`KeyedState::reserve`]), else the larger: growing the map here
        // would rehash it.
        let into_other = if room(self) >= other.map.len() {
            false
        } else {
            room(&other) >= self.map.len() || other.map.len() > self.map.len()
        };
        if into_other {
            std::mem::swap(self, &mut other);
        }
        let (epoch, theirs) = (self.epoch, other.epoch);
        self.map.reserve(other.map.len());
        for (key, slot) in other.map {
            let slot = Slot {
                load: slot.load_at(theirs),
                epoch,
                ..slot
            };
            self.encoded_bytes += u64::from(slot.encoded);
            if let Some(old) = self.map.insert(key, slot) {
                self.encoded_bytes -= u64::from(old.encoded);
            }
        }
        self.changed.extend(other.changed);
    }
}

/// The steps in which keyed state staged of several key ranges and joined
/// into one map (a live merge's two partitions) catches up on each range's
/// run of increments since it was staged or last caught up
/// ([`KeyedState::apply_changes`]), each run with its range: the runs
/// aligned at their ends (the latest increment of each in the last step),
/// each step holding the increment each run has there. A key of the
/// longest run ends with its load exactly as its holders fold it, and so
/// does any key that a shorter run lists; a key a shorter run does not
/// list has its load halved once more for each step that run lacks (the
/// joined map's epochs are shared). Loads only steer split points; values
/// and sizes are exact.
pub fn catch_up_steps(
    runs: &[(Vec<Vec<StateEntry>>, KeyRange)],
) -> Vec<Vec<(&[StateEntry], KeyRange)>> {
    let steps = runs.iter().map(|(run, _)| run.len()).max().unwrap_or(0);
    (0..steps)
        .map(|step| {
            runs.iter()
                .filter_map(|(run, range)| {
                    let at = (step + run.len()).checked_sub(steps)?;
                    Some((run[at].as_slice(), *range))
                })
                .collect()
        })
        .collect()
}

/// Decodes a checkpoint entry into its key and slot (at epoch 0), refusing
/// an entry outside `range` or whose hash is not its key's.
fn decode_entry<K, V>(entry: &StateEntry, range: KeyRange) -> Result<(K, Slot<V>), EngineError>
where
    K: Hash + Serialize + DeserializeOwned,
    V: DeserializeOwned,
{
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
    let encoded = entry.key().len() + entry.value().len();
    let slot = Slot {
        value: decode(entry.value())?,
        load: entry.load,
        epoch: 0,
        changed: false,
        encoded: encoded as u32,
    };
    Ok((key, slot))
}

/// Encodes the entries of one snapshot into one buffer that they share: no
/// allocation per key.
struct Encoder {
    epoch: u32,
    bytes: Vec<u8>,
    spans: Vec<(u64, u32, std::ops::Range<usize>, std::ops::Range<usize>)>,
    /// Encoded sizes of the entries added, as of their previous snapshot.
    bytes_before: u64,
    /// And now.
    bytes_after: u64,
}

impl Encoder {
    fn with_capacity(entries: usize, epoch: u32) -> Self {
        Encoder {
            epoch,
            bytes: Vec::new(),
            spans: Vec::with_capacity(entries),
            bytes_before: 0,
            bytes_after: 0,
        }
    }

    /// Adds the entry of `key`, recording its load as of this epoch. Keys
    /// must come in hash order.
    fn add<K: Serialize, V: Serialize>(
        &mut self,
        hash: u64,
        key: &K,
        slot: &mut Slot<V>,
    ) -> Result<(), EngineError> {
        slot.load = slot.load_at(self.epoch);
        slot.epoch = self.epoch;
        slot.changed = false;
        let start = self.bytes.len();
        encode_into(&mut self.bytes, key)?;
        let middle = self.bytes.len();
        encode_into(&mut self.bytes, &slot.value)?;
        let end = self.bytes.len();
        self.bytes_before += u64::from(slot.encoded);
        slot.encoded = u32::try_from(end - start).unwrap_or(u32::MAX);
        self.bytes_after += u64::from(slot.encoded);
        self.spans
            .push((hash, slot.load, start..middle, middle..end));
        Ok(())
    }

    fn finish(self) -> Result<Vec<StateEntry>, EngineError> {
        let bytes = SharedBytes::new(self.bytes)?;
        let mut entries: Vec<StateEntry> = self
            .spans
            .into_iter()
            .map(|(hash, load, key, value)| bytes.entry(hash, load, key, value))
            .collect();
        // Distinct keys with equal hashes (rare) go in encoded-key order.
        for run in entries.chunk_by_mut(|a, b| a.hash == b.hash) {
            run.sort_unstable_by(|a, b| a.key().cmp(b.key()));
        }
        Ok(entries)
    }
}

/// Keys and values are encoded with variable-length integers: operator
/// state is mostly small counts, times and ids, which fixed-width integers
/// spread over 4 and 8 bytes each (Linear Road's accounts took 44 bytes
/// where 16 do), and every byte is snapshotted, shipped to two holders and
/// checksummed every interval.
fn state_encoding() -> impl bincode::Options {
    bincode::DefaultOptions::new()
}

fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) -> Result<(), EngineError> {
    state_encoding()
        .serialize_into(out, value)
        .map_err(|e| EngineError::Checkpoint(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EngineError> {
    state_encoding()
        .deserialize(bytes)
        .map_err(|e| EngineError::Checkpoint(format!("decode: {e}")))
}
