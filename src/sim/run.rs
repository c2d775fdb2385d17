//! Runs a scenario: the real daemon, in this process, on a scratch image;
//! a verifying workload over NBD; the fault timeline; a sampler.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{info, warn};

use super::report::{self, IoRecord, Report, Sample};
use super::scenario::Scenario;
use crate::daemon::{self, Daemon};
use crate::error::{Error, Result};
use crate::nbd::uri::NbdUri;
use crate::transport::nbd::NbdTransport;

const WWID: &str = "3600a0b800000000000000000000000f1";
const MAP: &str = "sim";

fn config(s: &Scenario, image: &Path) -> String {
    let mut paths = String::new();
    for p in &s.paths {
        paths.push_str(&format!(
            "    path {{\n        name {p}\n        transport file\n        file {}\n        vendor \"OSNEXUS\"\n        product \"QUANTASTOR\"\n        wwid \"{WWID}\"\n    }}\n",
            image.display()
        ));
    }
    format!(
        "defaults {{\n    polling_interval {}\n    checker_timeout 5\n    no_path_retry {}\n    io_timeout {}\n}}\n\
         devices {{\n{}}}\nmultipaths {{\n    multipath {{\n        wwid \"{WWID}\"\n        alias {MAP}\n    }}\n}}\n\
         paths {{\n{paths}}}\n",
        s.polling_interval,
        s.no_path_retry,
        s.io_timeout,
        crate::config::QUANTASTOR_DEVICE
    )
}

/// What a block should read back as.
#[derive(Clone, Copy, Default)]
struct Expect {
    /// Generation last acknowledged (0: never written, reads as zeroes).
    certain: u64,
    /// A write that failed may or may not have landed.
    maybe: Option<u64>,
}

fn fill(buf: &mut [u8], block: u64, gen: u64) {
    for chunk in buf.chunks_exact_mut(16) {
        chunk[..8].copy_from_slice(&block.to_le_bytes());
        chunk[8..].copy_from_slice(&gen.to_le_bytes());
    }
}

/// The generation a block holds, if it holds a whole, valid pattern.
fn decode(buf: &[u8], block: u64) -> Option<u64> {
    if buf.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let head = buf.get(..16)?;
    let (b, g) = head.split_at(8);
    let b = u64::from_le_bytes(b.try_into().ok()?);
    let g = u64::from_le_bytes(g.try_into().ok()?);
    (b == block && buf.chunks_exact(16).all(|c| c == head)).then_some(g)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One workload thread: owns every block whose number is `k` modulo
/// `iodepth`, so its reads have exactly one expected answer.
fn worker(k: u32, s: &Scenario, uri: &NbdUri, start: Instant, stop: &AtomicBool) -> Vec<IoRecord> {
    let client = NbdTransport::new(uri.clone(), Duration::from_secs(300));
    let bs = u64::from(s.bs);
    let depth = u64::from(s.iodepth);
    let owned = (s.size / bs / depth).max(1);
    let mut rng =
        Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(k) + 1).wrapping_mul(0x1234_5678_9abc_def1));
    let mut expect: HashMap<u64, Expect> = HashMap::new();
    let mut gen = 0u64;
    let mut buf = vec![0u8; s.bs as usize];
    let mut out = Vec::new();
    let deadline = start + Duration::from_secs(u64::from(s.duration_s));
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let block = u64::from(k) + depth * (rng.next() % owned);
        let offset = block * bs;
        let read = (rng.next() % 100) < u64::from(s.read_pct);
        let t0 = Instant::now();
        let e = expect.entry(block).or_default();
        let (ok, mismatch) = if read {
            match client.read_at(&mut buf, offset) {
                Ok(()) => {
                    let got = decode(&buf, block);
                    let good = got == Some(e.certain) || (got.is_some() && got == e.maybe);
                    if good {
                        if let Some(g) = got {
                            *e = Expect {
                                certain: g,
                                maybe: None,
                            };
                        }
                    }
                    (true, !good)
                }
                Err(_) => (false, false),
            }
        } else {
            gen += 1;
            fill(&mut buf, block, gen);
            match client.write_at(&buf, offset, false) {
                Ok(()) => {
                    *e = Expect {
                        certain: gen,
                        maybe: None,
                    };
                    (true, false)
                }
                Err(_) => {
                    e.maybe = Some(gen);
                    (false, false)
                }
            }
        };
        let now = Instant::now();
        out.push(IoRecord {
            t_ms: u64::try_from(now.duration_since(start).as_millis()).unwrap_or(u64::MAX),
            latency_us: u64::try_from(now.duration_since(t0).as_micros()).unwrap_or(u64::MAX),
            read,
            ok,
            mismatch,
        });
    }
    out
}

async fn sample(d: &Daemon, start: Instant) -> Sample {
    let snaps = d.snapshots().await;
    let mut paths = Vec::new();
    let mut usable = 0;
    for s in &snaps {
        usable += s.map.usable_paths();
        for (i, p) in s.map.paths().iter().enumerate() {
            paths.push((
                p.info.name.clone(),
                s.paths.get(i).map_or(0, |c| c.ios),
                p.dm.as_str().to_string(),
                p.check.as_str().to_string(),
            ));
        }
    }
    Sample {
        t_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        paths,
        usable,
    }
}

/// Runs `s`, writing report.json, report.csv and chart.svg into `out`.
pub fn run(s: &Scenario, out: &Path) -> Result<Report> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    let work = out.join("work");
    std::fs::create_dir_all(&work)
        .map_err(|e| Error::io(format!("cannot create {}", work.display()), e))?;
    let image = work.join("lun.img");
    let f = std::fs::File::create(&image)
        .map_err(|e| Error::io(format!("cannot create {}", image.display()), e))?;
    f.set_len(s.size)
        .map_err(|e| Error::io(format!("cannot size {}", image.display()), e))?;
    let conf = work.join("multipath.conf");
    std::fs::write(&conf, config(s, &image))
        .map_err(|e| Error::io(format!("cannot write {}", conf.display()), e))?;
    let nbd_socket = work.join("nbd.sock");
    let opts = daemon::Options {
        config: conf,
        nbd_tls: Default::default(),
        nbd_socket: Some(nbd_socket.clone()),
        nbd_listen: None,
        control_socket: work.join("control.sock"),
        scsi: None,
        access: Default::default(),
        control: Default::default(),
        metrics_listen: None,
        metrics_required: false,
        nbd_limits: daemon::NbdLimitOptions::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the runtime", e))?;
    let result = rt.block_on(async {
        let (d, servers) = Daemon::start(opts).await?;
        let uri = NbdUri::parse(&format!("nbd+unix:///{MAP}?socket={}", nbd_socket.display()))
            .map_err(|e| Error::io("NBD URI", std::io::Error::other(e)))?;
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        // Sampler.
        let sampler = {
            let d = d.clone();
            let samples = samples.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let s = sample(&d, start).await;
                    samples.lock().push(s);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        // Timeline.
        let steps = s.steps();
        let timeline = {
            let d = d.clone();
            let steps = steps.clone();
            tokio::spawn(async move {
                for st in steps {
                    let at = start + Duration::from_millis(st.at_ms);
                    tokio::time::sleep_until(at.into()).await;
                    info!(path = %st.path, fault = %st.fault, event = %st.label, "simulate: applying");
                    if let Err(e) = d.set_fault(&st.path, &st.fault).await {
                        warn!("simulate: {e}");
                    }
                }
            })
        };
        // Workload.
        let workers: Vec<_> = (0..s.iodepth)
            .map(|k| {
                let s = s.clone();
                let uri = uri.clone();
                let stop = stop.clone();
                std::thread::spawn(move || worker(k, &s, &uri, start, &stop))
            })
            .collect();
        let ios = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            for w in workers {
                all.extend(w.join().unwrap_or_default());
            }
            all
        })
        .await
        .unwrap_or_default();
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.await;
        timeline.abort();
        for p in &s.paths {
            let _ = d.set_fault(p, "clear").await;
        }
        let samples = samples.lock().clone();
        d.shutdown();
        d.wait(servers).await;
        let mut ios = ios;
        ios.sort_by_key(|r| r.t_ms);
        Ok::<_, Error>(report::build(&s.name, s.duration_s, &s.paths, &ios, &samples, &steps))
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    let report = result?;
    for (name, text) in [
        ("report.json", report.to_json()),
        ("report.csv", report.to_csv()),
        ("chart.svg", report.to_svg()),
    ] {
        let p: PathBuf = out.join(name);
        std::fs::write(&p, text)
            .map_err(|e| Error::io(format!("cannot write {}", p.display()), e))?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_decode_and_reject_torn_blocks() {
        let mut b = vec![0u8; 4096];
        assert_eq!(decode(&b, 7), Some(0));
        fill(&mut b, 7, 42);
        assert_eq!(decode(&b, 7), Some(42));
        assert_eq!(decode(&b, 8), None, "another block's data");
        b[4000] ^= 1;
        assert_eq!(decode(&b, 7), None, "torn");
    }
}
