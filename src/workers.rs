//! A small pool of worker threads for the slow things the event loop must
//! not wait on, in two lanes: durable writes (fsyncs of Maildirs, the
//! queue, UIDL records), and quick work (reading a message for RETR or the
//! outbox, listing a folder, a password hash). A disk that takes 200 ms
//! per fsync fills the write lane; sessions that only read keep theirs.
//!
//! Jobs go in over a `crossbeam-channel`; each result comes back on another
//! channel and the loop is woken with `mio::Waker::wake()`, so it drains the
//! results on its next turn. Dropping the pool lets the queued jobs finish
//! and joins the threads (a clean shutdown never loses an accepted write).
//!
//! Must not: touch sockets or loop state; jobs must never panic (release
//! builds abort on panic).

use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

type Job<T> = Box<dyn FnOnce() -> T + Send + 'static>;

/// Stack for worker threads: jobs are small (no deep recursion), and a
/// router has little RAM.
pub const WORKER_STACK: usize = 512 * 1024;

/// A fixed pool of threads running jobs that produce a `T`.
pub struct Workers<T> {
    jobs: Option<Sender<Job<T>>>,
    /// The quick lane (reads, hashes); None: everything goes to `jobs`.
    quick: Option<Sender<Job<T>>>,
    threads: Vec<JoinHandle<()>>,
    /// For running jobs inline if no thread could be started.
    results: Sender<T>,
    waker: Arc<mio::Waker>,
}

impl<T: Send + 'static> Workers<T> {
    /// Start `threads` workers (at least one). Results arrive on the
    /// returned receiver, each followed by a `waker.wake()`; the loop reads
    /// them with `try_recv` until empty when the waker's token fires.
    pub fn new(threads: usize, waker: Arc<mio::Waker>) -> (Self, Receiver<T>) {
        Self::with_lanes(threads, 0, waker)
    }

    /// `writers` threads for `submit`, `quick` more for `submit_quick`
    /// (with `quick == 0`, quick jobs share the writers' lane).
    pub fn with_lanes(writers: usize, quick: usize, waker: Arc<mio::Waker>) -> (Self, Receiver<T>) {
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job<T>>();
        let (quick_tx, quick_rx) = crossbeam_channel::unbounded::<Job<T>>();
        // Unbounded: a worker never blocks on a slow loop.
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<T>();
        let mut handles = Vec::new();
        let writers = writers.max(1);
        for i in 0..writers + quick {
            let job_rx = if i < writers {
                job_rx.clone()
            } else {
                quick_rx.clone()
            };
            let res_tx = res_tx.clone();
            let waker = Arc::clone(&waker);
            let spawned = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    // Ends when the pool drops its sender and the queue is empty.
                    for job in job_rx {
                        let result = job();
                        if res_tx.send(result).is_err() {
                            // The loop is gone; keep draining so shutdown completes.
                            continue;
                        }
                        if let Err(e) = waker.wake() {
                            log::error!("worker: cannot wake the event loop: {e}");
                        }
                    }
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => log::error!("cannot start worker thread {i}: {e}"),
            }
        }
        if handles.is_empty() {
            // Better slow than stuck: submit() then runs jobs inline.
            log::error!("no worker threads could be started; running jobs on the loop thread");
        }
        (
            Workers {
                jobs: Some(job_tx),
                quick: (quick > 0).then_some(quick_tx),
                threads: handles,
                results: res_tx,
                waker,
            },
            res_rx,
        )
    }

    /// Queue a job; some worker runs it and sends its result back.
    pub fn submit(&self, job: impl FnOnce() -> T + Send + 'static) {
        if self.threads.is_empty() {
            let _ = self.results.send(job());
            let _ = self.waker.wake();
            return;
        }
        if let Some(tx) = &self.jobs {
            // Cannot fail: the workers hold the receiver until we drop tx.
            let _ = tx.send(Box::new(job));
        }
    }

    /// Queue a quick job (a read, a hash): it never waits behind fsyncs.
    pub fn submit_quick(&self, job: impl FnOnce() -> T + Send + 'static) {
        match &self.quick {
            Some(tx) if !self.threads.is_empty() => {
                let _ = tx.send(Box::new(job));
            }
            _ => self.submit(job),
        }
    }

    /// Number of running worker threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

impl<T> Drop for Workers<T> {
    fn drop(&mut self) {
        // Closing the job channels ends each worker after the queued jobs.
        self.jobs = None;
        self.quick = None;
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::{Duration, Instant};

    const WAKE: Token = Token(7);

    #[test]
    fn runs_jobs_concurrently_and_wakes() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());
        let (pool, results) = Workers::<(u32, bool)>::new(2, waker);
        assert_eq!(pool.threads(), 2);
        // Two jobs that can only both succeed if they run at the same time:
        // each announces itself and waits for the other.
        let (a_tx, a_rx) = crossbeam_channel::bounded::<()>(1);
        let (b_tx, b_rx) = crossbeam_channel::bounded::<()>(1);
        pool.submit(move || {
            let _ = a_tx.send(());
            (1, b_rx.recv_timeout(Duration::from_secs(5)).is_ok())
        });
        pool.submit(move || {
            let _ = b_tx.send(());
            (2, a_rx.recv_timeout(Duration::from_secs(5)).is_ok())
        });
        let mut got = Vec::new();
        let mut events = Events::with_capacity(8);
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 2 && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .unwrap();
            if events.iter().any(|e| e.token() == WAKE) {
                got.extend(results.try_iter());
            }
        }
        got.sort();
        assert_eq!(got, vec![(1, true), (2, true)]);
    }

    #[test]
    fn quick_jobs_do_not_wait_behind_slow_ones() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());
        let (pool, results) = Workers::<&'static str>::with_lanes(1, 1, waker);
        assert_eq!(pool.threads(), 2);
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
        // The write lane's only thread is stuck (a slow fsync) ...
        pool.submit(move || {
            let _ = release_rx.recv_timeout(Duration::from_secs(10));
            "slow"
        });
        pool.submit(|| "queued behind it");
        // ... and a quick job still runs.
        pool.submit_quick(|| "quick");
        let first = results.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, "quick");
        release_tx.send(()).unwrap();
        drop(pool);
        let rest: Vec<_> = results.try_iter().collect();
        assert_eq!(rest, vec!["slow", "queued behind it"]);
    }

    #[test]
    fn drop_finishes_queued_jobs() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());
        let (pool, results) = Workers::new(1, waker);
        for i in 0..50u32 {
            pool.submit(move || i * 2);
        }
        drop(pool);
        let mut got: Vec<u32> = results.try_iter().collect();
        got.sort();
        assert_eq!(got, (0..50).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn results_receiver_dropped_is_harmless() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());
        let (pool, results) = Workers::new(0, waker); // clamps to one thread
        assert_eq!(pool.threads(), 1);
        drop(results);
        pool.submit(|| 1u8);
        pool.submit(|| 2u8);
        drop(pool); // must not hang
    }
}
