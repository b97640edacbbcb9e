//! The recovery protocol: when workers fail,
//! 1. detect: a broken control connection, an exited process or missed
//!    heartbeats (gathering failures that happen together);
//! 2. fetch each failed instance's latest checkpoint from its backup holder;
//! 3. restore the instances on a pool worker (or the least loaded live
//!    worker when the pool is empty), as a new incarnation; with a recovery
//!    parallelism k, a stateful instance is restored as k partitions of its
//!    checkpoint on k pool workers (a split folded into the recovery);
//! 4. rewire: every worker reconnects to the moved instances, and upstreams
//!    replay their output buffers; downstreams drop duplicates by stamp;
//! 5. refill the pool; each restored instance reports when it caught up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::NodeKind;
use crate::error::EngineError;
use crate::state::Checkpoint;
use crate::wire::control::{ToCoordinator, ToWorker};
use crate::worker::output::AddedInstance;

use super::{kill_process, Event, Job, RecoveryTimeline};

/// An instance and the encoded checkpoint to restore it from (none: start
/// from the beginning).
type Restorable = (u32, Option<Vec<u8>>);

/// Failures this close together are recovered as one.
const GATHER_FAILURES: Duration = Duration::from_millis(30);

impl Job<'_> {
    /// Recovers from the failure of `workers` (and of any that fail with them).
    pub(super) fn failed(
        &mut self,
        mut workers: Vec<u32>,
        reason: &str,
    ) -> Result<(), EngineError> {
        // 1. Detect, and gather failures that come together.
        let detected_ms = self.elapsed_ms();
        let gather_until = Instant::now() + GATHER_FAILURES;
        while let Ok(event) = self.events.recv_deadline(gather_until) {
            match event {
                Event::Lost(w, _) if !workers.contains(&w) => workers.push(w),
                Event::Lost(..) => {}
                Event::Message(w, m) => self.deferred.push_back((w, m)),
                Event::Joined(stream, addr, pid, clock) => {
                    let w = self.add_worker(stream, addr, pid, clock)?;
                    self.deploy(w)?;
                    self.pool.push_back(w);
                }
            }
        }
        for &w in &workers {
            let link = &mut self.links[w as usize];
            link.alive = false;
            // Make sure a hung worker cannot come back and interfere.
            kill_process(link.pid);
            self.pool.retain(|p| *p != w);
        }
        self.record("failure", format!("workers {workers:?} failed: {reason}"));
        // Backups the failed workers held are gone.
        let lost: Vec<u32> = self
            .backups
            .iter()
            .filter(|(_, (holder, _))| workers.contains(holder))
            .map(|(i, _)| *i)
            .collect();
        for instance in lost {
            self.backups.remove(&instance);
            self.unprotected.insert(instance);
        }
        for _ in &workers {
            if self.config.pool > 0 {
                self.provisioner.provision()?;
            }
        }
        let failed: Vec<u32> = self
            .plan
            .instances()
            .filter(|(_, i)| workers.contains(&i.worker))
            .map(|(_, i)| i.id)
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        if self.config.checkpoint_interval.is_zero() {
            return Err(EngineError::WorkerFailed {
                worker: workers[0],
                reason: format!("{reason}; fault tolerance is off (checkpoint interval 0)"),
            });
        }

        // 2. Fetch the latest checkpoints.
        let checkpoints = self.fetch_checkpoints(&failed)?;

        // 3. Restore on replacement workers, one per failed worker.
        let mut targets: HashMap<u32, u32> = HashMap::new();
        for &w in &workers {
            let target = match self.pool.pop_front() {
                Some(p) => p,
                None => self
                    .least_loaded_worker()
                    .ok_or_else(|| EngineError::WorkerFailed {
                        worker: w,
                        reason: format!("{reason}; no live worker is left to recover on"),
                    })?,
            };
            targets.insert(w, target);
        }
        let mut by_target: HashMap<u32, Vec<(u32, Option<serde_bytes::ByteBuf>)>> = HashMap::new();
        let mut names = Vec::new();
        let mut added = Vec::new();
        for (id, bytes) in checkpoints {
            let (node, placed) = self.plan.instance(id).expect("failed instance is planned");
            let placed = placed.clone();
            names.push(format!("{}[{}]", self.plan.nodes[node].name, placed.index));
            let target = targets[&placed.worker];
            let mut bytes = bytes;
            let mut range = placed.key_range;
            // Parallel recovery: restore the instance as several partitions
            // on several pool workers, exactly as a split would.
            let k = self.config.recovery_parallelism.max(1);
            let splittable = matches!(
                self.query.kind(node),
                NodeKind::Stateful | NodeKind::Stateless
            );
            if let (true, true, Some(encoded)) = (
                k > 1 && splittable,
                self.pool.len() + 1 >= k as usize,
                &bytes,
            ) {
                let checkpoint = Checkpoint::decode(encoded)?;
                let ranges = placed.key_range.split_even(k);
                let parts = checkpoint.partition(&ranges)?;
                range = ranges[0];
                bytes = Some(parts[0].encode()?);
                self.backups.remove(&id);
                self.copies
                    .insert(id, (checkpoint.frontier, parts[0].encode()?));
                for (part, part_range) in parts.iter().zip(&ranges).skip(1) {
                    let worker = self.pool.pop_front().expect("pool size was checked");
                    let (new_id, index) = self.plan.add_instance(node, worker, *part_range);
                    let encoded = part.encode()?;
                    self.copies
                        .insert(new_id, (checkpoint.frontier, encoded.clone()));
                    by_target
                        .entry(worker)
                        .or_default()
                        .push((new_id, Some(serde_bytes::ByteBuf::from(encoded))));
                    added.push(AddedInstance {
                        id: new_id,
                        parent: id,
                        frontier: checkpoint.frontier,
                    });
                    names.push(format!("{}[{index}]", self.plan.nodes[node].name));
                }
            }
            self.plan.reincarnate(id, target, range);
            by_target
                .entry(target)
                .or_default()
                .push((id, bytes.map(serde_bytes::ByteBuf::from)));
        }
        self.restore_on(by_target, "a restore")?;
        let restored_ms = self.elapsed_ms();
        self.record(
            "restored",
            format!(
                "{} on workers {:?}",
                names.join(", "),
                targets.values().collect::<Vec<_>>()
            ),
        );

        // 4. Rewire upstreams and downstreams; replay follows.
        let new_instances: Vec<u32> = added.iter().map(|a| a.id).collect();
        self.broadcast(&ToWorker::PlanUpdate {
            plan: self.plan.clone(),
            added,
        });
        let rewired_ms = self.elapsed_ms();
        let killed_ms = self
            .timeline
            .iter()
            .rev()
            .find(|e| e.kind == "kill" && e.at_ms <= detected_ms)
            .map(|e| e.at_ms);
        self.recoveries.push(RecoveryTimeline {
            workers,
            instances: names,
            killed_ms,
            detected_ms,
            restored_ms,
            rewired_ms,
            caught_up_ms: None,
        });
        self.awaiting_catch_up.extend(failed);
        self.awaiting_catch_up.extend(new_instances);
        Ok(())
    }

    /// Asks the holders for the failed instances' checkpoints (none: the
    /// instance never completed a backup and restarts from the beginning,
    /// which its upstreams can replay since they never trimmed for it).
    fn fetch_checkpoints(&mut self, failed: &[u32]) -> Result<Vec<Restorable>, EngineError> {
        let mut result = Vec::new();
        let mut asked = 0;
        for &id in failed {
            match (self.backups.get(&id), self.copies.get(&id)) {
                (Some(&(holder, _)), _) => {
                    self.send(holder, &ToWorker::FetchBackup { instance: id })?;
                    asked += 1;
                }
                // The holder failed too: use the coordinator's replica.
                (None, Some((_, bytes))) => result.push((id, Some(bytes.clone()))),
                (None, None) if self.unprotected.contains(&id) => {
                    return Err(EngineError::Checkpoint(format!(
                        "cannot recover instance {id}: its latest checkpoint was lost with its backup holder"
                    )))
                }
                (None, None) => result.push((id, None)),
            }
        }
        let deadline = Instant::now() + self.config.startup_timeout;
        while asked > 0 {
            if let (_, ToCoordinator::Backup { instance, bytes }) =
                self.wait_for("a backup transfer", deadline, |m| {
                    matches!(m, ToCoordinator::Backup { .. })
                })?
            {
                let bytes = bytes.ok_or_else(|| {
                    EngineError::Checkpoint(format!(
                        "the holder of instance {instance}'s backup no longer has it"
                    ))
                })?;
                result.push((instance, Some(bytes)));
                asked -= 1;
            }
        }
        Ok(result)
    }

    /// Sends each target worker its instances to restore and waits until all
    /// run (shared by recovery and scale out).
    pub(super) fn restore_on(
        &mut self,
        by_target: HashMap<u32, Vec<(u32, Option<serde_bytes::ByteBuf>)>>,
        what: &str,
    ) -> Result<(), EngineError> {
        let mut waiting = 0;
        for (target, instances) in by_target {
            waiting += instances.len();
            self.send(
                target,
                &ToWorker::Restore {
                    instances,
                    plan: self.plan.clone(),
                },
            )?;
        }
        let deadline = Instant::now() + self.config.startup_timeout;
        while waiting > 0 {
            match self.wait_for(what, deadline, |m| {
                matches!(
                    m,
                    ToCoordinator::Restored { .. } | ToCoordinator::InstanceFailed { .. }
                )
            })? {
                (_, ToCoordinator::Restored { .. }) => waiting -= 1,
                (w, other) => self.unexpected(w, other)?,
            }
        }
        Ok(())
    }

    /// Waits for a message `want` accepts, handling checkpoint traffic and
    /// deferring everything else until the recovery is over.
    pub(super) fn wait_for(
        &mut self,
        what: &str,
        deadline: Instant,
        want: impl Fn(&ToCoordinator) -> bool,
    ) -> Result<(u32, ToCoordinator), EngineError> {
        let mut deferred = Vec::new();
        let result = loop {
            let (w, message) = match self.wait(what, deadline) {
                Ok(next) => next,
                Err(e) => break Err(e),
            };
            if want(&message) {
                break Ok((w, message));
            }
            deferred.push((w, message));
        };
        for item in deferred.into_iter().rev() {
            self.deferred.push_front(item);
        }
        result
    }

    fn least_loaded_worker(&self) -> Option<u32> {
        let mut load: HashMap<u32, usize> = HashMap::new();
        for (_, i) in self.plan.instances() {
            *load.entry(i.worker).or_default() += 1;
        }
        (0..self.links.len() as u32)
            .filter(|w| self.links[*w as usize].alive)
            .min_by_key(|w| load.get(w).copied().unwrap_or(0))
    }

    /// Step 5: a restored instance worked off its backlog.
    pub(super) fn caught_up(&mut self, instance: u32) {
        self.awaiting_catch_up.remove(&instance);
        if self.awaiting_catch_up.is_empty() {
            let now = self.elapsed_ms();
            if let Some(last) = self
                .recoveries
                .last_mut()
                .filter(|r| r.caught_up_ms.is_none())
            {
                last.caught_up_ms = Some(now);
                let detail = format!("recovery of {:?} caught up", last.instances);
                self.record("caught-up", detail);
            }
        }
    }
}
