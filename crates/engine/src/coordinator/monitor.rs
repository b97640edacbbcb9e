//! The monitor: keeps a per-second history of rates, utilisation and
//! partitions, publishes the cluster view, and carries out commands from
//! outside. Rates themselves are the autoscaler's (see [`super::autoscaler`]).

use std::time::{Duration, Instant};

use crate::ids::WorkerId;
use crate::wire::control::{InstanceMetrics, ToWorker};

use super::events::{EventKind, JobState, Refused, ScaleDirection};
use super::view::{ClusterView, HistoryPoint, InstanceView, JobCommand, OperatorView, WorkerView};
use super::{Job, KillSpec};

/// Publish the view at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// The history and when the view was last published.
#[derive(Debug)]
pub(super) struct Monitor {
    history: Vec<HistoryPoint>,
    last_history: Instant,
    last_publish: Instant,
    /// Live workers' seconds added up, and when last added.
    worker_secs: f64,
    last_tick: Instant,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            history: Vec::new(),
            last_history: Instant::now(),
            last_publish: Instant::now(),
            worker_secs: 0.0,
            last_tick: Instant::now(),
        }
    }
}

impl Monitor {
    /// The history so far.
    pub(super) fn history(&self) -> &[HistoryPoint] {
        &self.history
    }

    /// Seconds of live workers (pool included) since the job started.
    pub(super) fn worker_secs(&self) -> f64 {
        self.worker_secs
    }
}

impl Job<'_> {
    /// Records a metrics sample.
    pub(super) fn metrics(&mut self, m: InstanceMetrics) {
        self.autoscaler.observe(m, Instant::now());
    }

    /// Appends a history point each second and refreshes the shared view.
    pub(super) fn publish(&mut self, force: bool) {
        let now = Instant::now();
        if self.running {
            let dt = now.duration_since(self.monitor.last_tick).as_secs_f64();
            self.monitor.worker_secs += dt * self.live_workers().len() as f64;
        }
        self.monitor.last_tick = now;
        if self.running && now.duration_since(self.monitor.last_history).as_secs_f64() >= 1.0 {
            self.monitor.last_history = now;
            let point = self.history_point();
            self.monitor.history.push(point);
        }
        let Some(shared) = self.config.view.clone() else {
            return;
        };
        if !force && now.duration_since(self.monitor.last_publish) < PUBLISH_EVERY {
            return;
        }
        self.monitor.last_publish = now;
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
                if let Some(r) = self.autoscaler.rates(i.id) {
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
            JobState::Starting
        } else if self.finished.len() == self.plan.instances().count() {
            JobState::Finished
        } else {
            JobState::Running
        };
        ClusterView {
            query: self.config.query.clone(),
            state,
            elapsed_ms: if self.running { self.elapsed_ms() } else { 0 },
            checkpoint_ms: self.config.checkpoint_interval.as_millis() as u64,
            workers: self.worker_views(),
            operators: self.operator_views(),
            edges: self.edges(),
            events: self.timeline.clone(),
            recoveries: self.recoveries.clone(),
            scale_events: self.scale_events.clone(),
            checkpoints: self.checkpoints,
            history: self.monitor.history.clone(),
            control_traffic: self.links.traffic(),
        }
    }

    fn worker_views(&self) -> Vec<WorkerView> {
        self.workers
            .iter()
            .enumerate()
            .map(|(w, entry)| {
                let index = WorkerId(w as u32);
                WorkerView {
                    index,
                    pid: entry.pid,
                    addr: self.plan.workers.get(w).cloned().unwrap_or_default(),
                    alive: entry.alive,
                    pool: self.pool.contains(&index),
                }
            })
            .collect()
    }

    fn operator_views(&self) -> Vec<OperatorView> {
        self.plan
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
                        let r = self.autoscaler.rates(i.id).cloned().unwrap_or_default();
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
                            cpu_secs: r.sample.cpu_secs,
                            checkpoint_cpu_secs: r.sample.checkpoint_cpu_secs,
                            tuples_in: r.sample.tuples_in,
                            tuples_out: r.sample.tuples_out,
                            finished: self.finished.contains_key(&i.id),
                            checkpoint_frontier: self.backups.shown_frontier(i.id).map(|f| f.0),
                            backup_worker: self.backups.holder(i.id),
                            checkpoint_bytes: self.backups.checkpoint_bytes(i.id),
                            last_checkpoint_bytes: self.backups.latest_bytes(i.id),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    fn edges(&self) -> Vec<(String, String)> {
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
        edges
    }

    /// Carries out the commands that arrived from outside.
    pub(super) fn commands(&mut self) {
        let Some(commands) = self.config.commands.clone() else {
            return;
        };
        for command in commands.try_iter() {
            match command {
                JobCommand::KillWorker(w) if self.alive(w) => {
                    let pid = self.workers[w.index()].pid;
                    if self.end_process(w) {
                        self.record_about(
                            EventKind::Kill,
                            format!("killed worker {w} (pid {pid}) on request"),
                            vec![w],
                            None,
                        );
                    } else {
                        self.refuse(
                            Refused::Kill,
                            format!("kill: worker {w}'s provisioner cannot end it"),
                        );
                    }
                }
                JobCommand::KillWorker(w) => {
                    self.refuse(Refused::Kill, format!("kill: no live worker {w}"))
                }
                JobCommand::KillInstance { operator, index } => {
                    self.kills.push(KillSpec {
                        at: self.started.elapsed(),
                        operator,
                        index,
                    });
                }
                // Run by the main loop, never inside another reconfiguration.
                JobCommand::ScaleOut { operator } => self.request(ScaleDirection::Out, operator),
                JobCommand::ScaleIn { operator } => self.request(ScaleDirection::In, operator),
                JobCommand::Checkpoint => {
                    self.broadcast(&ToWorker::CheckpointNow);
                    self.record(
                        EventKind::Checkpoint,
                        "checkpoint of every instance requested".into(),
                    );
                }
            }
        }
    }
}
