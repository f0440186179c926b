//! `kata-vm`: boots our agent as PID 1 of a QEMU guest and keeps it running until Ctrl-C or
//! until the guest powers off (DestroySandbox). Meant for people: `scripts/vm/boot.sh` runs it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vmtest::{Assets, VirtioFs, VirtioFsCache, Vm, VmConfig, DEFAULT_SHARE_AT};

const USAGE: &str = "\
Usage: kata-vm [OPTIONS]

Boots the guest image (kernel + initramfs with kata-agent as PID 1) under QEMU and serves the
agent on a hybrid-vsock socket. Stops on Ctrl-C or when the guest powers off.

Options:
  --run-dir DIR      sockets and logs go here (default: build/vm/run)
  --share DIR        share DIR with the guest over virtio-9p; the guest mounts it at
                     /mnt/shared (see --share-at)
  --share-at PATH    guest mount point of the share
  --virtio-fs DIR    also share DIR over virtio-fs (virtiofsd, tag kataShared); the guest does
                     not mount it: a virtio-fs storage (source kataShared, fstype virtiofs) does
  --virtio-fs-cache POLICY
                     virtiofsd's cache policy: auto (default), never, always, metadata
  --param OPT        add OPT to the kernel command line (repeatable), e.g. --param agent.log=debug
  --memory MIB       guest memory (default 512)
  --cpus N           vCPUs at boot (default 1)
  --max-cpus N       vCPUs possible (default: --cpus)
  --check-only       boot, wait for the agent's first Check, print the time and stop
  --bench            boot, measure containers in the guest (needs --share with rootfs/), stop;
                     boots with agent.passfd_listener_port=1027 for the pass-fd stdout figure
  -h, --help         this help
";

fn main() {
    if let Err(e) = run() {
        eprintln!("kata-vm: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut cfg = VmConfig {
        name: "kata-vm".into(),
        run_dir: Some(vmtest::cache_dir().join("run")),
        ..VmConfig::default()
    };
    let mut share: Option<PathBuf> = None;
    let mut share_at = DEFAULT_SHARE_AT.to_string();
    let mut virtio_fs: Option<PathBuf> = None;
    let mut virtio_fs_cache = VirtioFsCache::Auto;
    let mut check_only = false;
    let mut bench = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{a} needs a value\n\n{USAGE}"))
        };
        match a.as_str() {
            "--run-dir" => cfg.run_dir = Some(PathBuf::from(value()?)),
            "--share" => share = Some(PathBuf::from(value()?)),
            "--share-at" => share_at = value()?,
            "--virtio-fs" => virtio_fs = Some(PathBuf::from(value()?)),
            "--virtio-fs-cache" => virtio_fs_cache = value()?.parse()?,
            "--param" => cfg.kernel_params.push(value()?),
            "--memory" => cfg.memory_mib = value()?.parse().context("--memory")?,
            "--cpus" => cfg.cpus = value()?.parse().context("--cpus")?,
            "--max-cpus" => cfg.max_cpus = value()?.parse().context("--max-cpus")?,
            "--check-only" => check_only = true,
            "--bench" => bench = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if let Some(dir) = share {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("the share {}", dir.display()))?;
        cfg.share = Some((dir, Some(share_at.clone())));
    }
    if let Some(dir) = virtio_fs {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("the virtio-fs share {}", dir.display()))?;
        cfg.virtio_fs = Some(VirtioFs {
            cache: virtio_fs_cache,
            ..VirtioFs::new(dir)
        });
    }
    cfg.max_cpus = cfg.max_cpus.max(cfg.cpus);
    if bench
        && !cfg
            .kernel_params
            .iter()
            .any(|p| p.starts_with("agent.passfd_listener_port="))
    {
        // The pass-fd stdout figure needs the agent's stream listener.
        cfg.kernel_params.push(format!(
            "agent.passfd_listener_port={}",
            vmtest::PASSFD_PORT
        ));
    }

    eprintln!("kata-vm: preparing the image (first run: downloads and builds, a few minutes)");
    let assets = Assets::prepare()?;
    let mut vm = Vm::start(&assets, cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let boot = rt.block_on(vm.wait_ready(Duration::from_secs(180)))?;
    println!(
        "kata-vm: agent ready after {:.2} s ({:?}, kernel {})",
        boot.as_secs_f64(),
        vm.accel,
        assets.kernel_version
    );
    if check_only {
        return Ok(());
    }
    if bench {
        let Some((_, Some(at))) = vm.config.share.clone() else {
            bail!("--bench needs --share DIR (with the busybox rootfs in DIR/rootfs)");
        };
        let (client, _) = rt.block_on(vm.clients())?;
        return rt.block_on(vmtest::bench::run(
            &client,
            &mut vm,
            &format!("{at}/rootfs"),
            20,
        ));
    }
    println!("  agent (hybrid vsock): {}", vm.agent_addr());
    println!("  QMP:                  {}", vm.qmp_socket.display());
    println!("  guest console log:    {}", vm.console.display());
    if let Some((dir, Some(at))) = &vm.config.share {
        println!("  9p share:             {} -> guest {at}", dir.display());
    }
    if let Some(fs) = &vm.config.virtio_fs {
        println!(
            "  virtio-fs share:      {} (tag {}, cache {})",
            fs.dir.display(),
            fs.tag,
            fs.cache.as_str()
        );
    }
    println!(
        "  try: target/debug/kata-agent-ctl connect --hybrid-vsock --server-address {} -c Check",
        vm.agent_addr()
    );
    println!("kata-vm: running; Ctrl-C stops the VM");

    // Stop on SIGINT/SIGTERM or when the guest powers off.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.thread_block()?;
    let sfd = nix::sys::signalfd::SignalFd::with_flags(
        &signals,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )?;
    loop {
        if let Ok(Some(sig)) = sfd.read_signal() {
            eprintln!("kata-vm: signal {}, stopping the VM", sig.ssi_signo);
            vm.kill();
            return Ok(());
        }
        if let Some(status) = vm.wait_exit(Duration::from_millis(200)) {
            println!("kata-vm: the guest powered off (QEMU {status})");
            return Ok(());
        }
    }
}
