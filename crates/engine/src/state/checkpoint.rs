//! Checkpoints: the unit of backup, recovery and scale out.

use bincode::Options;
use serde::{Deserialize, Serialize};

use super::buffer::OutputBuffer;
use super::routing::KeyRange;
use crate::error::EngineError;
use crate::stamp::Stamp;

/// One encoded `key -> value` pair with the key's routing hash, so that a
/// checkpoint can be partitioned without knowing the operator's types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    /// The key's routing hash ([`crate::hash::key_hash`]).
    pub hash: u64,
    /// The encoded key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The encoded value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The key's recent load: accesses by the operator, halved at every
    /// snapshot ([`super::KeyedState`]). Scale out splits where the
    /// cumulative load reaches half; it plays no part in results.
    pub load: u32,
}

/// A consistent copy of one instance: its processing state, the input
/// frontier that state reflects, and its output buffer.
///
/// The frontier is the instance's input vector: every input with a stamp at
/// or below it, from every upstream, is reflected in `entries`; replay after a
/// restore starts strictly above it, and duplicates at or below it are dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The operator this instance runs.
    pub operator: String,
    /// The key-hash range the instance owns.
    pub key_range: KeyRange,
    /// Everything at or below this stamp is reflected in the state.
    pub frontier: Stamp,
    /// Processing state, sorted by hash.
    pub entries: Vec<StateEntry>,
    /// Outputs not yet covered by downstream checkpoints.
    pub output_buffer: OutputBuffer,
    /// State the operator keeps outside keyed state: a source's input
    /// position, a sink's output offset.
    #[serde(with = "serde_bytes")]
    pub operator_state: Vec<u8>,
}

/// A checkpoint's parts by reference, so an instance can encode one without
/// copying its state or buffers first. Serialises exactly as [`Checkpoint`].
#[derive(Serialize)]
pub struct CheckpointParts<'a> {
    /// See [`Checkpoint::operator`].
    pub operator: &'a str,
    /// See [`Checkpoint::key_range`].
    pub key_range: KeyRange,
    /// See [`Checkpoint::frontier`].
    pub frontier: Stamp,
    /// See [`Checkpoint::entries`].
    pub entries: &'a [StateEntry],
    /// See [`Checkpoint::output_buffer`].
    pub output_buffer: &'a OutputBuffer,
    /// See [`Checkpoint::operator_state`].
    #[serde(with = "serde_bytes")]
    pub operator_state: &'a [u8],
}

impl CheckpointParts<'_> {
    /// Encodes the parts as [`Checkpoint::encode`] would encode the whole.
    pub fn encode(&self) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 32 + self.output_buffer.bytes());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        bincode::serialize_into(&mut out, self)
            .map_err(|e| EngineError::Checkpoint(format!("encode: {e}")))?;
        let sum = checksum(&out[HEADER..]);
        out[6..HEADER].copy_from_slice(&sum.to_le_bytes());
        Ok(out)
    }
}

const MAGIC: &[u8; 4] = b"SPCK";
/// The encoding of a [`Checkpoint`], bumped whenever it changes (3: entries
/// carry their load). Checkpoints live only as long as a job, among processes
/// of one build, so other versions are refused with a reason rather than
/// converted.
const FORMAT_VERSION: u16 = 3;
/// Magic, version, checksum of the body.
const HEADER: usize = 14;

/// A 64-bit checksum of a checkpoint's body, so that corruption in transit
/// or in a holder's memory is refused rather than restored.
fn checksum(body: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut hasher = crate::hash::StableHasher::default();
    hasher.write(body);
    hasher.finish()
}

impl Checkpoint {
    /// Serialises the checkpoint for backup on another worker.
    pub fn encode(&self) -> Result<Vec<u8>, EngineError> {
        CheckpointParts {
            operator: &self.operator,
            key_range: self.key_range,
            frontier: self.frontier,
            entries: &self.entries,
            output_buffer: &self.output_buffer,
            operator_state: &self.operator_state,
        }
        .encode()
    }

    /// Reads a checkpoint written by [`Checkpoint::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, EngineError> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC {
            return Err(EngineError::Checkpoint(
                "not a Spate checkpoint (bad magic)".into(),
            ));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != FORMAT_VERSION {
            let writer = if version < FORMAT_VERSION {
                "an older"
            } else {
                "a newer"
            };
            return Err(EngineError::Checkpoint(format!(
                "checkpoint format version {version} was written by {writer} Spate build; this \
                 build reads version {FORMAT_VERSION} only (run every process of a job from one build)"
            )));
        }
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[6..HEADER]);
        if u64::from_le_bytes(sum) != checksum(&bytes[HEADER..]) {
            return Err(EngineError::Checkpoint(
                "checkpoint checksum mismatch: it was corrupted".into(),
            ));
        }
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .allow_trailing_bytes()
            .with_limit(bytes.len() as u64)
            .deserialize(&bytes[HEADER..])
            .map_err(|e| EngineError::Checkpoint(format!("decode: {e}")))
    }

    /// Splits the checkpoint into one per range. The ranges must tile this
    /// checkpoint's range in order. Every part inherits the frontier; the
    /// output buffer and operator state stay with the first part (the
    /// instance that keeps running on the old worker), which is responsible
    /// for replaying the buffer.
    pub fn partition(&self, ranges: &[KeyRange]) -> Result<Vec<Checkpoint>, EngineError> {
        check_tiling(self.key_range, ranges)?;
        let mut parts: Vec<Checkpoint> = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| Checkpoint {
                operator: self.operator.clone(),
                key_range: *r,
                frontier: self.frontier,
                entries: Vec::new(),
                output_buffer: if i == 0 {
                    self.output_buffer.clone()
                } else {
                    OutputBuffer::default()
                },
                operator_state: if i == 0 {
                    self.operator_state.clone()
                } else {
                    Vec::new()
                },
            })
            .collect();
        for entry in &self.entries {
            let i = ranges.partition_point(|r| r.end < entry.hash);
            match parts.get_mut(i) {
                Some(part) if part.key_range.contains(entry.hash) => {
                    part.entries.push(entry.clone())
                }
                _ => {
                    return Err(EngineError::Checkpoint(format!(
                        "entry hash {:#x} lies outside the checkpoint's range {:?}",
                        entry.hash, self.key_range
                    )))
                }
            }
        }
        Ok(parts)
    }
}

fn check_tiling(whole: KeyRange, ranges: &[KeyRange]) -> Result<(), EngineError> {
    let bad = |why: &str| {
        Err(EngineError::Checkpoint(format!(
            "partition ranges {ranges:?} do not tile {whole:?}: {why}"
        )))
    };
    let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
        return bad("no ranges given");
    };
    if first.start != whole.start || last.end != whole.end {
        return bad("they do not start and end with it");
    }
    for pair in ranges.windows(2) {
        if pair[0].end == u64::MAX || pair[0].end + 1 != pair[1].start {
            return bad("they are not adjacent and in order");
        }
    }
    if ranges.iter().any(|r| r.end < r.start) {
        return bad("a range is empty");
    }
    Ok(())
}
