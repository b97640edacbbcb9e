//! One running instance: the loop that merges inputs in stamp order, runs the
//! operator and flushes outputs with progress marks (or, for a source, polls
//! and paces the source), takes periodic checkpoints, and applies the
//! coordinator's trims and rewirings.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::select;

use super::input::{ControlEvent, Inbox, InputEvent};
use super::lookahead::Lookahead;
use super::output::{Outbox, SenderIdentity};
use super::schedule::{CheckpointSchedule, GridPoint};
use crate::api::{Logic, NodeKind, OperatorError, ProcessLogic, Query, SourceLogic, SourcePoll};
use crate::error::EngineError;
use crate::plan::{AddedInstance, Incarnation, InstanceId, MergedInstance, Plan};
use crate::stamp::merge::Merge;
use crate::stamp::Stamp;
use crate::state::{BufferMark, Checkpoint, CheckpointParts, KeyRange, OutputBuffer};
use crate::wire::control::{InstanceMetrics, InstanceStats, METRICS_EVERY};

/// A source flushes at least this often while it is producing.
const SOURCE_FLUSH_EVERY: Duration = Duration::from_millis(5);
/// A producing source looks at its control queue, the checkpoint schedule
/// and the flush clock once per this many tuples, not once per tuple: at a
/// million tuples a second a clock reading and a queue poll per tuple cost
/// the source thread (which cannot be split) about a tenth of its time,
/// and 32 tuples are some 30 µs.
const SOURCE_TUPLES_PER_CHECK: u32 = 32;
/// Inbox events taken per round before running the operator.
const EVENTS_PER_ROUND: usize = 256;

/// What an instance tells its worker besides its outputs.
pub(crate) enum Report {
    /// A checkpoint to back up.
    Checkpoint {
        instance: InstanceId,
        incarnation: Incarnation,
        frontier: Stamp,
        bytes: Vec<u8>,
        /// To the instance's holders (a stateful instance or a sink), else
        /// to the coordinator (a source's position).
        to_holders: bool,
    },
    /// The instance paused at `done`, as asked (a merge is coming).
    Paused {
        instance: InstanceId,
        incarnation: Incarnation,
        done: Stamp,
    },
    /// The instance reached the end of its input.
    Finished {
        instance: InstanceId,
        stats: InstanceStats,
    },
    /// A restored instance has drained the backlog its recovery built up.
    CaughtUp { instance: InstanceId },
    /// Periodic counters.
    Metrics(InstanceMetrics),
}

/// CPU time used by the calling thread, for utilisation metrics.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// An instance ready to run on its own thread.
pub(crate) struct Instance {
    pub(crate) me: SenderIdentity,
    pub(crate) query: Arc<Query>,
    pub(crate) node: usize,
    pub(crate) operator: String,
    pub(crate) key_range: KeyRange,
    pub(crate) logic: Logic,
    /// Upstream instance id -> input channel index.
    pub(crate) inputs: Inputs,
    pub(crate) inbox: Inbox,
    /// Source instances: their slot in the stamp space.
    pub(crate) source_slot: u32,
    /// The checkpoint to start from, when recovering.
    pub(crate) restore: Option<Checkpoint>,
    /// A logic whose keyed state was restored ahead, off this instance's
    /// thread (a part of a live split, a standby), to adopt instead of
    /// `restore`'s entries.
    pub(crate) live: Option<Box<dyn ProcessLogic>>,
    /// How often to checkpoint; `None` turns fault tolerance off.
    pub(crate) checkpoint_every: Option<Duration>,
    pub(crate) reports: crossbeam_channel::Sender<Report>,
}

/// How soon an instance whose checkpoint is due, but whose frontier has not
/// moved since its last one, looks again.
const CHECKPOINT_RECHECK: Duration = Duration::from_millis(10);

/// State shared by the source and operator loops.
struct Runner {
    me: SenderIdentity,
    query: Arc<Query>,
    node: usize,
    operator: String,
    key_range: KeyRange,
    inbox: Inbox,
    checkpoint_every: Option<Duration>,
    next_checkpoint: Instant,
    schedule: Option<CheckpointSchedule>,
    /// The grid point `next_checkpoint` came from; `None` when the
    /// coordinator asked for a checkpoint now, which never waits.
    grid: Option<GridPoint>,
    checkpointed: Option<Stamp>,
    /// The checkpoint the next incremental one changes: the latest taken,
    /// or the one restored from (none: the next one is full).
    base: Option<Stamp>,
    /// Where the output buffer stood at the latest checkpoint: an
    /// incremental one carries only the buffer's changes since.
    buffer_mark: Option<BufferMark>,
    /// The backup asked for a full checkpoint next.
    full_next: bool,
    /// Keys and encoded bytes of the state at the latest checkpoint.
    state_size: (u64, u64),
    reports: crossbeam_channel::Sender<Report>,
    restored_at: Option<Stamp>,
    next_metrics: Instant,
    /// CPU seconds this thread spent taking checkpoints, for the metrics.
    checkpoint_cpu_secs: f64,
    /// Seconds this thread waited for input or its schedule.
    idle_secs: f64,
}

impl Instance {
    /// Runs to the end of the input, then keeps serving replays until the
    /// worker shuts down (a downstream may still fail and need them).
    pub(crate) fn run(self, outbox: Outbox) -> Result<(), EngineError> {
        // A stateless instance keeps no checkpoint: it restarts empty at its
        // replay floor (see coordinator::checkpoint).
        let checkpoint_every = self
            .checkpoint_every
            .filter(|_| self.query.kind(self.node) != NodeKind::Stateless);
        let schedule =
            checkpoint_every.map(|every| CheckpointSchedule::new(every, &self.query, self.node));
        let grid = schedule.as_ref().map(CheckpointSchedule::next);
        let runner = Runner {
            me: self.me,
            query: self.query,
            node: self.node,
            operator: self.operator,
            key_range: self.key_range,
            inbox: self.inbox,
            checkpoint_every,
            next_checkpoint: grid.map_or_else(Instant::now, |g| g.at),
            schedule,
            grid,
            checkpointed: None,
            base: self.restore.as_ref().map(|c| c.frontier),
            buffer_mark: None,
            full_next: false,
            state_size: (0, 0),
            reports: self.reports,
            restored_at: self.restore.as_ref().map(|c| c.frontier),
            next_metrics: Instant::now() + METRICS_EVERY,
            checkpoint_cpu_secs: 0.0,
            idle_secs: 0.0,
        };
        match self.logic {
            Logic::Source(source) => {
                runner.run_source(source, self.source_slot, outbox, self.restore)
            }
            Logic::Process(process) => {
                let restore = self.restore.map(|checkpoint| (checkpoint, self.live));
                runner.run_process(process, self.inputs, outbox, restore)
            }
        }
    }
}

impl Runner {
    fn fail(&self, e: OperatorError) -> EngineError {
        EngineError::Operator {
            operator: self.operator.clone(),
            instance: self.me.instance,
            message: e.0,
        }
    }

    fn report(&self, report: Report) {
        // The worker only drops its end when it is shutting down.
        let _ = self.reports.send(report);
    }

    /// Tells the coordinator this instance paused at `done`.
    fn paused(&self, done: Stamp) {
        self.report(Report::Paused {
            instance: self.me.instance,
            incarnation: self.me.incarnation,
            done,
        });
    }

    /// Applies a control event from the coordinator; the outbox side of a
    /// plan change is done here, the input side by the caller.
    fn control(
        &mut self,
        event: ControlEvent,
        outbox: &mut Outbox,
    ) -> Result<Outcome, EngineError> {
        match event {
            ControlEvent::Trim { to, frontier } => outbox.trim(to, frontier),
            ControlEvent::Replan {
                plan,
                added,
                merged,
            } => {
                outbox.reconcile(&plan, &self.query, self.node, &added, &merged)?;
                return Ok(Outcome::Replanned(plan, added, merged));
            }
            ControlEvent::Rewire(peer) => outbox.rewire(peer)?,
            ControlEvent::CheckpointNow => self.checkpoint_now(),
            ControlEvent::CheckpointFull => {
                self.full_next = true;
                self.checkpoint_now();
            }
            ControlEvent::Pause => return Ok(Outcome::Pause),
            ControlEvent::Resume(until) => return Ok(Outcome::Resume(until)),
            ControlEvent::Stop => return Ok(Outcome::Stop),
            ControlEvent::LinkOpened(opened) => outbox.link_opened(opened),
        }
        Ok(Outcome::Continue)
    }

    /// Applies every waiting control event; the plan changes for the caller.
    fn control_pending(&mut self, outbox: &mut Outbox) -> Result<Vec<Outcome>, EngineError> {
        let mut outcomes = Vec::new();
        while let Ok(event) = self.inbox.control.try_recv() {
            match self.control(event, outbox)? {
                Outcome::Continue => {}
                other => outcomes.push(other),
            }
        }
        Ok(outcomes)
    }

    /// Turns a data event into a batch to merge, if it is one.
    fn batch(&self, event: InputEvent) -> Option<Batch> {
        match event {
            InputEvent::Batch {
                from,
                incarnation,
                connection,
                body,
                mark,
            } => Some(Batch {
                from,
                sender: (incarnation, connection),
                body,
                mark,
            }),
            InputEvent::Closed { from, error } => {
                // Losing an upstream is the coordinator's business: it will
                // restore it and a new incarnation will connect.
                tracing::debug!(
                    instance = %self.me.instance,
                    %from,
                    ?error,
                    "input channel closed"
                );
                None
            }
        }
    }

    /// Sends the periodic metrics when they are due: `(tuples, batches)`
    /// taken in so far.
    fn metrics(
        &mut self,
        (tuples_in, batches_in): (u64, u64),
        queued_batches: usize,
        frontier: Stamp,
        outbox: &Outbox,
    ) {
        let now = Instant::now();
        if now < self.next_metrics {
            return;
        }
        self.next_metrics = now + METRICS_EVERY;
        self.report(Report::Metrics(InstanceMetrics {
            instance: self.me.instance,
            tuples_in,
            tuples_out: outbox.tuples_out(),
            cpu_secs: thread_cpu_secs(),
            queued_batches: queued_batches as u64,
            batches_in,
            buffered_bytes: outbox.buffered_bytes() as u64,
            frontier,
            state_keys: self.state_size.0,
            state_bytes: self.state_size.1,
            checkpoint_cpu_secs: self.checkpoint_cpu_secs,
            idle_secs: self.idle_secs,
            blocked_secs: outbox.blocked_secs(),
        }));
    }

    /// How long to wait for input before a periodic duty is due.
    fn idle_timeout(&self) -> Duration {
        let next = match self.checkpoint_every {
            Some(_) => self.next_checkpoint.min(self.next_metrics),
            None => self.next_metrics,
        };
        next.saturating_duration_since(Instant::now())
    }

    /// Has the next checkpoint taken as soon as possible, without waiting
    /// for trims: the coordinator is waiting for it.
    fn checkpoint_now(&mut self) {
        self.next_checkpoint = Instant::now();
        self.grid = None;
    }

    /// Whether a due checkpoint should wait for the trims of its
    /// downstreams' checkpoints of this round (see `super::schedule`);
    /// if so, it looks again shortly.
    fn waits_for_trims(&mut self, outbox: &Outbox, now: Instant) -> bool {
        let waits = self
            .grid
            .is_some_and(|grid| grid.waits(now, |since| outbox.untrimmed_since(since)));
        if waits {
            self.next_checkpoint = now + CHECKPOINT_RECHECK;
        }
        waits
    }

    /// Whether to checkpoint at `frontier` now, as of `now` (a source reads
    /// the clock once for this and its flushes).
    fn checkpoint_due(&mut self, frontier: Stamp, now: Instant) -> bool {
        if self.checkpoint_every.is_none() || now < self.next_checkpoint {
            return false;
        }
        // A holder that refused the last one (a new holder without its
        // base) wants it again in full, at the same frontier if nothing
        // came since: a merge's alignment holds both partitions there
        // until their checkpoints there are stored.
        if self.checkpointed == Some(frontier) && !self.full_next {
            // Nothing new since the last one (an upstream is busy): look
            // again shortly, rather than wake up at once, again and again,
            // which spun a core while a large upstream checkpointed.
            self.next_checkpoint = now + CHECKPOINT_RECHECK;
            return false;
        }
        true
    }

    /// Hands the worker a checkpoint at `frontier` of `entries`, `buffer`
    /// and operator state, to back up: a delta on `base` (entries are then
    /// the keys changed since), or full.
    fn checkpoint(
        &mut self,
        frontier: Stamp,
        entries: &[crate::state::StateEntry],
        base: Option<Stamp>,
        operator_state: &[u8],
        buffer: &OutputBuffer,
    ) -> Result<(), EngineError> {
        let parts = CheckpointParts {
            operator: &self.operator,
            key_range: self.key_range,
            frontier,
            entries,
            output_buffer: buffer,
            operator_state,
        };
        let bytes = match base {
            Some(base) => parts.encode_delta(base, self.buffer_mark.as_ref())?,
            None => parts.encode()?,
        };
        self.buffer_mark = Some(buffer.mark());
        tracing::debug!(
            instance = %self.me.instance,
            frontier = frontier.0,
            bytes = bytes.len(),
            incremental = base.is_some(),
            "checkpoint"
        );
        self.report(Report::Checkpoint {
            instance: self.me.instance,
            incarnation: self.me.incarnation,
            frontier,
            bytes,
            to_holders: self.query.kind(self.node) != NodeKind::Source,
        });
        self.checkpointed = Some(frontier);
        if let Some(schedule) = &self.schedule {
            let grid = schedule.next();
            self.next_checkpoint = grid.at;
            self.grid = Some(grid);
        }
        Ok(())
    }

    /// Snapshots an operator's keyed state for a checkpoint at `frontier`
    /// and takes the checkpoint: incremental when the previous one is
    /// known, unless more than half the keys changed and the output buffer
    /// is smaller than the state (then a delta would cost about as much as
    /// a full one and weigh its backup down), else full. A large buffer
    /// keeps checkpoints incremental whatever changed: Linear Road's toll
    /// calculator changes all its segments every second, and its full
    /// checkpoints carried hundreds of MB of buffered output each time.
    fn checkpoint_process(
        &mut self,
        logic: &mut dyn ProcessLogic,
        frontier: Stamp,
        buffer: &OutputBuffer,
    ) -> Result<(), EngineError> {
        let size = logic.state_size();
        let most_changed = size.changed.saturating_mul(2) > size.keys;
        let small_buffer = buffer.bytes() as u64 <= size.bytes;
        let full = self.full_next || (most_changed && small_buffer);
        let base = self.base.filter(|_| !full);
        let entries = match base {
            Some(_) => logic.snapshot_changes()?,
            None => logic.snapshot()?,
        };
        let state = logic.operator_state().map_err(|e| self.fail(e))?;
        self.checkpoint(frontier, &entries, base, &state, buffer)?;
        self.base = Some(frontier);
        self.full_next = false;
        let size = logic.state_size();
        self.state_size = (size.keys, size.bytes);
        Ok(())
    }

    /// After the end of input: serve trims and rewirings until shutdown.
    fn linger(&mut self, outbox: &mut Outbox) -> Result<(), EngineError> {
        loop {
            select! {
                recv(self.inbox.control) -> event => match event {
                    Ok(event) => match self.control(event, outbox)? {
                        Outcome::Stop => return Ok(()),
                        // Finished: a merge now would gain nothing.
                        Outcome::Pause => self.paused(Stamp::END),
                        _ => {}
                    },
                    Err(_) => return Ok(()),
                },
                // Late data (a replay after our end) is already reflected.
                recv(self.inbox.data) -> event => if event.is_err() {
                    return Ok(());
                },
            }
        }
    }

    fn run_source(
        mut self,
        mut source: Box<dyn SourceLogic>,
        slot: u32,
        mut outbox: Outbox,
        restore: Option<Checkpoint>,
    ) -> Result<(), EngineError> {
        let mut seq = match restore {
            Some(checkpoint) => {
                self.restore_source(source.as_mut(), slot, &mut outbox, checkpoint)?
            }
            None => 0,
        };
        let mut last_flush = Instant::now();
        // Tuples emitted since the last look at control, checkpoints and
        // the flush clock; 0 looks before the next tuple.
        let mut unchecked = 0u32;
        loop {
            let next = Stamp::for_source(seq + 1, slot);
            // Nothing at or below the stamp just before our next one will come.
            let mark = Stamp(next.0 - 1);
            if unchecked == 0 {
                if self
                    .control_pending(&mut outbox)?
                    .iter()
                    .any(|o| matches!(o, Outcome::Stop))
                {
                    return Ok(());
                }
                let now = Instant::now();
                if self.checkpoint_due(mark, now) {
                    outbox.flush(mark);
                    // A source checkpoints its position only: after a
                    // failure it re-reads its outputs (see
                    // coordinator::checkpoint).
                    self.checkpoint_source(source.as_mut(), seq, mark)?;
                }
                if now.saturating_duration_since(last_flush) >= SOURCE_FLUSH_EVERY {
                    outbox.flush(mark);
                    last_flush = now;
                }
            }
            outbox.set_stamp(next);
            outbox.set_mark_floor(mark);
            if seq.is_multiple_of(1024) {
                self.metrics((seq, 0), 0, mark, &outbox);
            }
            match source.poll(&mut outbox).map_err(|e| self.fail(e))? {
                SourcePoll::Emitted => {
                    seq += 1;
                    unchecked = (unchecked + 1) % SOURCE_TUPLES_PER_CHECK;
                }
                SourcePoll::WaitUntil(at) => {
                    unchecked = 0;
                    outbox.flush(mark);
                    last_flush = Instant::now();
                    self.metrics((seq, 0), 0, mark, &outbox);
                    if !self.wait_until(at, &mut outbox)? {
                        return Ok(());
                    }
                }
                SourcePoll::Done => return self.source_done(source.as_mut(), seq, outbox),
            }
        }
    }

    /// Puts a recovering source back at its checkpointed position, with the
    /// outputs it had buffered; returns how many tuples it had emitted.
    fn restore_source(
        &mut self,
        source: &mut dyn SourceLogic,
        slot: u32,
        outbox: &mut Outbox,
        checkpoint: Checkpoint,
    ) -> Result<u64, EngineError> {
        let mut seq = 0u64;
        let (restored_seq, position): (u64, Option<Vec<u8>>) =
            bincode::deserialize(&checkpoint.operator_state)
                .map_err(|e| EngineError::Checkpoint(format!("source position: {e}")))?;
        // A source without a position restarts from the beginning and
        // regenerates everything, its old buffer included.
        if let Some(position) = position {
            source.restore(&position).map_err(|e| self.fail(e))?;
            seq = restored_seq;
            let mark = Stamp(Stamp::for_source(seq + 1, slot).0 - 1);
            outbox.restore_buffer(checkpoint.output_buffer, mark);
        }
        // A source has no backlog: it is caught up once it runs again.
        self.report(Report::CaughtUp {
            instance: self.me.instance,
        });
        Ok(seq)
    }

    /// Checkpoints a source at `at`: its emitted count and its position,
    /// which is all it needs to pick up from there.
    fn checkpoint_source(
        &mut self,
        source: &mut dyn SourceLogic,
        seq: u64,
        at: Stamp,
    ) -> Result<(), EngineError> {
        let position = source.checkpoint().map_err(|e| self.fail(e))?;
        let state = bincode::serialize(&(seq, position))
            .map_err(|e| EngineError::Checkpoint(format!("source position: {e}")))?;
        self.checkpoint(at, &[], None, &state, &OutputBuffer::default())
    }

    /// The source has no more to emit: completes its outputs, takes its last
    /// checkpoint, reports it finished and serves replays until shutdown.
    fn source_done(
        &mut self,
        source: &mut dyn SourceLogic,
        seq: u64,
        mut outbox: Outbox,
    ) -> Result<(), EngineError> {
        outbox.flush(Stamp::END);
        if self.checkpoint_every.is_some() {
            self.checkpoint_source(source, seq, Stamp::END)?;
        }
        self.report(Report::Finished {
            instance: self.me.instance,
            stats: InstanceStats {
                tuples_in: seq,
                tuples_out: outbox.tuples_out(),
            },
        });
        self.linger(&mut outbox)
    }

    /// Sleeps until `at`, serving control events meanwhile.
    /// Returns false when told to stop.
    fn wait_until(&mut self, at: Instant, outbox: &mut Outbox) -> Result<bool, EngineError> {
        loop {
            let now = Instant::now();
            if now >= at {
                return Ok(true);
            }
            let event = select! {
                recv(self.inbox.control) -> event => event.ok(),
                default(at - now) => None,
            };
            self.idle_secs += now.elapsed().as_secs_f64();
            match event {
                Some(event) => {
                    if let Outcome::Stop = self.control(event, outbox)? {
                        return Ok(false);
                    }
                }
                None if Instant::now() >= at => return Ok(true),
                // The worker dropped the control channel: only the
                // schedule is left to wait for.
                None => std::thread::sleep(at.saturating_duration_since(Instant::now())),
            }
        }
    }

    fn run_process(
        mut self,
        mut logic: Box<dyn ProcessLogic>,
        mut inputs: Inputs,
        mut outbox: Outbox,
        restore: Option<(Checkpoint, Option<Box<dyn ProcessLogic>>)>,
    ) -> Result<(), EngineError> {
        let merge = match restore {
            Some((checkpoint, live)) => {
                self.restore_process(logic.as_mut(), &inputs, &mut outbox, checkpoint, live)?
            }
            None => Merge::new(inputs.channels.len(), Stamp::ZERO),
        };
        let mut round = ProcessLoop {
            finished: merge.done().is_end(),
            merge,
            lookahead: Lookahead::default(),
            cap: Stamp::END,
            checkpoint_at: None,
            tuples_in: 0,
            batches_in: 0,
        };
        while !round.finished {
            let ControlFlow::Continue(Wakeup { first, outcomes }) = self.wait_round(&mut outbox)?
            else {
                return Ok(());
            };
            if self
                .apply_outcomes(outcomes, &mut round, &mut inputs)?
                .is_break()
            {
                return Ok(());
            }
            for event in first
                .into_iter()
                .chain(self.inbox.data.try_iter().take(EVENTS_PER_ROUND))
            {
                if let Some(batch) = self.batch(event) {
                    round.batches_in += 1;
                    inputs.accept(&mut round.merge, batch)?;
                }
            }
            self.process_round(logic.as_mut(), &mut round, &mut outbox)?;
            let before = thread_cpu_secs();
            self.checkpoint_round(logic.as_mut(), &mut round, &outbox)?;
            self.checkpoint_cpu_secs += thread_cpu_secs() - before;
            self.report_round(&round, &outbox);
        }
        self.report(Report::Finished {
            instance: self.me.instance,
            stats: InstanceStats {
                tuples_in: round.tuples_in,
                tuples_out: outbox.tuples_out(),
            },
        });
        self.linger(&mut outbox)
    }

    /// Puts a recovering operator back at its checkpoint: state (or the
    /// `live` state restored ahead, adopted), operator state and output
    /// buffer; returns the merge, complete up to there.
    fn restore_process(
        &self,
        logic: &mut dyn ProcessLogic,
        inputs: &Inputs,
        outbox: &mut Outbox,
        checkpoint: Checkpoint,
        live: Option<Box<dyn ProcessLogic>>,
    ) -> Result<Merge, EngineError> {
        let started = Instant::now();
        let keys = checkpoint.entries.len();
        match live {
            Some(staged) => logic.adopt_state(staged.take_state())?,
            None => logic.restore(&checkpoint.entries, checkpoint.key_range)?,
        }
        tracing::debug!(instance = %self.me.instance, keys, ms = started.elapsed().as_millis() as u64, "keyed state restored");
        logic
            .restore_operator_state(&checkpoint.operator_state)
            .map_err(|e| self.fail(e))?;
        outbox.restore_buffer(checkpoint.output_buffer, checkpoint.frontier);
        Ok(Merge::new(inputs.channels.len(), checkpoint.frontier))
    }

    /// Waits for input, for a control event or until a periodic duty is
    /// due, then applies every waiting control event (the outbox side);
    /// breaks when the worker dropped the inbox.
    fn wait_round(&mut self, outbox: &mut Outbox) -> Result<ControlFlow<(), Wakeup>, EngineError> {
        let timeout = self.idle_timeout();
        let mut outcomes = Vec::new();
        let waiting = Instant::now();
        let (control, first) = select! {
            recv(self.inbox.control) -> event => (event.ok(), None),
            recv(self.inbox.data) -> event => match event {
                Ok(event) => (None, Some(event)),
                Err(_) => return Ok(ControlFlow::Break(())),
            },
            default(timeout) => (None, None),
        };
        self.idle_secs += waiting.elapsed().as_secs_f64();
        if let Some(event) = control {
            outcomes.push(self.control(event, outbox)?);
        }
        outcomes.extend(self.control_pending(outbox)?);
        Ok(ControlFlow::Continue(Wakeup { first, outcomes }))
    }

    /// Applies the input side of control events, in order; breaks at the
    /// first that says stop.
    fn apply_outcomes(
        &self,
        outcomes: Vec<Outcome>,
        round: &mut ProcessLoop,
        inputs: &mut Inputs,
    ) -> Result<ControlFlow<()>, EngineError> {
        for outcome in outcomes {
            match outcome {
                Outcome::Stop => return Ok(ControlFlow::Break(())),
                Outcome::Replanned(plan, added, merged) => {
                    let upstreams = plan.upstream_instances(&self.query, self.node);
                    inputs.replanned(&mut round.merge, &plan, &upstreams, &added, &merged)?;
                }
                Outcome::Pause => {
                    round.cap = round.merge.done();
                    self.paused(round.cap);
                }
                Outcome::Resume(until) => {
                    round.cap = until;
                    round.checkpoint_at = Some(until).filter(|u| !u.is_end());
                }
                Outcome::Continue => {}
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Runs the operator over every tuple the merge has completed, up to the
    /// cap, and flushes its outputs with the new frontier as their mark.
    fn process_round(
        &self,
        logic: &mut dyn ProcessLogic,
        round: &mut ProcessLoop,
        outbox: &mut Outbox,
    ) -> Result<(), EngineError> {
        let merge = &mut round.merge;
        if merge.frontier().min(round.cap) > merge.done() {
            outbox.set_mark_floor(merge.done());
            let tuples_in = &mut round.tuples_in;
            let mut process = |logic: &mut dyn ProcessLogic, stamp, payload: &[u8]| {
                outbox.set_stamp(stamp);
                // A split's replay brings a part its siblings' inputs too:
                // only its own count, or the policy would see the parent's
                // whole rate offered to every part.
                let owned = logic.process(payload, outbox).map_err(|e| self.fail(e))?;
                *tuples_in += u64::from(owned);
                Ok(())
            };
            let lookahead = &mut round.lookahead;
            let warms = logic.warms();
            let done = merge.drain_until(round.cap, |stamp, payload| {
                if warms {
                    lookahead.push(stamp, payload, logic, &mut process)
                } else {
                    process(logic, stamp, payload)
                }
            })?;
            lookahead.release(logic, &mut process)?;
            outbox.flush(done);
            round.finished = done.is_end();
        }
        Ok(())
    }

    /// Takes the checkpoints this round owes: the one a merge asked for at
    /// an exact stamp, and the periodic (or final) one.
    fn checkpoint_round(
        &mut self,
        logic: &mut dyn ProcessLogic,
        round: &mut ProcessLoop,
        outbox: &Outbox,
    ) -> Result<(), EngineError> {
        let done = round.merge.done();
        let empty = OutputBuffer::default();
        let buffer = outbox.buffer().unwrap_or(&empty);
        if round.checkpoint_at == Some(done) {
            // Where a merge wants it, with the output buffer, whatever
            // the operator's kind: the merged instance starts from it.
            self.checkpoint_process(logic, done, buffer)?;
            round.checkpoint_at = None;
        }
        let now = Instant::now();
        if round.finished || (self.checkpoint_due(done, now) && !self.waits_for_trims(outbox, now))
        {
            if round.finished {
                logic.finish().map_err(|e| self.fail(e))?;
            }
            if self.checkpoint_every.is_some() {
                self.checkpoint_process(logic, done, buffer)?;
            }
        }
        Ok(())
    }

    /// Sends the metrics when due, and tells the coordinator once a
    /// restored instance has drained the backlog its recovery built up.
    fn report_round(&mut self, round: &ProcessLoop, outbox: &Outbox) {
        let done = round.merge.done();
        let queued = self.inbox.data.len() + round.merge.queued_batches();
        self.metrics((round.tuples_in, round.batches_in), queued, done, outbox);
        if let Some(from) = self.restored_at {
            if done > from && self.inbox.data.is_empty() && round.merge.queued_batches() == 0 {
                self.report(Report::CaughtUp {
                    instance: self.me.instance,
                });
                self.restored_at = None;
            }
        }
    }
}

/// What the operator loop carries from one round to the next.
struct ProcessLoop {
    merge: Merge,
    /// Released inputs whose state is being warmed, when the operator's
    /// state outgrows the cache.
    lookahead: Lookahead,
    /// Nothing above `cap` is processed: a merge brings the two
    /// partitions to one exact frontier, `checkpoint_at`.
    cap: Stamp,
    /// Where a merge asked for a checkpoint, until it is taken.
    checkpoint_at: Option<Stamp>,
    tuples_in: u64,
    /// Batches taken off the inbox.
    batches_in: u64,
    /// The merge is complete to the end of the input.
    finished: bool,
}

/// What woke the operator loop for a round.
struct Wakeup {
    /// The data event to start the round with, if input woke it.
    first: Option<InputEvent>,
    /// What the control events applied meanwhile ask of the loop.
    outcomes: Vec<Outcome>,
}

/// What a control event asks of the instance's loop.
enum Outcome {
    Continue,
    Replanned(Arc<Plan>, Arc<Vec<AddedInstance>>, Arc<Vec<MergedInstance>>),
    /// Stop processing here (a merge is coming).
    Pause,
    /// Process up to exactly this stamp, checkpoint there unless it is the
    /// end, and stay paused.
    Resume(Stamp),
    Stop,
}

/// Who sent a batch: the upstream's incarnation and the number of its
/// connection here (ordered: incarnation first).
type Sender = (Incarnation, u32);

/// A batch taken off the inbox.
struct Batch {
    from: InstanceId,
    /// The upstream's incarnation and its connection number: a later
    /// connection of the same incarnation replays the buffer afresh.
    sender: Sender,
    body: Bytes,
    mark: Stamp,
}

/// An instance's input channels, as the merge sees them.
pub(crate) struct Inputs {
    /// Upstream instance id -> merge channel.
    pub(crate) channels: HashMap<InstanceId, usize>,
    /// Per channel, the upstream incarnation and connection its batches
    /// come from.
    senders: Vec<Option<Sender>>,
    /// Upstream instance id -> its incarnation in the latest plan here.
    planned: HashMap<InstanceId, Incarnation>,
    /// Batches from an upstream this instance does not know yet: a new
    /// partition, or a new incarnation, whose plan change is on its way.
    early: Vec<Batch>,
}

impl Inputs {
    /// The inputs of an instance of `node` as placed in `plan`.
    pub(crate) fn new(plan: &Plan, query: &Query, node: usize) -> Self {
        let upstreams = plan.upstream_instances(query, node);
        Inputs {
            senders: vec![None; upstreams.len()],
            channels: upstreams
                .iter()
                .enumerate()
                .map(|(channel, id)| (*id, channel))
                .collect(),
            planned: planned(plan, &upstreams),
            early: Vec::new(),
        }
    }

    /// Feeds a batch to the merge, resetting the channel when it comes from
    /// a new incarnation of the upstream and dropping it when from an old
    /// one.
    fn accept(&mut self, merge: &mut Merge, batch: Batch) -> Result<(), EngineError> {
        if self
            .planned
            .get(&batch.from)
            .is_some_and(|p| batch.sender.0 < *p)
        {
            // From an incarnation the plan replaced (its worker was declared
            // failed, or it was split): refused, whether or not its
            // replacement has sent anything yet.
            return Ok(());
        }
        let channel = match self.channels.get(&batch.from) {
            Some(&channel)
                if self
                    .planned
                    .get(&batch.from)
                    .is_none_or(|p| batch.sender.0 <= *p) =>
            {
                channel
            }
            // Not (this incarnation of) an input yet: its plan change is on
            // its way, and may retire a merged partition first.
            _ => {
                self.early.push(batch);
                return Ok(());
            }
        };
        // A new incarnation, or a new connection of this one, replays from
        // its buffer: what the channel holds unreleased comes again.
        match self.senders[channel].map(|known| batch.sender.cmp(&known)) {
            Some(Ordering::Less) => return Ok(()),
            Some(Ordering::Greater) => merge.reset_channel(channel),
            Some(Ordering::Equal) | None => {}
        }
        self.senders[channel] = Some(batch.sender);
        merge.push(channel, batch.body, batch.mark)
    }

    /// Applies a plan change: new upstream partitions become new channels,
    /// complete up to the frontier they inherited; partitions merged into a
    /// neighbour retire theirs; early batches are fed again.
    fn replanned(
        &mut self,
        merge: &mut Merge,
        plan: &Plan,
        upstreams: &[InstanceId],
        added: &[AddedInstance],
        merged: &[MergedInstance],
    ) -> Result<(), EngineError> {
        for a in added.iter().filter(|a| upstreams.contains(&a.id)) {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.channels.entry(a.id) {
                slot.insert(merge.add_channel(a.frontier));
                self.senders.push(None);
            }
        }
        for m in merged {
            if let Some(&channel) = self.channels.get(&m.id) {
                merge.retire_channel(channel);
            }
        }
        self.planned = planned(plan, upstreams);
        // An upstream the plan replaced (restored, or split: its halves may
        // resend what it still has queued here, on two channels) is reset
        // now, not when its new incarnation's first batch arrives: from
        // here on its old incarnation's batches are dropped.
        for (id, incarnation) in &self.planned {
            if let Some(&channel) = self.channels.get(id) {
                if self.senders[channel].is_some_and(|known| known.0 < *incarnation) {
                    merge.reset_channel(channel);
                    self.senders[channel] = Some((*incarnation, 0));
                }
            }
        }
        for batch in std::mem::take(&mut self.early) {
            self.accept(merge, batch)?;
        }
        Ok(())
    }
}

/// The incarnation of each of `upstreams` in `plan`.
fn planned(plan: &Plan, upstreams: &[InstanceId]) -> HashMap<InstanceId, Incarnation> {
    upstreams
        .iter()
        .filter_map(|id| plan.instance(*id).map(|(_, p)| (*id, p.incarnation)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::merge::write_tuple;

    /// The inputs of an instance with one upstream, instance 1.
    fn one_upstream() -> Inputs {
        Inputs {
            channels: HashMap::from([(InstanceId(1), 0)]),
            senders: vec![None],
            planned: HashMap::from([(InstanceId(1), Incarnation(0))]),
            early: Vec::new(),
        }
    }

    fn batch(connection: u32, stamps: &[u64], mark: u64) -> Batch {
        let mut body = Vec::new();
        for s in stamps {
            write_tuple(&mut body, Stamp(*s), &s.to_le_bytes());
        }
        Batch {
            from: InstanceId(1),
            sender: (Incarnation(0), connection),
            body: body.into(),
            mark: Stamp(mark),
        }
    }

    fn released(merge: &mut Merge) -> Vec<u64> {
        let mut out = Vec::new();
        merge
            .drain(|stamp, _| {
                out.push(stamp.0);
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn a_reconnection_replays_its_buffer_without_duplicates_or_order_errors() {
        let mut inputs = one_upstream();
        let mut merge = Merge::new(1, Stamp::ZERO);
        inputs.accept(&mut merge, batch(0, &[1, 2, 3], 3)).unwrap();
        assert_eq!(released(&mut merge), vec![1, 2, 3]);
        // Received but not yet released when the pipe broke.
        inputs.accept(&mut merge, batch(0, &[4, 5], 3)).unwrap();
        // The same incarnation reconnects and replays its untrimmed buffer.
        inputs
            .accept(&mut merge, batch(1, &[2, 3, 4, 5, 6], 6))
            .unwrap();
        // A batch the broken connection still had queued here is dropped.
        inputs.accept(&mut merge, batch(0, &[7], 7)).unwrap();
        assert_eq!(released(&mut merge), vec![4, 5, 6]);
    }
}
