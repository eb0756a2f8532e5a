//! What a connection is doing, as its watchdog (`super::drive`) needs to know: whether
//! a first request came, how many are in flight, and when the last one ended.
//!
//! Counted in requests, not bytes: a peer that trickles a byte now and then without
//! ever completing a request is as idle as a silent one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tonic::codegen::Service;

/// One connection's requests.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    started: AtomicBool,
    open: AtomicUsize,
    /// When the last request ended, in milliseconds after `accepted`.
    last_end_ms: AtomicU64,
    /// Signalled when the first request starts and whenever none is left in flight.
    changed: Notify,
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            accepted: Instant::now(),
            started: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    /// When the connection was accepted.
    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    /// Whether any request's headers have arrived.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// When the connection became idle, or `None` while a request is in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.last_end_ms.load(Ordering::Acquire);
        Some(self.accepted + Duration::from_millis(ms))
    }

    /// Completes when the first request starts or the last in flight ends (or did so
    /// since the previous call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.open.fetch_add(1, Ordering::AcqRel);
        if !self.started.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
        InFlight(self.clone())
    }
}

/// A request in flight; its end is recorded on drop (answered, failed or cancelled).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.last_end_ms.fetch_max(ms, Ordering::AcqRel);
        if a.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.changed.notify_one();
        }
    }
}

/// A service that reports its requests to a connection's [`Activity`].
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    /// `inner`, reporting to `activity`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S, R> Service<R> for Tracked<S>
where
    S: Service<R>,
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        TrackedFuture {
            in_flight: self.activity.begin(),
            inner: self.inner.call(req),
        }
    }
}

/// A request's answer, counted in flight until it is dropped.
pub struct TrackedFuture<F> {
    inner: F,
    #[allow(dead_code)] // held for its Drop
    in_flight: InFlight,
}

impl<F: Future + Unpin> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_with_no_request_in_flight() {
        let a = Activity::new();
        assert!(!a.started());
        assert_eq!(a.idle_since(), Some(a.accepted()));
        let one = a.begin();
        let two = a.begin();
        assert!(a.started());
        assert_eq!(a.idle_since(), None);
        drop(one);
        assert_eq!(a.idle_since(), None);
        std::thread::sleep(Duration::from_millis(5));
        drop(two);
        let since = a.idle_since().unwrap();
        assert!(since >= a.accepted() + Duration::from_millis(5));
    }
}
