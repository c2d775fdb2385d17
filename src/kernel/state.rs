//! The record of the kernel NBD devices a daemon attached, so that the
//! next daemon (after a restart, an upgrade or a crash) finds them and
//! hands them fresh connections. One JSON file, replaced atomically.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name in the runtime directory (next to the control socket).
pub const STATE_FILE: &str = "nbd-devices.json";

/// One attached device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub map: String,
    pub wwid: String,
    pub index: u32,
    pub size: u64,
    pub connections: usize,
}

/// Where the state file of a daemon with this control socket lives.
pub fn path_for(control_socket: &Path) -> PathBuf {
    control_socket
        .parent()
        .unwrap_or(Path::new("/run/umpath"))
        .join(STATE_FILE)
}

/// Reads the records; a missing file is an empty list.
pub fn load(path: &Path) -> io::Result<Vec<Record>> {
    match std::fs::read(path) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Replaces the file (write to a temporary file, fsync, rename); an empty
/// list removes it.
pub fn store(path: &Path, records: &[Record]) -> io::Result<()> {
    if records.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(records).map_err(io::Error::other)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_empty_removes() {
        let d = tempfile::tempdir().unwrap();
        let p = path_for(&d.path().join("control.sock"));
        assert_eq!(load(&p).unwrap(), vec![]);
        let r = vec![Record {
            map: "lun0".into(),
            wwid: "35000c50015ea71ac".into(),
            index: 0,
            size: 1 << 30,
            connections: 2,
        }];
        store(&p, &r).unwrap();
        assert_eq!(load(&p).unwrap(), r);
        store(&p, &[]).unwrap();
        assert!(!p.exists());
        std::fs::write(&p, b"not json").unwrap();
        assert!(load(&p).is_err());
    }
}
