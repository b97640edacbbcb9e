//! What a run holds in memory, second by second: worker and coordinator
//! resident sets, output buffers kept for replay, checkpoint sizes and
//! queued batches. A leak or an unbounded buffer shows up as growth here
//! long before it kills a run, so `report.json` keeps the series and its
//! peaks (the soak test checks them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spate_engine::coordinator::view::{ClusterView, SharedView};
use spate_engine::EngineError;

/// How often the sampler looks at the cluster view (which the coordinator
/// refreshes five times a second; its history is per second too).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The run's memory at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourcePoint {
    /// Milliseconds since the job started.
    pub at_ms: u64,
    /// Tuples per second the sources emitted (the load the rest is held
    /// against: Linear Road's input rate rises tenfold over a run).
    pub input_rate: f64,
    /// Resident memory of every live worker process together (pool workers
    /// included), KiB; 0 where `/proc` cannot be read.
    pub workers_rss_kib: u64,
    /// Resident memory of the largest live worker, KiB.
    pub max_worker_rss_kib: u64,
    /// Resident memory of the coordinator (the process running the job), KiB.
    pub coordinator_rss_kib: u64,
    /// Bytes held in output buffers for replay, all instances together.
    pub buffered_bytes: u64,
    /// The largest one instance's output buffer, bytes.
    pub max_instance_buffered_bytes: u64,
    /// The latest checkpoint of every instance together, bytes: what the
    /// backup holders (and the coordinator's replica) keep.
    pub checkpoint_bytes: u64,
    /// The latest checkpoint of every instance together as it was sent,
    /// bytes: what checkpointing moves each interval (an increment, or a
    /// full checkpoint).
    #[serde(default)]
    pub sent_checkpoint_bytes: u64,
    /// Batches waiting in inboxes, all instances together.
    pub queued_batches: u64,
    /// Keyed state per operator (those that have any), as of each
    /// instance's latest checkpoint.
    #[serde(default)]
    pub state: BTreeMap<String, StateSize>,
}

/// An operator's keyed state, all its instances together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateSize {
    /// Keys (for Linear Road: cars in the toll assessment, segments in the
    /// toll calculator).
    pub keys: u64,
    /// Encoded size of the keys and values, bytes.
    pub bytes: u64,
}

impl StateSize {
    /// Bytes per key: how much state a car or a segment costs.
    pub fn bytes_per_key(&self) -> f64 {
        if self.keys == 0 {
            0.0
        } else {
            self.bytes as f64 / self.keys as f64
        }
    }
}

/// The largest figures of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Peaks {
    /// Peak resident set of the largest worker process, KiB, from
    /// `getrusage(RUSAGE_CHILDREN)` once every worker is reaped: exact, and
    /// it covers killed workers and moments between samples. (In a process
    /// that ran other children before, it bounds this run's from above.)
    pub worker_rss_kib: u64,
    /// Largest sum of the live workers' resident sets in one sample, KiB.
    pub workers_rss_kib: u64,
    /// Largest coordinator resident set in one sample, KiB.
    pub coordinator_rss_kib: u64,
    /// Largest total of output-buffer bytes in one sample.
    pub buffered_bytes: u64,
    /// Largest output buffer of one instance in one sample, bytes.
    pub instance_buffered_bytes: u64,
    /// Largest total of latest-checkpoint bytes in one sample.
    pub checkpoint_bytes: u64,
    /// Largest total of latest-checkpoint bytes as sent in one sample.
    #[serde(default)]
    pub sent_checkpoint_bytes: u64,
    /// Most batches queued at once in one sample.
    pub queued_batches: u64,
    /// Each operator's largest keyed state in one sample (by keys).
    #[serde(default)]
    pub state: BTreeMap<String, StateSize>,
}

impl Peaks {
    /// The peaks of `samples`, with the largest worker's peak resident set
    /// as the kernel measured it.
    pub fn of(samples: &[ResourcePoint], worker_rss_kib: u64) -> Peaks {
        let max = |f: fn(&ResourcePoint) -> u64| samples.iter().map(f).max().unwrap_or(0);
        Peaks {
            worker_rss_kib: worker_rss_kib.max(max(|p| p.max_worker_rss_kib)),
            workers_rss_kib: max(|p| p.workers_rss_kib),
            coordinator_rss_kib: max(|p| p.coordinator_rss_kib),
            buffered_bytes: max(|p| p.buffered_bytes),
            instance_buffered_bytes: max(|p| p.max_instance_buffered_bytes),
            checkpoint_bytes: max(|p| p.checkpoint_bytes),
            sent_checkpoint_bytes: max(|p| p.sent_checkpoint_bytes),
            queued_batches: max(|p| p.queued_batches),
            state: largest_states(samples),
        }
    }
}

/// Each operator's largest keyed state over `samples`.
fn largest_states(samples: &[ResourcePoint]) -> BTreeMap<String, StateSize> {
    let mut largest: BTreeMap<String, StateSize> = BTreeMap::new();
    for (operator, size) in samples.iter().flat_map(|p| &p.state) {
        let known = largest.entry(operator.clone()).or_default();
        if size.keys > known.keys {
            *known = *size;
        }
    }
    largest
}

/// Samples a running job's view once a second on a background thread.
/// Dropping it (for example when the run fails) stops the thread.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<ResourcePoint>>>,
}

impl Sampler {
    /// Starts sampling `view`, which the job must publish into.
    pub(crate) fn start(view: SharedView) -> Result<Sampler, EngineError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lrb-resources".into())
            .spawn(move || {
                let mut samples = Vec::new();
                let mut next = Instant::now() + SAMPLE_EVERY;
                while !flag.load(Ordering::Relaxed) {
                    // Short sleeps, so that stopping never waits a second.
                    std::thread::sleep(Duration::from_millis(50));
                    if Instant::now() < next {
                        continue;
                    }
                    next += SAMPLE_EVERY;
                    // Files are read after the lock is released: the
                    // coordinator must never wait on this thread.
                    let taken = sample(&view.read().unwrap_or_else(|p| p.into_inner()));
                    if let Some((mut point, workers)) = taken {
                        measure_memory(&mut point, &workers);
                        samples.push(point);
                    }
                }
                samples
            })
            .map_err(|e| EngineError::io("starting the resource sampler thread", e))?;
        Ok(Sampler {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops sampling and returns the samples, oldest first.
    pub(crate) fn finish(mut self) -> Vec<ResourcePoint> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One sample of a running job's instances, with the process ids of its
/// live workers to measure; `None` before it runs.
fn sample(view: &ClusterView) -> Option<(ResourcePoint, Vec<u32>)> {
    if view.state != spate_engine::coordinator::JobState::Running {
        return None;
    }
    let mut point = ResourcePoint {
        at_ms: view.elapsed_ms,
        ..ResourcePoint::default()
    };
    for operator in &view.operators {
        for i in &operator.instances {
            if operator.kind == "Source" {
                // A source's input is what it emits.
                point.input_rate += i.in_rate;
            }
            point.buffered_bytes += i.buffered_bytes;
            point.max_instance_buffered_bytes =
                point.max_instance_buffered_bytes.max(i.buffered_bytes);
            point.checkpoint_bytes += i.checkpoint_bytes;
            point.sent_checkpoint_bytes += i.last_checkpoint_bytes;
            point.queued_batches += i.queued_batches;
            if i.state_keys > 0 {
                let size = point.state.entry(operator.name.clone()).or_default();
                size.keys += i.state_keys;
                size.bytes += i.state_bytes;
            }
        }
    }
    let workers = view
        .workers
        .iter()
        .filter(|w| w.alive && w.pid != 0)
        .map(|w| w.pid)
        .collect();
    Some((point, workers))
}

/// Fills in the resident sets of `workers` and of this process.
fn measure_memory(point: &mut ResourcePoint, workers: &[u32]) {
    point.coordinator_rss_kib = rss_kib("self").unwrap_or(0);
    for pid in workers {
        let rss = rss_kib(&pid.to_string()).unwrap_or(0);
        point.workers_rss_kib += rss;
        point.max_worker_rss_kib = point.max_worker_rss_kib.max(rss);
    }
}

/// The resident set of process `pid` (or `self`), KiB, from
/// `/proc/PID/status`; `None` where that cannot be read (the process has
/// just died, or this is not Linux).
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The `VmRSS:  1234 kB` line of a `/proc/PID/status` text.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_engine::coordinator::view::{InstanceView, OperatorView, WorkerView};

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let text = "Name:\tspate\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(text), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tspate\n"), None);
        if cfg!(target_os = "linux") {
            assert!(rss_kib("self").is_some_and(|kib| kib > 0));
        }
        assert_eq!(rss_kib("0"), None);
    }

    #[test]
    fn a_sample_sums_instances_and_live_workers() {
        let instance = |buffered, checkpoint, in_rate| InstanceView {
            buffered_bytes: buffered,
            checkpoint_bytes: checkpoint,
            queued_batches: 2,
            in_rate,
            ..InstanceView::default()
        };
        let mut view = ClusterView {
            state: spate_engine::coordinator::JobState::Running,
            elapsed_ms: 3_000,
            workers: vec![WorkerView {
                pid: std::process::id(),
                alive: true,
                ..WorkerView::default()
            }],
            operators: vec![
                OperatorView {
                    name: "feeder".into(),
                    kind: "Source".into(),
                    instances: vec![instance(100, 10, 5_000.0)],
                },
                OperatorView {
                    name: "toll_calculator".into(),
                    kind: "Stateful".into(),
                    instances: vec![instance(300, 20, 4_000.0), instance(50, 30, 1.0)],
                },
            ],
            ..ClusterView::default()
        };
        let (mut point, workers) = sample(&view).expect("a running job is sampled");
        assert_eq!(workers, [std::process::id()]);
        measure_memory(&mut point, &workers);
        assert_eq!(point.at_ms, 3_000);
        assert_eq!(point.input_rate, 5_000.0);
        assert_eq!(point.buffered_bytes, 450);
        assert_eq!(point.max_instance_buffered_bytes, 300);
        assert_eq!(point.checkpoint_bytes, 60);
        assert_eq!(point.queued_batches, 6);
        if cfg!(target_os = "linux") {
            assert!(point.workers_rss_kib > 0);
            assert_eq!(point.workers_rss_kib, point.max_worker_rss_kib);
            assert!(point.coordinator_rss_kib > 0);
        }
        view.state = spate_engine::coordinator::JobState::Starting;
        assert_eq!(sample(&view), None);
    }

    #[test]
    fn peaks_are_the_largest_samples() {
        let samples = [
            ResourcePoint {
                max_worker_rss_kib: 10,
                workers_rss_kib: 30,
                buffered_bytes: 500,
                ..ResourcePoint::default()
            },
            ResourcePoint {
                max_worker_rss_kib: 20,
                workers_rss_kib: 25,
                buffered_bytes: 700,
                checkpoint_bytes: 9,
                ..ResourcePoint::default()
            },
        ];
        let peaks = Peaks::of(&samples, 15);
        assert_eq!(
            peaks.worker_rss_kib, 20,
            "a sample above the kernel's figure"
        );
        assert_eq!(peaks.workers_rss_kib, 30);
        assert_eq!(peaks.buffered_bytes, 700);
        assert_eq!(peaks.checkpoint_bytes, 9);
        assert_eq!(Peaks::of(&[], 42).worker_rss_kib, 42);
    }
}
