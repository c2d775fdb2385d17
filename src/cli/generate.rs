//! `umpath generate` (hidden): the man pages and shell completions, made
//! from the clap definitions so they never drift from `--help`.
//!
//! ```sh
//! umpath generate man target/assets/man            # umpath.8, umpath-daemon.8, ...
//! umpath generate completions bash > umpath.bash
//! ```
//!
//! `scripts/build-deb.sh` runs both before `cargo deb`; the README's
//! manual install steps do the same.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Write umpath.8 and one page per subcommand (umpath-daemon.8, ...)
    /// into DIR.
    Man {
        /// The directory to write the pages to (made if missing).
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
}

pub fn run(args: &GenerateArgs) -> ExitCode {
    let r = match &args.what {
        What::Man { dir } => man_pages(dir).map(|files| {
            for f in files {
                println!("{}", f.display());
            }
        }),
        What::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "umpath", &mut out);
            std::io::stdout().write_all(&out)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("umpath generate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The top page's description.
const DESCRIPTION: &str =
    "umpath daemon does the job of dm-multipath and multipathd in userspace: \
it groups the paths to a LUN by WWID, applies the vendor rules of multipath.conf(5), \
checks paths, fails over and back, and exports each multipath map over NBD. \
The other subcommands talk to a running daemon over its control socket \
(show, fail, reinstate, fault, switch, reconfigure, shutdown) or work offline \
(check-config, explain, probe, simulate, demo).";

/// What the top page says beyond the options: files, environment,
/// signals, systemd, see also.
const EXTRA: &str = r#".SH FILES
.TP
\fI/etc/multipath.conf\fR
The configuration, in multipath-tools syntax plus umpath's \fBpaths\fR
section and keywords (\fBumpath_scsi_discovery\fR, \fBio_timeout\fR). When
this default file does not exist the daemon starts with built-in defaults,
as multipathd does; a file given with \fB\-\-config\fR must exist.
.TP
\fI/etc/multipath/conf.d/*.conf\fR
Read after the main file (\fBconfig_dir\fR).
.TP
\fI/etc/multipath/bindings\fR
user_friendly_names bindings (\fBbindings_file\fR).
.TP
\fI/run/umpath/nbd.sock\fR
The NBD Unix socket; exports are named after the maps
(\fBnbd+unix:///NAME?socket=/run/umpath/nbd.sock\fR).
.TP
\fI/run/umpath/control.sock\fR
The control socket.
.SH ENVIRONMENT
.TP
\fBUMPATH_LOG\fR
Log filter (\fBinfo\fR by default; \fBdebug\fR, \fBwarn\fR, or tracing
directives such as \fBumpath::engine=debug\fR).
.TP
\fBUMPATH_CONTROL_SOCKET\fR
The control socket (as \fB\-\-control\-socket\fR).
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR, \fBWATCHDOG_PID\fR
Set by systemd: READY=1, RELOADING=1 and STOPPING=1 are sent; with
\fBWatchdogSec=\fR WATCHDOG=1 is sent every half interval while the
daemon's supervisor answers.
.TP
\fBLISTEN_PID\fR, \fBLISTEN_FDS\fR, \fBLISTEN_FDNAMES\fR
Socket activation: sockets named \fBnbd\fR and \fBcontrol\fR (listening
Unix stream sockets) and \fBnbd\-tcp\fR (a listening TCP socket) are used
instead of binding. Any other socket or name is an error.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Re-read the configuration (as \fBumpath reconfigure\fR).
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop: no new clients, held IO fails (unless \fBqueue_without_daemon yes\fR),
in-flight IO gets 5 s, every path is flushed.
.SH SYSTEMD
\fBumpathd.service\fR runs the daemon (\fBType=notify\fR);
\fBumpathd.socket\fR holds \fI/run/umpath/nbd.sock\fR and
\fI/run/umpath/control.sock\fR so clients can connect before the daemon is
up. The service conflicts with \fBmultipathd.service\fR and
\fBmultipathd.socket\fR: do not run both on the same paths.
.SH SEE ALSO
\fBmultipath.conf\fR(5), \fBmultipathd\fR(8), \fBmultipath\fR(8),
\fBsystemd.socket\fR(5), \fBnbdinfo\fR(1), \fBnbd\-client\fR(8),
\fBqemu\-img\fR(1)
"#;

/// Writes the pages into `dir`; returns the files written.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command()
        .long_about(DESCRIPTION)
        .disable_help_subcommand(true);
    cmd.build();
    let mut files = Vec::new();
    write_page(&cmd, dir, true, &mut files)?;
    Ok(files)
}

fn write_page(
    cmd: &clap::Command,
    dir: &Path,
    top: bool,
    files: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("umpath {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render(&mut out)?;
    if top {
        out.extend_from_slice(EXTRA.as_bytes());
    }
    std::fs::write(&path, out)?;
    files.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, false, files)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_for_every_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = man_pages(dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"umpath.8".to_string()), "{names:?}");
        assert!(names.contains(&"umpath-daemon.8".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let top = std::fs::read_to_string(dir.path().join("umpath.8")).unwrap();
        assert!(
            top.starts_with(".ie") || top.contains(".TH umpath 8"),
            "{top}"
        );
        assert!(top.contains("umpath_scsi_discovery"));
        let daemon = std::fs::read_to_string(dir.path().join("umpath-daemon.8")).unwrap();
        assert!(daemon.contains("nbd\\-socket"), "{daemon}");
    }

    #[test]
    fn completions_know_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "umpath", &mut out);
            let s = String::from_utf8(out).unwrap();
            assert!(
                s.contains("reconfigure") && s.contains("nbd-socket"),
                "{shell}"
            );
        }
    }
}
