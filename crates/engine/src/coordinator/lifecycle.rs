//! A job's life: workers join, the query is deployed and started, and the
//! main loop runs until every instance finished, starting recoveries and
//! scale operations itself (one reconfiguration at a time) and handling
//! every other message. Also where a worker is declared failed.

use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};

use super::events::{EventKind, FailureCause, JobState, Refused};
use super::suspects::Suspicion;
use super::{
    Failure, InstanceReport, Job, JobEvent, JobSummary, KillSpec, LinkEvent, Stall, WorkerEntry,
};
use crate::error::EngineError;
use crate::ids::WorkerId;
use crate::plan::Plan;
use crate::wire::control::{ToCoordinator, ToWorker};
use crate::wire::host_part;

/// How long one wait for a link event lasts before the periodic duties run.
const TICK: Duration = Duration::from_millis(20);

/// How long reports of stalled data channels gather before the coordinator
/// decides whom to recover, so that every neighbour of a worker cut off
/// from them has had time to report it, and a reporter that its stalled
/// channel held back (a report shuts the channel) has heard from its other
/// peers again and said so in a heartbeat (two heartbeats and a look of
/// the watch take 300 ms).
const STALL_SETTLE: Duration = Duration::from_millis(500);

/// How long before the first report of a stall a worker's news from a host
/// still shows that it reaches that host. An end cut off heard its last at
/// the cut, and a channel reports a stall at the earliest two
/// retransmission timeouts (600 ms) after its first unacknowledged send,
/// itself after the cut.
const HEARD_BEFORE_REPORT: Duration = Duration::from_millis(400);

/// How long a stall report decided on still counts as evidence in later
/// decisions: a cut off end that one report spared is reported again by
/// its other peers in the seconds after.
const STALL_MEMORY: Duration = Duration::from_secs(3);

/// How long a stall answered by reconnecting its channel is remembered:
/// the same two workers stalling again within it are no healed cut but a
/// path that keeps failing (a bandwidth cap), decided on like any stall.
const REWIRE_MEMORY: Duration = Duration::from_secs(10);

impl Job<'_> {
    /// Runs the job to its end.
    pub(super) fn run(&mut self) -> Result<JobSummary, EngineError> {
        self.gather_workers()?;
        self.deploy_all()?;
        self.started = Instant::now();
        self.running = true;
        // Routes first: an instance's first checkpoint finds its holders.
        self.refresh_routes();
        self.broadcast(&ToWorker::Start);
        self.record(
            EventKind::Start,
            format!(
                "{} workers, {} in the pool",
                self.config.workers, self.config.pool
            ),
        );
        while self.finished.len() < self.plan.instances().count() {
            self.step()?;
        }
        Ok(JobSummary {
            instances: self.finished.values().cloned().collect(),
            elapsed: self.started.elapsed(),
            plan: self.plan.clone(),
            // Copies: the view published after the run shows them too.
            events: self.timeline.clone(),
            recoveries: self.recoveries.clone(),
            checkpoints: self.checkpoints,
            history: self.monitor.history().to_vec(),
            scale_events: self.scale_events.clone(),
            worker_secs: self.monitor.worker_secs(),
        })
    }

    /// Waits until the workers the job starts with (and its pool) joined.
    fn gather_workers(&mut self) -> Result<(), EngineError> {
        let wanted = self.config.workers + self.config.pool;
        let deadline = Instant::now() + self.config.startup_timeout;
        while self.workers.len() < wanted {
            self.check_cancel()?;
            self.provisioner.check()?;
            if Instant::now() > deadline {
                return Err(EngineError::Timeout(format!(
                    "only {} of {wanted} workers joined within {:?}",
                    self.workers.len(),
                    self.config.startup_timeout
                )));
            }
            match self.links.next_event(Instant::now() + TICK)? {
                Some(LinkEvent::Joined {
                    worker,
                    data_addr,
                    pid,
                }) => self.add_worker(worker, data_addr, pid),
                Some(LinkEvent::Lost(worker, reason)) => {
                    return Err(EngineError::WorkerFailed { worker, reason })
                }
                Some(LinkEvent::Message(..)) | None => {}
            }
        }
        Ok(())
    }

    /// Registers a worker that joined.
    fn add_worker(&mut self, worker: WorkerId, data_addr: String, pid: u32) {
        tracing::info!(%worker, pid, %data_addr, "worker joined");
        debug_assert_eq!(worker.index(), self.workers.len());
        self.workers.push(WorkerEntry {
            pid,
            alive: true,
            ended: false,
        });
        self.plan.workers.push(data_addr);
    }

    /// Places the query, deploys it on every worker and waits for them all.
    fn deploy_all(&mut self) -> Result<(), EngineError> {
        let workers = std::mem::take(&mut self.plan.workers);
        self.plan = Plan::place(
            &self.query,
            workers,
            self.config.workers,
            &self.config.partitions,
            self.config.placement,
        )?;
        let total = self.workers.len() as u32;
        self.pool = (self.config.workers as u32..total).map(WorkerId).collect();
        for w in (0..total).map(WorkerId) {
            self.deploy(w)?;
        }
        let deadline = Instant::now() + self.config.startup_timeout;
        let mut deployed = 0;
        while deployed < total {
            match self.wait("deployment", deadline)? {
                Some((_, ToCoordinator::Deployed)) => deployed += 1,
                Some((w, other)) => self.unexpected(w, other)?,
                None => {}
            }
        }
        Ok(())
    }

    /// One turn of the main loop: a queued recovery, a due scale operation,
    /// or the next message.
    fn step(&mut self) -> Result<(), EngineError> {
        if !self.failing.is_empty() {
            return self.recover();
        }
        let fingerprint = self.routing_fingerprint();
        if fingerprint != self.routed_for {
            self.routed_for = fingerprint;
            self.refresh_routes();
        }
        if let Some(made) = self.make_due_request() {
            return made;
        }
        // Wake up for the next requested rescaling even if nothing comes.
        let wake = self.next_request_at().unwrap_or_else(far_future);
        match self.wait("the job", wake) {
            Ok(Some((w, message))) => self.handle(w, message),
            Ok(None) | Err(EngineError::Timeout(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn deploy(&mut self, worker: WorkerId) -> Result<(), EngineError> {
        self.send(
            worker,
            &ToWorker::Deploy {
                query: self.config.query.clone(),
                params: self.config.params.to_string(),
                plan: self.plan.clone(),
                worker,
                checkpoint_ms: self.config.checkpoint_interval.as_millis() as u64,
            },
        )
    }

    /// The next worker message, doing the periodic duties meanwhile: fire
    /// injected kills, watch heartbeats, admit new pool workers. `None`: a
    /// worker was lost (queued in `failing` for the main loop to recover);
    /// whoever waits checks whether it still can get what it waits for.
    pub(super) fn wait(
        &mut self,
        what: &str,
        deadline: Instant,
    ) -> Result<Option<(WorkerId, ToCoordinator)>, EngineError> {
        loop {
            if let Some((w, m)) = self.deferred.pop_front() {
                if self.alive(w) {
                    return Ok(Some((w, m)));
                }
                continue;
            }
            self.check_cancel()?;
            if Instant::now() > deadline {
                return Err(EngineError::Timeout(format!(
                    "workers did not complete {what} within {:?}",
                    self.config.startup_timeout
                )));
            }
            self.commands();
            if self.running {
                // Kill times count from the start; a kill due during a slow
                // deployment would fail the job instead of testing recovery.
                self.fire_kills();
            }
            self.publish(false);
            if let Some(silent) = self.silent_worker().filter(|_| self.running) {
                self.lose(
                    silent,
                    FailureCause::Heartbeats,
                    "it missed its heartbeats".into(),
                );
                return Ok(None);
            }
            if let Some((cut_off, reason)) = self.stalled_worker() {
                self.salvage_last_copies(cut_off)?;
                self.lose(cut_off, FailureCause::StalledChannels, reason);
                return Ok(None);
            }
            match self.links.next_event(Instant::now() + TICK)? {
                Some(LinkEvent::Message(w, message)) if self.alive(w) => {
                    if let Some(message) = self.note_stall(w, message) {
                        return Ok(Some((w, message)));
                    }
                }
                // A worker declared failed never affects the job again,
                // whatever it still said before it was fenced.
                Some(LinkEvent::Message(..)) => {}
                Some(LinkEvent::Joined {
                    worker,
                    data_addr,
                    pid,
                }) => self.join(worker, data_addr, pid)?,
                Some(LinkEvent::Lost(w, reason)) if self.alive(w) => {
                    if !self.running {
                        return Err(EngineError::WorkerFailed { worker: w, reason });
                    }
                    self.lose(w, FailureCause::Connection, reason);
                    return Ok(None);
                }
                Some(LinkEvent::Lost(..)) | None => {}
            }
        }
    }

    /// Handles what arrived while failures are being gathered: losses are
    /// declared, joins admitted, messages kept for later.
    pub(super) fn absorb(&mut self, event: LinkEvent) -> Result<(), EngineError> {
        match event {
            LinkEvent::Lost(w, reason) => self.lose(w, FailureCause::Connection, reason),
            LinkEvent::Message(w, m) if self.alive(w) => {
                if let Some(m) = self.note_stall(w, m) {
                    self.deferred.push_back((w, m));
                }
            }
            LinkEvent::Message(..) => {}
            LinkEvent::Joined {
                worker,
                data_addr,
                pid,
            } => self.join(worker, data_addr, pid)?,
        }
        Ok(())
    }

    /// A pool worker joined: deploy the query on it and keep it ready.
    fn join(&mut self, worker: WorkerId, data_addr: String, pid: u32) -> Result<(), EngineError> {
        self.add_worker(worker, data_addr, pid);
        self.deploy(worker)?;
        self.pool.push_back(worker);
        self.record(
            EventKind::Pool,
            format!("worker {worker} (pid {pid}) joined the pool"),
        );
        Ok(())
    }

    /// Declares worker `w` failed: it is ordered to exit and ended by its
    /// provisioner (a hung worker must not come back and interfere), leaves
    /// the pool and waits for recovery.
    pub(super) fn lose(&mut self, w: WorkerId, cause: FailureCause, reason: String) {
        if !self.alive(w) {
            return;
        }
        self.workers[w.index()].alive = false;
        tracing::debug!(worker = %w, "declared failed: {reason}");
        // Best effort: a crashed worker cannot be told. A worker cut off
        // stops on its own once its lease runs out.
        let _ = self.links.send(w, &ToWorker::Shutdown);
        self.links.fence(w);
        self.end_process(w);
        self.pool.retain(|p| *p != w);
        self.suspect_host_of(w, Suspicion::Failed);
        let detected_ms = self.elapsed_ms();
        self.failing.push(Failure {
            worker: w,
            cause,
            reason,
            detected_ms,
        });
    }

    /// Whether a worker was declared failed and waits for its recovery: a
    /// rescaling under way gives up at its next wait, rather than keep the
    /// failed instances' pipelines standing behind its own.
    pub(super) fn failure_pending(&self) -> bool {
        !self.failing.is_empty()
    }

    /// Ends worker `w`'s process through its provisioner.
    pub(super) fn end_process(&mut self, w: WorkerId) -> bool {
        let entry = &self.workers[w.index()];
        if entry.ended {
            return true;
        }
        let pid = entry.pid;
        let addr = self
            .plan
            .workers
            .get(w.index())
            .cloned()
            .unwrap_or_default();
        match self.provisioner.stop(w, pid, &addr) {
            Ok(()) => {
                self.workers[w.index()].ended = true;
                true
            }
            Err(e) => {
                tracing::warn!(worker = %w, "cannot end the worker's process: {e}");
                false
            }
        }
    }

    /// Takes a stall report as it arrives, whatever the coordinator waits
    /// for, and hands any other message back. A report kept for after a
    /// reconfiguration let the reconfiguration wait on the very worker cut
    /// off (its neighbours shut their channels to it when they report),
    /// and was decided on seconds after the cut had healed.
    fn note_stall(&mut self, reporter: WorkerId, message: ToCoordinator) -> Option<ToCoordinator> {
        match message {
            ToCoordinator::LinkStalled { peer, silent_ms } => {
                self.link_stalled(reporter, &peer, silent_ms);
                None
            }
            other => Some(other),
        }
    }

    /// A worker's data channel to `peer_addr` stalled (or it could not
    /// connect): noted, and decided on once the reports settle.
    fn link_stalled(&mut self, reporter: WorkerId, peer_addr: &str, silent_ms: u64) {
        let Some(peer) = self
            .live_workers()
            .into_iter()
            .find(|w| self.plan.workers.get(w.index()).map(String::as_str) == Some(peer_addr))
        else {
            return;
        };
        if peer == reporter || !self.running {
            return;
        }
        tracing::warn!(%reporter, %peer, silent_ms, "a data channel stalled");
        self.stalls.push(Stall {
            reporter,
            peer,
            at: Instant::now(),
        });
    }

    /// Whom to recover for the stalled channels reported, once the first
    /// report is [`STALL_SETTLE`] old ([`stall_victim`] decides). One
    /// decision per call; reports involving a worker declared failed are
    /// settled with it.
    fn stalled_worker(&mut self) -> Option<(WorkerId, String)> {
        let stalls = std::mem::take(&mut self.stalls);
        self.stalls = stalls
            .into_iter()
            .filter(|s| self.alive(s.reporter) && self.alive(s.peer))
            .collect();
        if self.stalls.first()?.at.elapsed() < STALL_SETTLE {
            return None;
        }
        self.decided_stalls
            .retain(|s| s.at.elapsed() < STALL_MEMORY);
        self.rewired.retain(|s| s.at.elapsed() < REWIRE_MEMORY);
        let first_report = self.stalls.first()?.at;
        let since = first_report
            .checked_sub(HEARD_BEFORE_REPORT)
            .unwrap_or(first_report);
        let heard: BTreeMap<WorkerId, BTreeSet<String>> = self
            .stalls
            .iter()
            .flat_map(|s| [s.reporter, s.peer])
            .map(|w| (w, self.links.heard_since(w, since)))
            .collect();
        tracing::debug!(?heard, "the ends of the stalled channels heard lately from");
        let heard_by = |w| heard.get(&w).cloned().unwrap_or_default();
        let (healed, stalls) = healed_stalls(
            std::mem::take(&mut self.stalls),
            &self.rewired,
            |w| self.host_of(w),
            heard_by,
        );
        self.stalls = stalls;
        // A cut separates hosts: an end with no news of its own (nothing
        // to send, nothing sent to it) is judged by what the live workers
        // beside it heard.
        let mut host_heard: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for w in self.live_workers() {
            host_heard
                .entry(self.host_of(w))
                .or_default()
                .extend(self.links.heard_since(w, since));
        }
        tracing::debug!(
            ?host_heard,
            "the hosts of the stalled channels heard lately from"
        );
        let victim = stall_victim(
            &self.stalls,
            &self.decided_stalls,
            |w| self.host_of(w),
            |w| {
                host_heard
                    .get(&self.host_of(w))
                    .cloned()
                    .unwrap_or_default()
            },
            |w| self.suspicion(w),
        );
        // The recovery of the victim rewires its channels anyway.
        self.rewire(
            healed
                .into_iter()
                .filter(|s| victim.is_none_or(|v| v != s.reporter && v != s.peer))
                .collect(),
        );
        let victim = victim?;
        let mut others: Vec<WorkerId> = self
            .stalls
            .iter()
            .filter_map(|s| {
                (s.peer == victim)
                    .then_some(s.reporter)
                    .or((s.reporter == victim).then_some(s.peer))
            })
            .collect();
        others.sort_unstable();
        others.dedup();
        let (decided, pending): (Vec<Stall>, Vec<Stall>) = std::mem::take(&mut self.stalls)
            .into_iter()
            .partition(|s| s.reporter == victim || s.peer == victim);
        self.stalls = pending;
        self.decided_stalls.extend(decided);
        // Either end of a stalled channel may be the one cut off: the
        // survivors' hosts are no place for replacements or new holders
        // either, for a while.
        for &other in &others {
            self.suspect_host_of(other, Suspicion::Counterpart);
        }
        let others: Vec<String> = others.iter().map(WorkerId::to_string).collect();
        Some((
            victim,
            format!(
                "its data channels with workers {} stalled (unreachable from them)",
                others.join(", ")
            ),
        ))
    }

    /// Has the reporter of each stall in `healed` reconnect and replay its
    /// channels to the peer, instead of recovering either.
    fn rewire(&mut self, healed: Vec<Stall>) {
        let mut pairs: Vec<(WorkerId, WorkerId)> =
            healed.iter().map(|s| (s.reporter, s.peer)).collect();
        pairs.sort_unstable();
        pairs.dedup();
        for (reporter, peer) in pairs {
            if let Err(e) = self.send(reporter, &ToWorker::Rewire { peer }) {
                tracing::warn!(worker = %reporter, "cannot reach worker: {e}");
            }
            self.record_about(
                EventKind::Rewired,
                format!(
                    "worker {reporter}'s data channels to worker {peer} stalled, and one of them heard from the other's host since: reconnected and replayed, nobody recovered"
                ),
                vec![reporter, peer],
                None,
            );
        }
        self.rewired.extend(healed);
    }

    /// The host of worker `w`: the address part of its data address.
    pub(super) fn host_of(&self, w: WorkerId) -> String {
        let addr = self.plan.workers.get(w.index()).map_or("", String::as_str);
        host_part(addr).to_string()
    }

    /// `failure`, said to follow a pause of the coordinator's own longer
    /// than the workers' lease if one came lately: every worker then
    /// stopped, and the pause is the cause to look at.
    pub(super) fn after_own_pause(&self, failure: EngineError) -> EngineError {
        let lease = self.config.lease();
        match self.awake.recent_pause(lease * 4) {
            Some(pause) if pause > lease => EngineError::CoordinatorPaused {
                pause_ms: pause.as_millis() as u64,
                lease_ms: lease.as_millis() as u64,
                source: Box::new(failure),
            },
            _ => failure,
        }
    }

    /// A worker silent for longer than the heartbeat timeout while the
    /// coordinator ran to hear it: silence during a pause of the
    /// coordinator's own is not the worker's (see `awake.rs`).
    fn silent_worker(&self) -> Option<WorkerId> {
        let awake = self.awake.awake_for();
        self.live_workers()
            .into_iter()
            .find(|w| self.links.silent_for(*w).min(awake) > self.config.heartbeat_timeout)
    }

    /// Kills the workers hosting the instances whose `--kill` is due.
    fn fire_kills(&mut self) {
        let now = self.started.elapsed();
        let due: Vec<KillSpec> = self.kills.iter().filter(|k| k.at <= now).cloned().collect();
        self.kills.retain(|k| k.at > now);
        for kill in due {
            let worker = self
                .query
                .find(&kill.operator)
                .and_then(|node| self.plan.nodes[node].instances.get(kill.index as usize))
                .map(|i| i.worker);
            match worker {
                Some(w) if self.alive(w) => {
                    let what = format!(
                        "worker {w} (pid {}) hosting {}[{}]",
                        self.workers[w.index()].pid,
                        kill.operator,
                        kill.index
                    );
                    if self.end_process(w) {
                        self.record_about(EventKind::Kill, format!("killed {what}"), vec![w], None);
                    } else {
                        self.refuse(
                            Refused::Kill,
                            format!("kill {what}: its provisioner cannot end it"),
                        );
                    }
                }
                _ => tracing::warn!(
                    "--kill {}:{}: no such live instance",
                    kill.operator,
                    kill.index
                ),
            }
        }
    }

    fn handle(&mut self, worker: WorkerId, message: ToCoordinator) -> Result<(), EngineError> {
        match message {
            ToCoordinator::Checkpoint {
                instance,
                incarnation,
                frontier,
                bytes,
            } => {
                let current = self.plan.instance(instance).map(|(_, p)| p.incarnation);
                if current != Some(incarnation) {
                    // From an incarnation that was replaced (split or restored).
                    return Ok(());
                }
                self.checkpointed(instance, frontier, bytes)
            }
            ToCoordinator::BackupStored(ack) => {
                self.backup_stored(worker, ack);
                self.keep_standbys();
                Ok(())
            }
            ToCoordinator::BackupRefused {
                instance,
                refusal,
                reason,
            } => {
                self.backup_refused(worker, instance, refusal, &reason);
                Ok(())
            }
            ToCoordinator::InstanceFinished { instance, stats } => {
                let (node, placed) = self.plan.instance(instance).ok_or_else(|| {
                    EngineError::Protocol(format!("unknown instance {instance} finished"))
                })?;
                let operator = self.plan.nodes[node].name.clone();
                tracing::info!(%instance, %operator, "instance finished");
                let report = InstanceReport {
                    operator,
                    instance,
                    worker: placed.worker,
                    stats,
                };
                self.finished.insert(instance, report);
                self.autoscaler.finished(instance);
                Ok(())
            }
            ToCoordinator::Metrics(metrics) => {
                self.metrics(metrics);
                self.autoscale()
            }
            ToCoordinator::CaughtUp { instance } => {
                self.caught_up(instance);
                Ok(())
            }
            ToCoordinator::Staged {
                instance,
                range,
                frontier,
                ..
            } => {
                // A standby, or a part staged for a split that was called
                // off: best effort, a staged part left behind is memory,
                // not data.
                if !self.standby_staged(worker, instance, range, frontier) {
                    let _ = self.send(worker, &ToWorker::Unstage { instance });
                }
                Ok(())
            }
            // Answers to a reconfiguration that already gave up waiting.
            ToCoordinator::Restored { .. }
            | ToCoordinator::Paused { .. }
            | ToCoordinator::Backup { .. }
            | ToCoordinator::Cuts { .. }
            | ToCoordinator::Deployed => Ok(()),
            other => self.unexpected(worker, other),
        }
    }

    pub(super) fn unexpected(
        &self,
        worker: WorkerId,
        message: ToCoordinator,
    ) -> Result<(), EngineError> {
        match message {
            ToCoordinator::WorkerFailed { error } => Err(EngineError::WorkerFailed {
                worker,
                reason: error,
            }),
            // The instance's error already names its operator and instance.
            ToCoordinator::InstanceFailed { error, .. } => Err(EngineError::WorkerFailed {
                worker,
                reason: error,
            }),
            other => Err(EngineError::Protocol(format!(
                "worker {worker} sent {other:?} at an unexpected time"
            ))),
        }
    }

    /// Publishes that the job failed with `error`.
    pub(super) fn publish_failure(&mut self, error: &EngineError) {
        let at_ms = self.elapsed_ms();
        if let Some(Ok(mut v)) = self.config.view.as_ref().map(|v| v.write()) {
            v.state = JobState::Failed;
            v.events
                .push(JobEvent::new(at_ms, EventKind::Error, error.to_string()));
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Splits `stalls` into those that healed and the rest. A stall healed
/// when either end heard from the other's host since shortly before the
/// reports (per `heard`): no packet crosses a cut, which comes a second of
/// silence before the report. One end is enough: the reporter's channel
/// to the peer's host may be its only one, shut by the report itself.
/// Reconnecting the channel is then all it takes; should the fault be one
/// way only and last, the reconnection fails and is reported, and the pair,
/// now in `rewired` (answered lately), is decided on as a path that keeps
/// failing. Ends on one host prove nothing of each other.
pub(super) fn healed_stalls(
    stalls: Vec<Stall>,
    rewired: &[Stall],
    host_of: impl Fn(WorkerId) -> String,
    heard: impl Fn(WorkerId) -> BTreeSet<String>,
) -> (Vec<Stall>, Vec<Stall>) {
    let ends = |s: &Stall| {
        let mut ends = [s.reporter, s.peer];
        ends.sort_unstable();
        ends
    };
    stalls.into_iter().partition(|s| {
        let (a, b) = (host_of(s.reporter), host_of(s.peer));
        a != b
            && (heard(s.reporter).contains(&b) || heard(s.peer).contains(&a))
            && !rewired.iter().any(|r| ends(r) == ends(s))
    })
}

/// The worker to recover for `stalls` (oldest first): one on the host whose
/// stalled channels reach the most other hosts (a host cut off from its
/// peers stalls with all of theirs, each of them only with it), counting
/// the stalls `decided` on lately too (a cut off end that one report
/// spared is reported again by its other peers). On a tie
/// (one worker reporting the only channel it has, say), first one whose
/// host has not `heard` lately from a third host (one it has no stall
/// with) through any of its workers: a host cut off from its peers hears
/// from none of them. Then one on the most suspect host (see
/// `coordinator::suspects`: a host just found cut off is the likelier
/// side again), the unreachable side of the first report first among
/// equals.
pub(super) fn stall_victim(
    stalls: &[Stall],
    decided: &[Stall],
    host_of: impl Fn(WorkerId) -> String,
    heard: impl Fn(WorkerId) -> BTreeSet<String>,
    suspicion: impl Fn(WorkerId) -> Suspicion,
) -> Option<WorkerId> {
    let first_peer = stalls.first()?.peer;
    let mut counterparts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in stalls.iter().chain(decided) {
        let (a, b) = (host_of(s.reporter), host_of(s.peer));
        counterparts.entry(a.clone()).or_default().insert(b.clone());
        counterparts.entry(b).or_default().insert(a);
    }
    let score = |w: WorkerId| counterparts.get(&host_of(w)).map_or(0, BTreeSet::len);
    // Only the ends of undecided stalls are candidates: the ends of those
    // decided were recovered or spared already.
    let candidates: Vec<WorkerId> = std::iter::once(first_peer)
        .chain(stalls.iter().flat_map(|s| [s.peer, s.reporter]))
        .collect();
    let most = candidates.iter().map(|w| score(*w)).max()?;
    let tied: Vec<WorkerId> = candidates
        .into_iter()
        .filter(|w| score(*w) == most)
        .collect();
    let reaches_a_third_host = |w: WorkerId| {
        let own = host_of(w);
        let stalled_with = counterparts.get(&own);
        heard(w)
            .iter()
            .any(|h| *h != own && !stalled_with.is_some_and(|s| s.contains(h)))
    };
    let likelihood = |w: WorkerId| (!reaches_a_third_host(w), suspicion(w));
    let likeliest = tied.iter().map(|w| likelihood(*w)).max()?;
    tied.into_iter().find(|w| likelihood(*w) == likeliest)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Workers 1-3 on host a, 4-6 on b, 7-9 on c, 10-12 on d.
    fn host_of(w: WorkerId) -> String {
        ["a", "b", "c", "d"][(w.0 as usize - 1) / 3].to_string()
    }

    /// Workers that heard lately from no other host than the ones reported.
    fn nowhere(_: WorkerId) -> BTreeSet<String> {
        BTreeSet::new()
    }

    /// What workers heard from lately, by worker.
    fn heard(by: &[(u32, &[&str])]) -> impl Fn(WorkerId) -> BTreeSet<String> {
        let by: BTreeMap<u32, BTreeSet<String>> = by
            .iter()
            .map(|(w, hosts)| (*w, hosts.iter().map(|h| h.to_string()).collect()))
            .collect();
        move |w| by.get(&w.0).cloned().unwrap_or_default()
    }

    fn stalls(pairs: &[(u32, u32)]) -> Vec<Stall> {
        pairs
            .iter()
            .map(|&(reporter, peer)| Stall {
                reporter: WorkerId(reporter),
                peer: WorkerId(peer),
                at: Instant::now(),
            })
            .collect()
    }

    /// The reporter and peer of each stall.
    fn ends(stalls: &[Stall]) -> Vec<(u32, u32)> {
        stalls.iter().map(|s| (s.reporter.0, s.peer.0)).collect()
    }

    #[test]
    fn a_stall_healed_when_either_end_hears_the_others_host() {
        // Worker 2 on host a reported its channel to worker 5 on b; 7 on c
        // reported its channel to 8 on c.
        let reported = || stalls(&[(2, 5), (7, 8)]);
        let both_ways = heard(&[(2, &["b"]), (5, &["a"]), (7, &["c"]), (8, &["c"])]);
        let (healed, rest) = healed_stalls(reported(), &[], host_of, &both_ways);
        assert_eq!(ends(&healed), [(2, 5)]);
        // Two workers on one host prove nothing of each other.
        assert_eq!(ends(&rest), [(7, 8)]);
        // One end heard the other's host: the reporter's channel there,
        // shut by its report, may have been its only one.
        for one_way in [heard(&[(5, &["a"])]), heard(&[(2, &["b", "c"])])] {
            let (healed, _) = healed_stalls(reported(), &[], host_of, one_way);
            assert_eq!(ends(&healed), [(2, 5)]);
        }
        // Neither did (third hosts prove nothing of the two).
        let third_hosts_only = heard(&[(2, &["c"]), (5, &["d"])]);
        let (healed, rest) = healed_stalls(reported(), &[], host_of, third_hosts_only);
        assert!(healed.is_empty());
        assert_eq!(ends(&rest), [(2, 5), (7, 8)]);
        // Rewired lately, either way round: a path that keeps failing.
        let (healed, rest) = healed_stalls(reported(), &stalls(&[(5, 2)]), host_of, &both_ways);
        assert!(healed.is_empty());
        assert_eq!(ends(&rest), [(2, 5), (7, 8)]);
    }

    #[test]
    fn the_host_stalled_with_the_most_others_is_the_cut_off_one() {
        // Workers on b, c and d cannot reach worker 2 on a; 2 cannot reach 5.
        let reported = stalls(&[(4, 2), (7, 2), (2, 5), (10, 2)]);
        assert_eq!(
            stall_victim(&reported, &[], host_of, nowhere, |_| Suspicion::Clear),
            Some(WorkerId(2))
        );
        // Reported the other way round, it is still the worker on a.
        let reported = stalls(&[(2, 4), (2, 7), (2, 10)]);
        assert_eq!(
            stall_victim(&reported, &[], host_of, nowhere, |_| Suspicion::Clear),
            Some(WorkerId(2))
        );
    }

    #[test]
    fn a_tie_goes_to_a_suspect_host_else_to_the_unreachable_side() {
        // Worker 1 on a reports worker 4 on b: one host each.
        let reported = stalls(&[(1, 4)]);
        assert_eq!(
            stall_victim(&reported, &[], host_of, nowhere, |_| Suspicion::Clear),
            Some(WorkerId(4))
        );
        // A worker on a failed lately (it was cut off, and 1 is left there):
        // the reporter is the likelier side.
        let failed_on_a = |w: WorkerId| match host_of(w).as_str() {
            "a" => Suspicion::Failed,
            _ => Suspicion::Clear,
        };
        assert_eq!(
            stall_victim(&reported, &[], host_of, nowhere, failed_on_a),
            Some(WorkerId(1))
        );
        // A worker failed on a, and b was the other end of that channel:
        // a is still the likelier side.
        let both = |w: WorkerId| match host_of(w).as_str() {
            "a" => Suspicion::Failed,
            _ => Suspicion::Counterpart,
        };
        assert_eq!(
            stall_victim(&reported, &[], host_of, nowhere, both),
            Some(WorkerId(1))
        );
        // Suspicion never overrides the count of hosts.
        let reported = stalls(&[(1, 4), (7, 4), (10, 4)]);
        assert_eq!(
            stall_victim(&reported, &[], host_of, nowhere, failed_on_a),
            Some(WorkerId(4))
        );
    }

    #[test]
    fn a_tie_goes_to_the_end_that_heard_from_no_third_host() {
        // Worker 1 on a reports its only channel, to worker 4 on b, which
        // heard lately from c: a is the one cut off.
        let reported = stalls(&[(1, 4)]);
        let four_hears_c = heard(&[(1, &["b"]), (4, &["a", "c"])]);
        assert_eq!(
            stall_victim(&reported, &[], host_of, &four_hears_c, |_| Suspicion::Clear),
            Some(WorkerId(1))
        );
        // This sign comes before suspicion...
        let failed_on_b = |w: WorkerId| match host_of(w).as_str() {
            "b" => Suspicion::Failed,
            _ => Suspicion::Clear,
        };
        assert_eq!(
            stall_victim(&reported, &[], host_of, &four_hears_c, failed_on_b),
            Some(WorkerId(1))
        );
        // ...but a host it stalled with too is no sign of reaching it (a,
        // b and c each stalled with both others: a tie of three).
        let reported = stalls(&[(1, 4), (4, 7), (1, 7)]);
        assert_eq!(
            stall_victim(&reported, &[], host_of, &four_hears_c, |_| Suspicion::Clear),
            Some(WorkerId(4))
        );
        // Both ends heard from a third host (a cut between two hosts): the
        // unreachable side, as without the sign.
        let reported = stalls(&[(1, 4)]);
        let both = |_: WorkerId| -> BTreeSet<String> { ["c"].map(String::from).into() };
        assert_eq!(
            stall_victim(&reported, &[], host_of, both, |_| Suspicion::Clear),
            Some(WorkerId(4))
        );
    }

    #[test]
    fn an_end_with_nothing_to_send_is_judged_by_what_it_heard() {
        // Host a was cut off from its peers. Worker 4 on b reports worker
        // 2 on a, whose input came through that very channel: 2 had
        // nothing to send to its downstream on c, so no channel of its own
        // stalled, but it heard from nobody either. 4 heard from its
        // upstream on c all along.
        let reported = stalls(&[(4, 2)]);
        let by_news = heard(&[(2, &[]), (4, &["c"])]);
        assert_eq!(
            stall_victim(&reported, &[], host_of, by_news, |_| Suspicion::Clear),
            Some(WorkerId(2))
        );
        // Even when 4's host is the more suspect one.
        let by_news = heard(&[(2, &[]), (4, &["c"])]);
        let failed_on_b = |w: WorkerId| match host_of(w).as_str() {
            "b" => Suspicion::Failed,
            _ => Suspicion::Clear,
        };
        assert_eq!(
            stall_victim(&reported, &[], host_of, by_news, failed_on_b),
            Some(WorkerId(2))
        );
    }

    #[test]
    fn stalls_decided_lately_still_count() {
        // Host a was cut off from its peers. Worker 10 on d reported
        // worker 2 on a, a one-to-one tie decided against 10. Now 4 on b
        // reports 2: alone a tie again, but with the decided report a
        // stalled with two hosts, b with one.
        // What they heard misleads: 2 heard from c just before the cut, 4
        // from nobody but a (its only upstream).
        let misleading = heard(&[(2, &["c"]), (4, &["a"])]);
        let decided = stalls(&[(10, 2)]);
        let reported = stalls(&[(4, 2)]);
        assert_eq!(
            stall_victim(&reported, &decided, host_of, &misleading, |_| {
                Suspicion::Clear
            }),
            Some(WorkerId(2))
        );
        assert_eq!(
            stall_victim(&reported, &[], host_of, &misleading, |_| Suspicion::Clear),
            Some(WorkerId(4)),
            "alone, the report is decided by what worker 2 heard from c"
        );
        // A decided stall's host with more counterparts than any end of
        // the reports to decide is no candidate: the reports are still
        // decided.
        let decided = stalls(&[(4, 10), (7, 10), (1, 10)]);
        let reported = stalls(&[(2, 5)]);
        assert_eq!(
            stall_victim(&reported, &decided, host_of, nowhere, |_| Suspicion::Clear),
            Some(WorkerId(5))
        );
    }

    #[test]
    fn no_report_no_victim() {
        assert_eq!(
            stall_victim(&[], &[], host_of, nowhere, |_| Suspicion::Failed),
            None
        );
    }
}
