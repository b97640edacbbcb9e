//! The generator as a source: Nexmark events in time order, with the
//! progress promises that close event-time windows, optionally paced in
//! wall-clock time.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spate_engine::api::window::{ProgressClock, Timed};
use spate_engine::{OperatorError, Source, SourceStep};

use crate::generator::GeneratorConfig;
use crate::model::Event;

/// Event-time granularity of the source's progress promises, ms: windows
/// close at most this long (in event time) after their end.
pub const PROGRESS_MS: u64 = 500;

/// Where the source stands: what a checkpoint records.
#[derive(Clone, Serialize, Deserialize)]
struct Position {
    next: u64,
    clock: ProgressClock,
    pending: Option<Timed<Event>>,
    ended: bool,
}

/// Emits the configured events, progress before any event that moves time
/// past a multiple of [`PROGRESS_MS`], and an end mark.
pub struct EventSource {
    config: GeneratorConfig,
    /// Events per wall-clock second; `None` as fast as the job takes them.
    pace: Option<f64>,
    started: Option<Instant>,
    at: Position,
}

impl EventSource {
    /// A source of `config`'s events, paced at `rate` events a second
    /// (0: unpaced).
    pub fn new(config: GeneratorConfig, rate: u64) -> Self {
        EventSource {
            config,
            pace: (rate > 0).then_some(rate as f64),
            started: None,
            at: Position {
                next: 0,
                clock: ProgressClock::new(PROGRESS_MS),
                pending: None,
                ended: false,
            },
        }
    }
}

impl Source for EventSource {
    type Out = Timed<Event>;

    fn next(&mut self) -> Result<SourceStep<Timed<Event>>, OperatorError> {
        let at = &mut self.at;
        if let Some(pending) = at.pending.take() {
            return Ok(SourceStep::Emit(pending));
        }
        if at.ended {
            return Ok(SourceStep::Done);
        }
        if at.next == self.config.events {
            at.ended = true;
            let last = self.config.time_of(self.config.events.saturating_sub(1));
            let progress = at.clock.observe(last);
            let end = at.clock.end();
            return Ok(SourceStep::Emit(match progress {
                Some(progress) => {
                    at.pending = Some(end);
                    progress
                }
                None => end,
            }));
        }
        if let Some(rate) = self.pace {
            let started = *self.started.get_or_insert_with(|| {
                Instant::now() - Duration::from_secs_f64(at.next as f64 / rate)
            });
            let due = started + Duration::from_secs_f64(at.next as f64 / rate);
            if Instant::now() < due {
                return Ok(SourceStep::WaitUntil(due));
            }
        }
        let event = self.config.event(at.next);
        at.next += 1;
        let time = event.date_time();
        let event = Timed::Event { time, value: event };
        Ok(SourceStep::Emit(match at.clock.observe(time) {
            Some(progress) => {
                at.pending = Some(event);
                progress
            }
            None => event,
        }))
    }

    fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, OperatorError> {
        serde_json::to_vec(&self.at)
            .map(Some)
            .map_err(|e| OperatorError::new(format!("encoding the source position: {e}")))
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), OperatorError> {
        self.at = serde_json::from_slice(position)
            .map_err(|e| OperatorError::new(format!("decoding the source position: {e}")))?;
        self.started = None;
        Ok(())
    }
}
