//! In-process tests of the coordinator's protocols: the whole coordinator
//! runs over in-memory links while the test plays every worker, answering
//! as real workers do, and injects checkpoints, failures, silence and
//! commands at chosen points. Each runs in milliseconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backups::{choose_holders, Backups};
use super::links::memory::{pair, pair_one_host_each, pair_over_hosts, MemoryLinks, Network};
use super::scale_in::ALIGN_TIMEOUT;
use super::{
    run_job, EventKind, FailureCause, JobConfig, JobSummary, Provisioner, Refused, ScaleDirection,
    ScalePolicy,
};
use crate::api::{
    NodeKind, Operator, OperatorError, Output, Query, QueryBuilder, QueryRegistry, Sink, Source,
    SourceStep, StatefulOperator,
};
use crate::error::EngineError;
use crate::hash::key_hash;
use crate::ids::{Incarnation, InstanceId, WorkerId};
use crate::plan::Plan;
use crate::stamp::Stamp;
use crate::state::testing::encoded;
use crate::state::{Checkpoint, CheckpointParts, KeyRange, KeyedState, OutputBuffer};
use crate::wire::control::{
    BackupAck, BackupShipment, InstanceMetrics, InstanceStats, Refusal, RestoreFrom, StagedSource,
    ToCoordinator, ToWorker,
};
use crate::worker::backup::Holdings;

/// A source the coordinator never runs: only the graph matters here.
struct Idle;

impl Source for Idle {
    type Out = u64;
    fn next(&mut self) -> Result<SourceStep<u64>, OperatorError> {
        Ok(SourceStep::Done)
    }
}

/// A stateless pass-through.
struct Pass;

impl Operator for Pass {
    type In = u64;
    type Out = u64;
    fn process(&mut self, input: u64, out: &mut Output<'_, u64>) -> Result<(), OperatorError> {
        out.emit(input)
    }
}

/// A keyed count.
struct Count;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Total(u64);

impl StatefulOperator for Count {
    type In = u64;
    type Key = u64;
    type State = Total;
    type Out = u64;
    fn key(input: &u64) -> u64 {
        *input
    }
    fn process(
        &mut self,
        _input: u64,
        state: &mut Total,
        out: &mut Output<'_, u64>,
    ) -> Result<(), OperatorError> {
        state.0 += 1;
        out.emit(state.0)
    }
}

/// A sink that drops everything.
struct Drop;

impl Sink for Drop {
    type In = u64;
    fn write(&mut self, _input: u64) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// source -> pass (stateless) -> count (stateful, 2 partitions) -> sink.
fn registry() -> QueryRegistry {
    let mut registry = QueryRegistry::new();
    registry.register("chain", "a four-stage chain", |_| {
        let mut q = QueryBuilder::new();
        let source = q.source("source", 1, |_| Ok(Idle));
        let pass = q.operator("pass", 1, &[source], |_| Ok(Pass));
        let count = q.stateful("count", 2, &[pass], |_| Ok(Count));
        q.sink("sink", 1, &[count], |_| Ok(Drop));
        q.build()
    });
    registry
}

/// Starts pool workers by joining them to the test network, and ends
/// workers by breaking their links (as a crash would).
struct FakeProvisioner {
    net: Network,
    stopped: Vec<WorkerId>,
}

impl Provisioner for FakeProvisioner {
    fn check(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
    fn provision(&mut self) -> Result<(), EngineError> {
        self.net.join();
        Ok(())
    }
    fn stop(&mut self, worker: WorkerId, _pid: u32, _addr: &str) -> Result<(), EngineError> {
        self.stopped.push(worker);
        self.net.break_link(worker);
        Ok(())
    }
}

/// Every worker, played by the test: answers the coordinator as a worker
/// would and remembers what it was told.
struct Cluster {
    net: Network,
    /// The query the coordinator deployed, for its operators' kinds.
    query: Query,
    plan: Option<Plan>,
    /// Each worker's backups, kept as a real holder keeps them.
    holdings: HashMap<WorkerId, Holdings>,
    /// The backups held: (holder, instance).
    held: HashSet<(WorkerId, InstanceId)>,
    /// Each instance's holders, as each worker was told.
    routes: HashMap<(WorkerId, InstanceId), Vec<WorkerId>>,
    /// Everything the coordinator sent.
    log: Vec<(WorkerId, ToWorker)>,
    /// Each paused instance and its incarnation.
    paused: HashMap<InstanceId, Incarnation>,
    /// Holders that answer a fetch as if they had lost their copy.
    forgetful: HashSet<WorkerId>,
    /// Workers whose data network cannot reach these holders (a cut
    /// between them), though both reach the coordinator.
    out_of_reach: HashSet<WorkerId>,
    /// The checkpoint each restored instance last restored from (`None`:
    /// it started empty).
    restored: BTreeMap<InstanceId, Option<Checkpoint>>,
    /// Checkpoints to corrupt before sending.
    corrupt: bool,
    /// Instances checkpoint incrementally (on their previous checkpoint),
    /// each checkpoint adding one key, as a real instance would send it.
    incremental: bool,
    /// Each incarnation's previous checkpoint, and the keys since it.
    taken: HashMap<(InstanceId, Incarnation), Stamp>,
    /// Instances asked for a full checkpoint next.
    full_next: HashSet<InstanceId>,
    /// Parts staged for live splits: (worker, instance split, range).
    staged: HashMap<(WorkerId, InstanceId, KeyRange), Checkpoint>,
    /// Workers that fail to stage what they are asked to.
    cannot_stage: HashSet<WorkerId>,
    /// Instances that, resumed, never reach where they were told to run
    /// to (held up behind a fault), so they take no checkpoint there.
    stuck_on_resume: HashSet<InstanceId>,
    /// Instances whose holders lack the base of the checkpoint a resume
    /// stops them at (new holders after a recovery, say), so they refuse
    /// it; then where each of them stopped.
    refused_on_resume: HashSet<InstanceId>,
    stopped_at: HashMap<InstanceId, Stamp>,
    /// Staging never ends: no worker answers a request to stage (each
    /// fetch held up behind a slow link).
    staging_held: bool,
    /// No instance takes a checkpoint when asked to (each held up behind
    /// a slow downstream).
    checkpoints_held: bool,
    /// Where the instances get to while a live split stages its parts.
    runs_on: Option<Stamp>,
    /// How far the fake instances got.
    progress: Stamp,
    started: bool,
}

impl Cluster {
    fn new(net: Network) -> Self {
        Cluster {
            net,
            query: registry()
                .build("chain", &serde_json::json!({}))
                .expect("builds"),
            plan: None,
            holdings: HashMap::new(),
            held: HashSet::new(),
            routes: HashMap::new(),
            log: Vec::new(),
            paused: HashMap::new(),
            forgetful: HashSet::new(),
            out_of_reach: HashSet::new(),
            restored: BTreeMap::new(),
            corrupt: false,
            incremental: false,
            taken: HashMap::new(),
            full_next: HashSet::new(),
            staged: HashMap::new(),
            cannot_stage: HashSet::new(),
            stuck_on_resume: HashSet::new(),
            refused_on_resume: HashSet::new(),
            stopped_at: HashMap::new(),
            staging_held: false,
            checkpoints_held: false,
            runs_on: None,
            progress: Stamp(100),
            started: false,
        }
    }

    /// Answers what the coordinator sent until `until` holds or `timeout`.
    fn run_until(&mut self, timeout: Duration, until: impl Fn(&Cluster) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if until(self) {
                return true;
            }
            if let Ok((w, message)) = self.net.sent.recv_timeout(Duration::from_millis(5)) {
                self.answer(w, message);
            }
        }
        until(self)
    }

    /// Answers for a while.
    fn settle(&mut self, time: Duration) {
        self.run_until(time, |_| false);
    }

    fn answer(&mut self, w: WorkerId, message: ToWorker) {
        self.log.push((w, message.clone()));
        if self.net.is_broken(w) {
            return;
        }
        match message {
            ToWorker::Deploy { plan, .. } => {
                self.plan = Some(plan);
                self.net.say(w, ToCoordinator::Deployed);
            }
            ToWorker::Start => self.started = true,
            ToWorker::BackupRoutes { routes } => {
                for route in routes {
                    let holders: Vec<WorkerId> = route.holders.iter().map(|h| h.worker).collect();
                    self.routes.insert((w, route.instance), holders);
                }
            }
            ToWorker::Replicate {
                instance,
                incarnation,
                to,
            } => {
                let replica = self
                    .held_backup(w, instance)
                    .filter(|_| !self.net.is_broken(to.worker));
                if let Some(bytes) = replica {
                    let frontier = Checkpoint::frontier(&bytes).expect("valid");
                    let shipment = BackupShipment {
                        instance,
                        incarnation,
                        frontier,
                        bytes,
                    };
                    self.store_at(to.worker, shipment);
                }
            }
            ToWorker::DropBackup { instance } => {
                if let Some(h) = self.holdings.get(&w) {
                    h.drop_backup(instance);
                }
                self.held.remove(&(w, instance));
            }
            ToWorker::FetchBackup { instance } => {
                let bytes = self.held_backup(w, instance);
                self.net.say(w, ToCoordinator::Backup { instance, bytes });
            }
            ToWorker::Restore { instances, plan } => {
                self.plan = Some(plan);
                for (instance, from) in instances {
                    let state = match from {
                        RestoreFrom::Nothing => Ok(None),
                        RestoreFrom::Checkpoint(bytes) => {
                            Ok(Some(Checkpoint::decode(&bytes).expect("valid")))
                        }
                        RestoreFrom::Holder(holder) => self
                            .held_backup(holder.worker, instance)
                            .filter(|_| !self.out_of_reach.contains(&holder.worker))
                            .map(|b| Some(Checkpoint::decode(&b).expect("valid")))
                            .ok_or(holder.worker),
                        RestoreFrom::Staged(from) => self.catch_up(w, &from).map(Some),
                        RestoreFrom::StagedMerge { lower, upper } => self
                            .catch_up(w, &lower)
                            .and_then(|low| Ok(low.merge(self.catch_up(w, &upper)?)))
                            .map(|merged| Some(merged.expect("merges"))),
                    };
                    let answer = match state {
                        Ok(checkpoint) => {
                            self.restored.insert(instance, checkpoint);
                            ToCoordinator::Restored { instance }
                        }
                        Err(holder) => ToCoordinator::RestoreUnavailable {
                            instance,
                            holder,
                            reason: "it holds none".into(),
                        },
                    };
                    self.net.say(w, answer);
                }
            }
            ToWorker::PlanUpdate { plan, .. } => self.plan = Some(plan),
            ToWorker::CheckpointNow if self.checkpoints_held => {}
            ToWorker::CheckpointNow => {
                for id in self.hosted(w) {
                    self.checkpoint(id, self.progress);
                }
            }
            ToWorker::CheckpointFull { instance } => {
                self.full_next.insert(instance);
                // A stopped instance checkpoints where it is at once, as a
                // worker does.
                if let Some(at) = self.stopped_at.remove(&instance) {
                    self.checkpoint(instance, at);
                }
            }
            ToWorker::Pause { instance } => {
                if let Some(incarnation) = self.incarnation(instance) {
                    self.paused.insert(instance, incarnation);
                    let done = self.progress;
                    self.net.say(
                        w,
                        ToCoordinator::Paused {
                            instance,
                            incarnation,
                            done,
                        },
                    );
                }
            }
            ToWorker::Resume { instance, until } => {
                self.paused.remove(&instance);
                if until.is_end() || self.stuck_on_resume.contains(&instance) {
                    return;
                }
                if self.refused_on_resume.remove(&instance) {
                    self.stopped_at.insert(instance, until);
                    for holder in self.route(instance) {
                        let refusal = ToCoordinator::BackupRefused {
                            instance,
                            refusal: Refusal::NotItsBase,
                            reason: "it lacks the checkpoint's base".into(),
                        };
                        self.net.say(holder, refusal);
                    }
                } else {
                    self.checkpoint(instance, until);
                }
            }
            ToWorker::CutBackup { instance, parts } => {
                let cuts = self
                    .holdings
                    .get(&w)
                    .filter(|_| !self.forgetful.contains(&w))
                    .and_then(|h| h.cuts(instance, parts))
                    .map(|cuts| cuts.expect("cuts"));
                let (frontier, parts) = cuts.unwrap_or((Stamp::ZERO, Vec::new()));
                self.net.say(
                    w,
                    ToCoordinator::Cuts {
                        instance,
                        frontier,
                        parts,
                    },
                );
            }
            ToWorker::Stage { .. } if self.staging_held => {}
            ToWorker::Stage {
                instance,
                range,
                holders,
                ..
            } => {
                let part = holders
                    .iter()
                    .find_map(|h| self.range_at(h.worker, instance, range, None))
                    .filter(|_| !self.cannot_stage.contains(&w))
                    .map(|(_, bytes)| Checkpoint::decode(&bytes).expect("valid"));
                let frontier = part.as_ref().map(|p| p.frontier);
                let keys = part.as_ref().map_or(0, |p| p.entries.len());
                self.progress = self.progress.max(self.runs_on.unwrap_or(Stamp::ZERO));
                if let Some(part) = part {
                    self.staged.insert((w, instance, range), part);
                }
                let reason = "no holder gave it".to_string();
                self.net.say(
                    w,
                    ToCoordinator::Staged {
                        instance,
                        range,
                        frontier,
                        keys,
                        reason,
                    },
                );
            }
            ToWorker::Unstage { instance } => {
                self.staged
                    .retain(|(at, i, _), _| (*at, *i) != (w, instance));
            }
            ToWorker::ReshapeBackup {
                instance,
                frontier,
                parts,
            } => {
                let cut: Vec<_> = parts
                    .iter()
                    .map(|p| self.range_at(w, instance, p.range, None))
                    .collect();
                for (part, cut) in parts.into_iter().zip(cut) {
                    match cut.filter(|(_, b)| Checkpoint::frontier(b).ok() == Some(frontier)) {
                        Some((_, bytes)) => self.store_at(
                            w,
                            BackupShipment {
                                instance: part.instance,
                                incarnation: part.incarnation,
                                frontier,
                                bytes,
                            },
                        ),
                        None => self.net.say(
                            w,
                            ToCoordinator::BackupRefused {
                                instance: part.instance,
                                refusal: Refusal::NotItsBase,
                                reason: "cannot cut it".into(),
                            },
                        ),
                    }
                }
            }
            ToWorker::MergeBackups {
                upper,
                frontier,
                merged,
                upper_holders,
            } => {
                let backup = |c: &Cluster, at: WorkerId, id: InstanceId| {
                    c.held_backup(at, id)
                        .map(|b| Checkpoint::decode(&b).expect("valid"))
                        .filter(|b| b.frontier == frontier)
                };
                let high = backup(self, w, upper).or_else(|| {
                    upper_holders
                        .iter()
                        .find_map(|h| backup(self, h.worker, upper))
                });
                match (backup(self, w, merged.instance), high) {
                    (Some(low), Some(high)) => {
                        let bytes = low.merge(high).expect("merges").encode().expect("encodes");
                        self.store_at(
                            w,
                            BackupShipment {
                                instance: merged.instance,
                                incarnation: merged.incarnation,
                                frontier,
                                bytes,
                            },
                        );
                    }
                    _ => self.net.say(
                        w,
                        ToCoordinator::BackupRefused {
                            instance: merged.instance,
                            refusal: Refusal::NotItsBase,
                            reason: "cannot merge them".into(),
                        },
                    ),
                }
            }
            ToWorker::Trim { .. }
            | ToWorker::Shutdown
            | ToWorker::Lease { .. }
            | ToWorker::Rewire { .. } => {}
        }
    }

    /// What holder `holder` gives a staging worker for `range` of
    /// `instance` (since `since`): nothing if it is cut off or forgetful.
    fn range_at(
        &self,
        holder: WorkerId,
        instance: InstanceId,
        range: KeyRange,
        since: Option<Stamp>,
    ) -> Option<(Option<Stamp>, Vec<u8>)> {
        self.holdings
            .get(&holder)
            .filter(|_| !self.forgetful.contains(&holder) && !self.net.is_broken(holder))
            .and_then(|h| h.range_since(instance, range, since))
            .and_then(Result::ok)
    }

    /// A live split's part restored on `w`, as a real worker catches it
    /// up: what it staged, and the changes since from the first holder
    /// that gives them; an error names the last holder tried.
    fn catch_up(&mut self, w: WorkerId, from: &StagedSource) -> Result<Checkpoint, WorkerId> {
        let (parent, range) = (from.parent, from.range);
        let holders: Vec<WorkerId> = from.holders.iter().map(|h| h.worker).collect();
        let staged = self
            .staged
            .remove(&(w, parent, range))
            .filter(|p| p.frontier == from.since);
        let asked = staged.as_ref().map(|p| p.frontier);
        for holder in &holders {
            match (self.range_at(*holder, parent, range, asked), &staged) {
                (Some((Some(_), run)), Some(part)) => {
                    return Ok(part.clone().apply_run(&run).expect("applies"))
                }
                (Some((_, bytes)), _) => return Ok(Checkpoint::decode(&bytes).expect("valid")),
                (None, _) => {}
            }
        }
        Err(holders.last().copied().unwrap_or(WorkerId(0)))
    }

    fn plan(&self) -> &Plan {
        self.plan.as_ref().expect("deployed")
    }

    fn incarnation(&self, id: InstanceId) -> Option<Incarnation> {
        self.plan().instance(id).map(|(_, p)| p.incarnation)
    }

    /// The instances `w` hosts.
    fn hosted(&self, w: WorkerId) -> Vec<InstanceId> {
        self.plan()
            .instances()
            .filter(|(_, i)| i.worker == w)
            .map(|(_, i)| i.id)
            .collect()
    }

    /// The ids of `operator`'s instances, in key order.
    fn ids(&self, operator: &str) -> Vec<InstanceId> {
        self.plan()
            .nodes
            .iter()
            .find(|n| n.name == operator)
            .map(|n| n.instances.iter().map(|i| i.id).collect())
            .unwrap_or_default()
    }

    /// The worker hosting `id`.
    fn host(&self, id: InstanceId) -> WorkerId {
        self.plan().instance(id).expect("planned").1.worker
    }

    /// Instance `id` checkpoints at `frontier`, as its worker would: in
    /// full, or (when `incremental`) as the key `frontier` added since its
    /// previous checkpoint; a source's goes to the coordinator, a stateful
    /// instance's or a sink's to its holders.
    fn checkpoint(&mut self, id: InstanceId, frontier: Stamp) {
        let Some((node, placed)) = self.plan().instance(id) else {
            return;
        };
        let (operator, placed) = (self.plan().nodes[node].name.clone(), placed.clone());
        let previous = self.taken.insert((id, placed.incarnation), frontier);
        let base = previous.filter(|_| self.incremental && !self.full_next.remove(&id));
        let keys: Vec<u64> = if self.incremental {
            let mut keys: Vec<u64> = (0..frontier.0.max(1))
                .filter(|k| placed.key_range.contains(key_hash(k)))
                .collect();
            if base.is_some() {
                keys.retain(|k| *k >= previous.map_or(0, |p| p.0));
            }
            keys
        } else {
            Vec::new()
        };
        let mut state: KeyedState<u64, u64> = KeyedState::default();
        for k in keys {
            *state.get_or_default(k) = k;
        }
        let entries = state.snapshot().expect("snapshots");
        let parts = CheckpointParts {
            operator: &operator,
            key_range: placed.key_range,
            frontier,
            entries: &entries,
            output_buffer: &OutputBuffer::default(),
            operator_state: &[],
        };
        let mut bytes = match base {
            Some(base) => parts.encode_delta(base, None),
            None => parts.encode(),
        }
        .expect("encodes");
        if self.corrupt {
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
        }
        match self.query.kind(node) {
            NodeKind::Source => self.net.say(
                placed.worker,
                ToCoordinator::Checkpoint {
                    instance: id,
                    incarnation: placed.incarnation,
                    frontier,
                    bytes,
                },
            ),
            NodeKind::Stateless => {}
            NodeKind::Stateful | NodeKind::Sink => {
                let shipment = BackupShipment {
                    instance: id,
                    incarnation: placed.incarnation,
                    frontier,
                    bytes,
                };
                self.ship(&shipment);
            }
        }
    }

    /// Delivers a checkpoint to each live holder its worker was told of,
    /// which answers the coordinator as a real holder does.
    fn ship(&mut self, shipment: &BackupShipment) {
        let holders = self.route(shipment.instance);
        for holder in holders {
            if !self.net.is_broken(holder) {
                self.store_at(holder, shipment.clone());
            }
        }
    }

    /// Holder `holder` takes `shipment` and answers the coordinator, as a
    /// real holder would.
    fn store_at(&mut self, holder: WorkerId, shipment: BackupShipment) {
        let instance = shipment.instance;
        let answer = self.holdings.entry(holder).or_default().store(shipment);
        if matches!(answer, ToCoordinator::BackupStored(_)) {
            self.held.insert((holder, instance));
        }
        self.net.say(holder, answer);
    }

    /// The holders the worker hosting `id` was told of.
    fn route(&self, id: InstanceId) -> Vec<WorkerId> {
        self.routes
            .get(&(self.host(id), id))
            .cloned()
            .unwrap_or_default()
    }

    /// Every instance checkpoints at `frontier`, and the backups settle.
    fn checkpointed(&mut self, frontier: Stamp) {
        self.checkpoint_all(frontier);
        self.settle(Duration::from_millis(50));
    }

    /// The worker hosting `id` crashes; returns once `id` runs elsewhere.
    fn crash_host_of(&mut self, id: InstanceId) -> WorkerId {
        let host = self.host(id);
        self.net.break_link(host);
        assert!(
            self.run_until(Duration::from_secs(5), |c| c.host(id) != host),
            "instance {id} was not moved off worker {host}"
        );
        host
    }

    /// Every instance checkpoints at `frontier`.
    fn checkpoint_all(&mut self, frontier: Stamp) {
        self.progress = frontier;
        let ids: Vec<InstanceId> = self.plan().instances().map(|(_, i)| i.id).collect();
        for id in ids {
            if !self.net.is_broken(self.host(id)) {
                self.checkpoint(id, frontier);
            }
        }
    }

    /// Every instance of the current plan finishes.
    fn finish_all(&self) {
        for (_, i) in self.plan().instances() {
            self.net.say(
                i.worker,
                ToCoordinator::InstanceFinished {
                    instance: i.id,
                    stats: InstanceStats::default(),
                },
            );
        }
    }

    /// Messages of one kind the coordinator sent to `w`.
    fn sent_to(&self, w: WorkerId, kind: fn(&ToWorker) -> bool) -> usize {
        self.log
            .iter()
            .filter(|(to, m)| *to == w && kind(m))
            .count()
    }

    /// The frontier of the checkpoint each restored instance got.
    fn restored_frontiers(&self) -> BTreeMap<InstanceId, Option<Stamp>> {
        self.restored
            .iter()
            .map(|(id, c)| (*id, c.as_ref().map(|c| c.frontier)))
            .collect()
    }

    /// The holders asked for `id`'s backup, by the coordinator or in a
    /// restore.
    fn holders_asked(&self, id: InstanceId) -> HashSet<WorkerId> {
        self.log
            .iter()
            .filter_map(|(w, m)| match m {
                ToWorker::FetchBackup { instance } if *instance == id => Some(*w),
                ToWorker::Restore { instances, .. } => {
                    instances.iter().find_map(|(instance, from)| match from {
                        RestoreFrom::Holder(h) if *instance == id => Some(h.worker),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// What holder `holder` gives when asked for `instance`'s backup (by
    /// the coordinator or by a restoring worker): nothing if it is cut off
    /// or forgetful.
    fn held_backup(&self, holder: WorkerId, instance: InstanceId) -> Option<Vec<u8>> {
        self.holdings
            .get(&holder)
            .filter(|_| !self.forgetful.contains(&holder) && !self.net.is_broken(holder))
            .and_then(|h| h.fetch(instance))
    }
}

/// A job's options for these tests: 3 workers, a pool of `pool`.
fn config(pool: usize) -> JobConfig {
    let mut config = JobConfig::new("chain", serde_json::json!({}), 3);
    config.pool = pool;
    config.heartbeat_timeout = Duration::from_millis(200);
    config.startup_timeout = Duration::from_secs(5);
    config
}

/// Runs a job over in-memory links while `script` plays the workers, then
/// finishes every instance; returns the summary, the cluster and the
/// provisioner's stops.
fn scenario(
    config: JobConfig,
    script: impl FnOnce(&mut Cluster),
) -> (Result<JobSummary, EngineError>, Cluster, Vec<WorkerId>) {
    scenario_over(pair(), config, script)
}

/// [`scenario`] over the links and network of `ends`.
fn scenario_over(
    ends: (MemoryLinks, Network),
    config: JobConfig,
    script: impl FnOnce(&mut Cluster),
) -> (Result<JobSummary, EngineError>, Cluster, Vec<WorkerId>) {
    let registry = registry();
    let (mut links, net) = ends;
    let mut provisioner = FakeProvisioner {
        net: net.clone(),
        stopped: Vec::new(),
    };
    for _ in 0..config.workers + config.pool {
        net.join();
    }
    let mut cluster = Cluster::new(net);
    let result = thread::scope(|s| {
        let job = s.spawn(|| run_job(&registry, &config, &mut links, &mut provisioner));
        assert!(
            cluster.run_until(Duration::from_secs(5), |c| c.started),
            "the job did not start"
        );
        let scripted =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| script(&mut cluster)));
        if scripted.is_err() {
            // End the job so that the failure is reported, not a hang.
            config
                .cancel
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let give_up = Instant::now() + Duration::from_secs(20);
        while !job.is_finished() && Instant::now() < give_up {
            // Every instance of the plan as it is now, again and again: a
            // reconfiguration still running may change it.
            cluster.settle(Duration::from_millis(20));
            cluster.finish_all();
        }
        assert!(job.is_finished(), "the job did not end");
        if let Err(panic) = scripted {
            std::panic::resume_unwind(panic);
        }
        job.join().expect("the coordinator did not panic")
    });
    (result, cluster, provisioner.stopped)
}

fn kinds(summary: &JobSummary, kind: EventKind) -> usize {
    summary.events.iter().filter(|e| e.kind == kind).count()
}

/// The failure events: the workers each declared failed, and how.
fn failures(summary: &JobSummary) -> Vec<(Vec<WorkerId>, Option<FailureCause>)> {
    summary
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Failure)
        .map(|e| (e.workers.clone(), e.cause))
        .collect()
}

fn is_restore(m: &ToWorker) -> bool {
    matches!(m, ToWorker::Restore { .. })
}

#[test]
fn a_failure_free_job_deploys_starts_and_finishes() {
    let (result, cluster, stopped) = scenario(config(1), |c| c.checkpoint_all(Stamp(10)));
    let summary = result.expect("finishes");
    assert_eq!(summary.instances.len(), 5);
    assert_eq!(kinds(&summary, EventKind::Start), 1);
    assert!(summary.recoveries.is_empty());
    assert!(stopped.is_empty());
    // Every worker, the pool's too, got the query.
    for w in 0..4 {
        assert_eq!(
            cluster.sent_to(WorkerId(w), |m| matches!(m, ToWorker::Deploy { .. })),
            1
        );
    }
}

#[test]
fn checkpoints_of_stateful_instances_are_backed_up_on_another_worker() {
    let (result, cluster, _) = scenario(config(1), |c| {
        c.checkpointed(Stamp(10));
    });
    let summary = result.expect("finishes");
    // Two count partitions and the sink are backed up, each on two
    // holders; source and pass are not.
    assert_eq!(cluster.held.len(), 6);
    for (holder, id) in &cluster.held {
        assert_ne!(
            *holder,
            cluster.host(*id),
            "instance {id} backed up on its own worker"
        );
    }
    // Each holder's copy counts, and source positions too.
    assert_eq!(summary.checkpoints, 7);
    // The coordinator sent no checkpoint anywhere: they went from worker
    // to holder.
    assert!(!cluster
        .log
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::Restore { .. })));
}

#[test]
fn a_crashed_worker_is_restored_on_the_pool_worker_from_its_backup() {
    let (result, cluster, _) = scenario(config(1), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        let host = c.host(count);
        c.net.break_link(host);
        assert!(c.run_until(Duration::from_secs(5), |c| c.host(count) == WorkerId(3)));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    let frontiers = cluster.restored_frontiers();
    let count = cluster.ids("count")[0];
    assert_eq!(frontiers[&count], Some(Stamp(10)));
    assert_eq!(kinds(&summary, EventKind::Restored), 1);
}

#[test]
fn a_restored_instance_is_told_its_route_and_its_backups_go_on() {
    let (result, cluster, _) = scenario(config(1), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        c.crash_host_of(count);
        c.settle(Duration::from_millis(50));
        assert_eq!(c.route(count).len(), 2, "no route on its new worker");
        c.checkpointed(Stamp(20));
    });
    result.expect("finishes");
    let count = cluster.ids("count")[0];
    assert!(cluster.log.iter().any(|(_, m)| matches!(
        m,
        ToWorker::Trim { downstream, frontier } if *downstream == count && *frontier == Stamp(20)
    )));
}

#[test]
fn an_instance_without_a_checkpoint_restarts_from_the_beginning() {
    let (result, cluster, _) = scenario(config(1), |c| {
        let count = c.ids("count")[1];
        c.net.break_link(c.host(count));
        assert!(c.run_until(Duration::from_secs(5), |c| c.host(count) == WorkerId(3)));
    });
    result.expect("finishes");
    let count = cluster.ids("count")[1];
    assert_eq!(cluster.restored_frontiers()[&count], None);
}

#[test]
fn a_silent_worker_is_declared_failed_ended_and_recovered() {
    let (result, cluster, stopped) = scenario(config(1), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        let host = c.host(count);
        c.net.silence(host);
        assert!(c.run_until(Duration::from_secs(5), |c| c.host(count) != host));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    // The silent worker was ordered to exit and ended by its provisioner.
    let silent = summary.recoveries[0].workers[0];
    assert_eq!(
        failures(&summary),
        [(vec![silent], Some(FailureCause::Heartbeats))]
    );
    assert!(stopped.contains(&silent));
    assert_eq!(
        cluster.sent_to(silent, |m| matches!(m, ToWorker::Shutdown)),
        1
    );
}

#[test]
fn a_stalled_channel_recovers_the_unreachable_worker_and_fences_it() {
    let (result, _, stopped) = scenario(config(1), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        let host = c.host(count);
        let reporter = c.host(c.ids("pass")[0]);
        assert_ne!(reporter, host, "one instance per worker");
        c.net.say(
            reporter,
            ToCoordinator::LinkStalled {
                peer: c.net.addr(host),
                silent_ms: 1000,
            },
        );
        assert!(c.run_until(Duration::from_secs(5), |c| c.host(count) != host));
        assert!(c.net.is_fenced(host));
        // Whatever the fenced worker still says is ignored (an instance
        // failure would otherwise fail the job).
        c.net.say(
            host,
            ToCoordinator::InstanceFailed {
                instance: count,
                error: "late word from a fenced worker".into(),
            },
        );
        c.settle(Duration::from_millis(100));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    let failed = summary.recoveries[0].workers[0];
    assert!(stopped.contains(&failed));
    assert_eq!(
        failures(&summary),
        [(vec![failed], Some(FailureCause::StalledChannels))]
    );
}

#[test]
fn a_worker_fenced_for_stalled_channels_first_hands_over_the_last_copies_it_holds() {
    // One backup copy each: the holder of `count` is cut off and fenced,
    // and `count` fails before it checkpoints again. The holder still
    // answered the coordinator, which took the copy before fencing it.
    let mut config = config(1);
    config.backup_copies = 1;
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        let (host, holder) = (c.host(count), c.route(count)[0]);
        let reporter = (0..3)
            .map(WorkerId)
            .find(|w| ![host, holder].contains(w))
            .expect("three workers");
        c.net.say(
            reporter,
            ToCoordinator::LinkStalled {
                peer: c.net.addr(holder),
                silent_ms: 1000,
            },
        );
        assert!(c.run_until(Duration::from_secs(5), |c| c.net.is_fenced(holder)));
        assert!(c.log.iter().any(|(to, m)| *to == holder
            && matches!(m, ToWorker::FetchBackup { instance } if *instance == count)));
        c.net.break_link(host);
        assert!(c.run_until(Duration::from_secs(5), |c| {
            let h = c.host(count);
            h != host && !c.net.is_broken(h)
        }));
    });
    result.expect("finishes: the copy taken from the fenced holder restores `count`");
    let count = cluster.ids("count")[0];
    assert_eq!(cluster.restored_frontiers()[&count], Some(Stamp(10)));
}

#[test]
fn a_one_to_one_stall_recovers_the_end_that_heard_from_no_third_host() {
    // The worker of `pass` reports its channel to the worker of `count`,
    // each on a host of its own; what each heard from a third host lately
    // (or long before the report, which proves nothing) tells who is cut
    // off.
    struct Case {
        reporter_heard: bool,
        peer_heard: bool,
        heard_before_report: Duration,
        cut_off_reporter: bool,
    }
    let cases = [
        Case {
            reporter_heard: true,
            peer_heard: false,
            heard_before_report: Duration::ZERO,
            cut_off_reporter: false,
        },
        Case {
            reporter_heard: false,
            peer_heard: true,
            heard_before_report: Duration::ZERO,
            cut_off_reporter: true,
        },
        Case {
            reporter_heard: false,
            peer_heard: true,
            heard_before_report: Duration::from_millis(700),
            cut_off_reporter: false,
        },
    ];
    for case in cases {
        let (result, _, _) = scenario_over(pair_one_host_each(), config(1), |c| {
            c.checkpointed(Stamp(10));
            let count = c.ids("count")[0];
            let (reporter, peer) = (c.host(c.ids("pass")[0]), c.host(count));
            let third = (0..4)
                .map(WorkerId)
                .find(|w| ![reporter, peer].contains(w))
                .expect("four workers");
            let third_host = c.net.host(third);
            if case.reporter_heard {
                c.net.hear(reporter, &third_host);
            }
            if case.peer_heard {
                c.net.hear(peer, &third_host);
            }
            c.settle(case.heard_before_report);
            c.net.say(
                reporter,
                ToCoordinator::LinkStalled {
                    peer: c.net.addr(peer),
                    silent_ms: 1000,
                },
            );
            let (cut_off, spared) = if case.cut_off_reporter {
                (reporter, peer)
            } else {
                (peer, reporter)
            };
            assert!(c.run_until(Duration::from_secs(5), |c| c.net.is_fenced(cut_off)));
            assert!(!c.net.is_fenced(spared));
        });
        result.expect("finishes");
    }
}

#[test]
fn a_stall_with_no_news_at_either_end_is_judged_by_what_their_hosts_heard() {
    // Six workers over three hosts, worker w on host w % 3: the three
    // running instances each on a host of its own, each beside a pool
    // worker. Neither end of the stall heard from a third host (the
    // reporter's upstream, say, cut off, had nothing to send), but a
    // worker beside one of them did: that end's host is not the one cut
    // off.
    for neighbour_of_reporter_heard in [false, true] {
        let (result, _, _) = scenario_over(pair_over_hosts(3), config(3), |c| {
            c.checkpointed(Stamp(10));
            let (reporter, peer) = (c.host(c.ids("pass")[0]), c.host(c.ids("count")[0]));
            assert_ne!(c.net.host(reporter), c.net.host(peer));
            let third_host = (0..3)
                .map(|w| c.net.host(WorkerId(w)))
                .find(|h| ![c.net.host(reporter), c.net.host(peer)].contains(h))
                .expect("three hosts");
            let (heard, cut_off) = if neighbour_of_reporter_heard {
                (reporter, peer)
            } else {
                (peer, reporter)
            };
            let neighbour = (0..6)
                .map(WorkerId)
                .find(|w| *w != heard && c.net.host(*w) == c.net.host(heard))
                .expect("two workers a host");
            c.net.hear(neighbour, &third_host);
            c.net.say(
                reporter,
                ToCoordinator::LinkStalled {
                    peer: c.net.addr(peer),
                    silent_ms: 1000,
                },
            );
            assert!(c.run_until(Duration::from_secs(5), |c| c.net.is_fenced(cut_off)));
            assert!(!c.net.is_fenced(heard));
        });
        result.expect("finishes");
    }
}

#[test]
fn a_stall_whose_ends_hear_each_other_again_is_rewired_until_it_stalls_again() {
    // A cut between the two workers' hosts that healed by the decision
    // (they hear from each other's host): the reporter reconnects its channel
    // and nobody is recovered. The same two stalling again soon after are
    // a path that keeps failing, and one of them is recovered.
    let (result, _, _) = scenario_over(pair_one_host_each(), config(1), |c| {
        c.checkpointed(Stamp(10));
        let (reporter, peer) = (c.host(c.ids("pass")[0]), c.host(c.ids("count")[0]));
        let stall = |c: &Cluster| {
            c.net.hear(reporter, &c.net.host(peer));
            c.net.hear(peer, &c.net.host(reporter));
            c.net.say(
                reporter,
                ToCoordinator::LinkStalled {
                    peer: c.net.addr(peer),
                    silent_ms: 1000,
                },
            );
        };
        let rewired = |c: &Cluster| {
            c.log
                .iter()
                .filter(|(to, m)| {
                    *to == reporter && matches!(m, ToWorker::Rewire { peer: p } if *p == peer)
                })
                .count()
        };
        stall(c);
        assert!(c.run_until(Duration::from_secs(5), |c| rewired(c) == 1));
        c.settle(Duration::from_millis(700));
        assert!(!c.net.is_fenced(reporter) && !c.net.is_fenced(peer));
        stall(c);
        assert!(c.run_until(Duration::from_secs(5), |c| {
            c.net.is_fenced(reporter) || c.net.is_fenced(peer)
        }));
        assert_eq!(rewired(c), 1);
    });
    let summary = result.expect("finishes");
    assert_eq!(kinds(&summary, EventKind::Rewired), 1);
    assert_eq!(summary.recoveries.len(), 1);
}

#[test]
fn losing_an_instance_and_one_holder_restores_from_the_other() {
    let (result, cluster, _) = scenario(config(2), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        let holder = c.route(count)[0];
        assert_eq!(c.route(count).len(), 2);
        let host = c.host(count);
        // Instance and holder fail together.
        c.net.break_link(host);
        c.net.break_link(holder);
        assert!(c.run_until(Duration::from_secs(5), |c| {
            let h = c.host(count);
            h != host && !c.net.is_broken(h)
        }));
    });
    let summary = result.expect("finishes");
    let count = cluster.ids("count")[0];
    assert_eq!(cluster.restored_frontiers()[&count], Some(Stamp(10)));
    assert!(!summary.recoveries.is_empty());
    // Restored from the surviving holder, whose copy then went to the new
    // holder; never through the coordinator.
    let replicated =
        |m: &ToWorker| matches!(m, ToWorker::Replicate { instance, .. } if *instance == count);
    assert!(cluster.log.iter().any(|(_, m)| replicated(m)));
    assert!(!cluster
        .log
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::FetchBackup { instance } if *instance == count)));
}

#[test]
fn a_restore_asks_the_holder_with_the_latest_news_among_equally_new_copies() {
    // Both holders have the checkpoint at 10; the one that heard from
    // another host last is not cut off from its peers, whatever its
    // heartbeats say, and is asked first.
    for recent in [0, 1] {
        let mut with_news = None;
        let (result, cluster, _) = scenario_over(pair_one_host_each(), config(2), |c| {
            c.checkpointed(Stamp(10));
            let count = c.ids("count")[0];
            let holders = c.route(count);
            with_news = Some(holders[recent]);
            let elsewhere = c.net.host(c.host(count));
            c.net.hear(holders[1 - recent], &elsewhere);
            c.settle(Duration::from_millis(100));
            c.net.hear(holders[recent], &elsewhere);
            let host = c.host(count);
            c.net.break_link(host);
            assert!(c.run_until(Duration::from_secs(5), |c| {
                let h = c.host(count);
                h != host && !c.net.is_broken(h)
            }));
        });
        result.expect("finishes");
        let count = cluster.ids("count")[0];
        let asked = cluster.holders_asked(count);
        assert_eq!(asked, HashSet::from([with_news.expect("two holders")]));
    }
}

#[test]
fn a_surviving_copy_is_replicated_holder_to_holder_to_the_new_holder() {
    let (result, cluster, _) = scenario(config(3), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        let [first, second] = [c.route(count)[0], c.route(count)[1]];
        // One holder fails: the other sends its copy to the new holder.
        c.net.break_link(first);
        assert!(c.run_until(Duration::from_secs(5), |c| {
            c.log.iter().any(|(w, m)| {
                *w == second
                    && matches!(m, ToWorker::Replicate { instance, .. } if *instance == count)
            })
        }));
        c.settle(Duration::from_millis(50));
        // Before the instance checkpoints again, the other holder and the
        // instance's worker fail together: the replica restores it.
        let host = c.host(count);
        c.net.break_link(second);
        c.net.break_link(host);
        assert!(c.run_until(Duration::from_secs(5), |c| {
            !c.net.is_broken(c.host(count))
        }));
    });
    result.expect("finishes");
    let count = cluster.ids("count")[0];
    assert_eq!(cluster.restored_frontiers()[&count], Some(Stamp(10)));
    // The coordinator never held the state.
    assert!(!cluster
        .log
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::FetchBackup { instance } if *instance == count)));
}

#[test]
fn two_simultaneous_failures_are_recovered_as_one() {
    let (result, cluster, _) = scenario(config(2), |c| {
        c.checkpointed(Stamp(10));
        let [a, b] = [c.ids("count")[0], c.ids("count")[1]];
        let (ha, hb) = (c.host(a), c.host(b));
        assert_ne!(ha, hb);
        c.net.break_link(ha);
        c.net.break_link(hb);
        assert!(c.run_until(Duration::from_secs(5), |c| {
            c.host(a) != ha && c.host(b) != hb
        }));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1, "{:?}", summary.recoveries);
    assert_eq!(summary.recoveries[0].workers.len(), 2);
    let frontiers = cluster.restored_frontiers();
    for id in cluster.ids("count") {
        assert_eq!(frontiers[&id], Some(Stamp(10)));
    }
}

#[test]
fn a_holder_without_a_good_copy_is_passed_over_for_the_next() {
    // A pool of three: one of them holds no copy to restore on.
    let (result, cluster, _) = scenario(config(3), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[1];
        // The holder asked first (the first to acknowledge) lost its copy.
        let first = c.route(count)[0];
        c.forgetful.insert(first);
        c.crash_host_of(count);
    });
    result.expect("finishes");
    let count = cluster.ids("count")[1];
    assert_eq!(cluster.restored_frontiers()[&count], Some(Stamp(10)));
    assert_eq!(cluster.holders_asked(count).len(), 2);
    // The restoring worker was sent to the first holder, which failed it
    // while alive; the coordinator then got the copy from the other
    // holder and passed it on.
    let from_holder = |m: &ToWorker| matches!(m, ToWorker::Restore { instances, .. } if instances.iter().any(|(i, from)| *i == count && matches!(from, RestoreFrom::Holder(_))));
    assert_eq!(
        cluster.log.iter().filter(|(_, m)| from_holder(m)).count(),
        1
    );
}

#[test]
fn a_live_holder_out_of_the_restoring_workers_reach_is_not_a_lost_copy() {
    // One copy, held by a worker that lives on but that no other worker
    // reaches: the coordinator fetches the backup and passes it on.
    let mut config = config(1);
    config.backup_copies = 1;
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        let holder = c.route(count)[0];
        c.out_of_reach.insert(holder);
        c.crash_host_of(count);
        c.settle(Duration::from_millis(100));
    });
    result.expect("finishes");
    let count = cluster.ids("count")[0];
    assert_eq!(cluster.restored_frontiers()[&count], Some(Stamp(10)));
    let passed_on = cluster.log.iter().any(|(_, m)| {
        matches!(m, ToWorker::Restore { instances, .. }
            if instances.iter().any(|(i, from)| *i == count && matches!(from, RestoreFrom::Checkpoint(_))))
    });
    assert!(passed_on, "the coordinator did not pass the backup on");
}

#[test]
fn a_recovered_instance_fetches_its_backup_from_a_holder_itself() {
    let (result, cluster, _) = scenario(config(3), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        c.crash_host_of(count);
    });
    result.expect("finishes");
    let count = cluster.ids("count")[0];
    assert_eq!(cluster.restored_frontiers()[&count], Some(Stamp(10)));
    // The state went from the holder to the new worker, never through
    // the coordinator, which asked no holder for it.
    assert_eq!(cluster.holders_asked(count).len(), 1);
    assert!(!cluster
        .log
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::FetchBackup { instance } if *instance == count)));
}

/// The instances staged on a standby worker, and where.
fn standbys_staged(cluster: &Cluster) -> Vec<(InstanceId, WorkerId)> {
    cluster
        .log
        .iter()
        .filter_map(|(w, m)| match m {
            ToWorker::Stage { instance, .. } => Some((*instance, *w)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_large_instance_recovers_on_its_standby_from_the_changes_since_staging() {
    let mut config = config(2);
    config.standby_min_bytes = Some(1);
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpointed(Stamp(10));
        assert!(c.run_until(Duration::from_secs(5), |c| !standbys_staged(c).is_empty()));
        c.settle(Duration::from_millis(50));
        c.checkpointed(Stamp(20));
        let (instance, standby) = standbys_staged(c)[0];
        c.crash_host_of(instance);
        assert!(c.run_until(Duration::from_secs(5), |c| c.host(instance) == standby));
    });
    result.expect("finishes");
    let (instance, standby) = standbys_staged(&cluster)[0];
    // It restored on its standby, from the copy staged at 10 and the
    // changes since, to the backup's latest frontier.
    assert_eq!(cluster.restored_frontiers()[&instance], Some(Stamp(20)));
    assert!(cluster.log.iter().any(|(w, m)| *w == standby
        && matches!(m, ToWorker::Restore { instances, .. } if instances.iter().any(|(id, from)| *id == instance
            && matches!(from, RestoreFrom::Staged(s) if s.since == Stamp(10))))));
}

#[test]
fn a_standby_catches_up_every_so_often_and_recovers_from_there() {
    let mut config = config(2);
    config.standby_min_bytes = Some(1);
    let stages =
        |c: &Cluster, id: InstanceId| standbys_staged(c).iter().filter(|(i, _)| *i == id).count();
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpointed(Stamp(10));
        assert!(c.run_until(Duration::from_secs(5), |c| !standbys_staged(c).is_empty()));
        let (instance, _) = standbys_staged(c)[0];
        // Not asked again before a second has passed since it staged.
        c.checkpointed(Stamp(20));
        assert_eq!(stages(c, instance), 1);
        c.settle(Duration::from_millis(1_100));
        c.checkpointed(Stamp(30));
        assert!(c.run_until(Duration::from_secs(5), |c| stages(c, instance) == 2));
        c.settle(Duration::from_millis(50));
        c.crash_host_of(instance);
    });
    result.expect("finishes");
    let (instance, standby) = standbys_staged(&cluster)[0];
    // The standby was asked to catch up on the same worker, and the
    // recovery folds in only the changes since it did (stamp 30).
    let asked: Vec<WorkerId> = standbys_staged(&cluster)
        .iter()
        .filter(|(i, _)| *i == instance)
        .map(|(_, w)| *w)
        .take(2)
        .collect();
    assert_eq!(asked, [standby, standby]);
    assert!(cluster.log.iter().any(|(w, m)| *w == standby
        && matches!(m, ToWorker::Restore { instances, .. } if instances.iter().any(|(id, from)| *id == instance
            && matches!(from, RestoreFrom::Staged(s) if s.since == Stamp(30))))));
}

#[test]
fn no_standby_is_kept_unless_asked_for() {
    let (result, cluster, _) = scenario(config(2), |c| {
        c.checkpointed(Stamp(10));
        c.checkpointed(Stamp(20));
    });
    result.expect("finishes");
    assert!(standbys_staged(&cluster).is_empty());
}

#[test]
fn a_standby_whose_worker_leaves_the_pool_is_dropped_and_staged_again() {
    let mut config = config(2);
    config.standby_min_bytes = Some(1);
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpointed(Stamp(10));
        assert!(c.run_until(Duration::from_secs(5), |c| standbys_staged(c).len() >= 2));
        // A stateful instance without a standby, on a worker hosting no
        // instance that has one: its recovery takes a pool worker.
        let staged = standbys_staged(c);
        let with_standby: Vec<InstanceId> = staged.iter().map(|(id, _)| *id).collect();
        let standby_hosts: Vec<WorkerId> = with_standby.iter().map(|id| c.host(*id)).collect();
        let lone = ["count", "sink"]
            .iter()
            .flat_map(|op| c.ids(op))
            .find(|id| !with_standby.contains(id) && !standby_hosts.contains(&c.host(*id)))
            .expect("an instance without a standby on a worker of its own");
        c.crash_host_of(lone);
        c.settle(Duration::from_millis(50));
        c.checkpointed(Stamp(20));
        c.settle(Duration::from_millis(100));
    });
    result.expect("finishes");
    // The standby on the worker the recovery took was dropped, and its
    // instance staged again on a pool worker.
    let staged = standbys_staged(&cluster);
    let (moved, taken) = staged
        .iter()
        .copied()
        .find(|(id, w)| {
            cluster.log.iter().any(|(at, m)| {
                at == w && matches!(m, ToWorker::Unstage { instance } if instance == id)
            })
        })
        .expect("a standby was dropped");
    assert!(
        staged.iter().any(|(id, w)| *id == moved && *w != taken),
        "instance {moved} was not staged again: {staged:?}"
    );
}

#[test]
fn an_instance_and_every_holder_lost_together_fail_the_job_clearly() {
    let (result, _, _) = scenario(config(3), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        for holder in c.route(count) {
            c.net.break_link(holder);
        }
        c.net.break_link(c.host(count));
        c.settle(Duration::from_millis(500));
    });
    let error = result.expect_err("cannot recover").to_string();
    assert!(error.contains("every copy"), "{error}");
}

#[test]
fn a_corrupt_checkpoint_is_refused_and_the_previous_one_restored() {
    let (result, cluster, _) = scenario(config(1), |c| {
        c.checkpointed(Stamp(10));
        c.corrupt = true;
        c.checkpoint_all(Stamp(20));
        c.settle(Duration::from_millis(50));
        c.corrupt = false;
        let count = c.ids("count")[0];
        c.crash_host_of(count);
    });
    let summary = result.expect("finishes");
    assert!(kinds(&summary, EventKind::Refused) >= 3);
    assert!(summary
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Refused)
        .all(|e| matches!(e.refused, Some(Refused::Checkpoint | Refused::Backup))));
    let count = cluster.ids("count")[0];
    assert_eq!(cluster.restored_frontiers()[&count], Some(Stamp(10)));
}

#[test]
fn a_failure_with_fault_tolerance_off_fails_the_job_clearly() {
    let mut config = config(1);
    config.checkpoint_interval = Duration::ZERO;
    let (result, _, _) = scenario(config, |c| {
        let count = c.ids("count")[0];
        c.net.break_link(c.host(count));
        c.settle(Duration::from_millis(200));
    });
    let error = result.expect_err("cannot recover").to_string();
    assert!(error.contains("fault tolerance is off"), "{error}");
}

#[test]
fn a_requested_split_partitions_the_fresh_checkpoint_onto_the_pool_worker() {
    let mut config = config(1);
    config.scale_at = vec![(Duration::from_millis(100), "count".into())];
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpoint_all(Stamp(10));
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len() == 3));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.scale_events.len(), 1);
    let split = &summary.scale_events[0];
    assert_eq!(split.direction, ScaleDirection::Out);
    assert_eq!((split.partitions_before, split.partitions_after), (2, 3));
    assert_eq!(split.worker, WorkerId(3));
    // Both halves restored from the fresh checkpoint, taken at the
    // instances' progress when asked.
    let frontiers = cluster.restored_frontiers();
    assert_eq!(frontiers[&split.instance], Some(Stamp(10)));
    assert_eq!(frontiers[&split.new_instance], Some(Stamp(10)));
    // The halves own adjacent ranges that cover the parent's.
    let ranges: Vec<KeyRange> = cluster.plan().nodes[2]
        .instances
        .iter()
        .map(|i| i.key_range)
        .collect();
    assert_eq!(ranges.first().map(|r| r.start), Some(0));
    assert_eq!(ranges.last().map(|r| r.end), Some(u64::MAX));
}

#[test]
fn a_split_without_a_pool_worker_is_refused() {
    let mut config = config(0);
    config.scale_at = vec![(Duration::from_millis(50), "count".into())];
    let (result, cluster, _) = scenario(config, |c| c.settle(Duration::from_millis(300)));
    let summary = result.expect("finishes");
    assert!(summary.scale_events.is_empty());
    assert!(summary
        .events
        .iter()
        .any(|e| e.refused == Some(Refused::ScaleOut) && e.detail.contains("pool")));
    assert_eq!(cluster.ids("count").len(), 2);
}

#[test]
fn sources_and_sinks_do_not_split() {
    let mut config = config(1);
    config.scale_at = vec![(Duration::from_millis(50), "sink".into())];
    let (result, _, _) = scenario(config, |c| c.settle(Duration::from_millis(300)));
    let summary = result.expect("finishes");
    assert!(summary
        .events
        .iter()
        .any(|e| e.detail.contains("sources and sinks do not split")));
}

#[test]
fn a_failure_during_a_split_is_recovered_after_it_and_the_split_dropped() {
    let mut config = config(2);
    config.scale_at = vec![(Duration::from_millis(100), "count".into())];
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpointed(Stamp(10));
        // The split stops the instance for its last checkpoint; its worker
        // dies at once.
        let stop = |m: &ToWorker| matches!(m, ToWorker::CheckpointNow | ToWorker::Pause { .. });
        assert!(c.run_until(Duration::from_secs(5), |c| {
            c.log.iter().any(|(_, m)| stop(m))
        }));
        let host = c
            .log
            .iter()
            .find(|(_, m)| stop(m))
            .map(|(w, _)| *w)
            .expect("asked");
        c.net.break_link(host);
        assert!(c.run_until(Duration::from_secs(5), |c| {
            c.ids("count").iter().all(|id| c.host(*id) != host)
        }));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    // Whatever the split did, every count instance was restored from a real
    // checkpoint and the ranges still cover the key space.
    let ranges: Vec<KeyRange> = cluster.plan().nodes[2]
        .instances
        .iter()
        .map(|i| i.key_range)
        .collect();
    assert_eq!(ranges.first().map(|r| r.start), Some(0));
    assert_eq!(ranges.last().map(|r| r.end), Some(u64::MAX));
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].end + 1, pair[1].start);
    }
}

/// Where in the coordinator's log the first message `kind` accepts is.
fn first(c: &Cluster, kind: impl Fn(&ToWorker) -> bool) -> Option<usize> {
    c.log.iter().position(|(_, m)| kind(m))
}

/// Runs a requested split of `count` after checkpoints at 10 and 20 (the
/// second incremental), and lets the cluster answer until it has three
/// partitions; returns the job's result and the cluster.
fn live_split(
    prepare: impl FnOnce(&mut Cluster),
    then: impl FnOnce(&mut Cluster),
) -> (Result<JobSummary, EngineError>, Cluster) {
    let mut config = config(1);
    config.scale_at = vec![(Duration::from_millis(150), "count".into())];
    live_rescale(config, 3, prepare, then)
}

/// Runs a requested merge of `count`'s two partitions after checkpoints
/// at 10 and 20 (the second incremental), and lets the cluster answer
/// until it has one; returns the job's result and the cluster.
fn live_merge(
    prepare: impl FnOnce(&mut Cluster),
    then: impl FnOnce(&mut Cluster),
) -> (Result<JobSummary, EngineError>, Cluster) {
    let mut config = config(0);
    config.scale_in_at = vec![(Duration::from_millis(150), "count".into())];
    live_rescale(config, 1, prepare, then)
}

/// Runs the rescaling `config` asks for after checkpoints at 10 and 20
/// (the second incremental), the instances getting to 100 while it
/// stages, until `count` has `partitions`.
fn live_rescale(
    config: JobConfig,
    partitions: usize,
    prepare: impl FnOnce(&mut Cluster),
    then: impl FnOnce(&mut Cluster),
) -> (Result<JobSummary, EngineError>, Cluster) {
    let (result, cluster, _) = scenario(config, |c| {
        c.incremental = true;
        c.runs_on = Some(Stamp(100));
        prepare(c);
        c.checkpointed(Stamp(10));
        c.checkpointed(Stamp(20));
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len()
            == partitions));
        then(c);
    });
    (result, cluster)
}

#[test]
fn a_live_split_stages_its_parts_then_hands_over_only_the_changes() {
    let (result, mut cluster) = live_split(|_| {}, |c| c.settle(Duration::from_millis(100)));
    let summary = result.expect("finishes");
    let split = &summary.scale_events[0];
    let (parent, part) = (split.instance, split.new_instance);
    // Cuts from a holder and staging come before the stop; the stop
    // (pause, then run to where it paused) before the restores.
    let cut = first(&cluster, |m| matches!(m, ToWorker::CutBackup { .. })).expect("cut");
    let staged = first(&cluster, |m| matches!(m, ToWorker::Stage { .. })).expect("staged");
    let paused = first(&cluster, |m| matches!(m, ToWorker::Pause { .. })).expect("paused");
    let restored = first(&cluster, |m| {
        matches!(m, ToWorker::Restore { instances, .. }
            if instances.iter().all(|(_, from)| matches!(from, RestoreFrom::Staged { .. })))
    })
    .expect("restored from staged parts");
    assert!(cut < staged && staged < paused && paused < restored);
    // Both parts staged: the parent's own worker stages the lower.
    let stagers: HashSet<WorkerId> = cluster
        .log
        .iter()
        .filter(|(_, m)| matches!(m, ToWorker::Stage { .. }))
        .map(|(w, _)| *w)
        .collect();
    assert_eq!(stagers, HashSet::from([split.worker, cluster.host(parent)]));
    // The coordinator never fetched the state.
    assert_eq!(
        first(&cluster, |m| matches!(m, ToWorker::FetchBackup { .. })),
        None
    );
    // Each part restored at the stop (the fake's progress), equal to the
    // part of the parent's backup there.
    let frontiers = cluster.restored_frontiers();
    assert_eq!(frontiers[&parent], Some(Stamp(100)));
    assert_eq!(frontiers[&part], Some(Stamp(100)));
    let ranges: Vec<KeyRange> = [parent, part]
        .iter()
        .map(|id| cluster.plan().instance(*id).expect("planned").1.key_range)
        .collect();
    for (id, range) in [parent, part].iter().zip(&ranges) {
        let restored = cluster.restored[id].clone().expect("restored");
        assert_eq!(restored.key_range, *range);
        let keys: Vec<u64> = (0..100).filter(|k| range.contains(key_hash(k))).collect();
        let state: KeyedState<u64, u64> =
            KeyedState::restore(&restored.entries, *range).expect("a part of the keys");
        let held: Vec<u64> = (0..100).filter(|k| state.get(k).is_some()).collect();
        assert_eq!(
            (held, state.len()),
            (keys.clone(), keys.len()),
            "instance {id}"
        );
    }
    // The holders cut each part's backup from the parent's, so that the
    // parts' next increments join it rather than a full checkpoint.
    let cut: Vec<(WorkerId, InstanceId)> = cluster
        .log
        .iter()
        .filter_map(|(w, m)| match m {
            ToWorker::ReshapeBackup {
                instance, parts, ..
            } if *instance == parent => {
                Some(parts.iter().map(|p| (*w, p.instance)).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    for id in [parent, part] {
        let holders: Vec<WorkerId> = cut
            .iter()
            .filter(|(_, i)| *i == id)
            .map(|(w, _)| *w)
            .collect();
        assert!(!holders.is_empty(), "no holder cut {id}'s backup");
        // The part checkpoints incrementally on what it restored from.
        let incarnation = cluster.incarnation(id).expect("planned");
        cluster.taken.insert((id, incarnation), Stamp(100));
        cluster.checkpoint(id, Stamp(110));
        cluster.settle(Duration::from_millis(50));
        for h in holders {
            let held = cluster.held_backup(h, id).expect("held");
            assert_eq!(Checkpoint::frontier(&held).expect("valid"), Stamp(110));
        }
    }
}

#[test]
fn a_split_whose_staging_fails_falls_back_to_the_whole_checkpoint() {
    let (result, cluster) = live_split(
        |c| {
            c.cannot_stage.insert(WorkerId(3));
        },
        |_| {},
    );
    let summary = result.expect("finishes");
    let split = &summary.scale_events[0];
    assert_eq!(split.staged_ms, None);
    // The parent's worker dropped what it staged; the coordinator took a
    // fresh checkpoint and partitioned it, as without staging.
    assert!(cluster.log.iter().any(
        |(w, m)| matches!(m, ToWorker::Unstage { instance } if *instance == split.instance && *w == cluster.host(split.instance))
    ));
    assert!(first(&cluster, |m| matches!(m, ToWorker::CheckpointNow)).is_some());
    assert!(cluster
        .log
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::Restore { instances, .. }
        if instances.iter().any(|(_, from)| matches!(from, RestoreFrom::Checkpoint(_))))));
    assert!(cluster.restored[&split.new_instance].is_some());
}

#[test]
fn a_part_lost_right_after_a_live_split_is_recovered_from_its_cut_backup() {
    let (result, cluster) = live_split(
        |_| {},
        |c| {
            let part = *c.ids("count").last().expect("a part");
            let host = c.host(part);
            // Its backup was cut at the holders before the split ended.
            assert!(c.run_until(Duration::from_secs(5), |c| c
                .route(part)
                .iter()
                .any(|h| c.held_backup(*h, part).is_some())));
            c.net.break_link(host);
            assert!(c.run_until(Duration::from_secs(5), |c| c.host(part) != host));
        },
    );
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    let part = summary.scale_events[0].new_instance;
    assert_eq!(cluster.restored_frontiers()[&part], Some(Stamp(100)));
}

#[test]
fn a_live_split_whose_instance_fails_while_stopped_is_dropped_and_recovered() {
    let (result, cluster) = {
        let mut config = config(2);
        config.scale_at = vec![(Duration::from_millis(150), "count".into())];
        let (result, cluster, _) = scenario(config, |c| {
            c.incremental = true;
            c.checkpointed(Stamp(10));
            let paused = |c: &Cluster| first(c, |m| matches!(m, ToWorker::Pause { .. }));
            assert!(c.run_until(Duration::from_secs(5), |c| paused(c).is_some()));
            let host = c.log[paused(c).expect("paused")].0;
            c.net.break_link(host);
            assert!(c.run_until(Duration::from_secs(5), |c| {
                c.ids("count").iter().all(|id| c.host(*id) != host)
            }));
        });
        (result, cluster)
    };
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    assert!(summary.scale_events.is_empty());
    assert_eq!(cluster.ids("count").len(), 2);
    assert!(
        summary
            .events
            .iter()
            .any(|e| e.refused == Some(Refused::ScaleOut)
                && e.detail.contains("could not be stopped"))
    );
}

#[test]
fn a_live_merge_stages_both_partitions_then_hands_over_only_the_changes() {
    let (result, mut cluster) = live_merge(|_| {}, |c| c.settle(Duration::from_millis(100)));
    let summary = result.expect("finishes");
    let merge = &summary.scale_events[0];
    let (lower, upper) = (merge.instance, merge.new_instance);
    assert!(merge.staged_ms.is_some());
    let host = cluster.host(lower);
    // Both partitions staged on the lower's worker before the stop (both
    // paused, run to one frontier); then the merged restore from what was
    // staged, the plan update, and the holders' merge of the backups.
    let stagers: Vec<(WorkerId, InstanceId)> = cluster
        .log
        .iter()
        .filter_map(|(w, m)| match m {
            ToWorker::Stage { instance, .. } => Some((*w, *instance)),
            _ => None,
        })
        .collect();
    assert_eq!(stagers, vec![(host, lower), (host, upper)]);
    let staged = first(&cluster, |m| matches!(m, ToWorker::Stage { .. })).expect("staged");
    let paused = first(&cluster, |m| matches!(m, ToWorker::Pause { .. })).expect("paused");
    let restored = first(&cluster, |m| {
        matches!(m, ToWorker::Restore { instances, .. }
            if matches!(instances[..], [(id, RestoreFrom::StagedMerge { .. })] if id == lower))
    })
    .expect("restored from what was staged");
    let rewired = first(
        &cluster,
        |m| matches!(m, ToWorker::PlanUpdate { merged, .. } if merged.len() == 1),
    )
    .expect("rewired");
    let backups_merged =
        first(&cluster, |m| matches!(m, ToWorker::MergeBackups { .. })).expect("backups merged");
    assert!(staged < paused && paused < restored && restored < rewired);
    assert!(rewired < backups_merged);
    assert_eq!(
        cluster.sent_to(host, |m| matches!(m, ToWorker::Pause { .. })),
        1
    );
    // The coordinator never fetched the state.
    assert_eq!(
        first(&cluster, |m| matches!(m, ToWorker::FetchBackup { .. })),
        None
    );
    // The merged instance restored at the stop with every key of both.
    let restored = cluster.restored[&lower].clone().expect("restored");
    assert_eq!(restored.frontier, Stamp(100));
    assert_eq!(restored.key_range, KeyRange::FULL);
    let state: KeyedState<u64, u64> =
        KeyedState::restore(&restored.entries, KeyRange::FULL).expect("the keys");
    assert_eq!(state.len(), 100);
    assert!((0..100).all(|k| state.get(&k) == Some(&k)));
    // Its holders merged the two backups into its own: its next increment
    // joins it.
    let holders: Vec<WorkerId> = cluster
        .log
        .iter()
        .filter(|(_, m)| matches!(m, ToWorker::MergeBackups { .. }))
        .map(|(w, _)| *w)
        .collect();
    assert!(!holders.is_empty());
    let incarnation = cluster.incarnation(lower).expect("planned");
    cluster.taken.insert((lower, incarnation), Stamp(100));
    cluster.checkpoint(lower, Stamp(110));
    cluster.settle(Duration::from_millis(50));
    for h in holders {
        let held =
            Checkpoint::decode(&cluster.held_backup(h, lower).expect("held")).expect("valid");
        assert_eq!(
            (held.frontier, held.key_range),
            (Stamp(110), KeyRange::FULL)
        );
        assert_eq!(held.entries.len(), 110);
    }
}

#[test]
fn a_merge_whose_staging_fails_falls_back_to_the_whole_checkpoints() {
    let (result, cluster) = live_merge(
        |c| {
            let lower = c.ids("count")[0];
            c.cannot_stage.insert(c.host(lower));
        },
        |_| {},
    );
    let summary = result.expect("finishes");
    let merge = &summary.scale_events[0];
    assert_eq!(merge.staged_ms, None);
    // What was staged was dropped; the coordinator fetched both
    // checkpoints, merged them and restored the merge, as without staging.
    let host = cluster.host(merge.instance);
    for id in [merge.instance, merge.new_instance] {
        assert!(cluster
            .log
            .iter()
            .any(|(w, m)| *w == host
                && matches!(m, ToWorker::Unstage { instance } if *instance == id)));
    }
    assert!(first(&cluster, |m| matches!(m, ToWorker::FetchBackup { .. })).is_some());
    assert!(cluster
        .log
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::Restore { instances, .. }
        if instances.iter().any(|(_, from)| matches!(from, RestoreFrom::Checkpoint(_))))));
    assert_eq!(
        first(&cluster, |m| matches!(m, ToWorker::MergeBackups { .. })),
        None
    );
    let restored = cluster.restored[&merge.instance].clone().expect("restored");
    assert_eq!(restored.key_range, KeyRange::FULL);
}

#[test]
fn a_live_merge_whose_partition_fails_while_stopped_is_called_off_and_recovered() {
    let mut config = config(1);
    config.scale_in_at = vec![(Duration::from_millis(150), "count".into())];
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpointed(Stamp(10));
        let upper = c.ids("count")[1];
        let host = c.host(upper);
        assert!(c.run_until(Duration::from_secs(5), |c| !c.paused.is_empty()));
        c.net.break_link(host);
        assert!(c.run_until(Duration::from_secs(15), |c| c.host(upper) != host));
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len() == 1));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    made_again_after_the_recovery(&summary);
    // It had staged; the lower's worker dropped what it staged, and
    // nothing was restored from it (the merge made again stages anew).
    let lower = cluster.ids("count")[0];
    let staged = first(&cluster, |m| matches!(m, ToWorker::Stage { .. })).expect("staged");
    let paused = first(&cluster, |m| matches!(m, ToWorker::Pause { .. })).expect("paused");
    assert!(staged < paused);
    let unstaged = first(
        &cluster,
        |m| matches!(m, ToWorker::Unstage { instance } if *instance == lower),
    )
    .expect("unstaged");
    let from_staged = first(&cluster, |m| {
        matches!(m, ToWorker::Restore { instances, .. }
            if instances.iter().any(|(_, from)| matches!(from, RestoreFrom::StagedMerge { .. })))
    });
    assert!(from_staged.is_none_or(|at| at > unstaged));
}

#[test]
fn a_requested_merge_aligns_both_partitions_and_frees_a_worker() {
    let mut config = config(0);
    config.scale_in_at = vec![(Duration::from_millis(100), "count".into())];
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpoint_all(Stamp(10));
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len() == 1));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.scale_events.len(), 1);
    let merge = &summary.scale_events[0];
    assert_eq!(merge.direction, ScaleDirection::In);
    assert_eq!((merge.partitions_before, merge.partitions_after), (2, 1));
    // Both were paused and resumed to one frontier before the merge.
    let pauses = cluster
        .log
        .iter()
        .filter(|(_, m)| matches!(m, ToWorker::Pause { .. }))
        .count();
    assert_eq!(pauses, 2);
    let only = cluster.plan().nodes[2].instances[0].key_range;
    assert_eq!((only.start, only.end), (0, u64::MAX));
    assert!(cluster
        .log
        .iter()
        .any(|(_, m)| matches!(m, ToWorker::PlanUpdate { merged, .. } if merged.len() == 1)));
}

/// Runs a requested merge of `count`'s two partitions (a pool of one)
/// after checkpoints at 10, with `fail` failing one of them at the step it
/// picks; the merge must be called off and the failure recovered.
fn merge_called_off_by_a_failure(fail: impl FnOnce(&mut Cluster)) {
    let mut config = config(1);
    config.scale_in_at = vec![(Duration::from_millis(100), "count".into())];
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpoint_all(Stamp(10));
        c.settle(Duration::from_millis(30));
        fail(c);
        c.stuck_on_resume.clear();
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len() == 1));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    made_again_after_the_recovery(&summary);
    assert_eq!(cluster.ids("count").len(), 1);
}

/// The requested rescaling a failure called off was made once the failure
/// was recovered.
fn made_again_after_the_recovery(summary: &JobSummary) {
    let at = |kind: fn(&EventKind) -> bool| summary.events.iter().position(|e| kind(&e.kind));
    let called_off = at(|k| *k == EventKind::Refused).expect("called off");
    let restored = at(|k| *k == EventKind::Restored).expect("recovered");
    let rescaled =
        at(|k| matches!(k, EventKind::ScaleOut | EventKind::ScaleIn)).expect("made again");
    assert!(
        called_off < restored && restored < rescaled,
        "{:?}",
        summary.events
    );
    assert_eq!(summary.scale_events.len(), 1);
}

#[test]
fn a_failure_during_a_merge_calls_it_off_and_recovers() {
    merge_called_off_by_a_failure(|c| {
        let upper = c.ids("count")[1];
        let host = c.host(upper);
        assert!(c.run_until(Duration::from_secs(5), |c| !c.paused.is_empty()));
        c.net.break_link(host);
        assert!(c.run_until(Duration::from_secs(15), |c| c.host(upper) != host));
    });
}

/// Both partitions of a merge were resumed to run to one frontier.
fn both_resumed(c: &Cluster) -> bool {
    c.log
        .iter()
        .filter(|(_, m)| matches!(m, ToWorker::Resume { .. }))
        .count()
        == 2
}

#[test]
fn a_failure_while_a_merge_aligns_is_recovered_without_waiting_for_the_other() {
    // Both partitions resumed to one frontier; the lower got there, the
    // upper did not, and then the lower fails: the merge is off, whatever
    // the upper does, and the failure is recovered long before the
    // alignment would time out.
    merge_called_off_by_a_failure(|c| {
        let (lower, upper) = (c.ids("count")[0], c.ids("count")[1]);
        c.stuck_on_resume.insert(upper);
        let host = c.host(lower);
        assert!(c.run_until(Duration::from_secs(5), both_resumed));
        c.net.break_link(host);
        assert!(
            c.run_until(ALIGN_TIMEOUT / 2, |c| c.host(lower) != host),
            "the recovery waited for the merge's alignment"
        );
    });
}

#[test]
fn a_stall_reported_while_a_merge_aligns_is_decided_at_once() {
    // The upper partition is cut off from its neighbours before it reaches
    // the frontier: one of them reports the stalled channel, and the
    // coordinator recovers it then, not after the alignment gave up.
    merge_called_off_by_a_failure(|c| {
        let upper = c.ids("count")[1];
        c.stuck_on_resume.insert(upper);
        let host = c.host(upper);
        let reporter = c.host(c.ids("pass")[0]);
        assert_ne!(reporter, host, "one instance per worker");
        assert!(c.run_until(Duration::from_secs(5), both_resumed));
        c.net.say(
            reporter,
            ToCoordinator::LinkStalled {
                peer: c.net.addr(host),
                silent_ms: 1000,
            },
        );
        assert!(
            c.run_until(ALIGN_TIMEOUT / 2, |c| c.host(upper) != host),
            "the stall waited for the merge's alignment"
        );
    });
}

/// Runs the rescaling `config` asks for, held up by `hold` at the step
/// `under_way` shows, and fails the `pass` instance's worker there: the
/// failure must be recovered long before the held step would time out,
/// and the rescaling called off, then made (to `partitions`) after it.
fn rescaling_interrupted(
    config: JobConfig,
    partitions: usize,
    hold: impl FnOnce(&mut Cluster),
    under_way: impl Fn(&ToWorker) -> bool,
) {
    let (result, cluster, _) = scenario(config, |c| {
        c.incremental = true;
        hold(c);
        c.checkpoint_all(Stamp(10));
        c.checkpoint_all(Stamp(20));
        assert!(c.run_until(Duration::from_secs(5), |c| c
            .log
            .iter()
            .any(|(_, m)| under_way(m))));
        let pass = c.ids("pass")[0];
        let host = c.host(pass);
        c.net.break_link(host);
        assert!(
            c.run_until(Duration::from_secs(2), |c| c.host(pass) != host),
            "the recovery waited for the rescaling"
        );
        c.staging_held = false;
        c.checkpoints_held = false;
        c.stuck_on_resume.clear();
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len()
            == partitions));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    assert!(summary.events.iter().any(|e| matches!(
        e.refused,
        Some(Refused::ScaleOut | Refused::ScaleIn)
    ) && e.detail.contains("called off")));
    made_again_after_the_recovery(&summary);
    assert_eq!(cluster.ids("count").len(), partitions);
}

fn staging(m: &ToWorker) -> bool {
    matches!(m, ToWorker::Stage { .. })
}

#[test]
fn a_failure_while_a_split_stages_calls_it_off_and_is_recovered_at_once() {
    let mut config = config(1);
    config.scale_at = vec![(Duration::from_millis(150), "count".into())];
    rescaling_interrupted(config, 3, |c| c.staging_held = true, staging);
}

#[test]
fn a_failure_while_a_merge_stages_calls_it_off_and_is_recovered_at_once() {
    let mut config = config(0);
    config.scale_in_at = vec![(Duration::from_millis(150), "count".into())];
    rescaling_interrupted(config, 1, |c| c.staging_held = true, staging);
}

#[test]
fn a_failure_while_a_split_stops_calls_it_off_and_is_recovered_at_once() {
    // The instance, resumed to run to where it paused, never gets there
    // (held up behind a fault), so its last checkpoint does not come.
    let mut config = config(1);
    config.scale_at = vec![(Duration::from_millis(150), "count".into())];
    rescaling_interrupted(
        config,
        3,
        |c| c.stuck_on_resume.extend(c.ids("count")),
        |m| matches!(m, ToWorker::Resume { until, .. } if !until.is_end()),
    );
}

#[test]
fn a_live_split_whose_last_checkpoint_is_refused_asks_for_a_full_one_at_once() {
    // The holders refuse the checkpoint that stops the instance: the split
    // has it checkpoint in full there and goes on (it waited out its
    // deadline, the job standing still behind the stopped instance, and
    // was called off).
    let (result, cluster) = live_split(
        |c| c.refused_on_resume.extend(c.ids("count")),
        |c| c.settle(Duration::from_millis(50)),
    );
    let summary = result.expect("finishes");
    assert_eq!(summary.scale_events.len(), 1);
    let full = first(&cluster, |m| matches!(m, ToWorker::CheckpointFull { .. }));
    let restored = first(&cluster, is_restore);
    assert!(full.expect("a full checkpoint asked for") < restored.expect("restored"));
}

#[test]
fn a_failure_while_a_whole_checkpoint_split_waits_for_its_checkpoint_calls_it_off() {
    // No part can stage, so the split takes a fresh checkpoint of the
    // whole instance, which does not come.
    let mut config = config(1);
    config.scale_at = vec![(Duration::from_millis(150), "count".into())];
    rescaling_interrupted(
        config,
        3,
        |c| {
            c.cannot_stage.extend((0..8).map(WorkerId));
            c.checkpoints_held = true;
        },
        |m| matches!(m, ToWorker::CheckpointNow),
    );
}

#[test]
fn a_scale_command_while_recovering_waits_for_the_recovery() {
    let mut config = config(2);
    config.scale_at = vec![(Duration::from_millis(150), "count".into())];
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        c.net.break_link(c.host(count));
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len() == 3));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 1);
    assert_eq!(summary.scale_events.len(), 1);
    // The split came after the recovery's restore, never inside it.
    let restored = summary
        .events
        .iter()
        .position(|e| e.kind == EventKind::Restored);
    let split = summary
        .events
        .iter()
        .position(|e| e.kind == EventKind::ScaleOut);
    assert!(restored < split, "{:?}", summary.events);
    assert_eq!(cluster.ids("count").len(), 3);
}

#[test]
fn a_failure_during_a_recovery_is_recovered_next() {
    let (result, cluster, _) = scenario(config(2), |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        c.net.break_link(c.host(count));
        // The first pool worker dies as soon as it is asked to restore.
        assert!(c.run_until(Duration::from_secs(5), |c| c
            .sent_to(WorkerId(3), is_restore)
            > 0));
        c.net.break_link(WorkerId(3));
        assert!(c.run_until(Duration::from_secs(5), |c| {
            let h = c.host(count);
            !c.net.is_broken(h)
        }));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries.len(), 2, "{:?}", summary.recoveries);
    let count = cluster.ids("count")[0];
    assert_eq!(cluster.restored_frontiers()[&count], Some(Stamp(10)));
}

#[test]
fn parallel_recovery_restores_a_partition_as_several() {
    let mut config = config(2);
    config.recovery_parallelism = 2;
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpointed(Stamp(10));
        let count = c.ids("count")[0];
        c.net.break_link(c.host(count));
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len() == 3));
    });
    let summary = result.expect("finishes");
    assert_eq!(summary.recoveries[0].instances.len(), 2);
    let frontiers = cluster.restored_frontiers();
    assert!(cluster
        .ids("count")
        .iter()
        .all(|id| frontiers.get(id).is_none_or(|f| *f == Some(Stamp(10)))));
}

#[test]
fn an_injected_kill_goes_through_the_provisioner() {
    let mut config = config(1);
    config.kills = vec!["0.05:count:1".parse().expect("valid")];
    let (result, _, stopped) = scenario(config, |c| {
        c.checkpoint_all(Stamp(10));
        let count = c.ids("count")[1];
        let host = c.host(count);
        assert!(c.run_until(Duration::from_secs(5), |c| c.host(count) != host));
    });
    let summary = result.expect("finishes");
    // Ended once, for the kill; declaring it failed does not end it again.
    assert_eq!(stopped.len(), 1);
    assert_eq!(kinds(&summary, EventKind::Kill), 1);
    assert_eq!(summary.recoveries.len(), 1);
    assert!(summary.recoveries[0].killed_ms.is_some());
    // The kill names its worker, and so does the failure it caused, found
    // by the worker's closed connection.
    let killed = summary.recoveries[0].workers.clone();
    let kill = summary.events.iter().find(|e| e.kind == EventKind::Kill);
    assert_eq!(kill.map(|e| e.workers.clone()), Some(killed.clone()));
    assert_eq!(
        failures(&summary),
        [(killed, Some(FailureCause::Connection))]
    );
}

#[test]
fn a_kill_naming_an_unknown_operator_is_refused_before_deployment() {
    let mut config = config(0);
    config.kills = vec!["1:nothing".parse().expect("valid")];
    let (mut links, _net) = pair();
    let mut provisioner = FakeProvisioner {
        net: _net.clone(),
        stopped: Vec::new(),
    };
    let error = run_job(&registry(), &config, &mut links, &mut provisioner)
        .expect_err("refused")
        .to_string();
    assert!(error.contains("`nothing`"), "{error}");
}

#[test]
fn backups_of_a_replaced_incarnation_are_ignored() {
    let mut config = config(1);
    config.scale_at = vec![(Duration::from_millis(100), "count".into())];
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpoint_all(Stamp(10));
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len() == 3));
        // A late acknowledgement of the parent's old incarnation arrives.
        let parent = c.ids("count")[0];
        let holder = WorkerId(0);
        c.net.say(
            holder,
            ToCoordinator::BackupStored(BackupAck {
                instance: parent,
                incarnation: Incarnation(0),
                frontier: Stamp(99),
                arrived_bytes: 1,
                held_bytes: 1,
            }),
        );
        c.settle(Duration::from_millis(50));
        // Then its worker fails: the half must restore from the split's
        // checkpoint, not the whole range's stale backup.
        c.crash_host_of(parent);
    });
    result.expect("finishes");
    let parent = cluster.ids("count")[0];
    let restored = cluster.restored_frontiers()[&parent];
    assert_eq!(restored, Some(Stamp(10)));
}

// The parts, tested on their own.

/// Where the instance of the `Backups` tests runs.
const ON: (WorkerId, Incarnation) = (WorkerId(9), Incarnation(0));

#[test]
fn upstreams_trim_only_what_every_holder_of_the_route_has() {
    let mut backups = Backups::default();
    let id = InstanceId(1);
    backups.set_route(id, ON, vec![WorkerId(0), WorkerId(1)]);
    assert_eq!(backups.stored(id, WorkerId(0), Stamp(10), (1, 1)), None);
    assert_eq!(backups.durable(id), Stamp::ZERO);
    assert_eq!(
        backups.stored(id, WorkerId(1), Stamp(10), (1, 1)),
        Some(Stamp(10))
    );
    assert_eq!(backups.stored(id, WorkerId(0), Stamp(20), (1, 1)), None);
    // An acknowledgement overtaken by a newer one changes nothing.
    assert_eq!(backups.stored(id, WorkerId(1), Stamp(5), (1, 1)), None);
    assert_eq!(backups.durable(id), Stamp(10));
    assert_eq!(
        backups.holders_by_recency(id),
        vec![WorkerId(0), WorkerId(1)]
    );
    // A worker outside the route is not a holder.
    assert_eq!(backups.stored(id, WorkerId(2), Stamp(30), (1, 1)), None);
    assert_eq!(backups.holder(id), Some(WorkerId(0)));
}

#[test]
fn a_holder_dropped_from_the_route_no_longer_holds_trimming_back() {
    let mut backups = Backups::default();
    let id = InstanceId(1);
    backups.set_route(id, ON, vec![WorkerId(0), WorkerId(1)]);
    backups.stored(id, WorkerId(0), Stamp(10), (1, 1));
    backups.stored(id, WorkerId(1), Stamp(10), (1, 1));
    backups.holders_failed(&[WorkerId(1)]);
    assert_eq!(backups.route(id), &[WorkerId(0)]);
    assert_eq!(
        backups.stored(id, WorkerId(0), Stamp(20), (1, 1)),
        Some(Stamp(20))
    );
    // Its replacement counts from its first copy on.
    assert!(backups.set_route(id, ON, vec![WorkerId(0), WorkerId(2)]));
    assert_eq!(backups.take_void(), vec![]);
    // A route sent is not sent again, unless the instance runs anew.
    assert!(!backups.set_route(id, ON, vec![WorkerId(0), WorkerId(2)]));
    assert!(backups.set_route(
        id,
        (WorkerId(8), Incarnation(1)),
        vec![WorkerId(0), WorkerId(2)]
    ));
    assert_eq!(backups.stored(id, WorkerId(0), Stamp(30), (1, 1)), None);
    assert_eq!(
        backups.stored(id, WorkerId(2), Stamp(30), (1, 1)),
        Some(Stamp(30))
    );
}

#[test]
fn a_reshaped_instance_is_protected_by_its_part_until_its_holders_have_one() {
    let mut backups = Backups::default();
    let id = InstanceId(1);
    backups.set_route(id, ON, vec![WorkerId(0)]);
    backups.stored(id, WorkerId(0), Stamp(10), (1, 1));
    let part = encoded(12, &[1], None);
    backups.reshaped(id, (Stamp(12), part.clone()));
    assert_eq!(backups.holder(id), None);
    assert!(backups.route(id).is_empty());
    assert_eq!(backups.fallback(id).expect("kept"), Some((Stamp(12), part)));
    // Its former holder drops its whole-range copy.
    assert_eq!(backups.take_void(), vec![(WorkerId(0), id)]);
    // Once its new holder has a copy at or above it, the part goes.
    backups.set_route(id, ON, vec![WorkerId(2)]);
    assert_eq!(
        backups.stored(id, WorkerId(2), Stamp(14), (1, 1)),
        Some(Stamp(14))
    );
    backups.holders_failed(&[WorkerId(2)]);
    let error = backups.fallback(id).expect_err("lost").to_string();
    assert!(error.contains("every copy"), "{error}");
}

#[test]
fn an_instance_whose_every_copy_died_cannot_restart_silently() {
    let mut backups = Backups::default();
    let id = InstanceId(1);
    // Never backed up: it restarts from the beginning.
    assert_eq!(backups.fallback(id).expect("fresh"), None);
    backups.set_route(id, ON, vec![WorkerId(0)]);
    backups.stored(id, WorkerId(0), Stamp(10), (1, 1));
    backups.holders_failed(&[WorkerId(0)]);
    let error = backups.fallback(id).expect_err("lost").to_string();
    assert!(error.contains("lost with its backup holders"), "{error}");
    assert!(backups.holders_by_recency(id).is_empty());
}

#[test]
fn a_last_copy_taken_before_its_holder_died_keeps_the_instance_recoverable() {
    let mut backups = Backups::default();
    let (kept, bare) = (InstanceId(1), InstanceId(2));
    for id in [kept, bare] {
        backups.set_route(id, ON, vec![WorkerId(0)]);
        backups.stored(id, WorkerId(0), Stamp(10), (1, 1));
    }
    let copy = encoded(10, &[1], None);
    backups.keep_pending(kept, (Stamp(10), copy.clone()));
    let (degraded, bared) = backups.holders_failed(&[WorkerId(0)]);
    assert!(degraded.is_empty());
    assert_eq!(bared, [bare]);
    assert_eq!(
        backups.fallback(kept).expect("kept"),
        Some((Stamp(10), copy))
    );
    assert!(backups.fallback(bare).is_err());
}

#[test]
fn incremental_checkpoints_restore_as_their_fold() {
    let (result, cluster, _) = scenario(config(1), |c| {
        c.incremental = true;
        for at in [10, 20, 30] {
            c.checkpointed(Stamp(at));
        }
        let count = c.ids("count")[0];
        c.crash_host_of(count);
    });
    result.expect("finishes");
    let count = cluster.ids("count")[0];
    let restored = cluster.restored[&count].clone().expect("from a checkpoint");
    assert_eq!(restored.frontier, Stamp(30));
    // Every key below 30 in the partition's range, from the full
    // checkpoint at 10 and the increments at 20 and 30.
    let range = restored.key_range;
    let expected = (0..30)
        .filter(|k: &u64| range.contains(key_hash(k)))
        .count();
    assert_eq!(restored.entries.len(), expected);
}

#[test]
fn a_corrupt_increment_makes_the_instance_checkpoint_in_full() {
    let (result, cluster, _) = scenario(config(1), |c| {
        c.incremental = true;
        c.checkpointed(Stamp(10));
        c.corrupt = true;
        c.checkpoint_all(Stamp(20));
        c.settle(Duration::from_millis(50));
        c.corrupt = false;
        // Increments on the refused checkpoint: the coordinator asks for
        // full ones, which the fake instances take at once.
        c.checkpointed(Stamp(30));
        let count = c.ids("count")[0];
        c.crash_host_of(count);
    });
    result.expect("finishes");
    let count = cluster.ids("count")[0];
    let asked = cluster
        .log
        .iter()
        .filter(|(_, m)| matches!(m, ToWorker::CheckpointFull { instance } if *instance == count))
        .count();
    assert!(asked >= 1, "no full checkpoint asked of instance {count}");
    let restored = cluster.restored[&count].clone().expect("from a checkpoint");
    assert_eq!(restored.frontier, Stamp(30));
}

#[test]
fn floors_never_fall_and_prune_old_source_positions() {
    let mut backups = Backups::default();
    let id = InstanceId(0);
    for at in [5, 10, 15] {
        backups.add_position(id, Stamp(at), vec![at as u8]);
    }
    assert!(backups.raise_floor(id, Stamp(12)));
    assert!(!backups.raise_floor(id, Stamp(8)));
    assert_eq!(backups.floor(id), Stamp(12));
    assert_eq!(backups.restart_position(id), Some(vec![10]));
    assert!(backups.raise_floor(id, Stamp(15)));
    assert_eq!(backups.restart_position(id), Some(vec![15]));
}

/// [`choose_holders`] of two copies where every worker is on one host
/// but those of `other_host`, each on a host of its own.
fn holders(
    instance: u32,
    own: u32,
    current: &[u32],
    upstream: &[u32],
    live: &[u32],
    other_host: &[u32],
) -> Vec<u32> {
    let ids = |ws: &[u32]| -> Vec<WorkerId> { ws.iter().copied().map(WorkerId).collect() };
    choose_holders(
        InstanceId(instance),
        WorkerId(own),
        &ids(current),
        &ids(upstream),
        &ids(live),
        2,
        |w| {
            if other_host.contains(&w.0) {
                w.0
            } else {
                u32::MAX
            }
        },
        |_| false,
    )
    .into_iter()
    .map(|w| w.0)
    .collect()
}

#[test]
fn holders_are_two_other_live_workers() {
    for raw in 0..50 {
        let picked = holders(raw, 1, &[], &[1], &[0, 1, 2, 3], &[]);
        assert_eq!(picked.len(), 2);
        assert!(!picked.contains(&1), "{picked:?}");
        assert_ne!(picked[0], picked[1]);
    }
    // One other live worker: one holder; none: no holder at all.
    assert_eq!(holders(9, 0, &[], &[], &[0, 2], &[]), vec![2]);
    assert!(holders(9, 0, &[], &[], &[0], &[]).is_empty());
}

#[test]
fn one_backup_copy_means_one_holder_kept_from_the_route() {
    let live: Vec<WorkerId> = (0..4).map(WorkerId).collect();
    let one = |instance: u32, own: u32, current: &[WorkerId]| {
        choose_holders(
            InstanceId(instance),
            WorkerId(own),
            current,
            &[],
            &live,
            1,
            |w| w,
            |_| false,
        )
    };
    for raw in 0..20 {
        let picked = one(raw, 1, &[]);
        assert_eq!(picked.len(), 1);
        assert_ne!(picked[0], WorkerId(1));
    }
    // A route of two (the job asked for two before) keeps its first.
    assert_eq!(one(9, 0, &[WorkerId(3), WorkerId(2)]), vec![WorkerId(3)]);
}

#[test]
fn holders_prefer_other_hosts_then_upstream_workers() {
    let live = [0, 1, 2, 3, 4, 5];
    // Upstreams on workers 2 and 7 (7 is dead); workers 4 and 5 on
    // another host than the instance's.
    assert_eq!(holders(9, 0, &[], &[2, 7], &live, &[4, 5]).len(), 2);
    let picked = holders(9, 0, &[], &[2, 7], &live, &[4, 5]);
    assert!(picked.iter().all(|w| [4, 5].contains(w)), "{picked:?}");
    let picked = holders(9, 0, &[], &[2, 7], &live, &[5]);
    assert_eq!(picked, vec![5, 2]);
    // Two holders never share a host while a third host has a candidate.
    let picked = holders(9, 0, &[4], &[], &live, &[4, 5]);
    assert_eq!(picked, vec![4, 5]);
}

#[test]
fn new_holders_avoid_suspect_hosts_but_never_the_instances_own() {
    // Worker w on host w / 2: 0-1 on host 0 (the instance's), 2-3 on host
    // 1 (its upstream's, suspect: at one end of a stalled channel), 4-5
    // on host 2.
    let live: Vec<WorkerId> = (0..6).map(WorkerId).collect();
    let pick = |current: &[WorkerId], suspect: &[u32]| -> Vec<u32> {
        choose_holders(
            InstanceId(9),
            WorkerId(0),
            current,
            &[WorkerId(2)],
            &live,
            2,
            |w| w.0 / 2,
            |w| suspect.contains(&(w.0 / 2)),
        )
        .into_iter()
        .map(|w| w.0)
        .collect()
    };
    // Unsuspected, the upstream's worker is the first pick.
    assert_eq!(pick(&[], &[])[0], 2);
    // Suspect, its host comes after the healthy one, yet before the
    // instance's own host: a second copy there dies with the instance.
    let picked = pick(&[], &[1]);
    assert!([4, 5].contains(&picked[0]), "{picked:?}");
    assert!([2, 3].contains(&picked[1]), "{picked:?}");
    // A holder already in the route stays (its increments still fit).
    assert_eq!(pick(&[WorkerId(3)], &[1])[0], 3);
    // Every other host suspect: still other hosts first.
    let picked = pick(&[], &[1, 2]);
    assert!(picked.iter().all(|w| *w >= 2), "{picked:?}");
}

#[test]
fn a_route_keeps_its_live_holders() {
    let live = [0, 1, 2, 3, 4];
    assert_eq!(holders(9, 0, &[3, 4], &[1, 2], &live, &[]), vec![3, 4]);
    // Restored next to holder 3 (both on the shared host) while 4 and 2
    // have hosts of their own: 3 makes way for 2.
    assert_eq!(holders(9, 0, &[3, 4], &[], &live, &[4, 2]), vec![4, 2]);
    // With no other host to go to, it stays.
    assert_eq!(holders(9, 0, &[3, 4], &[], &live, &[4]), vec![3, 4]);
    // A holder that died, or that now hosts the instance, is replaced.
    let picked = holders(9, 3, &[3, 4], &[1, 2], &[0, 1, 2, 3, 4], &[]);
    assert_eq!(picked[0], 4);
    assert!([1, 2].contains(&picked[1]), "{picked:?}");
}

#[test]
fn holders_are_spread_by_instance() {
    let picked: HashSet<u32> = (0..64)
        .flat_map(|i| holders(i, 0, &[], &[], &[0, 1, 2, 3], &[]))
        .collect();
    assert_eq!(picked.len(), 3);
}

/// Instance `id` reports `samples` one-second metrics spaced `every` apart,
/// each with `cpu` more CPU seconds and 1,000 more tuples.
fn busy(c: &mut Cluster, id: InstanceId, samples: u64, every: Duration, cpu: f64) {
    busy_all(c, &[id], samples, every, cpu);
}

/// [`busy`] for several instances at once.
fn busy_all(c: &mut Cluster, ids: &[InstanceId], samples: u64, every: Duration, cpu: f64) {
    for n in 1..=samples {
        for &id in ids {
            sample(c, id, n, cpu);
        }
        c.settle(every);
    }
}

/// `id`'s `n`th metrics sample: `cpu` CPU seconds and 1,000 tuples per
/// sample so far.
fn sample(c: &Cluster, id: InstanceId, n: u64, cpu: f64) {
    let metrics = InstanceMetrics {
        instance: id,
        tuples_in: 1000 * n,
        cpu_secs: cpu * n as f64,
        ..InstanceMetrics::default()
    };
    c.net.say(c.host(id), ToCoordinator::Metrics(metrics));
}

#[test]
fn the_splits_of_one_decision_are_one_reconfiguration() {
    let mut config = config(0);
    config.autoscale = Some(ScalePolicy {
        max_partitions: 3,
        ..ScalePolicy::default()
    });
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpoint_all(Stamp(10));
        c.settle(Duration::from_millis(50));
        // Both far over their share, with no idle worker to split onto.
        let hot = [c.ids("count")[0], c.ids("pass")[0]];
        busy_all(c, &hot, 5, Duration::from_millis(20), 0.1);
        assert_eq!(c.ids("count").len(), 2, "split without a pool worker");
        // Two workers join the pool: one decision gives the count its one
        // more partition (its limit) and the pass the other worker.
        c.net.join();
        c.net.join();
        c.settle(Duration::from_millis(50));
        let count = c.ids("count")[0];
        let pass = c.ids("pass")[0];
        for n in 6..=8 {
            sample(c, count, n, 0.2);
            sample(c, pass, n, 0.1);
            c.settle(Duration::from_millis(20));
        }
        let split = c.run_until(Duration::from_secs(5), |c| {
            c.ids("count").len() == 3 && c.ids("pass").len() == 2
        });
        assert!(
            split,
            "count {:?}, pass {:?}",
            c.ids("count"),
            c.ids("pass")
        );
    });
    let summary = result.expect("finishes");
    let [a, b] = &summary.scale_events[..] else {
        panic!("two splits expected: {:?}", summary.scale_events);
    };
    assert_eq!((a.decision, b.decision), (Some(1), Some(1)));
    // The count's parts were staged live and it paused only for its stop,
    // within the pass's pause (the whole reconfiguration).
    let (live, whole) = if a.staged_ms.is_some() {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(live.operator, "count");
    assert!(live.pause_ms <= whole.pause_ms, "{live:?} {whole:?}");
    assert_eq!(whole.staged_ms, None);
    // One plan update for both splits, to every worker.
    for w in 0..5 {
        let updates = cluster.sent_to(WorkerId(w), |m| matches!(m, ToWorker::PlanUpdate { .. }));
        assert_eq!(updates, 1, "worker {w} got {updates} plan updates");
    }
}

#[test]
fn the_rate_policy_splits_a_partition_k_ways_in_one_decision() {
    let mut config = config(2);
    config.autoscale = Some(ScalePolicy::default());
    let (result, cluster, _) = scenario(config, |c| {
        c.checkpoint_all(Stamp(10));
        c.settle(Duration::from_millis(50));
        // Over 1.4 CPU seconds a second however late the samples arrive
        // (the test is timed loosely): 3 parts or more at 70 %; the pool
        // has 2 workers, so 3.
        let hot = c.ids("count")[0];
        busy(c, hot, 5, Duration::from_millis(20), 0.1);
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len() == 4));
    });
    let summary = result.expect("finishes");
    let [split] = &summary.scale_events[..] else {
        panic!("one split expected: {:?}", summary.scale_events);
    };
    assert_eq!((split.partitions_before, split.partitions_after), (2, 4));
    assert_eq!(split.decision, Some(1));
    let rates = split.rates.as_ref().expect("the rates that justified it");
    assert!(rates.projected > 1.4, "{rates:?}");
    let workers: Vec<WorkerId> = split.added.iter().map(|p| p.worker).collect();
    assert_eq!(workers, vec![WorkerId(3), WorkerId(4)]);
    // Every part was restored from the fresh checkpoint; the parts tile the
    // parent's range.
    let frontiers = cluster.restored_frontiers();
    for id in std::iter::once(split.instance).chain(split.added.iter().map(|p| p.instance)) {
        assert_eq!(frontiers[&id], Some(Stamp(10)));
    }
    let ranges: Vec<KeyRange> = cluster.plan().nodes[2]
        .instances
        .iter()
        .map(|i| i.key_range)
        .collect();
    assert_eq!(ranges.first().map(|r| r.start), Some(0));
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].end + 1, pair[1].start);
    }
    assert!(summary.worker_secs > 0.0);
}

#[test]
fn an_idle_worker_beyond_the_pool_is_returned_after_its_keep() {
    let mut config = config(0);
    // The upper partition of `count` alone on the fourth worker.
    config.workers = 4;
    config.autoscale = Some(ScalePolicy {
        keep_idle: Some(Duration::ZERO),
        ..ScalePolicy::default()
    });
    config.scale_in_at = vec![(Duration::from_millis(100), "count".into())];
    let (result, _, stopped) = scenario(config, |c| {
        c.checkpoint_all(Stamp(10));
        assert!(c.run_until(Duration::from_secs(5), |c| c.ids("count").len() == 1));
        // The policy runs when metrics come.
        let id = c.ids("count")[0];
        busy(c, id, 1, Duration::from_millis(50), 0.0);
    });
    let summary = result.expect("finishes");
    assert_eq!(
        kinds(&summary, EventKind::Released),
        1,
        "{:?}",
        summary.events
    );
    assert_eq!(stopped.len(), 1);
}
