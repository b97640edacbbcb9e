//! The monitor: turns instances' periodic counters into rates and
//! utilisation, keeps a per-second history, publishes the cluster view, and
//! carries out commands from outside.

use std::time::{Duration, Instant};

use crate::plan::WorkerId;
use crate::wire::control::{InstanceMetrics, ToWorker};

use super::view::{ClusterView, HistoryPoint, InstanceView, JobCommand, OperatorView, WorkerView};
use super::{kill_process, Job, KillSpec};

/// The latest sample of an instance and what it says about the last interval.
#[derive(Clone, Debug, Default)]
pub(super) struct InstanceRates {
    sample: InstanceMetrics,
    at: Option<Instant>,
    /// CPU seconds per second over the last interval, as a share of the
    /// worker's CPU allowance.
    pub(super) utilization: f64,
    in_rate: f64,
    out_rate: f64,
}

/// Publish the view at most this often.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl Job<'_> {
    /// Records a metrics sample.
    pub(super) fn metrics(&mut self, m: InstanceMetrics) {
        let now = Instant::now();
        let rates = self.rates.entry(m.instance).or_default();
        if let Some(at) = rates.at {
            let dt = now.duration_since(at).as_secs_f64().max(1e-3);
            // Relative to what the instance's worker may use: a worker capped
            // at a quarter core is saturated at 0.25 CPU seconds per second.
            let capacity = self.config.worker_cpu.map_or(1.0, |c| c.min(1.0));
            rates.utilization = (m.cpu_secs - rates.sample.cpu_secs).max(0.0) / dt / capacity;
            rates.in_rate = m.tuples_in.saturating_sub(rates.sample.tuples_in) as f64 / dt;
            rates.out_rate = m.tuples_out.saturating_sub(rates.sample.tuples_out) as f64 / dt;
        }
        rates.sample = m;
        rates.at = Some(now);
        let (threshold, low) = self
            .config
            .autoscale
            .as_ref()
            .map_or((f64::INFINITY, f64::NEG_INFINITY), |p| {
                (p.threshold, p.low_threshold)
            });
        let (instance, utilization) = (rates.sample.instance, rates.utilization);
        let count = |streak: &mut u32, now: bool| *streak = if now { *streak + 1 } else { 0 };
        count(
            self.hot.entry(instance).or_default(),
            utilization > threshold,
        );
        count(self.cold.entry(instance).or_default(), utilization < low);
    }

    /// Appends a history point each second and refreshes the shared view.
    pub(super) fn publish(&mut self, force: bool) {
        let now = Instant::now();
        if self.running && now.duration_since(self.last_history).as_secs_f64() >= 1.0 {
            self.last_history = now;
            let point = self.history_point();
            self.history.push(point);
        }
        let Some(shared) = self.config.view.clone() else {
            return;
        };
        if !force && now.duration_since(self.last_publish) < PUBLISH_EVERY {
            return;
        }
        self.last_publish = now;
        let view = self.view();
        let mut slot = shared.write().unwrap_or_else(|p| p.into_inner());
        *slot = view;
    }

    fn history_point(&self) -> HistoryPoint {
        let mut point = HistoryPoint {
            at_ms: self.elapsed_ms(),
            workers: self.hosting_workers(),
            ..HistoryPoint::default()
        };
        for node in &self.plan.nodes {
            let mut rate = 0.0;
            let mut util: f64 = 0.0;
            for i in &node.instances {
                if let Some(r) = self.rates.get(&i.id) {
                    rate += r.in_rate;
                    util = util.max(r.utilization);
                }
            }
            point.in_rate.insert(node.name.clone(), rate);
            point.utilization.insert(node.name.clone(), util);
            point
                .partitions
                .insert(node.name.clone(), node.instances.len());
        }
        point
    }

    fn hosting_workers(&self) -> usize {
        let mut hosting: Vec<WorkerId> = self.plan.instances().map(|(_, i)| i.worker).collect();
        hosting.sort_unstable();
        hosting.dedup();
        hosting.len()
    }

    fn view(&self) -> ClusterView {
        let state = if !self.running {
            "starting"
        } else if self.finished.len() == self.plan.instances().count() {
            "finished"
        } else {
            "running"
        };
        let operators = self
            .plan
            .nodes
            .iter()
            .enumerate()
            .map(|(n, node)| OperatorView {
                name: node.name.clone(),
                kind: format!("{:?}", self.query.kind(n)),
                instances: node
                    .instances
                    .iter()
                    .map(|i| {
                        let r = self.rates.get(&i.id).cloned().unwrap_or_default();
                        InstanceView {
                            id: i.id,
                            index: i.index,
                            worker: i.worker,
                            key_start: i.key_range.start,
                            key_end: i.key_range.end,
                            incarnation: i.incarnation,
                            utilization: r.utilization,
                            in_rate: r.in_rate,
                            out_rate: r.out_rate,
                            queued_batches: r.sample.queued_batches,
                            buffered_bytes: r.sample.buffered_bytes,
                            state_keys: r.sample.state_keys,
                            state_bytes: r.sample.state_bytes,
                            tuples_in: r.sample.tuples_in,
                            tuples_out: r.sample.tuples_out,
                            finished: self.finished.contains_key(&i.id),
                            checkpoint_frontier: self
                                .backups
                                .get(&i.id)
                                .map(|(_, f)| f.0)
                                .or_else(|| self.floors.get(&i.id).map(|f| f.0)),
                            backup_worker: self.backups.get(&i.id).map(|(w, _)| *w),
                            checkpoint_bytes: self
                                .copies
                                .get(&i.id)
                                .or_else(|| self.source_positions.get(&i.id)?.back())
                                .map_or(0, |(_, b)| b.len() as u64),
                        }
                    })
                    .collect(),
            })
            .collect();
        let mut edges = Vec::new();
        for n in 0..self.query.len() {
            for &t in self.query.edge_targets(n) {
                let edge = (
                    self.query.name(n).to_string(),
                    self.query.name(t).to_string(),
                );
                if !edges.contains(&edge) {
                    edges.push(edge);
                }
            }
        }
        ClusterView {
            query: self.config.query.clone(),
            state: state.to_string(),
            elapsed_ms: if self.running { self.elapsed_ms() } else { 0 },
            checkpoint_ms: self.config.checkpoint_interval.as_millis() as u64,
            workers: self
                .links
                .iter()
                .enumerate()
                .map(|(w, l)| WorkerView {
                    index: WorkerId(w as u32),
                    pid: l.pid,
                    addr: self.plan.workers.get(w).cloned().unwrap_or_default(),
                    alive: l.alive,
                    pool: self.pool.contains(&WorkerId(w as u32)),
                })
                .collect(),
            operators,
            edges,
            events: self.timeline.clone(),
            recoveries: self.recoveries.clone(),
            checkpoints: self.checkpoints,
            history: self.history.clone(),
        }
    }

    /// Carries out the commands that arrived from outside.
    pub(super) fn commands(&mut self) {
        let Some(commands) = self.config.commands.clone() else {
            return;
        };
        for command in commands.try_iter() {
            match command {
                JobCommand::KillWorker(w) => match self.links.get(w.index()) {
                    Some(link) if link.alive => {
                        kill_process(link.pid);
                        let pid = link.pid;
                        self.record("kill", format!("killed worker {w} (pid {pid}) on request"));
                    }
                    _ => self.record("refused", format!("kill: no live worker {w}")),
                },
                JobCommand::KillInstance { operator, index } => {
                    self.kills.push(KillSpec {
                        at: self.started.elapsed(),
                        operator,
                        index,
                    });
                }
                // Run by the main loop, never inside another reconfiguration.
                JobCommand::Scale { operator } => self.scale_at.push((Duration::ZERO, operator)),
                JobCommand::ScaleIn { operator } => {
                    self.scale_in_at.push((Duration::ZERO, operator))
                }
                JobCommand::Checkpoint => {
                    self.broadcast(&ToWorker::CheckpointNow);
                    self.record(
                        "checkpoint",
                        "checkpoint of every instance requested".into(),
                    );
                }
            }
        }
    }
}
