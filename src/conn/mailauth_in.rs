//! Mail authentication on the MX role, driver side: the DNS questions of
//! the sans-IO evaluators in `mailauth` (SPF, DKIM keys, DMARC, DNSBL)
//! asked through the non-blocking resolver under the connection's token,
//! the body hashing and signature checks handed to workers over the
//! spooled message, and the decision for the end of the data.
//!
//! Owns: `Shared` (the 30 s answer cache and the greylist table, lent to
//! every SMTP driver through `Services`), `DnsSet` (one connection's
//! questions in flight), `Check` (one message's checks) and the worker
//! jobs that read the message. Must not: touch the disk or verify a
//! signature on the loop thread, or wait on DNS anywhere.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};

use super::body::Ready;
use super::Ctx;
use crate::config::Config;
use crate::mailauth::dkim::{DkimResult, SignatureOutcome, Verifier, VerifyStep};
use crate::mailauth::dmarc::{
    Authenticated, DmarcCheck, DmarcOutcome, DmarcResult, DmarcStep, Policy,
};
use crate::mailauth::greylist::{Decision, Greylist};
use crate::mailauth::spf::{SpfCheck, SpfOutcome, SpfResult, SpfStep};
use crate::mailauth::{dnsbl, Query, Reply};
use crate::net::resolver::Resolver;
use crate::proto::dns::RecordLookup;
use crate::proto::envelope::{DeliveryOutcome, Transaction};
use crate::signing::HeaderGrab;
use crate::store::spool::Spooled;

/// How long an answer is reused by every connection.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most answers cached; past it the cache starts again.
const MAX_CACHE: usize = 10_000;
/// Most questions one connection has in flight at once.
const MAX_IN_FLIGHT: usize = 16;
/// Most questions one message may cost (SPF's own limit is 10 lookups;
/// DKIM keys of many signatures, DMARC's two). Past it: temperror.
const MAX_QUESTIONS: usize = 64;
/// Most DKIM results named in Authentication-Results and the log (the
/// verifier checks at most `dkim::MAX_SIGNATURES`).
const MAX_SHOWN_SIGNATURES: usize = crate::mailauth::dkim::MAX_SIGNATURES;
/// Read size over the spooled message.
const READ_CHUNK: usize = 64 * 1024;
/// The greylist table's file under data_dir.
const GREYLIST_FILE: &str = "greylist";
/// A table whose only change is when known triplets were last seen is
/// written at most this often (new triplets and passes at once).
const GREYLIST_SAVE_EVERY: Duration = Duration::from_secs(60);

/// What every SMTP driver shares: cached answers and the greylist.
pub struct Shared {
    cache: HashMap<Query, (Reply, Instant)>,
    greylist: Option<Greylist>,
    data_dir: PathBuf,
    saves: u64,
    /// When the table was last handed to a worker to be written.
    saved_at: Option<Instant>,
    /// The generation last written: a worker holding it writes only a
    /// newer table, so saves finishing out of order never go back.
    written: Arc<Mutex<u64>>,
    ids: RandomState,
}

impl Shared {
    /// Reads the greylist table when greylisting is on (at start, before
    /// the loop runs).
    pub fn new(config: &Config) -> Shared {
        let data_dir = config.server.data_dir.clone();
        let greylist = config.smtp.greylist.then(|| {
            let delay = config.smtp.greylist_delay.as_secs();
            let path = data_dir.join(GREYLIST_FILE);
            match Greylist::load(&path, delay) {
                Ok((table, skipped)) => {
                    if skipped > 0 {
                        warn!("{}: {skipped} unreadable lines skipped", path.display());
                    }
                    table
                }
                Err(e) => {
                    warn!("{}: {e}; starting an empty greylist", path.display());
                    Greylist::new(delay)
                }
            }
        });
        Shared {
            cache: HashMap::new(),
            greylist,
            data_dir,
            saves: 0,
            saved_at: None,
            written: Arc::new(Mutex::new(0)),
            ids: RandomState::new(),
        }
    }

    fn cached(&self, q: &Query, now: Instant) -> Option<Reply> {
        self.cache
            .get(q)
            .filter(|(_, at)| now.saturating_duration_since(*at) < CACHE_TTL)
            .map(|(r, _)| r.clone())
    }

    fn remember(&mut self, q: &Query, reply: &Reply, now: Instant) {
        // Failures are not remembered: the next message asks again.
        if matches!(reply, Reply::Failed(_)) {
            return;
        }
        if self.cache.len() >= MAX_CACHE {
            self.cache
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < CACHE_TTL);
            if self.cache.len() >= MAX_CACHE {
                self.cache.clear();
            }
        }
        self.cache.insert(q.clone(), (reply.clone(), now));
    }

    fn seed(&self) -> u64 {
        let mut h = self.ids.build_hasher();
        h.write_u64(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        );
        h.finish()
    }
}

/// One connection's DNS questions in flight, under its token.
#[derive(Default)]
pub struct DnsSet {
    flying: Vec<(Query, Resolver<RecordLookup>)>,
    /// Asked, waiting for room in `flying`.
    queued: Vec<Query>,
    answers: Vec<(Query, Reply)>,
}

impl DnsSet {
    /// The reply to `q`, if it came (taken: ask again for another copy).
    pub fn take(&mut self, q: &Query) -> Option<Reply> {
        let i = self.answers.iter().position(|(k, _)| k == q)?;
        Some(self.answers.swap_remove(i).1)
    }

    fn has(&self, q: &Query) -> bool {
        self.answers.iter().any(|(k, _)| k == q)
    }

    /// Asks `q` (from the cache, or the nameserver). True when the answer
    /// is there already.
    pub fn ask(&mut self, q: &Query, cx: &mut Ctx) -> bool {
        if self.has(q) {
            return true;
        }
        if self.flying.iter().any(|(k, _)| k == q) || self.queued.contains(q) {
            return false;
        }
        if let Some(r) = cx.sv.mailauth.cached(q, cx.now) {
            self.answers.push((q.clone(), r));
            return true;
        }
        if !crate::mailauth::is_queryable(&q.name) {
            self.answers.push((q.clone(), Reply::nxdomain()));
            return true;
        }
        if self.flying.len() >= MAX_IN_FLIGHT {
            self.queued.push(q.clone());
            return false;
        }
        self.start(q.clone(), cx)
    }

    fn start(&mut self, q: Query, cx: &mut Ctx) -> bool {
        let Some(ns) = cx.config().resolver else {
            self.answers
                .push((q, Reply::Failed("no nameserver configured".into())));
            return true;
        };
        let lookup = RecordLookup::new(&q.name, q.qtype, cx.sv.mailauth.seed());
        match Resolver::start(lookup, ns, cx.registry(), cx.token, cx.now) {
            Ok(r) => {
                self.flying.push((q, r));
                false
            }
            Err(done) => {
                self.finished(q, Reply::from(done), cx);
                true
            }
        }
    }

    fn finished(&mut self, q: Query, reply: Reply, cx: &mut Ctx) {
        cx.sv.mailauth.remember(&q, &reply, cx.now);
        self.answers.push((q, reply));
    }

    /// A socket may be ready, or time passed: true when an answer came.
    pub fn poll(&mut self, cx: &mut Ctx) -> bool {
        let mut any = false;
        let mut i = 0;
        while i < self.flying.len() {
            let done = {
                let (_, r) = &mut self.flying[i];
                let registry = &cx.sv.registry;
                r.ready(registry, cx.now)
                    .or_else(|| r.timeout(registry, cx.now))
            };
            match done {
                Some(result) => {
                    let (q, _) = self.flying.swap_remove(i);
                    self.finished(q, Reply::from(result), cx);
                    any = true;
                }
                None => i += 1,
            }
        }
        while self.flying.len() < MAX_IN_FLIGHT && !self.queued.is_empty() {
            let q = self.queued.remove(0);
            any |= self.start(q, cx);
        }
        any
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.flying.iter().map(|(_, r)| r.deadline()).min()
    }

    pub fn busy(&self) -> bool {
        !self.flying.is_empty() || !self.queued.is_empty()
    }

    /// Every question still open fails with `why` (the checks' own
    /// deadline passed).
    pub fn fail_all(&mut self, why: &str) {
        for (q, _) in std::mem::take(&mut self.flying) {
            self.answers.push((q, Reply::Failed(why.to_string())));
        }
        for q in std::mem::take(&mut self.queued) {
            self.answers.push((q, Reply::Failed(why.to_string())));
        }
    }

    /// Forgets everything (the connection is over).
    pub fn clear(&mut self) {
        self.flying.clear();
        self.queued.clear();
        self.answers.clear();
    }
}

/// The DNSBL check of a client at connect.
pub struct DnsblCheck {
    ip: IpAddr,
    asked: Vec<Query>,
}

impl DnsblCheck {
    pub fn start(ip: IpAddr, dns: &mut DnsSet, cx: &mut Ctx) -> DnsblCheck {
        let asked: Vec<Query> = cx
            .config()
            .smtp
            .dnsbl
            .iter()
            .map(|l| dnsbl::query(ip, &l.zone))
            .collect();
        for q in &asked {
            dns.ask(q, cx);
        }
        DnsblCheck { ip, asked }
    }

    /// None while answers are missing; then the refusal, if listed.
    pub fn verdict(&self, dns: &mut DnsSet, cx: &Ctx) -> Option<Option<String>> {
        if self.asked.iter().any(|q| !dns.has(q)) {
            return None;
        }
        let mut refusal = None;
        for (q, list) in self.asked.iter().zip(cx.config().smtp.dnsbl.iter()) {
            let reply = dns.take(q).unwrap_or_else(|| Reply::Failed("lost".into()));
            match dnsbl::classify(&reply, &list.codes) {
                dnsbl::Verdict::NotListed => {}
                dnsbl::Verdict::Listed(code) => {
                    info!(
                        "mailauth client=[{}] dnsbl={} listed ({code}): refused",
                        self.ip, list.zone
                    );
                    if refusal.is_none() {
                        refusal = Some(format!(
                            "Service unavailable; client [{}] blocked using {}",
                            self.ip, list.zone
                        ));
                    }
                }
                dnsbl::Verdict::Error(why) => warn!(
                    "mailauth client=[{}] dnsbl={} error, not a listing: {why}",
                    self.ip, list.zone
                ),
            }
        }
        if refusal.is_none() {
            info!("mailauth client=[{}] dnsbl: not listed", self.ip);
        }
        Some(refusal)
    }
}

/// What a worker read from the message: the DKIM verifier over the whole
/// of it, the From domain, and the body handed back for delivery.
pub struct Hashed {
    pub tx: Transaction,
    pub spooled: Option<Spooled>,
    pub verifier: Verifier,
    pub from: Result<String, String>,
    /// Filled by the second job, once the keys came.
    pub results: Option<Vec<SignatureOutcome>>,
}

/// First job: finish the spool, hash the message, find the From domain.
/// Err: the reply when the spool could not be written.
pub fn hash_job(ready: Ready) -> Result<Box<Hashed>, DeliveryOutcome> {
    let now = unix_now();
    let mut verifier = Verifier::new(now);
    let mut header = HeaderGrab::default();
    let (tx, spooled) = match ready {
        Ready::Memory(tx) => {
            verifier.feed(&tx.data);
            header.feed(&tx.data);
            (tx, None)
        }
        Ready::Spool { tx, writer, tail } => {
            let spooled = super::body::finish_spool(writer, &tail).map_err(|e| {
                crate::delivery::refusal(&crate::store::deliver::DeliveryError::from_io(&e))
            })?;
            let mut buf = vec![0u8; READ_CHUNK];
            let mut offset = 0u64;
            loop {
                match spooled.read_at(&mut buf, offset) {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = buf.get(..n).unwrap_or_default();
                        verifier.feed(chunk);
                        header.feed(chunk);
                        offset += n as u64;
                    }
                    Err(e) => {
                        log::error!("mailauth: cannot read the spooled message: {e}");
                        spooled.remove();
                        return Err(crate::delivery::refusal(
                            &crate::store::deliver::DeliveryError::from_io(&e),
                        ));
                    }
                }
            }
            (tx, Some(spooled))
        }
        Ready::Refuse(outcome) => return Err(outcome),
    };
    verifier.finish_body();
    Ok(Box::new(Hashed {
        tx,
        spooled,
        verifier,
        from: header.sender_domain(),
        results: None,
    }))
}

/// Second job: the signature checks, with every key answered.
pub fn verify_job(mut h: Box<Hashed>) -> Box<Hashed> {
    h.results = Some(h.verifier.results());
    h
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where one message's checks are.
pub enum Stage {
    /// SPF over DNS; the hash job on a worker.
    Running,
    /// The signature checks on a worker.
    Verifying,
}

/// One message's checks: SPF while the body is hashed, then DKIM keys,
/// the signature checks, DMARC.
pub struct Check {
    peer: IpAddr,
    spf: SpfCheck,
    spf_done: Option<SpfOutcome>,
    hashed: Option<Box<Hashed>>,
    hash_error: Option<DeliveryOutcome>,
    keys_done: bool,
    verifying: bool,
    dmarc: Option<DmarcCheck>,
    dmarc_done: Option<Option<DmarcOutcome>>,
    questions: usize,
}

/// The end of the checks.
pub enum Verdict {
    /// Reply now (the message, if any, is removed by the caller).
    Refuse(DeliveryOutcome, Option<Box<Hashed>>),
    /// Deliver, with these headers, to the INBOX or the Junk folder.
    Deliver(Box<Hashed>, crate::delivery::Checked),
}

impl Check {
    pub fn new(tx: &Transaction) -> Check {
        Check {
            peer: tx.peer,
            spf: SpfCheck::new(tx.peer, &tx.reverse_path, &tx.helo),
            spf_done: None,
            hashed: None,
            hash_error: None,
            keys_done: false,
            verifying: false,
            dmarc: None,
            dmarc_done: None,
            questions: 0,
        }
    }

    /// The hash job came back.
    pub fn hashed(&mut self, result: Result<Box<Hashed>, DeliveryOutcome>) {
        match result {
            Ok(h) => self.hashed = Some(h),
            Err(o) => self.hash_error = Some(o),
        }
    }

    /// No worker job of these checks is in flight.
    pub fn idle(&self) -> bool {
        !self.verifying && (self.hashed.is_some() || self.hash_error.is_some())
    }

    /// The connection is gone: the spooled message held here, if any (a
    /// job in flight hands its own back to the driver).
    pub fn take_spooled(&mut self) -> Option<Spooled> {
        self.hashed.take().and_then(|h| h.spooled)
    }

    /// The verify job came back.
    pub fn verified(&mut self, h: Box<Hashed>) {
        self.verifying = false;
        self.hashed = Some(h);
    }

    /// Asks `q`, or takes its answer: Some when it is there.
    fn get(&mut self, q: &Query, dns: &mut DnsSet, cx: &mut Ctx) -> Option<Reply> {
        if let Some(r) = dns.take(q) {
            return Some(r);
        }
        if self.questions >= MAX_QUESTIONS {
            return Some(Reply::Failed(format!(
                "more than {MAX_QUESTIONS} questions"
            )));
        }
        self.questions += 1;
        if dns.ask(q, cx) {
            dns.take(q)
        } else {
            None
        }
    }

    /// Moves on with what came; the verdict once everything is known, or
    /// Err(hashed) when the verify job is to be started now.
    pub fn advance(&mut self, dns: &mut DnsSet, cx: &mut Ctx) -> Progress {
        while self.spf_done.is_none() {
            match self.spf.step() {
                SpfStep::Done(o) => self.spf_done = Some(o),
                SpfStep::Query(q) => match self.get(&q, dns, cx) {
                    Some(r) => self.spf.answer(&q, r),
                    None => break,
                },
            }
        }
        if let Some(o) = self.hash_error.take() {
            return Progress::Done(Verdict::Refuse(o, None));
        }
        if self.verifying {
            return Progress::Waiting;
        }
        let Some(mut h) = self.hashed.take() else {
            return Progress::Waiting;
        };
        if !self.keys_done && h.verifier.step() == VerifyStep::Done {
            // No signature needs a key: nothing to verify (the verdicts
            // are already known, without any crypto): no worker trip.
            self.keys_done = true;
            h.results = Some(h.verifier.results());
        }
        if !self.keys_done {
            let mut waiting = false;
            for _ in 0..MAX_QUESTIONS {
                if h.verifier.step() == VerifyStep::Done {
                    break;
                }
                for q in h.verifier.queries() {
                    match self.get(&q, dns, cx) {
                        Some(r) => h.verifier.answer(&q, r),
                        None => waiting = true,
                    }
                }
                if waiting {
                    break;
                }
            }
            if waiting {
                self.hashed = Some(h);
                return Progress::Waiting;
            }
            self.keys_done = true;
            self.verifying = true;
            return Progress::Verify(h);
        }
        let Some(spf) = self.spf_done.clone() else {
            self.hashed = Some(h);
            return Progress::Waiting;
        };
        let dkim = h.results.clone().unwrap_or_default();
        if self.dmarc.is_none() && self.dmarc_done.is_none() {
            match &h.from {
                Ok(domain) => {
                    let auth = Authenticated {
                        spf_pass: (spf.result == SpfResult::Pass).then(|| spf.domain.clone()),
                        dkim_pass: dkim
                            .iter()
                            .filter(|o| o.result == DkimResult::Pass)
                            .map(|o| o.domain.clone())
                            .collect(),
                    };
                    let sample = (cx.sv.mailauth.seed() % 100) as u8;
                    self.dmarc = Some(DmarcCheck::new(domain, auth, sample));
                }
                Err(why) => {
                    info!("mailauth client=[{}]: no DMARC check: {why}", self.peer);
                    self.dmarc_done = Some(None);
                }
            }
        }
        if let Some(check) = self.dmarc.as_mut() {
            loop {
                match check.step() {
                    DmarcStep::Done(o) => {
                        self.dmarc_done = Some(Some(o));
                        break;
                    }
                    DmarcStep::Query(q) => {
                        let got = if let Some(r) = dns.take(&q) {
                            Some(r)
                        } else if self.questions >= MAX_QUESTIONS {
                            Some(Reply::Failed("too many questions".into()))
                        } else {
                            self.questions += 1;
                            if dns.ask(&q, cx) {
                                dns.take(&q)
                            } else {
                                None
                            }
                        };
                        match got {
                            Some(r) => check.answer(&q, r),
                            None => {
                                self.hashed = Some(h);
                                return Progress::Waiting;
                            }
                        }
                    }
                }
            }
            self.dmarc = None;
        }
        let dmarc = self.dmarc_done.clone().flatten();
        Progress::Done(decide(cx, h, &spf, &dkim, dmarc.as_ref()))
    }
}

/// What `Check::advance` came to.
pub enum Progress {
    Waiting,
    /// Run `verify_job` on this and hand it back with `Check::verified`.
    Verify(Box<Hashed>),
    Done(Verdict),
}

/// Greylisting, then the DMARC policy; one log line.
fn decide(
    cx: &mut Ctx,
    h: Box<Hashed>,
    spf: &SpfOutcome,
    dkim: &[SignatureOutcome],
    dmarc: Option<&DmarcOutcome>,
) -> Verdict {
    let config = std::sync::Arc::clone(cx.config());
    let tx = &h.tx;
    // A message may carry hundreds of signatures; the header and the log
    // line name the first few (the ones checked), and count the rest.
    let shown = dkim
        .get(..dkim.len().min(MAX_SHOWN_SIGNATURES))
        .unwrap_or(dkim);
    let header =
        crate::mailauth::auth_results::header(&config.server.hostname, Some(spf), shown, dmarc);
    let dkim_text = if dkim.is_empty() {
        "none".to_string()
    } else {
        let mut t = shown
            .iter()
            .map(|o| format!("{}({}:{})", o.result, o.domain, o.reason))
            .collect::<Vec<_>>()
            .join(",");
        if dkim.len() > shown.len() {
            t.push_str(&format!(",+{} more not shown", dkim.len() - shown.len()));
        }
        t
    };
    let dmarc_text = dmarc.map_or("none".to_string(), |d| {
        format!(
            "{}({} {}: {})",
            d.result,
            d.from_domain,
            d.disposition.as_str(),
            d.reason
        )
    });
    let summary = format!(
        "mailauth client=[{}] from=<{}> spf={}({}: {}) dkim={dkim_text} dmarc={dmarc_text}",
        tx.peer, tx.reverse_path, spf.result, spf.domain, spf.reason
    );
    // Greylisting.
    if config.smtp.greylist {
        let now = unix_now();
        let spf_domain = (spf.result == SpfResult::Pass).then_some(spf.domain.as_str());
        let delay = config.smtp.greylist_delay.as_secs();
        let shared = &mut cx.sv.mailauth;
        let table = shared.greylist.get_or_insert_with(|| Greylist::new(delay));
        let mut defer = None;
        let mut news = false;
        for r in &tx.recipients {
            match table.check(now, tx.peer, &tx.reverse_path, &r.address, spf_domain) {
                Decision::Defer { retry_in } => {
                    news = true;
                    defer = Some(defer.map_or(retry_in, |d: u64| d.max(retry_in)));
                }
                Decision::Pass(why) => {
                    news |= why == "retried after the delay";
                }
            }
        }
        save_greylist(cx, news);
        if let Some(retry_in) = defer {
            info!("{summary} action=greylisted (retry in {retry_in}s)");
            return Verdict::Refuse(
                DeliveryOutcome::TempFail {
                    code: 451,
                    enhanced: "4.7.1",
                    text: format!("Greylisted, please try again in {retry_in} seconds"),
                },
                Some(h),
            );
        }
    }
    let mut junk = false;
    if let Some(d) = dmarc {
        match d.result {
            DmarcResult::TempError => {
                info!("{summary} action=deferred (DMARC policy unknown)");
                return Verdict::Refuse(
                    DeliveryOutcome::TempFail {
                        code: 451,
                        enhanced: "4.4.3",
                        text: "DMARC policy lookup failed, please try again later".into(),
                    },
                    Some(h),
                );
            }
            DmarcResult::Fail => match (d.disposition, config.smtp.dmarc) {
                (Policy::Reject, crate::config::DmarcAction::Reject) => {
                    info!("{summary} action=rejected");
                    return Verdict::Refuse(
                        DeliveryOutcome::PermFail {
                            code: 550,
                            enhanced: "5.7.1",
                            text: format!(
                                "Message rejected: DMARC policy of {} (p=reject)",
                                d.from_domain
                            ),
                        },
                        Some(h),
                    );
                }
                (Policy::None, _) | (_, crate::config::DmarcAction::Tag) => {}
                _ => junk = true,
            },
            _ => {}
        }
    }
    info!(
        "{summary} action={}",
        if junk { "quarantined" } else { "delivered" }
    );
    Verdict::Deliver(
        h,
        crate::delivery::Checked {
            headers: header,
            junk,
        },
    )
}

/// Writes the greylist table on a worker when it changed: at once for
/// `news` (a new triplet, a pass), else at most every minute.
fn save_greylist(cx: &mut Ctx, news: bool) {
    let now = cx.now;
    let shared = &mut cx.sv.mailauth;
    let Some(table) = shared.greylist.as_mut() else {
        return;
    };
    let recent = shared
        .saved_at
        .is_some_and(|t| now.saturating_duration_since(t) < GREYLIST_SAVE_EVERY);
    if !table.is_dirty() || (recent && !news) {
        return;
    }
    let text = table.to_text();
    table.mark_clean();
    shared.saved_at = Some(now);
    shared.saves += 1;
    let generation = shared.saves;
    let written = Arc::clone(&shared.written);
    let path = shared.data_dir.join(GREYLIST_FILE);
    let tmp = shared
        .data_dir
        .join(format!(".{GREYLIST_FILE}.{}.tmp", shared.saves));
    cx.submit(move || {
        let mut last = match written.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *last < generation {
            match crate::store::durable::write_durable(&tmp, &path, &[text.as_bytes()]) {
                Ok(()) => *last = generation,
                Err(e) => {
                    log::error!("cannot save {}: {e}", path.display());
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
        super::Outcome::Nothing
    });
}

/// Whether the MX checks apply to a message from `peer` on `kind`.
pub fn applies(config: &Config, kind: super::ListenerKind, tx: &Transaction) -> bool {
    config.smtp.mail_auth
        && kind == super::ListenerKind::SmtpMx
        && tx.auth_user.is_none()
        && !config.relay_allowed(tx.peer)
}

/// Whether the DNSBL check applies to a client at connect.
pub fn dnsbl_applies(config: &Config, kind: super::ListenerKind, peer: IpAddr) -> bool {
    config.smtp.mail_auth
        && kind == super::ListenerKind::SmtpMx
        && !config.smtp.dnsbl.is_empty()
        && !config.relay_allowed(peer)
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Hashed>();
    let _: Option<SocketAddr> = None;
}
