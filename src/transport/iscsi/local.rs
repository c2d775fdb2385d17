//! What an iSCSI path reads from this host: CHAP secrets kept in files
//! and the initiator name.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::SecretSource;

/// Where open-iscsi keeps the host's initiator name.
pub const OPEN_ISCSI_NAME_FILE: &str = "/etc/iscsi/initiatorname.iscsi";
/// Where systemd keeps the machine's id (the generated name's seed).
pub const MACHINE_ID_FILE: &str = "/etc/machine-id";
/// The prefix of a generated initiator name.
pub const GENERATED_PREFIX: &str = "iqn.2026-11.org.umpath";

/// A secret file larger than this is not a CHAP secret.
const SECRET_FILE_MAX: u64 = 4096;

/// Why a secret could not be had. Never holds the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("CHAP secret file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "CHAP secret file {path} can be read by others (mode {mode:04o}, owner uid {uid}): \
         it must belong to root and be readable by its owner only (chown root {path}; chmod 600 {path})"
    )]
    Exposed { path: PathBuf, mode: u32, uid: u32 },
    #[error("CHAP secret file {path} is not a regular file of at most {SECRET_FILE_MAX} bytes")]
    NotASecret { path: PathBuf },
    #[error("CHAP secret file {path} is empty")]
    Empty { path: PathBuf },
}

/// The secret a path declares: inline, or the first line of a file that
/// only root (or this process's user) can read. Trailing white space and
/// the newline are not part of the secret.
pub fn secret(source: &SecretSource) -> Result<String, SecretError> {
    match source {
        SecretSource::Inline(s) => Ok(s.clone()),
        SecretSource::File(path) => secret_file(path),
    }
}

fn secret_file(path: &Path) -> Result<String, SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() || meta.len() > SECRET_FILE_MAX {
        return Err(SecretError::NotASecret {
            path: path.to_path_buf(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.mode() & 0o077 != 0 || (meta.uid() != 0 && meta.uid() != me) {
        return Err(SecretError::Exposed {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
        });
    }
    let mut text = String::new();
    f.take(SECRET_FILE_MAX)
        .read_to_string(&mut text)
        .map_err(io)?;
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(line.to_string())
}

/// The initiator name to log in with when a path declares none: the
/// host's open-iscsi name (`InitiatorName=` in `open_iscsi`), else one
/// generated from the machine id (`machine_id`), the same at every start
/// of this machine, else from the host name.
pub fn initiator_name(open_iscsi: &Path, machine_id: &Path) -> String {
    if let Some(name) = std::fs::read_to_string(open_iscsi).ok().and_then(|t| {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix("InitiatorName="))
            .map(|n| n.trim().to_string())
            .filter(|n| crate::config::paths::check_iscsi_name(n).is_ok())
    }) {
        return name;
    }
    let seed = std::fs::read_to_string(machine_id)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default();
    format!("{GENERATED_PREFIX}:{:016x}", fnv1a(seed.as_bytes()))
}

/// FNV-1a, 64 bits: a stable digest of the machine id (the name must not
/// show the id itself, and need not be secret).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_must_be_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q0.secret");
        std::fs::write(&p, "tecmint_chap12\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            secret(&SecretSource::File(p.clone())).unwrap(),
            "tecmint_chap12"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = secret(&SecretSource::File(p.clone())).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, SecretError::Exposed { mode: 0o644, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("chmod 600") && !msg.contains("tecmint_chap12"),
            "{msg}"
        );
        std::fs::write(&p, "\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(matches!(
            secret(&SecretSource::File(p.clone())),
            Err(SecretError::Empty { .. })
        ));
        assert!(matches!(
            secret(&SecretSource::File(d.path().join("missing"))),
            Err(SecretError::Io { .. })
        ));
        assert!(matches!(
            secret(&SecretSource::File(d.path().to_path_buf())),
            Err(SecretError::NotASecret { .. })
        ));
        assert_eq!(secret(&SecretSource::Inline("s".into())).unwrap(), "s");
    }

    #[test]
    fn the_initiator_name_is_open_iscsis_else_stable() {
        let d = tempfile::tempdir().unwrap();
        let oi = d.path().join("initiatorname.iscsi");
        let mid = d.path().join("machine-id");
        std::fs::write(&mid, "0123456789abcdef0123456789abcdef\n").unwrap();
        let generated = initiator_name(&oi, &mid);
        assert!(
            generated.starts_with("iqn.2026-11.org.umpath:"),
            "{generated}"
        );
        assert!(!generated.contains("0123456789abcdef0123"), "{generated}");
        assert_eq!(generated, initiator_name(&oi, &mid), "stable");
        assert!(crate::config::paths::check_iscsi_name(&generated).is_ok());
        std::fs::write(&mid, "another machine\n").unwrap();
        assert_ne!(generated, initiator_name(&oi, &mid));
        std::fs::write(
            &oi,
            "## DO NOT EDIT\n#InitiatorName=iqn.1993-08.org.debian:01:old\nInitiatorName=iqn.1993-08.org.debian:01:abcdef\n",
        )
        .unwrap();
        assert_eq!(
            initiator_name(&oi, &mid),
            "iqn.1993-08.org.debian:01:abcdef"
        );
    }
}
