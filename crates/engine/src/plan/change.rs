//! What a plan change does to instances other than moving them, which
//! every worker must know to rewire its channels and output buffers.

use serde::{Deserialize, Serialize};

use super::InstanceId;
use crate::stamp::Stamp;

/// A downstream instance that did not exist before a plan change: the
/// upper half of a split `parent`, which inherits the parent's frontier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedInstance {
    /// The new instance.
    pub id: InstanceId,
    /// The instance it was split from.
    pub parent: InstanceId,
    /// The frontier of the checkpoint it was restored from.
    pub frontier: Stamp,
}

/// A downstream instance merged into its neighbour `into` by a scale in,
/// both having stopped at exactly `frontier`: what was buffered for it above
/// `frontier` now goes to `into`, in stamp order with `into`'s own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedInstance {
    /// The instance that no longer exists.
    pub id: InstanceId,
    /// The instance that took over its key range.
    pub into: InstanceId,
    /// The frontier both stopped at; the merged instance starts there.
    pub frontier: Stamp,
}
