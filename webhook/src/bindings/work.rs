//! The status work queue: which binding groups need their status computed, handed to the
//! status controller's workers.
//!
//! Work is per change, not per pass: the cache marks the group a watch event touched, and a
//! relist or a new leader asks for a full pass, walked with a cursor over the store. A group is
//! never handed to a second worker while one holds it (both would write the same status before
//! either recorded it); a change that reaches it meanwhile makes it due again once the first
//! worker is done.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::store::{Group, Pass, Store};

/// The watch whose relist is in progress (see [`WorkQueue::relisting`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    Bindings,
    Accounts,
}

/// Groups a change touched, and a full pass in progress.
#[derive(Default)]
struct Work {
    groups: HashSet<Group>,
    pass: Option<Pass>,
    /// Groups a worker is computing or writing, and those of them due again once it is done.
    in_flight: HashSet<Group>,
    again: HashSet<Group>,
    relisting: bool,
    accounts_relisting: bool,
}

/// The queue, shared by the cache (which marks work) and the status workers (which take it).
#[derive(Default)]
pub(crate) struct WorkQueue {
    work: Mutex<Work>,
    /// Woken (all waiters) when there is work: a change, a done group due again, a full pass.
    changed: Notify,
}

impl WorkQueue {
    fn work(&self) -> MutexGuard<'_, Work> {
        self.work.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves at the next [`Notify::notify_waiters`]; `enable` it before checking for work,
    /// so a wake-up between the check and the wait is not lost.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Up to `limit` groups whose status may have changed: those a change touched first, then
    /// the next part of a full pass over `store`. Empty when there is nothing to do. The caller
    /// owns them until it calls [`WorkQueue::done`].
    pub(crate) fn take(&self, store: &Store, limit: usize) -> Vec<Group> {
        let mut work = self.work();
        let Work {
            groups,
            pass,
            in_flight,
            again,
            ..
        } = &mut *work;
        let mut take = Vec::new();
        let mut offer = |g: Group, take: &mut Vec<Group>| {
            if in_flight.contains(&g) {
                again.insert(g);
            } else {
                take.push(g);
            }
        };
        // One walk of the set per call, not one per group taken: after a burst of 100k
        // changes each walk starts past the slots already emptied.
        let first: Vec<Group> = groups.iter().take(limit).cloned().collect();
        for g in first {
            groups.remove(&g);
            offer(g, &mut take);
        }
        // A chunk of the pass may be all in flight: go on to the next, or the pass would
        // stall until the next change.
        while take.is_empty() {
            let Some(p) = pass.as_mut() else { break };
            match store.pass_chunk(p, limit) {
                Some(chunk) => chunk.into_iter().for_each(|g| offer(g, &mut take)),
                None => *pass = None,
            }
        }
        in_flight.extend(take.iter().cloned());
        take
    }

    /// A worker is finished with these groups (from [`WorkQueue::take`]); those that changed
    /// meanwhile are due again.
    pub(crate) fn done(&self, finished: &[Group]) {
        let mut work = self.work();
        let mut due = false;
        for g in finished {
            work.in_flight.remove(g);
            if work.again.remove(g) {
                work.groups.insert(g.clone());
                due = true;
            }
        }
        drop(work);
        if due {
            self.changed.notify_waiters();
        }
    }

    /// Every group gets a status check (a new leader, a relist).
    pub(crate) fn request_full_pass(&self) {
        self.work().pass = Some(Pass::Start);
        self.changed.notify_waiters();
    }

    /// Forgets all pending work (a replica that does not lead).
    pub(crate) fn clear(&self) {
        let mut work = self.work();
        work.groups.clear();
        work.again.clear();
        work.pass = None;
    }

    /// Marks groups for a status check.
    pub(crate) fn mark(&self, groups: Vec<Group>) {
        if groups.is_empty() {
            return;
        }
        let mut work = self.work();
        // A relist ends with a full pass: marking every group it re-reads would only hold
        // them all in memory until then.
        if work.relisting || work.accounts_relisting {
            return;
        }
        work.groups.extend(groups);
        drop(work);
        self.changed.notify_waiters();
    }

    /// A relist of `feed` starts (`true`) or ends (`false`); marks are dropped meanwhile.
    pub(crate) fn relisting(&self, feed: Feed, now: bool) {
        let mut work = self.work();
        match feed {
            Feed::Bindings => work.relisting = now,
            Feed::Accounts => work.accounts_relisting = now,
        }
    }
}
