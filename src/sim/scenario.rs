//! Failover scenarios: what `umpath simulate` reads. Pure.
//!
//! A scenario is a TOML file:
//!
//! ```toml
//! name = "one path flaps under a 70/30 mix"
//! duration = 20            # seconds of workload
//! paths = 2                # file paths p0, p1, ... to one scratch image
//! size = "256M"            # image size
//! no_path_retry = "queue"  # fail | queue | N   (default queue)
//! polling_interval = 1     # seconds (default 1)
//! io_timeout = 5           # seconds (default 5)
//!
//! [workload]
//! read_pct = 70            # share of reads, 0..=100
//! bs = "4k"                # block size
//! iodepth = 8              # concurrent client requests
//!
//! [[event]]
//! at = 3                   # seconds from the start
//! action = "fail"          # fail | recover | flap | slow | hang | all_down
//! path = "p0"
//!
//! [[event]]
//! at = 6
//! action = "flap"          # fail/recover every `period` s until `until`
//! path = "p1"
//! period = 1
//! until = 12
//! ```
//!
//! `slow` takes `delay_ms`; `all_down` takes `for` (seconds) and fails every
//! path; `recover` clears whatever fault the path has.

use serde::Deserialize;

/// A parsed and validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub duration_s: u32,
    pub paths: Vec<String>,
    pub size: u64,
    pub no_path_retry: String,
    pub polling_interval: u32,
    pub io_timeout: u32,
    pub read_pct: u8,
    pub bs: u32,
    pub iodepth: u32,
    pub events: Vec<Event>,
}

/// One thing that happens to a path.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at_ms: u64,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Fail {
        path: String,
    },
    Recover {
        path: String,
    },
    Flap {
        path: String,
        period_ms: u64,
        until_ms: u64,
    },
    Slow {
        path: String,
        delay_ms: u64,
    },
    Hang {
        path: String,
    },
    AllDown {
        for_ms: u64,
    },
}

/// A fault command for one path at one time: what the runner applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at_ms: u64,
    pub path: String,
    /// A `fault path` spec: `error`, `clear`, `delay 20 read write`, `hang read write`.
    pub fault: String,
    /// The event this step belongs to (for the report).
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    duration: u32,
    paths: Option<u32>,
    size: Option<String>,
    no_path_retry: Option<toml::Value>,
    polling_interval: Option<u32>,
    io_timeout: Option<u32>,
    workload: Option<RawWorkload>,
    #[serde(default)]
    event: Vec<RawEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    read_pct: Option<u8>,
    bs: Option<String>,
    iodepth: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: f64,
    action: String,
    path: Option<String>,
    period: Option<f64>,
    until: Option<f64>,
    delay_ms: Option<u64>,
    #[serde(rename = "for")]
    for_s: Option<f64>,
}

/// Parses "4k", "1M", "256M", "1G", "512" into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn ms(s: f64) -> Option<u64> {
    (0.0..1e9).contains(&s).then(|| (s * 1000.0).round() as u64)
}

impl Scenario {
    /// Parses and validates a scenario; errors name the file and the field.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let err = |message: String| ScenarioError {
            file: file.to_string(),
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| err(e.to_string().trim().to_string()))?;
        if raw.duration == 0 || raw.duration > 24 * 3600 {
            return Err(err("duration must be 1..=86400 seconds".into()));
        }
        let npaths = raw.paths.unwrap_or(2);
        if !(1..=16).contains(&npaths) {
            return Err(err("paths must be 1..=16".into()));
        }
        let paths: Vec<String> = (0..npaths).map(|i| format!("p{i}")).collect();
        let size = match &raw.size {
            None => 256 << 20,
            Some(s) => {
                parse_size(s).ok_or_else(|| err(format!("size {s:?} is not a size like 256M")))?
            }
        };
        let w = raw.workload.unwrap_or(RawWorkload {
            read_pct: None,
            bs: None,
            iodepth: None,
        });
        let read_pct = w.read_pct.unwrap_or(50);
        if read_pct > 100 {
            return Err(err("workload.read_pct must be 0..=100".into()));
        }
        let bs = match &w.bs {
            None => 4096,
            Some(s) => parse_size(s)
                .filter(|b| (512..=(1 << 20)).contains(b) && b % 512 == 0)
                .ok_or_else(|| {
                    err(format!(
                        "workload.bs {s:?} must be a multiple of 512 from 512 to 1M"
                    ))
                })? as u32,
        };
        let iodepth = w.iodepth.unwrap_or(8);
        if !(1..=64).contains(&iodepth) {
            return Err(err("workload.iodepth must be 1..=64".into()));
        }
        if size < u64::from(bs) * u64::from(iodepth) * 4 {
            return Err(err("size is too small for bs × iodepth".into()));
        }
        let no_path_retry = match raw.no_path_retry {
            None => "queue".to_string(),
            Some(toml::Value::String(s)) if s == "queue" || s == "fail" => s,
            Some(toml::Value::Integer(n)) if n > 0 => n.to_string(),
            Some(v) => {
                return Err(err(format!(
                    "no_path_retry {v:?} must be \"fail\", \"queue\" or a number"
                )))
            }
        };
        let mut events = Vec::new();
        for (i, e) in raw.event.into_iter().enumerate() {
            let n = i + 1;
            let at_ms = ms(e.at).ok_or_else(|| err(format!("event {n}: bad 'at'")))?;
            if at_ms >= u64::from(raw.duration) * 1000 {
                return Err(err(format!("event {n}: at {} is past the duration", e.at)));
            }
            let path = |what: &str| -> Result<String, ScenarioError> {
                let p = e
                    .path
                    .clone()
                    .ok_or_else(|| err(format!("event {n}: {what} needs 'path'")))?;
                if !paths.contains(&p) {
                    return Err(err(format!(
                        "event {n}: no path {p:?} (paths are {})",
                        paths.join(", ")
                    )));
                }
                Ok(p)
            };
            let action = match e.action.as_str() {
                "fail" => Action::Fail { path: path("fail")? },
                "recover" => Action::Recover { path: path("recover")? },
                "hang" => Action::Hang { path: path("hang")? },
                "slow" => Action::Slow {
                    path: path("slow")?,
                    delay_ms: e.delay_ms.filter(|d| *d > 0 && *d <= 60_000).ok_or_else(|| err(format!("event {n}: slow needs delay_ms 1..=60000")))?,
                },
                "flap" => {
                    let period_ms = e.period.and_then(ms).filter(|p| *p >= 100).ok_or_else(|| err(format!("event {n}: flap needs period >= 0.1")))?;
                    let until_ms = e.until.and_then(ms).filter(|u| *u > at_ms).ok_or_else(|| err(format!("event {n}: flap needs 'until' after 'at'")))?;
                    Action::Flap {
                        path: path("flap")?,
                        period_ms,
                        until_ms,
                    }
                }
                "all_down" => Action::AllDown {
                    for_ms: e.for_s.and_then(ms).filter(|f| *f > 0).ok_or_else(|| err(format!("event {n}: all_down needs 'for' (seconds)")))?,
                },
                other => {
                    return Err(err(format!(
                        "event {n}: unknown action {other:?} (fail, recover, flap, slow, hang, all_down)"
                    )))
                }
            };
            events.push(Event { at_ms, action });
        }
        events.sort_by_key(|e| e.at_ms);
        Ok(Scenario {
            name: raw.name.unwrap_or_else(|| file.to_string()),
            duration_s: raw.duration,
            paths,
            size,
            no_path_retry,
            polling_interval: raw.polling_interval.unwrap_or(1).max(1),
            io_timeout: raw.io_timeout.unwrap_or(5),
            read_pct,
            bs,
            iodepth,
            events,
        })
    }

    /// The timeline as fault commands, in time order.
    pub fn steps(&self) -> Vec<Step> {
        let mut out = Vec::new();
        let step = |at_ms, path: &str, fault: &str, label: &str| Step {
            at_ms,
            path: path.to_string(),
            fault: fault.to_string(),
            label: label.to_string(),
        };
        for e in &self.events {
            match &e.action {
                Action::Fail { path } => out.push(step(e.at_ms, path, "error", "fail")),
                Action::Recover { path } => out.push(step(e.at_ms, path, "clear", "recover")),
                Action::Hang { path } => out.push(step(e.at_ms, path, "hang read write", "hang")),
                Action::Slow { path, delay_ms } => out.push(step(
                    e.at_ms,
                    path,
                    &format!("delay {delay_ms} read write"),
                    "slow",
                )),
                Action::Flap {
                    path,
                    period_ms,
                    until_ms,
                } => {
                    let mut t = e.at_ms;
                    let mut down = true;
                    while t < *until_ms {
                        out.push(step(t, path, if down { "error" } else { "clear" }, "flap"));
                        down = !down;
                        t += period_ms;
                    }
                    out.push(step(*until_ms, path, "clear", "flap"));
                }
                Action::AllDown { for_ms } => {
                    for p in &self.paths {
                        out.push(step(e.at_ms, p, "error", "all_down"));
                        out.push(step(e.at_ms + for_ms, p, "clear", "all_down"));
                    }
                }
            }
        }
        out.sort_by_key(|s| s.at_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "flap"
duration = 20
paths = 2
size = "64M"
[workload]
read_pct = 70
bs = "4k"
iodepth = 4
[[event]]
at = 3
action = "fail"
path = "p0"
[[event]]
at = 5
action = "recover"
path = "p0"
[[event]]
at = 6
action = "flap"
path = "p1"
period = 1
until = 9
[[event]]
at = 12
action = "all_down"
for = 2
[[event]]
at = 15.5
action = "slow"
path = "p0"
delay_ms = 20
"#;

    #[test]
    fn parses_and_expands_the_timeline() {
        let s = Scenario::parse(EXAMPLE, "x.toml").unwrap();
        assert_eq!(s.paths, vec!["p0", "p1"]);
        assert_eq!(
            (s.size, s.bs, s.iodepth, s.read_pct),
            (64 << 20, 4096, 4, 70)
        );
        assert_eq!(s.no_path_retry, "queue");
        let steps = s.steps();
        let flap: Vec<_> = steps
            .iter()
            .filter(|x| x.label == "flap")
            .map(|x| (x.at_ms, x.fault.as_str()))
            .collect();
        assert_eq!(
            flap,
            vec![
                (6000, "error"),
                (7000, "clear"),
                (8000, "error"),
                (9000, "clear")
            ]
        );
        assert_eq!(steps.iter().filter(|x| x.label == "all_down").count(), 4);
        assert!(steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(steps
            .iter()
            .any(|x| x.fault == "delay 20 read write" && x.at_ms == 15500));
    }

    #[test]
    fn errors_name_the_problem() {
        for (bad, what) in [
            ("duration = 0", "duration"),
            (
                "duration = 5\n[[event]]\nat = 9\naction = \"fail\"\npath = \"p0\"",
                "past the duration",
            ),
            (
                "duration = 5\n[[event]]\nat = 1\naction = \"fail\"\npath = \"p7\"",
                "no path",
            ),
            (
                "duration = 5\n[[event]]\nat = 1\naction = \"explode\"\npath = \"p0\"",
                "unknown action",
            ),
            (
                "duration = 5\n[[event]]\nat = 1\naction = \"flap\"\npath = \"p0\"",
                "period",
            ),
            ("duration = 5\nsize = \"lots\"", "size"),
            ("duration = 5\n[workload]\nbs = \"3\"", "bs"),
            ("duration = 5\nbogus = 1", "bogus"),
            ("not toml at all [", "x.toml"),
        ] {
            let e = Scenario::parse(bad, "x.toml").unwrap_err().to_string();
            assert!(e.contains(what) && e.starts_with("x.toml: "), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }
}
