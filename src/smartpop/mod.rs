//! SmartPop: collecting ISP POP3 maildrops into local mailboxes.
//!
//! Owns: what SmartPop remembers per account (`records`) and multi-drop
//! routing by headers (`route`). The POP3 dialogue itself is the sans-IO
//! core `proto::pop3_client`; the socket, TLS and timers are the driver's
//! (`conn::pop3_fetch`).
//! Must not: open sockets or run on the event-loop thread where it writes
//! files (`Records::record_*` fsync; call them from a worker).
//!
//! One collection run for account NAME, as the driver performs it:
//!
//! 1. On a worker, `collect::prepare`: the records (`Records::load`, with
//!    `finish_staged`) and the TLS client config.
//! 2. Connect (TLS first when `tls = tls`), build
//!    `proto::pop3_client::Pop3Fetch::new(params, records.iter())`, feed it bytes.
//! 3. On `Deliver { uidl, data, .. }`: on a worker, pick the mailboxes
//!    (`route::route` when `multidrop = yes`, else `deliver_to`; `Unrouted`
//!    also means `deliver_to`), write the message durably into each Maildir,
//!    THEN `records.record_delivered(uidl, now)`, then report
//!    `delivered(ok)` back to the core on the loop thread. Only then may the
//!    core send DELE: this ordering is the no-loss rule. (A crash between the
//!    Maildir rename and the records write can deliver that one message twice
//!    on the next run; it can never lose it.)
//! 4. On `Oversized { uidl, .. }`: log it, have a worker deliver the
//!    notice to the owner, and `records.mark_oversized(uidl, now)` in
//!    memory: the mark is written with the next delivery's record or at
//!    the end of the run, never by a second writer in parallel.
//!    A delivery refused for good (`DeliveryError::Permanent`, e.g. too
//!    many hops) records the UIDL as rejected and the driver calls
//!    `rejected()` instead of `delivered(false)`: the message stays on the
//!    server, is not fetched again, and does not stop the run.
//! 5. On `Done(summary)`: if `summary.remaining` is `Some(list)` (QUIT got
//!    +OK, so the server committed our DELEs), `records.prune(&list)` and
//!    save (on a worker); then close the connection. On a lost connection or
//!    a timeout, `connection_lost()` gives the summary instead: never prune
//!    then. The account's next run starts only after that last save.

pub mod collect;
pub mod records;
pub mod route;
pub mod runner;
