//! What the coordinator shows the outside world: a snapshot of the cluster
//! (workers, instances with their key ranges and metrics, events, recovery
//! timelines, a per-second history) for the HTTP API and dashboard, and the
//! commands they may send back.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::{JobEvent, JobState, RecoveryTimeline, ScaleEvent};
use crate::plan::{Incarnation, InstanceId, WorkerId};

/// The view, shared between the coordinator (writer) and servers (readers).
pub type SharedView = Arc<RwLock<ClusterView>>;

/// A snapshot of a running job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterView {
    /// The query's registered name.
    pub query: String,
    /// Where the job is in its life.
    pub state: JobState,
    /// Milliseconds since the job started.
    pub elapsed_ms: u64,
    /// Checkpoint interval, milliseconds (0: fault tolerance off).
    pub checkpoint_ms: u64,
    /// Every worker that ever joined.
    pub workers: Vec<WorkerView>,
    /// The query graph: operators in query order with their instances.
    pub operators: Vec<OperatorView>,
    /// Operator-to-operator edges, by name.
    pub edges: Vec<(String, String)>,
    /// Everything notable, oldest first.
    pub events: Vec<JobEvent>,
    /// One timeline per recovery.
    pub recoveries: Vec<RecoveryTimeline>,
    /// Every split and merge, with the decision and rates behind it.
    #[serde(default)]
    pub scale_events: Vec<ScaleEvent>,
    /// Checkpoints backed up so far.
    pub checkpoints: u64,
    /// One point per second.
    pub history: Vec<HistoryPoint>,
    /// Bytes on the coordinator's control connections so far: with
    /// checkpoints going from workers to holders directly, they no longer
    /// grow with state.
    #[serde(default)]
    pub control_traffic: ControlTraffic,
}

/// Bytes the coordinator received from and sent to its workers on their
/// control connections (heartbeats and leases excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlTraffic {
    /// From workers.
    pub received_bytes: u64,
    /// To workers.
    pub sent_bytes: u64,
}

/// One worker process.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerView {
    /// Index in the plan.
    pub index: WorkerId,
    /// OS process id.
    pub pid: u32,
    /// Data-channel address.
    pub addr: String,
    /// Not failed.
    pub alive: bool,
    /// Idle, kept for recovery and scale out.
    pub pool: bool,
}

/// One operator of the query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OperatorView {
    /// Its name.
    pub name: String,
    /// `Source`, `Stateless`, `Stateful` or `Sink`.
    pub kind: String,
    /// Its instances, in key-range order.
    pub instances: Vec<InstanceView>,
}

/// One instance and its latest metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InstanceView {
    /// Instance id.
    pub id: InstanceId,
    /// Index within the operator.
    pub index: u32,
    /// Hosting worker.
    pub worker: WorkerId,
    /// First key hash owned.
    pub key_start: u64,
    /// Last key hash owned.
    pub key_end: u64,
    /// Times restored.
    pub incarnation: Incarnation,
    /// CPU time over wall time in the last interval, as a share of the
    /// worker's CPU allowance (1.0 = one core, or the whole `--worker-cpu` quota).
    pub utilization: f64,
    /// Tuples processed per second.
    pub in_rate: f64,
    /// Tuples sent per second.
    pub out_rate: f64,
    /// Batches waiting.
    pub queued_batches: u64,
    /// Bytes held for replay.
    pub buffered_bytes: u64,
    /// Tuples processed in all.
    pub tuples_in: u64,
    /// Tuples sent in all.
    pub tuples_out: u64,
    /// Reached the end of its input.
    pub finished: bool,
    /// Frontier (stamp) of its latest durable backup, if any; for a source
    /// or stateless instance, which keep none, its replay floor.
    pub checkpoint_frontier: Option<u64>,
    /// Worker holding that backup.
    pub backup_worker: Option<WorkerId>,
    /// Size of its backup, bytes: the latest full checkpoint and the
    /// increments since (a source: its latest position).
    pub checkpoint_bytes: u64,
    /// Size of its latest checkpoint as sent, bytes: an increment (the
    /// keys changed since the one before) or a full checkpoint.
    #[serde(default)]
    pub last_checkpoint_bytes: u64,
    /// Keys in its state at its latest checkpoint.
    #[serde(default)]
    pub state_keys: u64,
    /// Encoded size of those keys and values, bytes.
    #[serde(default)]
    pub state_bytes: u64,
    /// CPU seconds its thread has used so far (this incarnation).
    #[serde(default)]
    pub cpu_secs: f64,
    /// CPU seconds of those spent taking checkpoints.
    #[serde(default)]
    pub checkpoint_cpu_secs: f64,
}

/// The cluster at one second.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Milliseconds since the job started.
    pub at_ms: u64,
    /// Live workers hosting instances.
    pub workers: usize,
    /// Per operator: tuples in per second, summed over instances.
    pub in_rate: BTreeMap<String, f64>,
    /// Per operator: highest instance utilisation.
    pub utilization: BTreeMap<String, f64>,
    /// Per operator: number of instances.
    pub partitions: BTreeMap<String, usize>,
}

/// What an operator of the cluster (a person, through the API or CLI) can ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobCommand {
    /// Kill a worker process (through its provisioner), to see it recover.
    KillWorker(WorkerId),
    /// Kill the worker hosting an instance of an operator.
    KillInstance {
        /// Operator name.
        operator: String,
        /// Instance index.
        index: u32,
    },
    /// Take a checkpoint of every instance now.
    Checkpoint,
    /// Split the busiest instance of an operator in two.
    ScaleOut {
        /// Operator name.
        operator: String,
    },
    /// Merge the coldest adjacent pair of an operator's partitions.
    ScaleIn {
        /// Operator name.
        operator: String,
    },
}
