//! Engine side of a container: create, start, exec, signal, pause, destroy.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, LinuxNamespaceType, LinuxResources, Process, Spec};

use crate::cancel::Cancel;
use crate::cgroups::{self, Cgroup};
use crate::reaper::{self, ExitWatch};
use crate::setup::{Kind, Namespace, Setup};
use crate::validate::{validate_container_id, validate_process_args, validate_spec};
use crate::{EngineConfig, Error, Result, Stdio};

mod spare;
mod spawn;
mod vspawn;

pub use spare::{clear as clear_spare, keep as keep_spare, SPARE_ENV};
use spawn::spawn;
pub use spawn::{ExecPlan, PostStart};

/// How long the engine waits for any single message of the setup process.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a failed setup waits for its processes to die before cleaning up.
const ROLLBACK_WAIT: Duration = Duration::from_secs(5);
/// How long the engine waits for the pty master once the container process said it is ready
/// (it was sent before, so it is normally there at once).
const CONSOLE_WAIT: Duration = Duration::from_secs(5);

/// Life-cycle state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Init is waiting for start.
    Created,
    /// Started (init may have exited since; see [`Container::status`]).
    Running,
    /// Frozen.
    Paused,
    /// Init has exited, or the container was destroyed.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// A container created by [`Container::create`].
#[derive(Debug)]
pub struct Container {
    id: String,
    spec: Spec,
    bundle: PathBuf,
    init_exe: PathBuf,
    init_args: Vec<String>,
    cgroup: Cgroup,
    init_pid: i32,
    init_exit: ExitWatch,
    /// The pty master of a terminal init, until the caller takes it.
    console: Option<OwnedFd>,
    /// Pinned namespaces of the init that differ from the engine's own.
    namespaces: Vec<(LinuxNamespaceType, File)>,
    started: bool,
    paused: bool,
    destroyed: bool,
    created_bundle: bool,
}

/// Whatever `create` has done so far, for rollback.
#[derive(Default)]
struct Undo {
    bundle: Option<PathBuf>,
    created_bundle: bool,
    fifo: bool,
    cgroup: Option<Cgroup>,
}

impl Undo {
    fn run(self) {
        if let Some(cg) = &self.cgroup {
            // Whatever setup process is still in the cgroup must go first.
            let deadline = Instant::now() + ROLLBACK_WAIT;
            while let Ok(pids) = cg.pids() {
                if pids.is_empty() || Instant::now() >= deadline {
                    break;
                }
                for pid in pids {
                    let _ = kill(pid, libc::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Err(e) = cg.destroy() {
                tracing::warn!("rollback: {e:#}");
            }
        }
        if let Some(b) = &self.bundle {
            if self.created_bundle {
                let _ = crate::fsutil::unmount_all_under(b);
                let _ = std::fs::remove_dir_all(b);
            } else {
                if self.fifo {
                    let _ = std::fs::remove_file(b.join("exec.fifo"));
                }
                let _ = std::fs::remove_file(b.join("config.json"));
            }
        }
    }
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

fn cgroup_err(e: anyhow::Error) -> Error {
    Error::Other(format!("{e:#}"))
}

/// The cgroup path of a container (`:` separators become `/`; empty → `/<id>`).
pub(crate) fn cgroup_path(spec: &Spec, id: &str) -> String {
    let raw = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().replace(':', "/"))
        .unwrap_or_default();
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        format!("/{id}")
    } else {
        format!("/{trimmed}")
    }
}

fn kill(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill with integer arguments.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(e)
        }
    }
}

fn hooks_of(
    spec: &Spec,
    pick: impl Fn(&oci_spec::runtime::Hooks) -> &Option<Vec<Hook>>,
) -> Vec<Hook> {
    spec.hooks()
        .as_ref()
        .and_then(|h| pick(h).clone())
        .unwrap_or_default()
}

impl Container {
    /// Creates a container: validates `id` and `spec`, creates the bundle and
    /// the cgroup, and starts the init process, which ends blocked on the
    /// start barrier. On failure everything is rolled back.
    pub fn create(cfg: &EngineConfig, id: &str, spec: Spec, stdio: Stdio) -> Result<Container> {
        Self::create_cancellable(cfg, id, spec, stdio, &Cancel::new())
    }

    /// [`Self::create`] that `cancel` can abandon from another thread: the setup processes and
    /// hooks are killed, everything is rolled back and the call fails with
    /// [`Error::Cancelled`].
    pub fn create_cancellable(
        cfg: &EngineConfig,
        id: &str,
        mut spec: Spec,
        stdio: Stdio,
        cancel: &Cancel,
    ) -> Result<Container> {
        validate_container_id(id)?;
        cancel.check()?;
        validate_spec(&spec)?;
        reaper::start();

        let bundle = cfg.run_dir.join(id);
        let mut undo = Undo::default();
        std::fs::create_dir_all(&cfg.run_dir)
            .map_err(|e| other(format!("cannot create {}: {e}", cfg.run_dir.display())))?;
        match std::fs::create_dir(&bundle) {
            Ok(()) => undo.created_bundle = true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(other(format!(
                    "cannot create the bundle {}: {e}",
                    bundle.display()
                )))
            }
        }
        undo.bundle = Some(bundle.clone());
        // The FIFO doubles as the lock of the container id: it lives as long as the container.
        if let Err(e) = nix::unistd::mkfifo(
            &bundle.join("exec.fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        ) {
            let err = if e == nix::errno::Errno::EEXIST {
                Error::AlreadyExists(format!("The container {id} already exists."))
            } else {
                other(format!("cannot create the start FIFO of {id}: {e}"))
            };
            if undo.created_bundle {
                undo.run();
            }
            return Err(err);
        }
        undo.fifo = true;

        let result = Self::create_inner(cfg, id, &mut spec, stdio, &bundle, &mut undo, cancel);
        match result {
            Ok((init_pid, init_exit, console, namespaces, cgroup)) => Ok(Container {
                id: id.to_string(),
                spec,
                bundle,
                init_exe: cfg.init_exe.clone(),
                init_args: cfg.init_args.clone(),
                cgroup,
                init_pid,
                init_exit,
                console,
                namespaces,
                started: false,
                paused: false,
                destroyed: false,
                created_bundle: undo.created_bundle,
            }),
            Err(e) => {
                undo.run();
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn create_inner(
        cfg: &EngineConfig,
        id: &str,
        spec: &mut Spec,
        stdio: Stdio,
        bundle: &Path,
        undo: &mut Undo,
        cancel: &Cancel,
    ) -> Result<(
        i32,
        ExitWatch,
        Option<OwnedFd>,
        Vec<(LinuxNamespaceType, File)>,
        Cgroup,
    )> {
        // Root: root.path as given (validated absolute and canonical). The container process
        // bind-mounts it onto itself in its own mount namespace before pivoting, so nothing is
        // mounted in the engine's namespace: teardown then has no unmount to wait for (an
        // unmount waits for an RCU grace period, milliseconds on a busy machine).
        if spec.root().is_none() {
            return Err(Error::InvalidArgument(
                "The spec has no root section.".into(),
            ));
        }
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| Error::InvalidArgument("The spec has no process section.".into()))?;
        let mut namespaces = Vec::new();
        for ns in spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
        {
            if namespaces.iter().any(|n: &Namespace| n.typ == ns.typ()) {
                continue; // the first entry of a type wins
            }
            let path = ns.path().clone().filter(|p| !p.as_os_str().is_empty());
            namespaces.push(Namespace {
                typ: ns.typ(),
                path,
            });
        }
        let setup = Setup {
            kind: Kind::Init,
            id: id.to_string(),
            spec: spec.clone(),
            process,
            bundle: bundle.to_path_buf(),
            namespaces,
            no_pivot: cfg.no_pivot_root,
        };
        // Done while the setup process starts: the bundle's config.json (read by hooks, which
        // run later) and the cgroup, registered for the rollback as soon as it exists.
        let prepare = || {
            if let Ok(json) = serde_json::to_vec_pretty(&*spec) {
                // Never through a symlink planted in the bundle.
                let _ = crate::fsutil::write_file_nofollow(
                    &bundle.join("config.json"),
                    &json,
                    0o600,
                    false,
                );
            }
            let resources = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().clone())
                .unwrap_or_default();
            let cg = Cgroup::create(&cfg.cgroups, &cgroup_path(spec, id), Some(&resources))
                .map_err(cgroup_err)?;
            undo.cgroup = Some(cg.clone());
            Ok(cg)
        };
        let (pid, exit, console, cg) = spawn(
            &cfg.init_exe,
            &cfg.init_args,
            &setup,
            spawn::SpawnIo {
                stdio,
                // Born as pid 1 of the container's new pid namespace, the setup process needs
                // no fork; a user namespace must own the pid namespace, so it is made after it.
                pid_ns: if setup.creates(LinuxNamespaceType::Pid) && !setup.in_userns() {
                    spawn::PidNs::New
                } else {
                    spawn::PidNs::Same
                },
            },
            prepare,
            spec,
            bundle,
            cancel,
        )?;
        let pinned = match pin_namespaces(pid) {
            Ok(p) => p,
            Err(e) => {
                let _ = kill(pid, libc::SIGKILL);
                let _ = exit.wait_timeout(ROLLBACK_WAIT);
                return Err(e);
            }
        };
        Ok((pid, exit, console, pinned, cg))
    }

    /// Container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The spec as used (resources updated by UpdateContainer).
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The bundle directory.
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// The cgroup of the container.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Pid of the init process (in the engine's pid namespace).
    pub fn init_pid(&self) -> i32 {
        self.init_pid
    }

    /// Exit of the init process.
    pub fn init_exit(&self) -> ExitWatch {
        self.init_exit.clone()
    }

    /// The pty master of a terminal init (close-on-exec, non-blocking), once: the caller owns
    /// it from then on. `None` for an init without a terminal.
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// Current state: destroyed or init exited → Stopped; frozen → Paused;
    /// started → Running; else Created.
    pub fn status(&self) -> Status {
        if self.destroyed || self.init_exit.try_get().is_some() {
            Status::Stopped
        } else if self.paused {
            Status::Paused
        } else if self.started {
            Status::Running
        } else {
            Status::Created
        }
    }

    fn check_alive(&self) -> Result<()> {
        if self.destroyed {
            return Err(other(format!(
                "The container {} has been destroyed.",
                self.id
            )));
        }
        Ok(())
    }

    fn state(&self, status: &str) -> Vec<u8> {
        let pid = if self.init_exit.try_get().is_some() {
            0
        } else {
            self.init_pid
        };
        crate::hooks::state_json(&self.spec, &self.id, status, pid, &self.bundle)
    }

    /// Releases the init from the start barrier, then runs poststart hooks.
    /// Fails (never blocks) when nobody waits on the barrier: already
    /// started, or init gone.
    pub fn start(&mut self) -> Result<()> {
        self.start_barrier()?.run();
        Ok(())
    }

    /// Releases the init from the start barrier and returns the poststart hooks, for the caller
    /// to run once it no longer holds any lock on the container.
    pub fn start_barrier(&mut self) -> Result<PostStart> {
        self.check_alive()?;
        // The FIFO alone cannot tell: right after a start the init may not have consumed the
        // byte and closed its end yet, and a second writer would succeed.
        if self.started {
            return Err(other(format!(
                "The container {} has already been started.",
                self.id
            )));
        }
        if let Some(code) = self.init_exit.try_get() {
            return Err(other(format!(
                "The container {} cannot be started: its init process has exited (status {code}).",
                self.id
            )));
        }
        let fifo = self.bundle.join("exec.fifo");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENXIO) {
                    other(format!(
                        "The container {} cannot be started: its init process is not waiting for start (already started, or exited).",
                        self.id
                    ))
                } else {
                    other(format!("cannot open the start FIFO of {}: {e}", self.id))
                }
            })?;
        f.write_all(&[0])
            .map_err(|e| other(format!("cannot start the container {}: {e}", self.id)))?;
        drop(f);
        self.started = true;
        Ok(PostStart {
            id: self.id.clone(),
            hooks: hooks_of(&self.spec, |h| h.poststart()),
            state: self.state("running"),
        })
    }

    /// Runs another process in the container (all its namespaces, its cgroup).
    /// Returns once the process is about to exec; a setup failure (e.g. the
    /// binary does not exist) is an error of this call. Returns the pid, the
    /// exit and, for a terminal process, its pty master (close-on-exec,
    /// non-blocking; the caller owns it).
    pub fn exec(
        &self,
        process: &Process,
        stdio: Stdio,
    ) -> Result<(i32, ExitWatch, Option<OwnedFd>)> {
        self.prepare_exec(process)?.spawn(stdio, &Cancel::new())
    }

    /// Everything an exec needs from the container, taken at once (quick), so that the
    /// process can then be set up ([`ExecPlan::spawn`]) without holding the container.
    pub fn prepare_exec(&self, process: &Process) -> Result<ExecPlan> {
        self.check_alive()?;
        if self.paused {
            // The setup process would be frozen as soon as it joined the cgroup.
            return Err(other(format!(
                "The container {} is paused; resume it before running a process in it.",
                self.id
            )));
        }
        validate_process_args(process.args().as_deref())?;
        let mut process = process.clone();
        if process.capabilities().is_none() {
            let caps = self
                .spec
                .process()
                .as_ref()
                .and_then(|p| p.capabilities().clone());
            process.set_capabilities(caps);
        }
        let me = std::process::id();
        // Own duplicates: the container may be destroyed while the plan is in use.
        let mut pinned = Vec::new();
        let mut namespaces = Vec::new();
        for (t, f) in &self.namespaces {
            let dup = f
                .try_clone()
                .map_err(|e| other(format!("cannot duplicate a namespace descriptor: {e}")))?;
            namespaces.push(Namespace {
                typ: *t,
                path: Some(PathBuf::from(format!("/proc/{me}/fd/{}", dup.as_raw_fd()))),
            });
            pinned.push(dup);
        }
        let setup = Setup {
            kind: Kind::Exec,
            id: self.id.clone(),
            spec: self.spec.clone(),
            process,
            bundle: self.bundle.clone(),
            namespaces,
            no_pivot: false,
        };
        Ok(ExecPlan {
            exe: self.init_exe.clone(),
            args: self.init_args.clone(),
            setup,
            cgroup: self.cgroup.clone(),
            bundle: self.bundle.clone(),
            _pinned: pinned,
        })
    }

    /// Sends a signal to one process (ESRCH counts as success). SIGTERM to an
    /// init that is pid 1 of its namespace and does not handle SIGTERM would
    /// be ignored by the kernel, so it becomes SIGKILL.
    pub fn signal(&self, pid: i32, sig: i32) -> Result<()> {
        let mut sig = sig;
        if pid == self.init_pid && sig == libc::SIGTERM && self.init_ignores_sigterm() {
            sig = libc::SIGKILL;
        }
        kill(pid, sig).map_err(|e| other(format!("cannot signal process {pid}: {e}")))
    }

    fn init_ignores_sigterm(&self) -> bool {
        let has_pidns = self
            .namespaces
            .iter()
            .any(|(t, _)| *t == LinuxNamespaceType::Pid);
        if !has_pidns {
            return false;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.init_pid)) else {
            return false;
        };
        let mask = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        let bit = 1u64 << (libc::SIGTERM - 1);
        (mask("SigCgt:") | mask("SigIgn:") | mask("SigBlk:")) & bit == 0
    }

    /// Sends a signal to every process of the container's cgroup (frozen
    /// while signalling, so that no new process escapes).
    pub fn signal_all(&self, sig: i32) -> Result<()> {
        let frozen = self.cgroup.freeze().is_ok();
        let res = (|| {
            let mut pids = self.cgroup.pids().map_err(cgroup_err)?;
            if self.init_exit.try_get().is_none() && !pids.contains(&self.init_pid) {
                pids.push(self.init_pid);
            }
            for pid in pids {
                kill(pid, sig).map_err(|e| other(format!("cannot signal process {pid}: {e}")))?;
            }
            Ok(())
        })();
        if frozen && !self.paused {
            let _ = self.cgroup.thaw();
        }
        res
    }

    /// SIGKILLs every process of the container without freezing it: through `cgroup.kill`
    /// where the kernel has it (v2, 5.14+), else one by one. Errors (a process already gone)
    /// are ignored; the caller checks that the cgroup emptied.
    fn kill_everything(&self) {
        if !self.cgroup.kill_all() {
            for pid in self.cgroup.pids().unwrap_or_default() {
                let _ = kill(pid, libc::SIGKILL);
            }
        }
        if self.init_exit.try_get().is_none() {
            let _ = kill(self.init_pid, libc::SIGKILL);
        }
    }

    /// Freezes the container.
    pub fn pause(&mut self) -> Result<()> {
        self.check_alive()?;
        self.cgroup.freeze().map_err(cgroup_err)?;
        self.paused = true;
        Ok(())
    }

    /// Thaws the container.
    pub fn resume(&mut self) -> Result<()> {
        self.check_alive()?;
        self.cgroup.thaw().map_err(cgroup_err)?;
        self.paused = false;
        Ok(())
    }

    /// Applies new resource limits and records them in the spec.
    pub fn update(&mut self, resources: &LinuxResources) -> Result<()> {
        self.check_alive()?;
        self.cgroup.apply(resources, true).map_err(cgroup_err)?;
        if let Some(linux) = self.spec.linux_mut() {
            linux.set_resources(Some(resources.clone()));
        }
        Ok(())
    }

    /// Cgroup statistics.
    pub fn stats(&self) -> Result<cgroups::Stats> {
        self.cgroup.stats().map_err(cgroup_err)
    }

    /// Kills every process of the container, waits (at most `timeout`) until
    /// they are gone, runs poststop hooks, removes the cgroup, unmounts and
    /// removes the bundle. Idempotent; on a timeout nothing is removed and
    /// the call can be repeated.
    pub fn destroy(&mut self, timeout: Duration) -> Result<()> {
        if self.destroyed {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        // A frozen process (v1) cannot die: thaw once, then kill without freezing. Freezing
        // for every round would let a cgroup whose tasks are exiting stall each round for the
        // freezer timeout; repeating the kill until the cgroup is empty covers racing forks.
        if self.paused || self.cgroup.is_frozen() {
            let _ = self.cgroup.thaw();
        }
        // Common case: the processes have exited already (the init's exit is known and the
        // cgroup is empty); nothing is killed and nothing waited for. Otherwise kill what still
        // runs and wait for the exit watch and the cgroup, repeating the kill for racing forks.
        let mut round = 0u32;
        loop {
            let init_gone = self.init_exit.try_get().is_some();
            let populated = self.cgroup.is_populated().unwrap_or(false);
            if init_gone && !populated {
                break;
            }
            if !init_gone && !populated && !Path::new(&format!("/proc/{}", self.init_pid)).exists()
            {
                break; // not ours to wait for any more (reaped elsewhere)
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(other(format!(
                    "The processes of container {} did not exit within {} ms after SIGKILL.",
                    self.id,
                    timeout.as_millis()
                )));
            }
            self.kill_everything();
            // The init dies first (its pid namespace takes the rest with it): wait on its exit,
            // then on the cgroup emptying.
            let slice = Duration::from_millis(if round < 3 { 20 } else { 200 });
            let left = (deadline - now).min(slice);
            if !init_gone {
                let _ = self.init_exit.wait_timeout(left);
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(slice);
            self.cgroup.wait_empty(left);
            round += 1;
        }
        self.paused = false;
        let hooks = hooks_of(&self.spec, |h| h.poststop());
        if let Err(e) = crate::hooks::run_in_engine(&hooks, &self.state("stopped")) {
            tracing::warn!("container {}: poststop hook failed: {e:#}", self.id);
        }
        // The last reference to a mount namespace tears its mounts down and waits for an RCU
        // grace period: release the pinned namespaces off the caller's path.
        let pinned = std::mem::take(&mut self.namespaces);
        if !pinned.is_empty() {
            let spawned = std::thread::Builder::new()
                .name("ns-release".into())
                .stack_size(64 << 10)
                .spawn(move || drop(pinned));
            if let Err(e) = spawned {
                tracing::debug!("releasing namespaces inline: {e}");
            }
        }
        self.cgroup.destroy().map_err(cgroup_err)?;
        let rootfs = self.bundle.join("rootfs");
        let res = if self.created_bundle {
            // Fast path without a mount table scan: nothing of ours is mounted in the bundle
            // (see create), so its known entries go with plain rmdir/unlink, which never touch
            // what might be mounted. Anything left over (a mount someone else made, unknown
            // files) takes the scanning path.
            let _ = std::fs::remove_file(self.bundle.join("config.json"));
            let _ = std::fs::remove_file(self.bundle.join("exec.fifo"));
            let fast = std::fs::remove_dir(&rootfs)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .and_then(|_| std::fs::remove_dir(&self.bundle));
            match fast {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(_) => crate::fsutil::unmount_all_under(&self.bundle)
                    .map_err(|e| other(format!("cannot unmount the rootfs of {}: {e}", self.id)))
                    .and_then(|_| std::fs::remove_dir_all(&self.bundle).map_err(other))
                    .map_err(|e| std::io::Error::other(e.to_string())),
            }
        } else {
            crate::fsutil::unmount_all_under(&rootfs)
                .map_err(|e| other(format!("cannot unmount the rootfs of {}: {e}", self.id)))?;
            let _ = std::fs::remove_file(self.bundle.join("config.json"));
            let _ = std::fs::remove_dir(self.bundle.join("rootfs"));
            std::fs::remove_file(self.bundle.join("exec.fifo"))
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(other(format!(
                    "cannot remove the bundle of {}: {e}",
                    self.id
                )))
            }
        }
        self.destroyed = true;
        Ok(())
    }
}

/// Opens `/proc/<pid>/ns/*` for every namespace type in which the process
/// differs from the engine, so exec can join them even after init exited.
fn pin_namespaces(pid: i32) -> Result<Vec<(LinuxNamespaceType, File)>> {
    use LinuxNamespaceType as T;
    let mut out = Vec::new();
    for (t, name) in [
        (T::User, "user"),
        (T::Ipc, "ipc"),
        (T::Uts, "uts"),
        (T::Network, "net"),
        (T::Pid, "pid"),
        (T::Cgroup, "cgroup"),
        (T::Time, "time"),
        (T::Mount, "mnt"),
    ] {
        let own = Path::new("/proc/self/ns").join(name);
        if !own.exists() {
            continue;
        }
        let f = File::open(format!("/proc/{pid}/ns/{name}")).map_err(|e| {
            other(format!(
                "cannot pin the {name} namespace of process {pid}: {e}"
            ))
        })?;
        let mine = std::fs::metadata(&own).map_err(other)?;
        let theirs = f.metadata().map_err(other)?;
        if mine.ino() != theirs.ino() || mine.dev() != theirs.dev() {
            out.push((t, f));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths() {
        let mut spec = Spec::default();
        assert_eq!(cgroup_path(&spec, "abc"), "/abc");
        let mut l = spec.linux().clone().unwrap();
        l.set_cgroups_path(Some("kubepods.slice:cri:abc".into()));
        spec.set_linux(Some(l.clone()));
        assert_eq!(cgroup_path(&spec, "x"), "/kubepods.slice/cri/abc");
        l.set_cgroups_path(Some("/a/b".into()));
        spec.set_linux(Some(l));
        assert_eq!(cgroup_path(&spec, "x"), "/a/b");
    }
}
