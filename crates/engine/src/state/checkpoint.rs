//! Checkpoints: the unit of backup, recovery and scale out.

use std::ops::Range;
use std::sync::Arc;

use bincode::Options;
use serde::de::{DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::buffer::{BufferEncoding, BufferMark, OutputBuffer};
use super::routing::KeyRange;
use crate::error::EngineError;
use crate::stamp::Stamp;

/// One encoded `key -> value` pair with the key's routing hash and recent
/// load, so that a checkpoint can be partitioned (by hash) and split (by load)
/// without knowing the operator's types.
///
/// The encoded key and value lie in `SharedBytes` with every other entry
/// of one snapshot or decoded checkpoint, so that taking, decoding and
/// partitioning a checkpoint costs no allocation per key (owned bytes cost
/// two per key, and freeing them as much again: most of the time a
/// million-key checkpoint took) and partitioning copies no key or value.
#[derive(Clone)]
pub struct StateEntry {
    /// The key's routing hash ([`crate::hash::key_hash`]).
    pub hash: u64,
    /// The key's recent load: accesses by the operator, halved at every
    /// snapshot ([`super::KeyedState`]). Scale out splits where the
    /// cumulative load reaches half; it plays no part in results.
    pub load: u32,
    bytes: Arc<Vec<u8>>,
    key: Span,
    value: Span,
}

/// A range of [`SharedBytes`], in 32 bits so that entries stay small (an
/// entry is moved by every sort and partition).
#[derive(Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The buffer that the entries of one snapshot or decoded checkpoint share.
pub(super) struct SharedBytes(Arc<Vec<u8>>);

impl SharedBytes {
    /// Shares `bytes`, which must fit 32-bit offsets. A checkpoint of 4 GiB
    /// or more could not be sent anyway: control messages carry at most
    /// [`crate::wire::MAX_CONTROL_FRAME`] bytes.
    pub(super) fn new(bytes: Vec<u8>) -> Result<Self, EngineError> {
        Self::shared(Arc::new(bytes))
    }

    /// [`SharedBytes::new`] over bytes already shared (a holder's chain).
    fn shared(bytes: Arc<Vec<u8>>) -> Result<Self, EngineError> {
        if u32::try_from(bytes.len()).is_err() {
            return Err(EngineError::Checkpoint(format!(
                "{} bytes of keyed state: too large for one checkpoint",
                bytes.len()
            )));
        }
        Ok(SharedBytes(bytes))
    }

    /// The entry whose encoded key and value are the `key` and `value`
    /// ranges of these bytes.
    pub(super) fn entry(
        &self,
        hash: u64,
        load: u32,
        key: Range<usize>,
        value: Range<usize>,
    ) -> StateEntry {
        debug_assert!(key.end <= self.0.len() && value.end <= self.0.len());
        // Lossless: `new` checked that every offset fits.
        let span = |r: Range<usize>| Span {
            start: r.start as u32,
            end: r.end as u32,
        };
        StateEntry {
            hash,
            load,
            bytes: Arc::clone(&self.0),
            key: span(key),
            value: span(value),
        }
    }

    /// The bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl StateEntry {
    /// The encoded key.
    pub fn key(&self) -> &[u8] {
        &self.bytes[self.key.range()]
    }

    /// The encoded value.
    pub fn value(&self) -> &[u8] {
        &self.bytes[self.value.range()]
    }

    fn encoded(&self) -> EncodedEntry<'_> {
        EncodedEntry {
            hash: self.hash,
            key: self.key(),
            value: self.value(),
            load: self.load,
        }
    }
}

/// Entries are equal when their contents are, wherever their bytes lie.
impl PartialEq for StateEntry {
    fn eq(&self, other: &Self) -> bool {
        self.encoded() == other.encoded()
    }
}

impl Eq for StateEntry {}

impl std::fmt::Debug for StateEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.encoded().fmt(f)
    }
}

impl Serialize for StateEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.encoded().serialize(serializer)
    }
}

/// How a [`StateEntry`] is encoded, borrowing its bytes: the one layout for
/// encoding and for decoding without copying.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct EncodedEntry<'a> {
    hash: u64,
    #[serde(borrow, with = "serde_bytes")]
    key: &'a [u8],
    #[serde(borrow, with = "serde_bytes")]
    value: &'a [u8],
    load: u32,
}

/// A consistent copy of one instance: its processing state, the input
/// frontier that state reflects, and its output buffer.
///
/// The frontier is the instance's input vector: every input with a stamp at
/// or below it, from every upstream, is reflected in `entries`; replay after a
/// restore starts strictly above it, and duplicates at or below it are dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
/// copying its state or buffers first. Encodes exactly as [`Checkpoint`].
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
    pub operator_state: &'a [u8],
}

/// The body of an encoded checkpoint, in [`Checkpoint`]'s field order.
#[derive(Serialize)]
struct Body<'a> {
    operator: &'a str,
    key_range: KeyRange,
    frontier: Stamp,
    entries: &'a [StateEntry],
    output_buffer: BufferEncoding<'a>,
    #[serde(with = "serde_bytes")]
    operator_state: &'a [u8],
}

impl CheckpointParts<'_> {
    /// Encodes the parts as [`Checkpoint::encode`] would encode the whole.
    pub fn encode(&self) -> Result<Vec<u8>, EngineError> {
        self.encode_as(FULL_MAGIC, None, None)
    }

    /// Encodes the parts as an incremental checkpoint: `entries` are the
    /// keys changed since the checkpoint at `base`, which it must be folded
    /// into ([`Checkpoint::apply`]) to be restored. The output buffer goes
    /// in as its changes since `buffer_mark` (where it stood at `base`),
    /// or whole without one.
    pub fn encode_delta(
        &self,
        base: Stamp,
        buffer_mark: Option<&BufferMark>,
    ) -> Result<Vec<u8>, EngineError> {
        self.encode_as(DELTA_MAGIC, Some(base), buffer_mark)
    }

    fn encode_as(
        &self,
        magic: &[u8; 4],
        base: Option<Stamp>,
        buffer_mark: Option<&BufferMark>,
    ) -> Result<Vec<u8>, EngineError> {
        let body = Body {
            operator: self.operator,
            key_range: self.key_range,
            frontier: self.frontier,
            entries: self.entries,
            output_buffer: self.output_buffer.since(buffer_mark),
            operator_state: self.operator_state,
        };
        // Sized exactly, so that a large checkpoint is written once rather
        // than copied as the buffer grows.
        let size = bincode::serialized_size(&body)
            .map_err(|e| EngineError::Checkpoint(format!("encode: {e}")))?;
        let mut out = Vec::with_capacity(HEADER + 8 + size as usize);
        out.extend_from_slice(magic);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        if let Some(base) = base {
            out.extend_from_slice(&base.0.to_le_bytes());
        }
        bincode::serialize_into(&mut out, &body)
            .map_err(|e| EngineError::Checkpoint(format!("encode: {e}")))?;
        let sum = checksum(&out[HEADER..]);
        out[6..HEADER].copy_from_slice(&sum.to_le_bytes());
        Ok(out)
    }
}

/// What an encoded checkpoint holds, read from its header
/// ([`Checkpoint::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointKind {
    /// The whole state: restorable on its own.
    Full,
    /// The keys changed since the checkpoint at `base`, with the output
    /// buffer and operator state as of its own frontier: restorable only
    /// folded into that checkpoint.
    Delta {
        /// The frontier of the checkpoint it changes.
        base: Stamp,
    },
    /// A full checkpoint followed by deltas, each on the one before it
    /// ([`super::BackupChain`]): restorable on its own.
    Chain,
}

/// A full checkpoint.
const FULL_MAGIC: &[u8; 4] = b"SPCK";
/// An incremental checkpoint: the header carries its base after the
/// checksum.
const DELTA_MAGIC: &[u8; 4] = b"SPCD";
/// A chain: count (u32), then each checkpoint's length (u64) and bytes.
const CHAIN_MAGIC: &[u8; 4] = b"SPCC";
/// A run of deltas, framed as a chain but not restorable alone: the
/// changes of one key range since a staged checkpoint.
const RUN_MAGIC: &[u8; 4] = b"SPCR";
/// The encoding of a [`Checkpoint`], bumped whenever it changes (3: entries
/// carry their load; 4: incremental checkpoints and chains; 5: the XXH3
/// checksum and the Fx key hash; 6: output buffers by their changes in
/// deltas, keys and values in variable-length integers). Checkpoints live only as long as a job,
/// among processes of one build, so other versions are refused with a
/// reason rather than converted.
const FORMAT_VERSION: u16 = 6;
/// Magic, version, checksum of what follows.
const HEADER: usize = 14;

/// Bytes before a chain's first part.
pub(super) const CHAIN_HEADER: usize = 10;

/// The start of a chain (a full checkpoint and the deltas on it, in
/// order) of `count` parts: each part follows, after its length as eight
/// bytes.
pub(super) fn chain_header(count: usize) -> [u8; CHAIN_HEADER] {
    let mut header = [0u8; CHAIN_HEADER];
    header[..4].copy_from_slice(CHAIN_MAGIC);
    header[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[6..].copy_from_slice(&(count as u32).to_le_bytes());
    header
}

/// A chain's first part, which must be a full checkpoint.
fn chain_base<'b>(parts: &[&'b [u8]]) -> Result<&'b [u8], EngineError> {
    if Checkpoint::kind(parts[0])? != CheckpointKind::Full {
        return Err(EngineError::Checkpoint(
            "a checkpoint chain does not start with a full checkpoint".into(),
        ));
    }
    Ok(parts[0])
}

/// Why a delta alone cannot be restored.
fn delta_alone(base: Stamp) -> EngineError {
    EngineError::Checkpoint(format!(
        "an incremental checkpoint (the changes since stamp {}) cannot be restored alone: \
         fold it into the checkpoint it changes",
        base.0
    ))
}

/// The checkpoints of an encoded chain, checking only its framing.
pub(super) fn chain_parts(bytes: &[u8]) -> Result<Vec<&[u8]>, EngineError> {
    let parts = framed_parts(bytes)?;
    if parts.is_empty() {
        return Err(EngineError::Checkpoint(
            "checkpoint chain truncated or corrupt".into(),
        ));
    }
    Ok(parts)
}

/// The checkpoints framed as a chain's (possibly none), checking only the
/// framing.
fn framed_parts(bytes: &[u8]) -> Result<Vec<&[u8]>, EngineError> {
    let bad = || EngineError::Checkpoint("checkpoint chain truncated or corrupt".into());
    let count = bytes
        .get(6..CHAIN_HEADER)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(bad)?;
    let mut rest = &bytes[CHAIN_HEADER..];
    let mut parts = Vec::new();
    for _ in 0..count {
        let (len, tail) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| bad())?;
        if tail.len() < len {
            return Err(bad());
        }
        parts.push(&tail[..len]);
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    Ok(parts)
}

/// Decodes `deltas` (encoded, in order), checking that the first changes
/// the checkpoint at `previous` and each the one before it.
fn decode_deltas(mut previous: Stamp, deltas: &[&[u8]]) -> Result<Vec<Checkpoint>, EngineError> {
    let mut decoded = Vec::with_capacity(deltas.len());
    for part in deltas {
        let CheckpointKind::Delta { base } = Checkpoint::kind(part)? else {
            return Err(EngineError::Checkpoint(
                "a checkpoint chain holds a full checkpoint after its first".into(),
            ));
        };
        if base != previous {
            return Err(EngineError::Checkpoint(format!(
                "a checkpoint chain's delta changes stamp {} but follows stamp {}",
                base.0, previous.0
            )));
        }
        let delta = decode_copied(part, HEADER + 8)?;
        previous = delta.frontier;
        decoded.push(delta);
    }
    Ok(decoded)
}

/// Deltas in order (possibly none), framed as a chain's parts under a
/// magic of their own: what a holder sends a worker that staged a key
/// range at the first delta's base ([`Checkpoint::apply_run`]).
pub(super) fn delta_run(deltas: &[Vec<u8>]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(CHAIN_HEADER + deltas.iter().map(|d| 8 + d.len()).sum::<usize>());
    out.extend_from_slice(&chain_header(deltas.len()));
    out[..4].copy_from_slice(RUN_MAGIC);
    for delta in deltas {
        out.extend_from_slice(&(delta.len() as u64).to_le_bytes());
        out.extend_from_slice(delta);
    }
    out
}

/// Decodes a checkpoint's body, each entry straight into a [`StateEntry`]
/// over `body` (no copy of its bytes, no intermediate list). Reads the
/// fields in the order [`CheckpointParts`] writes them.
struct BodySeed<'b> {
    body: &'b SharedBytes,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Checkpoint;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Checkpoint, D::Error> {
        const FIELDS: &[&str] = &[
            "operator",
            "key_range",
            "frontier",
            "entries",
            "output_buffer",
            "operator_state",
        ];
        d.deserialize_struct("Checkpoint", FIELDS, self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = Checkpoint;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a checkpoint")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checkpoint, A::Error> {
        let missing = |name: &str| A::Error::custom(format!("checkpoint without {name}"));
        let operator = seq.next_element()?.ok_or_else(|| missing("operator"))?;
        let key_range = seq.next_element()?.ok_or_else(|| missing("key_range"))?;
        let frontier = seq.next_element()?.ok_or_else(|| missing("frontier"))?;
        let entries = seq
            .next_element_seed(EntriesSeed { body: self.body })?
            .ok_or_else(|| missing("entries"))?;
        let output_buffer = seq
            .next_element()?
            .ok_or_else(|| missing("output_buffer"))?;
        let operator_state: serde_bytes::ByteBuf = seq
            .next_element()?
            .ok_or_else(|| missing("operator_state"))?;
        Ok(Checkpoint {
            operator,
            key_range,
            frontier,
            entries,
            output_buffer,
            operator_state: operator_state.into_vec(),
        })
    }
}

/// The entries part of [`BodySeed`].
struct EntriesSeed<'b> {
    body: &'b SharedBytes,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Vec<StateEntry>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<StateEntry>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Vec<StateEntry>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("checkpoint entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<StateEntry>, A::Error> {
        // An entry takes at least 28 bytes, so a corrupt count cannot make
        // this allocate more than the body does.
        let most = self.body.bytes().len() / 28;
        let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(most));
        // The decoder hands out subslices of the body: their offsets in it.
        let base = self.body.bytes().as_ptr() as usize;
        let span = |bytes: &[u8]| {
            let start = bytes.as_ptr() as usize - base;
            start..start + bytes.len()
        };
        while let Some(e) = seq.next_element::<EncodedEntry<'de>>()? {
            entries.push(self.body.entry(e.hash, e.load, span(e.key), span(e.value)));
        }
        Ok(entries)
    }
}

/// A 64-bit checksum of a checkpoint's body (XXH3), so that corruption in
/// transit or in a holder's memory is refused rather than restored. It runs
/// on every hop of a checkpoint, so it must cost next to nothing per byte.
fn checksum(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(body)
}

/// Decodes the checkpoint body at `range` of `body`, each entry straight
/// over `body`'s bytes (no copy).
fn decode_body(body: &SharedBytes, range: Range<usize>) -> Result<Checkpoint, EngineError> {
    let bytes = &body.bytes()[range];
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(bytes.len() as u64)
        .deserialize_seed(BodySeed { body }, bytes)
        .map_err(|e| EngineError::Checkpoint(format!("decode: {e}")))
}

/// Decodes the full checkpoint `bytes` over those very bytes (no copy).
pub(super) fn decode_shared(bytes: Arc<Vec<u8>>) -> Result<Checkpoint, EngineError> {
    if Checkpoint::kind(&bytes)? != CheckpointKind::Full {
        return Err(EngineError::Checkpoint("expected a full checkpoint".into()));
    }
    let body = SharedBytes::shared(bytes)?;
    decode_body(&body, HEADER..body.bytes().len())
}

/// Decodes the body of the delta `bytes` (copied once: deltas are small).
pub(super) fn decode_delta(bytes: &[u8]) -> Result<(Stamp, Checkpoint), EngineError> {
    let CheckpointKind::Delta { base } = Checkpoint::kind(bytes)? else {
        return Err(EngineError::Checkpoint(
            "expected an incremental checkpoint".into(),
        ));
    };
    Ok((base, decode_copied(bytes, HEADER + 8)?))
}

/// Decodes the checkpoint body that starts at `start` of `bytes`, over one
/// shared copy of the body.
fn decode_copied(bytes: &[u8], start: usize) -> Result<Checkpoint, EngineError> {
    let body = SharedBytes::new(bytes[start..].to_vec())?;
    decode_body(&body, 0..body.bytes().len())
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

    /// Reads a checkpoint written by [`Checkpoint::encode`], or a chain
    /// (a full checkpoint and the deltas on it, folded in order). A delta
    /// alone is refused: it holds only what changed.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, EngineError> {
        Self::verify(bytes)?;
        match Self::kind(bytes)? {
            CheckpointKind::Full => decode_copied(bytes, HEADER),
            CheckpointKind::Delta { base } => Err(delta_alone(base)),
            CheckpointKind::Chain => {
                let parts = chain_parts(bytes)?;
                let checkpoint = decode_copied(chain_base(&parts)?, HEADER)?;
                checkpoint.fold_deltas(&parts[1..])
            }
        }
    }

    /// [`Checkpoint::decode`], taking the bytes: the entries are decoded
    /// over them where they lie, so restoring a large backup copies it
    /// no more.
    pub fn decode_owned(bytes: Vec<u8>) -> Result<Checkpoint, EngineError> {
        Self::verify(&bytes)?;
        // Where the full checkpoint and each delta lie in `bytes`.
        let parts: Vec<Range<usize>> = match Self::kind(&bytes)? {
            CheckpointKind::Full => std::iter::once(0..bytes.len()).collect(),
            CheckpointKind::Delta { base } => return Err(delta_alone(base)),
            CheckpointKind::Chain => {
                let parts = chain_parts(&bytes)?;
                chain_base(&parts)?;
                let at = |part: &[u8]| part.as_ptr() as usize - bytes.as_ptr() as usize;
                parts.iter().map(|p| at(p)..at(p) + p.len()).collect()
            }
        };
        let body = SharedBytes::new(bytes)?;
        let checkpoint = decode_body(&body, parts[0].start + HEADER..parts[0].end)?;
        let deltas: Vec<&[u8]> = parts[1..]
            .iter()
            .map(|r| &body.bytes()[r.clone()])
            .collect();
        checkpoint.fold_deltas(&deltas)
    }

    /// Folds `deltas` (encoded, in order) into this checkpoint, checking
    /// that each changes the one before.
    fn fold_deltas(self, deltas: &[&[u8]]) -> Result<Checkpoint, EngineError> {
        let decoded = decode_deltas(self.frontier, deltas)?;
        self.apply_all(decoded)
    }

    /// What `bytes` hold, after checking their magic and format version
    /// (not their checksum: see [`Checkpoint::verify`]).
    pub fn kind(bytes: &[u8]) -> Result<CheckpointKind, EngineError> {
        let magic = bytes.get(..4);
        let kind = if magic == Some(FULL_MAGIC) && bytes.len() >= HEADER {
            CheckpointKind::Full
        } else if magic == Some(DELTA_MAGIC) && bytes.len() >= HEADER + 8 {
            let mut base = [0u8; 8];
            base.copy_from_slice(&bytes[HEADER..HEADER + 8]);
            CheckpointKind::Delta {
                base: Stamp(u64::from_le_bytes(base)),
            }
        } else if magic == Some(CHAIN_MAGIC) && bytes.len() >= 10 {
            CheckpointKind::Chain
        } else {
            return Err(EngineError::Checkpoint(
                "not a Spate checkpoint (bad magic)".into(),
            ));
        };
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
        Ok(kind)
    }

    /// The frontier of an encoded checkpoint (of a chain: of its last
    /// delta), read without decoding it.
    pub fn frontier(bytes: &[u8]) -> Result<Stamp, EngineError> {
        Self::range_and_frontier(bytes).map(|(_, frontier)| frontier)
    }

    /// The key range and frontier of an encoded checkpoint (of a chain: of
    /// its last delta), read without decoding it: a holder refuses an
    /// increment on a backup of another range (a reshaped instance's).
    pub fn range_and_frontier(bytes: &[u8]) -> Result<(KeyRange, Stamp), EngineError> {
        let start = match Self::kind(bytes)? {
            CheckpointKind::Full => HEADER,
            CheckpointKind::Delta { .. } => HEADER + 8,
            CheckpointKind::Chain => {
                let parts = chain_parts(bytes)?;
                return Self::range_and_frontier(parts[parts.len() - 1]);
            }
        };
        // The body starts with the operator's name (length, bytes), the key
        // range (two words), then the frontier.
        let word = |at: usize| {
            bytes
                .get(at..at + 8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("eight bytes")))
                .ok_or_else(|| EngineError::Checkpoint("checkpoint truncated".into()))
        };
        let name = usize::try_from(word(start)?)
            .map_err(|_| EngineError::Checkpoint("checkpoint corrupt".into()))?;
        let at = start
            .checked_add(8)
            .and_then(|a| a.checked_add(name))
            .ok_or_else(|| EngineError::Checkpoint("checkpoint corrupt".into()))?;
        let range = KeyRange {
            start: word(at)?,
            end: word(at + 8)?,
        };
        Ok((range, Stamp(word(at + 16)?)))
    }

    /// Checks an encoded checkpoint's (or each checkpoint of a chain's)
    /// magic, format version and checksum without decoding it (a few ms per
    /// 100 MB): a checkpoint corrupted on the way is refused before it can
    /// replace a good backup.
    pub fn verify(bytes: &[u8]) -> Result<(), EngineError> {
        if Self::kind(bytes)? == CheckpointKind::Chain {
            return chain_parts(bytes)?.into_iter().try_for_each(Self::verify);
        }
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[6..HEADER]);
        if u64::from_le_bytes(sum) != checksum(&bytes[HEADER..]) {
            return Err(EngineError::Checkpoint(
                "checkpoint checksum mismatch: it was corrupted".into(),
            ));
        }
        Ok(())
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

impl Checkpoint {
    /// Where to cut an instance's range into `parts`: between the keys of its
    /// checkpoint (sorted by hash) where the cumulative recent load reaches each
    /// `parts`-th of the total, so that each part gets about as much work even
    /// when a few keys are hot; among equally balanced cuts, the one nearest the
    /// even share of keys (so the parts also hold similar state). Without load
    /// information (no key was accessed since the counters decayed) that is
    /// even shares of keys; with fewer keys than parts, even ranges.
    pub fn split_points(&self, parts: usize) -> Vec<KeyRange> {
        let range = self.key_range;
        let entries = &self.entries;
        let even = || range.split_even(parts as u32);
        if parts < 2 || entries.len() < parts {
            return even();
        }
        let total: u64 = entries.iter().map(|e| u64::from(e.load)).sum();
        // below[i]: the load of entries[..i].
        let below: Vec<u64> = std::iter::once(0)
            .chain(entries.iter().scan(0u64, |sum, e| {
                *sum += u64::from(e.load);
                Some(*sum)
            }))
            .collect();
        let (n, k) = (entries.len() as u64, parts as u64);
        let mut cuts = Vec::with_capacity(parts - 1);
        let mut previous = 0usize;
        for j in 1..k {
            // Cutting before entry `i` keeps every part non-empty of keys.
            let last = entries.len() - (parts - j as usize);
            let best = (previous + 1..=last).min_by_key(|&i| {
                (
                    (k * below[i]).abs_diff(j * total),
                    (k * i as u64).abs_diff(j * n),
                )
            });
            let Some(i) = best else { return even() };
            cuts.push(entries[i].hash);
            previous = i;
        }
        let mut ranges = Vec::with_capacity(parts);
        let mut rest = range;
        for at in cuts {
            match rest.split_at(at) {
                Some((low, high)) => {
                    ranges.push(low);
                    rest = high;
                }
                None => return even(),
            }
        }
        ranges.push(rest);
        ranges
    }

    /// The part of this checkpoint (full, or a delta's body) that `range`
    /// owns, as [`Checkpoint::partition`] would cut it: the entries whose
    /// hash lies in `range`, the frontier, and the output buffer and
    /// operator state only if `range` starts where this checkpoint's range
    /// does (the part that stays on the instance split). `range` must lie
    /// within this checkpoint's range.
    pub fn restrict(&self, range: KeyRange) -> Result<Checkpoint, EngineError> {
        if range.start < self.key_range.start || range.end > self.key_range.end {
            return Err(EngineError::Checkpoint(format!(
                "range {range:?} is not within the checkpoint's range {:?}",
                self.key_range
            )));
        }
        let from = self.entries.partition_point(|e| e.hash < range.start);
        let to = self.entries.partition_point(|e| e.hash <= range.end);
        let first = range.start == self.key_range.start;
        Ok(Checkpoint {
            operator: self.operator.clone(),
            key_range: range,
            frontier: self.frontier,
            entries: self.entries[from..to.max(from)].to_vec(),
            output_buffer: if first {
                self.output_buffer.clone()
            } else {
                OutputBuffer::default()
            },
            operator_state: if first {
                self.operator_state.clone()
            } else {
                Vec::new()
            },
        })
    }

    /// Folds a run of deltas ([`super::BackupChain::range_since`]: the
    /// changes of this checkpoint's range since its frontier, possibly
    /// none) into this checkpoint.
    pub fn apply_run(self, run: &[u8]) -> Result<Checkpoint, EngineError> {
        let deltas = Self::decode_run(run, self.frontier)?;
        self.apply_all(deltas)
    }

    /// The deltas of a run ([`super::BackupChain::range_since`]) on the
    /// checkpoint at `since`, decoded in order: what a part staged as live
    /// keyed state folds in ([`super::KeyedState::apply_changes`]).
    pub fn decode_run(run: &[u8], since: Stamp) -> Result<Vec<Checkpoint>, EngineError> {
        if run.get(..4) != Some(RUN_MAGIC) {
            return Err(EngineError::Checkpoint(
                "not a run of incremental checkpoints (bad magic)".into(),
            ));
        }
        let deltas = framed_parts(run)?;
        for delta in &deltas {
            Self::verify(delta)?;
        }
        decode_deltas(since, &deltas)
    }
}

impl Checkpoint {
    /// Merges the checkpoints of two adjacent partitions taken at the same
    /// frontier (a scale in): the inverse of [`Checkpoint::partition`].
    /// `self` owns the lower range, `upper` the range right above it; their
    /// output buffers are interleaved back into stamp order per downstream.
    pub fn merge(mut self, upper: Checkpoint) -> Result<Checkpoint, EngineError> {
        let refuse = |why: String| Err(EngineError::Checkpoint(format!("cannot merge: {why}")));
        if self.operator != upper.operator {
            return refuse(format!(
                "checkpoints of `{}` and `{}`",
                self.operator, upper.operator
            ));
        }
        if self.frontier != upper.frontier {
            return refuse(format!(
                "frontiers {:?} and {:?} differ",
                self.frontier, upper.frontier
            ));
        }
        let Some(key_range) = self.key_range.join(&upper.key_range) else {
            return refuse(format!(
                "ranges {:?} and {:?} are not adjacent",
                self.key_range, upper.key_range
            ));
        };
        if !self.operator_state.is_empty() || !upper.operator_state.is_empty() {
            return refuse(format!(
                "`{}` keeps state outside its keyed state",
                self.operator
            ));
        }
        // The upper range's hashes all come after the lower's: still sorted.
        self.entries.extend(upper.entries);
        self.output_buffer.merge(upper.output_buffer)?;
        self.key_range = key_range;
        Ok(self)
    }
}

impl Checkpoint {
    /// Folds `delta`, an incremental checkpoint taken on top of this one,
    /// into it: the delta's entries replace (or add) theirs, every other
    /// entry's load halves (as the snapshot that took the delta halved the
    /// loads of the keys it did not list), the frontier and operator state
    /// become the delta's, and the output buffer takes the delta's changes.
    pub fn apply(self, delta: Checkpoint) -> Result<Checkpoint, EngineError> {
        self.apply_all(vec![delta])
    }

    /// Folds `deltas`, each taken on top of the one before and the first on
    /// this checkpoint, in one pass over this checkpoint's entries (folding
    /// them one at a time would pass over every entry once per delta): an
    /// entry takes its latest change, its load halved once for every later
    /// delta; an entry no delta changed has its load halved once per delta.
    pub fn apply_all(self, deltas: Vec<Checkpoint>) -> Result<Checkpoint, EngineError> {
        let refuse = |why: String| Err(EngineError::Checkpoint(format!("cannot apply: {why}")));
        let mut frontier = self.frontier;
        for delta in &deltas {
            if self.operator != delta.operator || self.key_range != delta.key_range {
                return refuse(format!(
                    "a delta of `{}` over {:?} onto a checkpoint of `{}` over {:?}",
                    delta.operator, delta.key_range, self.operator, self.key_range
                ));
            }
            if delta.frontier < frontier {
                return refuse(format!(
                    "the delta's frontier {:?} is below the checkpoint's {:?}",
                    delta.frontier, frontier
                ));
            }
            frontier = delta.frontier;
        }
        let folded = deltas.len() as u32;
        let halved = |load: u32, times: u32| load.checked_shr(times).unwrap_or(0);
        // Every change, the latest of each key only, in entry order.
        let mut changes: Vec<(usize, StateEntry)> = Vec::new();
        let mut output_buffer = self.output_buffer;
        let mut operator_state = None;
        for (i, delta) in deltas.into_iter().enumerate() {
            changes.extend(delta.entries.into_iter().map(|e| (i, e)));
            output_buffer = output_buffer.then(delta.output_buffer);
            operator_state = Some(delta.operator_state);
        }
        let Some(operator_state) = operator_state else {
            return Ok(Checkpoint {
                output_buffer,
                ..self
            });
        };
        changes.sort_by(|(i, a), (j, b)| (a.hash, a.key(), j).cmp(&(b.hash, b.key(), i)));
        changes
            .dedup_by(|later, kept| (later.1.hash, later.1.key()) == (kept.1.hash, kept.1.key()));
        let mut entries = Vec::with_capacity(self.entries.len() + changes.len());
        let mut changes = changes
            .into_iter()
            .map(|(i, mut e)| {
                e.load = halved(e.load, folded - 1 - i as u32);
                e
            })
            .peekable();
        for mut entry in self.entries {
            while let Some(change) =
                changes.next_if(|c| (c.hash, c.key()) < (entry.hash, entry.key()))
            {
                entries.push(change);
            }
            match changes.next_if(|c| (c.hash, c.key()) == (entry.hash, entry.key())) {
                Some(change) => entries.push(change),
                None => {
                    entry.load = halved(entry.load, folded);
                    entries.push(entry);
                }
            }
        }
        entries.extend(changes);
        Ok(Checkpoint {
            entries,
            frontier,
            output_buffer,
            operator_state,
            ..self
        })
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
