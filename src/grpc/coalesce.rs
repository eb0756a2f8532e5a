//! Write coalescing and read pacing for the gRPC connection.
//!
//! h2 flushes its frames at the end of every poll of the connection, and the
//! connection is polled once per finished check: at load, each answer became its own
//! `writev` (two syscalls per check, a third of the server's CPU time in the kernel).
//! [`Coalescing`] takes h2's frames into a buffer and holds a flush until the
//! scheduler has run out of other ready work: the checks that are ready finish and add
//! their answers first, and one write carries all of them.
//!
//! Reads are paced the same way. Envoy writes all the checks of one pass of its event
//! loop at once, and h2 reads everything the socket holds before any check runs, so
//! all the answers left together too: Envoy then sat idle while hopwarden worked
//! through the batch, and hopwarden while Envoy worked through the answers (about 15%
//! of Envoy's time in the benchmark, one wait per ~25 requests). Once reads have
//! returned [`READ_BATCH`] bytes, the next read waits for the same kind of deferred
//! wake as a held flush (and for at most [`HOLD_MAX`]): the checks just read run and
//! their answers leave before more is read, about eight of Envoy's checks at a time,
//! and the two sides overlap.
//!
//! The wait is tokio's deferred wake (what `yield_now` uses). Both schedulers fire it
//! when the thread that polled the flush finds no other work (the multi-thread one:
//! local, injected or stealable) or at its periodic maintenance (every 61 scheduler
//! ticks), so a flush waits for at most that much other work and never for a timer.
//! `worker_threads: 1` runs on the current-thread scheduler (main.rs), more on the
//! multi-thread one. A check that finishes meanwhile wakes the connection too (the
//! multi-thread scheduler polls it next, from the LIFO slot); that poll adds
//! the answer to the buffer but does not write (when the flush gave up its wait at
//! that first re-poll, answers left in pairs), unless the flush has been held for
//! [`HOLD_MAX`] already.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
// tokio's clock is the system's outside tests; tests pause it, so a slow test run
// cannot pass HOLD_MAX where the test means the hold to still be waiting.
use tokio::time::Instant;

/// Above this many buffered bytes a write goes out at once, without waiting for a
/// flush, so one busy connection cannot grow the buffer without bound.
const HIGH_WATER: usize = 64 * 1024;

/// The longest a flush is held once answers wait in the buffer. The scheduler's
/// deferred wake can come as late as its maintenance tick, 61 tasks on; with checks
/// that miss the caches (~70 µs each) that would be several milliseconds. Every
/// finished check re-polls the connection, so past this the next one writes.
const HOLD_MAX: Duration = Duration::from_millis(1);

/// How many bytes are read before the next read waits for the scheduler: about eight
/// of Envoy's checks (a check with the `allowed_headers` that `hopwarden validate`
/// prints is about 1 KiB). Counted in bytes, not reads, because h2 may read a few
/// bytes at a time to finish a frame.
const READ_BATCH: usize = 8 * 1024;

/// The deferred wake a held flush waits for.
struct Deferred {
    fired: AtomicBool,
    task: Mutex<Waker>,
    since: Instant,
}

impl Wake for Deferred {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wake_by_ref();
    }
}

impl Deferred {
    /// Asks the scheduler for a wake once its other ready work has run.
    fn start(cx: &Context<'_>) -> Arc<Self> {
        let deferred = Arc::new(Deferred {
            fired: AtomicBool::new(false),
            task: Mutex::new(cx.waker().clone()),
            since: Instant::now(),
        });
        let waker = Waker::from(deferred.clone());
        // The first poll of `yield_now` hands the waker to the scheduler's defer list
        // (or wakes it at once outside a tokio worker); the future is not needed after.
        let _ = pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
        deferred
    }

    /// True once the scheduler has come back; else keeps the task's current waker.
    fn fired(&self, cx: &Context<'_>) -> bool {
        if self.fired.load(Ordering::Acquire) {
            return true;
        }
        {
            let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.will_wake(cx.waker()) {
                *task = cx.waker().clone();
            }
        }
        // Read again: a wake that fired while the waker was being replaced went to
        // the old one, and this poll must not then wait for it.
        self.fired.load(Ordering::Acquire)
    }
}

/// An IO stream whose writes are gathered until a flush that has let the other ready
/// tasks run first, and whose reads, once `READ_BATCH` bytes have come in, wait for
/// the same.
pub struct Coalescing<S> {
    inner: S,
    buf: Vec<u8>,
    /// Written bytes at the front of `buf` (a partial write).
    sent: usize,
    /// The deferred wake the current flush waits for, if it has started one.
    held: Option<Arc<Deferred>>,
    /// Bytes read since the last wait.
    read: usize,
    /// The deferred wake the next read waits for, once `READ_BATCH` bytes were read.
    read_gate: Option<Arc<Deferred>>,
}

impl<S> Coalescing<S> {
    /// Wraps a connection.
    pub fn new(inner: S) -> Self {
        Coalescing {
            inner,
            buf: Vec::with_capacity(8 * 1024),
            sent: 0,
            held: None,
            read: 0,
            read_gate: None,
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
        // Whatever comes next is a new batch, with a hold of its own.
        self.held = None;
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
        // Hold the flush until the scheduler has run the other ready checks; polls
        // before that (each finished check wakes this task) only gather frames.
        match &this.held {
            // A write the socket took only in part goes on without waiting.
            _ if this.sent > 0 => {}
            None => {
                this.held = Some(Deferred::start(cx));
                return Poll::Pending;
            }
            Some(held) if !held.fired(cx) && held.since.elapsed() < HOLD_MAX => {
                return Poll::Pending
            }
            // Fired: write. If the socket is full the hold stays fired, so the retry
            // does not wait again.
            Some(_) => {}
        }
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
        let this = self.get_mut();
        // h2 polls reads in a loop (once per stream it accepts), so the wait must
        // outlast this poll of the connection: it ends when the scheduler comes back,
        // or after HOLD_MAX (each finished check polls the connection again).
        if let Some(gate) = &this.read_gate {
            if !gate.fired(cx) && gate.since.elapsed() < HOLD_MAX {
                return Poll::Pending;
            }
            this.read_gate = None;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        // End of stream (nothing read) is never held.
        this.read += buf.filled().len() - before;
        if this.read >= READ_BATCH {
            this.read = 0;
            this.read_gate = Some(Deferred::start(cx));
        }
        Poll::Ready(Ok(()))
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

    /// Polls a flush once, without waiting.
    async fn poll_once(io: &mut Coalescing<Recorder>) -> Poll<io::Result<()>> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_flush(cx))).await
    }

    // Tests that expect a hold or a read gate to be still waiting run on tokio's paused
    // clock: however slow the machine, HOLD_MAX does not pass between two polls.

    #[tokio::test(start_paused = true)]
    async fn a_flush_waits_for_the_scheduler_and_frames_added_meanwhile_share_the_write() {
        let rec = Recorder::default();
        let mut io = Coalescing::new(rec.clone());
        io.write_all(b"first;").await.unwrap();
        // The first poll of a flush hands over to the scheduler and writes nothing.
        assert!(poll_once(&mut io).await.is_pending());
        assert!(rec.writes().is_empty());
        // Another check finished, h2 added its frames and polled again (a finished
        // check wakes the connection before the scheduler has come back): still held.
        io.write_all(b"second;").await.unwrap();
        assert!(poll_once(&mut io).await.is_pending());
        assert!(rec.writes().is_empty());
        io.write_all(b"third;").await.unwrap();
        // Once this task lets the scheduler run, everything leaves in one write.
        io.flush().await.unwrap();
        assert_eq!(rec.writes(), vec![b"first;second;third;".to_vec()]);
    }

    /// A socket whose send buffer is full for the first write.
    #[derive(Clone, Default)]
    struct FullOnce(Recorder, Arc<Mutex<bool>>);

    impl AsyncWrite for FullOnce {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut was_full = self.1.lock().unwrap();
            if !*was_full {
                *was_full = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            drop(was_full);
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_full_socket_is_retried_without_waiting_again() {
        let socket = FullOnce::default();
        let mut io = Coalescing::new(socket.clone());
        io.write_all(b"answer").await.unwrap();
        let poll = |io: &mut Coalescing<FullOnce>| {
            let waker = Waker::noop();
            Pin::new(io).poll_flush(&mut Context::from_waker(waker))
        };
        assert!(poll(&mut io).is_pending(), "held");
        tokio::task::yield_now().await; // the scheduler comes back: the hold fires
        assert!(poll(&mut io).is_pending(), "the socket was full");
        assert!(socket.0.writes().is_empty());
        // The retry writes at once; a new hold here would wait for another pass.
        assert!(matches!(poll(&mut io), Poll::Ready(Ok(()))));
        assert_eq!(socket.0.writes(), vec![b"answer".to_vec()]);
    }

    #[tokio::test]
    async fn a_flush_is_held_no_longer_than_hold_max() {
        let rec = Recorder::default();
        let mut io = Coalescing::new(rec.clone());
        io.write_all(b"answer").await.unwrap();
        assert!(poll_once(&mut io).await.is_pending());
        // This task keeps the scheduler from coming back (as a long run of expensive
        // checks would): once HOLD_MAX has passed, the next poll writes anyway.
        std::thread::sleep(HOLD_MAX);
        assert!(matches!(poll_once(&mut io).await, Poll::Ready(Ok(()))));
        assert_eq!(rec.writes(), vec![b"answer".to_vec()]);
    }

    /// A socket that always has `chunk` more bytes to read (none: at end of stream),
    /// counting the reads that reach it.
    #[derive(Clone)]
    struct Source {
        chunk: usize,
        reads: Arc<Mutex<usize>>,
    }

    impl AsyncRead for Source {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            *self.reads.lock().unwrap() += 1;
            buf.put_slice(&vec![7u8; self.chunk.min(buf.remaining())]);
            Poll::Ready(Ok(()))
        }
    }

    impl Source {
        fn new(chunk: usize) -> (Coalescing<Source>, Arc<Mutex<usize>>) {
            let reads = Arc::new(Mutex::new(0));
            let io = Coalescing::new(Source {
                chunk,
                reads: reads.clone(),
            });
            (io, reads)
        }
    }

    /// Polls a read once, without waiting; how many bytes it read, if it was ready.
    fn read_once(io: &mut Coalescing<Source>, cx: &mut Context<'_>) -> Poll<usize> {
        let mut space = vec![0u8; READ_BATCH];
        let mut buf = ReadBuf::new(&mut space);
        Pin::new(io)
            .poll_read(cx, &mut buf)
            .map(|r| r.map(|()| buf.filled().len()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_batch_of_bytes_the_next_read_waits_for_the_scheduler() {
        let (mut io, reads) = Source::new(READ_BATCH / 4);
        // Within one poll of the connection, as h2 does once per accepted stream:
        // reads go on until READ_BATCH bytes have come in; the ones after that wait
        // and do not reach the socket.
        std::future::poll_fn(|cx| {
            for _ in 0..4 {
                assert_eq!(read_once(&mut io, cx), Poll::Ready(READ_BATCH / 4));
            }
            assert!(read_once(&mut io, cx).is_pending());
            assert!(read_once(&mut io, cx).is_pending());
            Poll::Ready(())
        })
        .await;
        assert_eq!(*reads.lock().unwrap(), 4);
        // The checks just read run (here: this task lets the scheduler run); then
        // reading goes on, and waits again after the next batch.
        tokio::task::yield_now().await;
        std::future::poll_fn(|cx| {
            for _ in 0..4 {
                assert_eq!(read_once(&mut io, cx), Poll::Ready(READ_BATCH / 4));
            }
            assert!(read_once(&mut io, cx).is_pending());
            Poll::Ready(())
        })
        .await;
        assert_eq!(*reads.lock().unwrap(), 8);
    }

    /// The same wait, started HOLD_MAX earlier and not fired.
    fn aged(d: &Deferred) -> Arc<Deferred> {
        Arc::new(Deferred {
            fired: AtomicBool::new(false),
            task: Mutex::new(d.task.lock().unwrap().clone()),
            since: d.since - HOLD_MAX,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_waits_no_longer_than_hold_max() {
        let (mut io, reads) = Source::new(READ_BATCH);
        std::future::poll_fn(|cx| {
            assert_eq!(read_once(&mut io, cx), Poll::Ready(READ_BATCH));
            assert!(read_once(&mut io, cx).is_pending());
            // This task keeps the scheduler from coming back (as a long run of
            // expensive checks would): once HOLD_MAX has passed (the paused clock
            // cannot pass it, so the gate is aged instead) the next read goes ahead.
            io.read_gate = io.read_gate.as_deref().map(aged);
            assert_eq!(read_once(&mut io, cx), Poll::Ready(READ_BATCH));
            Poll::Ready(())
        })
        .await;
        assert_eq!(*reads.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn the_end_of_the_stream_is_not_held() {
        let (mut io, reads) = Source::new(0);
        std::future::poll_fn(|cx| {
            assert_eq!(read_once(&mut io, cx), Poll::Ready(0));
            assert_eq!(read_once(&mut io, cx), Poll::Ready(0));
            Poll::Ready(())
        })
        .await;
        assert_eq!(*reads.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_paced_reader_still_reads_everything_in_order() {
        use tokio::io::AsyncReadExt;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut io = Coalescing::new(&data[..]);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_of_checks_that_finish_together_leave_in_one_write() {
        // Shaped like hyper's server: the connection task starts one task per check;
        // a finished check hands its answer over and wakes the connection task, which
        // adds what it has to the stream and flushes. Checks finish in three waves
        // (each check of a wave starts one of the next), so the connection is polled
        // again while its flush is held, with more answers still to come.
        let rec = Recorder::default();
        let mut io = Coalescing::new(rec.clone());
        let conn = tokio::spawn(async move {
            let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel::<u8>();
            for i in 0..10u8 {
                let tx = tx.clone();
                tokio::spawn(async move {
                    tx.send(i).unwrap();
                    tokio::spawn(async move {
                        tx.send(10 + i).unwrap();
                        tokio::spawn(async move { tx.send(20 + i).unwrap() });
                    });
                });
            }
            drop(tx);
            let (mut open, mut polls) = (true, 0);
            std::future::poll_fn(|cx| {
                polls += 1;
                while open {
                    match answers.poll_recv(cx) {
                        Poll::Ready(Some(a)) => {
                            let _ = Pin::new(&mut io).poll_write(cx, &[a]);
                        }
                        Poll::Ready(None) => open = false,
                        Poll::Pending => break,
                    }
                }
                ready!(Pin::new(&mut io).poll_flush(cx)).unwrap();
                if open {
                    Poll::Pending
                } else {
                    Poll::Ready(polls)
                }
            })
            .await
        });
        let polls = conn.await.unwrap();
        // One poll per wave at least, and one more when the scheduler came back.
        assert!(polls >= 4, "{polls} polls");
        let mut all = rec.writes().concat();
        all.sort();
        assert_eq!(all, (0..30u8).collect::<Vec<_>>());
        // One write: a flush that gave up its hold when the connection was polled
        // again made one per wave.
        assert_eq!(rec.writes().len(), 1, "{:?}", rec.writes());
    }
}
