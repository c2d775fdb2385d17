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
                "prio_changes": c.prio_changes,
                "group": group.map(|g| g + 1),
                "ios": c.ios,
                "errors": c.errors,
                "in_flight": c.in_flight,
                "stuck": c.stuck,
                "failures": p.failures,
                "reason": p.reason,
                "fault": c.fault,
                "marginal": p.marginal,
                "held_until_ms": p.held_until.map(|t| t.0),
            }));
        }
    }
    Value::Array(out)
}

/// `show maps --json`.
pub fn maps_json(maps: &[MapSnapshot], extra: &BTreeMap<String, MapExtra>) -> Value {
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
                            "marginal": g.marginal,
                            "paths": g.members.iter().map(|&id| s.map.paths()[id.index()].info.name.clone()).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({
                    "name": s.info.name,
                    "wwid": s.info.wwid,
                    "nbd_device": extra.get(&s.info.name).and_then(|e| e.nbd_device).map(|i| format!("/dev/nbd{i}")),
                    "features": extra.get(&s.info.name).map_or("0", |e| e.features.as_str()),
                    "hwhandler": extra.get(&s.info.name).map_or("0", |e| e.hwhandler.as_str()),
                    "queueing_disabled": extra.get(&s.info.name).is_some_and(|e| e.queueing_disabled),
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
    columns(&rows, 1)
}

/// Lines of cells as aligned columns `gap` spaces apart (the first line
/// is usually the header); trailing spaces are trimmed.
pub fn columns(lines: &[Vec<String>], gap: usize) -> String {
    let n = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |x| x.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let mut line = String::new();
        for (c, cell) in l.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < l.len() {
                let w = widths.get(c).copied().unwrap_or(0);
                let pad = w.saturating_sub(cell.chars().count()) + gap;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
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

/// `show maps`: one line per map; a map under `disablequeueing` shows
/// `(queueing disabled)` after its no_path_retry state.
pub fn maps_text(maps: &[MapSnapshot], extra: &BTreeMap<String, MapExtra>) -> String {
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
            if extra.get(&s.info.name).is_some_and(|e| e.queueing_disabled) {
                format!(
                    "{} (queueing disabled)",
                    queueing_word(s.map.no_path_state())
                )
            } else {
                queueing_word(s.map.no_path_state()).to_string()
            },
            extra
                .get(&s.info.name)
                .and_then(|e| e.nbd_device)
                .map_or("-".to_string(), |i| format!("/dev/nbd{i}")),
        ]);
    }
    table(rows)
}

/// The shape of `multipath -ll`; `features` and `hwhandler` from
/// `extra` (`'0'` for a map not in it).
pub fn topology_text(maps: &[MapSnapshot], extra: &BTreeMap<String, MapExtra>) -> String {
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
        let e = extra.get(&s.info.name);
        out.push_str(&format!(
            "size={} features='{}' hwhandler='{}' wp=rw\n",
            human_size(s.info.size),
            e.map_or("0", |e| e.features.as_str()),
            e.map_or("0", |e| e.hwhandler.as_str()),
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
                // A SCSI path as multipathd prints it (H:C:T:L, name,
                // major:minor); others by name and transport.
                let scsi = e
                    .and_then(|e| e.paths.get(&p.info.name))
                    .and_then(|x| x.hcil.as_deref().zip(x.dev_t.as_deref()));
                let who = match scsi {
                    Some((hcil, dev_t)) => format!("{hcil} {} {dev_t}", p.info.name),
                    None => format!("{} {}", p.info.name, s.paths[id.index()].transport),
                };
                out.push_str(&format!(
                    "{gindent}{branch} {who} {} {} {}\n",
                    p.dm.as_str(),
                    p.check.as_str(),
                    dev_state(s, id.index()),
                ));
            }
        }
    }
    out
}

/// What a map's `show` needs beyond its engine snapshot: facts the
/// daemon keeps per map and path (configured policy, kernel device,
/// SCSI identity, checker).
#[derive(Debug, Clone, Default)]
pub struct MapExtra {
    /// The `features` string as multipathd prints it
    /// (`1 queue_if_no_path`, `0`, ...).
    pub features: String,
    /// The hardware handler as multipathd prints it (`0`, `1 alua`).
    pub hwhandler: String,
    /// `disablequeueing` is in force (no_path_retry is `fail` until
    /// `restorequeueing` or a reconfigure).
    pub queueing_disabled: bool,
    /// The kernel NBD device index, if attached.
    pub nbd_device: Option<u32>,
    /// Per path name.
    pub paths: BTreeMap<String, PathExtra>,
}

/// What a path's `show ... format` needs beyond the snapshot.
#[derive(Debug, Clone, Default)]
pub struct PathExtra {
    /// `H:C:T:L` of a SCSI path.
    pub hcil: Option<String>,
    /// `major:minor` of a block device path.
    pub dev_t: Option<String>,
    /// The checker's name (`tur`, `directio`, ...).
    pub checker: String,
}

/// multipathd's path wildcards (libmultipath/print.c), with their headers.
pub const PATH_WILDCARDS: &[(char, &str)] = &[
    ('w', "uuid"),
    ('i', "hcil"),
    ('d', "dev"),
    ('D', "dev_t"),
    ('t', "dm_st"),
    ('o', "dev_st"),
    ('T', "chk_st"),
    ('s', "vend/prod/rev"),
    ('c', "checker"),
    ('C', "next_check"),
    ('p', "pri"),
    ('S', "size"),
    ('z', "serial"),
    ('M', "marginal_st"),
    ('m', "multipath"),
    ('N', "host WWNN"),
    ('n', "target WWNN"),
    ('R', "host WWPN"),
    ('r', "target WWPN"),
    ('a', "host adapter"),
    ('G', "foreign"),
    ('g', "vpd page data"),
    ('0', "failures"),
    ('P', "protocol"),
    ('I', "init_st"),
    ('L', "LUN hex"),
    ('A', "TPG"),
    ('k', "max_sectors_kb"),
];

/// multipathd's map wildcards (libmultipath/print.c), with their headers.
pub const MAP_WILDCARDS: &[(char, &str)] = &[
    ('n', "name"),
    ('w', "uuid"),
    ('d', "sysfs"),
    ('F', "failback"),
    ('Q', "queueing"),
    ('N', "paths"),
    ('r', "write_prot"),
    ('t', "dm-st"),
    ('S', "size"),
    ('f', "features"),
    ('x', "failures"),
    ('h', "hwhandler"),
    ('A', "action"),
    ('0', "path_faults"),
    ('1', "switch_grp"),
    ('2', "map_loads"),
    ('3', "total_q_time"),
    ('4', "q_timeouts"),
    ('s', "vend/prod"),
    ('v', "vend"),
    ('p', "prod"),
    ('e', "rev"),
    ('G', "foreign"),
    ('g', "vpd page data"),
    ('k', "max_sectors_kb"),
];

/// multipathd's `show maps stats` format.
pub const MAP_STATS_FORMAT: &str = "%n %0 %1 %2 %3 %4";

/// multipathd caps a column at this many characters.
const MAX_FIELD_WIDTH: usize = 255;

/// One piece of a parsed format: literal text or a known wildcard
/// (index into the table). Unknown wildcards vanish, `%` included, as
/// in multipathd.
enum Piece<'a> {
    Text(&'a str),
    Field(usize),
}

fn parse_format<'a>(format: &'a str, table: &[(char, &str)]) -> Vec<Piece<'a>> {
    let mut out = Vec::new();
    let mut rest = format;
    while let Some(at) = rest.find('%') {
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let mut after = rest[at + 1..].chars();
        if let Some(c) = after.next() {
            if let Some(i) = table.iter().position(|(w, _)| *w == c) {
                out.push(Piece::Field(i));
            }
        }
        rest = after.as_str();
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    out
}

/// Renders rows of field values with a format: a header line and padded
/// columns (multipathd's "pretty" form), or neither (`raw`).
fn render_format(format: &str, table: &[(char, &str)], rows: &[Vec<String>], raw: bool) -> String {
    let pieces = parse_format(format, table);
    let mut widths = vec![0usize; table.len()];
    if !raw {
        for (i, (_, h)) in table.iter().enumerate() {
            widths[i] = h.chars().count();
            for r in rows {
                widths[i] = widths[i].max(r[i].chars().count().min(MAX_FIELD_WIDTH));
            }
        }
    }
    let line = |cells: &dyn Fn(usize) -> String| {
        let mut l = String::new();
        for p in &pieces {
            match p {
                Piece::Text(t) => l.push_str(t),
                Piece::Field(i) => {
                    let v = cells(*i);
                    let n = v.chars().count();
                    l.push_str(&v);
                    l.extend(std::iter::repeat_n(' ', widths[*i].saturating_sub(n)));
                }
            }
        }
        l.push('\n');
        l
    };
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    if !raw {
        out.push_str(&line(&|i| table[i].1.to_string()));
    }
    for r in rows {
        out.push_str(&line(&|i| r[i].clone()));
    }
    out
}

/// `--json` of a format: one object per row keyed by the headers of the
/// wildcards the format names.
fn format_json(format: &str, table: &[(char, &str)], rows: &[Vec<String>]) -> Value {
    let used: Vec<usize> = parse_format(format, table)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Field(i) => Some(i),
            Piece::Text(_) => None,
        })
        .collect();
    Value::Array(
        rows.iter()
            .map(|r| {
                Value::Object(
                    used.iter()
                        .map(|&i| (table[i].1.to_string(), Value::String(r[i].clone())))
                        .collect(),
                )
            })
            .collect(),
    )
}

fn or<'a>(s: &'a str, empty: &'a str) -> &'a str {
    if s.is_empty() {
        empty
    } else {
        s
    }
}

/// `0x...` of a LUN number as the kernel's `int_to_scsilun` lays it out.
fn lun_hex(hcil: Option<&str>) -> String {
    let lun = hcil
        .and_then(|h| h.rsplit(':').next())
        .and_then(|l| l.parse::<u64>().ok());
    let v = match lun {
        None => u64::MAX,
        Some(l) => {
            ((l & 0xffff) << 48)
                | ((l & 0xffff_0000) << 16)
                | ((l & 0xffff_0000_0000) >> 16)
                | ((l & 0xffff_0000_0000_0000) >> 48)
        }
    };
    format!("0x{v:016x}")
}

/// One path's values, in [`PATH_WILDCARDS`] order.
fn path_row(s: &MapSnapshot, id: PathId, extra: Option<&PathExtra>) -> Vec<String> {
    let p = &s.map.paths()[id.index()];
    let c = &s.paths[id.index()];
    let i = &p.info;
    let hcil = extra.and_then(|e| e.hcil.as_deref());
    PATH_WILDCARDS
        .iter()
        .map(|(w, _)| match w {
            'w' => i.wwid.clone(),
            'i' => hcil.unwrap_or("#:#:#:#").to_string(),
            'd' => or(&i.name, "-").to_string(),
            'D' => extra
                .and_then(|e| e.dev_t.clone())
                .unwrap_or_else(|| "#:#".into()),
            't' => p.dm.as_str().to_string(),
            'o' => "running".to_string(),
            'T' => p.check.as_str().to_string(),
            's' => format!(
                "{},{},{}",
                or(&i.vendor, "##"),
                or(&i.product, "##"),
                or(&i.revision, "##")
            ),
            'c' => extra
                .map(|e| e.checker.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "(null)".into()),
            'p' => p.prio.to_string(),
            'S' => human_size(s.info.size),
            'z' => i.serial.clone(),
            'M' => if p.marginal { "marginal" } else { "normal" }.to_string(),
            'm' => s.info.name.clone(),
            'n' => i.node_name.clone().unwrap_or_else(|| "[undef]".into()),
            'G' => "--".to_string(),
            '0' => p.failures.to_string(),
            'P' => if c.transport == "scsi" {
                "scsi:unspec"
            } else {
                "undef"
            }
            .to_string(),
            'I' => "ok".to_string(),
            'L' => lun_hex(hcil),
            'A' => i
                .tpg
                .map_or_else(|| "[undef]".to_string(), |t| format!("0x{t:04x}")),
            'k' | 'C' => "n/a".to_string(),
            _ => "[undef]".to_string(),
        })
        .collect()
}

/// multipathd's `%Q`: `off` (fail), `on` (queue), and for
/// `no_path_retry N`: seconds left while queueing, `N chk` while a path
/// is usable, `off` once retries ran out.
fn queueing_field(s: &MapSnapshot, now: crate::units::Time) -> String {
    match s.map.policy().no_path_retry {
        crate::policy::NoPathRetry::Fail => "off".into(),
        crate::policy::NoPathRetry::Queue => "on".into(),
        crate::policy::NoPathRetry::Retries(n) => match s.map.no_path_state() {
            NoPathState::Queueing {
                deadline: Some(d), ..
            } => {
                format!("{} sec", d.0.saturating_sub(now.0).div_ceil(1000))
            }
            NoPathState::Serving => format!("{n} chk"),
            _ => "off".into(),
        },
    }
}

/// One map's values, in [`MAP_WILDCARDS`] order.
fn map_row(s: &MapSnapshot, extra: Option<&MapExtra>, now: crate::units::Time) -> Vec<String> {
    let first = s.map.paths().iter().find(|p| !p.removed).map(|p| &p.info);
    let pick = |f: fn(&crate::model::PathInfo) -> &String| {
        s.map
            .paths()
            .iter()
            .filter(|p| !p.removed)
            .map(|p| f(&p.info))
            .find(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| "##".into())
    };
    MAP_WILDCARDS
        .iter()
        .map(|(w, _)| match w {
            'n' => s.info.name.clone(),
            'w' => s.info.wwid.clone(),
            'd' => extra
                .and_then(|e| e.nbd_device)
                .map_or_else(|| "undef".to_string(), |i| format!("nbd{i}")),
            'F' => match s.map.policy().failback {
                crate::policy::Failback::DeferredSecs(n) => format!("deferred:{n}"),
                f => f.to_string(),
            },
            'Q' => queueing_field(s, now),
            'N' => s.map.usable_paths().to_string(),
            'r' => "rw".to_string(),
            't' => "active".to_string(),
            'S' => human_size(s.info.size),
            'f' => extra.map_or_else(|| "0".into(), |e| e.features.clone()),
            'x' => s.stats.map_failures.to_string(),
            'h' => extra.map_or_else(|| "0".into(), |e| e.hwhandler.clone()),
            'A' => String::new(),
            '0' => s
                .map
                .paths()
                .iter()
                .map(|p| p.failures)
                .sum::<u64>()
                .to_string(),
            '1' => s.group_switches.to_string(),
            '2' => s.stats.map_loads.to_string(),
            '3' => s.stats.total_q_time.as_secs().to_string(),
            '4' => s.stats.q_timeouts.to_string(),
            's' => match first {
                Some(i) if !i.vendor.is_empty() && !i.product.is_empty() => {
                    format!("{},{}", i.vendor, i.product)
                }
                _ => "##,##".to_string(),
            },
            'v' => pick(|i| &i.vendor),
            'p' => pick(|i| &i.product),
            'e' => pick(|i| &i.revision),
            'G' => "--".to_string(),
            'g' => "[undef]".to_string(),
            _ => "n/a".to_string(),
        })
        .collect()
}

fn rule_origin(builtin: bool) -> &'static str {
    if builtin {
        "(default rule)    "
    } else {
        "(config file rule)"
    }
}

/// `show blacklist`: the rules in force, as multipathd's
/// `snprint_blacklist_report` lays them out.
pub fn blacklist_text(cfg: &crate::config::Config) -> String {
    let bl = cfg.effective_blacklist();
    let ex = cfg.effective_exceptions();
    let mut out = String::new();
    let group = |out: &mut String, v: &[crate::config::BlacklistEntry]| {
        if v.is_empty() {
            out.push_str("        <empty>\n");
        }
        for e in v {
            out.push_str(&format!(
                "        {} {}\n",
                rule_origin(e.builtin),
                e.pattern
            ));
        }
    };
    let devgroup = |out: &mut String, v: &[crate::config::BlacklistDevice]| {
        if v.is_empty() {
            out.push_str("        <empty>\n");
        }
        for d in v {
            let p = |x: &Option<crate::config::Pattern>| {
                x.as_ref().map_or_else(String::new, ToString::to_string)
            };
            out.push_str(&format!(
                "        {} {}:{}\n",
                rule_origin(d.builtin),
                p(&d.vendor),
                p(&d.product)
            ));
        }
    };
    for (title, b, e) in [
        ("device node rules", &bl.devnode, &ex.devnode),
        ("udev property rules", &bl.property, &ex.property),
        ("protocol rules", &bl.protocol, &ex.protocol),
        ("wwid rules", &bl.wwid, &ex.wwid),
    ] {
        out.push_str(&format!("{title}:\n- blacklist:\n"));
        group(&mut out, b);
        out.push_str("- exceptions:\n");
        group(&mut out, e);
    }
    out.push_str("device rules:\n- blacklist:\n");
    devgroup(&mut out, &bl.device);
    out.push_str("- exceptions:\n");
    devgroup(&mut out, &ex.device);
    out
}

/// `show blacklist --json`: per kind (`devnode`, `property`, `protocol`,
/// `wwid`, `device`), the `blacklist` and `exceptions` rules with their
/// origin (`config` or `default`) and, for config rules, file:line.
pub fn blacklist_json(cfg: &crate::config::Config) -> Value {
    let bl = cfg.effective_blacklist();
    let ex = cfg.effective_exceptions();
    let origin = |builtin: bool| if builtin { "default" } else { "config" };
    let entries = |v: &[crate::config::BlacklistEntry]| -> Value {
        v.iter()
            .map(|e| json!({"rule": e.pattern.to_string(), "origin": origin(e.builtin), "at": e.span.to_string()}))
            .collect()
    };
    let devs = |v: &[crate::config::BlacklistDevice]| -> Value {
        v.iter()
            .map(|d| {
                json!({
                    "vendor": d.vendor.as_ref().map(ToString::to_string),
                    "product": d.product.as_ref().map(ToString::to_string),
                    "origin": origin(d.builtin),
                    "at": d.span.to_string(),
                })
            })
            .collect()
    };
    json!({
        "devnode": {"blacklist": entries(&bl.devnode), "exceptions": entries(&ex.devnode)},
        "property": {"blacklist": entries(&bl.property), "exceptions": entries(&ex.property)},
        "protocol": {"blacklist": entries(&bl.protocol), "exceptions": entries(&ex.protocol)},
        "wwid": {"blacklist": entries(&bl.wwid), "exceptions": entries(&ex.wwid)},
        "device": {"blacklist": devs(&bl.device), "exceptions": devs(&ex.device)},
    })
}

/// `show devices`: the devices umpath knows (its paths; all of them
/// passed the blacklist and are monitored), as multipathd words it.
/// Returns the JSON and the text.
pub fn devices(paths: &[String]) -> (Value, String) {
    let mut text = String::from("available block devices:\n");
    let mut list = Vec::new();
    for p in paths {
        text.push_str(&format!("    {p}  devnode whitelisted, monitored\n"));
        list.push(json!({"dev": p, "blacklisted": false, "monitored": true}));
    }
    (Value::Array(list), text)
}

/// A `show` answer: text or JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Rendered {
    Text(String),
    Json(Value),
}

/// `show paths [raw] format FMT`: text, or JSON with `json`.
pub fn paths_format(
    maps: &[MapSnapshot],
    extra: &BTreeMap<String, MapExtra>,
    format: &str,
    raw: bool,
    json: bool,
) -> Rendered {
    let rows: Vec<Vec<String>> = maps
        .iter()
        .flat_map(|s| {
            let e = extra.get(&s.info.name);
            s.live_paths()
                .map(move |(id, p, _)| path_row(s, id, e.and_then(|e| e.paths.get(&p.info.name))))
        })
        .collect();
    if json {
        Rendered::Json(format_json(format, PATH_WILDCARDS, &rows))
    } else {
        Rendered::Text(render_format(format, PATH_WILDCARDS, &rows, raw))
    }
}

/// `show maps [raw] format FMT` (and `show maps stats`): text, or JSON
/// with `json`.
pub fn maps_format(
    maps: &[MapSnapshot],
    extra: &BTreeMap<String, MapExtra>,
    format: &str,
    raw: bool,
    json: bool,
    now: crate::units::Time,
) -> Rendered {
    let rows: Vec<Vec<String>> = maps
        .iter()
        .map(|s| map_row(s, extra.get(&s.info.name), now))
        .collect();
    if json {
        Rendered::Json(format_json(format, MAP_WILDCARDS, &rows))
    } else {
        Rendered::Text(render_format(format, MAP_WILDCARDS, &rows, raw))
    }
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
