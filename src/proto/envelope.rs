//! The envelope of one accepted message, as every layer passes it on:
//! the SMTP server core produces it, `delivery` stores it, the outbox and
//! SmartPop hand theirs to the same `delivery`. Plain data, no behaviour.
//!
//! Owns: the transaction (reverse-path, recipients, trace facts), where
//! each recipient goes (`Resolution`), and the answer a delivery gives
//! (`DeliveryOutcome`). Must not: import anything else of the crate.

use std::net::IpAddr;

/// Where mail for one recipient address goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    /// Local mailbox addresses (keys of `Config::mailboxes`), deduplicated, in order.
    pub local: Vec<String>,
    /// Non-local addresses (via `[alias]` members or `forward`), deduplicated.
    pub remote: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The forward-path as given, domain lower-cased.
    pub address: String,
    pub resolution: Resolution,
}

/// One accepted mail transaction (RFC 5321 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// `""` for the null reverse-path `<>`.
    pub reverse_path: String,
    pub recipients: Vec<Recipient>,
    /// The message: lines end in CRLF, dot-unstuffed (DATA) or raw
    /// (BDAT), without the terminator.
    pub data: Vec<u8>,
    pub helo: String,
    pub peer: IpAddr,
    /// For the `Received:` `with` clause (RFC 3848): "SMTP", "ESMTP",
    /// "ESMTPS", "ESMTPA" or "ESMTPSA".
    pub protocol: &'static str,
    pub auth_user: Option<String>,
    pub smtputf8: bool,
    /// `BODY=8BITMIME` or `BODY=BINARYMIME` was given.
    pub body_8bitmime: bool,
}

/// The driver's answer to `Event::Deliver`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Durably stored (maildir or queue): 250.
    Accepted { queue_id: String },
    /// 4xx, e.g. 452 4.3.1 disk full.
    TempFail {
        code: u16,
        enhanced: &'static str,
        text: String,
    },
    /// 5xx, e.g. 552 5.2.2 mailbox full.
    PermFail {
        code: u16,
        enhanced: &'static str,
        text: String,
    },
}
