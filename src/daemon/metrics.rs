//! Prometheus metrics over HTTP (`--metrics-listen`, `umpath_metrics_listen`).
//!
//! ```text
//!  GET /metrics ──▶ connection (≤ MAX_CONNECTIONS, REQUEST_TIMEOUT, ≤ MAX_REQUEST bytes)
//!                      │
//!                      ▼
//!                  Renderer (one render at a time; the text of the last
//!                  ≤ CACHE_FOR is reused) ◀── Published + MapEngine::snapshot()
//! ```
//!
//! The exposition is encoded with `prometheus-client` (OpenMetrics text),
//! served as OpenMetrics to clients that ask for it (`Accept:
//! application/openmetrics-text`, as Prometheus does) and as the classic
//! Prometheus text format (0.0.4) otherwise ([`to_prometheus_text`]).
//! A scrape reads the published snapshot and each map's counters under
//! its short map lock: it never waits for the supervisor, a check or a
//! hung path, and a scrape storm costs at most one render per second.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex, Semaphore};
use tracing::{debug, warn};

use super::supervisor::Published;
use crate::engine::histogram::HistogramSnapshot;
use crate::engine::MapSnapshot;
use crate::model::{CheckState, DmState};
use crate::policy::no_path_retry::NoPathState;

/// Connections served at once; more are answered 503 and closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// A connection has this long to send its request head (so idle
/// connections cannot hold the slots for long).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection has this long in all, request and answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A rendered exposition is reused for this long.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Daemon-wide counters the metrics show (the engine keeps the per-map
/// and per-path ones).
#[derive(Debug)]
pub struct Stats {
    /// Unix time the daemon started, in seconds.
    pub start_time: f64,
    started: Instant,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Unix time of the last successful (re)load, in milliseconds.
    last_reload_ok_ms: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        let now = unix_ms();
        Stats {
            start_time: now as f64 / 1000.0,
            started: Instant::now(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_ok_ms: AtomicU64::new(now),
        }
    }
}

impl Stats {
    /// A `reconfigure` (or SIGHUP) ended.
    pub fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
            self.last_reload_ok_ms.store(unix_ms(), Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What one scrape shows: owned copies, so encoding holds no lock.
#[derive(Debug)]
struct Sample {
    maps: Vec<MapSnapshot>,
    waiting_maps: usize,
    reloads_ok: u64,
    reloads_failed: u64,
    last_reload_ok: f64,
    start_time: f64,
    uptime: f64,
}

impl Sample {
    fn take(published: &Published, stats: &Stats) -> Sample {
        Sample {
            maps: published.maps.iter().map(|m| m.engine.snapshot()).collect(),
            waiting_maps: published.pending.len(),
            reloads_ok: stats.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: stats.reloads_failed.load(Ordering::Relaxed),
            last_reload_ok: stats.last_reload_ok_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            start_time: stats.start_time,
            uptime: stats.started.elapsed().as_secs_f64(),
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// Every checker state, as `umpath_path_checker_state{state=...}` lists them.
const CHECK_STATES: [CheckState; 8] = [
    CheckState::Unchecked,
    CheckState::Up,
    CheckState::Down,
    CheckState::Ghost,
    CheckState::Pending,
    CheckState::Shaky,
    CheckState::Marginal,
    CheckState::Timeout,
];

/// Writes one metric family.
struct Fam<'a, 'b> {
    enc: &'a mut DescriptorEncoder<'b>,
}

impl Fam<'_, '_> {
    fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        rows: impl IntoIterator<Item = (Labels, V)>,
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, unit, MetricType::Gauge)?;
        for (labels, v) in rows {
            m.encode_family(&labels)?.encode_gauge(&v)?;
        }
        Ok(())
    }

    /// `name` without `_total`: the encoder adds it to the samples.
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        rows: impl IntoIterator<Item = (Labels, u64)>,
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, unit, MetricType::Counter)?;
        for (labels, v) in rows {
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
        }
        Ok(())
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, HistogramSnapshot)>,
    ) -> std::fmt::Result {
        let mut m =
            self.enc
                .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (labels, h) in rows {
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum_seconds(),
                h.count(),
                &h.bounded(),
                None,
            )?;
        }
        Ok(())
    }
}

impl Collector for Sample {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut f = Fam { enc: &mut enc };
        let map_labels = |s: &MapSnapshot| -> Labels {
            vec![("map", s.info.name.clone()), ("wwid", s.info.wwid.clone())]
        };
        let maps = &self.maps;

        // Daemon.
        {
            let mut m = f.enc.encode_descriptor(
                "umpath_build",
                "umpath's version",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        }
        f.gauge(
            "umpath_start_time",
            "Unix time the daemon started",
            Some(&Unit::Seconds),
            [(Labels::new(), self.start_time)],
        )?;
        f.gauge(
            "umpath_uptime",
            "Seconds since the daemon started",
            Some(&Unit::Seconds),
            [(Labels::new(), self.uptime)],
        )?;
        f.counter(
            "umpath_config_reloads",
            "Configuration reloads (reconfigure, SIGHUP) by result",
            None,
            [
                (vec![("result", "success".to_string())], self.reloads_ok),
                (vec![("result", "failure".to_string())], self.reloads_failed),
            ],
        )?;
        f.gauge(
            "umpath_config_last_reload_success_timestamp",
            "Unix time of the last successful configuration load",
            Some(&Unit::Seconds),
            [(Labels::new(), self.last_reload_ok)],
        )?;
        f.gauge(
            "umpath_maps",
            "Maps running",
            None,
            [(Labels::new(), maps.len() as u64)],
        )?;
        f.gauge(
            "umpath_waiting_maps",
            "Maps waiting for a path that can tell the LUN's size",
            None,
            [(Labels::new(), self.waiting_maps as u64)],
        )?;

        // Per map.
        f.gauge(
            "umpath_map_paths",
            "Paths of the map",
            None,
            maps.iter()
                .map(|s| (map_labels(s), s.live_paths().count() as u64)),
        )?;
        f.gauge(
            "umpath_map_active_paths",
            "Paths of the map that carry IO (dm state active)",
            None,
            maps.iter()
                .map(|s| (map_labels(s), s.map.usable_paths() as u64)),
        )?;
        f.gauge(
            "umpath_map_queueing",
            "1 while IO is held because no path is usable (no_path_retry)",
            None,
            maps.iter().map(|s| {
                let q = matches!(s.map.no_path_state(), NoPathState::Queueing { .. });
                (map_labels(s), u64::from(q))
            }),
        )?;
        f.gauge(
            "umpath_map_held_requests",
            "Requests held while no path is usable",
            None,
            maps.iter().map(|s| (map_labels(s), s.held as u64)),
        )?;
        f.gauge(
            "umpath_map_size",
            "Size of the LUN",
            Some(&Unit::Bytes),
            maps.iter().map(|s| (map_labels(s), s.info.size)),
        )?;
        f.gauge(
            "umpath_map_current_group",
            "Path group IO goes to (1-based; 0: none)",
            None,
            maps.iter().map(|s| {
                let g = s.map.current_group().map_or(0, |g| g as u64 + 1);
                (map_labels(s), g)
            }),
        )?;
        f.counter(
            "umpath_map_group_switches",
            "Times IO moved to another path group (failover, failback, admin)",
            None,
            maps.iter().map(|s| (map_labels(s), s.group_switches)),
        )?;

        // Per path.
        let paths = || {
            maps.iter().flat_map(|s| {
                s.live_paths().map(move |(_, p, c)| {
                    let l: Labels =
                        vec![("map", s.info.name.clone()), ("path", p.info.name.clone())];
                    (l, p, c)
                })
            })
        };
        let with = |mut l: Labels, k: &'static str, v: &str| {
            l.push((k, v.to_string()));
            l
        };
        f.gauge(
            "umpath_path_checker_state",
            "The path checker's last verdict: 1 for the current state",
            None,
            paths().flat_map(|(l, p, _)| {
                CHECK_STATES.iter().map(move |st| {
                    (
                        with(l.clone(), "state", st.as_str()),
                        u64::from(p.check == *st),
                    )
                })
            }),
        )?;
        f.gauge(
            "umpath_path_dm_state",
            "Whether the path carries IO: 1 for the current state (active, failed)",
            None,
            paths().flat_map(|(l, p, _)| {
                [DmState::Active, DmState::Failed]
                    .into_iter()
                    .map(move |st| (with(l.clone(), "state", st.as_str()), u64::from(p.dm == st)))
            }),
        )?;
        f.gauge(
            "umpath_path_admin_failed",
            "1 while the path is failed by an admin (fail path)",
            None,
            paths().map(|(l, p, _)| (l, u64::from(p.admin_failed))),
        )?;
        f.gauge(
            "umpath_path_priority",
            "The path's priority",
            None,
            paths().map(|(l, p, _)| (l, i64::from(p.prio.0))),
        )?;
        f.counter(
            "umpath_path_ios",
            "Requests the path completed successfully",
            None,
            paths().map(|(l, _, c)| (l, c.ios)),
        )?;
        f.counter(
            "umpath_path_read",
            "Bytes read successfully through the path",
            Some(&Unit::Bytes),
            paths().map(|(l, _, c)| (l, c.read_bytes)),
        )?;
        f.counter(
            "umpath_path_written",
            "Bytes written successfully through the path",
            Some(&Unit::Bytes),
            paths().map(|(l, _, c)| (l, c.written_bytes)),
        )?;
        f.counter(
            "umpath_path_errors",
            "Requests that failed on the path, by class (path: retried elsewhere; lun: returned to the client; unsupported)",
            None,
            paths().flat_map(|(l, _, c)| {
                ["path", "lun", "unsupported"]
                    .into_iter()
                    .zip(c.errors_by_class)
                    .map(move |(class, n)| (with(l.clone(), "class", class), n))
            }),
        )?;
        f.gauge(
            "umpath_path_in_flight_requests",
            "Requests on the path now",
            None,
            paths().map(|(l, _, c)| (l, u64::from(c.in_flight))),
        )?;
        f.gauge(
            "umpath_path_stuck_requests",
            "Requests past io_timeout whose original has not ended",
            None,
            paths().map(|(l, _, c)| (l, c.stuck as u64)),
        )?;
        f.counter(
            "umpath_path_failures",
            "Times the path failed (IO errors, checks, admin)",
            None,
            paths().map(|(l, p, _)| (l, p.failures)),
        )?;
        f.counter(
            "umpath_path_reinstatements",
            "Times the path was reinstated",
            None,
            paths().map(|(l, _, c)| (l, c.reinstatements)),
        )?;
        f.histogram(
            "umpath_path_io_duration",
            "Time from handing a request to the path to its completion",
            paths().map(|(l, _, c)| (l, c.io_latency)),
        )?;
        f.histogram(
            "umpath_path_check_duration",
            "Time a path check took",
            paths().map(|(l, _, c)| (l, c.check_latency)),
        )?;
        Ok(())
    }
}

/// The exposition in both formats.
#[derive(Debug)]
pub struct Rendered {
    pub openmetrics: String,
    pub prometheus: String,
}

/// Renders the metrics of `published` (OpenMetrics text, then converted).
pub fn render(published: &Published, stats: &Stats) -> Result<Rendered, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Sample::take(published, stats)));
    let mut openmetrics = String::new();
    prometheus_client::encoding::text::encode(&mut openmetrics, &registry)?;
    let prometheus = to_prometheus_text(&openmetrics);
    Ok(Rendered {
        openmetrics,
        prometheus,
    })
}

/// OpenMetrics text to the classic Prometheus text format (0.0.4): the
/// HELP and TYPE lines of a counter name its `_total` samples, an `info`
/// family becomes a gauge named like its `_info` sample, `unknown` is
/// `untyped`, and the `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" | "gaugehistogram" => (name.to_string(), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Renders at most once at a time; the last exposition is reused for
/// [`CACHE_FOR`].
pub struct Renderer {
    published: Arc<ArcSwap<Published>>,
    stats: Arc<Stats>,
    cache: Mutex<Option<(Instant, Arc<Rendered>)>>,
}

impl Renderer {
    pub fn new(published: Arc<ArcSwap<Published>>, stats: Arc<Stats>) -> Renderer {
        Renderer {
            published,
            stats,
            cache: Mutex::new(None),
        }
    }

    /// The current exposition (rendered now, or at most [`CACHE_FOR`] old).
    pub async fn get(&self) -> Result<Arc<Rendered>, std::fmt::Error> {
        let mut cache = self.cache.lock().await;
        if let Some((at, r)) = &*cache {
            if at.elapsed() < CACHE_FOR {
                return Ok(r.clone());
            }
        }
        let r = Arc::new(render(&self.published.load(), &self.stats)?);
        *cache = Some((Instant::now(), r.clone()));
        Ok(r)
    }
}

/// Binds the metrics listener (`addr` as `tcp_listen_addr` returns it).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves HTTP GET /metrics until shutdown.
pub async fn serve(
    listener: TcpListener,
    renderer: Arc<Renderer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: do not spin.
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many connections; closing this one");
            // Never waits: a new socket's send buffer takes these bytes.
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            drop(stream);
            continue;
        };
        let renderer = renderer.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, peer, &renderer)).await;
            if r.is_err() {
                debug!(%peer, "metrics: request timed out");
            }
            drop(permit);
        });
    }
}

/// Reads one request head and answers it; the connection then closes.
async fn answer(mut stream: TcpStream, peer: SocketAddr, renderer: &Renderer) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    /// How reading the request head ended.
    enum HeadRead {
        Complete(usize),
        TooLarge,
        Closed,
    }
    let read_head = async {
        loop {
            if let Some(end) = find_head_end(&buf) {
                return HeadRead::Complete(end);
            }
            if buf.len() >= MAX_REQUEST {
                return HeadRead::TooLarge;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return HeadRead::Closed,
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    };
    let head_len = match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Ok(HeadRead::Complete(n)) => n,
        Ok(HeadRead::Closed) => return,
        Err(_) => {
            debug!(%peer, "metrics: no request within {HEAD_TIMEOUT:?}");
            return;
        }
        Ok(HeadRead::TooLarge) => {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
                false,
            )
            .await;
            return;
        }
    };
    let head = String::from_utf8_lossy(buf.get(..head_len).unwrap_or_default());
    let req = parse_head(&head);
    let get = matches!(req.method, "GET" | "HEAD");
    // Rendered (or the cached text) only for a metrics request; the body
    // is borrowed from it, not copied.
    let rendered = if get && req.path == "/metrics" {
        Some(renderer.get().await)
    } else {
        None
    };
    let (status, ctype, body): (&str, &str, &[u8]) = match (&rendered, get, req.path) {
        (Some(Ok(r)), _, _) if req.openmetrics => {
            ("200 OK", OPENMETRICS_TYPE, r.openmetrics.as_bytes())
        }
        (Some(Ok(r)), _, _) => ("200 OK", PROMETHEUS_TYPE, r.prometheus.as_bytes()),
        (Some(Err(_)), _, _) => (
            "500 Internal Server Error",
            "text/plain",
            b"cannot render the metrics\n",
        ),
        (None, true, "/") => (
            "200 OK",
            "text/html; charset=utf-8",
            b"<html><body><a href=\"/metrics\">umpath metrics</a></body></html>\n",
        ),
        (None, true, _) => ("404 Not Found", "text/plain", b"not found; try /metrics\n"),
        (None, false, _) => ("405 Method Not Allowed", "text/plain", b"only GET\n"),
    };
    debug!(%peer, method = req.method, path = req.path, status, "metrics request");
    respond(&mut stream, status, ctype, body, req.method == "HEAD").await;
}

async fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8], head_only: bool) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if !head_only {
        let _ = stream.write_all(body).await;
    }
    let _ = stream.shutdown().await;
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| {
        // Be lenient with bare LF clients.
        buf.windows(2).position(|w| w == b"\n\n")
    })
}

/// What a request head asks.
#[derive(Debug, PartialEq, Eq)]
struct Head<'a> {
    method: &'a str,
    /// Without the query string.
    path: &'a str,
    /// The client accepts OpenMetrics text.
    openmetrics: bool,
}

fn parse_head(head: &str) -> Head<'_> {
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("");
    let target = first.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let headers: HashMap<String, &str> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
        .collect();
    let openmetrics = headers
        .get("accept")
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    Head {
        method,
        path,
        openmetrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h = parse_head("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n");
        assert_eq!(
            h,
            Head {
                method: "GET",
                path: "/metrics",
                openmetrics: true
            }
        );
        assert!(!parse_head("GET /metrics HTTP/1.0\r\n").openmetrics);
        assert_eq!(find_head_end(b"GET / HTTP/1.0\r\n\r\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.0\r\n"), None);
    }

    #[test]
    fn prometheus_text_from_openmetrics() {
        let om = "# HELP umpath_build umpath's version.\n# TYPE umpath_build info\numpath_build_info{version=\"0.1.0\"} 1\n\
                  # HELP umpath_path_read_bytes Bytes read.\n# TYPE umpath_path_read_bytes counter\n# UNIT umpath_path_read_bytes bytes\n\
                  umpath_path_read_bytes_total{map=\"a\"} 5\n# EOF\n";
        let t = to_prometheus_text(om);
        assert_eq!(
            t,
            "# HELP umpath_build_info umpath's version.\n# TYPE umpath_build_info gauge\numpath_build_info{version=\"0.1.0\"} 1\n\
             # HELP umpath_path_read_bytes_total Bytes read.\n# TYPE umpath_path_read_bytes_total counter\n\
             umpath_path_read_bytes_total{map=\"a\"} 5\n"
        );
    }
}
