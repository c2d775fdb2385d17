//! `umpath top`: a live view of maps and paths (IOPS, throughput, latency,
//! in flight, state, last event), refreshed every second from the control
//! socket's `show stats --json`; rates are computed here from two answers.
//!
//! On a terminal it takes the alternate screen, reads keys without echo
//! (`q` quits; Ctrl-C too) and restores the terminal on every way out:
//! `q`, a signal (SIGINT, SIGTERM, SIGHUP) or a panic. When stdout is not
//! a terminal it prints one table (two samples one interval apart) and
//! exits.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use serde::Deserialize;

use crate::control::{self, Command, ShowWhat};
use crate::daemon::show::human_size;
use crate::engine::histogram::HistogramSnapshot;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub interval: f64,
}

/// One answer of `show stats --json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub uptime_ms: u64,
    pub maps: Vec<MapStats>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MapStats {
    pub name: String,
    pub queueing: String,
    pub held_requests: u64,
    pub usable_paths: u64,
    pub current_group: Option<u64>,
    pub paths: Vec<PathStats>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PathStats {
    pub name: String,
    pub state: String,
    pub dm_state: String,
    pub admin_failed: bool,
    pub ios: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub errors: Errors,
    pub in_flight: u64,
    pub io_latency: Hist,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Errors {
    pub path: u64,
    pub lun: u64,
    pub unsupported: u64,
}

impl Errors {
    fn total(&self) -> u64 {
        self.path + self.lun + self.unsupported
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Hist {
    pub sum_ns: u64,
    pub buckets: Vec<u64>,
}

impl Hist {
    fn snapshot(&self) -> HistogramSnapshot {
        let mut s = HistogramSnapshot {
            sum_ns: self.sum_ns,
            ..Default::default()
        };
        for (d, v) in s.buckets.iter_mut().zip(&self.buckets) {
            *d = *v;
        }
        s
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Event {
    pub t_ms: u64,
    pub path: Option<String>,
    pub text: String,
}

/// Asks the daemon for its counters.
pub fn fetch(socket: &Path) -> Result<Stats, String> {
    let cmd = Command::Show {
        what: ShowWhat::Stats,
        json: true,
    };
    let resp = control::client::request(socket, &cmd, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    if !resp.ok {
        return Err(resp.text.trim_end().to_string());
    }
    let data = resp
        .data
        .ok_or_else(|| "the daemon sent no stats (is it older than `umpath top`?)".to_string())?;
    serde_json::from_value(data).map_err(|e| format!("bad stats from the daemon: {e}"))
}

/// Rates between two samples of one path (or the sum over a map's paths).
#[derive(Debug, Default, Clone, Copy)]
struct Rates {
    iops: f64,
    read_bps: f64,
    write_bps: f64,
    errors_ps: f64,
    lat: HistogramSnapshot,
    in_flight: u64,
}

impl Rates {
    fn between(prev: Option<&PathStats>, cur: &PathStats, secs: f64) -> Rates {
        let d = |c: u64, p: u64| c.saturating_sub(p) as f64 / secs;
        let zero = PathStats::default();
        let p = prev.unwrap_or(&zero);
        Rates {
            iops: d(cur.ios, p.ios),
            read_bps: d(cur.read_bytes, p.read_bytes),
            write_bps: d(cur.written_bytes, p.written_bytes),
            errors_ps: d(cur.errors.total(), p.errors.total()),
            lat: cur.io_latency.snapshot().since(&p.io_latency.snapshot()),
            in_flight: cur.in_flight,
        }
    }

    fn add(&mut self, o: &Rates) {
        self.iops += o.iops;
        self.read_bps += o.read_bps;
        self.write_bps += o.write_bps;
        self.errors_ps += o.errors_ps;
        for (a, b) in self.lat.buckets.iter_mut().zip(&o.lat.buckets) {
            *a += b;
        }
        self.lat.sum_ns += o.lat.sum_ns;
        self.in_flight += o.in_flight;
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn fmt_bps(v: f64) -> String {
    if v < 1.0 {
        "0".to_string()
    } else {
        human_size(v as u64)
    }
}

fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        ">10s".to_string()
    } else if s < 0.001 {
        format!("{:.0}us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else {
        format!("{s:.1}s")
    }
}

fn fmt_ago(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s ago")
    } else if s < 3600 {
        format!("{}m ago", s / 60)
    } else {
        format!("{}h ago", s / 3600)
    }
}

fn fmt_uptime(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

/// The table for two samples (`prev` may be the same as `cur`: rates 0).
pub fn render(prev: &Stats, cur: &Stats, width: usize) -> String {
    let secs = (cur.uptime_ms.saturating_sub(prev.uptime_ms) as f64 / 1000.0).max(0.001);
    let npaths: usize = cur.maps.iter().map(|m| m.paths.len()).sum();
    let mut out = format!(
        "umpath top - {} map(s), {npaths} path(s), daemon up {}, rates over {secs:.1} s\n",
        cur.maps.len(),
        fmt_uptime(cur.uptime_ms)
    );
    let mut rows: Vec<[String; 10]> = vec![[
        "MAP/PATH",
        "STATE",
        "IOPS",
        "READ/s",
        "WRITE/s",
        "LAT avg",
        "LAT p99",
        "INFL",
        "ERR/s",
        "LAST EVENT",
    ]
    .map(String::from)];
    let prev_paths: HashMap<(&str, &str), &PathStats> = prev
        .maps
        .iter()
        .flat_map(|m| {
            m.paths
                .iter()
                .map(move |p| ((m.name.as_str(), p.name.as_str()), p))
        })
        .collect();
    let cells = |name: String, state: String, r: &Rates, event: String| -> [String; 10] {
        let n = r.lat.count();
        let (avg, p99) = if n == 0 {
            ("-".to_string(), "-".to_string())
        } else {
            (
                fmt_secs(r.lat.sum_ns as f64 / n as f64 / 1e9),
                r.lat
                    .quantile_bound(0.99)
                    .map_or("-".into(), |b| format!("<{}", fmt_secs(b))),
            )
        };
        [
            name,
            state,
            fmt_rate(r.iops),
            fmt_bps(r.read_bps),
            fmt_bps(r.write_bps),
            avg,
            p99,
            r.in_flight.to_string(),
            fmt_rate(r.errors_ps),
            event,
        ]
    };
    let event_text = |e: Option<&Event>| {
        e.map_or(String::new(), |e| {
            format!(
                "{} ({})",
                e.text,
                fmt_ago(cur.uptime_ms.saturating_sub(e.t_ms))
            )
        })
    };
    for m in &cur.maps {
        let path_rates: Vec<Rates> = m
            .paths
            .iter()
            .map(|p| {
                Rates::between(
                    prev_paths.get(&(m.name.as_str(), p.name.as_str())).copied(),
                    p,
                    secs,
                )
            })
            .collect();
        let mut total = Rates::default();
        for r in &path_rates {
            total.add(r);
        }
        let mut state = format!("{}/{} active", m.usable_paths, m.paths.len());
        if let Some(g) = m.current_group {
            state.push_str(&format!(", pg {g}"));
        }
        if m.queueing.starts_with("Queueing") {
            state.push_str(&format!(", QUEUEING {}", m.held_requests));
        } else if m.queueing.starts_with("Failing") {
            state.push_str(", FAILING IO");
        }
        rows.push(cells(
            m.name.clone(),
            state,
            &total,
            event_text(m.events.last()),
        ));
        for (p, r) in m.paths.iter().zip(&path_rates) {
            let dm = if p.admin_failed {
                "offline"
            } else {
                p.dm_state.as_str()
            };
            let last = m
                .events
                .iter()
                .rev()
                .find(|e| e.path.as_deref() == Some(p.name.as_str()));
            rows.push(cells(
                format!("  {}", p.name),
                format!("{dm} {}", p.state),
                r,
                event_text(last),
            ));
        }
    }
    let ncols = 10;
    let widths: Vec<usize> = (0..ncols - 1)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            match widths.get(c) {
                // Numbers right-aligned, names and states left.
                Some(w) if (2..8).contains(&c) || c == 8 => line.push_str(&format!("{cell:>w$}  ")),
                Some(w) => line.push_str(&format!("{cell:<w$}  ")),
                None => line.push_str(cell),
            }
        }
        let line = line.trim_end();
        let line: String = line.chars().take(width.max(20)).collect();
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `umpath top`.
pub fn run(socket: &Path, args: &TopArgs) -> ExitCode {
    let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
    if !std::io::stdout().is_terminal() {
        return once(socket, interval);
    }
    live(socket, interval)
}

/// Not a terminal: one table from two samples `interval` apart.
fn once(socket: &Path, interval: Duration) -> ExitCode {
    let first = match fetch(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("umpath top: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::sleep(interval);
    let second = match fetch(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("umpath top: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`umpath top | head -1`) ends quietly.
    let _ = out.write_all(render(&first, &second, usize::MAX).as_bytes());
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// The terminal as it was before `top` changed it, for every way out.
static SAVED: OnceLock<libc::termios> = OnceLock::new();
/// A signal asked `top` to end.
static STOP: AtomicBool = AtomicBool::new(false);

const ENTER: &str = "\x1b[?1049h\x1b[?25l";
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

/// Puts the terminal back (idempotent).
fn restore() {
    if let Some(t) = SAVED.get() {
        let t = Termios::from(*t);
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &t);
        let mut out = std::io::stdout();
        let _ = out.write_all(LEAVE.as_bytes());
        let _ = out.flush();
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    // No SA_RESTART: poll() returns EINTR so the loop sees STOP at once.
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; no other handler for these signals is in use
        // in this process (the CLI runs no daemon here).
        if let Err(e) = unsafe { sigaction(sig, &act) } {
            eprintln!("umpath top: cannot handle {sig}: {e}");
        }
    }
}

/// Terminal size in columns (80 if unknown).
fn columns() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` to the pointer, which points
    // to a live, properly aligned local.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

fn live(socket: &Path, interval: Duration) -> ExitCode {
    let stdin = std::io::stdin();
    let saved = match termios::tcgetattr(stdin.as_fd()) {
        Ok(t) => t,
        // stdin is not a terminal (`umpath top < /dev/null`): no keys, but
        // the view still works until a signal.
        Err(_) => return live_loop(socket, interval, false),
    };
    let mut raw = saved.clone();
    raw.local_flags
        .remove(LocalFlags::ICANON | LocalFlags::ECHO);
    raw.control_chars[libc::VMIN] = 0;
    raw.control_chars[libc::VTIME] = 0;
    let _ = SAVED.set(libc::termios::from(saved));
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous_hook(info);
    }));
    install_signal_handlers();
    if let Err(e) = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw) {
        eprintln!("umpath top: cannot set up the terminal: {e}");
        return ExitCode::FAILURE;
    }
    let code = live_loop(socket, interval, true);
    restore();
    code
}

fn live_loop(socket: &Path, interval: Duration, keys: bool) -> ExitCode {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    if !keys {
        install_signal_handlers();
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(ENTER.as_bytes());
    let mut prev: Option<Stats> = None;
    let mut next = Instant::now();
    let mut code = ExitCode::SUCCESS;
    loop {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let now = Instant::now();
        if now >= next {
            next = now + interval;
            let screen = match fetch(socket) {
                Ok(cur) => {
                    let text = render(prev.as_ref().unwrap_or(&cur), &cur, columns());
                    prev = Some(cur);
                    format!("{text}\n(q quits)")
                }
                Err(e) => format!(
                    "umpath top: {e}\n(retrying every {:.1} s; q quits)",
                    interval.as_secs_f64()
                ),
            };
            let frame = format!("\x1b[H\x1b[2J{}", screen.replace('\n', "\r\n"));
            if out
                .write_all(frame.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                code = ExitCode::FAILURE;
                break;
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        if !keys {
            std::thread::sleep(Duration::from_millis(u64::from(ms.min(100))));
            continue;
        }
        let stdin = std::io::stdin();
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms.min(250))) {
            Ok(n) if n > 0 => {
                let mut buf = [0u8; 64];
                match nix::unistd::read(libc::STDIN_FILENO, &mut buf) {
                    Ok(0) => break, // the terminal went away
                    Ok(n) => {
                        if buf
                            .get(..n)
                            .unwrap_or_default()
                            .iter()
                            .any(|b| matches!(b, b'q' | b'Q'))
                        {
                            break;
                        }
                    }
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                    Err(_) => break,
                }
            }
            _ => {}
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::histogram::BUCKETS;

    fn sample(uptime_ms: u64, ios: u64, p1_dm: &str) -> Stats {
        let path = |name: &str, ios: u64, dm: &str| PathStats {
            name: name.into(),
            state: "ready".into(),
            dm_state: dm.into(),
            ios,
            read_bytes: ios * 4096,
            io_latency: Hist {
                sum_ns: ios * 100_000,
                buckets: {
                    let mut b = vec![0; BUCKETS.len() + 1];
                    b[1] = ios;
                    b
                },
            },
            ..Default::default()
        };
        Stats {
            uptime_ms,
            maps: vec![MapStats {
                name: "lun0".into(),
                queueing: "Serving".into(),
                usable_paths: 2,
                current_group: Some(1),
                paths: vec![path("p0", ios, "active"), path("p1", ios / 2, p1_dm)],
                events: vec![Event {
                    t_ms: uptime_ms - 3000,
                    path: Some("p1".into()),
                    text: "path p1 failed: failed by admin".into(),
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn table_with_rates() {
        let t = render(
            &sample(10_000, 1000, "active"),
            &sample(12_000, 3000, "failed"),
            200,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("umpath top - 1 map(s), 2 path(s)"),
            "{t}"
        );
        assert!(lines[1].starts_with("MAP/PATH"), "{t}");
        let map = lines[2];
        assert!(
            map.starts_with("lun0") && map.contains("2/2 active, pg 1"),
            "{t}"
        );
        // (2000 + 1000) IOs over 2 s.
        assert!(map.contains(" 1.5k "), "{t}");
        let p0 = lines[3];
        assert!(
            p0.starts_with("  p0") && p0.contains(" 1.0k ") && p0.contains("100us"),
            "{t}"
        );
        assert!(
            lines[4].contains("failed ready")
                && lines[4].contains("path p1 failed: failed by admin (3s ago)"),
            "{t}"
        );
        assert!(
            !p0.contains("p1 failed"),
            "p0's last event is not p1's: {t}"
        );
    }

    #[test]
    fn narrow_terminals_cut_lines() {
        let t = render(
            &sample(10_000, 1, "active"),
            &sample(11_000, 2, "active"),
            30,
        );
        assert!(t.lines().skip(1).all(|l| l.chars().count() <= 30), "{t}");
    }
}
