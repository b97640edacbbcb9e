//! Identities shared by the coordinator, the workers and the wire format.
//! Each is its own type so that an instance id can never be passed where a
//! worker index is meant; all serialise as plain numbers, so reports and
//! the wire format read as before.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<u32> for $name {
            fn from(raw: u32) -> Self {
                $name(raw)
            }
        }
    };
}

id_type!(
    /// An operator instance, unique within a job for its whole life: a
    /// restored or split instance keeps its id, a split's new half gets a
    /// fresh one, a merged-away instance's id is never reused.
    InstanceId
);

id_type!(
    /// A worker, by the order in which it joined the coordinator. Never
    /// reused: a replacement worker gets a new id.
    WorkerId
);

id_type!(
    /// Which version of an instance this is. It changes whenever the
    /// instance is restarted from a checkpoint: after a failure, and when a
    /// split or merge narrows or widens its key range. Messages from an
    /// older incarnation are stale.
    Incarnation
);

impl Incarnation {
    /// The next incarnation.
    pub fn next(self) -> Self {
        Incarnation(self.0 + 1)
    }
}

impl WorkerId {
    /// Its position in per-worker tables (workers are numbered densely).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}
