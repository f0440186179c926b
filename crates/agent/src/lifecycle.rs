//! Creations in flight: how a CreateContainer that its client abandons (timeout_nano, closed
//! connection) is rolled back instead of being left half-made.
//!
//! A creation reserves its container id first ([`Creations::reserve`]), before anything else is
//! awaited; the reservation lives in the task that does the work and is dropped when that task
//! ends, after everything it made was either registered or rolled back. The request that started
//! the creation only awaits the task. If the request goes away first, it [abandons](Reservation::abandon)
//! the creation: the engine set-up is cancelled (its processes and hooks are killed), and the task
//! rolls back instead of registering; a creation that had already registered its container is
//! reported as such, so that the caller removes it again. A new creation of the same id waits for
//! an abandoned one to finish its rollback, so the id can be used again at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::watch;

use crate::error::{AgentError, Result};

/// Where a creation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Work in progress.
    Running,
    /// The request went away: roll back instead of registering.
    Abandoned,
    /// The container is in the registry.
    Registered,
}

struct Creation {
    stage: StdMutex<Stage>,
    cancel: engine::Cancel,
    /// Becomes true once the creation's task has ended (registered or rolled back).
    done: watch::Sender<bool>,
}

/// The ids being created right now.
#[derive(Default)]
pub struct Creations {
    map: Arc<StdMutex<HashMap<String, Arc<Creation>>>>,
}

/// What [`Reservation::abandon`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// The creation will roll back by itself.
    RollingBack,
    /// The container had been registered already: the caller must remove it.
    WasRegistered,
}

/// One creation's hold on its id. Dropped when the creation's work has ended.
pub struct Reservation {
    id: String,
    creation: Arc<Creation>,
    map: Arc<StdMutex<HashMap<String, Arc<Creation>>>>,
}

/// A handle that lets the request abandon the creation (cheap to clone, does not hold the id).
#[derive(Clone)]
pub struct AbandonHandle {
    creation: Arc<Creation>,
}

impl Creations {
    /// Reserves `id`. `registered` tells whether the id is in the registry already; it is
    /// called with the reservation table locked, so a reservation and a registration never
    /// overlap. A creation of the same id that its client abandoned is waited for (its rollback
    /// is under way); one still running makes this ALREADY_EXISTS.
    pub async fn reserve(&self, id: &str, registered: impl Fn() -> bool) -> Result<Reservation> {
        loop {
            let waiter = {
                let mut map = self.map.lock().unwrap();
                if registered() {
                    return Err(AgentError::already_exists(format!(
                        "container {id} already exists"
                    )));
                }
                match map.get(id) {
                    None => {
                        let creation = Arc::new(Creation {
                            stage: StdMutex::new(Stage::Running),
                            cancel: engine::Cancel::new(),
                            done: watch::Sender::new(false),
                        });
                        map.insert(id.to_string(), creation.clone());
                        return Ok(Reservation {
                            id: id.to_string(),
                            creation,
                            map: self.map.clone(),
                        });
                    }
                    Some(c) if *c.stage.lock().unwrap() == Stage::Abandoned => c.done.subscribe(),
                    Some(_) => {
                        return Err(AgentError::already_exists(format!(
                            "container {id} is being created"
                        )))
                    }
                }
            };
            let mut waiter = waiter;
            // Ends when the abandoned creation's task drops its reservation.
            let _ = waiter.wait_for(|done| *done).await;
        }
    }
}

impl Reservation {
    /// The engine cancellation handle of this creation.
    pub fn cancel(&self) -> &engine::Cancel {
        &self.creation.cancel
    }

    /// A handle for the request side.
    pub fn abandon_handle(&self) -> AbandonHandle {
        AbandonHandle {
            creation: self.creation.clone(),
        }
    }

    /// Whether the request went away.
    pub fn is_abandoned(&self) -> bool {
        *self.creation.stage.lock().unwrap() == Stage::Abandoned
    }

    /// Runs `register` unless the creation was abandoned; both decisions are atomic with
    /// respect to [`AbandonHandle::abandon`]. Returns false when abandoned (nothing registered).
    pub fn register(&self, register: impl FnOnce()) -> bool {
        let mut stage = self.creation.stage.lock().unwrap();
        if *stage == Stage::Abandoned {
            return false;
        }
        register();
        *stage = Stage::Registered;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap();
        if map
            .get(&self.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.creation))
        {
            map.remove(&self.id);
        }
        drop(map);
        self.creation.done.send_replace(true);
    }
}

impl AbandonHandle {
    /// Abandons the creation: cancels the engine set-up and tells the task to roll back.
    pub fn abandon(&self) -> Abandoned {
        let outcome = {
            let mut stage = self.creation.stage.lock().unwrap();
            match *stage {
                Stage::Registered => Abandoned::WasRegistered,
                _ => {
                    *stage = Stage::Abandoned;
                    Abandoned::RollingBack
                }
            }
        };
        if outcome == Abandoned::RollingBack {
            self.creation.cancel.cancel();
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicate_waits_only_for_abandoned_creations() {
        let c = Creations::default();
        let r = c.reserve("a", || false).await.unwrap();
        let dup = c.reserve("a", || false).await.err().unwrap();
        assert_eq!(dup.code, ttrpc::Code::ALREADY_EXISTS);
        assert!(c.reserve("b", || true).await.is_err());

        let h = r.abandon_handle();
        assert_eq!(h.abandon(), Abandoned::RollingBack);
        assert!(r.cancel().is_cancelled());
        assert!(!r.register(|| panic!("an abandoned creation must not register")));
        // The next creation of "a" waits until the abandoned one has ended.
        let c = Arc::new(c);
        let c2 = c.clone();
        let next = tokio::spawn(async move { c2.reserve("a", || false).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        drop(r);
        next.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn abandoning_a_registered_creation_says_so() {
        let c = Creations::default();
        let r = c.reserve("x", || false).await.unwrap();
        let mut registered = false;
        assert!(r.register(|| registered = true));
        assert!(registered);
        assert_eq!(r.abandon_handle().abandon(), Abandoned::WasRegistered);
        assert!(!r.cancel().is_cancelled());
    }
}
