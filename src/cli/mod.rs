//! The `umpath` command line. Forms are a contract users and scripts rely
//! on (see README): `umpath daemon ...`, `umpath [--control-socket PATH]
//! show|fail|reinstate|fault|switch|reconfigure|shutdown ...`, `umpath demo`,
//! `umpath check-config`.

pub mod demo;
pub mod generate;
pub mod probe;
pub mod probe_iscsi;
pub mod top;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::control::{self, Command as Ctl};
use crate::daemon::{self, DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET};

#[derive(Debug, Parser)]
#[command(
    name = "umpath",
    version,
    about = "Userspace multipath engine: multipath.conf, round-robin, TUR checks, failover/failback, served over NBD"
)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "UMPATH_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
    /// multipath.conf to read (its conf.d directory, `config_dir`, is read
    /// too; by default `multipath/conf.d` next to the file).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log lines as text (journal entries under journald) or JSON.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "UMPATH_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ShowArg {
    Paths,
    Maps,
    Topology,
    Config,
    Status,
    Stats,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SimFormat {
    Summary,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PathWord {
    Path,
}

// Parsed once per run: the size of the `daemon` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the engine in the foreground (logs to stderr).
    Daemon {
        /// Unix socket to serve NBD on.
        #[arg(long, default_value = daemon::DEFAULT_NBD_SOCKET)]
        nbd_socket: PathBuf,
        /// Also serve NBD on TCP HOST:PORT (a bare PORT binds 127.0.0.1).
        #[arg(long)]
        nbd_listen: Option<String>,
        /// TLS on the TCP listener: off | optional | require. Default:
        /// require on any address but loopback (where plain TCP is
        /// refused), optional on loopback with a certificate, else off.
        #[arg(long, value_name = "MODE")]
        nbd_tls: Option<crate::nbd::TlsMode>,
        /// Server certificate chain for NBD TLS (PEM, read at start).
        #[arg(long, value_name = "FILE", requires = "nbd_tls_key")]
        nbd_tls_cert: Option<PathBuf>,
        /// Server private key for NBD TLS (PEM, read at start).
        #[arg(long, value_name = "FILE", requires = "nbd_tls_cert")]
        nbd_tls_key: Option<PathBuf>,
        /// CA certificates (PEM): TLS clients must present a certificate
        /// that chains to one of them.
        #[arg(long, value_name = "FILE", requires = "nbd_tls_cert")]
        nbd_tls_ca: Option<PathBuf>,
        /// Seconds a client has to finish the TLS handshake after STARTTLS.
        #[arg(long, value_name = "SECS", default_value_t = 10.0)]
        nbd_tls_timeout: f64,
        /// Who may open an export over TCP: EXPORT=RULE[,RULE...], a rule
        /// being cn:NAME (client certificate CN or SAN DNS/URI) and/or
        /// addr:CIDR joined by + (all must hold). Repeatable; an export
        /// without rules is open to every TCP client that got in.
        #[arg(long, value_name = "EXPORT=RULES")]
        nbd_allow: Vec<String>,
        /// Also use every SCSI disk found in sysfs (not blacklisted, with
        /// a WWID) as a path, like multipathd.
        #[arg(long)]
        scsi: bool,
        /// sysfs root for --scsi.
        #[arg(long, default_value = "/sys", requires = "scsi")]
        sysfs: PathBuf,
        /// Where the device nodes of SCSI disks are.
        #[arg(long, default_value = "/dev", requires = "scsi")]
        dev_dir: PathBuf,
        /// Group (name or gid) whose members may change things through the
        /// control socket (fail, reinstate, fault, switch, reconfigure,
        /// shutdown), besides root. Default: `umpath_admin_group` in
        /// multipath.conf's defaults, else root only. `show` is for everyone.
        #[arg(long)]
        admin_group: Option<String>,
        /// Group (name or gid) whose members may open NBD sessions on the
        /// Unix socket, besides root. Default: `umpath_nbd_group`, else the
        /// admin group, else root only.
        #[arg(long)]
        nbd_group: Option<String>,
        /// Seconds a control client has to send its command, and again to
        /// read its reply, before it is dropped.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        control_timeout: u64,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics (a bare
        /// PORT binds 127.0.0.1); overrides `umpath_metrics_listen`.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_listen: Option<String>,
        /// Refuse to start when the metrics address cannot be bound
        /// (default: log the error and serve without metrics).
        #[arg(long)]
        metrics_required: bool,
        #[command(flatten)]
        limits: NbdLimitArgs,
    },
    /// List the SCSI disks found in sysfs: identity, H:C:T:L, WWID, the
    /// device rule that applies, the map each falls in or why it is
    /// blacklisted.
    Probe(probe::ProbeArgs),
    /// Show paths, maps, the topology (like `multipath -ll`), the config, or
    /// one path's effective settings (`show path NAME config`).
    Show {
        /// paths | maps | topology | config | status | stats | daemon |
        /// blacklist | devices | maps stats | path NAME config |
        /// paths [raw] format FMT | maps [raw] format FMT
        #[arg(num_args = 1.., required = true, allow_hyphen_values = true)]
        what: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A live view of maps and paths: IOPS, throughput, latency, in
    /// flight, state, last event (q quits). Not on a terminal: one table
    /// of two samples one interval apart.
    Top(top::TopArgs),
    /// Fail a path (it stays failed until reinstated).
    Fail {
        /// The word `path`.
        what: PathWord,
        /// The path's name (as `show paths` lists it).
        name: String,
    },
    /// Reinstate a path failed by `fail path`.
    Reinstate {
        /// The word `path`.
        what: PathWord,
        /// The path's name (as `show paths` lists it).
        name: String,
    },
    /// Inject a fault: error | delay MS | hang | flaky PERCENT | clear,
    /// optionally followed by read, write and/or check.
    Fault {
        /// The word `path`.
        what: PathWord,
        /// The path's name (as `show paths` lists it).
        name: String,
        /// error | delay MS | hang | flaky PERCENT | clear, then optionally
        /// read, write and/or check (default: read and write).
        #[arg(num_args = 1.., required = true, allow_hyphen_values = true)]
        spec: Vec<String>,
    },
    /// Switch a map to path group N (1-based): `switch map NAME group N`
    /// (multipathd's spelling `switchgroup map NAME group N` too).
    #[command(visible_alias = "switchgroup")]
    Switch {
        /// The word `map`.
        #[arg(value_parser = ["map"])]
        map_word: String,
        /// The map's name (alias or WWID, as `show maps` lists it).
        map: String,
        /// The word `group`.
        #[arg(value_parser = ["group"])]
        group_word: String,
        /// The path group, numbered from 1 as `show topology` lists them.
        group: usize,
    },
    /// Stop queueing: IO held by no_path_retry fails now, and IO with no
    /// usable path fails until `restorequeueing` or a reconfigure:
    /// `disablequeueing map NAME` or `disablequeueing maps`.
    Disablequeueing {
        /// `map NAME` or `maps`.
        #[arg(num_args = 1..=2, required = true)]
        target: Vec<String>,
    },
    /// Back to the configured no_path_retry: `restorequeueing map NAME`
    /// or `restorequeueing maps`.
    Restorequeueing {
        /// `map NAME` or `maps`.
        #[arg(num_args = 1..=2, required = true)]
        target: Vec<String>,
    },
    /// Read the LUN's size again from a map's usable paths (they must
    /// agree) and give the map, and its kernel NBD device, that size:
    /// `resize map NAME`. Connected NBD clients keep the size they were
    /// told; new connections see the new one.
    Resize {
        /// The word `map`.
        #[arg(value_parser = ["map"])]
        map_word: String,
        /// The map's name (alias or WWID, as `show maps` lists it).
        map: String,
    },
    /// Join a path to its map by WWID, as hotplug does: `add path DEV`
    /// (a declared path removed with `del path`, or a SCSI disk such as
    /// sdc when SCSI discovery is on). The blacklist applies.
    Add {
        /// The word `path`.
        #[arg(value_parser = ["path"])]
        path_word: String,
        /// The path's name.
        name: String,
    },
    /// Take a running path out of its map: `del path NAME` (IO moves to
    /// the other paths; until `add path` or a reconfigure).
    Del {
        /// The word `path`.
        #[arg(value_parser = ["path"])]
        path_word: String,
        /// The path's name (as `show paths` lists it).
        name: String,
    },
    /// Re-read the configuration (a bad file is rejected; the running one stays).
    Reconfigure,
    /// Stop the daemon gracefully (kernel NBD devices stay and wait for
    /// the next daemon, unless --detach).
    Shutdown {
        /// Flush and detach every kernel NBD device first.
        #[arg(long)]
        detach: bool,
    },
    /// Give a map a kernel block device (/dev/nbdN, the first free one
    /// unless named) through the kernel's NBD netlink interface.
    Attach {
        /// The map's name (alias or WWID, as `show maps` lists it).
        map: String,
        /// The device, e.g. /dev/nbd0.
        device: Option<String>,
    },
    /// Flush and disconnect a map's kernel NBD device.
    Detach {
        /// The map's name.
        map: String,
        /// Detach even when the device is mounted or held open.
        #[arg(long)]
        force: bool,
    },
    /// Validate a configuration (and its conf.d) without starting anything.
    CheckConfig,
    /// Print every effective property for a device with where it came from
    /// (multipaths entry, overrides, device entry, defaults, built-in).
    Explain {
        /// The device's vendor (SCSI INQUIRY), e.g. OSNEXUS.
        vendor: String,
        /// The device's product, e.g. QUANTASTOR.
        product: String,
        /// The device's revision (optional).
        revision: Option<String>,
        /// The WWID (selects the multipaths entry and the wwid blacklist).
        #[arg(long, default_value = "")]
        wwid: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a failover scenario (TOML, see examples/) against the real
    /// engine on scratch images; writes report.json, report.csv and
    /// chart.svg, and fails if any data was wrong or any error reached the
    /// client while a path was usable.
    Simulate {
        /// The scenario file (TOML; see examples/).
        scenario: PathBuf,
        /// Where the report goes (default ./umpath-sim-<scenario file stem>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// What to print on stdout: a summary, or the whole report.
        #[arg(long, value_enum, default_value = "summary")]
        format: SimFormat,
    },
    /// Run the engine on an embedded default: a sparse 1 GiB image reached
    /// by two file paths with the QuantaStor stanza, served over NBD.
    Demo(demo::DemoArgs),
    /// Write the man pages or print shell completions (for packaging).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

/// NBD server limits; each overrides its `defaults` keyword
/// (`nbd_handshake_timeout`, ...), whose defaults are shown.
#[derive(Debug, Clone, clap::Args)]
pub struct NbdLimitArgs {
    /// Seconds an NBD client has to finish the handshake [default 10].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..))]
    pub nbd_handshake_timeout: Option<u32>,
    /// Seconds an NBD client may stall mid-payload or leave a reply
    /// unread before it is closed [default 30].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..))]
    pub nbd_payload_timeout: Option<u32>,
    /// NBD connections at once, all clients together [default 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub nbd_max_connections: Option<u32>,
    /// NBD connections at once per client uid (Unix socket) [default 128].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub nbd_max_connections_per_uid: Option<u32>,
    /// MiB of NBD request payloads and replies in flight, all clients
    /// together [default 256].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..))]
    pub nbd_memory_budget: Option<u32>,
}

impl From<NbdLimitArgs> for daemon::NbdLimitOptions {
    fn from(a: NbdLimitArgs) -> Self {
        daemon::NbdLimitOptions {
            handshake_timeout: a.nbd_handshake_timeout,
            payload_timeout: a.nbd_payload_timeout,
            max_connections: a.nbd_max_connections,
            max_connections_per_uid: a.nbd_max_connections_per_uid,
            memory_budget_mib: a.nbd_memory_budget,
        }
    }
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Plain lines (colour only on a terminal; under journald, native
    /// journal entries with the map and path as fields).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// True when stderr is the journal stream systemd gave us (JOURNAL_STREAM
/// names its device and inode), not just inherited from a parent.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(md) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(md.dev()) && ino.parse::<u64>().ok() == Some(md.ino())
}

/// Sets up logging (`UMPATH_LOG` or `RUST_LOG` filter, default info):
/// `--log-format json` writes one JSON object per line; otherwise, under
/// journald, native journal entries (priority from the level, the map,
/// path and other fields as journal fields, e.g. `MAP=lun0 PATH=p0`); else
/// plain lines, coloured only when stderr is a terminal.
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = || {
        EnvFilter::try_from_env("UMPATH_LOG")
            .or_else(|_| EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let format = LOG_FORMAT.get().copied().unwrap_or_default();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    if format == LogFormat::Json {
        let _ = tracing_subscriber::registry()
            .with(fmt.json().flatten_event(true).with_filter(filter()))
            .try_init();
        return;
    }
    if stderr_is_journal() {
        if let Ok(j) = tracing_journald::layer() {
            let j = j
                .with_field_prefix(None)
                .with_syslog_identifier("umpath".to_string());
            let _ = tracing_subscriber::registry()
                .with(j.with_filter(filter()))
                .try_init();
            return;
        }
        let _ = tracing_subscriber::registry()
            .with(fmt.without_time().with_ansi(false).with_filter(filter()))
            .try_init();
        return;
    }
    use std::io::IsTerminal;
    let _ = tracing_subscriber::registry()
        .with(
            fmt.with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter()),
        )
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    if !matches!(
        cli.command,
        Cmd::Daemon { .. } | Cmd::Demo(_) | Cmd::Simulate { .. }
    ) {
        quiet_on_closed_pipe();
    }
    match cli.command {
        Cmd::Daemon {
            nbd_socket,
            nbd_listen,
            nbd_tls,
            nbd_tls_cert,
            nbd_tls_key,
            nbd_tls_ca,
            nbd_tls_timeout,
            nbd_allow,
            scsi,
            sysfs,
            dev_dir,
            admin_group,
            nbd_group,
            control_timeout,
            metrics_listen,
            metrics_required,
            limits,
        } => {
            init_logging();
            let tls_timeout = match std::time::Duration::try_from_secs_f64(nbd_tls_timeout) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    eprintln!("umpath: --nbd-tls-timeout must be a positive number of seconds");
                    return ExitCode::FAILURE;
                }
            };
            let opts = daemon::Options {
                config: cli.config,
                nbd_socket: Some(nbd_socket),
                nbd_listen,
                nbd_tls: crate::nbd::TlsOptions {
                    mode: nbd_tls,
                    cert: nbd_tls_cert,
                    key: nbd_tls_key,
                    ca: nbd_tls_ca,
                    handshake_timeout: Some(tls_timeout),
                    allow: nbd_allow,
                },
                control_socket: cli.control_socket,
                scsi: scsi.then(|| crate::discovery::DiscoverOptions {
                    sgio_fallback: sysfs == std::path::Path::new("/sys"),
                    sysfs,
                    dev_dir,
                }),
                access: crate::access::AccessOptions {
                    admin_group,
                    nbd_group,
                },
                control: control::server::Bounds {
                    timeout: Duration::from_secs(control_timeout),
                    ..Default::default()
                },
                metrics_listen,
                metrics_required,
                nbd_limits: limits.into(),
            };
            match daemon::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("umpath: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Demo(args) => demo::run(args),
        Cmd::Top(args) => top::run(&cli.control_socket, &args),
        Cmd::Generate(args) => generate::run(&args),
        Cmd::Simulate {
            scenario,
            out,
            format,
        } => simulate(&scenario, out, format),
        Cmd::Probe(args) => probe::run(&args),
        Cmd::CheckConfig => check_config(&cli.config),
        Cmd::Explain {
            vendor,
            product,
            revision,
            wwid,
            json,
        } => explain(
            &cli.config,
            &vendor,
            &product,
            revision.as_deref().unwrap_or(""),
            &wwid,
            json,
        ),
        Cmd::Show { what, json } => {
            let mut line = format!("show {}", what.join(" "));
            if json {
                line.push_str(" --json");
            }
            match Ctl::parse(&line) {
                Ok(cmd @ (Ctl::Show { .. } | Ctl::ShowPathConfig { .. } | Ctl::ShowFormat { .. })) => {
                    send(&cli.control_socket, &cmd)
                }
                _ => usage(&format!(
                    "cannot show {:?}: expected paths, maps, topology, config, status, stats, daemon, \
                     blacklist, devices, maps stats, paths|maps [raw] format FMT, or path NAME config",
                    what.join(" ")
                )),
            }
        }
        Cmd::Disablequeueing { target } | Cmd::Restorequeueing { target }
            if !matches!(target.as_slice(), [m, _] if m == "map")
                && !matches!(target.as_slice(), [m] if m == "maps") =>
        {
            usage("expected `map NAME` or `maps`")
        }
        Cmd::Disablequeueing { target } => send(
            &cli.control_socket,
            &Ctl::DisableQueueing {
                map: target.get(1).cloned(),
            },
        ),
        Cmd::Restorequeueing { target } => send(
            &cli.control_socket,
            &Ctl::RestoreQueueing {
                map: target.get(1).cloned(),
            },
        ),
        Cmd::Fail { name, .. } => send(&cli.control_socket, &Ctl::FailPath { path: name }),
        Cmd::Reinstate { name, .. } => {
            send(&cli.control_socket, &Ctl::ReinstatePath { path: name })
        }
        Cmd::Fault { name, spec, .. } => send(
            &cli.control_socket,
            &Ctl::FaultPath {
                path: name,
                spec: spec.join(" "),
            },
        ),
        Cmd::Switch { map, group, .. } => {
            if group == 0 {
                return usage("path groups are numbered from 1");
            }
            send(&cli.control_socket, &Ctl::SwitchGroup { map, group })
        }
        Cmd::Resize { map, .. } => send(&cli.control_socket, &Ctl::ResizeMap { map }),
        Cmd::Add { name, .. } => send(&cli.control_socket, &Ctl::AddPath { path: name }),
        Cmd::Del { name, .. } => send(&cli.control_socket, &Ctl::DelPath { path: name }),
        Cmd::Reconfigure => send(&cli.control_socket, &Ctl::Reconfigure),
        Cmd::Shutdown { detach: false } => send(&cli.control_socket, &Ctl::Shutdown),
        Cmd::Shutdown { detach: true } => send(&cli.control_socket, &Ctl::ShutdownDetach),
        Cmd::Attach { map, device } => {
            let device = match device.as_deref().map(crate::kernel::parse_device) {
                None => None,
                Some(Some(i)) => Some(i),
                Some(None) => return usage("the device is /dev/nbdN (or nbdN, or N)"),
            };
            send(&cli.control_socket, &Ctl::Attach { map, device })
        }
        Cmd::Detach { map, force } => send(&cli.control_socket, &Ctl::Detach { map, force }),
    }
}

/// A command whose output goes to a pipe that closes early (`| head`,
/// `| true`) ends quietly, as other Unix tools do, instead of failing on
/// EPIPE. Only for one-shot client commands: the daemon keeps ignoring
/// SIGPIPE so a client that goes away cannot kill it.
fn quiet_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installs the default disposition (no Rust handler runs), at
    // start-up before any other thread exists.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// A size argument: bytes, or a number with K, M, G or T (powers of 1024;
/// "KiB", "MB" and the like are read the same way).
pub fn parse_size_arg(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    match crate::sim::scenario::parse_size(t) {
        Some(0) | None => Err(format!(
            "{s:?} is not a size: use bytes or a number with K, M, G or T (e.g. 64M, 1G)"
        )),
        Some(n) => Ok(n),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("umpath: {msg}");
    ExitCode::from(2)
}

fn send(socket: &std::path::Path, cmd: &Ctl) -> ExitCode {
    match control::client::request(socket, cmd, Duration::from_secs(60)) {
        Err(e) => {
            eprintln!("umpath: {e}");
            ExitCode::FAILURE
        }
        Ok(resp) => {
            if let Some(data) = &resp.data {
                match serde_json::to_string_pretty(data) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("umpath: cannot print the answer: {e}"),
                }
            }
            if resp.ok {
                print!("{}", resp.text);
                ExitCode::SUCCESS
            } else {
                eprintln!("umpath: {}", resp.text.trim_end());
                ExitCode::FAILURE
            }
        }
    }
}

fn simulate(file: &std::path::Path, out: Option<PathBuf>, format: SimFormat) -> ExitCode {
    use crate::sim::scenario::Scenario;
    if std::env::var_os("UMPATH_LOG").is_none() {
        std::env::set_var("UMPATH_LOG", "warn");
    }
    init_logging();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("umpath simulate: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let sc = match Scenario::parse(&text, &file.display().to_string()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("umpath simulate: {e}");
            return ExitCode::from(2);
        }
    };
    let stem = file
        .file_stem()
        .map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
    let out = out.unwrap_or_else(|| PathBuf::from(format!("umpath-sim-{stem}")));
    eprintln!(
        "umpath simulate: {} ({} s, {} paths, {}% reads, bs {}, iodepth {}) -> {}",
        sc.name,
        sc.duration_s,
        sc.paths.len(),
        sc.read_pct,
        sc.bs,
        sc.iodepth,
        out.display()
    );
    let r = match crate::sim::run::run(&sc, &out) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("umpath simulate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match format {
        SimFormat::Json => println!("{}", r.to_json()),
        SimFormat::Csv => print!("{}", r.to_csv()),
        SimFormat::Summary => {
            println!("{}: {}", r.scenario, if r.passed { "PASS" } else { "FAIL" });
            println!(
                "  {} IOs ({} reads, {} writes), {} errors ({} while a path was usable), {} data mismatches",
                r.ios, r.reads, r.writes, r.errors, r.errors_while_a_path_was_usable, r.data_mismatches
            );
            println!(
                "  latency p50 {} us, p99 {} us, p99.9 {} us, max {} us",
                r.latency.p50_us, r.latency.p99_us, r.latency.p999_us, r.latency.max_us
            );
            for f in &r.failovers {
                println!(
                    "  failover  {} at {:>6} ms ({}): detected after {}",
                    f.path,
                    f.at_ms,
                    f.event,
                    f.detected_after_ms
                        .map_or("never".into(), |m| format!("{m} ms"))
                );
            }
            for f in &r.failbacks {
                println!(
                    "  failback  {} at {:>6} ms ({}): active after {}, carrying IO after {}",
                    f.path,
                    f.at_ms,
                    f.event,
                    f.detected_after_ms
                        .map_or("never".into(), |m| format!("{m} ms")),
                    f.carrying_io_after_ms
                        .map_or("never".into(), |m| format!("{m} ms"))
                );
            }
            for p in &r.problems {
                println!("  problem: {p}");
            }
            println!(
                "  report: {}/report.json, report.csv, chart.svg",
                out.display()
            );
        }
    }
    if r.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match crate::config::load(path) {
        Ok(cfg) => {
            for w in cfg.warnings() {
                eprintln!("{w}");
            }
            println!("{}: ok", cfg.files().join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            let n = e.errors().count();
            eprintln!(
                "{}: {n} error{}; configuration rejected",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

fn explain(
    path: &std::path::Path,
    vendor: &str,
    product: &str,
    revision: &str,
    wwid: &str,
    json: bool,
) -> ExitCode {
    // Like multipath-tools, no configuration file means built-in values.
    let cfg = match crate::config::load_or_empty(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let id = crate::config::PathIdentity {
        vendor,
        product,
        revision,
        wwid,
    };
    if json {
        let v = serde_json::json!({
            "files": cfg.files(),
            "blacklisted": cfg.blacklisted(&id),
            "device_entries": cfg.matching_devices(&id).iter().map(|d| d.describe_with_origin()).collect::<Vec<_>>(),
            "properties": cfg.explain_json(&id),
        });
        match serde_json::to_string_pretty(&v) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("umpath: {e}"),
        }
        return ExitCode::SUCCESS;
    }
    let mut out = format!(
        "# vendor \"{vendor}\" product \"{product}\" revision \"{revision}\" wwid \"{wwid}\"\n# configuration: {}\n",
        cfg.files().join(", ")
    );
    if let Some(why) = cfg.blacklisted(&id) {
        out.push_str(&format!("# {why}: umpath would not use such a path\n"));
    }
    let devs = cfg.matching_devices(&id);
    if devs.is_empty() {
        out.push_str("# matching device entries: none\n");
    } else {
        out.push_str("# matching device entries, strongest first:\n");
        for d in devs {
            out.push_str(&format!("#   {}\n", d.describe_with_origin()));
        }
    }
    out.push_str(&cfg.explain_text(&id));
    print!("{out}");
    ExitCode::SUCCESS
}
