//! Containers and their processes: the registry behind the container and process RPCs.
//!
//! Locking: the registry map is held only to look entries up or insert/remove them; each container
//! has its own engine lock (taken on a blocking thread for engine calls) and its own process table.
//! Nothing that waits — a read, a write, WaitProcess, GetOOMEvent — holds any of these locks while
//! it waits, so one stuck client never stalls the others.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, Spec};
use tokio::sync::{mpsc, Mutex};
use tracing::{info, warn};

use crate::error::{AgentError, Result};
use crate::io::{self, ParentStdio, StreamReader, StreamWriter};
use crate::lifecycle::{Creations, Reservation};

mod env;
use env::merge_guest_hooks;
pub use env::{ContainerEnv, GuestHooks};

mod exec;

/// Capacity of the OOM event queue (events beyond it wait in their watcher).
const OOM_QUEUE: usize = 100;
/// Waited-for processes whose output is still unread, kept per container so that it can be read
/// after WaitProcess; beyond this many, one of them is dropped with its output. Each holds at most
/// two descriptors, so this bounds what a client that never reads can make the agent hold.
const MAX_FINISHED: usize = 16;
/// How long a cancelled or abandoned set-up may take to die before the rollback goes on.
const ROLLBACK_WAIT: Duration = Duration::from_secs(10);

/// One process of a container (its init or an exec).
pub struct ProcessEntry {
    pub exec_id: String,
    pub pid: i32,
    pub init: bool,
    pub terminal: bool,
    pub exit: engine::ExitWatch,
    stdin: StdMutex<Option<Arc<StreamWriter>>>,
    stdout: StdMutex<Option<Arc<StreamReader>>>,
    stderr: StdMutex<Option<Arc<StreamReader>>>,
    /// Output streams released without a read having seen their end (empty at the exit): a
    /// read still gets end of stream once. Bit 0 stdout, bit 1 stderr.
    unread_ends: StdMutex<u8>,
    pty: StdMutex<Option<Arc<OwnedFd>>>,
    /// Output copies to pass-fd streams; WaitProcess answers after they end.
    streams_done: StdMutex<Vec<crate::passfd::CopyDone>>,
}

impl ProcessEntry {
    fn new(
        exec_id: String,
        pid: i32,
        init: bool,
        terminal: bool,
        exit: engine::ExitWatch,
        stdio: ParentStdio,
    ) -> ProcessEntry {
        ProcessEntry {
            exec_id,
            pid,
            init,
            terminal,
            exit,
            stdin: StdMutex::new(stdio.stdin),
            stdout: StdMutex::new(stdio.stdout),
            stderr: StdMutex::new(stdio.stderr),
            pty: StdMutex::new(stdio.pty),
            unread_ends: StdMutex::new(0),
            streams_done: StdMutex::new(Vec::new()),
        }
    }

    pub fn stdout(&self) -> Option<Arc<StreamReader>> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Option<Arc<StreamReader>> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdin(&self) -> Option<Arc<StreamWriter>> {
        self.stdin.lock().unwrap().clone()
    }

    pub fn pty(&self) -> Option<Arc<OwnedFd>> {
        self.pty.lock().unwrap().clone()
    }

    /// Closes stdin (for a terminal process: the pty master's write side stays for output, the
    /// child sees end of input through an EOT character).
    pub async fn close_stdin(&self) -> Result<()> {
        let writer = self.stdin.lock().unwrap().take();
        if self.terminal {
            if let Some(w) = writer {
                // ^D at the start of a line is end of input for a terminal.
                w.write_all(&[4]).await?;
            }
        }
        Ok(())
    }

    /// After the exit: drops stdin and every output stream that has nothing left to read (read
    /// to its end, or empty), so that their descriptors are released as soon as no read uses
    /// them. A stream with unread bytes stays until they are read.
    fn release_spent_streams(&self) {
        if self.exit.try_get().is_none() {
            return;
        }
        self.stdin.lock().unwrap().take();
        for (bit, slot) in [(1u8, &self.stdout), (2u8, &self.stderr)] {
            let mut slot = slot.lock().unwrap();
            if let Some(r) = slot.as_ref().filter(|r| r.is_spent()) {
                if !r.eof_returned() {
                    *self.unread_ends.lock().unwrap() |= bit;
                }
                slot.take();
            }
        }
        // A terminal's master goes with its output: nothing reads or resizes it any more.
        if self.stdout.lock().unwrap().is_none() && self.stderr.lock().unwrap().is_none() {
            self.pty.lock().unwrap().take();
        }
    }

    /// Whether the process has exited, holds no stream any more and every end of stream was
    /// returned.
    fn is_spent(&self) -> bool {
        self.exit.try_get().is_some()
            && self.stdout.lock().unwrap().is_none()
            && self.stderr.lock().unwrap().is_none()
            && *self.unread_ends.lock().unwrap() == 0
    }

    /// Whether the process still holds an output stream (a descriptor).
    fn holds_streams(&self) -> bool {
        self.stdout.lock().unwrap().is_some() || self.stderr.lock().unwrap().is_some()
    }

    /// Starts the task that releases the process's streams once it has exited.
    fn watch_exit(self: &Arc<Self>) {
        let exit = self.exit.clone();
        let weak: Weak<ProcessEntry> = Arc::downgrade(self);
        tokio::spawn(async move {
            exit.wait().await;
            if let Some(p) = weak.upgrade() {
                p.release_spent_streams();
            }
        });
    }
}

/// A container known to the agent.
pub struct ContainerEntry {
    pub id: String,
    engine: Arc<StdMutex<engine::Container>>,
    processes: StdMutex<HashMap<String, Arc<ProcessEntry>>>,
    /// Processes that were waited for but whose output has not been read to the end yet: reads
    /// still reach them, nothing else does.
    finished: StdMutex<HashMap<String, Arc<ProcessEntry>>>,
    /// Execs being set up, by exec id, with the handle that abandons them.
    pending_execs: StdMutex<HashMap<String, engine::Cancel>>,
    /// Set once removal began: no exec may start or register any more.
    closing: AtomicBool,
    /// The registration of the container's memory cgroup with the sandbox's OOM monitor.
    oom_token: StdMutex<Option<engine::cgroups::OomToken>>,
}

impl ContainerEntry {
    /// Runs a blocking engine call on the blocking pool.
    async fn with_engine<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut engine::Container) -> engine::Result<T> + Send + 'static,
    {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = engine.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| AgentError::internal(format!("engine task failed: {e}")))?
        .map_err(AgentError::from)
    }

    /// The process for `exec_id` ("" means the init process).
    pub fn process(&self, exec_id: &str) -> Result<Arc<ProcessEntry>> {
        let procs = self.processes.lock().unwrap();
        let key = if exec_id.is_empty() {
            self.id.as_str()
        } else {
            exec_id
        };
        procs.get(key).cloned().ok_or_else(|| {
            if exec_id.is_empty() || exec_id == self.id {
                AgentError::not_found(format!("the init process of container {} is gone", self.id))
            } else {
                AgentError::not_found(format!(
                    "process {exec_id} not found in container {}",
                    self.id
                ))
            }
        })
    }

    /// Like [`Self::process`], but also finds waited-for processes whose output is still unread.
    pub fn process_for_read(&self, exec_id: &str) -> Result<Arc<ProcessEntry>> {
        match self.process(exec_id) {
            Ok(p) => Ok(p),
            Err(e) => {
                let key = if exec_id.is_empty() {
                    self.id.as_str()
                } else {
                    exec_id
                };
                self.finished.lock().unwrap().get(key).cloned().ok_or(e)
            }
        }
    }

    /// Forgets a waited-for process whose streams are all released.
    fn forget_if_spent(&self, key: &str) {
        let mut finished = self.finished.lock().unwrap();
        if finished.get(key).is_some_and(|p| p.is_spent()) {
            finished.remove(key);
        }
    }

    /// The spec the container was created with (after the agent's rewrites).
    pub async fn spec(&self) -> Result<Spec> {
        self.with_engine(|e| Ok(e.spec().clone())).await
    }

    /// The container's cgroup (for guest-wide changes such as widening cpusets after CPU hotplug).
    pub async fn cgroup(&self) -> Result<engine::cgroups::Cgroup> {
        self.with_engine(|e| Ok(e.cgroup().clone())).await
    }
}

/// Every container of the sandbox, plus the sandbox-wide container state.
pub struct Containers {
    map: StdMutex<HashMap<String, Arc<ContainerEntry>>>,
    /// Ids being created right now (so a duplicate is refused before anything is touched).
    creating: Creations,
    /// The sandbox's pid namespace: that of the first container ever created, pinned open.
    sandbox_pidns: StdMutex<Option<File>>,
    oom_tx: mpsc::Sender<String>,
    oom_rx: Mutex<mpsc::Receiver<String>>,
    /// One thread watching the OOM events of every container (started with the first one).
    oom_monitor: std::sync::OnceLock<Option<engine::cgroups::OomMonitor>>,
}

impl Default for Containers {
    fn default() -> Self {
        let (oom_tx, oom_rx) = mpsc::channel(OOM_QUEUE);
        Containers {
            map: StdMutex::new(HashMap::new()),
            creating: Creations::default(),
            sandbox_pidns: StdMutex::new(None),
            oom_tx,
            oom_rx: Mutex::new(oom_rx),
            oom_monitor: std::sync::OnceLock::new(),
        }
    }
}

/// Everything CreateContainer needs besides the spec.
pub struct CreateParams {
    pub id: String,
    pub spec: Spec,
    pub sandbox_pidns: bool,
}

impl Containers {
    /// Looks a container up; the code of a miss is chosen by the caller's RPC family.
    pub fn get(&self, id: &str) -> Option<Arc<ContainerEntry>> {
        self.map.lock().unwrap().get(id).cloned()
    }

    pub fn ids(&self) -> Vec<String> {
        self.map.lock().unwrap().keys().cloned().collect()
    }

    /// Lookup for the process-family RPCs: unknown container is INVALID_ARGUMENT (as upstream).
    pub fn lookup(&self, id: &str) -> Result<Arc<ContainerEntry>> {
        self.get(id)
            .ok_or_else(|| AgentError::invalid_argument(format!("container {id} does not exist")))
    }

    /// Lookup for Start/Remove/Exec: unknown container is NOT_FOUND.
    pub fn find(&self, id: &str) -> Result<Arc<ContainerEntry>> {
        self.get(id)
            .ok_or_else(|| AgentError::not_found(format!("container {id} does not exist")))
    }

    /// Reserves `id` for a CreateContainer (see [`crate::lifecycle`]): ALREADY_EXISTS if it is
    /// taken; waits for an abandoned creation of the same id to finish its rollback.
    pub async fn reserve(&self, id: &str) -> Result<Reservation> {
        engine::validate_container_id(id).map_err(AgentError::from)?;
        self.creating
            .reserve(id, || self.map.lock().unwrap().contains_key(id))
            .await
    }

    /// CreateContainer: the container ends in the Created state, its init blocked before exec.
    /// Runs in the creation's own task (never cancelled with the request): if the request is
    /// abandoned meanwhile, the engine set-up is cancelled and everything made is rolled back.
    pub async fn create(
        &self,
        env: ContainerEnv,
        params: CreateParams,
        reservation: &Reservation,
    ) -> Result<()> {
        let id = params.id.clone();
        let abandoned = || AgentError::cancelled(format!("the creation of {id} was abandoned"));
        if reservation.is_abandoned() {
            return Err(abandoned());
        }

        let mut spec = params.spec;
        let terminal = spec
            .process()
            .as_ref()
            .map(|p| p.terminal().unwrap_or(false))
            .unwrap_or(false);
        self.rewrite_namespaces(&env.shared_ns, &mut spec, params.sandbox_pidns)?;
        merge_guest_hooks(&mut spec, &env.hooks);

        let (parent, child) = io::create_stdio(terminal, env.pipe_size)?;
        let cfg = env.engine;
        let stdio = engine::Stdio {
            stdin: child.stdin,
            stdout: child.stdout,
            stderr: child.stderr,
        };
        let cid = id.clone();
        let cancel = reservation.cancel().clone();
        let mut container = tokio::task::spawn_blocking(move || {
            engine::Container::create_cancellable(&cfg, &cid, spec, stdio, &cancel)
        })
        .await
        .map_err(|e| AgentError::internal(format!("container creation task failed: {e}")))?
        .map_err(|e| match e {
            engine::Error::Cancelled(_) => abandoned(),
            e => AgentError::from(e),
        })?;
        // A terminal init: the pty master its setup opened inside the container.
        let parent = match io::attach_console(parent, container.take_console()) {
            Ok(p) => p,
            Err(e) => {
                let _ =
                    tokio::task::spawn_blocking(move || container.destroy(Duration::from_secs(10)))
                        .await;
                return Err(e);
            }
        };

        let pid = container.init_pid();
        let exit = container.init_exit();
        let init = Arc::new(ProcessEntry::new(
            id.clone(),
            pid,
            true,
            terminal,
            exit,
            parent,
        ));
        let entry = Arc::new(ContainerEntry {
            id: id.clone(),
            engine: Arc::new(StdMutex::new(container)),
            processes: StdMutex::new(HashMap::from([(id.clone(), init.clone())])),
            finished: StdMutex::new(HashMap::new()),
            pending_execs: StdMutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            oom_token: StdMutex::new(None),
        });
        let registered = reservation.register(|| {
            self.map.lock().unwrap().insert(id.clone(), entry.clone());
        });
        if registered {
            // Later execs and containers find a setup process started ahead of need.
            engine::keep_spare();
        }
        if !registered {
            // The request went away while the engine worked: undo it all, then report.
            let engine = entry.engine.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(err) = e.destroy(ROLLBACK_WAIT) {
                    warn!(subsystem = "container", error = %err, "cannot roll back an abandoned creation");
                }
            })
            .await;
            return Err(abandoned());
        }
        init.watch_exit();
        {
            let mut pidns = self.sandbox_pidns.lock().unwrap();
            if pidns.is_none() {
                match File::open(format!("/proc/{pid}/ns/pid")) {
                    Ok(f) => *pidns = Some(f),
                    Err(e) => {
                        warn!(subsystem = "container", error = %e, "cannot pin the sandbox pid namespace")
                    }
                }
            }
        }
        info!(subsystem = "container", container_id = %id, pid, "container created");
        Ok(())
    }

    /// Points ipc/uts at the sandbox's shared namespaces and adds the pid namespace entry.
    fn rewrite_namespaces(
        &self,
        shared: &HashMap<&'static str, PathBuf>,
        spec: &mut Spec,
        share_pidns: bool,
    ) -> Result<()> {
        let pidns_path = if share_pidns {
            let pinned = self.sandbox_pidns.lock().unwrap();
            match pinned.as_ref() {
                Some(f) => Some(PathBuf::from(format!(
                    "/proc/{}/fd/{}",
                    std::process::id(),
                    f.as_raw_fd()
                ))),
                None if self.map.lock().unwrap().is_empty() => None,
                None => {
                    return Err(AgentError::failed_precondition(
                        "the sandbox has no shared pid namespace yet",
                    ))
                }
            }
        } else {
            None
        };
        let Some(linux) = spec.linux_mut() else {
            return Err(AgentError::invalid_argument(
                "the spec has no linux section",
            ));
        };
        let mut namespaces: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
        for ns in namespaces.iter_mut() {
            let key = match ns.typ() {
                LinuxNamespaceType::Ipc => "ipc",
                LinuxNamespaceType::Uts => "uts",
                _ => continue,
            };
            ns.set_path(shared.get(key).cloned());
        }
        let has_pid = namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Pid);
        if let Some(path) = pidns_path {
            namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
            namespaces.push(pid_namespace(Some(path))?);
        } else if !has_pid {
            namespaces.push(pid_namespace(None)?);
        }
        linux.set_namespaces(Some(namespaces));
        Ok(())
    }

    /// StartContainer: releases the init and starts watching for OOM kills.
    pub async fn start(&self, id: &str) -> Result<()> {
        let c = self.find(id)?;
        // The watcher is registered before the init is released, so that an OOM kill right after
        // the start is not missed.
        let (watcher, poststart) = c
            .with_engine(|e| {
                let watcher = e.cgroup().oom_watcher();
                let poststart = e.start_barrier()?;
                Ok((watcher, poststart))
            })
            .await?;
        // Poststart hooks run without the container's lock (they may take their whole timeout).
        let _ = tokio::task::spawn_blocking(move || poststart.run()).await;
        match watcher {
            Ok(w) => self.watch_oom(&c, w),
            Err(e) => {
                warn!(subsystem = "container", container_id = %c.id, error = %format!("{e:#}"), "cannot watch OOM events");
            }
        }
        info!(subsystem = "container", container_id = %id, "container started");
        Ok(())
    }

    /// The sandbox's OOM monitor (created on first use; None if epoll is unavailable).
    fn oom_monitor(&self) -> Option<&engine::cgroups::OomMonitor> {
        self.oom_monitor
            .get_or_init(|| {
                let tx = self.oom_tx.clone();
                let made = engine::cgroups::OomMonitor::new(move |id: &str| {
                    // Never block the monitor thread: it serves every container.
                    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(id.to_string()) {
                        warn!(subsystem = "container", container_id = %id, "OOM event dropped: {OOM_QUEUE} events are waiting for GetOOMEvent");
                    }
                });
                match made {
                    Ok(m) => Some(m),
                    Err(e) => {
                        warn!(subsystem = "container", error = %format!("{e:#}"), "cannot watch OOM events");
                        None
                    }
                }
            })
            .as_ref()
    }

    fn watch_oom(&self, c: &Arc<ContainerEntry>, watcher: engine::cgroups::OomWatcher) {
        let Some(monitor) = self.oom_monitor() else {
            return;
        };
        match monitor.register(&c.id, watcher) {
            Ok(token) => *c.oom_token.lock().unwrap() = Some(token),
            Err(e) => {
                warn!(subsystem = "container", container_id = %c.id, error = %format!("{e:#}"), "cannot watch OOM events")
            }
        }
    }

    /// Number of containers whose OOM events are being watched (all by one thread).
    #[allow(dead_code)]
    pub fn oom_watched(&self) -> usize {
        self.oom_monitor
            .get()
            .and_then(|m| m.as_ref())
            .map_or(0, |m| m.len())
    }

    /// GetOOMEvent: the id of the next container whose memory cgroup saw an OOM kill.
    pub async fn next_oom_event(&self) -> Result<String> {
        let mut rx = self.oom_rx.lock().await;
        rx.recv()
            .await
            .ok_or_else(|| AgentError::unavailable("the agent is shutting down"))
    }

    /// SignalProcess. `exec_id == ""` with SIGKILL kills every process of the container.
    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .filter(|s| (0..=64).contains(s))
            .ok_or_else(|| {
                AgentError::invalid_argument(format!("{signal} is not a signal number"))
            })?;
        let c = self.lookup(id)?;
        if exec_id.is_empty() && sig == libc::SIGKILL {
            return c.with_engine(move |e| e.signal_all(sig)).await;
        }
        let p = c.process(exec_id)?;
        if p.exit.try_get().is_some() {
            return Ok(()); // already gone: never signal a pid that may have been reused
        }
        let mut sig = sig;
        if p.init && sig == libc::SIGTERM && !handles_sigterm(p.pid) {
            // A pid-namespace init ignores signals it has no handler for; make SIGTERM effective.
            sig = libc::SIGKILL;
        }
        // SAFETY: plain kill(2) on a pid we started and have not reaped.
        let rc = unsafe { libc::kill(p.pid, sig) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(AgentError::internal(format!(
                    "cannot send signal {sig} to process {}: {err}",
                    p.pid
                )));
            }
        }
        Ok(())
    }

    /// WaitProcess: waits for the exit and returns its status; the process is then forgotten
    /// (its unread output stays readable until end of stream).
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32> {
        let c = self.lookup(id)?;
        let p = c.process(exec_id)?;
        let status = p.exit.wait().await;
        // Output carried by pass-fd streams is written out before the status is reported.
        let copies = p.streams_done.lock().unwrap().clone();
        for done in copies {
            done.wait().await;
        }
        let key = p.exec_id.clone();
        let removed = {
            let mut procs = c.processes.lock().unwrap();
            // Only the entry waited for (a new exec may reuse the id once this one is gone).
            match procs.get(&key) {
                Some(q) if Arc::ptr_eq(q, &p) => procs.remove(&key),
                _ => None,
            }
        };
        if let Some(p) = removed {
            p.release_spent_streams();
            if !p.is_spent() {
                let mut finished = c.finished.lock().unwrap();
                if finished.len() >= MAX_FINISHED {
                    // Bounded: some other finished process is forgotten (preferably one that
                    // holds no output any more).
                    let victim = finished
                        .iter()
                        .find(|(_, q)| !q.holds_streams())
                        .or_else(|| finished.iter().next())
                        .map(|(k, q)| (k.clone(), q.holds_streams()));
                    if let Some((k, had_output)) = victim {
                        if had_output {
                            warn!(subsystem = "container", container_id = %id, exec_id = %k, "dropping the unread output of a finished process");
                        }
                        finished.remove(&k);
                    }
                }
                finished.insert(key, p);
            }
        }
        Ok(status)
    }

    /// Hands the given stdio slots of a process to pass-fd streams (see passfd.rs): from now on
    /// ReadStdout/ReadStderr/WriteStdin no longer reach those slots.
    pub fn attach_streams(
        &self,
        id: &str,
        exec_id: &str,
        streams: crate::passfd::Streams,
    ) -> Result<()> {
        if streams.is_empty() {
            return Ok(());
        }
        let p = self.find(id)?.process(exec_id)?;
        fn take_if<T>(given: bool, slot: &StdMutex<Option<T>>) -> Option<T> {
            if given {
                slot.lock().unwrap().take()
            } else {
                None
            }
        }
        let stdin = take_if(streams.stdin.is_some(), &p.stdin);
        let stdout = take_if(streams.stdout.is_some(), &p.stdout);
        // A terminal has one output, carried by the stdout stream.
        let stderr = if p.terminal {
            None
        } else {
            take_if(streams.stderr.is_some(), &p.stderr)
        };
        let exit = p.exit.clone();
        let done = crate::passfd::start_copies(streams, stdin, stdout, stderr, p.terminal, || {
            let exit = exit.clone();
            async move {
                let _ = exit.wait().await;
            }
        });
        p.streams_done.lock().unwrap().extend(done);
        Ok(())
    }

    /// ReadStdout / ReadStderr.
    pub async fn read(&self, id: &str, exec_id: &str, stderr: bool, len: u32) -> Result<Vec<u8>> {
        const MAX_READ: u32 = 4 << 20; // replies are capped at 4 MiB by the transport
        let c = self.lookup(id)?;
        let p = c.process_for_read(exec_id)?;
        let Some(reader) = (if stderr { p.stderr() } else { p.stdout() }) else {
            if p.exit.try_get().is_some() {
                // Released after the exit with nothing left in it: end of stream.
                *p.unread_ends.lock().unwrap() &= if stderr { !2 } else { !1 };
                c.forget_if_spent(&p.exec_id);
                return Ok(Vec::new());
            }
            return Err(AgentError::failed_precondition("the stream is closed"));
        };
        let len = len.min(MAX_READ - 1024) as usize;
        let exit = p.exit.clone();
        let data = reader
            .read(len, async move {
                let _ = exit.wait().await;
            })
            .await?;
        if data.is_empty() {
            // End of stream: the stream is released, and a waited-for process is forgotten once
            // both of its streams are.
            drop(reader);
            p.release_spent_streams();
            c.forget_if_spent(&p.exec_id);
        }
        Ok(data)
    }

    /// WriteStdin: writes all of `data` (empty data closes stdin). Returns the bytes written.
    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize> {
        let c = self.lookup(id)?;
        let p = c.process(exec_id)?;
        if data.is_empty() {
            p.close_stdin().await?;
            return Ok(0);
        }
        let writer = p
            .stdin()
            .ok_or_else(|| AgentError::failed_precondition("stdin of the process is closed"))?;
        writer.write_all(data).await?;
        Ok(data.len())
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let c = self.lookup(id)?;
        c.process(exec_id)?.close_stdin().await
    }

    pub async fn resize_tty(&self, id: &str, exec_id: &str, rows: u32, cols: u32) -> Result<()> {
        let c = self.lookup(id)?;
        let p = c.process(exec_id)?;
        let pty = p
            .pty()
            .ok_or_else(|| AgentError::unavailable("the process has no terminal"))?;
        io::resize_pty(&pty, rows, cols)
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.lookup(id)?.with_engine(|e| e.pause()).await
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.lookup(id)?.with_engine(|e| e.resume()).await
    }

    pub async fn update(
        &self,
        id: &str,
        resources: oci_spec::runtime::LinuxResources,
    ) -> Result<()> {
        self.lookup(id)?
            .with_engine(move |e| e.update(&resources))
            .await
    }

    pub async fn stats(&self, id: &str) -> Result<engine::cgroups::Stats> {
        self.lookup(id)?.with_engine(|e| e.stats()).await
    }

    /// RemoveContainer: kills every process, waits for them, releases everything.
    pub async fn remove(&self, id: &str, timeout: Duration) -> Result<()> {
        let c = self.find(id)?;
        c.cancel_pending_execs();
        let limit = if timeout.is_zero() {
            Duration::from_secs(60)
        } else {
            timeout
        };
        let result = c.with_engine(move |e| e.destroy(limit)).await;
        if let Err(e) = result {
            if e.code == ttrpc::Code::DEADLINE_EXCEEDED
                || !timeout.is_zero() && e.message.contains("timed out")
            {
                return Err(AgentError::deadline_exceeded(format!(
                    "container {id} was not removed within {} s: {}",
                    limit.as_secs(),
                    e.message
                )));
            }
            return Err(e);
        }
        c.processes.lock().unwrap().clear();
        c.finished.lock().unwrap().clear();
        // The watcher's descriptors are closed here; nothing is waited for.
        let oom_token = c.oom_token.lock().unwrap().take();
        if let (Some(token), Some(monitor)) =
            (oom_token, self.oom_monitor.get().and_then(|m| m.as_ref()))
        {
            monitor.unregister(token);
        }
        let none_left = {
            let mut map = self.map.lock().unwrap();
            map.remove(id);
            map.is_empty()
        };
        if none_left {
            // Nothing of the engine outlives the containers: the spare setup process goes.
            let _ = tokio::task::spawn_blocking(engine::clear_spare).await;
        }
        info!(subsystem = "container", container_id = %id, "container removed");
        Ok(())
    }

    /// Removes every container (DestroySandbox, shutdown). The first failure is returned after
    /// all containers were tried.
    pub async fn remove_all(&self) -> Result<()> {
        let mut first_err = None;
        for id in self.ids() {
            if let Err(e) = self.remove(&id, Duration::ZERO).await {
                warn!(subsystem = "container", container_id = %id, error = %e, "cannot remove container");
                first_err.get_or_insert(e);
            }
        }
        self.sandbox_pidns.lock().unwrap().take();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn pid_namespace(path: Option<PathBuf>) -> Result<LinuxNamespace> {
    let mut b = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Pid);
    if let Some(p) = path {
        b = b.path(p);
    }
    b.build()
        .map_err(|e| AgentError::internal(format!("cannot build the pid namespace entry: {e}")))
}

/// Whether the process catches, ignores or blocks SIGTERM (from /proc/<pid>/status).
fn handles_sigterm(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let bit = 1u64 << (libc::SIGTERM - 1);
    status.lines().any(|line| {
        ["SigBlk:", "SigIgn:", "SigCgt:"].iter().any(|key| {
            line.strip_prefix(key)
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .is_some_and(|mask| mask & bit != 0)
        })
    })
}
