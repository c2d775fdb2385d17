//! `umpath demo`: the engine on an embedded default, no root needed.
//!
//! Makes a scratch directory with a sparse image, a multipath.conf with the
//! QuantaStor stanza (as the vendor documents it) and two `file` paths to
//! the image, starts the engine, prints the NBD URI, client commands and
//! the topology, serves until Ctrl-C, then removes what it made.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::daemon::{self, Daemon};
use crate::error::{Error, Result};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Scratch directory (default: a new one under $TMPDIR).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Image size in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub size: u64,
    /// Also serve NBD on TCP HOST:PORT.
    #[arg(long)]
    pub nbd_listen: Option<String>,
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
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the runtime", e))?;
    let r = rt.block_on(async {
        let (d, servers) = Daemon::start(opts).await?;
        print_banner(&d, &nbd_socket, &control_socket).await;
        d.wait(servers).await;
        Ok(())
    });
    // A check stuck in a device must not keep the demo from exiting.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    r
}

async fn print_banner(d: &Daemon, nbd_socket: &Path, control_socket: &Path) {
    let sock = nbd_socket.display();
    let uri = format!("nbd+unix:///{DEMO_MAP}?socket={sock}");
    let ctl = control_socket.display();
    println!("umpath demo: map {DEMO_MAP} is served over NBD at");
    println!("{uri}");
    println!();
    println!("Try, from another terminal:");
    println!("  nbdinfo '{uri}'");
    println!("  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' '{uri}'");
    println!("  nbd-client -unix {sock} -N {DEMO_MAP} /dev/nbd0     # needs the nbd kernel module");
    println!("  mkdir -p /tmp/lun0 && nbdfuse /tmp/lun0 '{uri}' &  # the export as a file");
    println!("  umpath --control-socket {ctl} show topology");
    println!("  umpath --control-socket {ctl} fail path p0");
    println!("  umpath --control-socket {ctl} reinstate path p0");
    println!();
    print!("{}", d.topology_text().await);
    println!();
    println!("Serving until Ctrl-C.");
}
