//! Test doubles for the network: an in-memory, non-blocking pipe whose two
//! ends are `Wire`s, so a `Transport` (plain or TLS) and the drivers' pumps
//! are tested without sockets. Each end moves at most `chunk` bytes per
//! read or write, holds at most `capacity` unread bytes (then a write
//! would block), and can be made to answer WouldBlock to every other
//! write, as a congested socket does.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;

use super::transport::Wire;

#[derive(Default)]
struct Half {
    buf: VecDeque<u8>,
    /// The writing end shut down: reads see EOF once `buf` is empty.
    closed: bool,
}

pub struct End {
    rx: Rc<RefCell<Half>>,
    tx: Rc<RefCell<Half>>,
    chunk: usize,
    capacity: usize,
    /// Answer WouldBlock to every other write.
    stutter: bool,
    stalled: bool,
}

/// Two connected ends.
pub fn pair(chunk: usize, capacity: usize) -> (End, End) {
    let a = Rc::new(RefCell::new(Half::default()));
    let b = Rc::new(RefCell::new(Half::default()));
    let end = |rx: &Rc<RefCell<Half>>, tx: &Rc<RefCell<Half>>| End {
        rx: Rc::clone(rx),
        tx: Rc::clone(tx),
        chunk: chunk.max(1),
        capacity: capacity.max(1),
        stutter: false,
        stalled: false,
    };
    (end(&a, &b), end(&b, &a))
}

impl End {
    pub fn stutter(mut self) -> End {
        self.stutter = true;
        self
    }

    /// Bytes written by the other end and not read yet.
    pub fn unread(&self) -> usize {
        self.rx.borrow().buf.len()
    }

    /// Takes everything the other end wrote so far.
    pub fn drain_all(&self) -> Vec<u8> {
        self.rx.borrow_mut().buf.drain(..).collect()
    }
}

impl Read for End {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx.borrow_mut();
        if rx.buf.is_empty() {
            return if rx.closed {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = out.len().min(self.chunk).min(rx.buf.len());
        for (slot, b) in out.iter_mut().zip(rx.buf.drain(..n)) {
            *slot = b;
        }
        Ok(n)
    }
}

impl Write for End {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.stutter {
            self.stalled = !self.stalled;
            if self.stalled {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let mut tx = self.tx.borrow_mut();
        if tx.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = self.capacity.saturating_sub(tx.buf.len());
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = data.len().min(self.chunk).min(room);
        tx.buf.extend(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Wire for End {
    fn set_nodelay(&self, _on: bool) -> io::Result<()> {
        Ok(())
    }
    fn shutdown(&self) -> io::Result<()> {
        self.tx.borrow_mut().closed = true;
        Ok(())
    }
}
