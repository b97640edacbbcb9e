//! Output files of sinks that survive their host: one incarnation of a sink
//! writes its file at a time, and a restored sink continues it exactly from
//! its checkpoint or fails saying why.
//!
//! The file must be where every worker that may restore the sink can reach
//! it (shared storage: the same path on every host). A sink holds an
//! exclusive lock on its file while it runs; a sink restored elsewhere
//! waits for the lock, so an old incarnation that still runs (a worker
//! declared failed that has not stopped yet) can never write behind its
//! replacement: it releases the lock only by exiting, which it does once
//! its lease from the coordinator runs out.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::OperatorError;

/// How long a restored sink waits for an old incarnation to let go of its
/// file: well beyond any lease.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Opens (creating it if need be) the output file at `path` for a sink, and
/// takes its lock. A fresh sink (not `restoring`) empties it; a restored
/// one leaves it for [`rewind`].
pub fn open(path: &Path, restoring: bool) -> Result<File, OperatorError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            OperatorError::new(format!(
                "cannot create {} for the sink's output: {e} (is the shared storage mounted here?)",
                dir.display()
            ))
        })?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(|e| OperatorError::new(format!("cannot open {}: {e}", path.display())))?;
    lock(&file, path)?;
    if !restoring {
        file.set_len(0)
            .map_err(|e| OperatorError::new(format!("cannot empty {}: {e}", path.display())))?;
    }
    Ok(file)
}

/// Cuts a restored sink's file back to `offset`, where its checkpoint left
/// it, and positions it there. A file shorter than that is not this sink's
/// output (a different disk, or a lost one): refused rather than padded.
pub fn rewind(file: &mut File, path: &Path, offset: u64) -> Result<(), OperatorError> {
    let len = file
        .metadata()
        .map_err(|e| OperatorError::new(format!("cannot read {}: {e}", path.display())))?
        .len();
    if len < offset {
        return Err(OperatorError::new(format!(
            "{} holds {len} bytes but the sink's checkpoint wrote {offset}: this host does not \
             see the sink's output; put sink outputs on storage every worker shares",
            path.display()
        )));
    }
    file.set_len(offset)?;
    file.seek(SeekFrom::Start(offset))?;
    Ok(())
}

fn lock(file: &File, path: &Path) -> Result<(), OperatorError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on an fd this function's caller owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(OperatorError::new(format!(
                "cannot lock {}: {error}",
                path.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(OperatorError::new(format!(
                "another process has held {} for {LOCK_WAIT:?}: an earlier incarnation of this \
                 sink still runs; end it",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_second_incarnation_waits_for_the_first_and_continues_its_file() {
        let dir = std::env::temp_dir().join(format!("spate-sink-file-{}", std::process::id()));
        let path = dir.join("out.csv");
        let mut first = open(&path, false).unwrap();
        first.write_all(b"one\ntwo\n").unwrap();
        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let releasing = Instant::now();
            drop(first);
            releasing
        });
        let mut second = open(&path, true).unwrap();
        let opened = Instant::now();
        assert!(opened >= released.join().unwrap());
        rewind(&mut second, &path, 4).unwrap();
        second.write_all(b"2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n2\n");
        drop(second);
        let mut elsewhere = open(&dir.join("other.csv"), true).unwrap();
        let err = rewind(&mut elsewhere, &path, 4).unwrap_err().to_string();
        assert!(err.contains("storage every worker shares"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
