//! Cancelling a container set-up from another thread.
//!
//! Creating a container or an exec blocks a thread on the setup process and on hooks. A caller
//! that gives up (its request timed out, its client went away, the container is being removed)
//! calls [`Cancel::cancel`]: every process the set-up started and still tracks is SIGKILLed, which
//! ends whatever the set-up thread waits for, and the set-up then rolls back and fails with a
//! "cancelled" error. Processes tracked after the cancellation are killed at once.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::reaper::{self, ExitWatch};

#[derive(Default)]
struct State {
    cancelled: bool,
    pids: Vec<ExitWatch>,
}

/// A cancellation handle shared by a set-up and whoever may abandon it. Cheap to clone.
#[derive(Clone, Default)]
pub struct Cancel(Arc<Mutex<State>>);

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// SIGKILLs a tracked process unless it was reaped already. The reaper is held off meanwhile, so
/// an unreaped pid cannot have been reused by another process.
fn kill_tracked(watch: &ExitWatch) {
    let _g = reaper::guard();
    if watch.try_get().is_none() {
        // SAFETY: kill with integer arguments, on a child that has not been reaped.
        unsafe { libc::kill(watch.pid(), libc::SIGKILL) };
    }
}

impl Cancel {
    /// A fresh, not cancelled handle.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Abandons the set-up: kills every process it tracks now or later. Idempotent.
    pub fn cancel(&self) {
        let pids = {
            let mut s = self.state();
            s.cancelled = true;
            std::mem::take(&mut s.pids)
        };
        for w in &pids {
            kill_tracked(w);
        }
    }

    /// Whether [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.state().cancelled
    }

    /// Tracks a process of the set-up. Returns false (and kills it) when already cancelled.
    pub(crate) fn track(&self, watch: &ExitWatch) -> bool {
        let mut s = self.state();
        if s.cancelled {
            drop(s);
            kill_tracked(watch);
            return false;
        }
        // Forget processes that are gone so that the list stays short.
        s.pids.retain(|w| w.try_get().is_none());
        s.pids.push(watch.clone());
        true
    }

    /// Stops tracking a process (it exited, or it now belongs to someone else).
    pub(crate) fn untrack(&self, pid: i32) {
        self.state().pids.retain(|w| w.pid() != pid);
    }

    /// The error of a cancelled set-up.
    pub(crate) fn error(&self) -> crate::Error {
        crate::Error::Cancelled("the set-up was cancelled".into())
    }

    /// `Err(cancelled)` once cancelled.
    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(self.error())
        } else {
            Ok(())
        }
    }
}
