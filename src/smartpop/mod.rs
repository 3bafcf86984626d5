//! SmartPop: collecting ISP POP3 maildrops and IMAP folders into local
//! mailboxes.
//!
//! Owns: what SmartPop remembers per account (`records`) and multi-drop
//! routing by headers (`route`). The POP3 and IMAP dialogues are the
//! sans-IO cores `proto::pop3_client` and `proto::imap_client`; the
//! socket, TLS and timers are the one collection driver's (`conn::fetch`).
//! Must not: open sockets or run on the event-loop thread where it writes
//! files (`Records::record_*` fsync; call them from a worker).
//!
//! One collection run for account NAME, as the driver performs it:
//!
//! 1. On a worker, `collect::prepare`: the records (`Records::load`, with
//!    `finish_staged`) and the TLS client config.
//! 2. Connect (TLS first when `tls = tls`), build
//!    `proto::pop3_client::Pop3Fetch::new(params, records.iter())`, feed it bytes.
//! 3. On `Body(chunk)`: workers append it to the account's staging file
//!    (`collect::write_stage`, one write in flight; the driver stops reading
//!    the socket while a chunk waits behind it). The staging file is scratch,
//!    never durable, never a reason to DELE.
//!    On `Deliver { uidl, .. }`, once the last write is back: on a worker,
//!    read the staged message's header, pick the mailboxes
//!    (`route::route` when `multidrop = yes`, else `deliver_to`; `Unrouted`
//!    also means `deliver_to`), copy the message from the staging file
//!    durably into each Maildir (`deliver::deliver_local_from`),
//!    THEN `records.record_delivered(uidl, now)`, then report
//!    `delivered(ok)` back to the core on the loop thread. Only then may the
//!    core send DELE: this ordering is the no-loss rule. (A crash between the
//!    Maildir rename and the records write can deliver that one message twice
//!    on the next run; it can never lose it.)
//! 4. On `Oversized { uidl, .. }`: drop what was staged of it, log it, have a worker deliver the
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
