//! What a simulation measured, and how it is written: JSON, CSV and an SVG
//! chart. Pure: the runner hands in samples and IO records.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::scenario::Step;

/// One client IO as the workload saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRecord {
    /// Completion time, ms from the start.
    pub t_ms: u64,
    pub latency_us: u64,
    pub read: bool,
    pub ok: bool,
    /// A read returned something other than what was last written.
    pub mismatch: bool,
}

/// One path in a sample: name, IOs served so far, dm state, checker state.
pub type PathSample = (String, u64, String, String);

/// The engine's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub t_ms: u64,
    /// Per path: (name, ios served so far, dm state, checker state).
    pub paths: Vec<PathSample>,
    pub usable: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Second {
    pub t: u64,
    pub iops: u64,
    pub per_path: BTreeMap<String, u64>,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub t_ms: u64,
    pub path: String,
    pub what: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Transition {
    pub path: String,
    pub event: String,
    pub at_ms: u64,
    /// ms until the engine saw it (path failed, or path active again).
    pub detected_after_ms: Option<u64>,
    /// ms until the path carried IO again (failback only).
    pub carrying_io_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub duration_s: u32,
    pub ios: usize,
    pub reads: usize,
    pub writes: usize,
    pub errors: usize,
    pub errors_while_a_path_was_usable: usize,
    pub data_mismatches: usize,
    pub latency: Latency,
    pub read_latency: Latency,
    pub write_latency: Latency,
    pub per_second: Vec<Second>,
    pub path_changes: Vec<Change>,
    pub failovers: Vec<Transition>,
    pub failbacks: Vec<Transition>,
    pub events: Vec<StepOut>,
    /// Why the run failed; empty when it passed.
    pub problems: Vec<String>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepOut {
    pub at_ms: u64,
    pub path: String,
    pub fault: String,
    pub event: String,
}

fn latency<'a>(it: impl Iterator<Item = &'a IoRecord>) -> Latency {
    let mut v: Vec<u64> = it.filter(|r| r.ok).map(|r| r.latency_us).collect();
    v.sort_unstable();
    let pct = |p: f64| -> u64 {
        if v.is_empty() {
            return 0;
        }
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[i.min(v.len() - 1)]
    };
    Latency {
        count: v.len(),
        p50_us: pct(50.0),
        p90_us: pct(90.0),
        p99_us: pct(99.0),
        p999_us: pct(99.9),
        max_us: v.last().copied().unwrap_or(0),
    }
}

/// Usable paths at `t` (the latest sample at or before it).
fn usable_at(samples: &[Sample], t: u64) -> usize {
    let i = samples.partition_point(|s| s.t_ms <= t);
    samples.get(i.saturating_sub(1)).map_or(0, |s| s.usable)
}

fn path_state<'a>(s: &'a Sample, path: &str) -> Option<&'a PathSample> {
    s.paths.iter().find(|p| p.0 == path)
}

/// Builds the report.
pub fn build(
    scenario: &str,
    duration_s: u32,
    paths: &[String],
    ios: &[IoRecord],
    samples: &[Sample],
    steps: &[Step],
) -> Report {
    let secs = u64::from(duration_s);
    let mut per_second: Vec<Second> = (0..secs)
        .map(|t| Second {
            t,
            iops: 0,
            per_path: paths.iter().map(|p| (p.clone(), 0)).collect(),
            errors: 0,
        })
        .collect();
    for r in ios {
        if let Some(s) = per_second.get_mut((r.t_ms / 1000) as usize) {
            if r.ok {
                s.iops += 1;
            } else {
                s.errors += 1;
            }
        }
    }
    // Per-path IOs per second from the engine's counters.
    for t in 0..secs {
        let at = |ms: u64| samples.iter().rev().find(|s| s.t_ms <= ms);
        if let (Some(a), Some(b)) = (at(t * 1000), at((t + 1) * 1000)) {
            for p in paths {
                let n = match (path_state(a, p), path_state(b, p)) {
                    (Some(x), Some(y)) => y.1.saturating_sub(x.1),
                    _ => 0,
                };
                if let Some(s) = per_second.get_mut(t as usize) {
                    s.per_path.insert(p.clone(), n);
                }
            }
        }
    }
    let mut path_changes = Vec::new();
    for w in samples.windows(2) {
        for (name, _, dm, chk) in &w[1].paths {
            if let Some((_, _, dm0, chk0)) = path_state(&w[0], name) {
                if dm0 != dm {
                    path_changes.push(Change {
                        t_ms: w[1].t_ms,
                        path: name.clone(),
                        what: "dm_state".into(),
                        from: dm0.clone(),
                        to: dm.clone(),
                    });
                }
                if chk0 != chk {
                    path_changes.push(Change {
                        t_ms: w[1].t_ms,
                        path: name.clone(),
                        what: "state".into(),
                        from: chk0.clone(),
                        to: chk.clone(),
                    });
                }
            }
        }
    }
    let first_after = |t: u64, path: &str, pred: &dyn Fn(&PathSample) -> bool| -> Option<u64> {
        samples
            .iter()
            .filter(|s| s.t_ms >= t)
            .find(|s| path_state(s, path).is_some_and(pred))
            .map(|s| s.t_ms - t)
    };
    let mut failovers = Vec::new();
    let mut failbacks = Vec::new();
    for s in steps {
        if s.fault == "error" || s.fault.starts_with("hang") {
            failovers.push(Transition {
                path: s.path.clone(),
                event: s.label.clone(),
                at_ms: s.at_ms,
                detected_after_ms: first_after(s.at_ms, &s.path, &|p| p.2 == "failed"),
                carrying_io_after_ms: None,
            });
        } else if s.fault == "clear" {
            let ios0 = samples
                .iter()
                .rev()
                .find(|x| x.t_ms <= s.at_ms)
                .and_then(|x| path_state(x, &s.path))
                .map_or(0, |p| p.1);
            failbacks.push(Transition {
                path: s.path.clone(),
                event: s.label.clone(),
                at_ms: s.at_ms,
                detected_after_ms: first_after(s.at_ms, &s.path, &|p| p.2 == "active"),
                carrying_io_after_ms: first_after(s.at_ms, &s.path, &|p| {
                    p.2 == "active" && p.1 > ios0
                }),
            });
        }
    }
    let errors = ios.iter().filter(|r| !r.ok).count();
    let bad_errors = ios
        .iter()
        .filter(|r| !r.ok && usable_at(samples, r.t_ms) > 0)
        .count();
    let mismatches = ios.iter().filter(|r| r.mismatch).count();
    let mut problems = Vec::new();
    if mismatches > 0 {
        problems.push(format!(
            "{mismatches} read(s) returned data other than what was written"
        ));
    }
    if bad_errors > 0 {
        problems.push(format!(
            "{bad_errors} error(s) reached the client while a path was usable"
        ));
    }
    if ios.is_empty() {
        problems.push("no IO completed".to_string());
    }
    Report {
        scenario: scenario.to_string(),
        duration_s,
        ios: ios.len(),
        reads: ios.iter().filter(|r| r.read).count(),
        writes: ios.iter().filter(|r| !r.read).count(),
        errors,
        errors_while_a_path_was_usable: bad_errors,
        data_mismatches: mismatches,
        latency: latency(ios.iter()),
        read_latency: latency(ios.iter().filter(|r| r.read)),
        write_latency: latency(ios.iter().filter(|r| !r.read)),
        per_second,
        path_changes,
        failovers,
        failbacks,
        events: steps
            .iter()
            .map(|s| StepOut {
                at_ms: s.at_ms,
                path: s.path.clone(),
                fault: s.fault.clone(),
                event: s.label.clone(),
            })
            .collect(),
        passed: problems.is_empty(),
        problems,
    }
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// One row per second: `t,iops,errors,<path>...`.
    pub fn to_csv(&self) -> String {
        let paths: Vec<&String> = self
            .per_second
            .first()
            .map(|s| s.per_path.keys().collect())
            .unwrap_or_default();
        let mut out = String::from("t,iops,errors");
        for p in &paths {
            let _ = write!(out, ",{p}");
        }
        out.push('\n');
        for s in &self.per_second {
            let _ = write!(out, "{},{},{}", s.t, s.iops, s.errors);
            for p in &paths {
                let _ = write!(out, ",{}", s.per_path.get(*p).copied().unwrap_or(0));
            }
            out.push('\n');
        }
        out
    }

    /// A line chart: IOPS per path and in total per second, events as
    /// dashed lines, client errors as red marks, the verdict in the title.
    pub fn to_svg(&self) -> String {
        const W: f64 = 900.0;
        const H: f64 = 420.0;
        const L: f64 = 60.0;
        const R: f64 = 20.0;
        const T: f64 = 50.0;
        const B: f64 = 60.0;
        let colours = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
        ];
        let n = self.per_second.len().max(1) as f64;
        let max = self
            .per_second
            .iter()
            .map(|s| s.iops)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let x = |t: f64| L + (W - L - R) * t / n;
        let y = |v: f64| H - B - (H - T - B) * v / (max * 1.1);
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut o = String::new();
        let _ = writeln!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let verdict = if self.passed {
            ("PASS", "#2ca02c")
        } else {
            ("FAIL", "#d62728")
        };
        let _ = writeln!(
            o,
            r#"<text x="{L}" y="22" font-size="15" font-weight="bold">{} — <tspan fill="{}">{}</tspan></text>"#,
            esc(&self.scenario),
            verdict.1,
            verdict.0
        );
        let _ = writeln!(
            o,
            r##"<text x="{L}" y="40" fill="#555">{} IOs, {} errors ({} while a path was usable), {} data mismatches; p99 {} µs</text>"##,
            self.ios,
            self.errors,
            self.errors_while_a_path_was_usable,
            self.data_mismatches,
            self.latency.p99_us
        );
        // Axes and grid.
        let _ = writeln!(
            o,
            r##"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##,
            H - B,
            W - R,
            H - B
        );
        let _ = writeln!(
            o,
            r##"<line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="#333"/>"##,
            H - B
        );
        for i in 0..=4 {
            let v = max * 1.1 * f64::from(i) / 4.0;
            let _ = writeln!(
                o,
                r##"<line x1="{L}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{4:.0}</text>"##,
                y(v),
                W - R,
                L - 6.0,
                y(v) + 4.0,
                v
            );
        }
        let step = (n / 10.0).ceil().max(1.0) as usize;
        for t in (0..=self.per_second.len()).step_by(step) {
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{t}s</text>"#,
                x(t as f64),
                H - B + 16.0
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">time</text>"#,
            (L + W - R) / 2.0,
            H - 20.0
        );
        let _ = writeln!(
            o,
            r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">IOPS</text>"#,
            (T + H - B) / 2.0,
            (T + H - B) / 2.0
        );
        // Events.
        for e in &self.events {
            let ex = x(e.at_ms as f64 / 1000.0);
            let _ = writeln!(
                o,
                r##"<line x1="{ex:.1}" y1="{T}" x2="{ex:.1}" y2="{}" stroke="#999" stroke-dasharray="4,3"><title>{} {} {}</title></line>"##,
                H - B,
                e.at_ms,
                esc(&e.path),
                esc(&e.fault)
            );
            let label = if e.fault == "clear" {
                format!("{} ok", e.path)
            } else {
                format!(
                    "{} {}",
                    e.path,
                    e.fault.split_whitespace().next().unwrap_or("")
                )
            };
            let _ = writeln!(
                o,
                r##"<text x="{:.1}" y="{}" font-size="10" fill="#666" transform="rotate(-90 {:.1} {})" text-anchor="end">{}</text>"##,
                ex - 3.0,
                T + 4.0,
                ex - 3.0,
                T + 4.0,
                esc(&label)
            );
        }
        // Lines: total, then each path.
        let mut series: Vec<(String, Vec<u64>, &str)> = vec![(
            "total".into(),
            self.per_second.iter().map(|s| s.iops).collect(),
            "#000",
        )];
        let paths: Vec<String> = self
            .per_second
            .first()
            .map(|s| s.per_path.keys().cloned().collect())
            .unwrap_or_default();
        for (i, p) in paths.iter().enumerate() {
            series.push((
                p.clone(),
                self.per_second
                    .iter()
                    .map(|s| s.per_path.get(p).copied().unwrap_or(0))
                    .collect(),
                colours[i % colours.len()],
            ));
        }
        for (i, (name, vals, colour)) in series.iter().enumerate() {
            let pts: Vec<String> = vals
                .iter()
                .enumerate()
                .map(|(t, v)| format!("{:.1},{:.1}", x(t as f64 + 0.5), y(*v as f64)))
                .collect();
            let width = if i == 0 { 2.5 } else { 1.8 };
            let _ = writeln!(
                o,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="{width}" points="{}"/>"#,
                pts.join(" ")
            );
            let lx = W - R - 110.0;
            let ly = T + 14.0 * i as f64;
            let _ = writeln!(
                o,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                lx + 18.0,
                lx + 24.0,
                ly + 4.0,
                esc(name)
            );
        }
        // Errors.
        for s in self.per_second.iter().filter(|s| s.errors > 0) {
            let _ = writeln!(
                o,
                r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="#d62728"><title>{} errors at {}s</title></circle>"##,
                x(s.t as f64 + 0.5),
                H - B - 6.0,
                s.errors,
                s.t
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: u64, p0: (u64, &str), p1: (u64, &str)) -> Sample {
        let usable = [p0.1, p1.1].iter().filter(|s| **s == "active").count();
        Sample {
            t_ms,
            paths: vec![
                ("p0".into(), p0.0, p0.1.into(), "ready".into()),
                ("p1".into(), p1.0, p1.1.into(), "ready".into()),
            ],
            usable,
        }
    }

    fn io(t_ms: u64, ok: bool) -> IoRecord {
        IoRecord {
            t_ms,
            latency_us: 100 + t_ms,
            read: t_ms % 2 == 0,
            ok,
            mismatch: false,
        }
    }

    #[test]
    fn measures_failover_failback_and_judges_errors() {
        let paths = vec!["p0".to_string(), "p1".to_string()];
        let samples = vec![
            sample(0, (0, "active"), (0, "active")),
            sample(1000, (100, "active"), (100, "active")),
            sample(1200, (100, "failed"), (150, "active")),
            sample(2000, (100, "failed"), (300, "active")),
            sample(2500, (100, "active"), (350, "active")),
            sample(3000, (180, "active"), (400, "active")),
        ];
        let steps = vec![
            Step {
                at_ms: 1100,
                path: "p0".into(),
                fault: "error".into(),
                label: "fail".into(),
            },
            Step {
                at_ms: 2100,
                path: "p0".into(),
                fault: "clear".into(),
                label: "recover".into(),
            },
        ];
        let ios = vec![
            io(500, true),
            io(1500, true),
            io(1600, false),
            io(2600, true),
        ];
        let r = build("t", 3, &paths, &ios, &samples, &steps);
        assert_eq!(r.failovers[0].detected_after_ms, Some(100));
        assert_eq!(r.failbacks[0].detected_after_ms, Some(400));
        assert_eq!(r.failbacks[0].carrying_io_after_ms, Some(900));
        assert_eq!(r.errors, 1);
        assert_eq!(r.errors_while_a_path_was_usable, 1);
        assert!(!r.passed);
        assert_eq!(r.per_second[1].per_path["p1"], 200);
        assert_eq!(r.path_changes.len(), 2);
        assert!(r
            .to_csv()
            .starts_with("t,iops,errors,p0,p1\n0,1,0,100,100\n"));
        let svg = r.to_svg();
        assert!(
            svg.starts_with("<svg") && svg.contains("FAIL") && svg.trim_end().ends_with("</svg>")
        );
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["passed"], false);
    }

    #[test]
    fn percentiles() {
        let ios: Vec<IoRecord> = (1..=1000)
            .map(|i| IoRecord {
                t_ms: 0,
                latency_us: i,
                read: true,
                ok: true,
                mismatch: false,
            })
            .collect();
        let l = latency(ios.iter());
        assert_eq!(
            (l.p50_us, l.p99_us, l.max_us, l.count),
            (501, 990, 1000, 1000)
        );
        assert_eq!(latency([].iter()).count, 0);
    }
}
