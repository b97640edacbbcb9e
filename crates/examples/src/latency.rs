//! End-to-end latency of a query, measured where its output arrives: every
//! output carries the wall-clock time its input was emitted (microseconds
//! since the Unix epoch; every process of a local cluster shares the clock),
//! and [`LatencySink`] records now − emitted into one histogram per
//! [`WINDOW_MS`] of arrival time, appended to a file as JSON lines that
//! [`read_windows`] reads back after the run.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use spate_engine::{OperatorError, Sink};

/// Width of a latency window, milliseconds of arrival time.
pub const WINDOW_MS: u64 = 100;

/// Microseconds since the Unix epoch now (0 for a clock before 1970).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The latencies of the outputs that arrived in one window.
#[derive(Clone, Debug)]
pub struct LatencyWindow {
    /// Start of the window, milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// Latencies, microseconds.
    pub histogram: Histogram<u64>,
}

/// One window as a line of the file: `(latency µs, count)` per recorded
/// histogram bucket, which rebuilds the histogram exactly.
#[derive(Serialize, Deserialize)]
struct WindowLine {
    start_ms: u64,
    counts: Vec<(u64, u64)>,
}

/// A histogram for microsecond latencies (three significant digits,
/// growing as larger values come).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("three significant digits is a valid precision")
}

/// Records each output's latency into the window it arrived in and appends
/// finished windows to a file. Its input is the emission time of each
/// output, in microseconds since the Unix epoch.
pub struct LatencySink {
    path: PathBuf,
    file: BufWriter<File>,
    current: Option<LatencyWindow>,
}

impl LatencySink {
    /// Appends to `path` (created if absent), so that windows written by an
    /// earlier incarnation of the sink stay.
    pub fn create(path: &Path) -> Result<LatencySink, OperatorError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                OperatorError::new(format!(
                    "cannot open the latency file {}: {e}",
                    path.display()
                ))
            })?;
        Ok(LatencySink {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            current: None,
        })
    }

    /// Writes the current window's line.
    fn write_current(&mut self) -> Result<(), OperatorError> {
        let Some(window) = self.current.take() else {
            return Ok(());
        };
        let line = WindowLine {
            start_ms: window.start_ms,
            counts: window
                .histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        };
        let text = serde_json::to_string(&line).map_err(|e| OperatorError::new(e.to_string()))?;
        writeln!(self.file, "{text}").map_err(|e| self.io_error(e))
    }

    fn io_error(&self, e: std::io::Error) -> OperatorError {
        OperatorError::new(format!(
            "cannot write the latency file {}: {e}",
            self.path.display()
        ))
    }
}

impl Sink for LatencySink {
    type In = u64;

    fn write(&mut self, emitted_us: u64) -> Result<(), OperatorError> {
        let now = now_us();
        let start_ms = now / 1000 / WINDOW_MS * WINDOW_MS;
        if self
            .current
            .as_ref()
            .is_some_and(|w| w.start_ms != start_ms)
        {
            self.write_current()?;
        }
        let window = self.current.get_or_insert_with(|| LatencyWindow {
            start_ms,
            histogram: new_histogram(),
        });
        window
            .histogram
            .record(now.saturating_sub(emitted_us))
            .map_err(|e| OperatorError::new(format!("recording a latency: {e}")))
    }

    fn finish(&mut self) -> Result<(), OperatorError> {
        self.write_current()?;
        self.file.flush().map_err(|e| self.io_error(e))
    }

    /// Pushes finished windows to the file; a restored sink appends after
    /// them (windows are at least once, which a benchmark can live with).
    fn checkpoint(&mut self) -> Result<Vec<u8>, OperatorError> {
        self.file.flush().map_err(|e| self.io_error(e))?;
        Ok(Vec::new())
    }
}

/// Reads the windows a [`LatencySink`] wrote to `path`, in file order.
pub fn read_windows(path: &Path) -> std::io::Result<Vec<LatencyWindow>> {
    let mut windows = Vec::new();
    for (n, line) in BufReader::new(File::open(path)?).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: WindowLine = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} line {}: {e}", path.display(), n + 1),
            )
        })?;
        let mut histogram = new_histogram();
        for (value, count) in parsed.counts {
            histogram.record_n(value, count).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} line {}: {e}", path.display(), n + 1),
                )
            })?;
        }
        windows.push(LatencyWindow {
            start_ms: parsed.start_ms,
            histogram,
        });
    }
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_written_are_read_back_with_their_latencies() {
        let dir = std::env::temp_dir().join(format!("spate-latency-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut sink = LatencySink::create(&path).unwrap();
        // Emitted 2 ms and 40 ms ago: two latencies in (most likely) one window.
        sink.write(now_us() - 2_000).unwrap();
        sink.write(now_us() - 40_000).unwrap();
        sink.checkpoint().unwrap();
        sink.finish().unwrap();
        let windows = read_windows(&path).unwrap();
        let total: u64 = windows.iter().map(|w| w.histogram.len()).sum();
        assert_eq!(total, 2);
        // Latencies are at least what was set: the clock only moves on.
        let max = windows.iter().map(|w| w.histogram.max()).max().unwrap();
        assert!(max >= 40_000, "max {max} µs");
        let min = windows.iter().map(|w| w.histogram.min()).min().unwrap();
        assert!(min >= 2_000, "min {min} µs");
        assert!(windows.iter().all(|w| w.start_ms % WINDOW_MS == 0));
        std::fs::write(&path, "not json\n").unwrap();
        assert!(read_windows(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
