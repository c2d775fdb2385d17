//! Tests of the whole pipeline: text to typed configuration to settings.

use super::*;
use crate::policy::{CheckerKind, Failback, GroupingPolicy, NoPathRetry, RrWeight, SelectorKind};

const F: &str = "multipath.conf";

fn ok(text: &str) -> Config {
    match parse_str(text, F) {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn err(text: &str) -> ConfigError {
    match parse_str(text, F) {
        Ok(c) => panic!("expected errors, got warnings {:?}", c.warnings()),
        Err(e) => e,
    }
}

/// (line, message) of the errors.
fn errors(e: &ConfigError) -> Vec<(u32, String)> {
    e.errors().map(|d| (d.line, d.message.clone())).collect()
}

fn warnings(c: &Config) -> Vec<(u32, String)> {
    c.warnings()
        .iter()
        .map(|d| (d.line, d.message.clone()))
        .collect()
}

fn id<'a>(vendor: &'a str, product: &'a str, revision: &'a str, wwid: &'a str) -> PathIdentity<'a> {
    PathIdentity {
        vendor,
        product,
        revision,
        wwid,
    }
}

fn dev(line: u32, vendor: &str, product: &str) -> Origin {
    Origin::Device {
        file: F.into(),
        line,
        vendor: vendor.into(),
        product: product.into(),
        builtin: false,
    }
}

fn defaults(line: u32) -> Origin {
    Origin::Defaults {
        file: F.into(),
        line,
    }
}

fn overrides(line: u32) -> Origin {
    Origin::Overrides {
        file: F.into(),
        line,
    }
}

fn multipath(line: u32) -> Origin {
    Origin::Multipath {
        file: F.into(),
        line,
    }
}

const QUANTASTOR: &str = r#"defaults {
    user_friendly_names yes
}
devices {
    device {
          vendor                  "OSNEXUS"
          product                 "QUANTASTOR"
          getuid_callout          "/sbin/scsi_id -g -u -s /block/%n"
          path_selector           "round-robin 0"
          path_grouping_policy    multibus
          failback                immediate
          rr_weight               uniform
          rr_min_io               100
          path_checker            tur
    }
}
paths {
    path {
        name      p0
        transport file
        file      /var/lib/umpath/lun0.img
        vendor    "OSNEXUS"
        product   "QUANTASTOR"
        revision  "0001"
        wwid      "36000c29abcdef001"
        serial    "QS0001"
    }
    path {
        name      p1
        file      /var/lib/umpath/lun0-b.img
        vendor    "OSNEXUS"
        product   "QUANTASTOR"
        revision  "0001"
        wwid      "36000c29abcdef001"
        serial    "QS0001"
    }
}
"#;

#[test]
fn quantastor_stanza_verbatim() {
    let c = ok(QUANTASTOR);
    // No warning: umpath honours getuid_callout (SCSI paths).
    let w = warnings(&c);
    assert!(w.is_empty(), "{w:?}");

    assert_eq!(c.paths().len(), 2);
    let p0 = c.path("p0").unwrap();
    assert_eq!(p0.transport, "file");
    assert_eq!(
        p0.file.as_deref(),
        Some(std::path::Path::new("/var/lib/umpath/lun0.img"))
    );
    assert_eq!(
        (
            p0.vendor.as_str(),
            p0.product.as_str(),
            p0.revision.as_str()
        ),
        ("OSNEXUS", "QUANTASTOR", "0001")
    );
    assert_eq!(p0.wwid, "36000c29abcdef001");
    assert_eq!(p0.serial, "QS0001");
    assert_eq!(p0.span.line, 18);
    assert_eq!(c.path("p1").unwrap().transport, "file");
    assert!(c.blacklisted(&p0.identity()).is_none());

    let s = c.resolve(&p0.identity());
    let o = |line| dev(line, "OSNEXUS", "QUANTASTOR");
    assert_eq!(
        s.path_grouping_policy,
        Setting {
            value: GroupingPolicy::Multibus,
            origin: o(10)
        }
    );
    assert_eq!(s.path_selector.value, SelectorKind::RoundRobin);
    assert_eq!(s.path_selector.origin, o(9));
    assert_eq!(
        s.rr_min_io,
        Setting {
            value: 100,
            origin: o(13)
        }
    );
    assert_eq!(
        s.repeat_count,
        Setting {
            value: 100,
            origin: o(13)
        }
    );
    assert_eq!(s.rr_min_io_rq, Setting::builtin(1));
    assert_eq!(s.rr_weight.value, RrWeight::Uniform);
    assert_eq!(s.rr_weight.origin, o(12));
    assert_eq!(s.failback.value, Failback::Immediate);
    assert_eq!(s.failback.origin, o(11));
    assert_eq!(s.path_checker.value, CheckerKind::Tur);
    assert_eq!(s.path_checker.origin, o(14));
    assert_eq!(
        s.getuid_callout,
        Some(Setting {
            value: "/sbin/scsi_id -g -u -s /block/%n".into(),
            origin: o(8)
        })
    );
    assert_eq!(s.no_path_retry, Setting::builtin(NoPathRetry::Fail));
    assert_eq!(s.prio, Setting::builtin("const".to_string()));
    assert_eq!(s.checker_timeout, Setting::builtin(None));
    assert!(s.user_friendly_names.value);
    assert_eq!(s.user_friendly_names.origin, defaults(2));
    assert_eq!(s.alias, None);
    assert_eq!(
        s.rr_min_io.origin.to_string(),
        "(setting: storage device configuration, multipath.conf:13, vendor \"OSNEXUS\" product \"QUANTASTOR\")"
    );
}

#[test]
fn bare_config_uses_builtin_defaults() {
    for c in [ok(""), ok("# nothing\n\n"), Config::default()] {
        assert!(c.warnings().is_empty());
        assert_eq!(c.polling_interval(), 5);
        assert_eq!(c.max_polling_interval(), 20);
        assert_eq!(c.verbosity(), 2);
        let s = c.resolve(&id("OSNEXUS", "QUANTASTOR", "0001", "w"));
        assert_eq!(
            s.path_grouping_policy,
            Setting::builtin(GroupingPolicy::Failover)
        );
        assert_eq!(s.path_selector, Setting::builtin(SelectorKind::ServiceTime));
        assert_eq!(s.rr_min_io, Setting::builtin(1000));
        assert_eq!(s.rr_min_io_rq, Setting::builtin(1));
        assert_eq!(s.repeat_count, Setting::builtin(1));
        assert_eq!(s.rr_weight, Setting::builtin(RrWeight::Uniform));
        assert_eq!(s.failback, Setting::builtin(Failback::Manual));
        assert_eq!(s.path_checker, Setting::builtin(CheckerKind::Tur));
        assert_eq!(s.no_path_retry, Setting::builtin(NoPathRetry::Fail));
        assert_eq!(s.prio, Setting::builtin("const".to_string()));
        assert_eq!(s.features, Setting::builtin("0".to_string()));
        assert_eq!(s.alias_prefix, Setting::builtin("mpath".to_string()));
        assert_eq!(s.getuid_callout, None);
        assert_eq!(
            s.repeat_count.origin.to_string(),
            "(setting: multipath internal)"
        );
    }
}

const PRECEDENCE: &str = r#"defaults {
    failback 10
    path_grouping_policy group_by_serial
    rr_weight priorities
    no_path_retry 5
}
devices {
    device {
        vendor "ACME"
        product "Box"
        failback 20
        path_grouping_policy group_by_prio
        rr_weight uniform
    }
}
overrides {
    failback 30
    path_grouping_policy multibus
}
multipaths {
    multipath {
        wwid "3600a"
        alias "data"
        failback immediate
    }
}
"#;

#[test]
fn precedence_with_origins() {
    let c = ok(PRECEDENCE);
    let s = c.resolve(&id("ACME", "Box", "1", "3600a"));
    assert_eq!(
        s.failback,
        Setting {
            value: Failback::Immediate,
            origin: multipath(24)
        }
    );
    assert_eq!(
        s.path_grouping_policy,
        Setting {
            value: GroupingPolicy::Multibus,
            origin: overrides(18)
        }
    );
    assert_eq!(
        s.rr_weight,
        Setting {
            value: RrWeight::Uniform,
            origin: dev(13, "ACME", "Box")
        }
    );
    assert_eq!(
        s.no_path_retry,
        Setting {
            value: NoPathRetry::Retries(5),
            origin: defaults(5)
        }
    );
    assert_eq!(s.path_selector, Setting::builtin(SelectorKind::ServiceTime));
    assert_eq!(
        s.alias,
        Some(Setting {
            value: "data".into(),
            origin: multipath(23)
        })
    );

    // Another WWID: no multipaths entry, overrides win.
    let s = c.resolve(&id("ACME", "Box", "1", "3600b"));
    assert_eq!(
        s.failback,
        Setting {
            value: Failback::DeferredSecs(30),
            origin: overrides(17)
        }
    );
    assert_eq!(s.alias, None);

    // Another device: the device entry does not apply.
    let s = c.resolve(&id("OTHER", "Thing", "1", "3600b"));
    assert_eq!(
        s.rr_weight,
        Setting {
            value: RrWeight::Priorities,
            origin: defaults(4)
        }
    );

    // Generic lookup agrees.
    let (a, o) = c
        .lookup(&id("ACME", "Box", "1", "3600a"), "failback")
        .unwrap();
    assert_eq!(a.text, "immediate");
    assert_eq!(o, multipath(24));
    assert!(c
        .lookup(&id("ACME", "Box", "1", "3600a"), "path_selector")
        .is_none());
    assert_eq!(
        multipath(24).to_string(),
        "(setting: multipath.conf multipaths section, multipath.conf:24)"
    );
    assert_eq!(
        overrides(17).to_string(),
        "(setting: multipath.conf overrides section, multipath.conf:17)"
    );
    assert_eq!(
        defaults(4).to_string(),
        "(setting: multipath.conf defaults section, multipath.conf:4)"
    );
}

#[test]
fn repeat_count_rule() {
    let rc = |text: &str| {
        let c = ok(text);
        c.resolve(&id("V", "P", "R", "W")).repeat_count
    };
    // rr_min_io only in defaults, rr_min_io_rq in a device entry: rq is
    // stronger.
    let s = rc("defaults {\n rr_min_io 500\n}\ndevices {\n device {\n  vendor V\n  product P\n  rr_min_io_rq 10\n }\n}\n");
    assert_eq!(
        s,
        Setting {
            value: 10,
            origin: dev(8, "V", "P")
        }
    );
    // rr_min_io in a device entry beats rr_min_io_rq in defaults.
    let s = rc("defaults {\n rr_min_io_rq 3\n}\ndevices {\n device {\n  vendor V\n  product P\n  rr_min_io 50\n }\n}\n");
    assert_eq!(
        s,
        Setting {
            value: 50,
            origin: dev(8, "V", "P")
        }
    );
    // Same entry sets both: rr_min_io (equal precedence).
    let s = rc(
        "devices {\n device {\n  vendor V\n  product P\n  rr_min_io_rq 9\n  rr_min_io 7\n }\n}\n",
    );
    assert_eq!(s.value, 7);
    // Same level (defaults): rr_min_io.
    assert_eq!(
        rc("defaults {\n rr_min_io 8\n rr_min_io_rq 2\n}\n").value,
        8
    );
    // multipaths rr_min_io_rq beats overrides rr_min_io.
    let s = rc("overrides {\n rr_min_io 8\n}\nmultipaths {\n multipath {\n  wwid W\n  rr_min_io_rq 4\n }\n}\n");
    assert_eq!(
        s,
        Setting {
            value: 4,
            origin: multipath(7)
        }
    );
    // Two matching device entries: the later one is stronger.
    let s = rc("devices {\n device {\n  vendor V\n  product P\n  rr_min_io 20\n }\n device {\n  vendor V\n  product .\n  rr_min_io_rq 30\n }\n}\n");
    assert_eq!(s.value, 30);
    let s = rc("devices {\n device {\n  vendor V\n  product .\n  rr_min_io_rq 30\n }\n device {\n  vendor V\n  product P\n  rr_min_io 20\n }\n}\n");
    assert_eq!(s.value, 20);
    // Only rr_min_io_rq set: it is used.
    assert_eq!(rc("defaults {\n rr_min_io_rq 6\n}\n").value, 6);
    // rr_min_io 1000 in defaults is the default as multipath -t prints
    // it: not counted as set.
    assert_eq!(
        rc("defaults {\n rr_min_io 1000\n rr_min_io_rq 1\n}\n").value,
        1
    );
}

#[test]
fn regex_matching_unanchored_case_sensitive() {
    let c = ok(r#"devices {
    device {
        vendor "NEX"
        product "^QUANTA"
        failback 11
    }
    device {
        vendor "OSNEXUS"
        product "STOR$"
        revision "^00"
        rr_weight priorities
    }
}
"#);
    let s = c.resolve(&id("OSNEXUS", "QUANTASTOR", "0001", "w"));
    assert_eq!(s.failback.value, Failback::DeferredSecs(11));
    assert_eq!(s.rr_weight.value, RrWeight::Priorities);
    // Revision does not match.
    let s = c.resolve(&id("OSNEXUS", "QUANTASTOR", "1000", "w"));
    assert_eq!(s.failback.value, Failback::DeferredSecs(11));
    assert_eq!(s.rr_weight.origin, Origin::Builtin);
    // Case sensitive.
    let s = c.resolve(&id("osnexus", "quantastor", "0001", "w"));
    assert_eq!(s.failback.origin, Origin::Builtin);
    // Anchor respected.
    let s = c.resolve(&id("OSNEXUS", "XQUANTASTOR", "0001", "w"));
    assert_eq!(s.failback.origin, Origin::Builtin);
    assert_eq!(
        c.matching_devices(&id("OSNEXUS", "QUANTASTOR", "0001", "w"))
            .len(),
        2
    );
}

#[test]
fn later_entries_win_attribute_by_attribute() {
    let c = ok(r#"devices {
    device {
        vendor "ACME"
        product ".*"
        failback 11
        rr_weight priorities
    }
    device {
        vendor "AC"
        product "Box"
        failback immediate
    }
}
"#);
    let s = c.resolve(&id("ACME", "Box", "", "w"));
    assert_eq!(
        s.failback,
        Setting {
            value: Failback::Immediate,
            origin: dev(11, "AC", "Box")
        }
    );
    assert_eq!(
        s.rr_weight,
        Setting {
            value: RrWeight::Priorities,
            origin: dev(6, "ACME", ".*")
        }
    );
}

#[test]
fn user_entries_before_builtin_ones() {
    // Built-in: HITACHI ^DF (group_by_prio, prio hds, failback immediate,
    // no_path_retry queue), then HITACHI ^DF600F (multibus).
    let c =
        ok("devices {\n device {\n  vendor HITACHI\n  product DF600\n  failback manual\n }\n}\n");
    let s = c.resolve(&id("HITACHI", "DF600F", "", "w"));
    assert_eq!(
        s.failback,
        Setting {
            value: Failback::Manual,
            origin: dev(5, "HITACHI", "DF600")
        }
    );
    let builtin = |product: &str| Origin::Device {
        file: hwtable::BUILTIN_HWTABLE_FILE.into(),
        line: 0,
        vendor: "HITACHI".into(),
        product: product.into(),
        builtin: true,
    };
    assert_eq!(
        s.path_grouping_policy,
        Setting {
            value: GroupingPolicy::Multibus,
            origin: builtin("^DF600F")
        }
    );
    assert_eq!(
        s.prio,
        Setting {
            value: "hds".into(),
            origin: builtin("^DF")
        }
    );
    assert_eq!(
        s.no_path_retry,
        Setting {
            value: NoPathRetry::Queue,
            origin: builtin("^DF")
        }
    );
    assert_eq!(
        builtin("^DF").to_string(),
        "(setting: storage device configuration, built-in hwtable entry vendor \"HITACHI\" product \"^DF\")"
    );
    // Only the built-in ^DF entry matches DF400.
    let s = c.resolve(&id("HITACHI", "DF400", "", "w"));
    assert_eq!(s.path_grouping_policy.value, GroupingPolicy::GroupByPrio);
    // A user defaults entry is weaker than a built-in device entry.
    let c = ok("defaults {\n failback 5\n}\n");
    let s = c.resolve(&id("HITACHI", "DF400", "", "w"));
    assert_eq!(s.failback.value, Failback::Immediate);
}

#[test]
fn identical_device_entries_are_merged() {
    let c = ok(r#"devices {
    device {
        vendor "ACME"
        product "Box"
        failback 11
        rr_weight priorities
    }
    device {
        vendor "ACME"
        product "Box"
        failback immediate
    }
}
"#);
    assert_eq!(c.devices().len(), 1);
    let w = warnings(&c);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, 8);
    assert!(
        w[0].1.contains("duplicate device entry") && w[0].1.contains("multipath.conf:2"),
        "{w:?}"
    );
    let s = c.resolve(&id("ACME", "Box", "", "w"));
    assert_eq!(s.failback.origin, dev(11, "ACME", "Box"));
    assert_eq!(s.rr_weight.origin, dev(6, "ACME", "Box"));
    // Different revision strings are not merged.
    let c = ok("devices {\n device {\n  vendor A\n  product B\n  revision 1\n }\n device {\n  vendor A\n  product B\n }\n}\n");
    assert_eq!(c.devices().len(), 2);
}

#[test]
fn device_entry_without_vendor_or_product_is_dropped() {
    let c = ok("devices {\n device {\n  vendor A\n  failback immediate\n }\n}\n");
    assert!(c.devices().is_empty());
    let w = warnings(&c);
    assert_eq!(
        w,
        vec![(
            2,
            "device entry without product is ignored (as multipath-tools does)".to_string()
        )]
    );
}

#[test]
fn invalid_regex_is_an_error_with_line() {
    let e = err("devices {\n device {\n  vendor \"AC(ME\"\n  product X\n }\n}\n");
    let es = errors(&e);
    assert_eq!(es.len(), 1, "{es:?}");
    assert_eq!(es[0].0, 3);
    assert!(
        es[0].1.starts_with("invalid regular expression \"AC(ME\""),
        "{es:?}"
    );
    assert!(e
        .to_string()
        .starts_with("multipath.conf:3: error: invalid regular expression"));
}

#[test]
fn unknown_keywords_are_warnings_with_line() {
    let c = ok("defaults {\n  verbosity 3\n  frobnicate yes\n}\nfoo {\n  bar 1\n}\ndevices {\n device {\n  vendor A\n  product B\n  colour blue\n }\n}\n");
    let w = warnings(&c);
    assert_eq!(
        w,
        vec![
            (
                3,
                "unknown keyword 'frobnicate' in section 'defaults'; ignored".to_string()
            ),
            (5, "unknown section 'foo'; ignored".to_string()),
            (
                12,
                "unknown keyword 'colour' in section 'devices/device'; ignored".to_string()
            ),
        ]
    );
    assert_eq!(c.verbosity(), 3);
    assert_eq!(
        c.warnings()[0].to_string(),
        "multipath.conf:3: warning: unknown keyword 'frobnicate' in section 'defaults'; ignored"
    );
}

#[test]
fn keyword_in_wrong_section() {
    let c = ok("multipaths {\n multipath {\n  wwid W\n  path_checker tur\n }\n}\ndefaults {\n alias x\n}\n");
    let w = warnings(&c);
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[0].0, 4);
    assert!(
        w[0].1
            .contains("not valid in section 'multipaths/multipath'"),
        "{w:?}"
    );
    assert_eq!(w[1].0, 8);
    // The misplaced keyword is not used.
    let s = c.resolve(&id("", "", "", "W"));
    assert_eq!(s.path_checker.origin, Origin::Builtin);
}

#[test]
fn duplicates() {
    let c = ok("defaults {\n rr_min_io 10\n rr_min_io 20\n checker tur\n path_checker directio\n}\ndefaults {\n polling_interval 7\n}\n");
    let w = warnings(&c);
    assert_eq!(w.len(), 3, "{w:?}");
    assert_eq!(w[0].0, 3);
    assert!(
        w[0].1.contains("duplicate keyword 'rr_min_io'") && w[0].1.contains("multipath.conf:2")
    );
    assert_eq!(w[1].0, 5);
    assert!(w[1].1.contains("duplicate keyword 'path_checker'"));
    assert_eq!(w[2].0, 7);
    assert!(w[2].1.contains("duplicate section 'defaults'"));
    let s = c.resolve(&id("", "", "", ""));
    assert_eq!(
        s.rr_min_io,
        Setting {
            value: 20,
            origin: defaults(3)
        }
    );
    assert_eq!(
        s.path_checker,
        Setting {
            value: CheckerKind::Directio,
            origin: defaults(5)
        }
    );
    assert_eq!(c.polling_interval(), 7);
}

#[test]
fn invalid_values_are_errors() {
    let e = err(
        "defaults {\n rr_min_io abc\n failback sometimes\n path_grouping_policy foo\n verbosity 9\n polling_interval 0\n path_selector \"round-robin 2\"\n no_path_retry never\n rr_weight heavy\n path_checker bogus\n user_friendly_names maybe\n}\n",
    );
    let es = errors(&e);
    let lines: Vec<u32> = es.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, (2..=11).collect::<Vec<u32>>(), "{es:?}");
    assert_eq!(
        es[0].1,
        "invalid value 'abc' for 'rr_min_io': expected an integer between 1 and 2147483647"
    );
    assert!(es[1].1.contains("'sometimes' for 'failback'"), "{es:?}");
    assert!(
        es[2].1.contains("'foo' for 'path_grouping_policy'") && es[2].1.contains("group_by_tpg")
    );
    assert_eq!(
        es[3].1,
        "value 9 is out of range: 'verbosity' must be between 0 and 6"
    );
    assert!(es[4].1.contains("out of range"));
    let text = e.to_string();
    assert_eq!(text.lines().count(), 10);
    assert!(text.lines().all(|l| l.starts_with("multipath.conf:")));
}

#[test]
fn syntax_errors_fail_loading() {
    let e = err("defaults {\n verbosity 2\n");
    assert_eq!(
        errors(&e),
        vec![(
            1,
            "section 'defaults' is not closed (missing '}')".to_string()
        )]
    );
    let e = err("}\n");
    assert_eq!(errors(&e)[0].0, 1);
    let e = err("defaults {\n prio \"const\n}\n");
    assert_eq!(errors(&e)[0].0, 2);
}

#[test]
fn paths_section_validation() {
    let e = err(r#"paths {
    path {
        file /a
        wwid w
    }
    path {
        name p1
        file /b
        vendor V
        product P
    }
    path {
        name p2
        wwid w
        vendor V
        product P
    }
    path {
        name p3
        transport fc
        wwid w
        vendor V
        product P
    }
    path {
        name p4
        file /c
        wwid w
        vendor V
        product P
    }
    path {
        name p4
        file /d
        wwid w
        vendor V
        product P
    }
}
"#);
    assert_eq!(
        errors(&e),
        vec![
            (2, "path entry has no 'name'".to_string()),
            (6, "path 'p1' has no 'wwid'".to_string()),
            (
                12,
                "path 'p2' uses transport 'file' but has no 'file'".to_string()
            ),
            (
                20,
                "unknown transport 'fc' for path 'p3' (known transports: file, nbd, iscsi)"
                    .to_string()
            ),
            (
                33,
                "duplicate path name 'p4' (first declared at multipath.conf:25)".to_string()
            ),
        ]
    );
}

#[test]
fn paths_defaults_and_extra_keys() {
    let c = ok("paths {\n path {\n  name p0\n  file /x\n  wwid w\n  uri nbd://host/x\n }\n}\n");
    let p = &c.paths()[0];
    assert_eq!(
        (
            p.vendor.as_str(),
            p.product.as_str(),
            p.revision.as_str(),
            p.serial.as_str()
        ),
        ("", "", "", "")
    );
    assert_eq!(p.transport, "file");
    assert_eq!(p.extra["uri"].0, "nbd://host/x");
    assert_eq!(p.extra["uri"].1.line, 6);
    let w = warnings(&c);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w.iter().any(|(l, m)| *l == 2 && m.contains("no 'vendor'")));
    assert!(w.iter().any(|(l, m)| *l == 2 && m.contains("no 'product'")));
    assert!(w
        .iter()
        .any(|(l, m)| *l == 6 && m.contains("'uri'") && m.contains("transport 'file'")));
}

#[test]
fn blacklist_applies_to_declared_paths() {
    let text = r#"blacklist {
    devnode "^loop"
    wwid "^3600dead"
    device {
        vendor "ACME"
        product "Ctl"
    }
}
blacklist_exceptions {
    wwid "^3600deadbeef"
}
paths {
    path {
        name p0
        file /x
        vendor ACME
        product Box
        wwid 3600dead01
    }
}
"#;
    let c = ok(text);
    assert_eq!(c.blacklist().devnode.len(), 1);
    assert_eq!(c.blacklist().devnode[0].span.line, 2);
    let r = c.blacklisted(&id("ACME", "Box", "", "3600dead01")).unwrap();
    assert_eq!(
        r,
        "blacklisted by blacklist wwid \"^3600dead\" at multipath.conf:3"
    );
    // The load warns about the declared path.
    let w = warnings(&c);
    assert!(
        w.iter()
            .any(|(l, m)| *l == 13 && m.contains("path 'p0' is blacklisted by blacklist wwid")),
        "{w:?}"
    );
    // Exception wins over blacklist for the same criterion.
    assert!(c
        .blacklisted(&id("ACME", "Box", "", "3600deadbeef"))
        .is_none());
    // Device entry.
    let r = c.blacklisted(&id("ACME", "Ctl", "", "3600aa")).unwrap();
    assert_eq!(r, "blacklisted by blacklist device entry at multipath.conf:4 (vendor \"ACME\" product \"Ctl\")");
    // Built-in blacklist device entry.
    let r = c
        .blacklisted(&id("SGI", "Universal Xport", "", "x"))
        .unwrap();
    assert_eq!(
        r,
        "blacklisted by product_blacklist \"Universal Xport\" (vendor \"SGI\") of a built-in hwtable entry"
    );
    // Not blacklisted.
    assert!(c.blacklisted(&id("ACME", "Box", "", "3600aa")).is_none());
}

#[test]
fn blacklist_negation_exceptions_and_product_blacklist() {
    let c = ok(r#"blacklist {
    wwid "!^3600"
}
blacklist_exceptions {
    device {
        vendor "SGI"
    }
}
devices {
    device {
        vendor "ACME"
        product "Box"
        product_blacklist "Ctl"
    }
}
"#);
    assert!(c.blacklisted(&id("X", "Y", "", "3600a")).is_none());
    assert!(c
        .blacklisted(&id("X", "Y", "", "2500a"))
        .unwrap()
        .contains("\"!^3600\""));
    // Excepted device: the built-in blacklist device entry does not apply.
    assert!(c
        .blacklisted(&id("SGI", "Universal Xport", "", "3600a"))
        .is_none());
    let r = c.blacklisted(&id("ACME", "Ctl", "", "3600a")).unwrap();
    assert_eq!(
        r,
        "blacklisted by product_blacklist \"Ctl\" (vendor \"ACME\") of the device entry at multipath.conf:13"
    );
}

#[test]
fn features_queue_if_no_path_means_queue() {
    let c = ok(
        "devices {\n device {\n  vendor V\n  product P\n  features \"1 queue_if_no_path\"\n }\n}\n",
    );
    let s = c.resolve(&id("V", "P", "", "w"));
    assert_eq!(
        s.no_path_retry,
        Setting {
            value: NoPathRetry::Queue,
            origin: dev(5, "V", "P")
        }
    );
    // An explicit no_path_retry wins.
    let c = ok("defaults {\n no_path_retry 3\n}\ndevices {\n device {\n  vendor V\n  product P\n  features \"1 queue_if_no_path\"\n }\n}\n");
    let s = c.resolve(&id("V", "P", "", "w"));
    assert_eq!(
        s.no_path_retry,
        Setting {
            value: NoPathRetry::Retries(3),
            origin: defaults(2)
        }
    );
}

#[test]
fn polling_intervals() {
    let c = ok("defaults {\n max_polling_interval 40\n}\n");
    assert_eq!((c.polling_interval(), c.max_polling_interval()), (10, 40));
    let c = ok("defaults {\n polling_interval 7\n}\n");
    assert_eq!((c.polling_interval(), c.max_polling_interval()), (7, 28));
    let c = ok("defaults {\n polling_interval 10\n max_polling_interval 5\n}\n");
    assert_eq!((c.polling_interval(), c.max_polling_interval()), (5, 5));
    assert_eq!(warnings(&c).len(), 1);
    assert_eq!(warnings(&c)[0].0, 3);
    let c = ok("defaults {\n max_polling_interval 2\n}\n");
    assert_eq!((c.polling_interval(), c.max_polling_interval()), (1, 2));
}

#[test]
fn checker_timeout_and_alias_spelling() {
    let c = ok("defaults {\n checker_timeout 30\n checker directio\n}\n");
    let s = c.resolve(&id("", "", "", ""));
    assert_eq!(
        s.checker_timeout,
        Setting {
            value: Some(30),
            origin: defaults(2)
        }
    );
    assert_eq!(
        s.path_checker,
        Setting {
            value: CheckerKind::Directio,
            origin: defaults(3)
        }
    );
    let c = ok("defaults {\n checker_timeout 0\n}\n");
    assert_eq!(c.resolve(&id("", "", "", "")).checker_timeout.value, None);
}

#[test]
fn hardware_checker_is_accepted_as_tur() {
    let c = ok("defaults {\n path_checker rdac\n}\noverrides {\n path_checker rdac\n}\n");
    assert_eq!(
        c.resolve(&id("", "", "", "")).path_checker.value,
        CheckerKind::Tur
    );
    let w = warnings(&c);
    assert_eq!(w.len(), 1);
    assert!(w[0].1.contains("'rdac'"));
}

#[test]
fn no_effect_keywords_are_reported_once() {
    let c = ok("defaults {\n dev_loss_tmo 600\n fast_io_fail_tmo 5\n}\ndevices {\n device {\n  vendor V\n  product P\n  dev_loss_tmo infinity\n  hardware_handler \"1 alua\"\n }\n}\n");
    let w = warnings(&c);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].1.contains("'dev_loss_tmo' has no effect"));
    assert!(w[1].1.contains("'fast_io_fail_tmo' has no effect"));
    assert!(w[2].1.contains("'hardware_handler' has no effect"));
    // The values are still recorded.
    let (a, _) = c.lookup(&id("V", "P", "", ""), "dev_loss_tmo").unwrap();
    assert_eq!(a.value, Typed::Word("infinity".into()));
}

#[test]
fn multipaths_entries() {
    let e = err("multipaths {\n multipath {\n  wwid a\n  alias db\n }\n multipath {\n  wwid b\n  alias db\n }\n}\n");
    assert_eq!(
        errors(&e),
        vec![(
            8,
            "alias 'db' for wwid \"b\" is already used for wwid \"a\" at multipath.conf:4"
                .to_string()
        )]
    );
    let c = ok("multipaths {\n multipath {\n  alias x\n }\n multipath {\n  wwid a\n  alias one\n  failback 3\n }\n multipath {\n  wwid a\n  alias two\n }\n}\n");
    let w = warnings(&c);
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(w[0].0, 2);
    assert!(w[0].1.contains("without 'wwid'"));
    assert_eq!(w[1].0, 10);
    assert_eq!(c.multipaths().len(), 1);
    let s = c.resolve(&id("", "", "", "a"));
    assert_eq!(
        s.alias,
        Some(Setting {
            value: "two".into(),
            origin: multipath(12)
        })
    );
    assert_eq!(
        s.failback,
        Setting {
            value: Failback::DeferredSecs(3),
            origin: multipath(8)
        }
    );
}

#[test]
fn overrides_protocol_is_recorded() {
    let c = ok("overrides {\n failback immediate\n protocol {\n  type \"scsi:fcp\"\n  dev_loss_tmo 60\n }\n}\n");
    assert_eq!(c.protocols().len(), 1);
    assert_eq!(c.protocols()[0].protocol_type.as_deref(), Some("scsi:fcp"));
    assert_eq!(c.overrides()["failback"].span.line, 2);
}

/// A typical vendor-style configuration (keywords as `multipath -t`
/// prints them) produces no "unknown keyword" or "not valid" warnings.
#[test]
fn typical_configuration_has_no_unknown_keywords() {
    let c = ok(r#"defaults {
	verbosity 2
	polling_interval 5
	max_polling_interval 20
	reassign_maps "no"
	path_selector "service-time 0"
	path_grouping_policy "failover"
	uid_attribute "ID_SERIAL"
	prio "const"
	prio_args ""
	features "0"
	path_checker "tur"
	alias_prefix "mpath"
	failback "manual"
	rr_min_io 1000
	rr_min_io_rq 1
	max_fds "max"
	rr_weight "uniform"
	queue_without_daemon "no"
	allow_usb_devices "no"
	flush_on_last_del "no"
	user_friendly_names "no"
	fast_io_fail_tmo 5
	log_checker_err "always"
	all_tg_pt "no"
	retain_attached_hw_handler "yes"
	detect_prio "yes"
	detect_checker "yes"
	force_sync "yes"
	strict_timing "no"
	deferred_remove "no"
	delay_watch_checks "no"
	san_path_err_threshold "no"
	marginal_path_err_sample_time "no"
	find_multipaths "strict"
	uxsock_timeout 4000
	retrigger_tries 0
	retrigger_delay 10
	missing_uev_wait_timeout 30
	skip_kpartx "no"
	remove_retries 0
	ghost_delay "no"
	find_multipaths_timeout -10
	enable_foreign "NONE"
	marginal_pathgroups "off"
	recheck_wwid "no"
}
blacklist {
	devnode "!^(sd[a-z]|dasd[a-z]|nvme[0-9])"
	device {
		vendor "SGI"
		product "Universal Xport"
	}
}
blacklist_exceptions {
	property "(SCSI_IDENT_|ID_WWN)"
}
devices {
	device {
		vendor "3PARdata"
		product "VV"
		path_grouping_policy "group_by_prio"
		hardware_handler "1 alua"
		prio "alua"
		failback "immediate"
		no_path_retry 18
		fast_io_fail_tmo 10
		dev_loss_tmo "infinity"
		vpd_vendor "hp3par"
	}
	device {
		vendor "DELL"
		product "^MD3"
		product_blacklist "Universal Xport"
		path_checker "rdac"
		features "2 pg_init_retries 50"
	}
}
overrides {
}
"#);
    for d in c.warnings() {
        assert!(
            !d.message.contains("unknown") && !d.message.contains("not valid"),
            "{d}"
        );
    }
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.conf");
    let e = load(&missing).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}: error: cannot read: ", missing.display())),
        "{text}"
    );
    assert!(text.contains("No such file or directory"), "{text}");

    let e = load(dir.path()).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");

    let big = dir.path().join("big.conf");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_FILE_SIZE + 1).unwrap();
    let e = load(&big).unwrap_err();
    assert!(e.to_string().contains("file too large"), "{e}");

    let good = dir.path().join("multipath.conf");
    std::fs::write(&good, QUANTASTOR).unwrap();
    let c = load(&good).unwrap();
    assert_eq!(c.file(), good.display().to_string());
    assert_eq!(c.paths().len(), 2);
    let s = c.resolve(&c.paths()[0].identity());
    match &s.repeat_count.origin {
        Origin::Device { file, line, .. } => {
            assert_eq!(file, &good.display().to_string());
            assert_eq!(*line, 13);
        }
        o => panic!("{o:?}"),
    }

    // A FIFO is refused without blocking.
    let fifo = dir.path().join("fifo.conf");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let e = load(&fifo).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");

    // Non-UTF-8 bytes in a comment are harmless.
    let latin1 = dir.path().join("latin1.conf");
    std::fs::write(&latin1, b"# M\xfcller\ndefaults {\n verbosity 3\n}\n").unwrap();
    assert_eq!(load(&latin1).unwrap().verbosity(), 3);
}

#[test]
fn parse_str_size_cap() {
    let text = " ".repeat(MAX_FILE_SIZE as usize + 1);
    let e = parse_str(&text, "x").unwrap_err();
    assert_eq!(
        e.to_string(),
        "x: error: file too large (16777217 bytes; the limit is 16 MiB)"
    );
}

#[test]
fn many_entries_merge_in_order() {
    let mut t = String::from("devices {\n");
    for i in 0..3000 {
        t.push_str(&format!(
            " device {{\n  vendor V{}\n  product P\n  rr_min_io {}\n }}\n",
            i % 7,
            i + 1
        ));
    }
    t.push_str("}\nmultipaths {\n");
    for i in 0..3000 {
        t.push_str(&format!(
            " multipath {{\n  wwid w{}\n  rr_min_io {}\n }}\n",
            i % 5,
            i + 1
        ));
    }
    t.push_str("}\n");
    let c = ok(&t);
    // 7 distinct device strings, ordered by their last occurrence.
    let vendors: Vec<&str> = c.devices().iter().map(|d| d.vendor.as_str()).collect();
    assert_eq!(vendors, ["V4", "V5", "V6", "V0", "V1", "V2", "V3"]);
    assert_eq!(c.multipaths().len(), 5);
    assert_eq!(c.resolve(&id("V2", "P", "", "x")).rr_min_io.value, 2999);
    assert_eq!(c.resolve(&id("", "", "", "w4")).rr_min_io.value, 3000);
    // Warnings are capped, with a final count.
    let last = c.warnings().last().unwrap();
    assert_eq!(last.line, 0);
    assert!(last.message.ends_with("more warnings not shown"), "{last}");
}

#[test]
fn config_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Config>();
    assert_send_sync::<PathSettings>();
    assert_send_sync::<ConfigError>();
}

#[test]
fn blacklist_devnode_for_kernel_devices() {
    let c = ok(r#"blacklist {
    devnode "^sd[a]$"
}
blacklist_exceptions {
    devnode "^sr0$"
}
"#);
    let i = id("OSNEXUS", "QUANTASTOR", "", "35000c50015ea71ac");
    assert!(c.blacklisted_dev(&i, Some("sdb")).is_none());
    assert_eq!(
        c.blacklisted_dev(&i, Some("sda")).unwrap(),
        "blacklisted by blacklist devnode \"^sd[a]$\" at multipath.conf:2"
    );
    // The built-in devnode entry keeps out everything but sd/dasd/nvme.
    let r = c.blacklisted_dev(&i, Some("loop0")).unwrap();
    assert!(r.contains("built-in blacklist devnode"), "{r}");
    // An exception beats the built-in entry.
    assert!(c.blacklisted_dev(&i, Some("sr0")).is_none());
    // Without a device node (declared paths), devnode rules do not apply.
    assert!(c.blacklisted_dev(&i, None).is_none());
    assert!(c.blacklisted(&i).is_none());
    // Device and wwid rules still apply to kernel devices.
    let sgi = id("SGI", "Universal Xport", "", "x");
    assert!(c.blacklisted_dev(&sgi, Some("sdc")).is_some());
}

/// Every diagnostic the loader produces, each from a small file: (text,
/// line, is_error, part of the message).
#[test]
fn every_diagnostic_has_file_line_and_a_plain_message() {
    let cases: &[(&str, u32, bool, &str)] = &[
        // Lexer and parser.
        ("defaults {\n prio \"a\u{1}b\"\n}\n", 2, true, "control character U+0001 in quoted string"),
        ("defaults {\n prio \"const\n}\n", 2, true, "unterminated quoted string"),
        ("defaults {\n \u{7f}x 1\n}\n", 2, true, "unexpected character U+007F outside quotes"),
        ("defaults {\n} x\n", 2, true, "after '}' (a closing brace must be alone on its line)"),
        ("defaults {\n{\n}\n}\n", 2, true, "unexpected '{' (an opening brace must follow a section name"),
        ("\"x\" y\n", 1, true, "expected a keyword at the start of the line, found quoted string \"x\""),
        ("devices\n", 1, true, "missing '{' after section name 'devices'"),
        ("defaults {\n verbosity\n}\n", 2, true, "missing value for keyword 'verbosity'"),
        ("defaults { verbosity 2\n}\n", 1, true, "unexpected 'verbosity' after '{'"),
        ("defaults {\n prio }\n}\n", 2, true, "unexpected '}' after 'prio'"),
        ("devices foo\n", 1, true, "expected '{' after section name 'devices', found 'foo'"),
        ("defaults {\n", 1, true, "section 'defaults' is not closed (missing '}')"),
        ("}\n", 1, true, "unmatched '}' (no section is open)"),
        ("defaults {\n path_selector round-robin 0\n}\n", 2, false, "ignoring extra data starting with '0'"),
        ("defaults {\n prio const {\n}\n", 2, true, "unexpected '{' after the value of 'prio'"),
        // Keywords and values.
        ("defaults {\n vendor X\n}\n", 2, false, "keyword 'vendor' is not valid in section 'defaults'"),
        ("defaults {\n frobnicate 1\n}\n", 2, false, "unknown keyword 'frobnicate' in section 'defaults'"),
        ("defaults {\n verbosity 2\n verbosity 3\n}\n", 3, false, "duplicate keyword 'verbosity' in section 'defaults'"),
        ("defaults {\n}\ndefaults {\n}\n", 3, false, "duplicate section 'defaults' (first at multipath.conf:1)"),
        ("defaults {\n verbosity 9\n}\n", 2, true, "value 9 is out of range: 'verbosity' must be between 0 and 6"),
        ("defaults {\n rr_min_io 99999999999999999999\n}\n", 2, true, "out of range"),
        ("defaults {\n failback sometimes\n}\n", 2, true, "invalid value 'sometimes' for 'failback'"),
        ("defaults {\n user_friendly_names maybe\n}\n", 2, true, "expected yes or no"),
        ("devices {\n device {\n  vendor \"a(b\"\n  product X\n }\n}\n", 3, true, "invalid regular expression \"a(b\""),
        ("defaults {\n features \"2 queue_if_no_path\"\n}\n", 2, false, "announces 2 words but has 1"),
        ("defaults {\n path_checker rdac\n}\n", 2, false, "hardware specific"),
        ("defaults {\n prio nonsense\n}\n", 2, false, "unknown prioritizer 'nonsense'"),
        ("defaults {\n prio rdac\n}\n", 2, false, "prioritizer 'rdac' is not implemented by umpath"),
        ("defaults {\n prio weightedpath\n prio_args \"devname sd[a 5\"\n}\n", 3, true, "prio_args for 'weightedpath': invalid regular expression 'sd[a'"),
        ("defaults {\n prio weightedpath\n}\n", 2, true, "prio_args for 'weightedpath': missing arguments"),
        ("overrides {\n prio path_latency\n prio_args \"io_num=5 base_num=2\"\n}\n", 3, true, "io_num 5 is out of range (20 to 200)"),
        ("multipaths {\n multipath {\n  wwid 1\n  prio alua\n  prio_args bogus\n }\n}\n", 5, true, "unknown argument 'bogus' (the only one is exclusive_pref_bit)"),
        ("devices {\n device {\n  vendor V\n  product P\n  prio const\n  prio_args 3\n }\n}\n", 6, true, "'const' takes no arguments"),
        ("defaults {\n prio_args exclusive_pref_bit\n}\n", 2, false, "prio_args without prio in the same section is not used"),
        ("defaults {\n reassign_maps yes\n}\n", 2, false, "keyword 'reassign_maps' has no effect in umpath"),
        ("defaults {\n polling_interval 10\n max_polling_interval 5\n}\n", 3, false, "max_polling_interval 5 is smaller than polling_interval 10"),
        // Sections and entries.
        ("blah {\n}\n", 1, false, "unknown section 'blah'; ignored"),
        ("defaults {\n sub {\n }\n}\n", 2, false, "unknown section 'sub' in section 'defaults'"),
        ("defaults {\n prio {\n }\n}\n", 2, false, "'prio' is a keyword, not a section"),
        ("verbosity 2\n", 1, false, "keyword 'verbosity' outside any section"),
        ("frob 2\n", 1, false, "unknown keyword 'frob' outside any section"),
        ("devices {\n prio const\n}\n", 2, false, "put it in a 'device { }' entry"),
        ("overrides {\n protocol {\n  fast_io_fail_tmo 5\n }\n}\n", 2, false, "protocol entry without 'type' is ignored"),
        ("devices {\n device {\n  vendor X\n }\n}\n", 2, false, "device entry without product is ignored"),
        ("devices {\n device {\n  vendor X\n  product Y\n }\n device {\n  vendor X\n  product Y\n }\n}\n", 6, false, "duplicate device entry for vendor \"X\" product \"Y\""),
        ("multipaths {\n multipath {\n  alias a\n }\n}\n", 2, false, "multipath entry without 'wwid' is ignored"),
        ("multipaths {\n multipath {\n  wwid 1\n }\n multipath {\n  wwid 1\n }\n}\n", 5, false, "duplicate multipath entry for wwid \"1\""),
        ("multipaths {\n multipath {\n  wwid 1\n  alias a\n }\n multipath {\n  wwid 2\n  alias a\n }\n}\n", 8, true, "alias 'a' for wwid \"2\" is already used for wwid \"1\""),
        ("blacklist {\n device {\n }\n}\n", 2, false, "blacklist device entry without vendor or product is ignored"),
        // Paths.
        ("paths {\n path {\n  file /x\n  wwid 1\n }\n}\n", 2, true, "path entry has no 'name'"),
        ("paths {\n path {\n  name p\n  transport carrier-pigeon\n  wwid 1\n }\n}\n", 4, true, "unknown transport 'carrier-pigeon'"),
        ("paths {\n path {\n  name p\n  file /x\n }\n}\n", 2, true, "path 'p' has no 'wwid'"),
        ("paths {\n path {\n  name p\n  wwid 1\n }\n}\n", 2, true, "path 'p' uses transport 'file' but has no 'file'"),
        ("paths {\n path {\n  name p\n  file /x\n  wwid 1\n  product P\n }\n}\n", 2, false, "path 'p' has no 'vendor'"),
        ("paths {\n path {\n  name p\n  file /x\n  wwid 1\n  vendor V\n  product P\n }\n path {\n  name p\n  file /y\n  wwid 1\n  vendor V\n  product P\n }\n}\n", 10, true, "duplicate path name 'p'"),
        ("paths {\n path {\n  name p\n  file /x\n  wwid 1\n  vendor V\n  product P\n  colour red\n }\n}\n", 8, false, "unknown keyword 'colour' in section 'paths/path'"),
        ("blacklist {\n wwid ^1\n}\npaths {\n path {\n  name p\n  file /x\n  wwid 1\n  vendor V\n  product P\n }\n}\n", 5, false, "path 'p' is blacklisted by blacklist wwid \"^1\""),
    ];
    let mut failures = Vec::new();
    for (text, line, is_error, part) in cases {
        let diags = match parse_str(text, F) {
            Ok(c) => c.warnings().to_vec(),
            Err(e) => e.diagnostics,
        };
        let hit = diags.iter().any(|d| {
            d.line == *line
                && d.is_error() == *is_error
                && d.file == F
                && d.message.contains(part)
                && d.to_string().starts_with(&format!("{F}:{line}: "))
        });
        if !hit {
            failures.push(format!(
                "{text:?}: expected {part:?} at line {line}, got {diags:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn hostile_inputs_end_in_diagnostics() {
    // Binary junk, deep nesting, a huge line, many errors: diagnostics,
    // capped, never a panic.
    let junk: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let e = parse_str(&String::from_utf8_lossy(&junk), F).unwrap_err();
    assert!(e.diagnostics.len() <= 2 * diag::MAX_DIAGNOSTICS + 2);
    assert!(e
        .diagnostics
        .iter()
        .all(|d| d.line > 0 || d.message.contains("more")));
    let long = format!("defaults {{\n prio \"{}\"\n}}\n", "x".repeat(1 << 20));
    let c = ok(&long);
    assert!(c
        .warnings()
        .iter()
        .any(|w| w.message.contains("unknown prioritizer")));
    let many = "}\n".repeat(10_000);
    let e = parse_str(&many, F).unwrap_err();
    assert!(e.to_string().contains("too many errors"), "{e}");
    // A pathological regex is refused, not compiled forever.
    let e = err("devices {\n device {\n  vendor \"(a{1000}){1000}\"\n  product X\n }\n}\n");
    assert_eq!(errors(&e)[0].0, 3);
}

#[test]
fn conf_d_files_override_and_merge_in_order() {
    let main = "defaults {\n polling_interval 7\n user_friendly_names yes\n}\ndevices {\n device {\n  vendor ACME\n  product Box\n  rr_min_io 10\n  no_path_retry 4\n }\n}\n";
    let a = "defaults {\n user_friendly_names no\n}\ndevices {\n device {\n  vendor ACME\n  product Box\n  rr_min_io 20\n }\n}\n";
    let c = parse_files(&[("main.conf", main), ("conf.d/10-a.conf", a)]).unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert_eq!(c.files(), ["main.conf", "conf.d/10-a.conf"]);
    let s = c.resolve(&id("ACME", "Box", "", "w"));
    assert!(!s.user_friendly_names.value);
    assert_eq!(s.rr_min_io.value, 20);
    assert_eq!(
        s.rr_min_io.origin,
        Origin::Device {
            file: "conf.d/10-a.conf".into(),
            line: 8,
            vendor: "ACME".into(),
            product: "Box".into(),
            builtin: false
        }
    );
    assert_eq!(s.no_path_retry.value, NoPathRetry::Retries(4));
    assert_eq!(c.polling_interval(), 7);
    // Errors in a conf.d file fail the whole, with that file's name.
    let e = parse_files(&[("main.conf", main), ("conf.d/x.conf", "defaults {\n")]).unwrap_err();
    assert_eq!(e.diagnostics[0].file, "conf.d/x.conf");
}

#[test]
fn load_reads_conf_d_alphabetically_and_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("multipath.conf");
    std::fs::write(&main, "defaults {\n verbosity 1\n}\n").unwrap();
    let d = dir.path().join("multipath/conf.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("20-b.conf"), "defaults {\n verbosity 3\n}\n").unwrap();
    std::fs::write(d.join("10-a.conf"), "defaults {\n verbosity 2\n}\n").unwrap();
    std::fs::write(d.join("30-c.txt"), "defaults {\n verbosity 5\n}\n").unwrap();
    let c = load(&main).unwrap();
    assert_eq!(c.verbosity(), 3);
    assert_eq!(c.files().len(), 3);
    assert_eq!(c.config_dir(), d.as_path());
    assert_eq!(
        c.bindings_file(),
        dir.path().join("multipath/bindings").as_path()
    );
    // config_dir points elsewhere.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("a.conf"), "defaults {\n verbosity 6\n}\n").unwrap();
    std::fs::write(
        &main,
        format!("defaults {{\n config_dir \"{}\"\n}}\n", other.display()),
    )
    .unwrap();
    let c = load(&main).unwrap();
    assert_eq!(c.verbosity(), 6);
    // A broken conf.d file is reported with its name and line.
    std::fs::write(other.join("b.conf"), "defaults {\n verbosity 9\n}\n").unwrap();
    let e = load(&main).unwrap_err();
    let b = other.join("b.conf").display().to_string();
    assert!(
        e.to_string()
            .contains(&format!("{b}:2: error: value 9 is out of range")),
        "{e}"
    );
}

#[test]
fn builtin_entry_with_identical_strings_is_folded_into_the_users() {
    // The user's NETAPP/LUN entry takes the built-in one's place in the
    // table: its attributes win, the built-in ones fill the gaps (with
    // their built-in origin), and it is ranked as a user entry.
    let c = ok("devices {\n device {\n  vendor NETAPP\n  product LUN\n  no_path_retry 5\n }\n}\n");
    let n = c
        .hwtable()
        .filter(|d| d.vendor.as_str() == "NETAPP" && d.product.as_str() == "LUN")
        .count();
    assert_eq!(n, 1);
    assert_eq!(c.hwtable().count(), hwtable::BUILTIN_HWTABLE.len());
    let s = c.resolve(&id("NETAPP", "LUN", "", "w"));
    assert_eq!(s.no_path_retry.value, NoPathRetry::Retries(5));
    assert_eq!(s.no_path_retry.origin, dev(5, "NETAPP", "LUN"));
    assert_eq!(s.prio.value, "ontap");
    assert!(
        matches!(s.prio.origin, Origin::Device { builtin: true, .. }),
        "{:?}",
        s.prio.origin
    );
}

#[test]
fn every_builtin_vendor_gets_its_settings_with_no_config() {
    let c = Config::default();
    for e in hwtable::BUILTIN_HWTABLE {
        // A product string the entry's pattern matches: the pattern itself
        // when it is a literal, else skip (regex entries are covered by the
        // oracle tests).
        let literal = |s: &str| !s.contains(['^', '$', '.', '*', '[', '(', '|', '+', '?', '\\']);
        if !literal(e.vendor) || !literal(e.product) {
            continue;
        }
        let s = c.resolve(&id(e.vendor, e.product, "", "w"));
        if let Some((_, v)) = e.attrs.iter().find(|(k, _)| *k == "path_grouping_policy") {
            assert_eq!(
                s.path_grouping_policy.value.as_str(),
                *v,
                "{} {}",
                e.vendor,
                e.product
            );
            assert!(matches!(
                s.path_grouping_policy.origin,
                Origin::Device { builtin: true, .. }
            ));
        }
    }
    // NetApp through its regex-free entry, Pure, 3PAR.
    let s = c.resolve(&id("PURE", "FlashArray", "", "w"));
    assert_eq!(s.path_grouping_policy.value, GroupingPolicy::GroupByPrio);
}

#[test]
fn render_is_reparsed_to_the_same_configuration() {
    let text = format!(
        "defaults {{\n user_friendly_names yes\n polling_interval 3\n}}\nblacklist {{\n wwid \"^36\"\n}}\ndevices {{\n{QUANTASTOR_DEVICE}}}\noverrides {{\n no_path_retry 6\n protocol {{\n  type \"scsi:fcp\"\n  dev_loss_tmo 30\n }}\n}}\nmultipaths {{\n multipath {{\n  wwid 3600b\n  alias \"b x\"\n }}\n}}\n{}",
        "paths {\n path {\n  name p0\n  file /tmp/x\n  vendor OSNEXUS\n  product QUANTASTOR\n  wwid 3600b\n }\n}\n"
    );
    let c = ok(&text);
    let r1 = c.render_multipath_t();
    let c2 = parse_str(&r1, "rendered").unwrap_or_else(|e| panic!("{e}\n{r1}"));
    let r2 = c2.render_multipath_t();
    assert_eq!(r1, r2);
    assert!(r1.contains("\tdevice {\n\t\tvendor \"OSNEXUS\"\n\t\tproduct \"QUANTASTOR\"\n\t\tpath_grouping_policy \"multibus\"\n"), "{r1}");
    assert!(!r1.contains("getuid_callout"));
    let id = c.paths()[0].identity();
    let values = |c: &Config| -> Vec<(&'static str, String)> {
        c.resolve(&id)
            .entries()
            .into_iter()
            .map(|(k, v, _)| (k, v))
            // Not printed (multipath-tools ignores it); see explain.
            .filter(|(k, _)| *k != "getuid_callout")
            .collect()
    };
    assert_eq!(values(&c), values(&c2));
}

#[test]
fn explain_lists_every_property_with_its_origin() {
    let c = ok(&format!("devices {{\n{QUANTASTOR_DEVICE}}}\nmultipaths {{\n multipath {{\n  wwid w1\n  alias lun0\n }}\n}}\noverrides {{\n dev_loss_tmo 60\n}}\n"));
    let text = c.explain_text(&id("OSNEXUS", "QUANTASTOR", "", "w1"));
    assert!(
        text.contains(
            "alias = lun0 (setting: multipath.conf multipaths section, multipath.conf:17)"
        ),
        "{text}"
    );
    assert!(text.contains("path_grouping_policy = multibus (setting: storage device configuration, multipath.conf:7,"), "{text}");
    assert!(
        text.contains(
            "dev_loss_tmo = 60 (setting: multipath.conf overrides section, multipath.conf:21)"
        ),
        "{text}"
    );
    assert!(
        text.contains("prio = const (setting: multipath internal)"),
        "{text}"
    );
    assert!(
        text.contains("getuid_callout = /sbin/scsi_id -g -u -s /block/%n"),
        "{text}"
    );
    assert!(text.contains("repeat_count (umpath) = 100"), "{text}");
    assert!(text.contains("checker_timeout"), "{text}");
}

mod render_proptests {
    use super::*;
    use proptest::prelude::*;

    /// A valid value for each of a sample of keywords.
    fn value_for(k: &str) -> BoxedStrategy<String> {
        match k {
            "path_grouping_policy" => prop::sample::select(vec![
                "failover",
                "multibus",
                "group_by_prio",
                "group_by_serial",
            ])
            .prop_map(String::from)
            .boxed(),
            "path_selector" => prop::sample::select(vec![
                "\"round-robin 0\"",
                "\"service-time 0\"",
                "\"queue-length 0\"",
            ])
            .prop_map(String::from)
            .boxed(),
            "failback" => prop_oneof![
                prop::sample::select(vec!["immediate", "manual", "followover"])
                    .prop_map(String::from),
                (1u32..1000).prop_map(|n| n.to_string()),
            ]
            .boxed(),
            "no_path_retry" => prop_oneof![
                prop::sample::select(vec!["fail", "queue"]).prop_map(String::from),
                (1u32..1000).prop_map(|n| n.to_string()),
            ]
            .boxed(),
            "rr_min_io" | "rr_min_io_rq" => (1u32..100_000).prop_map(|n| n.to_string()).boxed(),
            "user_friendly_names" | "detect_prio" | "skip_kpartx" => {
                prop::sample::select(vec!["yes", "no"])
                    .prop_map(String::from)
                    .boxed()
            }
            "dev_loss_tmo" => prop_oneof![
                Just("infinity".to_string()),
                (0u32..100_000).prop_map(|n| n.to_string())
            ]
            .boxed(),
            "fast_io_fail_tmo" => prop_oneof![
                Just("off".to_string()),
                (0u32..100).prop_map(|n| n.to_string())
            ]
            .boxed(),
            // prio_args must suit the section's prio (const: none).
            "prio_args" => Just(quote("")).boxed(),
            "alias_prefix" => "[a-z][a-z0-9 \"#]{0,8}".prop_map(|s| quote(&s)).boxed(),
            _ => Just("x".to_string()).boxed(),
        }
    }

    fn quote(s: &str) -> String {
        parse::quote_value(s, true)
    }

    const KWS: &[&str] = &[
        "path_grouping_policy",
        "path_selector",
        "failback",
        "no_path_retry",
        "rr_min_io",
        "rr_min_io_rq",
        "user_friendly_names",
        "detect_prio",
        "skip_kpartx",
        "dev_loss_tmo",
        "fast_io_fail_tmo",
        "prio_args",
        "alias_prefix",
    ];

    fn attrs() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(prop::sample::select(KWS.to_vec()), 0..5).prop_flat_map(|ks| {
            ks.into_iter()
                .map(|k| value_for(k).prop_map(move |v| (k.to_string(), v)))
                .collect::<Vec<_>>()
        })
    }

    fn section(attrs: &[(String, String)], allowed: Section, depth: usize) -> String {
        let pad = "\t".repeat(depth);
        attrs
            .iter()
            .filter(|(k, _)| keywords::lookup(k, allowed).is_some())
            .map(|(k, v)| format!("{pad}{k} {v}\n"))
            .collect()
    }

    fn config() -> impl Strategy<Value = String> {
        (
            attrs(),
            prop::collection::vec(("[A-C]{1,2}", "\\^?[a-c]{1,2}(\\.\\*)?", attrs()), 0..4),
            attrs(),
            prop::collection::vec(("36[0-9a]{1,3}", attrs()), 0..3),
        )
            .prop_map(|(defs, devs, ovr, mps)| {
                let mut t = format!("defaults {{\n{}}}\n", section(&defs, Section::Defaults, 1));
                t.push_str("devices {\n");
                for (v, p, a) in &devs {
                    t.push_str(&format!(
                        "\tdevice {{\n\t\tvendor {}\n\t\tproduct {}\n{}\t}}\n",
                        quote(v),
                        quote(p),
                        section(a, Section::Device, 2)
                    ));
                }
                t.push_str("}\n");
                t.push_str(&format!(
                    "overrides {{\n{}}}\n",
                    section(&ovr, Section::Overrides, 1)
                ));
                t.push_str("multipaths {\n");
                for (w, a) in &mps {
                    t.push_str(&format!(
                        "\tmultipath {{\n\t\twwid {w}\n{}\t}}\n",
                        section(a, Section::Multipath, 2)
                    ));
                }
                t.push_str("}\n");
                t
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// parse → render → parse → render is a fixed point, and the
        /// re-parsed configuration resolves every path the same way.
        #[test]
        fn parse_render_parse(text in config(), v in "[A-C]{1,2}", p in "[a-c]{1,3}", w in "36[0-9a]{1,3}") {
            let c = match parse_str(&text, "gen") {
                Ok(c) => c,
                Err(e) => return Err(TestCaseError::fail(format!("{e}\n{text}"))),
            };
            let r1 = c.render_multipath_t();
            let c2 = parse_str(&r1, "rendered").map_err(|e| TestCaseError::fail(format!("{e}\n{r1}")))?;
            let r2 = c2.render_multipath_t();
            prop_assert_eq!(&r1, &r2);
            let id = id(&v, &p, "", &w);
            let vals = |c: &Config| -> Vec<(&'static str, String)> {
                c.resolve(&id).entries().into_iter().map(|(k, v, _)| (k, v)).collect()
            };
            prop_assert_eq!(vals(&c), vals(&c2));
            prop_assert_eq!(c.explain(&id).into_iter().map(|e| (e.keyword, e.value)).collect::<Vec<_>>(),
                c2.explain(&id).into_iter().map(|e| (e.keyword, e.value)).collect::<Vec<_>>());
        }
    }
}

#[test]
fn kernel_nbd_device_keywords() {
    use crate::config::NbdDevice;
    let c = ok("defaults {\n umpath_nbd_device auto\n umpath_nbd_connections 2\n umpath_nbd_dead_conn_timeout 90\n}\n\
                multipaths {\n multipath {\n  wwid 3600a\n  nbd_device 3\n }\n multipath {\n  wwid 3600b\n  nbd_device no\n }\n}\n");
    assert_eq!(c.nbd_device("3600a"), NbdDevice::Index(3));
    assert_eq!(c.nbd_device("3600b"), NbdDevice::No);
    assert_eq!(c.nbd_device("3600c"), NbdDevice::Auto, "defaults");
    assert_eq!(c.nbd_connections(), 2);
    assert_eq!(c.nbd_dead_conn_timeout(), 90);
    assert_eq!(c.nbd_timeout(), 0);
    let bare = ok("defaults {\n polling_interval 5\n}\n");
    assert_eq!(bare.nbd_device("3600a"), NbdDevice::No);
    assert_eq!(bare.nbd_connections(), 1);
    assert_eq!(bare.nbd_dead_conn_timeout(), 60);
    let e = err("multipaths {\n multipath {\n  wwid 3600a\n  nbd_device sometimes\n }\n}\n");
    assert!(e.to_string().contains("nbd_device"), "{e}");
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
}

#[test]
fn prio_args_go_with_the_prio_of_their_section() {
    use crate::prio::Prioritizer;
    let c = ok(concat!(
        "defaults {\n",
        " prio alua\n",
        " prio_args exclusive_pref_bit\n",
        "}\n",
        "devices {\n",
        " device {\n",
        "  vendor V\n",
        "  product P\n",
        "  prio const\n",
        " }\n",
        " device {\n",
        "  vendor W\n",
        "  product .*\n",
        "  prio_args \"devname ^sd[ab]$ 7\"\n",
        " }\n",
        " device {\n",
        "  vendor W\n",
        "  product Q\n",
        "  prio weightedpath\n",
        " }\n",
        "}\n",
    ));
    // The device entry's prio comes without the defaults' prio_args.
    let s = c.resolve(&id("V", "P", "", "w1"));
    assert_eq!(s.prio.value, "const");
    assert_eq!(s.prio_args, Setting::builtin(String::new()));
    assert_eq!(s.prioritizer(), Ok(Prioritizer::Const));
    // Defaults: both, with their lines.
    let s = c.resolve(&id("X", "Y", "", "w2"));
    assert_eq!(s.prio_args.value, "exclusive_pref_bit");
    assert_eq!(s.prio_args.origin, defaults(3));
    assert_eq!(
        s.prioritizer(),
        Ok(Prioritizer::Alua {
            exclusive_pref: true
        })
    );
    // Device entries: prio and prio_args each from the first matching
    // entry that has them.
    let s = c.resolve(&id("W", "Q", "", "w3"));
    assert_eq!(s.prio.origin, dev(19, "W", "Q"));
    assert_eq!(s.prio_args.origin, dev(14, "W", ".*"));
    let p = s.prioritizer().unwrap();
    assert_eq!(p.to_string(), "weightedpath devname ^sd[ab]$ 7");
    assert!(s.to_string().contains(
        "prio_args = devname ^sd[ab]$ 7 (setting: storage device configuration, multipath.conf:14"
    ));
    // A built-in vendor prioritizer umpath does not implement.
    let s = c.resolve(&id("NETAPP", "LUN", "", "w4"));
    assert_eq!(s.prio.value, "ontap");
    assert!(s.prioritizer().is_err());
}

#[test]
fn shaky_and_marginal_keywords_are_selected_by_precedence() {
    use crate::policy::shaky::{MarginalPathgroups, SanPathErr};
    use std::time::Duration;
    let c = ok(concat!(
        "defaults {\n",
        " max_polling_interval 10\n",
        " san_path_err_threshold 3\n",
        " san_path_err_forget_rate 10\n",
        " san_path_err_recovery_time 60\n",
        " marginal_pathgroups on\n",
        "}\n",
        "devices {\n",
        " device {\n",
        "  vendor V\n",
        "  product P\n",
        "  san_path_err_threshold 5\n",
        " }\n",
        "}\n",
        "multipaths {\n",
        " multipath {\n",
        "  wwid W2\n",
        "  san_path_err_threshold no\n",
        "  delay_watch_checks 4\n",
        "  delay_wait_checks 2\n",
        " }\n",
        "}\n",
    ));
    assert!(
        warnings(&c)
            .iter()
            .all(|(_, w)| w.contains("deprecated") || !w.contains("implement")),
        "{:?}",
        warnings(&c)
    );
    let s = c.resolve(&id("V", "P", "1", "W1"));
    assert_eq!(
        s.shaky.san_path_err,
        Some(SanPathErr {
            threshold: 5,
            forget_rate: 10,
            recovery_time: Duration::from_secs(60)
        })
    );
    assert_eq!(s.shaky.pathgroups, MarginalPathgroups::On);
    let o = c.resolve(&id("X", "Y", "1", "W1"));
    assert_eq!(o.shaky.san_path_err.map(|s| s.threshold), Some(3));
    // `no` in the multipaths entry turns the threshold off, and the
    // forget rate and recovery time are still set: san_path_err is off,
    // and the delay_*_checks are ignored (a san_path_err keyword is set).
    let m = c.resolve(&id("X", "Y", "1", "W2"));
    assert_eq!(m.shaky.san_path_err, None);
}

#[test]
fn delay_checks_map_with_max_polling_interval_and_fpin_warns() {
    use crate::policy::shaky::{MarginalPathgroups, SanPathErr};
    use std::time::Duration;
    let c = ok(concat!(
        "defaults {\n",
        " polling_interval 2\n",
        " delay_watch_checks 4\n",
        " delay_wait_checks 3\n",
        " marginal_pathgroups fpin\n",
        "}\n",
    ));
    let s = c.resolve(&id("X", "Y", "1", "W1"));
    assert_eq!(
        s.shaky.san_path_err,
        Some(SanPathErr {
            threshold: 1,
            forget_rate: 4,
            recovery_time: Duration::from_secs(24)
        })
    );
    assert_eq!(s.shaky.pathgroups, MarginalPathgroups::Off);
    let w = warnings(&c);
    assert!(
        w.iter().any(|(l, m)| *l == 5 && m.contains("FPIN")),
        "{w:?}"
    );
    assert!(
        w.iter().any(|(l, m)| *l == 3 && m.contains("deprecated")),
        "{w:?}"
    );
}

// ---- detect_prio / detect_pgpolicy (issue 12) ----

fn scsi_facts(tpgs: Option<crate::scsi::Tpgs>, sysfs: bool) -> crate::prio::DetectFacts {
    crate::prio::DetectFacts {
        scsi: true,
        tpgs,
        rdac: false,
        sysfs_access_state: sysfs,
    }
}

#[test]
fn detect_prio_replaces_the_configured_prio_and_says_so() {
    use crate::scsi::Tpgs;
    let c = ok("defaults {\n prio weightedpath\n prio_args \"devname sda 5\"\n}\n");
    let mut s = c.resolve(&id("V", "P", "", "w"));
    assert!(s.detect_prio.value);
    assert_eq!(s.detect_prio.origin, Origin::Builtin);
    assert!(s.apply_detect_prio(&scsi_facts(Some(Tpgs::Implicit), false)));
    assert_eq!(s.prio.value, "alua");
    assert_eq!(s.prio_args.value, "");
    assert_eq!(s.prio.origin, Origin::Autodetected);
    let text = s.to_string();
    assert!(
        text.contains("prio = alua (setting: storage device autodetected)"),
        "{text}"
    );
    assert!(
        text.contains("detect_prio = yes (setting: multipath internal)"),
        "{text}"
    );
    // access_state readable: sysfs.
    let mut s = c.resolve(&id("V", "P", "", "w"));
    s.apply_detect_prio(&scsi_facts(Some(Tpgs::Both), true));
    assert_eq!(s.prio.value, "sysfs");
    // No target port groups: the configured prioritizer stays.
    let mut s = c.resolve(&id("V", "P", "", "w"));
    assert!(!s.apply_detect_prio(&scsi_facts(Some(Tpgs::None), true)));
    assert_eq!(s.prio.value, "weightedpath");
    assert!(matches!(s.prio.origin, Origin::Defaults { line: 2, .. }));
}

#[test]
fn detect_prio_off_keeps_prio_and_alua_falls_back_on_a_lun_without_tpgs() {
    use crate::scsi::Tpgs;
    let c = ok("defaults {\n detect_prio no\n prio alua\n}\n");
    let mut s = c.resolve(&id("V", "P", "", "w"));
    assert!(!s.detect_prio.value);
    assert!(matches!(
        s.detect_prio.origin,
        Origin::Defaults { line: 2, .. }
    ));
    assert!(!s.apply_detect_prio(&scsi_facts(Some(Tpgs::Implicit), true)));
    assert_eq!(s.prio.value, "alua");
    assert!(s.apply_detect_prio(&scsi_facts(Some(Tpgs::None), true)));
    assert_eq!(s.prio.value, "const");
    assert_eq!(
        s.prio.origin.to_string(),
        "(setting: emergency fallback - alua failed)"
    );
    // A declared (file) path: not SCSI; alua is left for the load to
    // report, detect_prio does nothing.
    let mut s = c.resolve(&id("V", "P", "", "w"));
    let file = crate::prio::DetectFacts {
        scsi: false,
        tpgs: None,
        rdac: false,
        sysfs_access_state: false,
    };
    assert!(!s.apply_detect_prio(&file));
    assert_eq!(s.prio.value, "alua");
}

#[test]
fn detect_pgpolicy_groups_alua_maps_by_prio_or_tpg() {
    let c = ok("defaults {\n path_grouping_policy multibus\n}\n");
    let mut s = c.resolve(&id("V", "P", "", "w"));
    assert!(s.detect_pgpolicy.value && !s.detect_pgpolicy_use_tpg.value);
    assert!(s.apply_detect_pgpolicy(true, false));
    assert_eq!(s.path_grouping_policy.value, GroupingPolicy::GroupByPrio);
    assert!(s
        .to_string()
        .contains("path_grouping_policy = group_by_prio (setting: storage device autodetected)"));
    let mut s = c.resolve(&id("V", "P", "", "w"));
    assert!(!s.apply_detect_pgpolicy(false, false));
    assert_eq!(s.path_grouping_policy.value, GroupingPolicy::Multibus);

    let c = ok("overrides {\n detect_pgpolicy_use_tpg yes\n}\n");
    let mut s = c.resolve(&id("V", "P", "", "w"));
    assert!(matches!(
        s.detect_pgpolicy_use_tpg.origin,
        Origin::Overrides { line: 2, .. }
    ));
    s.apply_detect_pgpolicy(true, false);
    assert_eq!(s.path_grouping_policy.value, GroupingPolicy::GroupByTpg);
    assert_eq!(s.path_grouping_policy.origin, Origin::Autodetected);

    // group_by_tpg without ALUA on every path: failover, as multipathd.
    let c = ok("defaults {\n detect_pgpolicy no\n path_grouping_policy group_by_tpg\n}\n");
    let mut s = c.resolve(&id("V", "P", "", "w"));
    let mut declared = s.clone();
    assert!(s.apply_detect_pgpolicy(false, false));
    assert_eq!(s.path_grouping_policy.value, GroupingPolicy::Failover);
    assert_eq!(
        s.path_grouping_policy.origin.to_string(),
        "(setting: emergency fallback - not all paths use alua prio)"
    );
    // Declared paths that all declare their tpg keep group_by_tpg.
    assert!(!declared.apply_detect_pgpolicy(false, true));
    assert_eq!(
        declared.path_grouping_policy.value,
        GroupingPolicy::GroupByTpg
    );
}

#[test]
fn explain_live_shows_what_the_device_decided() {
    use crate::scsi::Tpgs;
    let c = ok("defaults {\n prio const\n}\n");
    let ident = id("V", "P", "", "w");
    let mut s = c.resolve(&ident);
    s.apply_detect_prio(&scsi_facts(Some(Tpgs::Implicit), false));
    s.apply_detect_pgpolicy(true, false);
    let text = c.explain_live_text(&ident, &s);
    assert!(
        text.contains("prio = alua (setting: storage device autodetected)\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "path_grouping_policy = group_by_prio (setting: storage device autodetected)\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("detect_prio = yes (setting: multipath internal)\n"),
        "{text}"
    );
    // Nothing detected: the same as explain.
    let plain = c.resolve(&ident);
    assert_eq!(c.explain_live_text(&ident, &plain), c.explain_text(&ident));
}

#[test]
fn entries_list_the_shaky_keywords_with_their_origins() {
    let c =
        ok("defaults {\n marginal_pathgroups on\n}\noverrides {\n san_path_err_threshold 3\n}\n");
    let s = c.resolve(&id("V", "P", "", "w"));
    let text = s.to_string();
    assert!(
        text.contains("san_path_err_threshold = 3 (setting: multipath.conf overrides section, multipath.conf:5)"),
        "{text}"
    );
    assert!(
        text.contains("marginal_path_err_sample_time = no (setting: multipath internal)"),
        "{text}"
    );
    assert!(
        text.contains(
            "marginal_pathgroups = on (setting: multipath.conf defaults section, multipath.conf:2)"
        ),
        "{text}"
    );
    for k in crate::config::propsel::SHAKY_KEYWORDS {
        assert!(text.contains(&format!("{k} = ")), "{k}: {text}");
    }
}

#[test]
fn declared_node_name_and_tpg_are_checked() {
    let base = "paths {\n path {\n  name p0\n  file /tmp/x\n  wwid w\n  vendor V\n  product P\n";
    let c = ok(&format!(
        "{base}  node_name \"iqn.2003-01.org:t1\"\n  tpg 7\n }}\n}}\n"
    ));
    let p = &c.paths()[0];
    assert_eq!(p.node_name(), Some("iqn.2003-01.org:t1"));
    assert_eq!(p.tpg(), Some(7));
    let e = err(&format!("{base}  tpg 70000\n }}\n}}\n"));
    assert_eq!(
        errors(&e),
        vec![(
            8,
            "path 'p0': tpg \"70000\" is not a target port group (0 to 65535)".to_string()
        )]
    );
    let e = err(&format!("{base}  tpg x\n }}\n}}\n"));
    assert_eq!(errors(&e).len(), 1);
}

#[test]
fn declared_direct_is_yes_or_no_and_shown() {
    let base = "paths {\n path {\n  name p0\n  file /tmp/x\n  wwid w\n  vendor V\n  product P\n";
    let c = ok(&format!("{base} }}\n}}\n"));
    assert!(!c.paths()[0].direct(), "default no");
    let c = ok(&format!("{base}  direct yes\n }}\n}}\n"));
    assert!(c.paths()[0].direct());
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
    let c = ok(&format!("{base}  direct no\n }}\n}}\n"));
    assert!(!c.paths()[0].direct());
    let e = err(&format!("{base}  direct maybe\n }}\n}}\n"));
    assert_eq!(
        errors(&e),
        vec![(
            8,
            "path 'p0': direct \"maybe\" is not 'yes' or 'no'".to_string()
        )]
    );
}

#[test]
fn a_scsi_prioritizer_on_a_declared_path_is_warned_about_with_its_origin() {
    let c = ok("overrides {\n prio alua\n}\npaths {\n path {\n  name p0\n  file /tmp/x\n  wwid w\n  vendor V\n  product P\n }\n}\n");
    assert_eq!(
        warnings(&c),
        vec![(5, "path 'p0': prioritizer 'alua' (setting: multipath.conf overrides section, multipath.conf:2) needs a SCSI device, and this path is transport file; its priority stays 1".to_string())]
    );
    let c = ok("overrides {\n prio const\n}\npaths {\n path {\n  name p0\n  file /tmp/x\n  wwid w\n  vendor V\n  product P\n }\n}\n");
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
}

const ISCSI_PATH: &str = "paths {\n path {\n  name q0\n  transport iscsi\n  portal 127.0.0.1:3260\n  target iqn.2026-11.com.example:lun0\n  lun 1\n  chap_user tecmint\n  chap_secret \"tecmint_chap12\"\n }\n}\n";

#[test]
fn iscsi_paths_take_the_issue_keys_and_need_no_identity() {
    let c = ok(ISCSI_PATH);
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
    let p = &c.paths()[0];
    let i = p.iscsi().unwrap();
    assert_eq!(
        i.portal,
        Portal {
            host: "127.0.0.1".into(),
            port: 3260
        }
    );
    assert_eq!(i.target, "iqn.2026-11.com.example:lun0");
    assert_eq!(i.lun, 1);
    let chap = i.chap.unwrap();
    assert_eq!(chap.user, "tecmint");
    assert_eq!(chap.secret, SecretSource::Inline("tecmint_chap12".into()));
    assert!(i.mutual.is_none() && i.initiator_name.is_none());
    // The secret never shows in Debug or in `show config`.
    assert!(!format!("{p:?}").contains("tecmint_chap12"), "{p:?}");
    assert!(!format!("{:?}", p.iscsi()).contains("tecmint_chap12"));
    let shown = c.render_multipath_t();
    assert!(!shown.contains("tecmint_chap12"), "{shown}");
    assert!(
        shown.contains("chap_secret \"<hidden>\"") || shown.contains("chap_secret <hidden>"),
        "{shown}"
    );
}

#[test]
fn iscsi_path_mistakes_are_errors_naming_the_keyword() {
    let with = |from: &str, to: &str| ISCSI_PATH.replace(from, to);
    let cases = [
        (with("  portal 127.0.0.1:3260\n", ""), "has no 'portal'"),
        (with("127.0.0.1:3260", "127.0.0.1:0"), "is not 1 to 65535"),
        (with("127.0.0.1:3260", "::1:3260"), "brackets"),
        (
            with("iqn.2026-11.com.example:lun0", "lun0"),
            "not an iSCSI name",
        ),
        (with("  lun 1\n", "  lun 99999\n"), "is not 0 to 16383"),
        (
            with("  chap_user tecmint\n", ""),
            "a secret without 'chap_user'",
        ),
        (
            with(
                "  chap_secret \"tecmint_chap12\"\n",
                "  chap_secret \"tecmint_chap12\"\n  chap_secret_file /etc/umpath/q0.secret\n",
            ),
            "not both",
        ),
        (
            with(
                "  lun 1\n",
                "  lun 1\n  mutual_user t\n  mutual_secret_file rel/path\n",
            ),
            "not an absolute path",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        let msgs = errors(&e);
        assert!(
            msgs.iter().any(|(_, m)| m.contains(want)),
            "{want}: {msgs:?}"
        );
        assert!(!format!("{e}").contains("tecmint_chap12"), "{e}");
    }
    // Mutual CHAP needs one-way CHAP.
    let text = with(
        "  chap_user tecmint\n  chap_secret \"tecmint_chap12\"\n",
        "  mutual_user t\n  mutual_secret s\n",
    );
    assert!(errors(&err(&text))
        .iter()
        .any(|(_, m)| m.contains("needs one-way CHAP")));
}

#[test]
fn iscsi_identity_keys_are_ignored_with_a_warning_and_secrets_not_quoted() {
    let text = ISCSI_PATH.replace(
        "  lun 1\n",
        "  lun 1\n  wwid 36000c29abcdef001\n  vendor OSNEXUS\n  chap_secret \"other\"\n",
    );
    let c = ok(&text);
    let w = warnings(&c);
    assert!(
        w.iter()
            .any(|(_, m)| m.contains("'wwid' is ignored for an iscsi path")),
        "{w:?}"
    );
    assert!(
        w.iter().any(|(_, m)| m.contains("'vendor' is ignored")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .all(|(_, m)| !m.contains("other") && !m.contains("tecmint_chap12")),
        "{w:?}"
    );
    assert_eq!(c.paths()[0].wwid, "");
    assert_eq!(c.paths()[0].vendor, "");
}

#[test]
fn portals_parse_like_iscsi_addresses() {
    let p = |s: &str| Portal::parse(s);
    assert_eq!(
        p("host").unwrap(),
        Portal {
            host: "host".into(),
            port: 3260
        }
    );
    assert_eq!(
        p("[::1]:3261").unwrap(),
        Portal {
            host: "::1".into(),
            port: 3261
        }
    );
    assert_eq!(p("[::1]").unwrap().to_string(), "[::1]:3260");
    assert_eq!(p("10.0.0.1:3260").unwrap().to_string(), "10.0.0.1:3260");
    for bad in ["", ":3260", "[::1", "[::1]x", "h:65536", "h:x"] {
        assert!(p(bad).is_err(), "{bad}");
    }
    for good in [
        "iqn.2026-11.com.example:lun0",
        "eui.02004567A425678D",
        "naa.52004567BA64678D",
    ] {
        assert!(
            crate::config::paths::check_iscsi_name(good).is_ok(),
            "{good}"
        );
    }
    for bad in [
        "iqn.26-11.com.x",
        "iqn.2026-11",
        "eui.123",
        "naa.xyz",
        "iqn.2026-11.com.x y",
    ] {
        assert!(
            crate::config::paths::check_iscsi_name(bad).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn an_iscsi_target_entry_stands_for_a_path_per_portal_and_lun() {
    let c = ok("paths {\n iscsi_target {\n  name qs\n  portals \"10.0.0.1 10.0.0.2:3261\"\n  portal [::1]\n  target iqn.2026-11.com.example:lun0\n  luns \"1 2\"\n  chap_user tecmint\n  chap_secret \"tecmint_chap12\"\n  digest crc32c\n }\n}\n");
    assert!(warnings(&c).is_empty(), "{:?}", warnings(&c));
    let names: Vec<&str> = c.paths().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["qs-p0-l1", "qs-p0-l2", "qs-p1-l1", "qs-p1-l2", "qs-p2-l1", "qs-p2-l2"]
    );
    let p = c.path("qs-p1-l2").unwrap().iscsi().unwrap();
    assert_eq!(p.portal.to_string(), "10.0.0.2:3261");
    assert_eq!(p.lun, 2);
    assert!(p.digests && p.chap.is_some());
    assert_eq!(
        c.path("qs-p2-l1")
            .unwrap()
            .iscsi()
            .unwrap()
            .portal
            .to_string(),
        "[::1]:3260"
    );
    // Mistakes name the entry's line.
    for (text, want) in [
        ("paths {\n iscsi_target {\n  portal h\n  target iqn.2026-11.com.example:x\n  luns 1\n }\n}\n", "no 'name'"),
        ("paths {\n iscsi_target {\n  name t\n  target iqn.2026-11.com.example:x\n  luns 1\n }\n}\n", "no 'portal'"),
        ("paths {\n iscsi_target {\n  name t\n  portal h\n  target iqn.2026-11.com.example:x\n }\n}\n", "no 'luns'"),
        ("paths {\n iscsi_target {\n  name t\n  portal h\n  target iqn.2026-11.com.example:x\n  luns 1\n  file /x\n }\n}\n", "unknown keyword 'file'"),
        ("paths {\n iscsi_target {\n  name t\n  portal h:0\n  target iqn.2026-11.com.example:x\n  luns 1\n }\n}\n", "is not 1 to 65535"),
        ("paths {\n iscsi_target {\n  name t\n  portal h\n  target iqn.2026-11.com.example:x\n  luns x\n }\n}\n", "lun \"x\""),
    ] {
        let e = err(text);
        assert!(errors(&e).iter().any(|(l, m)| *l >= 2 && m.contains(want)), "{want}: {:?}", errors(&e));
    }
}
