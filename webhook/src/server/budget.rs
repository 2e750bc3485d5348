//! The body budget: a bound on the request-body bytes held in memory across all connections.
//!
//! Every byte of a body buffer is paid for here before it is allocated, so whatever clients
//! send, bodies never hold more than the budget. A hostile client can fill the budget with
//! bodies it never finishes; a budget that simply ran out would then refuse the API server's
//! next review. So when a body cannot grow, the bodies that have been arriving the longest are
//! cut to make room for it ([`Shed::Evicted`]): the API server sends a whole review at once and
//! is done in milliseconds, while a body held open for a second is either hostile or hopeless.
//! Only a request that finds nothing older to cut waits, until its read deadline, for bytes to
//! be released ([`Shed::Overloaded`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a body could not be read into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// Cut to make room for a newer request.
    Evicted,
    /// No room before the deadline.
    Overloaded,
}

/// Bytes of request bodies in memory, shared by all connections.
pub(crate) struct BodyBudget {
    limit: usize,
    inner: Mutex<Inner>,
    released: Notify,
    gauge: Gauge,
}

#[derive(Default)]
struct Inner {
    used: usize,
    /// Bytes held by evicted readers that have not dropped their buffers yet.
    evicting: usize,
    next_id: u64,
    /// Readers still receiving their body, oldest first (ids grow with time).
    readers: BTreeMap<u64, Reader>,
}

struct Reader {
    held: usize,
    cut: Arc<Cut>,
}

#[derive(Default)]
struct Cut {
    flag: AtomicBool,
    notify: Notify,
}

impl BodyBudget {
    /// A budget of `limit` bytes; `gauge` follows the bytes in use.
    pub(crate) fn new(limit: usize, gauge: Gauge) -> Self {
        BodyBudget {
            limit,
            inner: Mutex::new(Inner::default()),
            released: Notify::new(),
            gauge,
        }
    }

    /// Bytes currently held by bodies.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.lock().used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a body about to be read.
    pub(crate) fn lease(self: &Arc<Self>) -> BodyLease {
        let cut = Arc::new(Cut::default());
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.readers.insert(
            id,
            Reader {
                held: 0,
                cut: cut.clone(),
            },
        );
        BodyLease {
            budget: self.clone(),
            id,
            held: 0,
            cut,
        }
    }
}

/// One body's share of the budget; released when dropped.
pub(crate) struct BodyLease {
    budget: Arc<BodyBudget>,
    id: u64,
    held: usize,
    cut: Arc<Cut>,
}

impl BodyLease {
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held
    }

    /// Adds `bytes` to this body's share, cutting older bodies or waiting until `deadline` when
    /// the budget is spent.
    pub(crate) async fn grow(&mut self, bytes: usize, deadline: Instant) -> Result<(), Shed> {
        let budget = self.budget.clone();
        loop {
            let released = budget.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            {
                let mut inner = budget.lock();
                if self.cut.flag.load(Ordering::Acquire) {
                    return Err(Shed::Evicted);
                }
                if inner.used + bytes <= budget.limit {
                    inner.used += bytes;
                    budget.gauge.set(inner.used as i64);
                    self.held += bytes;
                    if let Some(r) = inner.readers.get_mut(&self.id) {
                        r.held = self.held;
                    }
                    return Ok(());
                }
                let needed = inner.used + bytes - budget.limit;
                evict_older(&mut inner, self.id, needed);
            }
            tokio::select! {
                _ = released => {}
                _ = self.cut.notify.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(Shed::Overloaded),
            }
        }
    }

    /// Resolves when a newer request has cut this body.
    pub(crate) async fn evicted(&self) {
        loop {
            let notified = self.cut.notify.notified();
            if self.cut.flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The body is complete: its bytes stay paid for until the lease is dropped, but it can no
    /// longer be cut.
    pub(crate) fn received(&mut self) {
        self.budget.lock().readers.remove(&self.id);
    }
}

/// Marks the oldest readers older than `requester` as cut until `needed` bytes are on their way
/// back. Readers holding nothing are left alone: cutting them frees nothing.
fn evict_older(inner: &mut Inner, requester: u64, needed: usize) {
    if inner.evicting >= needed {
        return;
    }
    let mut freed = inner.evicting;
    let victims: Vec<u64> = inner
        .readers
        .range(..requester)
        .filter(|(_, r)| r.held > 0)
        .take_while(|(_, r)| {
            let take = freed < needed;
            freed += r.held;
            take
        })
        .map(|(&id, _)| id)
        .collect();
    for id in victims {
        let reader = inner.readers.remove(&id).expect("victim just found");
        // A cut reader cannot grow any more, so what it holds now is what it will release.
        inner.evicting += reader.held;
        reader.cut.flag.store(true, Ordering::Release);
        reader.cut.notify.notify_one();
    }
}

impl Drop for BodyLease {
    fn drop(&mut self) {
        let mut inner = self.budget.lock();
        inner.used -= self.held;
        self.budget.gauge.set(inner.used as i64);
        inner.readers.remove(&self.id);
        if self.cut.flag.load(Ordering::Acquire) {
            inner.evicting -= self.held;
        }
        drop(inner);
        if self.held > 0 {
            self.budget.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(200)
    }

    #[tokio::test]
    async fn bytes_are_paid_for_and_returned() {
        let budget = Arc::new(BodyBudget::new(100, Gauge::default()));
        let mut a = budget.lease();
        a.grow(60, soon()).await.unwrap();
        assert_eq!(budget.used(), 60);
        a.received();
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_newer_body_cuts_the_oldest_unfinished_one() {
        let budget = Arc::new(BodyBudget::new(100, Gauge::default()));
        let mut old = budget.lease();
        old.grow(50, soon()).await.unwrap();
        let mut older_but_done = budget.lease();
        older_but_done.grow(40, soon()).await.unwrap();
        older_but_done.received();
        let mut new = budget.lease();
        let victim = tokio::spawn(async move {
            old.evicted().await;
            drop(old);
        });
        new.grow(30, soon()).await.unwrap();
        victim.await.unwrap();
        assert_eq!(budget.used(), 70);
        // A completed body is never cut: with only it left, a request has to wait.
        let mut newest = budget.lease();
        assert_eq!(newest.grow(50, soon()).await, Err(Shed::Overloaded));
        drop(new);
        newest.grow(50, soon()).await.unwrap();
        assert_eq!(budget.used(), 90);
    }

    #[tokio::test]
    async fn an_older_body_never_cuts_a_newer_one() {
        let budget = Arc::new(BodyBudget::new(100, Gauge::default()));
        let mut old = budget.lease();
        let mut new = budget.lease();
        new.grow(90, soon()).await.unwrap();
        assert_eq!(old.grow(20, soon()).await, Err(Shed::Overloaded));
        assert_eq!(budget.used(), 90);
        drop(new);
        old.grow(20, soon()).await.unwrap();
    }

    #[tokio::test]
    async fn a_cut_body_learns_it_while_growing() {
        let budget = Arc::new(BodyBudget::new(100, Gauge::default()));
        let mut old = budget.lease();
        old.grow(80, soon()).await.unwrap();
        let mut new = budget.lease();
        let newer = tokio::spawn(async move {
            new.grow(60, soon()).await.unwrap();
            new
        });
        tokio::task::yield_now().await;
        assert_eq!(old.grow(1, soon()).await, Err(Shed::Evicted));
        drop(old);
        let new = newer.await.unwrap();
        assert_eq!(new.held(), 60);
        assert_eq!(budget.used(), 60);
    }
}
