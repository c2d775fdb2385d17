//! The per-IO hot path of the pure core: routing a request through a map
//! (lock-free of IO, no allocation) with each selector.

// A test crate: a failed unwrap, expect or panic is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use umpath::model::{CheckState, Map, MapPolicy, NoLoad, Path, PathId, PathInfo, Time};
use umpath::policy::{Failback, GroupingPolicy, NoPathRetry, RrWeight, SelectorKind};

fn map(n: usize, selector: SelectorKind, repeat: u32) -> Map {
    let paths = (0..n)
        .map(|i| {
            Path::new_checked(
                PathInfo {
                    name: format!("p{i}"),
                    ..Default::default()
                },
                CheckState::Up,
                None,
                Time(0),
            )
        })
        .collect();
    let policy = MapPolicy {
        grouping: GroupingPolicy::Multibus,
        selector,
        repeat,
        rr_weight: RrWeight::Uniform,
        failback: Failback::Immediate,
        no_path_retry: NoPathRetry::Fail,
        polling_interval: std::time::Duration::from_secs(5),
    };
    Map::new("m".into(), "w".into(), paths, policy, Time(0)).0
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for (name, sel, repeat) in [
        ("round-robin rr_min_io=1", SelectorKind::RoundRobin, 1),
        ("round-robin rr_min_io=100", SelectorKind::RoundRobin, 100),
        ("queue-length", SelectorKind::QueueLength, 1),
        ("service-time", SelectorKind::ServiceTime, 1),
    ] {
        for n in [2usize, 8] {
            let mut m = map(n, sel, repeat);
            g.bench_function(format!("{name}/{n} paths"), |b| {
                b.iter(|| black_box(m.route(&NoLoad)))
            });
        }
    }
    // A map with one of two paths failed: the selector skips it every time.
    let mut m = map(2, SelectorKind::RoundRobin, 1);
    m.fail_path(PathId::new(0), "EIO", Time(0));
    g.bench_function("round-robin/1 of 2 failed", |b| {
        b.iter(|| black_box(m.route(&NoLoad)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
