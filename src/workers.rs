//! A small pool of worker threads for the slow things the event loop must
//! not wait on, in two lanes: durable writes (fsyncs of Maildirs, the
//! queue, UIDL records), and quick work (reading a message for RETR or the
//! outbox, listing a folder, a password hash). A disk that takes 200 ms
//! per fsync fills the write lane; sessions that only read keep theirs.
//!
//! Jobs go in over a [`JobQueue`] per lane (a mutex and a condvar: an idle
//! worker sleeps at once); each result comes back on a `crossbeam-channel`
//! and the loop is woken with `mio::Waker::wake()`, so it drains the
//! results on its next turn. Dropping the pool lets the queued jobs finish
//! and joins the threads (a clean shutdown never loses an accepted write).
//!
//! Must not: touch sockets or loop state; jobs must never panic (release
//! builds abort on panic).

use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

type Job<T> = Box<dyn FnOnce() -> T + Send + 'static>;

/// Jobs waiting for a worker. Not a crossbeam channel: its receive spins
/// and yields the CPU several times before it sleeps, and with 16 writers
/// (as there were then) going idle after every message those yields
/// (4.5 `sched_yield` per message under `strace -c`) were 9% of
/// mailgate's samples in `perf` at SMTP load on a 2-core machine, where a
/// yield hands the core to another runnable thread. Here a worker with
/// nothing to do sleeps on the condvar.
struct JobQueue<J> {
    state: Mutex<QueueState<J>>,
    ready: Condvar,
}

struct QueueState<J> {
    jobs: VecDeque<J>,
    closed: bool,
}

impl<J> JobQueue<J> {
    fn new() -> Self {
        JobQueue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn push(&self, job: J) {
        // A poisoned lock only means a thread panicked holding it; the
        // queue itself is always whole (push and pop do not panic inside).
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.jobs.push_back(job);
        drop(st);
        self.ready.notify_one();
    }

    /// The next job, waiting for one; None once closed and empty.
    fn pop(&self) -> Option<J> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = st.jobs.pop_front() {
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// No more jobs: the workers finish what is queued and end.
    fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.ready.notify_all();
    }
}

/// Stack for worker threads: jobs are small (no deep recursion), and a
/// router has little RAM.
pub const WORKER_STACK: usize = 512 * 1024;

/// A fixed pool of threads running jobs that produce a `T`.
pub struct Workers<T> {
    jobs: Arc<JobQueue<Job<T>>>,
    /// The quick lane (reads, hashes); None: everything goes to `jobs`.
    quick: Option<Arc<JobQueue<Job<T>>>>,
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
        let jobs = Arc::new(JobQueue::<Job<T>>::new());
        let quick_jobs = Arc::new(JobQueue::<Job<T>>::new());
        // Unbounded: a worker never blocks on a slow loop.
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<T>();
        let mut handles = Vec::new();
        let writers = writers.max(1);
        for i in 0..writers + quick {
            let queue = Arc::clone(if i < writers { &jobs } else { &quick_jobs });
            let res_tx = res_tx.clone();
            let waker = Arc::clone(&waker);
            let spawned = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    // Ends when the pool closes the queue and it is empty.
                    while let Some(job) = queue.pop() {
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
                jobs,
                quick: (quick > 0).then_some(quick_jobs),
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
        self.jobs.push(Box::new(job));
    }

    /// Queue a quick job (a read, a hash): it never waits behind fsyncs.
    pub fn submit_quick(&self, job: impl FnOnce() -> T + Send + 'static) {
        match &self.quick {
            Some(queue) if !self.threads.is_empty() => queue.push(Box::new(job)),
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
        // Closing the queues ends each worker after the queued jobs.
        self.jobs.close();
        if let Some(quick) = &self.quick {
            quick.close();
        }
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
