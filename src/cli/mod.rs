//! The `umpath` command line. Forms are a contract users and scripts rely
//! on (see README): `umpath daemon ...`, `umpath [--control-socket PATH]
//! show|fail|reinstate|fault|switch|reconfigure|shutdown ...`, `umpath demo`,
//! `umpath check-config`.

pub mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::control::{self, Command as Ctl, ShowWhat};
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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PathWord {
    Path,
}

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
    },
    /// Show paths, maps, the topology (like `multipath -ll`), the config, or
    /// one path's effective settings (`show path NAME config`).
    Show {
        /// paths | maps | topology | config | status | path NAME config
        #[arg(num_args = 1..=3, required = true)]
        what: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Fail a path (it stays failed until reinstated).
    Fail { what: PathWord, name: String },
    /// Reinstate a path failed by `fail path`.
    Reinstate { what: PathWord, name: String },
    /// Inject a fault: error | delay MS | hang | flaky PERCENT | clear,
    /// optionally followed by read, write and/or check.
    Fault {
        what: PathWord,
        name: String,
        #[arg(num_args = 1.., required = true, allow_hyphen_values = true)]
        spec: Vec<String>,
    },
    /// Switch a map to path group N (1-based): `switch map NAME group N`.
    Switch {
        #[arg(value_parser = ["map"])]
        map_word: String,
        map: String,
        #[arg(value_parser = ["group"])]
        group_word: String,
        group: usize,
    },
    /// Re-read the configuration (a bad file is rejected; the running one stays).
    Reconfigure,
    /// Stop the daemon gracefully.
    Shutdown,
    /// Validate a configuration (and its conf.d) without starting anything.
    CheckConfig,
    /// Print every effective property for a device with where it came from
    /// (multipaths entry, overrides, device entry, defaults, built-in).
    Explain {
        vendor: String,
        product: String,
        revision: Option<String>,
        /// The WWID (selects the multipaths entry and the wwid blacklist).
        #[arg(long, default_value = "")]
        wwid: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the engine on an embedded default: a sparse 1 GiB image reached
    /// by two file paths with the QuantaStor stanza, served over NBD.
    Demo(demo::DemoArgs),
}

/// Sets up logging: compact lines on a terminal, no timestamps or colour
/// under journald (which adds its own).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("UMPATH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if journald {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Daemon {
            nbd_socket,
            nbd_listen,
        } => {
            init_logging();
            let opts = daemon::Options {
                config: cli.config,
                nbd_socket: Some(nbd_socket),
                nbd_listen,
                control_socket: cli.control_socket,
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
            let words: Vec<&str> = what.iter().map(String::as_str).collect();
            let cmd = match words.as_slice() {
                ["path", name, "config"] => Ctl::ShowPathConfig {
                    path: name.to_string(),
                    json,
                },
                [w] => match ShowArg::from_str(w, true) {
                    Ok(a) => Ctl::Show {
                        what: match a {
                            ShowArg::Paths => ShowWhat::Paths,
                            ShowArg::Maps => ShowWhat::Maps,
                            ShowArg::Topology => ShowWhat::Topology,
                            ShowArg::Config => ShowWhat::Config,
                            ShowArg::Status => ShowWhat::Status,
                        },
                        json,
                    },
                    Err(_) => return usage(&format!("cannot show {w:?}: expected paths, maps, topology, config, status or `path NAME config`")),
                },
                _ => return usage("expected: show paths|maps|topology|config|status [--json], or show path NAME config"),
            };
            send(&cli.control_socket, &cmd)
        }
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
        Cmd::Reconfigure => send(&cli.control_socket, &Ctl::Reconfigure),
        Cmd::Shutdown => send(&cli.control_socket, &Ctl::Shutdown),
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
