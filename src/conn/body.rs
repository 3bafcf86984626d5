//! One SMTP connection's message body on its way to the disk: the bytes
//! the core hands out (`Event::Body`) are kept in memory while they are
//! few (a small message is delivered from memory and never touches a
//! spool file), and streamed to a spool file (`store::spool`) on a worker
//! once they are more than one chunk.
//!
//! Owns: what is held in memory and its charge to the global `Budget`,
//! the spool file's writer (here, or on a worker: at most one write in
//! flight, and no reading while it is), forgetting a discarded or
//! abandoned body (its file is removed on a worker), and what the
//! delivery starts from (`Ready`).
//! Must not: touch files itself (it describes the work as `SpoolJob`s and
//! `Ready`, the driver runs them on workers), or know the socket.

use std::io;
use std::path::PathBuf;

use mio::Token;

use super::budget::Budget;
use crate::proto::envelope::{DeliveryOutcome, Transaction};
use crate::proto::smtp_server::BODY_CHUNK;
use crate::store::deliver::DeliveryError;
use crate::store::spool::{SpoolWriter, Spooled};

/// A body starts going to the spool once this much of it is held: one
/// chunk. A message smaller than that is delivered from memory (the
/// common case: most mail is a few KiB).
pub const SPOOL_AT: usize = BODY_CHUNK;

/// Disk work for the spool, run on a worker.
#[derive(Debug)]
pub enum SpoolJob {
    /// Append `bytes`, to a new spool file when `writer` is None.
    Write {
        writer: Option<SpoolWriter>,
        bytes: Vec<u8>,
        data_dir: PathBuf,
    },
    /// A body that will not be delivered: remove its file.
    Remove(SpoolWriter),
}

impl SpoolJob {
    /// Does the work (on a worker); a write answers with the writer back,
    /// a failed one has removed its file.
    pub fn run(self) -> Option<io::Result<SpoolWriter>> {
        match self {
            SpoolJob::Write {
                writer,
                bytes,
                data_dir,
            } => Some((|| {
                let mut w = match writer {
                    Some(w) => w,
                    None => SpoolWriter::create(&data_dir)?,
                };
                match w.write(&bytes) {
                    Ok(()) => Ok(w),
                    Err(e) => {
                        log::error!("cannot write spool file {}: {e}", w.path().display());
                        w.remove();
                        Err(e)
                    }
                }
            })()),
            SpoolJob::Remove(w) => {
                w.remove();
                None
            }
        }
    }
}

/// Writes the last bytes and closes the spool file, for the delivery
/// (on a worker); on failure the file is removed.
pub fn finish_spool(mut writer: SpoolWriter, tail: &[u8]) -> io::Result<Spooled> {
    if let Err(e) = writer.write(tail) {
        log::error!("cannot write spool file {}: {e}", writer.path().display());
        writer.remove();
        return Err(e);
    }
    writer.finish()
}

/// How a complete message is to be delivered.
#[derive(Debug)]
pub enum Ready {
    /// From memory: `tx.data` is the body.
    Memory(Transaction),
    /// Write `tail` to the spool, deliver from it, remove it.
    Spool {
        tx: Transaction,
        writer: SpoolWriter,
        tail: Vec<u8>,
    },
    /// The body could not be spooled: this is the answer (4xx).
    Refuse(DeliveryOutcome),
}

/// What the driver does after a spool write came back.
#[derive(Debug)]
pub enum Next {
    Job(SpoolJob),
    Deliver(Ready),
}

/// The body of the transaction under way on one connection.
#[derive(Debug)]
pub struct BodySink {
    token: Token,
    data_dir: PathBuf,
    /// Bytes not yet given to a job (wire form), charged to the budget.
    mem: Vec<u8>,
    /// The spool file, while no worker has it.
    writer: Option<SpoolWriter>,
    /// Bytes in the write on a worker; `Some` while one is in flight.
    writing: Option<usize>,
    /// The body of the write in flight was discarded: remove its file
    /// when it comes back.
    drop_on_return: bool,
    /// Spooling failed: the rest of this body is dropped, and its end is
    /// answered with this.
    failed: Option<DeliveryError>,
    /// The end of the data came while a write was in flight.
    pending: Option<Transaction>,
    /// Bytes of a delivery from memory under way, charged until it ends.
    delivering: usize,
    closed: bool,
}

impl BodySink {
    pub fn new(token: Token, data_dir: PathBuf) -> BodySink {
        BodySink {
            token,
            data_dir,
            mem: Vec::new(),
            writer: None,
            writing: None,
            drop_on_return: false,
            failed: None,
            pending: None,
            delivering: 0,
            closed: false,
        }
    }

    /// No write in flight: the connection may read.
    pub fn may_read(&self) -> bool {
        self.writing.is_none()
    }

    /// A worker has the spool file: the driver must wait for it.
    pub fn busy(&self) -> bool {
        self.writing.is_some()
    }

    /// Bytes held in memory, not yet given to a job.
    pub fn held(&self) -> usize {
        self.mem.len()
    }

    /// The next bytes of the body.
    pub fn body(&mut self, bytes: Vec<u8>, budget: &mut Budget) -> Option<SpoolJob> {
        if self.closed || self.failed.is_some() {
            return None;
        }
        budget.charge(self.token, bytes.len());
        if self.mem.is_empty() {
            self.mem = bytes;
        } else {
            self.mem.extend_from_slice(&bytes);
        }
        if self.mem.len() >= SPOOL_AT {
            self.write_job()
        } else {
            None
        }
    }

    /// Hands what is held to a write, unless one is in flight.
    fn write_job(&mut self) -> Option<SpoolJob> {
        if self.writing.is_some() || self.mem.is_empty() || self.closed {
            return None;
        }
        let bytes = std::mem::take(&mut self.mem);
        self.writing = Some(bytes.len());
        Some(SpoolJob::Write {
            writer: self.writer.take(),
            bytes,
            data_dir: self.data_dir.clone(),
        })
    }

    /// The budget is full: send what is held to the spool now rather
    /// than wait for more of it.
    pub fn flush(&mut self) -> Option<SpoolJob> {
        if self.failed.is_some() {
            return None;
        }
        self.write_job()
    }

    fn release_mem(&mut self, budget: &mut Budget) {
        budget.release(self.token, self.mem.len());
        self.mem = Vec::new();
    }

    /// The body so far is void (RSET, over the size limit, ...).
    pub fn discard(&mut self, budget: &mut Budget) -> Option<SpoolJob> {
        self.release_mem(budget);
        self.failed = None;
        if self.writing.is_some() {
            self.drop_on_return = true;
            return None;
        }
        self.writer.take().map(SpoolJob::Remove)
    }

    /// The whole message is in. `None`: a write is in flight, the
    /// delivery starts when it is back (from [`BodySink::written`]).
    pub fn deliver(&mut self, mut tx: Transaction, budget: &mut Budget) -> Option<Ready> {
        if let Some(e) = self.failed.take() {
            self.release_mem(budget);
            return Some(Ready::Refuse(crate::delivery::refusal(&e)));
        }
        if self.writing.is_some() {
            self.pending = Some(tx);
            return None;
        }
        let data = std::mem::take(&mut self.mem);
        // Charged until the delivery is done: the job holds the bytes.
        self.delivering = data.len();
        Some(match self.writer.take() {
            Some(writer) => Ready::Spool {
                tx,
                writer,
                tail: data,
            },
            None => {
                tx.data = data;
                Ready::Memory(tx)
            }
        })
    }

    /// The delivery is done: its bytes are free.
    pub fn delivered(&mut self, budget: &mut Budget) {
        budget.release(self.token, std::mem::take(&mut self.delivering));
    }

    /// The write in flight came back.
    pub fn written(&mut self, result: io::Result<SpoolWriter>, budget: &mut Budget) -> Vec<Next> {
        let Some(n) = self.writing.take() else {
            // Not ours to keep (cannot happen: one write at a time).
            return result
                .map(|w| vec![Next::Job(SpoolJob::Remove(w))])
                .unwrap_or_default();
        };
        budget.release(self.token, n);
        let mut next = Vec::new();
        let discarded = std::mem::take(&mut self.drop_on_return);
        match result {
            Ok(w) if discarded || self.closed => next.push(Next::Job(SpoolJob::Remove(w))),
            Ok(w) => self.writer = Some(w),
            // The job removed the file.
            Err(_) if discarded || self.closed => {}
            Err(e) => {
                self.failed = Some(DeliveryError::from_io(&e));
                self.release_mem(budget);
            }
        }
        if let Some(tx) = self.pending.take() {
            if let Some(ready) = self.deliver(tx, budget) {
                next.push(Next::Deliver(ready));
            }
        } else if self.mem.len() >= SPOOL_AT || (budget.under_pressure() && !self.mem.is_empty()) {
            next.extend(self.flush().map(Next::Job));
        }
        next
    }

    /// The connection is gone: nothing more is kept; a transaction whose
    /// delivery had not started is dropped (true: the driver stops waiting
    /// for it). The spool file is removed now, or when its write is back.
    pub fn close(&mut self, budget: &mut Budget) -> (Option<SpoolJob>, bool) {
        if self.closed {
            return (None, false);
        }
        self.closed = true;
        self.release_mem(budget);
        let dropped = self.pending.take().is_some();
        budget.forget_waiting(self.token);
        let job = if self.writing.is_some() {
            None
        } else {
            self.writer.take().map(SpoolJob::Remove)
        };
        (job, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;
    use crate::store::message::Message;
    use crate::store::spool;
    use std::fs;

    const T: Token = Token(7);

    fn new_tx() -> Transaction {
        Transaction {
            reverse_path: "a@remote.test".into(),
            recipients: Vec::new(),
            data: Vec::new(),
            helo: "c".into(),
            peer: "192.0.2.1".parse().unwrap(),
            protocol: "ESMTP",
            auth_user: None,
            smtputf8: false,
            body_8bitmime: false,
        }
    }

    fn spool_files(t: &TempDir) -> usize {
        fs::read_dir(spool::dir(t.path())).unwrap().count()
    }

    /// A fake worker: runs a job at once, or fails it.
    fn run(job: SpoolJob) -> Option<io::Result<SpoolWriter>> {
        job.run()
    }

    #[test]
    fn small_message_stays_in_memory() {
        let t = TempDir::new("sink-small");
        spool::prepare(t.path()).unwrap();
        let mut budget = Budget::default();
        let mut sink = BodySink::new(T, t.path().to_path_buf());
        assert!(sink
            .body(b"Subject: x\r\n\r\n".to_vec(), &mut budget)
            .is_none());
        assert!(sink.body(vec![b'a'; SPOOL_AT - 100], &mut budget).is_none());
        assert_eq!(budget.held_by(T), SPOOL_AT - 100 + 14);
        let Some(Ready::Memory(tx)) = sink.deliver(new_tx(), &mut budget) else {
            panic!("not from memory")
        };
        assert_eq!(tx.data.len(), SPOOL_AT - 100 + 14);
        // Charged while the delivery runs, free after.
        assert_eq!(budget.used(), SPOOL_AT - 100 + 14);
        sink.delivered(&mut budget);
        assert_eq!(budget.used(), 0);
        assert_eq!(spool_files(&t), 0);
    }

    #[test]
    fn large_message_streams_one_write_at_a_time() {
        let t = TempDir::new("sink-large");
        spool::prepare(t.path()).unwrap();
        let mut budget = Budget::default();
        let mut sink = BodySink::new(T, t.path().to_path_buf());
        let mut wire = Vec::new();
        let mut in_flight = None;
        for i in 0..40u32 {
            let piece: Vec<u8> = format!("{i:05} {}\r\n", "z".repeat(16_000)).into_bytes();
            wire.extend_from_slice(&piece);
            // The driver reads only while no write is in flight.
            if let Some(job) = in_flight.take() {
                assert!(!sink.may_read());
                for next in sink.written(run(job).unwrap(), &mut budget) {
                    match next {
                        Next::Job(j) => in_flight = Some(j),
                        Next::Deliver(_) => panic!("no end yet"),
                    }
                }
            }
            if in_flight.is_none() {
                assert!(sink.may_read());
            }
            if let Some(job) = sink.body(piece, &mut budget) {
                assert!(in_flight.is_none(), "two writes in flight");
                in_flight = Some(job);
            }
            assert!(budget.used() <= SPOOL_AT + 2 * 16_010, "{}", budget.used());
        }
        assert_eq!(spool_files(&t), 1);
        // The end comes while a write is in flight: the delivery waits.
        let ready = match in_flight.take() {
            Some(job) => {
                assert!(sink.deliver(new_tx(), &mut budget).is_none());
                let mut next = sink.written(run(job).unwrap(), &mut budget);
                assert_eq!(next.len(), 1);
                match next.pop() {
                    Some(Next::Deliver(r)) => r,
                    other => panic!("{other:?}"),
                }
            }
            None => sink.deliver(new_tx(), &mut budget).unwrap(),
        };
        let Ready::Spool { writer, tail, .. } = ready else {
            panic!("not from the spool")
        };
        let spooled = finish_spool(writer, &tail).unwrap();
        let mut stored = Vec::new();
        Message::Stored(&spooled)
            .write_stored(b"", &mut stored)
            .unwrap();
        let mut want = Vec::new();
        crate::store::maildir::write_lf(&mut want, &[&wire]).unwrap();
        assert_eq!(stored, want);
        spooled.remove();
        sink.delivered(&mut budget);
        assert_eq!(budget.used(), 0);
        assert_eq!(spool_files(&t), 0);
    }

    #[test]
    fn discard_and_close_remove_the_file() {
        let t = TempDir::new("sink-discard");
        spool::prepare(t.path()).unwrap();
        let mut budget = Budget::default();
        let mut sink = BodySink::new(T, t.path().to_path_buf());
        // Discarded while its write is in flight: removed when it is back,
        // and the next transaction's bytes go to a new file.
        let job = sink.body(vec![b'x'; SPOOL_AT], &mut budget).unwrap();
        assert!(sink.discard(&mut budget).is_none());
        assert!(sink.body(b"next\r\n".to_vec(), &mut budget).is_none());
        let next = sink.written(run(job).unwrap(), &mut budget);
        let [Next::Job(remove @ SpoolJob::Remove(_))] = <[Next; 1]>::try_from(next).unwrap() else {
            panic!("no removal")
        };
        assert!(run(remove).is_none());
        assert_eq!(spool_files(&t), 0);
        let Some(Ready::Memory(tx)) = sink.deliver(new_tx(), &mut budget) else {
            panic!()
        };
        assert_eq!(tx.data, b"next\r\n");
        sink.delivered(&mut budget);

        // Closed with the file here: removed at once.
        let job = sink.body(vec![b'y'; SPOOL_AT], &mut budget).unwrap();
        assert!(sink.written(run(job).unwrap(), &mut budget).is_empty());
        assert!(sink.body(b"more".to_vec(), &mut budget).is_none());
        assert_eq!(spool_files(&t), 1);
        let (job, dropped) = sink.close(&mut budget);
        assert!(!dropped);
        assert!(run(job.unwrap()).is_none());
        assert_eq!(spool_files(&t), 0);
        assert_eq!(budget.used(), 0);

        // Closed while a write is in flight, the end of data waiting.
        let mut sink = BodySink::new(T, t.path().to_path_buf());
        let job = sink.body(vec![b'z'; SPOOL_AT], &mut budget).unwrap();
        assert!(sink.deliver(new_tx(), &mut budget).is_none());
        let (none, dropped) = sink.close(&mut budget);
        assert!(none.is_none() && dropped && sink.busy());
        let next = sink.written(run(job).unwrap(), &mut budget);
        let [Next::Job(remove)] = <[Next; 1]>::try_from(next).unwrap() else {
            panic!()
        };
        run(remove);
        assert!(!sink.busy());
        assert_eq!(spool_files(&t), 0);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn failed_write_answers_4xx_at_the_end() {
        let t = TempDir::new("sink-fail");
        // No spool folder: creating the file fails.
        let mut budget = Budget::default();
        let mut sink = BodySink::new(T, t.path().join("missing"));
        let job = sink.body(vec![b'x'; SPOOL_AT], &mut budget).unwrap();
        let result = run(job).unwrap();
        assert!(result.is_err());
        assert!(sink.written(result, &mut budget).is_empty());
        // The rest is dropped, not held.
        assert!(sink.body(vec![b'y'; SPOOL_AT], &mut budget).is_none());
        assert_eq!(budget.used(), 0);
        let Some(Ready::Refuse(DeliveryOutcome::TempFail { code, .. })) =
            sink.deliver(new_tx(), &mut budget)
        else {
            panic!("no 4xx")
        };
        assert_eq!(code, 451);
        // The next transaction starts afresh.
        assert!(sink.body(b"ok".to_vec(), &mut budget).is_none());
        assert!(matches!(
            sink.deliver(new_tx(), &mut budget),
            Some(Ready::Memory(_))
        ));
    }

    #[test]
    fn a_full_budget_makes_holders_flush() {
        let t = TempDir::new("sink-pressure");
        spool::prepare(t.path()).unwrap();
        let mut budget = Budget::new(super::super::budget::READ_RESERVE * 3);
        let (a, b) = (Token(1), Token(2));
        let mut sa = BodySink::new(a, t.path().to_path_buf());
        let mut sb = BodySink::new(b, t.path().to_path_buf());
        // Both hold less than a chunk: nothing goes to disk by itself.
        assert!(sa.body(vec![b'a'; 40_000], &mut budget).is_none());
        assert!(sb.body(vec![b'b'; 40_000], &mut budget).is_none());
        // b may not read; a (silent client) is woken and flushes.
        assert!(!budget.may_read(b));
        assert_eq!(budget.take_woken(), [a]);
        let ja = sa.flush().unwrap();
        let jb = sb.flush().unwrap();
        assert!(sa.written(run(ja).unwrap(), &mut budget).is_empty());
        assert!(sb.written(run(jb).unwrap(), &mut budget).is_empty());
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.take_woken(), [b]);
        assert!(budget.may_read(b));
        for s in [&mut sa, &mut sb] {
            let (job, _) = s.close(&mut budget);
            run(job.unwrap());
        }
        assert_eq!(spool_files(&t), 0);
    }
}
