use std::time::Duration;

use super::*;
use crate::scsi::rtpg::tests::{data, desc};

fn parse(name: &str, args: &str) -> Prioritizer {
    Prioritizer::parse(name, args).unwrap()
}

fn bad_arg(name: &str, args: &str) -> (String, String) {
    match Prioritizer::parse(name, args) {
        Err(e) => match &e {
            PrioConfigError::BadArg { arg, .. } => (arg.clone(), e.to_string()),
            _ => panic!("{name} {args:?}: expected a bad argument, got {e:?}"),
        },
        Ok(p) => panic!("{name} {args:?}: expected a bad argument, got {p:?}"),
    }
}

#[test]
fn names_and_unknowns() {
    for n in IMPLEMENTED {
        let args = if n == "weightedpath" {
            "devname sda 1"
        } else {
            ""
        };
        let p = parse(n, args);
        assert_eq!(p.name(), n);
        assert_eq!(Prioritizer::parse(n, &p.args()).unwrap(), p, "{n}");
    }
    for n in NOT_IMPLEMENTED {
        assert_eq!(
            Prioritizer::parse(n, ""),
            Err(PrioConfigError::NotImplemented { name: n.into() })
        );
    }
    let e = Prioritizer::parse("nonsense", "").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown prioritizer 'nonsense' (umpath implements const, random, weightedpath, \
         path_latency, sysfs, alua)"
    );
    assert!(Prioritizer::parse("ontap", "")
        .unwrap_err()
        .to_string()
        .contains("prioritizer 'ontap' is not implemented by umpath"));
}

#[test]
fn const_and_random() {
    let f = PathFacts::default();
    assert_eq!(Prioritizer::Const.score(&f), Ok(Prio(1)));
    assert_eq!(bad_arg("const", " x ").0, "x");
    assert!(bad_arg("random", "3")
        .1
        .contains("'random' takes no arguments"));
    assert_eq!(
        Prioritizer::Random.score(&f),
        Err(PrioError::Missing {
            prio: "random",
            fact: "random number"
        })
    );
    let r = |v| {
        Prioritizer::Random
            .score(&PathFacts {
                random: Some(v),
                ..PathFacts::default()
            })
            .unwrap()
    };
    assert_eq!(r(0), Prio(1));
    assert_eq!(r(u32::MAX), Prio(10));
    assert_eq!(r(u32::MAX / 2), Prio(5));
    for v in (0..=u32::MAX).step_by(7_654_321) {
        assert!((1..=10).contains(&r(v).0));
    }
}

#[test]
fn weightedpath_args() {
    let Prioritizer::WeightedPath(w) = parse("weightedpath", "hbtl\t1:.:.:. 2   4:.:.:. 4") else {
        panic!()
    };
    assert_eq!(w.field, WeightedField::Hbtl);
    assert_eq!(w.rules.len(), 2);
    assert_eq!(w.to_string(), "hbtl 1:.:.:. 2 4:.:.:. 4");
    // Only a field: every path 0.
    let p = parse("weightedpath", "serial");
    assert_eq!(p.args(), "serial");

    let (arg, msg) = bad_arg("weightedpath", "");
    assert_eq!(arg, "");
    assert!(msg.contains("missing arguments"), "{msg}");
    let (arg, msg) = bad_arg("weightedpath", "hctl 1:0:0:0 5");
    assert_eq!(arg, "hctl");
    assert!(
        msg.contains("'hctl' is not hbtl, devname, serial or wwn"),
        "{msg}"
    );
    let (arg, msg) = bad_arg("weightedpath", "devname sda 10 sdb");
    assert_eq!(arg, "sdb");
    assert!(msg.contains("regex 'sdb' has no weight"), "{msg}");
    let (arg, msg) = bad_arg("weightedpath", "devname sd[a 10");
    assert_eq!(arg, "sd[a");
    assert!(msg.starts_with("prio_args for 'weightedpath': invalid regular expression 'sd[a'"));
    let (arg, msg) = bad_arg("weightedpath", "devname sda ten");
    assert_eq!(arg, "ten");
    assert!(
        msg.contains("weight 'ten' of regex 'sda' is not an integer"),
        "{msg}"
    );
    let (arg, _) = bad_arg("weightedpath", "devname sda 99999999999");
    assert_eq!(arg, "99999999999");
    assert!(bad_arg("weightedpath", "devname (a{1000}){1000} 1")
        .1
        .contains("invalid regular expression"));
}

#[test]
fn weightedpath_first_match_wins_unanchored() {
    let p = parse("weightedpath", "devname sd[ab] 10 sda 20 ^sdc$ -3");
    let score = |dev: &str| {
        p.score(&PathFacts {
            devname: Some(dev.into()),
            ..PathFacts::default()
        })
    };
    assert_eq!(score("sda"), Ok(Prio(10)));
    assert_eq!(score("sdb"), Ok(Prio(10)));
    assert_eq!(score("xsdbx"), Ok(Prio(10)));
    assert_eq!(score("sdc"), Ok(Prio(-3)));
    assert_eq!(score("sdcd"), Ok(Prio(0)));
    assert_eq!(
        p.score(&PathFacts::default()),
        Err(PrioError::Missing {
            prio: "weightedpath",
            fact: "device name"
        })
    );
    let facts = PathFacts {
        hbtl: Some("4:0:1:2".into()),
        serial: Some("QS0001".into()),
        wwn: Some("0x2000:0x2100:0x5000:0x5001".into()),
        ..PathFacts::default()
    };
    for (args, want) in [
        ("hbtl 1:.:.:. 2 4:.:.:. 4", 4),
        ("serial ^QS 7", 7),
        ("wwn :0x5001$ 9", 9),
    ] {
        let p = parse("weightedpath", args);
        assert_eq!(p.score(&facts), Ok(Prio(want)), "{args}");
    }
    assert!(parse("weightedpath", "hbtl 1 1").needs().scsi());
    assert!(!parse("weightedpath", "devname 1 1").needs().scsi());
}

#[test]
fn path_latency_args() {
    let Prioritizer::PathLatency(l) = parse("path_latency", "base_num=10 io_num=20") else {
        panic!()
    };
    assert_eq!((l.io_num, l.base_num), (20, 10.0));
    assert_eq!(
        parse("path_latency", "").args(),
        "io_num=100 base_num=1.77827941004"
    );
    assert_eq!(
        parse("path_latency", "io_num=50 base_num=2")
            .needs()
            .latency_reads,
        Some(50)
    );

    for (args, arg, part) in [
        (
            "io_num=19 base_num=2",
            "io_num=19",
            "io_num 19 is out of range (20 to 200)",
        ),
        ("io_num=201 base_num=2", "io_num=201", "out of range"),
        (
            "io_num=2x base_num=2",
            "io_num=2x",
            "io_num '2x' is not a whole number",
        ),
        (
            "io_num=20 base_num=1.0",
            "base_num=1.0",
            "base_num 1.0 is out of range (1.1 to 10)",
        ),
        (
            "io_num=20 base_num=e",
            "base_num=e",
            "base_num 'e' is not a number",
        ),
        ("io_num=20 base_num=NaN", "base_num=NaN", "out of range"),
        ("io_num=20", "", "base_num=M is missing"),
        ("base_num=2", "", "io_num=N is missing"),
        (
            "io_num=20 io_num=30 base_num=2",
            "io_num=30",
            "io_num given twice",
        ),
        (
            "io_num=20 base_num=2 fast",
            "fast",
            "unknown argument 'fast'",
        ),
    ] {
        let (a, msg) = bad_arg("path_latency", args);
        assert_eq!(a, arg, "{args}");
        assert!(msg.contains(part), "{args}: {msg}");
    }
}

#[test]
fn path_latency_scores() {
    let l = PathLatency {
        io_num: 20,
        base_num: 10.0,
    };
    let us = |v: u64| vec![Duration::from_micros(v); 20];
    // log10(1e8) = 8 steps below 100 s.
    assert_eq!(l.score(&us(1000)), Prio(5));
    assert_eq!(l.score(&us(1)), Prio(8));
    assert_eq!(l.score(&us(0)), Prio(8));
    assert_eq!(l.score(&[Duration::from_nanos(10)]), Prio(8));
    assert_eq!(l.score(&us(100_000_000)), Prio(0));
    assert_eq!(l.score(&us(1_000_000_000)), Prio(0));
    // 5 ms: 8 - 3.699 = 4.3, truncated.
    assert_eq!(l.score(&us(5000)), Prio(4));
    // Geometric mean of 100 us and 10 ms is 1 ms.
    let mixed = [Duration::from_micros(100), Duration::from_micros(10_000)];
    assert_eq!(l.score(&mixed), Prio(5));
    // Default base: four steps per decade; 1 ms gives 32 - 12, which in
    // floating point is 19.99..., truncated to 19 (the same C arithmetic
    // in multipath-tools); 10 ms gives 15.
    assert_eq!(PathLatency::default().score(&us(1000)), Prio(19));
    assert_eq!(PathLatency::default().score(&us(10_000)), Prio(15));
    let p = Prioritizer::PathLatency(l);
    assert!(matches!(
        p.score(&PathFacts {
            latencies: Some(vec![]),
            ..PathFacts::default()
        }),
        Err(PrioError::Missing { .. })
    ));
}

#[test]
fn alua_and_sysfs_args() {
    assert_eq!(
        parse("alua", " exclusive_pref_bit "),
        Prioritizer::Alua {
            exclusive_pref: true
        }
    );
    assert_eq!(
        parse("sysfs", ""),
        Prioritizer::Sysfs {
            exclusive_pref: false
        }
    );
    let (arg, msg) = bad_arg("alua", "exclusive_pref_bits");
    assert_eq!(arg, "exclusive_pref_bits");
    assert!(msg.contains("the only one is exclusive_pref_bit"), "{msg}");
    assert!(parse("alua", "").needs().scsi());
    assert!(parse("sysfs", "").needs().sysfs);
    assert_eq!(
        parse("sysfs", "exclusive_pref_bit").to_string(),
        "sysfs exclusive_pref_bit"
    );
}

#[test]
fn alua_scores_as_multipath_tools() {
    use AccessState::*;
    for (state, plain, pref, pref_exclusive) in [
        (ActiveOptimized, 50, 50, 130),
        (ActiveNonOptimized, 10, 90, 90),
        (LbaDependent, 5, 85, 85),
        (Standby, 1, 81, 81),
        (Unavailable, 0, 80, 80),
        (Offline, 0, 80, 80),
        (Transitioning, 0, 80, 80),
        (Reserved(6), 0, 80, 80),
    ] {
        assert_eq!(alua_prio(state, false, false), Prio(plain), "{state}");
        assert_eq!(alua_prio(state, false, true), Prio(plain), "{state}");
        assert_eq!(alua_prio(state, true, false), Prio(pref), "{state}");
        assert_eq!(
            alua_prio(state, true, true),
            Prio(pref_exclusive),
            "{state}"
        );
    }
}

fn alua_facts(rtpg: Vec<u8>, tpg: Option<u16>, rel_port: Option<u16>) -> PathFacts {
    PathFacts {
        alua: Some(AluaFacts {
            rtpg,
            tpg,
            rel_port,
        }),
        ..PathFacts::default()
    }
}

#[test]
fn alua_finds_the_paths_group() {
    // Group 1 active/optimized (ports 1, 3), group 2 standby preferred
    // (port 2).
    let b = data(&[desc(0x00, 1, &[1, 3]), desc(0x82, 2, &[2])]);
    let alua = Prioritizer::Alua {
        exclusive_pref: false,
    };
    assert_eq!(
        alua.score(&alua_facts(b.clone(), Some(1), None)),
        Ok(Prio(50))
    );
    assert_eq!(
        alua.score(&alua_facts(b.clone(), Some(2), None)),
        Ok(Prio(81))
    );
    // No target port group designator: by relative port.
    assert_eq!(
        alua.score(&alua_facts(b.clone(), None, Some(3))),
        Ok(Prio(50))
    );
    assert_eq!(
        alua.score(&alua_facts(b.clone(), Some(7), None)),
        Err(PrioError::GroupNotFound { tpg: 7 })
    );
    assert_eq!(
        alua.score(&alua_facts(b.clone(), None, Some(9))),
        Err(PrioError::NoOwnGroup { rel_port: Some(9) })
    );
    let e = alua.score(&alua_facts(b.clone(), None, None)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "alua: the path's target port group is unknown (no target port group designator)"
    );
    // Malformed data is an error with context.
    let e = alua
        .score(&alua_facts(b[..10].to_vec(), Some(1), None))
        .unwrap_err();
    assert!(matches!(e, PrioError::Rtpg(ScsiError::Short { .. })), "{e}");
    assert!(e
        .to_string()
        .starts_with("alua: REPORT TARGET PORT GROUPS data: 10 bytes"));
    assert!(matches!(
        alua.score(&PathFacts::default()),
        Err(PrioError::Missing { prio: "alua", .. })
    ));
}

#[test]
fn sysfs_scores() {
    let s = |state: &str, preferred: Option<u64>, exclusive: bool| {
        Prioritizer::Sysfs {
            exclusive_pref: exclusive,
        }
        .score(&PathFacts {
            sysfs: Some(SysfsAlua {
                access_state: state.into(),
                preferred,
            }),
            ..PathFacts::default()
        })
        .unwrap()
    };
    assert_eq!(s("active/optimized\n", None, false), Prio(50));
    assert_eq!(s("active/optimized", Some(1), false), Prio(50));
    assert_eq!(s("active/optimized", Some(1), true), Prio(130));
    assert_eq!(s("active/non-optimized", Some(0), false), Prio(10));
    assert_eq!(s("active/non-optimized", Some(1), false), Prio(90));
    assert_eq!(s("lba-dependent", None, false), Prio(5));
    assert_eq!(s("standby", None, false), Prio(1));
    assert_eq!(s("unavailable", None, false), Prio(0));
    assert_eq!(s("transitioning", Some(1), false), Prio(80));
    assert_eq!(s("", None, false), Prio(0));
    assert!(Prioritizer::Sysfs {
        exclusive_pref: false
    }
    .score(&PathFacts::default())
    .is_err());
}

#[test]
fn detect_prio_rule() {
    let f = |scsi, tpgs, rdac, sysfs| DetectFacts {
        scsi,
        tpgs,
        rdac,
        sysfs_access_state: sysfs,
    };
    let sysfs = Some(Prioritizer::Sysfs {
        exclusive_pref: false,
    });
    let alua = Some(Prioritizer::Alua {
        exclusive_pref: false,
    });
    assert_eq!(detect(&f(false, Some(Tpgs::Both), false, true)), None);
    assert_eq!(detect(&f(true, Some(Tpgs::None), false, true)), None);
    assert_eq!(detect(&f(true, Some(Tpgs::Implicit), false, true)), sysfs);
    assert_eq!(detect(&f(true, Some(Tpgs::Implicit), false, false)), alua);
    // RDAC arrays keep alua unless they do explicit ALUA.
    assert_eq!(detect(&f(true, Some(Tpgs::Implicit), true, true)), alua);
    assert_eq!(detect(&f(true, Some(Tpgs::Explicit), true, true)), sysfs);
    // INQUIRY unreadable: treated as having target port groups.
    assert_eq!(detect(&f(true, None, false, false)), alua);
}

#[test]
fn select_with_detection_and_fallback() {
    let f = |scsi, tpgs| DetectFacts {
        scsi,
        tpgs,
        rdac: false,
        sysfs_access_state: false,
    };
    let ontap_like = parse("weightedpath", "devname sda 5");
    let alua_excl = parse("alua", "exclusive_pref_bit");
    // detect_prio on an ALUA LUN wins over the configured prioritizer.
    assert_eq!(
        select(ontap_like.clone(), true, &f(true, Some(Tpgs::Implicit))),
        (
            Prioritizer::Alua {
                exclusive_pref: false
            },
            PrioSource::Autodetected
        )
    );
    assert_eq!(
        select(ontap_like.clone(), false, &f(true, Some(Tpgs::Implicit))),
        (ontap_like.clone(), PrioSource::Configured)
    );
    assert_eq!(
        select(ontap_like.clone(), true, &f(true, Some(Tpgs::None))),
        (ontap_like, PrioSource::Configured)
    );
    // alua without target port groups, or on a file path: const.
    for facts in [f(true, Some(Tpgs::None)), f(false, None)] {
        let (p, src) = select(alua_excl.clone(), false, &facts);
        assert_eq!((p, src), (Prioritizer::Const, PrioSource::AluaFallback));
    }
    assert_eq!(
        select(alua_excl.clone(), false, &f(true, None)),
        (alua_excl, PrioSource::Configured)
    );
    assert_eq!(
        PrioSource::AluaFallback.to_string(),
        "(setting: emergency fallback - alua failed)"
    );
}
