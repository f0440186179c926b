//! ExecProcess: the set-up runs in its own task without the container's engine lock, and a
//! request that goes away (or a removal of the container) cancels it without leaving anything.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};

use oci_spec::runtime::Process;

use super::{ContainerEntry, Containers, ProcessEntry, ROLLBACK_WAIT};
use crate::error::{AgentError, Result};
use crate::io;

impl ContainerEntry {
    /// Reserves `exec_id` for an exec being set up (ALREADY_EXISTS if taken).
    fn reserve_exec(&self, exec_id: &str, cancel: &engine::Cancel) -> Result<()> {
        let procs = self.processes.lock().unwrap();
        let mut finished = self.finished.lock().unwrap();
        let mut pending = self.pending_execs.lock().unwrap();
        if self.closing.load(Ordering::SeqCst) {
            return Err(AgentError::not_found(format!(
                "container {} is being removed",
                self.id
            )));
        }
        // A waited-for process that holds no output any more (only a pending end of stream)
        // gives its id up to a new exec.
        if finished.get(exec_id).is_some_and(|p| !p.holds_streams()) {
            finished.remove(exec_id);
        }
        if procs.contains_key(exec_id)
            || finished.contains_key(exec_id)
            || pending.contains_key(exec_id)
        {
            return Err(AgentError::already_exists(format!(
                "exec_id {exec_id} already exists in container {}",
                self.id
            )));
        }
        pending.insert(exec_id.to_string(), cancel.clone());
        Ok(())
    }

    /// Starts removal: no exec may start any more, and every exec being set up is cancelled
    /// (its set-up processes are killed and it fails).
    pub fn cancel_pending_execs(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let pending: Vec<engine::Cancel> = {
            let p = self.pending_execs.lock().unwrap();
            p.values().cloned().collect()
        };
        for c in pending {
            c.cancel();
        }
    }
}

impl Containers {
    /// ExecProcess: starts `process` in the container's namespaces and cgroup.
    ///
    /// The container's lock is held only to take what the set-up needs; the set-up itself (which
    /// may block, e.g. on the image's files) runs in its own task without any lock, so signals,
    /// waits, stats and removal of the container are never held up by it. If the request goes
    /// away, or the container is removed, the set-up is cancelled and leaves nothing behind.
    pub async fn exec(
        &self,
        pipe_size: i32,
        id: &str,
        exec_id: &str,
        process: Process,
    ) -> Result<()> {
        let c = self.find(id)?;
        if exec_id.is_empty() {
            return Err(AgentError::invalid_argument("exec_id must not be empty"));
        }
        let cancel = engine::Cancel::new();
        c.reserve_exec(exec_id, &cancel)?;
        let slot: RegisteredSlot = Arc::new(StdMutex::new(None));
        let mut abandon = AbandonExec {
            c: c.clone(),
            exec_id: exec_id.to_string(),
            cancel: Some(cancel.clone()),
            slot: slot.clone(),
        };
        let exec_id = exec_id.to_string();
        let task = tokio::spawn(async move {
            let result = exec_task(&c, &exec_id, process, pipe_size, &cancel, &slot).await;
            c.pending_execs.lock().unwrap().remove(&exec_id);
            result
        });
        let result = task
            .await
            .map_err(|e| AgentError::internal(format!("exec task failed: {e}")))?;
        abandon.cancel = None;
        result
    }
}

/// The process an exec task registered (for its request to take back if it went away).
type RegisteredSlot = Arc<StdMutex<Option<Arc<ProcessEntry>>>>;

/// Held by an ExecProcess request while its task works: if the request is dropped first, the
/// set-up is cancelled, and a process the task registered meanwhile is killed and forgotten.
struct AbandonExec {
    c: Arc<ContainerEntry>,
    exec_id: String,
    cancel: Option<engine::Cancel>,
    slot: RegisteredSlot,
}

impl Drop for AbandonExec {
    fn drop(&mut self) {
        let Some(cancel) = self.cancel.take() else {
            return;
        };
        // Under the process table's lock, like the registration: either the task sees the
        // cancellation, or the registered process is found here.
        let mut procs = self.c.processes.lock().unwrap();
        cancel.cancel();
        let Some(p) = self.slot.lock().unwrap().take() else {
            return;
        };
        if procs.get(&self.exec_id).is_some_and(|q| Arc::ptr_eq(q, &p)) {
            procs.remove(&self.exec_id);
        }
        drop(procs);
        kill_unreaped(&p.exit);
    }
}

/// SIGKILLs a process we started unless it has been reaped (its pid could be reused then).
fn kill_unreaped(exit: &engine::ExitWatch) {
    let _g = engine::reaper::guard();
    if exit.try_get().is_none() {
        // SAFETY: kill(2) on an unreaped child of ours.
        unsafe { libc::kill(exit.pid(), libc::SIGKILL) };
    }
}

/// The work of an ExecProcess, in its own task.
async fn exec_task(
    c: &Arc<ContainerEntry>,
    exec_id: &str,
    process: Process,
    pipe_size: i32,
    cancel: &engine::Cancel,
    slot: &RegisteredSlot,
) -> Result<()> {
    let cancelled = || AgentError::cancelled(format!("the exec {exec_id} was cancelled"));
    let terminal = process.terminal().unwrap_or(false);
    let (parent, child) = io::create_stdio(terminal, pipe_size)?;
    let stdio = engine::Stdio {
        stdin: child.stdin,
        stdout: child.stdout,
        stderr: child.stderr,
    };
    let plan = c.with_engine(move |e| e.prepare_exec(&process)).await?;
    let setup_cancel = cancel.clone();
    let (pid, exit, console) =
        tokio::task::spawn_blocking(move || plan.spawn(stdio, &setup_cancel))
            .await
            .map_err(|e| AgentError::internal(format!("exec set-up task failed: {e}")))?
            .map_err(|e| match e {
                engine::Error::Cancelled(_) => cancelled(),
                e => AgentError::from(e),
            })?;
    // A terminal process: the pty master its setup opened inside the container.
    let parent = match io::attach_console(parent, console) {
        Ok(p) => p,
        Err(e) => {
            kill_unreaped(&exit);
            let _ = tokio::time::timeout(ROLLBACK_WAIT, exit.wait()).await;
            return Err(e);
        }
    };
    let entry = Arc::new(ProcessEntry::new(
        exec_id.to_string(),
        pid,
        false,
        terminal,
        exit.clone(),
        parent,
    ));
    let registered = {
        let mut procs = c.processes.lock().unwrap();
        let mut pending = c.pending_execs.lock().unwrap();
        pending.remove(exec_id);
        if cancel.is_cancelled() || c.closing.load(Ordering::SeqCst) {
            false
        } else {
            procs.insert(exec_id.to_string(), entry.clone());
            *slot.lock().unwrap() = Some(entry.clone());
            true
        }
    };
    if !registered {
        kill_unreaped(&exit);
        let _ = tokio::time::timeout(ROLLBACK_WAIT, exit.wait()).await;
        return Err(cancelled());
    }
    entry.watch_exit();
    Ok(())
}
