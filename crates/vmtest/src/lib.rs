//! Real-VM harness: our statically linked `kata-agent` as PID 1 of a QEMU guest, reached from the
//! host over hybrid vsock.
//!
//! * [`Assets::prepare`] installs and caches what is needed (`scripts/vm/setup.sh`: QEMU, a Debian
//!   kernel, `vhost-device-vsock`), builds the static agent (`scripts/build-static.sh`) and the
//!   initramfs (`scripts/vm/mkinitramfs.sh`).
//! * [`Vm::start`] runs `vhost-device-vsock` (the guest's vsock device, exposed on the host as a
//!   unix socket speaking the hybrid-vsock `CONNECT <port>` protocol) and QEMU (TCG, or KVM when the
//!   host really has it) with a QMP socket, free PCIe root ports for hot-plug, an optional virtio-9p
//!   share, an optional virtio-fs share (served by `virtiofsd`, see [`VirtioFs`]) and the kernel
//!   command line options of the scenario.
//! * The agent is reached with [`Vm::connect`] / [`Vm::wait_ready`] (ttRPC over hybrid vsock, port
//!   1024), other guest ports with [`Vm::connect_port`] (e.g. the log port 1025, the debug console),
//!   and guest-initiated connections with [`Vm::listen_port`] (e.g. trace spans).
//!
//! The processes (QEMU, vhost-device-vsock, virtiofsd) are killed when the [`Vm`] is dropped (and,
//! through `PR_SET_PDEATHSIG`, when the thread that started them dies).

pub mod bench;
pub mod qmp;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use protocols::health::{health_check_response::ServingStatus, CheckRequest};

pub use qmp::Qmp;

/// Guest CID given to the vsock device.
pub const GUEST_CID: u32 = 3;
/// The agent's API port.
pub const AGENT_PORT: u32 = 1024;
/// The port of the agent's pass-fd stream listener when a scenario turns it on
/// (`agent.passfd_listener_port=1027`, runtime-rs's convention).
pub const PASSFD_PORT: u32 = 1027;
/// Tag of the virtio-9p share (the name Kata runtimes use).
pub const SHARE_TAG: &str = "kataShared";
/// Where the guest's `/init` mounts the 9p share by default (outside /run, which the agent
/// mounts a tmpfs on).
pub const DEFAULT_SHARE_AT: &str = "/mnt/shared";
/// Environment variable that turns the VM tests into skips.
pub const SKIP_ENV: &str = "KATA_SKIP_VM_TESTS";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the vmtest crate sits in the workspace")
}

/// The cache of downloads and builds (`build/vm`, or `$KATA_VM_CACHE`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KATA_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/vm"))
}

/// Whether `KATA_SKIP_VM_TESTS=1` asks to skip the VM tests.
pub fn skip_requested() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v == "1")
}

/// What booting a guest needs.
#[derive(Debug, Clone)]
pub struct Assets {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub kernel_version: String,
    pub initrd: PathBuf,
    pub vhost_vsock: PathBuf,
    /// The virtio-fs back end (`virtiofsd` from crates.io, built by `scripts/vm/setup.sh`).
    pub virtiofsd: PathBuf,
    pub agent: PathBuf,
}

impl Assets {
    /// Installs/caches the prerequisites, builds the static agent and the initramfs.
    ///
    /// The agent is `$KATA_VM_AGENT` if set, else the output of `scripts/build-static.sh`.
    /// Errors say what is missing and how to get it.
    pub fn prepare() -> Result<Assets> {
        let root = workspace_root();
        let cache = cache_dir();
        run_script(
            Command::new(root.join("scripts/vm/setup.sh")),
            "the VM prerequisites (QEMU, the Debian kernel, vhost-device-vsock, virtiofsd) are \
             missing and scripts/vm/setup.sh could not install them",
        )?;
        let agent = match std::env::var_os("KATA_VM_AGENT") {
            Some(p) => PathBuf::from(p),
            None => {
                run_script(
                    Command::new(root.join("scripts/build-static.sh")),
                    "the static kata-agent could not be built (scripts/build-static.sh)",
                )?;
                root.join("target/release/kata-agent")
            }
        };
        let initrd = cache.join("initramfs.cpio.gz");
        let mut mk = Command::new(root.join("scripts/vm/mkinitramfs.sh"));
        mk.arg(&initrd).arg(&agent);
        run_script(mk, "the guest initramfs could not be built")?;
        let kdir = cache.join("kernel/current");
        let kernel_version = std::fs::read_to_string(kdir.join("version"))
            .context("the cached kernel has no version file")?
            .trim()
            .to_string();
        let assets = Assets {
            qemu: find_in_path("qemu-system-x86_64")
                .ok_or_else(|| anyhow!("qemu-system-x86_64 is not installed"))?,
            kernel: kdir.join("vmlinuz"),
            kernel_version,
            initrd,
            vhost_vsock: cache.join("cargo/bin/vhost-device-vsock"),
            virtiofsd: cache.join("cargo/bin/virtiofsd"),
            agent,
        };
        for p in [
            &assets.kernel,
            &assets.vhost_vsock,
            &assets.virtiofsd,
            &assets.agent,
        ] {
            if !p.exists() {
                bail!("{} is missing after the set-up", p.display());
            }
        }
        Ok(assets)
    }
}

fn run_script(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    if !out.status.success() {
        let tail = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(25)..].join("\n")
        };
        bail!(
            "{what} ({}):\n{}\n{}",
            out.status,
            tail(&out.stdout),
            tail(&out.stderr)
        );
    }
    Ok(())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// How the guest CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// KVM when `/dev/kvm` exists and the CPU advertises virtualization (vmx/svm): a `/dev/kvm`
/// without them (nested set-ups) accepts VMs but cannot run them. `KATA_VM_ACCEL=kvm|tcg`
/// overrides the choice.
pub fn accel() -> Accel {
    match std::env::var("KATA_VM_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    let cpu_ok = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    let dev_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if cpu_ok && dev_ok {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// virtiofsd's caching policy (`--cache`): how long the guest may trust what it has cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VirtioFsCache {
    /// Metadata and data cached for a short time (virtiofsd's default, Kata's default).
    #[default]
    Auto,
    /// Nothing cached: every access goes to the host (direct I/O; private mmap still works).
    Never,
    /// Cached for a long time: only for directories nobody else changes.
    Always,
    /// Metadata cached, data not.
    Metadata,
}

impl VirtioFsCache {
    pub fn as_str(self) -> &'static str {
        match self {
            VirtioFsCache::Auto => "auto",
            VirtioFsCache::Never => "never",
            VirtioFsCache::Always => "always",
            VirtioFsCache::Metadata => "metadata",
        }
    }
}

impl std::str::FromStr for VirtioFsCache {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => VirtioFsCache::Auto,
            "never" => VirtioFsCache::Never,
            "always" => VirtioFsCache::Always,
            "metadata" => VirtioFsCache::Metadata,
            other => {
                bail!("unknown virtio-fs cache policy {other:?} (auto, never, always, metadata)")
            }
        })
    }
}

/// A host directory shared with the guest over virtio-fs: `virtiofsd` serves it on a vhost-user
/// socket in the run directory and QEMU gets a `vhost-user-fs-pci` device with the tag. The guest
/// mounts it with `mount -t virtiofs TAG DIR`, or the agent does for a `virtio-fs` storage.
#[derive(Debug, Clone)]
pub struct VirtioFs {
    pub dir: PathBuf,
    /// The mount tag (at most 36 bytes); [`SHARE_TAG`] by default. It may equal the 9p share's
    /// tag: the guest looks tags up per file system type.
    pub tag: String,
    pub cache: VirtioFsCache,
}

impl VirtioFs {
    /// `dir` shared with tag [`SHARE_TAG`] and the `auto` cache policy.
    pub fn new(dir: impl Into<PathBuf>) -> VirtioFs {
        VirtioFs {
            dir: dir.into(),
            tag: SHARE_TAG.into(),
            cache: VirtioFsCache::Auto,
        }
    }
}

/// virtiofsd's sandbox: a private mount namespace whose root is the shared directory (plus
/// pid and net namespaces). Needs root, which the harness has anyway.
const VIRTIOFSD_SANDBOX: &str = "namespace";

/// A guest to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Short name (QEMU's `-name`, log prefixes).
    pub name: String,
    /// Options appended to the kernel command line (`agent.log=debug`, ...).
    pub kernel_params: Vec<String>,
    pub memory_mib: u32,
    /// vCPUs at boot.
    pub cpus: u32,
    /// vCPUs possible (above `cpus`: room for CPU hot-plug).
    pub max_cpus: u32,
    /// Host directory shared over virtio-9p with tag [`SHARE_TAG`], and the guest path where the
    /// guest's `/init` mounts it (`None`: the agent or a scenario mounts it).
    pub share: Option<(PathBuf, Option<String>)>,
    /// Host directory shared over virtio-fs (virtiofsd + `vhost-user-fs-pci`); nothing mounts it
    /// in the guest until a scenario asks the agent to (a `virtio-fs` storage).
    pub virtio_fs: Option<VirtioFs>,
    /// Empty PCIe root ports for hot-plug, `rp0`, `rp1`, ... (see [`Vm::hotplug_port`]).
    pub hotplug_ports: u32,
    /// Run directory (sockets, logs); a fresh temporary directory when `None`.
    pub run_dir: Option<PathBuf>,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            name: "kata-vm".into(),
            kernel_params: Vec::new(),
            memory_mib: 512,
            cpus: 1,
            max_cpus: 1,
            share: None,
            virtio_fs: None,
            hotplug_ports: 2,
            run_dir: None,
            qemu_args: Vec::new(),
        }
    }
}

/// PCI slot (on the root bus) of the first hot-plug root port.
const FIRST_PORT_SLOT: u32 = 0x10;

/// vhost-device-vsock's buffer per connection for guest-to-host data, which is also the credit
/// the guest gets (`buf_alloc`): how much a guest socket may send before the host has forwarded
/// it. `KATA_VM_VSOCK_TX_BUFFER` overrides it (bytes).
pub const VSOCK_TX_BUFFER_SIZE: u32 = 64 << 10;

fn vsock_tx_buffer_size() -> u32 {
    std::env::var("KATA_VM_VSOCK_TX_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(VSOCK_TX_BUFFER_SIZE)
}

/// Kernel options of every boot: serial console, quiet, power off instead of rebooting, and a
/// few that save time under TCG (no crypto self-tests, no i8042 probing).
const BASE_KERNEL_PARAMS: &[&str] = &[
    "console=ttyS0",
    "quiet",
    "panic=-1",
    "reboot=k",
    "cryptomgr.notests",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.nopnp",
    "i8042.dumbkbd",
    "tsc=reliable",
    "no_timer_check",
    "net.ifnames=0",
];

/// A child process killed (SIGKILL) and reaped when dropped.
struct ChildGuard {
    name: &'static str,
    child: Option<Child>,
}

impl ChildGuard {
    fn spawn(name: &'static str, cmd: &mut Command) -> Result<ChildGuard> {
        // SAFETY: prctl is async-signal-safe; the child dies with the thread that started it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(ChildGuard {
            name,
            child: Some(child),
        })
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    fn running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// SIGKILL to the child's own children (virtiofsd runs its server in a forked child), then to
    /// the child, which is reaped. The grandchildren's pids cannot be reused before that: the
    /// child, still alive, has not reaped them.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            for pid in children_of(c.id()) {
                // SAFETY: plain kill(2) on a pid read from the child's own children list.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            eprintln!("vmtest: killing {}", self.name);
        }
        self.kill();
    }
}

/// A running guest.
pub struct Vm {
    pub config: VmConfig,
    pub accel: Accel,
    /// Host end of the guest's vsock (hybrid vsock).
    pub hvsock: PathBuf,
    pub qmp_socket: PathBuf,
    pub console: PathBuf,
    run_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    _lock: Option<File>,
    started: Instant,
    // Field order matters: QEMU goes first, then its vhost-user back ends.
    qemu: ChildGuard,
    virtiofsd: Option<ChildGuard>,
    vsock: ChildGuard,
    exit_status: Option<ExitStatus>,
    vsock_ready: bool,
}

impl Vm {
    /// Starts vhost-device-vsock and QEMU; returns once QEMU runs (the guest is still booting:
    /// see [`Vm::wait_ready`]).
    pub fn start(assets: &Assets, config: VmConfig) -> Result<Vm> {
        let mut lock = None;
        let (temp, run_dir) = match &config.run_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                lock = Some(lock_run_dir(d)?);
                for f in ["hvsock", "vhost.sock", "qmp.sock", "virtiofs.sock"] {
                    let _ = std::fs::remove_file(d.join(f));
                }
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("kata-vm-{}-", config.name))
                    .tempdir_in("/tmp")?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let hvsock = run_dir.join("hvsock");
        // Guest-initiated connections land on "<hvsock>_<port>": leave room for the suffix.
        if hvsock.as_os_str().len() + 7 > 107 {
            bail!(
                "the run directory {} is too long for unix socket paths",
                run_dir.display()
            );
        }
        let vhost_socket = run_dir.join("vhost.sock");
        let qmp_socket = run_dir.join("qmp.sock");
        let console = run_dir.join("console.log");
        let log = |name: &str| -> Result<File> { Ok(File::create(run_dir.join(name))?) };

        let mut vsock_cmd = Command::new(&assets.vhost_vsock);
        vsock_cmd
            .arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&vhost_socket)
            .arg("--uds-path")
            .arg(&hvsock)
            .arg("--tx-buffer-size")
            .arg(vsock_tx_buffer_size().to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log("vhost-device-vsock.log")?)
            .stderr(log("vhost-device-vsock.log")?);
        let mut vsock = ChildGuard::spawn("vhost-device-vsock", &mut vsock_cmd)?;
        wait_for_socket(
            &mut vsock,
            &vhost_socket,
            &run_dir.join("vhost-device-vsock.log"),
        )?;

        let virtiofs_socket = run_dir.join("virtiofs.sock");
        let mut virtiofsd = None;
        if let Some(fs) = &config.virtio_fs {
            if fs.tag.is_empty() || fs.tag.len() > 36 || fs.tag.contains([',', '=']) {
                bail!(
                    "the virtio-fs tag {:?} must have 1 to 36 bytes, no ',' or '='",
                    fs.tag
                );
            }
            let dir = fs
                .dir
                .canonicalize()
                .with_context(|| format!("the virtio-fs shared directory {}", fs.dir.display()))?;
            let mut cmd = Command::new(&assets.virtiofsd);
            cmd.arg("--socket-path")
                .arg(&virtiofs_socket)
                .arg("--shared-dir")
                .arg(&dir)
                .arg(format!("--cache={}", fs.cache.as_str()))
                .arg(format!("--sandbox={VIRTIOFSD_SANDBOX}"))
                .arg("--log-level=warn")
                .stdin(Stdio::null())
                .stdout(log("virtiofsd.log")?)
                .stderr(log("virtiofsd.log")?);
            let mut child = ChildGuard::spawn("virtiofsd", &mut cmd)?;
            wait_for_socket(&mut child, &virtiofs_socket, &run_dir.join("virtiofsd.log"))?;
            virtiofsd = Some(child);
        }

        let accel = accel();
        let mut params: Vec<String> = BASE_KERNEL_PARAMS.iter().map(|s| s.to_string()).collect();
        if let Some((_, Some(guest_path))) = &config.share {
            params.push(format!("vmtest.9p={SHARE_TAG}:{guest_path}"));
        }
        params.extend(config.kernel_params.iter().cloned());
        // For debugging a scenario: e.g. KATA_VM_KERNEL_PARAMS="loglevel=7 hung_task_timeout_secs=10".
        if let Ok(extra) = std::env::var("KATA_VM_KERNEL_PARAMS") {
            params.extend(extra.split_whitespace().map(str::to_string));
        }
        let mem = config.memory_mib;
        let mut args: Vec<String> = vec![
            "-name".into(),
            config.name.clone(),
            "-machine".into(),
            format!(
                "q35,accel={}",
                if accel == Accel::Kvm { "kvm" } else { "tcg" }
            ),
            "-cpu".into(),
            if accel == Accel::Kvm { "host" } else { "max" }.into(),
            "-smp".into(),
            format!(
                "cpus={},maxcpus={}",
                config.cpus,
                config.max_cpus.max(config.cpus)
            ),
            "-m".into(),
            format!("{mem}M"),
            // vhost-user devices need guest memory the backend can map.
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-numa".into(),
            "node,memdev=mem".into(),
            "-kernel".into(),
            path_str(&assets.kernel)?,
            "-initrd".into(),
            path_str(&assets.initrd)?,
            "-append".into(),
            params.join(" "),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", path_str(&console)?),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path_str(&qmp_socket)?),
            "-chardev".into(),
            format!("socket,id=vsock0,path={}", path_str(&vhost_socket)?),
            "-device".into(),
            "vhost-user-vsock-pci,chardev=vsock0".into(),
        ];
        if let Some((dir, _)) = &config.share {
            args.push("-fsdev".into());
            args.push(format!(
                "local,id=share0,path={},security_model=none",
                path_str(dir)?
            ));
            args.push("-device".into());
            args.push(format!("virtio-9p-pci,fsdev=share0,mount_tag={SHARE_TAG}"));
        }
        if let Some(fs) = &config.virtio_fs {
            args.push("-chardev".into());
            args.push(format!(
                "socket,id=fs0,path={}",
                path_str(&virtiofs_socket)?
            ));
            args.push("-device".into());
            args.push(format!("vhost-user-fs-pci,chardev=fs0,tag={}", fs.tag));
        }
        for i in 0..config.hotplug_ports {
            args.push("-device".into());
            args.push(format!(
                "pcie-root-port,id=rp{i},bus=pcie.0,chassis={},addr={:#x}",
                i + 1,
                FIRST_PORT_SLOT + i
            ));
        }
        args.extend(config.qemu_args.iter().cloned());
        std::fs::write(run_dir.join("qemu.cmdline"), args.join("\n"))?;
        let mut qemu_cmd = Command::new(&assets.qemu);
        qemu_cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log("qemu.log")?)
            .stderr(log("qemu.log")?);
        let started = Instant::now();
        let qemu = ChildGuard::spawn("qemu", &mut qemu_cmd)?;
        Ok(Vm {
            config,
            accel,
            hvsock,
            qmp_socket,
            console,
            run_dir,
            _temp: temp,
            _lock: lock,
            started,
            qemu,
            virtiofsd,
            vsock,
            exit_status: None,
            vsock_ready: false,
        })
    }

    /// The agent's address for `agent-client` / `kata-agent-ctl --hybrid-vsock`.
    pub fn agent_addr(&self) -> String {
        format!("unix://{}", self.hvsock.display())
    }

    /// The run directory (sockets and logs).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// PCI path prefix and QEMU bus id of the hot-plug port `i`: a device added with
    /// `bus=<id>` has the guest PCI path `<prefix>/00`.
    pub fn hotplug_port(&self, i: u32) -> (String, String) {
        assert!(i < self.config.hotplug_ports, "no hot-plug port {i}");
        (format!("{:02x}", FIRST_PORT_SLOT + i), format!("rp{i}"))
    }

    /// Whether QEMU still runs (records its exit status otherwise).
    pub fn running(&mut self) -> bool {
        if self.exit_status.is_some() {
            return false;
        }
        match self.qemu.try_wait() {
            Some(s) => {
                self.exit_status = Some(s);
                false
            }
            None => self.qemu.child.is_some(),
        }
    }

    fn ensure_running(&mut self) -> Result<()> {
        if self.running() {
            return Ok(());
        }
        bail!(
            "QEMU exited ({:?}):\n{}",
            self.exit_status,
            self.diagnostics()
        )
    }

    /// Waits until the guest driver of the vsock device is set up (virtio DRIVER_OK, asked
    /// through QMP). Host connections made earlier reach vhost-device-vsock before its vrings
    /// are initialised, which can leave the device unable to serve later connections.
    pub fn wait_vsock_driver(&mut self, timeout: Duration) -> Result<()> {
        if self.vsock_ready {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut qmp = self.qmp()?;
        let path = loop {
            let devices = qmp.execute("x-query-virtio", serde_json::json!({}))?;
            let found = devices.as_array().and_then(|list| {
                list.iter()
                    .find(|d| d["name"] == "vhost-vsock")
                    .and_then(|d| d["path"].as_str().map(str::to_string))
            });
            if let Some(p) = found {
                break p;
            }
            if Instant::now() > deadline {
                bail!("QEMU lists no vhost-vsock device");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        loop {
            self.ensure_running()?;
            let st = qmp.execute("x-query-virtio-status", serde_json::json!({ "path": path }))?;
            let ok = st["status"]["statuses"].as_array().is_some_and(|l| {
                l.iter().any(|s| {
                    s.as_str()
                        .is_some_and(|s| s.starts_with("VIRTIO_CONFIG_S_DRIVER_OK"))
                })
            });
            if ok {
                self.vsock_ready = true;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the guest did not set up its vsock device within {timeout:?}:\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One ttRPC connection to the agent (port 1024), retried until `timeout`.
    pub async fn connect(&mut self, timeout: Duration) -> Result<ttrpc::r#async::Client> {
        let deadline = Instant::now() + timeout;
        self.wait_vsock_driver(timeout)?;
        let opts = agent_client::ConnectOptions {
            hybrid_vsock: true,
            hybrid_vsock_port: AGENT_PORT,
            retries: 1,
            retry_delay: Duration::from_millis(0),
            handshake_timeout: Duration::from_secs(3),
        };
        loop {
            self.ensure_running()?;
            match agent_client::connect(&self.agent_addr(), &opts).await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "the agent did not answer within {timeout:?}:\n{}",
                        self.diagnostics()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until the agent answers a health `Check` with SERVING; returns the time from
    /// QEMU's start to that answer (the boot-to-first-Check time).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let client = self.connect(left).await?;
            let health = protocols::health_ttrpc::HealthClient::new(client);
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
            match health.check(ctx, &CheckRequest::new()).await {
                Ok(r) if r.status.enum_value() == Ok(ServingStatus::SERVING) => {
                    return Ok(self.started.elapsed())
                }
                other if Instant::now() > deadline => bail!(
                    "the agent's health check did not succeed within {timeout:?} ({other:?}):\n{}",
                    self.diagnostics()
                ),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Clients of both agent services over one new connection.
    pub async fn clients(
        &mut self,
    ) -> Result<(
        protocols::agent_ttrpc::AgentServiceClient,
        protocols::health_ttrpc::HealthClient,
    )> {
        let c = self.connect(Duration::from_secs(30)).await?;
        Ok((
            protocols::agent_ttrpc::AgentServiceClient::new(c.clone()),
            protocols::health_ttrpc::HealthClient::new(c),
        ))
    }

    /// A raw stream to guest vsock port `port` (hybrid-vsock handshake done), retried until
    /// `timeout` while the guest does not listen yet.
    pub fn connect_port(&mut self, port: u32, timeout: Duration) -> Result<UnixStream> {
        self.connect_port_with_host_port(port, timeout)
            .map(|(s, _)| s)
    }

    /// [`Vm::connect_port`], also returning the connection's host-side port (see
    /// [`hybrid_connect_with_port`]); e.g. a pass-fd stream to [`PASSFD_PORT`].
    pub fn connect_port_with_host_port(
        &mut self,
        port: u32,
        timeout: Duration,
    ) -> Result<(UnixStream, u32)> {
        let deadline = Instant::now() + timeout;
        self.wait_vsock_driver(timeout)?;
        loop {
            self.ensure_running()?;
            match hybrid_connect_with_port(&self.hvsock, port) {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("guest vsock port {port}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// A pass-fd stdio stream: a connection to the agent's pass-fd listener ([`PASSFD_PORT`],
    /// booted with `agent.passfd_listener_port=1027`) and the host-side port that names it in
    /// `stdin_port`/`stdout_port`/`stderr_port`. Port 0 (vhost-device-vsock's first host
    /// connection) cannot name a stream: another connection is made then.
    pub fn passfd_stream(&mut self, timeout: Duration) -> Result<(UnixStream, u32)> {
        let (mut s, mut host_port) = self.connect_port_with_host_port(PASSFD_PORT, timeout)?;
        if host_port == 0 || host_port == PASSFD_PORT {
            (s, host_port) = self.connect_port_with_host_port(PASSFD_PORT, timeout)?;
        }
        if host_port == PASSFD_PORT {
            bail!(
                "vhost-device-vsock answers CONNECT with the guest port, not the host-side port: \
                 rebuild it with scripts/vm/setup.sh"
            );
        }
        if host_port == 0 {
            bail!("the hybrid vsock reply names host port 0 twice");
        }
        Ok((s, host_port))
    }

    /// Listens for connections the guest opens to host port `port` (the host CID 2); they arrive
    /// on `<hvsock>_<port>`.
    pub fn listen_port(&self, port: u32) -> Result<UnixListener> {
        let path = PathBuf::from(format!("{}_{port}", self.hvsock.display()));
        let _ = std::fs::remove_file(&path);
        UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))
    }

    /// A QMP session.
    pub fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(&self.qmp_socket, Duration::from_secs(10))
    }

    /// What the guest wrote on its serial console (kernel messages, the agent's stderr).
    pub fn console_log(&self) -> String {
        read_lossy(&self.console)
    }

    /// Console, QEMU, vhost-device-vsock (and virtiofsd) logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        let tail = |name: &str, n: usize| {
            let s = read_lossy(&self.run_dir.join(name));
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let mut out = format!(
            "--- guest console (last lines) ---\n{}\n--- qemu ---\n{}\n--- vhost-device-vsock ---\n{}",
            tail(
                "console.log",
                std::env::var("KATA_VM_CONSOLE_LINES")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(80)
            ),
            tail("qemu.log", 20),
            tail("vhost-device-vsock.log", 20)
        );
        if self.virtiofsd.is_some() {
            out.push_str(&format!(
                "\n--- virtiofsd ---\n{}",
                tail("virtiofsd.log", 20)
            ));
        }
        out
    }

    /// Whether virtiofsd (started for [`VmConfig::virtio_fs`]) still runs.
    pub fn virtiofsd_running(&mut self) -> bool {
        self.virtiofsd.as_mut().is_some_and(|c| c.running())
    }

    /// Waits for QEMU to exit by itself (the guest powered off); `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.running() {
                return self.exit_status;
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills QEMU and its vhost-user back ends (vsock, virtio-fs) now.
    pub fn kill(&mut self) {
        self.qemu.kill();
        if let Some(v) = &mut self.virtiofsd {
            v.kill();
        }
        self.vsock.kill();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "vmtest: VM {} failed:\n{}",
                self.config.name,
                self.diagnostics()
            );
        }
    }
}

/// The direct children of `pid` (every thread's list in /proc).
fn children_of(pid: u32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Waits until the vhost-user back end `child` has created its listening `socket`.
fn wait_for_socket(child: &mut ChildGuard, socket: &Path, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if !child.running() {
            bail!("{} exited at start-up:\n{}", child.name, read_lossy(log));
        }
        if Instant::now() > deadline {
            bail!("{} did not create {}", child.name, socket.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Connects to the hybrid-vsock socket `hvsock` and asks for guest port `port`.
pub fn hybrid_connect(hvsock: &Path, port: u32) -> Result<UnixStream> {
    hybrid_connect_with_port(hvsock, port).map(|(s, _)| s)
}

/// Like [`hybrid_connect`], and also returns the host-side port of the connection: the number in
/// the `OK <port>` reply, which the guest sees as the peer port (what a pass-fd `stdout_port`
/// etc. names).
pub fn hybrid_connect_with_port(hvsock: &Path, port: u32) -> Result<(UnixStream, u32)> {
    let mut s = UnixStream::connect(hvsock)
        .with_context(|| format!("cannot connect to {}", hvsock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // One byte at a time: what follows the reply line is stream data.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => bail!("the hybrid vsock socket closed the connection (port {port})"),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(e).context("reading the hybrid vsock reply"),
        }
        if line.len() > 256 {
            bail!("the hybrid vsock reply is too long");
        }
    }
    let host_port = parse_ok_reply(&line).with_context(|| {
        format!(
            "CONNECT {port} refused or not understood: {:?}",
            String::from_utf8_lossy(&line)
        )
    })?;
    s.set_read_timeout(None)?;
    Ok((s, host_port))
}

/// The host-side port of an `OK <port>` reply line (without its newline).
fn parse_ok_reply(line: &[u8]) -> Result<u32> {
    let text = std::str::from_utf8(line)?.trim_end_matches('\r');
    let rest = text
        .strip_prefix("OK")
        .ok_or_else(|| anyhow!("not an OK reply"))?;
    let port = rest.trim();
    port.parse::<u32>()
        .map_err(|_| anyhow!("the OK reply carries no port number"))
}

/// Takes an exclusive lock on `<dir>/lock`, so that two VMs never share a run directory.
fn lock_run_dir(dir: &Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    let f = File::create(dir.join("lock"))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another VM is running with the run directory {} (stop it first)",
            dir.display()
        );
    }
    Ok(f)
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn path_str(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", p.display()))?;
    if s.contains(',') {
        bail!("{s}: QEMU option values cannot contain commas here");
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_reply_carries_the_host_port() {
        assert_eq!(parse_ok_reply(b"OK 1073741824").unwrap(), 1073741824);
        assert_eq!(parse_ok_reply(b"OK 5\r").unwrap(), 5);
        assert!(parse_ok_reply(b"OK").is_err());
        assert!(parse_ok_reply(b"OK x").is_err());
        assert!(parse_ok_reply(b"ERR 5").is_err());
    }

    /// A fake hybrid-vsock endpoint: the reply's port comes back, and bytes sent right after
    /// the reply line stay in the stream.
    #[test]
    fn hybrid_connect_returns_the_host_port_and_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hvsock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 13];
            s.read_exact(&mut req).unwrap();
            assert_eq!(&req, b"CONNECT 1027\n");
            s.write_all(b"OK 4242\nhello").unwrap();
        });
        let (mut s, host_port) = hybrid_connect_with_port(&path, PASSFD_PORT).unwrap();
        assert_eq!(host_port, 4242);
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "hello");
        server.join().unwrap();
        assert!(hybrid_connect(&path, 1).is_err(), "nobody listens any more");
    }
}
