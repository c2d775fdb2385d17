//! `umpath demo`: the engine on an embedded default, no root needed.
//!
//! Makes a scratch directory with a sparse image, a multipath.conf with the
//! QuantaStor stanza (as the vendor documents it) and two `file` paths to
//! the image, starts the engine, prints the NBD URI, client commands and
//! the topology, serves until Ctrl-C, then removes what it made.
//!
//! `--drill` runs a failover drill: a light read load on the map, and
//! every few seconds one path is failed or reinstated in turn (fail p0,
//! reinstate p0, fail p1, reinstate p1, ...), so `umpath top` shows IO
//! moving between the paths with no other tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tracing::{info, warn};

use crate::control::server::Handler;
use crate::control::Command;
use crate::daemon::{self, Daemon};
use crate::error::{Error, Result};
use crate::export::{Completion, Export, IoBuf, Op, Request};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Scratch directory (default: a new one under $TMPDIR).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Image size: bytes, or with a suffix (64M, 1G, 2T).
    #[arg(long, default_value = "1G", value_parser = super::parse_size_arg)]
    pub size: u64,
    /// Also serve NBD on TCP HOST:PORT.
    #[arg(long)]
    pub nbd_listen: Option<String>,
    /// Failover drill: a light read load, and every SECS seconds (default
    /// 5) a path is failed or reinstated in turn; watch it with `umpath top`.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "5")]
    pub drill: Option<u64>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT
    /// binds 127.0.0.1).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
}

/// The export name of the demo map.
pub const DEMO_MAP: &str = "lun0";

/// The embedded configuration: the QuantaStor stanza, an alias and two
/// `file` paths to `image`.
pub fn demo_config(image: &Path) -> String {
    let path = |name: &str| {
        format!(
            "    path {{\n        name      {name}\n        transport file\n        file      {}\n        \
             vendor    \"OSNEXUS\"\n        product   \"QUANTASTOR\"\n        revision  \"0001\"\n        \
             wwid      \"36000c29abcdef001\"\n        serial    \"QS0001\"\n    }}\n",
            image.display()
        )
    };
    format!(
        "# umpath demo: one LUN (a sparse image) reached through two paths.\n\
         defaults {{\n    polling_interval 2\n    checker_timeout  5\n}}\n\n\
         devices {{\n    # The QuantaStor stanza, verbatim from the vendor's XenServer guide.\n{}}}\n\n\
         multipaths {{\n    multipath {{\n        wwid  \"36000c29abcdef001\"\n        alias {DEMO_MAP}\n    }}\n}}\n\n\
         paths {{\n{}{}}}\n",
        crate::config::QUANTASTOR_DEVICE,
        path("p0"),
        path("p1"),
    )
}

/// Writes the demo's files into `dir`; returns the config path.
pub fn prepare(dir: &Path, size: u64) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let image = dir.join("lun0.img");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&image)?;
    f.set_len(size)?;
    let config = dir.join("multipath.conf");
    std::fs::write(&config, demo_config(&image))?;
    Ok(config)
}

pub fn run(args: DemoArgs) -> ExitCode {
    crate::cli::init_logging();
    let made_dir = args.dir.is_none();
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("umpath-demo-{}", std::process::id()))
    });
    let result = serve(&dir, args);
    if made_dir {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("umpath demo: cannot remove {}: {e}", dir.display());
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("umpath demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(dir: &Path, args: DemoArgs) -> Result<()> {
    let config = prepare(dir, args.size)
        .map_err(|e| Error::io(format!("cannot prepare {}", dir.display()), e))?;
    let nbd_socket = dir.join("nbd.sock");
    let control_socket = dir.join("control.sock");
    let opts = daemon::Options {
        config,
        nbd_tls: Default::default(),
        nbd_socket: Some(nbd_socket.clone()),
        nbd_listen: args.nbd_listen,
        control_socket: control_socket.clone(),
        scsi: None,
        access: Default::default(),
        control: Default::default(),
        metrics_listen: args.metrics_listen,
        metrics_required: false,
        nbd_limits: daemon::NbdLimitOptions::default(),
    };
    let drill = args.drill.map(|s| Duration::from_secs(s.max(1)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the runtime", e))?;
    let r = rt.block_on(async {
        let (d, servers) = Daemon::start(opts).await?;
        print_banner(&d, &nbd_socket, &control_socket, drill).await;
        let drill = drill.map(|every| {
            (
                tokio::spawn(run_drill(d.clone(), every)),
                tokio::spawn(drill_load(d.clone())),
            )
        });
        d.wait(servers).await;
        if let Some((a, b)) = drill {
            a.abort();
            b.abort();
        }
        Ok(())
    });
    // A check stuck in a device must not keep the demo from exiting.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    r
}

async fn print_banner(
    d: &Daemon,
    nbd_socket: &Path,
    control_socket: &Path,
    drill: Option<Duration>,
) {
    let sock = nbd_socket.display();
    let uri = format!("nbd+unix:///{DEMO_MAP}?socket={sock}");
    let ctl = control_socket.display();
    // The commands are printed so they run as printed: this binary's own
    // path, not a bare `umpath` that may not be on PATH.
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "umpath".to_string());
    let me = shell_quote(&me);
    println!("umpath demo: map {DEMO_MAP} is served over NBD at");
    println!("{uri}");
    println!();
    println!("Try, from another terminal (Debian packages: libnbd-bin for nbdinfo and");
    println!("nbdfuse, qemu-utils for qemu-io, nbd-client for nbd-client):");
    println!("  nbdinfo '{uri}'");
    println!("  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' '{uri}'");
    println!("  mkdir -p /tmp/lun0 && nbdfuse /tmp/lun0 '{uri}' &  # the export as a file");
    println!("  nbd-client -unix {sock} -N {DEMO_MAP} /dev/nbd0     # needs root and the nbd kernel module");
    println!("  {me} --control-socket {ctl} show topology");
    println!("  {me} --control-socket {ctl} fail path p0");
    println!("  {me} --control-socket {ctl} reinstate path p0");
    println!("  {me} --control-socket {ctl} top                # live view, q quits");
    println!();
    print!("{}", d.topology_text().await);
    println!();
    match drill {
        Some(every) => println!(
            "Failover drill: every {} s a path is failed or reinstated in turn (p0, then p1), \
             under a light read load; watch it with `{me} --control-socket {ctl} top`.",
            every.as_secs()
        ),
        None => println!("Add --drill to watch failover happen in `umpath top`."),
    }
    println!("Serving until Ctrl-C.");
}

/// The drill's steps, in order, forever: fail p0, reinstate p0, fail p1,
/// reinstate p1.
const DRILL_STEPS: [(bool, &str); 4] = [(true, "p0"), (false, "p0"), (true, "p1"), (false, "p1")];

/// Fails and reinstates the demo's paths in turn, one step every `every`.
async fn run_drill(d: Arc<Daemon>, every: Duration) {
    let mut step = 0usize;
    loop {
        tokio::time::sleep(every).await;
        let (fail, path) = DRILL_STEPS[step % DRILL_STEPS.len()];
        step += 1;
        let cmd = if fail {
            Command::FailPath { path: path.into() }
        } else {
            Command::ReinstatePath { path: path.into() }
        };
        let what = if fail { "failing" } else { "reinstating" };
        info!("drill: {what} path {path}");
        let r = d.clone().handle(cmd).await;
        if !r.ok {
            warn!("drill: {}", r.text.trim_end());
        }
    }
}

/// The drill's load: about 200 reads of 4 KiB per second spread over the
/// first 64 MiB of the map, submitted to the engine like an NBD client's
/// (reads only: the image may hold a client's file system).
async fn drill_load(d: Arc<Daemon>) {
    const BS: u32 = 4096;
    const SPAN: u64 = 64 << 20;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Completion>();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    let mut free: Vec<IoBuf> = Vec::new();
    loop {
        tick.tick().await;
        while let Ok(c) = rx.try_recv() {
            free.push(c.buf);
        }
        let published = d.published();
        let Some(m) = published
            .maps
            .iter()
            .find(|m| m.engine.info().name == DEMO_MAP)
        else {
            continue;
        };
        let size = m.engine.info().size.min(SPAN).max(u64::from(BS));
        // A cheap spread of offsets (Knuth's multiplicative hash).
        let block = n.wrapping_mul(2_654_435_761) % (size / u64::from(BS));
        n += 1;
        let buf = free.pop().unwrap_or_else(|| IoBuf::zeroed(BS as usize));
        m.engine.submit(Request {
            op: Op::Read,
            offset: block * u64::from(BS),
            len: BS,
            fua: false,
            cookie: n,
            buf,
            reply: tx.clone().into(),
        });
    }
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_config_is_clean() {
        let c = crate::config::Config::parse_str(&demo_config(Path::new("/tmp/x.img")), "demo")
            .expect("valid");
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_quote("/usr/bin/umpath"), "/usr/bin/umpath");
        assert_eq!(shell_quote("/a b/umpath"), "'/a b/umpath'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
