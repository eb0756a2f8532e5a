//! Write coalescing for the gRPC connection.
//!
//! h2 flushes its frames at the end of every poll of the connection, and the
//! connection is polled once per finished check: at load, each answer became its own
//! `writev` (two syscalls per check, a third of the server's CPU time in the kernel).
//! [`Coalescing`] takes h2's frames into a buffer and, on the first flush of a batch,
//! yields to the scheduler once, so the other checks that are ready finish and add
//! their answers first. One `writev` then carries all of them. An idle server pays one
//! scheduler pass per answer (microseconds), never a timer.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Above this many buffered bytes a write goes out at once, without waiting for a
/// flush, so one busy connection cannot grow the buffer without bound.
const HIGH_WATER: usize = 64 * 1024;

type Yield = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An IO stream whose writes are gathered until a flush that has let the other ready
/// tasks run first.
pub struct Coalescing<S> {
    inner: S,
    buf: Vec<u8>,
    /// Written bytes at the front of `buf` (a partial write).
    sent: usize,
    /// The pending yield of the current flush, if it has started one.
    yielding: Option<Yield>,
}

impl<S> Coalescing<S> {
    /// Wraps a connection.
    pub fn new(inner: S) -> Self {
        Coalescing {
            inner,
            buf: Vec::with_capacity(8 * 1024),
            sent: 0,
            yielding: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalescing<S> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_append(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_append(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_append(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        // Yield once per batch: the checks that are ready run before this task
        // comes back, and h2 adds their frames to the buffer on its next poll.
        let pending = this
            .yielding
            .get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
        ready!(pending.as_mut().poll(cx));
        this.yielding = None;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: Connected> Connected for Coalescing<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncWriteExt;

    /// Records each write that reaches the "socket".
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            // At most 1000 bytes per call, like a socket with a small send buffer.
            let n = buf.len().min(1000);
            self.0.lock().unwrap().push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn writes_before_a_flush_leave_together_and_in_order() {
        let rec = Recorder::default();
        let mut io = Coalescing::new(rec.clone());
        io.write_all(b"one,").await.unwrap();
        io.write_all(b"two,").await.unwrap();
        io.write_all(b"three").await.unwrap();
        assert!(rec.writes().is_empty(), "nothing leaves before a flush");
        io.flush().await.unwrap();
        assert_eq!(rec.writes(), vec![b"one,two,three".to_vec()]);
        io.write_all(b"four").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(rec.writes().len(), 2);
        assert_eq!(rec.writes()[1], b"four");
    }

    #[tokio::test]
    async fn partial_writes_and_large_buffers_lose_nothing() {
        let rec = Recorder::default();
        let mut io = Coalescing::new(rec.clone());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(7_000) {
            io.write_all(chunk).await.unwrap();
        }
        // Past the high-water mark writes go out without waiting for a flush.
        assert!(!rec.writes().is_empty());
        io.shutdown().await.unwrap();
        assert_eq!(rec.writes().concat(), data);
    }

    #[tokio::test]
    async fn a_flush_yields_once_and_frames_added_meanwhile_share_the_write() {
        let rec = Recorder::default();
        let mut io = Coalescing::new(rec.clone());
        io.write_all(b"first;").await.unwrap();
        // The first poll of a flush yields to the scheduler and writes nothing.
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut io).poll_flush(cx))).await;
        assert!(first.is_pending());
        assert!(rec.writes().is_empty());
        // Meanwhile another check finished and h2 added its frames.
        io.write_all(b"second;").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(rec.writes(), vec![b"first;second;".to_vec()]);
    }
}
