//! Stamps (logical timestamps) and progress marks.
//!
//! Every source tuple gets a unique, strictly increasing stamp; every output
//! carries the stamp of the input that caused it. Instances process their
//! inputs in stamp order across all input channels (see [`merge`]), so a
//! replay after a failure or a split produces exactly the same outputs.

pub mod merge;

use serde::{Deserialize, Serialize};

/// A logical timestamp. Stamp 0 is never assigned to a tuple: it is the
/// "nothing seen yet" mark.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stamp(pub u64);

impl Stamp {
    /// The mark a channel sends when it will never send anything again.
    pub const END: Stamp = Stamp(u64::MAX);
    /// The mark before any tuple.
    pub const ZERO: Stamp = Stamp(0);
    /// Room for source instances in the low bits of a source stamp.
    pub const SOURCE_BITS: u32 = 8;

    /// The stamp of the `seq`-th tuple (from 1) of source instance `slot`.
    ///
    /// Interleaving the slot in the low bits keeps stamps of different sources
    /// unique without any coordination between them.
    pub fn for_source(seq: u64, slot: u32) -> Stamp {
        debug_assert!(slot < (1 << Self::SOURCE_BITS));
        Stamp((seq << Self::SOURCE_BITS) | u64::from(slot))
    }

    /// Whether this is the end-of-stream mark.
    pub fn is_end(self) -> bool {
        self == Stamp::END
    }
}
