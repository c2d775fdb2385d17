//! Control protocol: command parsing and the response envelope. Pure.

use serde::{Deserialize, Serialize};

/// Longest request line the server reads.
pub const MAX_REQUEST: usize = 4096;

/// Longest reply the server sends (a larger one is replaced by an error
/// reply); the client reads at most this much.
pub const MAX_REPLY: usize = 16 * 1024 * 1024;

/// What `show` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowWhat {
    Paths,
    Maps,
    Topology,
    Config,
    Status,
    /// Counters per map and path, recent events (`umpath top`).
    Stats,
    /// `show maps stats`: multipathd's per-map counters (name,
    /// path_faults, switch_grp, map_loads, total_q_time, q_timeouts).
    MapsStats,
    /// `show daemon`: `pid N running`, as multipathd prints it.
    Daemon,
    /// `show blacklist`: the blacklist and exception rules with their origin.
    Blacklist,
    /// `show devices`: each known device and whether it is blacklisted,
    /// whitelisted or monitored.
    Devices,
}

/// What `show ... format FMT` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatOf {
    Paths,
    Maps,
}

/// A control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show {
        what: ShowWhat,
        json: bool,
    },
    /// `show path NAME config`: the effective settings of one live path.
    ShowPathConfig {
        path: String,
        json: bool,
    },
    FailPath {
        path: String,
    },
    ReinstatePath {
        path: String,
    },
    /// `fault path NAME SPEC...` (e.g. `error`, `delay 50 read`, `clear`).
    FaultPath {
        path: String,
        spec: String,
    },
    /// `show paths|maps [raw] format FMT`: one line per path or map with
    /// multipathd's `%` wildcards; `raw` leaves out the header and the
    /// padding. FMT is kept exactly (spaces included).
    ShowFormat {
        of: FormatOf,
        format: String,
        raw: bool,
        json: bool,
    },
    /// `disablequeueing map NAME` (`None`: `disablequeueing maps`):
    /// held IO fails now and IO with no usable path fails until
    /// `restorequeueing` or a reconfigure.
    DisableQueueing {
        map: Option<String>,
    },
    /// `restorequeueing map NAME` (`None`: `maps`): back to the
    /// configured no_path_retry.
    RestoreQueueing {
        map: Option<String>,
    },
    /// `switch map NAME group N` (1-based, like multipathd).
    SwitchGroup {
        map: String,
        group: usize,
    },
    /// `resize map NAME`: read the LUN's size again from the map's
    /// usable paths (they must agree) and give the map that size.
    ResizeMap {
        map: String,
    },
    /// `add path DEV`: a declared path not running (after `del path`) or
    /// a SCSI disk joins its map by WWID, as hotplug does.
    AddPath {
        path: String,
    },
    /// `del path NAME`: a running path leaves its map.
    DelPath {
        path: String,
    },
    Reconfigure,
    Shutdown,
    /// `shutdown --detach`: detach every kernel NBD device, then stop.
    ShutdownDetach,
    /// `attach MAP [/dev/nbdN]`: a kernel NBD device for the map.
    Attach {
        map: String,
        device: Option<u32>,
    },
    /// `detach MAP [--force]`: flush and disconnect the map's device.
    Detach {
        map: String,
        force: bool,
    },
}

impl Command {
    /// Parses a request line. Errors say what was expected.
    pub fn parse(line: &str) -> Result<Command, String> {
        if let Some(cmd) = parse_format(line)? {
            return Ok(cmd);
        }
        let mut words: Vec<&str> = line.split_whitespace().collect();
        let json = if words.last() == Some(&"--json") || words.last() == Some(&"json") {
            words.pop();
            true
        } else {
            false
        };
        let cmd = match words.as_slice() {
            ["show", "paths"] => Command::Show {
                what: ShowWhat::Paths,
                json,
            },
            ["show", "maps"] => Command::Show {
                what: ShowWhat::Maps,
                json,
            },
            ["show", "topology"] | ["show", "maps", "topology"] => Command::Show {
                what: ShowWhat::Topology,
                json,
            },
            ["show", "config"] => Command::Show {
                what: ShowWhat::Config,
                json,
            },
            ["show", "stats"] => Command::Show {
                what: ShowWhat::Stats,
                json,
            },
            ["show", "maps", "stats"] => Command::Show {
                what: ShowWhat::MapsStats,
                json,
            },
            ["show", "status"] => Command::Show {
                what: ShowWhat::Status,
                json,
            },
            ["show", "daemon"] => Command::Show {
                what: ShowWhat::Daemon,
                json,
            },
            ["show", "blacklist"] => Command::Show {
                what: ShowWhat::Blacklist,
                json,
            },
            ["show", "devices"] => Command::Show {
                what: ShowWhat::Devices,
                json,
            },
            ["disablequeueing", "map", map] => Command::DisableQueueing {
                map: Some(map.to_string()),
            },
            ["disablequeueing", "maps"] => Command::DisableQueueing { map: None },
            ["restorequeueing", "map", map] => Command::RestoreQueueing {
                map: Some(map.to_string()),
            },
            ["restorequeueing", "maps"] => Command::RestoreQueueing { map: None },
            ["show", "path", name, "config"] => Command::ShowPathConfig {
                path: name.to_string(),
                json,
            },
            ["fail", "path", name] => Command::FailPath {
                path: name.to_string(),
            },
            ["reinstate", "path", name] => Command::ReinstatePath {
                path: name.to_string(),
            },
            ["fault", "path", name, spec @ ..] if !spec.is_empty() => Command::FaultPath {
                path: name.to_string(),
                spec: spec.join(" "),
            },
            ["switch", "map", map, "group", n] | ["switchgroup", "map", map, "group", n] => {
                let group = n
                    .parse::<usize>()
                    .ok()
                    .filter(|g| *g >= 1)
                    .ok_or_else(|| format!("group must be a number from 1, not {n:?}"))?;
                Command::SwitchGroup {
                    map: map.to_string(),
                    group,
                }
            }
            ["resize", "map", map] => Command::ResizeMap {
                map: map.to_string(),
            },
            ["add", "path", path] => Command::AddPath {
                path: path.to_string(),
            },
            ["del", "path", path] | ["remove", "path", path] => Command::DelPath {
                path: path.to_string(),
            },
            ["reconfigure"] => Command::Reconfigure,
            ["shutdown"] => Command::Shutdown,
            ["shutdown", "--detach"] => Command::ShutdownDetach,
            ["attach", map] | ["attach", "map", map] => Command::Attach {
                map: map.to_string(),
                device: None,
            },
            ["attach", map, dev] | ["attach", "map", map, dev] => Command::Attach {
                map: map.to_string(),
                device: Some(
                    crate::kernel::parse_device(dev)
                        .ok_or_else(|| format!("not an NBD device: {dev:?} (e.g. /dev/nbd0)"))?,
                ),
            },
            ["detach", map] | ["detach", "map", map] => Command::Detach {
                map: map.to_string(),
                force: false,
            },
            ["detach", map, "--force"] | ["detach", "map", map, "--force"] => Command::Detach {
                map: map.to_string(),
                force: true,
            },
            [] => return Err("empty command".to_string()),
            _ => {
                return Err(format!(
                    "unknown command {:?}; try: show paths|maps|topology|config|status|stats|daemon|blacklist|devices [--json], \
                     show maps stats, show paths|maps [raw] format FMT, show path NAME config, \
                     disablequeueing map NAME|maps, restorequeueing map NAME|maps, fail path NAME, reinstate path NAME, \
                     fault path NAME error|delay MS|hang|flaky PCT|clear [read|write|check], \
                     switch map NAME group N, resize map NAME, add path DEV, del path NAME, attach MAP [/dev/nbdN], detach MAP [--force], \
                     reconfigure, shutdown [--detach]",
                    line.trim()
                ))
            }
        };
        Ok(cmd)
    }

    /// Whether this command only reads. Read-only commands are for any
    /// local user who can reach the socket; the others need root or the
    /// admin group ([`crate::access`]). Every command must choose: there
    /// is no catch-all arm.
    pub fn is_read_only(&self) -> bool {
        match self {
            Command::Show { .. } | Command::ShowPathConfig { .. } | Command::ShowFormat { .. } => {
                true
            }
            Command::DisableQueueing { .. }
            | Command::RestoreQueueing { .. }
            | Command::FailPath { .. }
            | Command::ReinstatePath { .. }
            | Command::FaultPath { .. }
            | Command::SwitchGroup { .. }
            | Command::ResizeMap { .. }
            | Command::AddPath { .. }
            | Command::DelPath { .. }
            | Command::Reconfigure
            | Command::Shutdown
            | Command::ShutdownDetach
            | Command::Attach { .. }
            | Command::Detach { .. } => false,
        }
    }

    /// The request line for this command (inverse of [`Command::parse`]).
    pub fn to_line(&self) -> String {
        let show = |w: &str, json: bool| format!("show {w}{}", if json { " --json" } else { "" });
        match self {
            Command::Show { what, json } => show(
                match what {
                    ShowWhat::Paths => "paths",
                    ShowWhat::Maps => "maps",
                    ShowWhat::Topology => "topology",
                    ShowWhat::Config => "config",
                    ShowWhat::Status => "status",
                    ShowWhat::Stats => "stats",
                    ShowWhat::MapsStats => "maps stats",
                    ShowWhat::Daemon => "daemon",
                    ShowWhat::Blacklist => "blacklist",
                    ShowWhat::Devices => "devices",
                },
                *json,
            ),
            Command::ShowPathConfig { path, json } => show(&format!("path {path} config"), *json),
            Command::ShowFormat {
                of,
                format,
                raw,
                json,
            } => show(
                &format!(
                    "{}{} format {format}",
                    match of {
                        FormatOf::Paths => "paths",
                        FormatOf::Maps => "maps",
                    },
                    if *raw { " raw" } else { "" }
                ),
                *json,
            ),
            Command::DisableQueueing { map } => match map {
                Some(m) => format!("disablequeueing map {m}"),
                None => "disablequeueing maps".to_string(),
            },
            Command::RestoreQueueing { map } => match map {
                Some(m) => format!("restorequeueing map {m}"),
                None => "restorequeueing maps".to_string(),
            },
            Command::FailPath { path } => format!("fail path {path}"),
            Command::ReinstatePath { path } => format!("reinstate path {path}"),
            Command::FaultPath { path, spec } => format!("fault path {path} {spec}"),
            Command::SwitchGroup { map, group } => format!("switch map {map} group {group}"),
            Command::ResizeMap { map } => format!("resize map {map}"),
            Command::AddPath { path } => format!("add path {path}"),
            Command::DelPath { path } => format!("del path {path}"),
            Command::Reconfigure => "reconfigure".to_string(),
            Command::Shutdown => "shutdown".to_string(),
            Command::ShutdownDetach => "shutdown --detach".to_string(),
            Command::Attach { map, device } => match device {
                Some(i) => format!("attach {map} /dev/nbd{i}"),
                None => format!("attach {map}"),
            },
            Command::Detach { map, force } => {
                format!("detach {map}{}", if *force { " --force" } else { "" })
            }
        }
    }
}

/// `show paths|maps [raw] format FMT [--json]`, with FMT kept as
/// written (multipathd takes the rest of the line, spaces included).
/// `Ok(None)`: not a format command.
fn parse_format(line: &str) -> Result<Option<Command>, String> {
    let mut rest = line.trim_start();
    let mut next = |want: &[&str]| -> Option<&'static str> {
        let word = rest.split_whitespace().next()?;
        let hit = want.iter().find(|w| **w == word)?;
        rest = rest[word.len()..].trim_start();
        Some(match *hit {
            "paths" => "paths",
            "maps" => "maps",
            "raw" => "raw",
            "format" => "format",
            _ => "show",
        })
    };
    if next(&["show", "list"]).is_none() {
        return Ok(None);
    }
    let of = match next(&["paths", "maps"]) {
        Some("paths") => FormatOf::Paths,
        Some(_) => FormatOf::Maps,
        None => return Ok(None),
    };
    let raw = next(&["raw"]).is_some();
    if next(&["format"]).is_none() {
        return if raw {
            Err("expected `format FMT` after `raw`".to_string())
        } else {
            Ok(None)
        };
    }
    let mut format = rest.trim_end_matches(['\n', '\r']);
    let json = match format.strip_suffix("--json") {
        Some(f) if f.is_empty() || f.ends_with(char::is_whitespace) => {
            format = f.trim_end();
            true
        }
        _ => false,
    };
    if format.trim().is_empty() {
        return Err("`format` needs a format, e.g. format \"%d %w %T\"".to_string());
    }
    Ok(Some(Command::ShowFormat {
        of,
        format: format.to_string(),
        raw,
        json,
    }))
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// Human-readable output (or the error message when `ok` is false).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// Structured output for `--json` requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    pub fn text(text: impl Into<String>) -> Self {
        Response {
            ok: true,
            text: text.into(),
            data: None,
        }
    }
    pub fn json(data: serde_json::Value) -> Self {
        Response {
            ok: true,
            text: String::new(),
            data: Some(data),
        }
    }
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            text: msg.into(),
            data: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multipathd_vocabulary() {
        assert_eq!(
            Command::parse("show paths"),
            Ok(Command::Show {
                what: ShowWhat::Paths,
                json: false
            })
        );
        assert_eq!(
            Command::parse("  show   maps  --json\n"),
            Ok(Command::Show {
                what: ShowWhat::Maps,
                json: true
            })
        );
        assert_eq!(
            Command::parse("show maps topology"),
            Ok(Command::Show {
                what: ShowWhat::Topology,
                json: false
            })
        );
        assert_eq!(
            Command::parse("fail path p0"),
            Ok(Command::FailPath { path: "p0".into() })
        );
        assert_eq!(
            Command::parse("fault path p1 delay 50 read"),
            Ok(Command::FaultPath {
                path: "p1".into(),
                spec: "delay 50 read".into()
            })
        );
        assert_eq!(
            Command::parse("switch map lun0 group 2"),
            Ok(Command::SwitchGroup {
                map: "lun0".into(),
                group: 2
            })
        );
    }

    #[test]
    fn kernel_device_commands_round_trip_and_need_rights() {
        for (line, cmd) in [
            (
                "attach lun0",
                Command::Attach {
                    map: "lun0".into(),
                    device: None,
                },
            ),
            (
                "attach lun0 /dev/nbd3",
                Command::Attach {
                    map: "lun0".into(),
                    device: Some(3),
                },
            ),
            (
                "detach lun0",
                Command::Detach {
                    map: "lun0".into(),
                    force: false,
                },
            ),
            (
                "detach lun0 --force",
                Command::Detach {
                    map: "lun0".into(),
                    force: true,
                },
            ),
            ("shutdown --detach", Command::ShutdownDetach),
        ] {
            assert_eq!(Command::parse(line), Ok(cmd.clone()), "{line}");
            assert_eq!(Command::parse(&cmd.to_line()), Ok(cmd.clone()));
            assert!(!cmd.is_read_only(), "{line}");
        }
        assert_eq!(
            Command::parse("attach map lun0 nbd1"),
            Ok(Command::Attach {
                map: "lun0".into(),
                device: Some(1)
            })
        );
        assert!(Command::parse("attach lun0 /dev/sda")
            .unwrap_err()
            .contains("not an NBD device"));
    }

    #[test]
    fn rejects_junk_with_a_hint() {
        assert!(Command::parse("").is_err());
        assert!(Command::parse("fail path").unwrap_err().contains("try:"));
        assert!(Command::parse("switch map m group 0").is_err());
        assert!(Command::parse("fault path p0").is_err());
    }

    #[test]
    fn only_show_is_read_only() {
        for (line, ro) in [
            ("show paths --json", true),
            ("show config", true),
            ("show path p0 config", true),
            ("fail path p0", false),
            ("reinstate path p0", false),
            ("fault path p0 clear", false),
            ("switch map m group 1", false),
            ("resize map m", false),
            ("add path p0", false),
            ("del path p0", false),
            ("reconfigure", false),
            ("shutdown", false),
        ] {
            assert_eq!(Command::parse(line).unwrap().is_read_only(), ro, "{line}");
        }
    }

    #[test]
    fn multipathd_commands_of_issue_12() {
        assert_eq!(
            Command::parse("show paths format %d  %w|%T"),
            Ok(Command::ShowFormat {
                of: FormatOf::Paths,
                format: "%d  %w|%T".into(),
                raw: false,
                json: false
            })
        );
        assert_eq!(
            Command::parse("show maps raw format %n %Q --json\n"),
            Ok(Command::ShowFormat {
                of: FormatOf::Maps,
                format: "%n %Q".into(),
                raw: true,
                json: true
            })
        );
        assert!(Command::parse("show paths format").is_err());
        assert!(Command::parse("show paths raw").is_err());
        assert_eq!(
            Command::parse("show maps stats"),
            Ok(Command::Show {
                what: ShowWhat::MapsStats,
                json: false
            })
        );
        assert_eq!(
            Command::parse("show stats --json"),
            Ok(Command::Show {
                what: ShowWhat::Stats,
                json: true
            })
        );
        assert_eq!(
            Command::parse("disablequeueing map lun0"),
            Ok(Command::DisableQueueing {
                map: Some("lun0".into())
            })
        );
        assert_eq!(
            Command::parse("restorequeueing maps"),
            Ok(Command::RestoreQueueing { map: None })
        );
        assert_eq!(
            Command::parse("switchgroup map lun0 group 2"),
            Ok(Command::SwitchGroup {
                map: "lun0".into(),
                group: 2
            })
        );
        for line in [
            "disablequeueing map m",
            "disablequeueing maps",
            "restorequeueing map m",
            "restorequeueing maps",
        ] {
            let c = Command::parse(line).unwrap();
            assert!(!c.is_read_only(), "{line}");
            assert_eq!(Command::parse(&c.to_line()).unwrap(), c);
        }
        for line in [
            "show maps stats",
            "show daemon",
            "show blacklist --json",
            "show devices",
            "show paths format %d %w",
            "show maps raw format %n  %S --json",
        ] {
            let c = Command::parse(line).unwrap();
            assert!(c.is_read_only(), "{line}");
            assert_eq!(Command::parse(&c.to_line()).unwrap(), c, "{line}");
        }
    }

    #[test]
    fn round_trips() {
        for line in [
            "show paths --json",
            "show topology",
            "show path p0 config",
            "fail path p0",
            "reinstate path p0",
            "fault path p0 error write",
            "switch map m group 1",
            "resize map lun0",
            "add path sdc",
            "del path p1",
            "reconfigure",
            "shutdown",
        ] {
            let c = Command::parse(line).unwrap();
            assert_eq!(Command::parse(&c.to_line()).unwrap(), c);
        }
    }
}
