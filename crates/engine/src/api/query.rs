//! The query graph: typed construction, type-erased instantiation.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use super::Emit;
use super::{
    Data, InstanceContext, Operator, OperatorError, Output, Sink, Source, SourceStep,
    StatefulOperator,
};
use crate::error::EngineError;
use crate::hash::{key_hash, mix64};
use crate::ids::InstanceId;
use crate::stamp::Stamp;
use crate::state::{KeyRange, KeyedState, StateEntry};

type Filter<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;
type Router<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;
type NodeFactory = Box<
    dyn Fn(&InstanceContext, &(dyn Any + Send + Sync)) -> Result<Logic, OperatorError>
        + Send
        + Sync,
>;

/// A connection from an operator's output to a downstream operator: an
/// optional filter and, for stateful targets, the key-hash router.
pub struct Edge<T> {
    filter: Option<Filter<T>>,
    router: Option<Router<T>>,
}

impl<T> Clone for Edge<T> {
    fn clone(&self) -> Self {
        Edge {
            filter: self.filter.clone(),
            router: self.router.clone(),
        }
    }
}

impl<T> Edge<T> {
    pub(crate) fn accepts(&self, value: &T) -> bool {
        self.filter.as_ref().is_none_or(|f| f(value))
    }

    /// The routing hash: the key's hash for stateful targets; otherwise the
    /// stamp's, so that all outputs of one input go to one instance.
    pub(crate) fn route_hash(&self, value: &T, stamp: Stamp) -> u64 {
        match &self.router {
            Some(router) => router(value),
            None => mix64(stamp.0),
        }
    }
}

/// The output of an operator, to be connected to downstream operators.
pub struct Stream<T> {
    node: usize,
    builder: usize,
    filter: Option<Filter<T>>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Stream<T> {
    fn clone(&self) -> Self {
        Stream {
            node: self.node,
            builder: self.builder,
            filter: self.filter.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: 'static> Stream<T> {
    /// The same stream restricted to values `keep` accepts. The filter runs
    /// on the upstream, so rejected values never cross the network.
    pub fn filter(&self, keep: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        let filter: Filter<T> = match &self.filter {
            Some(previous) => {
                let previous = previous.clone();
                Arc::new(move |v| previous(v) && keep(v))
            }
            None => Arc::new(keep),
        };
        Stream {
            filter: Some(filter),
            ..self.clone()
        }
    }
}

/// The role of a node in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NodeKind {
    /// Produces tuples.
    Source,
    /// Stateless operator.
    Stateless,
    /// Stateful operator with engine-owned keyed state.
    Stateful,
    /// Consumes tuples.
    Sink,
}

struct NodeSpec {
    name: String,
    kind: NodeKind,
    parallelism: u32,
    inputs: Vec<usize>,
    /// `Vec<Edge<Out>>`, erased.
    edges: Box<dyn Any + Send + Sync>,
    edge_targets: Vec<usize>,
    factory: NodeFactory,
}

static NEXT_BUILDER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Builds a query graph. Every worker runs the same builder code, so the
/// graph, its operator code and its key functions agree everywhere.
///
/// ```
/// use spate_engine::connectors::{Generator, StdoutSink};
/// use spate_engine::{Operator, OperatorError, Output, QueryBuilder};
///
/// /// Doubles each number.
/// struct Double;
///
/// impl Operator for Double {
///     type In = u64;
///     type Out = u64;
///     fn process(&mut self, n: u64, out: &mut Output<'_, u64>) -> Result<(), OperatorError> {
///         out.emit(2 * n)
///     }
/// }
///
/// let mut q = QueryBuilder::new();
/// let numbers = q.source("numbers", 1, |_| Ok(Generator::new(|n| n).limit(100)));
/// let doubled = q.operator("double", 2, &[numbers], |_| Ok(Double));
/// let odd = doubled.filter(|n| n % 4 == 2); // runs on the upstream
/// q.sink("print", 1, &[odd], |ctx| Ok(StdoutSink::new(ctx)));
/// let query = q.build()?;
/// assert_eq!(query.len(), 3);
/// assert_eq!(query.find("double"), Some(1));
///
/// // Mistakes are reported together when the graph is built.
/// let mut q = QueryBuilder::new();
/// let numbers = q.source("numbers", 0, |_| Ok(Generator::new(|n| n)));
/// q.sink("numbers", 1, &[numbers], |ctx| Ok(StdoutSink::new(ctx)));
/// let error = q.build().err().unwrap().to_string();
/// assert!(error.contains("two operators are named `numbers`"), "{error}");
/// # Ok::<(), spate_engine::EngineError>(())
/// ```
pub struct QueryBuilder {
    id: usize,
    nodes: Vec<NodeSpec>,
    errors: Vec<String>,
}

impl Default for QueryBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl QueryBuilder {
    /// An empty query.
    pub fn new() -> Self {
        QueryBuilder {
            id: NEXT_BUILDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            nodes: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Adds a source with `parallelism` instances, each made by `factory`.
    pub fn source<S: Source>(
        &mut self,
        name: &str,
        parallelism: u32,
        factory: impl Fn(&InstanceContext) -> Result<S, OperatorError> + Send + Sync + 'static,
    ) -> Stream<S::Out> {
        self.add_node::<S::Out>(name, NodeKind::Source, parallelism, Vec::new(), {
            Box::new(move |ctx, edges| {
                Ok(Logic::Source(Box::new(SourceNode {
                    source: factory(ctx)?,
                    edges: typed_edges::<S::Out>(edges)?,
                })))
            })
        })
    }

    /// Adds a stateless operator reading `inputs`.
    pub fn operator<O: Operator>(
        &mut self,
        name: &str,
        parallelism: u32,
        inputs: &[Stream<O::In>],
        factory: impl Fn(&InstanceContext) -> Result<O, OperatorError> + Send + Sync + 'static,
    ) -> Stream<O::Out> {
        let inputs = self.connect(inputs, None);
        self.add_node::<O::Out>(name, NodeKind::Stateless, parallelism, inputs, {
            Box::new(move |ctx, edges| {
                Ok(Logic::Process(Box::new(StatelessNode {
                    op: factory(ctx)?,
                    edges: typed_edges::<O::Out>(edges)?,
                    range: ctx.key_range,
                })))
            })
        })
    }

    /// Adds a stateful operator reading `inputs`, partitioned by `O::key`.
    pub fn stateful<O: StatefulOperator>(
        &mut self,
        name: &str,
        parallelism: u32,
        inputs: &[Stream<O::In>],
        factory: impl Fn(&InstanceContext) -> Result<O, OperatorError> + Send + Sync + 'static,
    ) -> Stream<O::Out> {
        let router: Router<O::In> = Arc::new(|v| key_hash(&O::key(v)));
        let inputs = self.connect(inputs, Some(router));
        self.add_node::<O::Out>(name, NodeKind::Stateful, parallelism, inputs, {
            Box::new(move |ctx, edges| {
                Ok(Logic::Process(Box::new(StatefulNode {
                    op: factory(ctx)?,
                    edges: typed_edges::<O::Out>(edges)?,
                    state: KeyedState::default(),
                    range: ctx.key_range,
                })))
            })
        })
    }

    /// Adds a sink reading `inputs`.
    pub fn sink<S: Sink>(
        &mut self,
        name: &str,
        parallelism: u32,
        inputs: &[Stream<S::In>],
        factory: impl Fn(&InstanceContext) -> Result<S, OperatorError> + Send + Sync + 'static,
    ) {
        let inputs = self.connect(inputs, None);
        self.add_node::<()>(name, NodeKind::Sink, parallelism, inputs, {
            Box::new(move |ctx, _| {
                Ok(Logic::Process(Box::new(SinkNode {
                    sink: factory(ctx)?,
                })))
            })
        });
    }

    /// Checks the graph and freezes it.
    pub fn build(self) -> Result<Query, EngineError> {
        let mut errors = self.errors;
        for (i, node) in self.nodes.iter().enumerate() {
            if self.nodes[..i].iter().any(|n| n.name == node.name) {
                errors.push(format!("two operators are named `{}`", node.name));
            }
            if node.parallelism == 0 || node.parallelism > 1024 {
                errors.push(format!(
                    "operator `{}` has parallelism {}; use 1..=1024",
                    node.name, node.parallelism
                ));
            }
            if node.kind != NodeKind::Source && node.inputs.is_empty() {
                errors.push(format!("operator `{}` has no inputs", node.name));
            }
        }
        let sources: u32 = self
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Source)
            .map(|n| n.parallelism)
            .sum();
        if sources == 0 {
            errors.push("the query has no source".into());
        }
        if sources > 1 << Stamp::SOURCE_BITS {
            errors.push(format!(
                "the query has {sources} source instances; at most {} are supported",
                1 << Stamp::SOURCE_BITS
            ));
        }
        if errors.is_empty() {
            Ok(Query { nodes: self.nodes })
        } else {
            Err(EngineError::InvalidQuery(errors.join("; ")))
        }
    }

    fn add_node<Out: Data>(
        &mut self,
        name: &str,
        kind: NodeKind,
        parallelism: u32,
        inputs: Vec<usize>,
        factory: NodeFactory,
    ) -> Stream<Out> {
        self.nodes.push(NodeSpec {
            name: name.to_string(),
            kind,
            parallelism,
            inputs,
            edges: Box::new(Vec::<Edge<Out>>::new()),
            edge_targets: Vec::new(),
            factory,
        });
        Stream {
            node: self.nodes.len() - 1,
            builder: self.id,
            filter: None,
            _type: PhantomData,
        }
    }

    /// Adds an edge from each input stream to the node about to be added.
    fn connect<T: Data>(&mut self, inputs: &[Stream<T>], router: Option<Router<T>>) -> Vec<usize> {
        let target = self.nodes.len();
        let mut upstreams = Vec::new();
        for stream in inputs {
            let upstream = self
                .nodes
                .get_mut(stream.node)
                .filter(|_| stream.builder == self.id);
            let Some(edges) = upstream.and_then(|n| {
                n.edge_targets.push(target);
                n.edges.downcast_mut::<Vec<Edge<T>>>()
            }) else {
                self.errors
                    .push("a stream from another query builder was connected".into());
                continue;
            };
            edges.push(Edge {
                filter: stream.filter.clone(),
                router: router.clone(),
            });
            if !upstreams.contains(&stream.node) {
                upstreams.push(stream.node);
            }
        }
        upstreams
    }
}

fn typed_edges<T: Data>(edges: &(dyn Any + Send + Sync)) -> Result<Vec<Edge<T>>, OperatorError> {
    edges
        .downcast_ref::<Vec<Edge<T>>>()
        .cloned()
        .ok_or_else(|| OperatorError::new("internal error: edge type mismatch"))
}

/// A built query graph: nodes in the order they were added.
pub struct Query {
    nodes: Vec<NodeSpec>,
}

impl Query {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the query has no node (never true of a built query).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node's name.
    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// A node's role.
    pub fn kind(&self, node: usize) -> NodeKind {
        self.nodes[node].kind
    }

    /// A node's default parallelism.
    pub fn parallelism(&self, node: usize) -> u32 {
        self.nodes[node].parallelism
    }

    /// The nodes feeding `node`.
    pub fn inputs(&self, node: usize) -> &[usize] {
        &self.nodes[node].inputs
    }

    /// The target node of each of `node`'s output edges, in edge order.
    pub fn edge_targets(&self, node: usize) -> &[usize] {
        &self.nodes[node].edge_targets
    }

    /// The index of the node called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub(crate) fn instantiate(
        &self,
        node: usize,
        ctx: &InstanceContext,
    ) -> Result<Logic, EngineError> {
        let spec = &self.nodes[node];
        (spec.factory)(ctx, spec.edges.as_ref()).map_err(|e| EngineError::Operator {
            operator: spec.name.clone(),
            instance: InstanceId(ctx.instance),
            message: format!("could not start: {e}"),
        })
    }
}

/// A type-erased instance, as the worker runtime drives it.
pub(crate) enum Logic {
    Source(Box<dyn SourceLogic>),
    Process(Box<dyn ProcessLogic>),
}

/// What a source poll did.
pub(crate) enum SourcePoll {
    Emitted,
    WaitUntil(Instant),
    Done,
}

pub(crate) trait SourceLogic: Send {
    fn poll(&mut self, outbox: &mut dyn Emit) -> Result<SourcePoll, OperatorError>;
    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError>;
    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError>;
}

/// The size of an operator's keyed state: what decides between a full and
/// an incremental checkpoint, and what the metrics show.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StateSize {
    /// Keys held.
    pub(crate) keys: u64,
    /// Their encoded bytes, as of each key's last snapshot.
    pub(crate) bytes: u64,
    /// Keys changed since the last snapshot.
    pub(crate) changed: u64,
}

pub(crate) trait ProcessLogic: Send {
    /// Processes one input; `false` when the instance dropped it as not its
    /// own (a split's replay), so that it does not count as processed.
    fn process(&mut self, payload: &[u8], outbox: &mut dyn Emit) -> Result<bool, OperatorError>;
    /// Whether looking the keys of the next few inputs up before
    /// processing them ([`ProcessLogic::warm`]) saves more than it costs:
    /// only for keyed state too large for the cache.
    fn warms(&self) -> bool {
        false
    }
    /// Brings the state `payload` will use into the cache, ahead of
    /// processing it (`crate::worker::lookahead`). A malformed payload is
    /// left for [`ProcessLogic::process`] to report.
    fn warm(&self, _payload: &[u8]) {}
    fn finish(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
    /// The processing state as checkpoint entries (empty when stateless).
    fn snapshot(&mut self) -> Result<Vec<StateEntry>, EngineError> {
        Ok(Vec::new())
    }
    /// The entries changed since the last snapshot (of either kind): an
    /// incremental checkpoint's processing state.
    fn snapshot_changes(&mut self) -> Result<Vec<StateEntry>, EngineError> {
        Ok(Vec::new())
    }
    /// How much keyed state there is, and how much changed since the last
    /// snapshot.
    fn state_size(&self) -> StateSize {
        StateSize::default()
    }
    /// State outside keyed state (a sink's output position).
    fn operator_state(&mut self) -> Result<Vec<u8>, OperatorError> {
        Ok(Vec::new())
    }
    /// Restores what [`ProcessLogic::operator_state`] returned.
    fn restore_operator_state(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let _ = state;
        Ok(())
    }
    /// Replaces the processing state with checkpoint entries.
    fn restore(&mut self, entries: &[StateEntry], range: KeyRange) -> Result<(), EngineError> {
        if entries.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Checkpoint(format!(
                "a stateless operator cannot restore {} state entries (range {range:?})",
                entries.len()
            )))
        }
    }
    /// Folds one step of incremental checkpoints' entries into the
    /// processing state ([`KeyedState::apply_changes`]): a part of a live
    /// split, or a live merge's joined partitions, restored ahead of the
    /// stop, catching up.
    fn apply_changes(&mut self, changes: &[(&[StateEntry], KeyRange)]) -> Result<(), EngineError> {
        changes
            .iter()
            .try_for_each(|(entries, range)| self.restore(entries, *range))
    }
    /// Gives up the processing state, for another instance of the same
    /// operator to adopt ([`ProcessLogic::adopt_state`]): a part of a live
    /// split is restored ahead of its stop, off its instance's thread.
    fn take_state(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(())
    }
    /// Takes the processing state another instance of the same operator
    /// gave up ([`ProcessLogic::take_state`]) instead of restoring it.
    fn adopt_state(&mut self, state: Box<dyn Any + Send>) -> Result<(), EngineError> {
        state.downcast::<()>().map(|_| ()).map_err(|_| {
            EngineError::Checkpoint("a stateless operator cannot adopt keyed state".into())
        })
    }
    /// Adds the processing state of the partition next to this one's range
    /// that another instance of the same operator gave up
    /// ([`ProcessLogic::take_state`], [`KeyedState::absorb`]): the two
    /// halves of a live merge become one.
    fn absorb_state(&mut self, state: Box<dyn Any + Send>) -> Result<(), EngineError> {
        self.adopt_state(state)
    }
    /// Makes room for `additional` more keys in the processing state ahead
    /// of when they come: a live merge's larger staged partition, before
    /// the other's keys join it ([`ProcessLogic::absorb_state`]).
    fn reserve_keys(&mut self, _additional: usize) {}
}

fn decode<T: Data>(payload: &[u8]) -> Result<T, OperatorError> {
    bincode::deserialize(payload).map_err(|e| OperatorError(format!("malformed input tuple: {e}")))
}

struct SourceNode<S: Source> {
    source: S,
    edges: Vec<Edge<S::Out>>,
}

impl<S: Source> SourceLogic for SourceNode<S> {
    fn poll(&mut self, outbox: &mut dyn Emit) -> Result<SourcePoll, OperatorError> {
        Ok(match self.source.next()? {
            SourceStep::Emit(value) => {
                Output::new(&self.edges, outbox).emit(value)?;
                SourcePoll::Emitted
            }
            SourceStep::WaitUntil(at) => SourcePoll::WaitUntil(at),
            SourceStep::Done => SourcePoll::Done,
        })
    }

    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        self.source.checkpoint()
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
        self.source.restore(position)
    }
}

// Instances drop inputs they do not own. Routing never sends them any,
// except just after a split, when upstreams replay the parent's buffered
// inputs to both halves: each keeps only its own range.

struct StatelessNode<O: Operator> {
    op: O,
    edges: Vec<Edge<O::Out>>,
    /// Routed by stamp hash, as [`Edge::route_hash`] does.
    range: KeyRange,
}

impl<O: Operator> ProcessLogic for StatelessNode<O> {
    fn process(&mut self, payload: &[u8], outbox: &mut dyn Emit) -> Result<bool, OperatorError> {
        if !self.range.contains(mix64(outbox.stamp().0)) {
            return Ok(false);
        }
        self.op
            .process(decode(payload)?, &mut Output::new(&self.edges, outbox))?;
        Ok(true)
    }
}

struct StatefulNode<O: StatefulOperator> {
    op: O,
    edges: Vec<Edge<O::Out>>,
    state: KeyedState<O::Key, O::State>,
    range: KeyRange,
}

impl<O: StatefulOperator> ProcessLogic for StatefulNode<O> {
    fn process(&mut self, payload: &[u8], outbox: &mut dyn Emit) -> Result<bool, OperatorError> {
        let input: O::In = decode(payload)?;
        let key = O::key(&input);
        if !self.range.contains(key_hash(&key)) {
            return Ok(false);
        }
        let state = self.state.get_or_default(key);
        self.op
            .process(input, state, &mut Output::new(&self.edges, outbox))?;
        Ok(true)
    }

    fn warms(&self) -> bool {
        self.state.outgrows_cache()
    }

    fn warm(&self, payload: &[u8]) {
        if let Ok(input) = decode::<O::In>(payload) {
            self.state.warm(&O::key(&input));
        }
    }

    fn snapshot(&mut self) -> Result<Vec<StateEntry>, EngineError> {
        self.state.snapshot()
    }

    fn snapshot_changes(&mut self) -> Result<Vec<StateEntry>, EngineError> {
        self.state.snapshot_changes()
    }

    fn state_size(&self) -> StateSize {
        StateSize {
            keys: self.state.len() as u64,
            bytes: self.state.encoded_bytes(),
            changed: self.state.changed() as u64,
        }
    }

    fn restore(&mut self, entries: &[StateEntry], range: KeyRange) -> Result<(), EngineError> {
        self.state = KeyedState::restore(entries, range)?;
        Ok(())
    }

    fn apply_changes(&mut self, changes: &[(&[StateEntry], KeyRange)]) -> Result<(), EngineError> {
        self.state.apply_changes(changes)
    }

    fn take_state(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(self.state)
    }

    fn adopt_state(&mut self, state: Box<dyn Any + Send>) -> Result<(), EngineError> {
        self.state = keyed_state::<O>(state)?;
        Ok(())
    }

    fn absorb_state(&mut self, state: Box<dyn Any + Send>) -> Result<(), EngineError> {
        self.state.absorb(keyed_state::<O>(state)?);
        Ok(())
    }

    fn reserve_keys(&mut self, additional: usize) {
        self.state.reserve(additional);
    }
}

/// The keyed state of `O` that another instance gave up.
fn keyed_state<O: StatefulOperator>(
    state: Box<dyn Any + Send>,
) -> Result<KeyedState<O::Key, O::State>, EngineError> {
    state
        .downcast::<KeyedState<O::Key, O::State>>()
        .map(|state| *state)
        .map_err(|_| {
            EngineError::Checkpoint("keyed state of another operator offered for adoption".into())
        })
}

struct SinkNode<S: Sink> {
    sink: S,
}

impl<S: Sink> ProcessLogic for SinkNode<S> {
    fn process(&mut self, payload: &[u8], _outbox: &mut dyn Emit) -> Result<bool, OperatorError> {
        self.sink.write(decode(payload)?)?;
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        self.sink.finish()
    }

    fn operator_state(&mut self) -> Result<Vec<u8>, OperatorError> {
        self.sink.checkpoint()
    }

    fn restore_operator_state(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        self.sink.restore(state)
    }
}
