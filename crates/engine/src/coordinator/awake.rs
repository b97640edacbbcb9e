//! The coordinator's own pauses. Heartbeats that arrive while the
//! coordinator is not scheduled (a machine starved of CPU, a paused
//! virtual machine or process) wait unread in its sockets, and when it runs
//! again every worker looks silent at once. A thread that ticks every few
//! milliseconds notices such a pause by waking late; silence counts only
//! from the end of the latest pause, so the coordinator never declares
//! workers failed for its own absence.
//!
//! The decisions are the two plain functions at the bottom; the thread only
//! feeds them the time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How often the clock's thread ticks.
const TICK: Duration = Duration::from_millis(10);

/// How long the coordinator has run without a pause.
pub(super) struct AwakeClock {
    ticks: Arc<Ticks>,
    /// Whether the ticking thread runs; without it the coordinator judges
    /// silence as if it never paused.
    ticking: bool,
}

/// What the ticking thread writes, in microseconds after `origin`.
struct Ticks {
    origin: Instant,
    last_tick_us: AtomicU64,
    /// When the latest pause ended (0: none yet), and how long it was.
    awake_since_us: AtomicU64,
    latest_pause_us: AtomicU64,
    /// A tick later than this after the one before ends a pause.
    pause_us: u64,
    stop: AtomicBool,
}

impl Ticks {
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

impl AwakeClock {
    /// Starts the clock; a tick more than `pause` late marks a pause.
    pub(super) fn start(pause: Duration) -> Self {
        let ticks = Arc::new(Ticks {
            origin: Instant::now(),
            last_tick_us: AtomicU64::new(0),
            awake_since_us: AtomicU64::new(0),
            latest_pause_us: AtomicU64::new(0),
            pause_us: pause.as_micros() as u64,
            stop: AtomicBool::new(false),
        });
        let shared = ticks.clone();
        let spawned = thread::Builder::new()
            .name("spate-coord-clock".into())
            .spawn(move || tick(&shared));
        if let Err(e) = &spawned {
            tracing::warn!("cannot start the coordinator's pause clock ({e}); its own pauses may be taken for silent workers");
        }
        AwakeClock {
            ticks,
            ticking: spawned.is_ok(),
        }
    }

    /// How long the coordinator has run since its latest pause.
    pub(super) fn awake_for(&self) -> Duration {
        if !self.ticking {
            return Duration::MAX;
        }
        let t = &self.ticks;
        Duration::from_micros(awake_for_us(
            t.now_us(),
            t.last_tick_us.load(Ordering::Acquire),
            t.awake_since_us.load(Ordering::Acquire),
            t.pause_us,
        ))
    }

    /// How long the latest pause lasted, if it ended less than `within`
    /// ago: what to tell a user whose workers all stopped meanwhile.
    pub(super) fn recent_pause(&self, within: Duration) -> Option<Duration> {
        let t = &self.ticks;
        let ended = t.awake_since_us.load(Ordering::Acquire);
        let length = t.latest_pause_us.load(Ordering::Acquire);
        let ago = Duration::from_micros(t.now_us().saturating_sub(ended));
        (length > 0 && ago < within).then(|| Duration::from_micros(length))
    }
}

impl Drop for AwakeClock {
    fn drop(&mut self) {
        self.ticks.stop.store(true, Ordering::Release);
    }
}

fn tick(t: &Ticks) {
    while !t.stop.load(Ordering::Acquire) {
        thread::sleep(TICK);
        let now = t.now_us();
        let before = t.last_tick_us.load(Ordering::Acquire);
        if let Some(length) = pause_before_tick(before, now, t.pause_us) {
            t.latest_pause_us.store(length, Ordering::Release);
            t.awake_since_us.store(now, Ordering::Release);
        }
        t.last_tick_us.store(now, Ordering::Release);
    }
}

/// The pause that a tick at `now`, whose previous tick was at `before`,
/// ends: how late it is, if that is more than `pause`.
fn pause_before_tick(before: u64, now: u64, pause: u64) -> Option<u64> {
    let late = now.saturating_sub(before + TICK.as_micros() as u64);
    (late > pause).then_some(late)
}

/// How long the coordinator has run without a pause at `now`, its clock
/// having last ticked at `last_tick`: none while that tick is more than
/// `pause` old, as the coordinator may be coming back from a pause its
/// clock has not woken to see yet.
fn awake_for_us(now: u64, last_tick: u64, since: u64, pause: u64) -> u64 {
    match pause_before_tick(last_tick, now, pause) {
        Some(_) => 0,
        None => now.saturating_sub(since),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    #[test]
    fn a_tick_later_than_a_pause_ends_one() {
        let pause = 125 * MS;
        // On time, or a little late: no pause.
        assert_eq!(pause_before_tick(100 * MS, 110 * MS, pause), None);
        assert_eq!(pause_before_tick(100 * MS, 200 * MS, pause), None);
        // 800 ms late (the process was stopped).
        assert_eq!(pause_before_tick(100 * MS, 910 * MS, pause), Some(800 * MS));
    }

    #[test]
    fn no_awake_time_while_the_clock_has_not_ticked_for_a_pause() {
        let pause = 125 * MS;
        // Ticking: awake since the start of the run.
        assert_eq!(
            awake_for_us(1_000 * MS, 995 * MS, 300 * MS, pause),
            700 * MS
        );
        // The last tick is 800 ms old: the process is back from a pause
        // before its clock, so nothing counts yet.
        assert_eq!(awake_for_us(1_800 * MS, 995 * MS, 300 * MS, pause), 0);
    }

    #[test]
    fn the_clock_counts_the_time_awake() {
        let clock = AwakeClock::start(Duration::from_millis(125));
        // On a loaded machine the clock's thread may itself wake late
        // and start again: wait for a stretch of 50 ms without a pause.
        let deadline = Instant::now() + Duration::from_secs(10);
        while clock.awake_for() < Duration::from_millis(50) {
            assert!(Instant::now() < deadline, "the clock never ran 50 ms");
            thread::sleep(Duration::from_millis(10));
        }
    }
}
