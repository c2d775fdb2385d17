//! Stable names for an attached device, made by umpath itself (no udev
//! rule needed; with one that makes the same links, umpath's are
//! replaced by identical ones):
//!
//! - `/dev/umpath/NAME` → `../nbdN` (the map's name: alias, binding or WWID);
//! - `/dev/disk/by-id/umpath-mpath-WWID` → `../../nbdN`, shaped like
//!   dm-multipath's `dm-uuid-mpath-WWID` but with its own prefix, so it
//!   never collides with dm-multipath's link for the same LUN.

use std::io;
use std::path::{Path, PathBuf};

/// The links for map `name` with `wwid` on `/dev/nbd{index}` under `dev`
/// (normally `/dev`): `(link, target)`.
pub fn links(dev: &Path, name: &str, wwid: &str, index: u32) -> Vec<(PathBuf, PathBuf)> {
    let mut v = Vec::new();
    if is_safe(name) {
        v.push((
            dev.join("umpath").join(name),
            PathBuf::from(format!("../nbd{index}")),
        ));
    }
    if is_safe(wwid) {
        v.push((
            dev.join("disk/by-id").join(format!("umpath-mpath-{wwid}")),
            PathBuf::from(format!("../../nbd{index}")),
        ));
    }
    v
}

/// A name usable as one path component.
fn is_safe(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// Makes the links (replacing whatever is there).
pub fn create(dev: &Path, name: &str, wwid: &str, index: u32) -> io::Result<()> {
    for (link, target) in links(dev, name, wwid, index) {
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = link.with_extension("umpath-tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        std::fs::rename(&tmp, &link)?;
    }
    Ok(())
}

/// Removes the links if they still point at `/dev/nbd{index}`.
pub fn remove(dev: &Path, name: &str, wwid: &str, index: u32) {
    for (link, target) in links(dev, name, wwid, index) {
        if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            let _ = std::fs::remove_file(&link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_remove() {
        let d = tempfile::tempdir().unwrap();
        create(d.path(), "lun0", "35000c50015ea71ac", 3).unwrap();
        assert_eq!(
            std::fs::read_link(d.path().join("umpath/lun0")).unwrap(),
            PathBuf::from("../nbd3")
        );
        assert_eq!(
            std::fs::read_link(d.path().join("disk/by-id/umpath-mpath-35000c50015ea71ac")).unwrap(),
            PathBuf::from("../../nbd3")
        );
        // Another device took the name meanwhile: not ours to remove.
        create(d.path(), "lun0", "35000c50015ea71ac", 4).unwrap();
        remove(d.path(), "lun0", "35000c50015ea71ac", 3);
        assert!(d.path().join("umpath/lun0").symlink_metadata().is_ok());
        remove(d.path(), "lun0", "35000c50015ea71ac", 4);
        assert!(d.path().join("umpath/lun0").symlink_metadata().is_err());
        assert!(links(d.path(), "../x", "a/b", 0).is_empty());
    }
}
