//! A fio loop over NBD for the VM tests: verified runs, one after another,
//! while the test breaks paths; a failed run fails the test with fio's
//! output and the guest's log.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::Value;

use super::Vm;

/// What the fio loop does, run after run.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Write 8 MiB regions at random (crc32c in every block) and read
    /// them back; each run takes the next region.
    WriteVerify,
    /// Read back the [`READ_REGIONS`] the host wrote into the image before
    /// boot ([`prefill`]), one per run, checking every block.
    ReadVerify,
}

pub const REGION: u64 = 8 << 20;
/// Pre-filled regions for [`Load::ReadVerify`]: 8 × 8 MiB from 64 MiB.
pub const READ_REGIONS: std::ops::Range<u64> = 8..16;

/// fio arguments for one region (the same job writes and verifies it).
pub fn fio_region_args(offset: u64) -> Vec<String> {
    fio_args(offset, REGION)
}

/// fio arguments for a region of `size` bytes at `offset`.
fn fio_args(offset: u64, size: u64) -> Vec<String> {
    [
        "--rw=randwrite",
        "--bs=4k",
        "--randseed=4242",
        &format!("--offset={offset}"),
        &format!("--size={size}"),
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--output-format=json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Writes the [`READ_REGIONS`] straight into the raw image on the host.
pub fn prefill(image: &std::path::Path) {
    for r in READ_REGIONS {
        let out = Command::new("fio")
            .args(["--name=prefill", "--ioengine=psync", "--do_verify=0"])
            .arg(format!("--filename={}", image.display()))
            .args(fio_region_args(r * REGION))
            .stdin(Stdio::null())
            .output()
            .expect("run fio (apt-get install fio)");
        assert!(
            out.status.success(),
            "fio prefill failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// fio runs over NBD, one after another, until stopped.
pub struct FioLoop {
    stop: Arc<AtomicBool>,
    handle: std::sync::Mutex<Option<JoinHandle<Result<usize, String>>>>,
}

impl FioLoop {
    pub fn start(uri: String, load: Load, image_size: u64) -> FioLoop {
        FioLoop::start_sized(uri, load, image_size, REGION)
    }

    /// [`FioLoop::start`] with write regions of `region` bytes (smaller
    /// regions: shorter runs, verified more often).
    pub fn start_sized(uri: String, load: Load, image_size: u64, region: u64) -> FioLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut runs = 0usize;
            while !flag.load(Ordering::Relaxed) || runs == 0 {
                let (offset, mode) = match load {
                    Load::WriteVerify => (
                        (runs as u64 % (image_size / region)) * region,
                        "--do_verify=1",
                    ),
                    Load::ReadVerify => {
                        let n = READ_REGIONS.end - READ_REGIONS.start;
                        (
                            (READ_REGIONS.start + runs as u64 % n) * REGION,
                            "--verify_only=1",
                        )
                    }
                };
                let out = Command::new("timeout")
                    .args([
                        "120",
                        "fio",
                        "--name=vm-verify",
                        "--ioengine=nbd",
                        "--iodepth=8",
                        mode,
                    ])
                    .arg(format!("--uri={uri}"))
                    .args(match load {
                        Load::WriteVerify => fio_args(offset, region),
                        Load::ReadVerify => fio_region_args(offset),
                    })
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run fio: {e}"))?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                let ok = out.status.success()
                    && serde_json::from_str::<Value>(&stdout[stdout.find('{').unwrap_or(0)..])
                        .map(|v| v["jobs"][0]["error"] == 0)
                        .unwrap_or(false);
                if !ok {
                    return Err(format!(
                        "fio {load:?} run {runs} (offset {offset}) failed ({}):\n{}\n{stdout}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                runs += 1;
            }
            Ok(runs)
        });
        FioLoop {
            stop,
            handle: std::sync::Mutex::new(Some(handle)),
        }
    }

    /// Panics with fio's error if the loop stopped by itself (a run failed).
    pub fn check(&self, vm: &Vm, what: &str) {
        let finished = self
            .handle
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(JoinHandle::is_finished);
        if finished {
            let n = self.join(vm);
            panic!("fio loop ended by itself after {n} runs while waiting for: {what}");
        }
    }

    /// Stops after the current run; every run must have passed.
    pub fn finish(self, vm: &Vm) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.join(vm)
    }

    fn join(&self, vm: &Vm) -> usize {
        let h = self.handle.lock().unwrap().take().expect("joined once");
        match h.join().expect("fio thread") {
            Ok(n) => n,
            Err(e) => panic!(
                "{e}\n--- guest /run/umpath.log ---\n{}",
                vm.sh("tail -n 60 /run/umpath.log").out
            ),
        }
    }
}

impl Drop for FioLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
