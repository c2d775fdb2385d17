//! `resize map NAME` and `auto_resize`: the LUN's size read again from
//! the map's usable paths, then given to the map (new NBD sessions, the
//! engine's end-of-device bound, an attached kernel device).
//!
//! NBD has no way to tell a connected client that the size changed:
//! sessions keep the size they negotiated (a grown map is seen whole by
//! a client that connects again; IO past a shrunk end fails with ENOSPC
//! for writes and EINVAL for the rest, whatever the session was told).
//!
//! `auto_resize` is a watch of its own, not part of the path checker:
//! every `polling_interval` it reads the size of each usable path of
//! every map (a file's length, a block device's BLKGETSIZE64: no IO to
//! the LUN) and resizes when they all agree on a new size the keyword
//! allows.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use crate::config::AutoResize;
use crate::transport::PathDev;

/// How long one path may take to tell its size.
pub const SIZE_WAIT: Duration = Duration::from_secs(5);

/// One path's answer to "how large is the LUN".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSize {
    pub path: String,
    /// Bytes, or why the path could not tell.
    pub size: Result<u64, String>,
}

/// The size every usable path agrees on, or an error naming each path
/// and what it said.
pub fn agreed_size(map: &str, sizes: &[PathSize]) -> Result<u64, String> {
    let listing = || {
        sizes
            .iter()
            .map(|p| match &p.size {
                Ok(s) => format!("{} {s} bytes", p.path),
                Err(e) => format!("{} ({e})", p.path),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut told = sizes.iter().filter_map(|p| p.size.as_ref().ok());
    let Some(first) = told.next() else {
        return Err(if sizes.is_empty() {
            format!("map {map} has no usable path to read the size from")
        } else {
            format!(
                "map {map}: no usable path could tell the size: {}",
                listing()
            )
        });
    };
    if sizes.iter().any(|p| p.size.is_err()) || told.any(|s| s != first) {
        return Err(format!(
            "map {map}: the usable paths do not agree on the size: {}",
            listing()
        ));
    }
    Ok(*first)
}

/// Asks each device its size (on the blocking pool, each within
/// [`SIZE_WAIT`]).
pub async fn read_sizes(paths: Vec<(String, Arc<PathDev>)>) -> Vec<PathSize> {
    let asks: Vec<_> = paths
        .into_iter()
        .map(|(name, dev)| {
            let task = tokio::task::spawn_blocking(move || dev.size().map_err(|e| e.to_string()));
            (name, task)
        })
        .collect();
    let mut out = Vec::with_capacity(asks.len());
    for (path, task) in asks {
        let size = match tokio::time::timeout(SIZE_WAIT, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("size task failed: {e}")),
            Err(_) => Err(format!("no answer within {} s", SIZE_WAIT.as_secs())),
        };
        out.push(PathSize { path, size });
    }
    out
}

/// What `auto_resize` does with a map of `current` bytes whose paths
/// report `sizes`: `Some(new)` to resize. Paths that do not agree, or
/// a change the mode does not allow, leave the map alone (`None`).
pub fn auto_decision(mode: AutoResize, map: &str, current: u64, sizes: &[PathSize]) -> Option<u64> {
    if mode == AutoResize::Never || sizes.is_empty() {
        return None;
    }
    let new = agreed_size(map, sizes).ok()?;
    if new == current {
        return None;
    }
    if mode.allows(current, new) {
        info!(map = %map, "auto_resize: every usable path reports {new} bytes (map has {current})");
        Some(new)
    } else {
        debug!(map = %map, "auto_resize {mode:?}: paths report {new} bytes, the map stays at {current} (use `resize map {map}`)");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(path: &str, size: Result<u64, &str>) -> PathSize {
        PathSize {
            path: path.into(),
            size: size.map_err(str::to_string),
        }
    }

    #[test]
    fn paths_must_agree() {
        assert_eq!(
            agreed_size("m", &[ps("p0", Ok(10)), ps("p1", Ok(10))]),
            Ok(10)
        );
        let e = agreed_size("m", &[ps("p0", Ok(10)), ps("p1", Ok(20))]).unwrap_err();
        assert!(
            e.contains("p0 10 bytes") && e.contains("p1 20 bytes"),
            "{e}"
        );
        let e = agreed_size("m", &[ps("p0", Ok(10)), ps("p1", Err("gone"))]).unwrap_err();
        assert!(e.contains("p1 (gone)"), "{e}");
        assert!(agreed_size("m", &[])
            .unwrap_err()
            .contains("no usable path"));
    }

    #[test]
    fn auto_resize_modes() {
        let grown = [ps("p0", Ok(20)), ps("p1", Ok(20))];
        let shrunk = [ps("p0", Ok(5)), ps("p1", Ok(5))];
        let split = [ps("p0", Ok(20)), ps("p1", Ok(10))];
        assert_eq!(auto_decision(AutoResize::Never, "m", 10, &grown), None);
        assert_eq!(
            auto_decision(AutoResize::GrowOnly, "m", 10, &grown),
            Some(20)
        );
        assert_eq!(auto_decision(AutoResize::GrowOnly, "m", 10, &shrunk), None);
        assert_eq!(
            auto_decision(AutoResize::GrowShrink, "m", 10, &shrunk),
            Some(5)
        );
        assert_eq!(auto_decision(AutoResize::GrowShrink, "m", 10, &split), None);
        assert_eq!(auto_decision(AutoResize::GrowShrink, "m", 10, &[]), None);
        assert_eq!(auto_decision(AutoResize::GrowShrink, "m", 20, &grown), None);
    }
}
