//! CPU quotas for worker processes, so that on one machine each worker
//! behaves like a small VM and scaling out really adds capacity.
//!
//! Uses the cgroup v1 `cpu` controller where it is mounted, else cgroup v2.

use std::path::{Path, PathBuf};

const PERIOD_US: u64 = 100_000;

/// A cgroup holding one worker, removed when dropped.
pub struct CpuLimit {
    dir: PathBuf,
}

impl CpuLimit {
    /// Limits process `pid` to `cores` CPUs. Fails with a reason when the
    /// kernel or the permissions do not allow it.
    pub fn apply(pid: u32, cores: f64) -> Result<CpuLimit, String> {
        if !(cores > 0.0 && cores.is_finite()) {
            return Err(format!("{cores} is not a positive number of cores"));
        }
        let quota = ((cores * PERIOD_US as f64) as u64).max(1_000);
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let (dir, files) = if v1.join("cpu.cfs_quota_us").exists() {
            (
                v1.join(format!("spate-worker-{pid}")),
                vec![
                    ("cpu.cfs_period_us", PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            )
        } else if v2.join("cgroup.controllers").exists() {
            (
                v2.join(format!("spate-worker-{pid}")),
                vec![("cpu.max", format!("{quota} {PERIOD_US}"))],
            )
        } else {
            return Err("no cgroup CPU controller is mounted".into());
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let limit = CpuLimit { dir };
        for (file, value) in files.iter().chain([&("cgroup.procs", pid.to_string())]) {
            let path = limit.dir.join(file);
            std::fs::write(&path, value)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(limit)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // Succeeds once the worker has exited; a leftover empty group is
        // harmless.
        let _ = std::fs::remove_dir(&self.dir);
    }
}
