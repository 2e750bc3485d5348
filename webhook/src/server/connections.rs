//! What each admission-port connection is doing, and the cap on how many there are.
//!
//! [`ConnState`] is shared by a connection's IO wrapper (which sees request bytes arrive), its
//! service (which sees requests start and finish) and its watchdog (which closes it when a
//! deadline passes). From that it knows, without a timer per read, which deadline applies now:
//! the head of a request in progress must arrive within the header timeout, a connection with
//! no request must not stay idle past the idle timeout.
//!
//! [`ConnectionLimiter`] caps connections in total and per source IP. At the total cap the
//! longest-idle connection is closed to make room, so clients that merely hold connections open
//! cannot lock out the API server, whose requests arrive on fresh or busy connections; only
//! when no connection is idle is a new one refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Activity of one connection.
pub(crate) struct ConnState {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// When the head of the next request started to arrive (ns since `epoch`, plus one); 0
    /// when no request is on its way.
    head_started: AtomicU64,
    /// When the last request finished (ns since `epoch`).
    idle_since: AtomicU64,
    /// Re-arms the watchdog when a deadline moves closer.
    pub wake: Notify,
    evicted: AtomicBool,
}

/// What the watchdog does when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A request is in flight: its own read deadline applies, the connection has none.
    None,
    /// The head of a request did not arrive in time: close at once.
    HeadTimeout,
    /// No request for the idle timeout: close gracefully.
    Idle,
    /// Closed to make room for another connection: close gracefully.
    Evicted,
}

impl ConnState {
    /// A connection just accepted: its first request's head is due within the header timeout.
    pub(crate) fn new() -> Self {
        ConnState {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
            wake: Notify::new(),
            evicted: AtomicBool::new(false),
        }
    }

    fn since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Request bytes arrived (HTTP/1.1 only: there the head of a request is the first thing
    /// read after the previous response). Starts the header deadline of the next request.
    pub(crate) fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
            && self
                .head_started
                .compare_exchange(
                    0,
                    self.since_epoch() + 1,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// A request's head is complete; returns when the request started to arrive.
    pub(crate) fn begin_request(&self) -> Instant {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        match self.head_started.swap(0, Ordering::AcqRel) {
            0 => Instant::now(),
            n => self.at(n - 1),
        }
    }

    pub(crate) fn end_request(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.since_epoch(), Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// No request in flight and none arriving.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
    }

    fn idle_since(&self) -> Instant {
        self.at(self.idle_since.load(Ordering::Acquire))
    }

    pub(crate) fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The next deadline of this connection and what happens then.
    pub(crate) fn deadline(
        &self,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> (Instant, Expiry) {
        if self.evicted.load(Ordering::Acquire) {
            return (Instant::now(), Expiry::Evicted);
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return (far_future(), Expiry::None);
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => (self.idle_since() + idle_timeout, Expiry::Idle),
            n => (self.at(n - 1) + header_timeout, Expiry::HeadTimeout),
        }
    }
}

impl Default for ConnState {
    fn default() -> Self {
        Self::new()
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `--max-connections` reached and no connection idle.
    Limit,
    /// `--max-connections-per-client` reached for this source IP.
    ClientLimit,
}

impl Refused {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refused::Limit => "limit",
            Refused::ClientLimit => "client_limit",
        }
    }
}

pub(crate) struct ConnectionLimiter {
    max_total: usize,
    max_per_client: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, (IpAddr, Arc<ConnState>)>,
    per_client: HashMap<IpAddr, usize>,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Arc<ConnState>> {
        let (ip, state) = self.open.remove(&id)?;
        if let Some(n) = self.per_client.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&ip);
            }
        }
        Some(state)
    }
}

impl ConnectionLimiter {
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> Self {
        ConnectionLimiter {
            max_total: max_total.max(1),
            max_per_client: max_per_client.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections.
    pub(crate) fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Takes a new connection from `ip`, closing the longest-idle connection if the total cap
    /// is reached. Returns the permit and whether a connection was evicted for it.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        state: Arc<ConnState>,
    ) -> Result<(ConnPermit, bool), Refused> {
        let ip = ip.to_canonical();
        let mut inner = self.lock();
        if inner.per_client.get(&ip).copied().unwrap_or(0) >= self.max_per_client {
            return Err(Refused::ClientLimit);
        }
        let mut evicted = false;
        if inner.open.len() >= self.max_total {
            let victim = inner
                .open
                .iter()
                .filter(|(_, (_, s))| s.is_idle())
                .min_by_key(|(_, (_, s))| s.idle_since())
                .map(|(&id, _)| id)
                .ok_or(Refused::Limit)?;
            // Counted as gone now: it closes within moments, and holds nothing but its socket.
            if let Some(s) = inner.remove(victim) {
                s.evict();
            }
            evicted = true;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, (ip, state));
        *inner.per_client.entry(ip).or_default() += 1;
        Ok((
            ConnPermit {
                limiter: self.clone(),
                id,
            },
            evicted,
        ))
    }
}

/// A connection's place under the caps; freed when dropped.
pub(crate) struct ConnPermit {
    limiter: Arc<ConnectionLimiter>,
    id: u64,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.limiter.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn idle() -> Arc<ConnState> {
        let s = Arc::new(ConnState::new());
        s.begin_request();
        s.end_request();
        s
    }

    #[tokio::test]
    async fn per_client_and_total_caps() {
        let limiter = Arc::new(ConnectionLimiter::new(3, 2));
        let busy = || {
            let s = Arc::new(ConnState::new());
            s.begin_request();
            s
        };
        let a1 = limiter.admit(ip(1), busy()).unwrap();
        let _a2 = limiter.admit(ip(1), busy()).unwrap();
        assert_eq!(
            limiter.admit(ip(1), busy()).err(),
            Some(Refused::ClientLimit)
        );
        let _b1 = limiter.admit(ip(2), busy()).unwrap();
        assert_eq!(limiter.admit(ip(3), busy()).err(), Some(Refused::Limit));
        drop(a1);
        assert_eq!(limiter.open(), 2);
        let (_c1, evicted) = limiter.admit(ip(3), busy()).unwrap();
        assert!(!evicted);
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let limiter = Arc::new(ConnectionLimiter::new(2, 2));
        let oldest = idle();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let newer = idle();
        let _p1 = limiter.admit(ip(1), oldest.clone()).unwrap();
        let _p2 = limiter.admit(ip(2), newer.clone()).unwrap();
        // A connection whose first request is still on its way is not idle.
        let (_p3, evicted) = limiter.admit(ip(3), Arc::new(ConnState::new())).unwrap();
        assert!(evicted);
        assert_eq!(
            oldest.deadline(Duration::ZERO, Duration::ZERO).1,
            Expiry::Evicted
        );
        assert_eq!(
            newer.deadline(Duration::ZERO, Duration::ZERO).1,
            Expiry::Idle
        );
        let (_p4, evicted) = limiter.admit(ip(4), Arc::new(ConnState::new())).unwrap();
        assert!(evicted, "the newer idle connection goes next");
        assert_eq!(
            limiter.admit(ip(5), idle()).err(),
            Some(Refused::Limit),
            "the remaining connections are busy or just opened"
        );
    }

    #[tokio::test]
    async fn deadlines_follow_the_connection() {
        let hdr = Duration::from_secs(1);
        let idle_t = Duration::from_secs(60);
        let s = ConnState::new();
        let (d, e) = s.deadline(hdr, idle_t);
        assert_eq!(
            e,
            Expiry::HeadTimeout,
            "a new connection must start a request"
        );
        assert!(d <= Instant::now() + hdr);
        let started = s.begin_request();
        assert!(started <= Instant::now());
        assert_eq!(s.deadline(hdr, idle_t).1, Expiry::None);
        s.bytes_read(); // body bytes of the request in flight start nothing
        s.end_request();
        assert_eq!(s.deadline(hdr, idle_t).1, Expiry::Idle);
        s.bytes_read();
        assert_eq!(s.deadline(hdr, idle_t).1, Expiry::HeadTimeout);
    }
}
