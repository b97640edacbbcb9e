//! What the coordinator tells the outside world happened: typed kinds of
//! events, how failures were found, the job's state and scale directions. They serialise as the
//! short lowercase words that report.json, the HTTP API and the dashboard
//! page use (`kill`, `scale-out`, `running`, `in`, ...).

use serde::{Deserialize, Serialize};

/// How the coordinator found that a worker failed: what tools that explain
/// failures (the network fault matrix, `spate hosts`) read instead of the
/// event's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCause {
    /// Its control connection closed or broke, or could not be written to.
    Connection,
    /// It missed its heartbeats for the heartbeat timeout.
    Heartbeats,
    /// Data channels between it and other workers stalled, and it was
    /// judged the end cut off.
    StalledChannels,
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            FailureCause::Connection => "connection",
            FailureCause::Heartbeats => "heartbeats",
            FailureCause::StalledChannels => "stalled channels",
        })
    }
}

/// What the coordinator refused, or gave up on: what tools that count
/// refusals (the benchmarks) read instead of the event's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refused {
    /// A checkpoint that could not be taken or recorded.
    Checkpoint,
    /// A backup that its holder would not store.
    Backup,
    /// A kill that could not be made.
    Kill,
    /// A split of a partition (scale out).
    ScaleOut,
    /// A merge of two partitions (scale in).
    ScaleIn,
}

impl std::fmt::Display for Refused {
    /// The word that opens the refusal's text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Refused::Checkpoint => "checkpoint",
            Refused::Backup => "backup",
            Refused::Kill => "kill",
            Refused::ScaleOut => "scale",
            Refused::ScaleIn => "scale in",
        })
    }
}

/// What kind of thing happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Every instance was deployed and started.
    Start,
    /// A new worker joined the pool of idle workers.
    Pool,
    /// A worker was killed on purpose (an injected failure or a request).
    Kill,
    /// Workers were declared failed.
    Failure,
    /// Failed instances run again on their new workers.
    Restored,
    /// Restored instances worked off their backlog.
    CaughtUp,
    /// A stalled data channel whose hosts hear each other again was
    /// reconnected and replayed, with nobody recovered.
    Rewired,
    /// A pool worker staged a warm copy of a large instance's state, to
    /// restore it from should its worker fail.
    Standby,
    /// A partition was split.
    ScaleOut,
    /// Two partitions were merged.
    ScaleIn,
    /// An idle worker was returned (ended) to save its cost.
    Released,
    /// A request or checkpoint was refused, with the reason.
    Refused,
    /// A checkpoint of every instance was requested.
    Checkpoint,
    /// The job failed.
    Error,
}

impl EventKind {
    /// The word used in reports and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "start",
            EventKind::Pool => "pool",
            EventKind::Kill => "kill",
            EventKind::Failure => "failure",
            EventKind::Restored => "restored",
            EventKind::CaughtUp => "caught-up",
            EventKind::Rewired => "rewired",
            EventKind::Standby => "standby",
            EventKind::ScaleOut => "scale-out",
            EventKind::ScaleIn => "scale-in",
            EventKind::Released => "released",
            EventKind::Refused => "refused",
            EventKind::Checkpoint => "checkpoint",
            EventKind::Error => "error",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Workers are joining and the query is being deployed.
    #[default]
    Starting,
    /// Instances are processing.
    Running,
    /// Every instance finished its input.
    Finished,
    /// The job stopped with an error.
    Failed,
}

impl JobState {
    /// The word used in reports and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Whether a scale event added a partition or removed one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleDirection {
    /// A split: one more partition.
    #[default]
    Out,
    /// A merge: one partition fewer.
    In,
}

impl std::fmt::Display for ScaleDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ScaleDirection::Out => "out",
            ScaleDirection::In => "in",
        })
    }
}
