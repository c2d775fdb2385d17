//! Rendering map snapshots for `show paths|maps|topology` (text in
//! multipathd's shapes, and JSON).

use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::engine::MapSnapshot;
use crate::model::{DmState, PathId};
use crate::policy::no_path_retry::NoPathState;

/// Sizes the way multipath -ll prints them: from KiB up, one decimal
/// below 10 ("1.0G", "16M", "0.5K").
pub fn human_size(bytes: u64) -> String {
    const UNITS: [char; 6] = ['K', 'M', 'G', 'T', 'P', 'E'];
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    let precision = usize::from(v < 10.0);
    format!("{v:.precision$}{}", UNITS[u])
}

/// A duration the way `uptime` reads: "3d 4h 5m 6s", largest unit first.
pub fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = Vec::new();
    if days > 0 {
        out.push(format!("{days}d"));
    }
    if days > 0 || h > 0 {
        out.push(format!("{h}h"));
    }
    if days > 0 || h > 0 || m > 0 {
        out.push(format!("{m}m"));
    }
    out.push(format!("{sec}s"));
    out.join(" ")
}

fn dev_state(s: &MapSnapshot, i: usize) -> &'static str {
    let p = &s.map.paths()[i];
    if p.dm == DmState::Active {
        "running"
    } else if p.admin_failed {
        "offline"
    } else {
        "failed"
    }
}

pub fn paths_json(maps: &[MapSnapshot]) -> Value {
    let mut out = Vec::new();
    for s in maps {
        for (i, p) in s.map.paths().iter().enumerate().filter(|(_, p)| !p.removed) {
            let c = &s.paths[i];
            let group = s
                .map
                .groups()
                .iter()
                .position(|g| g.members.contains(&PathId::new(i)));
            out.push(json!({
                "name": p.info.name,
                "map": s.info.name,
                "wwid": p.info.wwid,
                "vendor": p.info.vendor,
                "product": p.info.product,
                "revision": p.info.revision,
                "serial": p.info.serial,
                "transport": c.transport,
                "state": p.check.as_str(),
                "dm_state": p.dm.as_str(),
                "admin_failed": p.admin_failed,
                "prio": p.prio,
                "group": group.map(|g| g + 1),
                "ios": c.ios,
                "errors": c.errors,
                "in_flight": c.in_flight,
                "stuck": c.stuck,
                "failures": p.failures,
                "reason": p.reason,
                "fault": c.fault,
            }));
        }
    }
    Value::Array(out)
}

pub fn maps_json(maps: &[MapSnapshot], devices: &BTreeMap<String, u32>) -> Value {
    Value::Array(
        maps.iter()
            .map(|s| {
                let pol = s.map.policy();
                let groups: Vec<Value> = s
                    .map
                    .groups()
                    .iter()
                    .map(|g| {
                        json!({
                            "policy": pol.selector.to_string(),
                            "prio": g.prio,
                            "status": g.status.as_str(),
                            "paths": g.members.iter().map(|&id| s.map.paths()[id.index()].info.name.clone()).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({
                    "name": s.info.name,
                    "wwid": s.info.wwid,
                    "nbd_device": devices.get(&s.info.name).map(|i| format!("/dev/nbd{i}")),
                    "vendor": s.info.vendor,
                    "product": s.info.product,
                    "size": s.info.size,
                    "path_grouping_policy": pol.grouping.as_str(),
                    "path_selector": pol.selector.to_string(),
                    "rr_min_io": pol.repeat,
                    "rr_weight": pol.rr_weight.as_str(),
                    "failback": pol.failback.to_string(),
                    "no_path_retry": pol.no_path_retry.to_string(),
                    "queueing": queueing_word(s.map.no_path_state()),
                    "queueing_since_ms": match s.map.no_path_state() {
                        NoPathState::Queueing { since, .. } => json!(since.0),
                        _ => Value::Null,
                    },
                    "queueing_deadline_ms": match s.map.no_path_state() {
                        NoPathState::Queueing { deadline: Some(d), .. } => json!(d.0),
                        _ => Value::Null,
                    },
                    "held_requests": s.held,
                    "usable_paths": s.map.usable_paths(),
                    "current_group": s.map.current_group().map(|g| g + 1),
                    "groups": groups,
                })
            })
            .collect(),
    )
}

fn histogram_json(h: &crate::engine::histogram::HistogramSnapshot) -> Value {
    json!({ "sum_ns": h.sum_ns, "buckets": h.buckets.to_vec() })
}

/// `show stats --json`: the counters of every map and path and the recent
/// events, for `umpath top` (which computes rates from two answers).
/// Times are milliseconds of the daemon's clock (`uptime_ms` is now);
/// histogram `buckets` are per bucket, not cumulative, with the upper
/// bounds in `bucket_bounds_s` and one more bucket above the last bound.
pub fn stats_json(maps: &[MapSnapshot], uptime_ms: u64) -> Value {
    let maps: Vec<Value> = maps
        .iter()
        .map(|s| {
            let paths: Vec<Value> = s
                .live_paths()
                .map(|(id, p, c)| {
                    let group = s.map.groups().iter().position(|g| g.members.contains(&id));
                    json!({
                        "name": p.info.name,
                        "state": p.check.as_str(),
                        "dm_state": p.dm.as_str(),
                        "admin_failed": p.admin_failed,
                        "prio": p.prio,
                        "group": group.map(|g| g + 1),
                        "ios": c.ios,
                        "read_bytes": c.read_bytes,
                        "written_bytes": c.written_bytes,
                        "errors": {
                            "path": c.errors_by_class[0],
                            "lun": c.errors_by_class[1],
                            "unsupported": c.errors_by_class[2],
                        },
                        "in_flight": c.in_flight,
                        "stuck": c.stuck,
                        "failures": p.failures,
                        "reinstatements": c.reinstatements,
                        "reason": p.reason,
                        "io_latency": histogram_json(&c.io_latency),
                        "check_latency": histogram_json(&c.check_latency),
                    })
                })
                .collect();
            let events: Vec<Value> = s
                .events
                .iter()
                .map(|e| {
                    json!({
                        "t_ms": e.at.0,
                        "path": e.path.and_then(|id| s.map.path(id)).map(|p| p.info.name.clone()),
                        "text": e.text,
                    })
                })
                .collect();
            json!({
                "name": s.info.name,
                "wwid": s.info.wwid,
                "size": s.info.size,
                "queueing": queueing_word(s.map.no_path_state()),
                "held_requests": s.held,
                "usable_paths": s.map.usable_paths(),
                "current_group": s.map.current_group().map(|g| g + 1),
                "group_switches": s.group_switches,
                "paths": paths,
                "events": events,
            })
        })
        .collect();
    json!({
        "uptime_ms": uptime_ms,
        "bucket_bounds_s": crate::engine::histogram::BUCKETS.to_vec(),
        "maps": maps,
    })
}

/// `show stats` as text: the counters per path.
pub fn stats_text(maps: &[MapSnapshot]) -> String {
    let mut rows = vec![[
        "name",
        "map",
        "dm_st",
        "chk_st",
        "ios",
        "read",
        "written",
        "errors",
        "in_flight",
        "failures",
        "reinstated",
        "avg_lat_us",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for s in maps {
        for (_, p, c) in s.live_paths() {
            let n = c.io_latency.count();
            let avg = c
                .io_latency
                .sum_ns
                .checked_div(n)
                .map_or("-".to_string(), |ns| (ns / 1000).to_string());
            rows.push(vec![
                p.info.name.clone(),
                s.info.name.clone(),
                p.dm.as_str().to_string(),
                p.check.as_str().to_string(),
                c.ios.to_string(),
                human_size(c.read_bytes),
                human_size(c.written_bytes),
                c.errors.to_string(),
                c.in_flight.to_string(),
                p.failures.to_string(),
                c.reinstatements.to_string(),
                avg,
            ]);
        }
    }
    table(rows)
}

/// A map's no_path_retry state in one word: `serving` (a path is
/// usable), `queueing` (IO held), `failing` (IO fails at once).
fn queueing_word(s: NoPathState) -> &'static str {
    match s {
        NoPathState::Serving => "serving",
        NoPathState::Queueing { .. } => "queueing",
        NoPathState::Failing => "failing",
    }
}

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join(" ").trim_end());
        out.push('\n');
    }
    out
}

pub fn paths_text(maps: &[MapSnapshot]) -> String {
    let mut rows = vec![[
        "name",
        "map",
        "transport",
        "pri",
        "dm_st",
        "chk_st",
        "dev_st",
        "ios",
        "errors",
        "fault",
        "reason",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for s in maps {
        for (i, p) in s.map.paths().iter().enumerate().filter(|(_, p)| !p.removed) {
            let c = &s.paths[i];
            rows.push(vec![
                p.info.name.clone(),
                s.info.name.clone(),
                c.transport.clone(),
                p.prio.to_string(),
                p.dm.as_str().to_string(),
                p.check.as_str().to_string(),
                dev_state(s, i).to_string(),
                c.ios.to_string(),
                c.errors.to_string(),
                c.fault.clone().unwrap_or_else(|| "-".into()),
                p.reason.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    table(rows)
}

pub fn maps_text(maps: &[MapSnapshot], devices: &BTreeMap<String, u32>) -> String {
    let mut rows = vec![[
        "name", "wwid", "size", "paths", "usable", "queueing", "device",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for s in maps {
        rows.push(vec![
            s.info.name.clone(),
            s.info.wwid.clone(),
            human_size(s.info.size),
            s.map.paths().len().to_string(),
            s.map.usable_paths().to_string(),
            queueing_word(s.map.no_path_state()).to_string(),
            devices
                .get(&s.info.name)
                .map_or("-".to_string(), |i| format!("/dev/nbd{i}")),
        ]);
    }
    table(rows)
}

/// The shape of `multipath -ll`.
pub fn topology_text(maps: &[MapSnapshot]) -> String {
    let mut out = String::new();
    for s in maps {
        let pol = s.map.policy();
        let name_part = if s.info.name == s.info.wwid {
            s.info.wwid.clone()
        } else {
            format!("{} ({})", s.info.name, s.info.wwid)
        };
        out.push_str(&format!(
            "{name_part} nbd:{} {},{}\n",
            s.info.name, s.info.vendor, s.info.product
        ));
        let features = match s.map.no_path_state() {
            crate::policy::no_path_retry::NoPathState::Queueing { .. } => "'1 queue_if_no_path'",
            _ => "'0'",
        };
        out.push_str(&format!(
            "size={} features={features} hwhandler='0' wp=rw\n",
            human_size(s.info.size)
        ));
        let ngroups = s.map.groups().len();
        for (gi, g) in s.map.groups().iter().enumerate() {
            let last_group = gi + 1 == ngroups;
            let (gbranch, gindent) = if last_group {
                ("`-+-", "  ")
            } else {
                ("|-+-", "| ")
            };
            out.push_str(&format!(
                "{gbranch} policy='{}' prio={} status={}\n",
                pol.selector,
                g.prio,
                g.status.as_str()
            ));
            for (pi, &id) in g.members.iter().enumerate() {
                let p = &s.map.paths()[id.index()];
                let branch = if pi + 1 == g.members.len() {
                    "`-"
                } else {
                    "|-"
                };
                out.push_str(&format!(
                    "{gindent}{branch} {} {} {} {} {}\n",
                    p.info.name,
                    s.paths[id.index()].transport,
                    p.dm.as_str(),
                    p.check.as_str(),
                    dev_state(s, id.index()),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_uptime() {
        use std::time::Duration;
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(3600 + 2)), "1h 0m 2s");
        assert_eq!(
            human_duration(Duration::from_secs(2 * 86_400 + 61)),
            "2d 0h 1m 1s"
        );
    }

    #[test]
    fn sizes_like_multipath() {
        assert_eq!(human_size(512), "0.5K");
        assert_eq!(human_size(1 << 30), "1.0G");
        assert_eq!(human_size(1536 * 1024 * 1024), "1.5G");
        assert_eq!(human_size(16 << 20), "16M");
        assert_eq!(human_size(100 << 30), "100G");
    }

    #[test]
    fn queueing_is_a_word_not_a_debug_string() {
        use crate::units::Time;
        assert_eq!(queueing_word(NoPathState::Serving), "serving");
        let q = NoPathState::Queueing {
            since: Time(5),
            deadline: None,
        };
        assert_eq!(queueing_word(q), "queueing");
        assert_eq!(queueing_word(NoPathState::Failing), "failing");
    }
}
