//! A backup made of incremental checkpoints: the latest full checkpoint of
//! an instance and the deltas taken on it since, kept by whoever holds the
//! instance's backup (its holders).
//!
//! Invariants, kept here and nowhere else:
//! - the chain starts with a full checkpoint, and each delta changes the
//!   checkpoint right before it (its base is the previous frontier);
//! - frontiers only move forward;
//! - every delta covers the key range of the chain's full checkpoint (an
//!   instance that was split or merged starts a new chain);
//! - once the deltas weigh more than half the full checkpoint, they are
//!   folded into it (compaction), so a chain never holds more than about
//!   one and a half times its state, and a restore never folds more.

use std::io::{self, Write};
use std::sync::Arc;

use super::checkpoint::{chain_header, chain_parts, Checkpoint, CheckpointKind, CHAIN_HEADER};
use crate::error::EngineError;
use crate::stamp::Stamp;

/// The backup of one instance: a full checkpoint and the deltas on it.
#[derive(Debug, Clone)]
pub struct BackupChain {
    /// A full checkpoint, then deltas in order, each shared with the
    /// encodings handed out ([`BackupChain::shared`]).
    parts: Vec<Arc<Vec<u8>>>,
    frontier: Stamp,
    delta_bytes: usize,
}

/// Why a checkpoint could not join a chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A delta whose base is not the chain's latest checkpoint: the holder
    /// needs a full checkpoint (or the whole chain) first.
    #[error("a delta on stamp {base} arrived at a backup whose latest checkpoint is at stamp {latest}: a full checkpoint is needed")]
    Gap {
        /// The delta's base.
        base: u64,
        /// The chain's frontier.
        latest: u64,
    },
    /// A delta of another key range than the chain's: the instance was
    /// split or merged since, and its holder needs a full checkpoint.
    #[error("a delta of key range {delta} arrived at a backup of key range {held}: a full checkpoint is needed")]
    Reshaped {
        /// The delta's key range.
        delta: String,
        /// The chain's key range.
        held: String,
    },
    /// The bytes are not a good checkpoint.
    #[error(transparent)]
    Corrupt(#[from] EngineError),
}

impl BackupChain {
    /// A chain from a full checkpoint or an encoded chain (`bytes`) whose
    /// latest frontier is `frontier`.
    pub fn new(frontier: Stamp, bytes: Vec<u8>) -> Result<Self, ChainError> {
        Checkpoint::verify(&bytes)?;
        match Checkpoint::kind(&bytes)? {
            CheckpointKind::Full => Ok(BackupChain {
                parts: vec![Arc::new(bytes)],
                frontier,
                delta_bytes: 0,
            }),
            CheckpointKind::Chain => {
                let parts: Vec<Arc<Vec<u8>>> = chain_parts(&bytes)?
                    .into_iter()
                    .map(|part| Arc::new(part.to_vec()))
                    .collect();
                let delta_bytes = parts[1..].iter().map(|part| part.len()).sum();
                Ok(BackupChain {
                    parts,
                    frontier,
                    delta_bytes,
                })
            }
            CheckpointKind::Delta { base } => Err(ChainError::Gap {
                base: base.0,
                latest: 0,
            }),
        }
    }

    /// Takes the instance's next checkpoint at `frontier`: a full one (or
    /// a chain) replaces the chain, a delta joins it if its base is the
    /// chain's frontier. An older checkpoint than the chain's is ignored.
    pub fn push(&mut self, frontier: Stamp, bytes: Vec<u8>) -> Result<(), ChainError> {
        Checkpoint::verify(&bytes)?;
        if frontier < self.frontier {
            return Ok(());
        }
        let CheckpointKind::Delta { base } = Checkpoint::kind(&bytes)? else {
            *self = BackupChain::new(frontier, bytes)?;
            return Ok(());
        };
        if base != self.frontier {
            return Err(ChainError::Gap {
                base: base.0,
                latest: self.frontier.0,
            });
        }
        let (delta, _) = Checkpoint::range_and_frontier(&bytes)?;
        let (held, _) = Checkpoint::range_and_frontier(&self.parts[0])?;
        if delta != held {
            return Err(ChainError::Reshaped {
                delta: format!("{delta:?}"),
                held: format!("{held:?}"),
            });
        }
        self.delta_bytes += bytes.len();
        self.parts.push(Arc::new(bytes));
        self.frontier = frontier;
        if self.delta_bytes > self.parts[0].len() / 2 {
            self.compact()?;
        }
        Ok(())
    }

    /// The frontier of the latest checkpoint.
    pub fn frontier(&self) -> Stamp {
        self.frontier
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.parts[0].len() + self.delta_bytes
    }

    /// The chain as one restorable encoding: the full checkpoint itself
    /// when there are no deltas, else a chain ([`Checkpoint::decode`]
    /// folds it).
    pub fn encode(&self) -> Vec<u8> {
        self.shared().to_vec()
    }

    /// The same encoding, sharing the chain's bytes instead of copying
    /// them: a holder sends gigabytes to a restoring worker without
    /// holding its lock or a second copy.
    pub fn shared(&self) -> SharedEncoding {
        SharedEncoding(self.parts.clone())
    }

    /// Folds the deltas into one full checkpoint.
    fn compact(&mut self) -> Result<(), EngineError> {
        let full = Checkpoint::decode(&self.encode())?.encode()?;
        self.parts = vec![Arc::new(full)];
        self.delta_bytes = 0;
        Ok(())
    }
}

/// A backup's encoding ([`BackupChain::encode`]) over the chain's own
/// bytes.
#[derive(Debug, Clone)]
pub struct SharedEncoding(Vec<Arc<Vec<u8>>>);

impl SharedEncoding {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self.0.as_slice() {
            [full] => full.len(),
            parts => CHAIN_HEADER + parts.iter().map(|p| 8 + p.len()).sum::<usize>(),
        }
    }

    /// Whether it is empty (never: a backup holds a full checkpoint).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies it into one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out)
            .expect("writing to a vector cannot fail");
        out
    }

    /// Writes it.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        match self.0.as_slice() {
            [full] => w.write_all(full),
            parts => {
                w.write_all(&chain_header(parts.len()))?;
                for part in parts {
                    w.write_all(&(part.len() as u64).to_le_bytes())?;
                    w.write_all(part)?;
                }
                Ok(())
            }
        }
    }
}
