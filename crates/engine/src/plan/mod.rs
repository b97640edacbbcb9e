//! The deployment plan: which instance of which operator runs on which
//! worker, owning which key range. Built by the coordinator, shipped to every
//! worker, from which each derives its routing tables and input channels.
//!
//! This is the ground the coordinator, the workers and the wire format
//! share, so it depends on none of them: with the identities (defined in the
//! leaf module [`crate::ids`] so that errors and the API can name them too)
//! and the plan changes a worker must apply besides moves (`change`).

mod change;

pub use crate::ids::{Incarnation, InstanceId, WorkerId};
pub use change::{AddedInstance, MergedInstance};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{NodeKind, Query};
use crate::error::EngineError;
use crate::state::{KeyRange, RoutingTable};

/// One instance's placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePlan {
    /// Globally unique instance id.
    pub id: InstanceId,
    /// Index among its operator's instances.
    pub index: u32,
    /// Worker hosting it.
    pub worker: WorkerId,
    /// Key-hash range it owns.
    pub key_range: KeyRange,
    /// For source instances, the slot in the stamp space.
    pub source_slot: u32,
    /// Bumped at every restart from a checkpoint (recovery, split, merge).
    pub incarnation: Incarnation,
}

/// One operator's instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Operator name (checked against the query each worker builds).
    pub name: String,
    /// Its instances in key-range order.
    pub instances: Vec<InstancePlan>,
}

/// How a deployment spreads the query's instances over its workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Instance after instance on worker after worker, across operators:
    /// each operator's load, and what one worker's failure takes, is spread
    /// over as many workers as there are instances.
    #[default]
    Spread,
    /// Instance `i` of every operator on worker `i` (modulo the workers):
    /// each partition's pipeline shares a worker, whose instances pass
    /// tuples in process instead of over TCP (Flink's slot sharing). The
    /// choice when the workers share a few cores; a worker's failure then
    /// takes its pipeline's every operator with it.
    Pipelines,
}

impl Placement {
    /// The worker of `index`th instance of an operator, whose `id` counts
    /// instances across operators, on `workers` workers.
    fn worker(self, id: u32, index: u32, workers: u32) -> WorkerId {
        match self {
            Placement::Spread => WorkerId(id % workers),
            Placement::Pipelines => WorkerId(index % workers),
        }
    }
}

impl std::str::FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spread" => Ok(Placement::Spread),
            "pipelines" => Ok(Placement::Pipelines),
            _ => Err(format!("`{s}` is not a placement: use spread or pipelines")),
        }
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Placement::Spread => "spread",
            Placement::Pipelines => "pipelines",
        })
    }
}

/// The whole deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Data-channel address of each worker.
    pub workers: Vec<String>,
    /// Per query node, in query order.
    pub nodes: Vec<NodePlan>,
}

impl Plan {
    /// Places every operator's instances over the first `active` workers
    /// (the others form the pool) as `placement` says, with key ranges
    /// split evenly. `partitions` overrides the parallelism of named
    /// operators.
    pub fn place(
        query: &Query,
        workers: Vec<String>,
        active: usize,
        partitions: &BTreeMap<String, u32>,
        placement: Placement,
    ) -> Result<Plan, EngineError> {
        let active = active.min(workers.len()) as u32;
        if active == 0 {
            return Err(EngineError::InvalidQuery("no workers to deploy on".into()));
        }
        for name in partitions.keys() {
            if query.find(name).is_none() {
                return Err(EngineError::InvalidQuery(format!(
                    "--partitions names `{name}`, which is not an operator of the query"
                )));
            }
        }
        let mut next_id = 0u32;
        let mut next_slot = 0u32;
        let mut nodes = Vec::with_capacity(query.len());
        for node in 0..query.len() {
            let name = query.name(node).to_string();
            let parallelism = partitions
                .get(&name)
                .copied()
                .unwrap_or_else(|| query.parallelism(node));
            if parallelism == 0 || parallelism > 1024 {
                return Err(EngineError::InvalidQuery(format!(
                    "operator `{name}` would get {parallelism} partitions; use 1..=1024"
                )));
            }
            let is_source = query.kind(node) == NodeKind::Source;
            let instances = KeyRange::FULL
                .split_even(parallelism)
                .into_iter()
                .enumerate()
                .map(|(index, key_range)| {
                    let id = next_id;
                    next_id += 1;
                    let source_slot = if is_source {
                        next_slot += 1;
                        next_slot - 1
                    } else {
                        0
                    };
                    InstancePlan {
                        id: InstanceId(id),
                        index: index as u32,
                        worker: placement.worker(id, index as u32, active),
                        key_range,
                        source_slot,
                        incarnation: Incarnation::default(),
                    }
                })
                .collect();
            nodes.push(NodePlan { name, instances });
        }
        Ok(Plan { workers, nodes })
    }

    /// Checks that `query` (built by a worker) matches the plan's graph.
    pub fn check_matches(&self, query: &Query) -> Result<(), EngineError> {
        let names: Vec<&str> = (0..query.len()).map(|n| query.name(n)).collect();
        let planned: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        if names != planned {
            return Err(EngineError::InvalidQuery(format!(
                "the query built here has operators {names:?} but the plan has {planned:?}; \
                 are all processes running the same spate build and parameters?"
            )));
        }
        Ok(())
    }

    /// Routing table of `node`: key-hash range -> instance id.
    pub fn routing(&self, node: usize) -> Result<RoutingTable<InstanceId>, EngineError> {
        RoutingTable::new(
            self.nodes[node]
                .instances
                .iter()
                .map(|i| (i.key_range, i.id))
                .collect(),
        )
        .map_err(EngineError::InvalidQuery)
    }

    /// Every instance, with its node index.
    pub fn instances(&self) -> impl Iterator<Item = (usize, &InstancePlan)> {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(n, node)| node.instances.iter().map(move |i| (n, i)))
    }

    /// The instance with id `id`.
    pub fn instance(&self, id: InstanceId) -> Option<(usize, &InstancePlan)> {
        self.instances().find(|(_, i)| i.id == id)
    }

    /// The instance with id `id`, mutably (to move it during a recovery).
    pub fn instance_mut(&mut self, id: InstanceId) -> Option<&mut InstancePlan> {
        self.nodes
            .iter_mut()
            .flat_map(|n| n.instances.iter_mut())
            .find(|i| i.id == id)
    }

    /// Adds a new instance of `node` owning `range` on `worker` (a split's
    /// upper half, or a part of a parallel recovery). Returns its id and index.
    pub fn add_instance(
        &mut self,
        node: usize,
        worker: WorkerId,
        range: KeyRange,
    ) -> (InstanceId, u32) {
        let id = InstanceId(
            self.instances()
                .map(|(_, i)| i.id.0)
                .max()
                .map_or(0, |m| m + 1),
        );
        let index = self.nodes[node]
            .instances
            .iter()
            .map(|i| i.index)
            .max()
            .map_or(0, |m| m + 1);
        let instances = &mut self.nodes[node].instances;
        instances.push(InstancePlan {
            id,
            index,
            worker,
            key_range: range,
            source_slot: 0,
            incarnation: Incarnation::default(),
        });
        instances.sort_by_key(|i| i.key_range.start);
        (id, index)
    }

    /// Removes instance `id` (merged into a neighbour by a scale in).
    pub fn remove_instance(&mut self, id: InstanceId) {
        for node in &mut self.nodes {
            node.instances.retain(|i| i.id != id);
        }
    }

    /// Restarts instance `id` as its next incarnation on `worker`, owning
    /// `range` (a recovery moves it; a split or parallel recovery narrows it).
    pub fn reincarnate(&mut self, id: InstanceId, worker: WorkerId, range: KeyRange) {
        if let Some(placed) = self.instance_mut(id) {
            placed.worker = worker;
            placed.key_range = range;
            placed.incarnation = placed.incarnation.next();
        }
    }

    /// The data address of the worker hosting instance `id`.
    pub fn addr_of(&self, id: InstanceId) -> Option<&str> {
        let (_, placed) = self.instance(id)?;
        self.workers.get(placed.worker.index()).map(String::as_str)
    }

    /// The ids of every instance fed by `node`'s instances.
    pub fn downstream_instances(&self, query: &Query, node: usize) -> Vec<InstanceId> {
        query
            .edge_targets(node)
            .iter()
            .flat_map(|&down| self.nodes[down].instances.iter().map(|i| i.id))
            .collect()
    }

    /// The ids of every instance feeding `node`.
    pub fn upstream_instances(&self, query: &Query, node: usize) -> Vec<InstanceId> {
        query
            .inputs(node)
            .iter()
            .flat_map(|&up| self.nodes[up].instances.iter().map(|i| i.id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::QueryBuilder;
    use crate::connectors::{Generator, StdoutSink};

    /// One source instance feeding a sink of three partitions, placed on
    /// two of three workers.
    fn placed(placement: Placement) -> Vec<Vec<u32>> {
        let mut q = QueryBuilder::new();
        let numbers = q.source("numbers", 1, |_| Ok(Generator::new(|n| n)));
        q.sink("print", 3, &[numbers], |ctx| Ok(StdoutSink::new(ctx)));
        let query = q.build().expect("builds");
        let workers = vec!["a:1".into(), "b:1".into(), "pool:1".into()];
        let plan = Plan::place(&query, workers, 2, &BTreeMap::new(), placement).expect("placed");
        plan.nodes
            .iter()
            .map(|n| n.instances.iter().map(|i| i.worker.0).collect())
            .collect()
    }

    #[test]
    fn spread_deals_instances_out_across_operators() {
        assert_eq!(placed(Placement::Spread), vec![vec![0], vec![1, 0, 1]]);
    }

    #[test]
    fn pipelines_put_every_operator_s_instance_i_on_worker_i() {
        assert_eq!(placed(Placement::Pipelines), vec![vec![0], vec![0, 1, 0]]);
    }

    #[test]
    fn placements_read_as_their_flag_writes_them() {
        for placement in [Placement::Spread, Placement::Pipelines] {
            assert_eq!(placement.to_string().parse(), Ok(placement));
        }
        let error = "pipeline".parse::<Placement>().unwrap_err();
        assert!(error.contains("spread or pipelines"), "{error}");
    }
}
