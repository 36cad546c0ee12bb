//! `FaultyTransport`: a party's transport to the coordinators with the
//! faults its plan decides. Every party of a run shares one `Faults`: the
//! plan, the clock the coordinators read, the record of what was injected
//! (printed with the seed when a run fails, so it replays) and the
//! `Ledger` of the leases the parties were answered.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use coordinator_client::{Connection, Transport, TransportError};
use proto_schema::coordinator_api::{Reply, Request};
use tokio::sync::watch;

use crate::clock::JumpClock;
use crate::kind::Kind;
use crate::ledger::Ledger;
use crate::plan::{Disruption, Fault, FaultPlan};

/// One fault injected.
#[derive(Debug, Clone)]
pub struct Event {
    /// Since the run's `Faults` were made.
    pub at: Duration,
    pub party: String,
    pub kind: Kind,
    /// The party's request of that kind it hit (from 1).
    pub nth: u64,
    pub what: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{:>6}ms {} {} #{}: {}",
            self.at.as_millis(),
            self.party,
            self.kind,
            self.nth,
            self.what
        )
    }
}

/// Most events kept (the count goes on): a report stays readable.
pub const MAX_EVENTS: usize = 2000;

/// What every party of one run shares.
pub struct Faults {
    plan: FaultPlan,
    clock: JumpClock,
    started: Instant,
    parties: Mutex<HashMap<String, Arc<Party>>>,
    events: Mutex<(Vec<Event>, u64)>,
    tally: Mutex<BTreeMap<&'static str, u64>>,
    ledger: Ledger,
    cluster: OnceLock<ClusterHook>,
}

/// Acts a disruption on the coordinators themselves (`IsolateLeader`),
/// which a party's transport cannot; called inside the request's runtime.
/// Returns what it did, for the record.
pub type ClusterHook = Box<dyn Fn(Disruption) -> String + Send + Sync>;

/// One party's state: its count of requests per kind, whether it is cut
/// off, and how many times it was killed.
struct Party {
    name: String,
    counts: Mutex<HashMap<Kind, u64>>,
    cut_until: Mutex<Option<Instant>>,
    kills: watch::Sender<u32>,
}

impl Faults {
    /// Faults by `plan`; `clock` is what the coordinators read (a clock
    /// jump moves it).
    pub fn new(plan: FaultPlan, clock: JumpClock) -> Arc<Self> {
        Arc::new(Self {
            plan,
            clock,
            started: Instant::now(),
            parties: Mutex::default(),
            events: Mutex::default(),
            tally: Mutex::default(),
            ledger: Ledger::default(),
            cluster: OnceLock::new(),
        })
    }

    /// Sets what acts the disruptions on the coordinators (once; a
    /// disruption without a hook is recorded as not acted).
    pub fn on_cluster(&self, hook: ClusterHook) {
        if self.cluster.set(hook).is_err() {
            panic!("a run has one cluster hook");
        }
    }

    /// `inner` as `party` sees it, from its process as it runs now: once
    /// the party is killed, every request through it fails at once.
    pub fn transport<T: Transport>(self: &Arc<Self>, inner: T, party: &str) -> FaultyTransport<T> {
        let party = self.party(party);
        let life = *party.kills.borrow();
        FaultyTransport {
            inner,
            faults: self.clone(),
            party,
            life,
        }
    }

    /// Counts the times `party` was killed: the party's runner stops its
    /// work (and starts it again, as a restarted process would, with new
    /// transports) when it changes. A killed process's calls never return:
    /// its transports made before the kill fail every request at once
    /// (`TransportError::BadReply`, which no client retries), so nothing of
    /// it lingers on, leasing and heartbeating, as it could in process.
    pub fn kills(&self, party: &str) -> watch::Receiver<u32> {
        self.party(party).kills.subscribe()
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    pub fn clock(&self) -> &JumpClock {
        &self.clock
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The faults injected so far, in order (at most `MAX_EVENTS`).
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("not poisoned").0.clone()
    }

    /// How many faults of each kind were injected (`Fault::name`,
    /// `Disruption::name`).
    pub fn tally(&self) -> BTreeMap<&'static str, u64> {
        self.tally.lock().expect("not poisoned").clone()
    }

    /// The plan and what it injected: what a failing seed prints.
    pub fn report(&self) -> String {
        let (events, count) = {
            let events = self.events.lock().expect("not poisoned");
            (events.0.clone(), events.1)
        };
        let mut report = self.plan.to_string();
        report.push_str(&format!("{count} faults injected:\n"));
        for event in &events {
            report.push_str(&format!("  {event}\n"));
        }
        if count > events.len() as u64 {
            report.push_str(&format!("  ... and {} more\n", count - events.len() as u64));
        }
        report
    }

    fn party(&self, name: &str) -> Arc<Party> {
        let mut parties = self.parties.lock().expect("not poisoned");
        parties
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Party {
                    name: name.to_owned(),
                    counts: Mutex::default(),
                    cut_until: Mutex::default(),
                    kills: watch::channel(0).0,
                })
            })
            .clone()
    }

    fn record(
        &self,
        party: &Party,
        kind: Kind,
        nth: u64,
        name: &'static str,
        what: impl fmt::Display,
    ) {
        *self
            .tally
            .lock()
            .expect("not poisoned")
            .entry(name)
            .or_default() += 1;
        let mut events = self.events.lock().expect("not poisoned");
        events.1 += 1;
        if events.0.len() < MAX_EVENTS {
            events.0.push(Event {
                at: self.started.elapsed(),
                party: party.name.clone(),
                kind,
                nth,
                what: what.to_string(),
            });
        }
    }
}

impl Party {
    fn next(&self, kind: Kind) -> u64 {
        let mut counts = self.counts.lock().expect("not poisoned");
        let count = counts.entry(kind).or_default();
        *count += 1;
        *count
    }

    /// Whether the process of `life` (the kills before it) was killed.
    fn is_dead(&self, life: u32) -> bool {
        *self.kills.borrow() > life
    }

    fn is_cut(&self) -> bool {
        let mut cut = self.cut_until.lock().expect("not poisoned");
        match *cut {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *cut = None;
                false
            }
            None => false,
        }
    }

    fn cut_for(&self, length: Duration) {
        *self.cut_until.lock().expect("not poisoned") = Some(Instant::now() + length);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("injected: {0}")]
struct Injected(String);

fn injected(what: impl fmt::Display) -> Box<Injected> {
    Box::new(Injected(what.to_string()))
}

/// A party's transport: `inner` with the faults of the party's plan.
pub struct FaultyTransport<T> {
    inner: T,
    faults: Arc<Faults>,
    party: Arc<Party>,
    /// The party's kills before this transport was made.
    life: u32,
}

impl<T: Transport> Transport for FaultyTransport<T> {
    type Connection = FaultyConnection<T::Connection>;

    async fn connect(&self, address: &str) -> Result<Self::Connection, TransportError> {
        if self.party.is_dead(self.life) {
            return Err(killed(&self.party));
        }
        if self.party.is_cut() {
            return Err(TransportError::NotSent(injected(format!(
                "{} is cut off from the coordinators",
                self.party.name
            ))));
        }
        Ok(FaultyConnection {
            inner: self.inner.connect(address).await?,
            faults: self.faults.clone(),
            party: self.party.clone(),
            life: self.life,
        })
    }
}

#[derive(Clone)]
pub struct FaultyConnection<C> {
    inner: C,
    faults: Arc<Faults>,
    party: Arc<Party>,
    life: u32,
}

fn killed(party: &Party) -> TransportError {
    TransportError::BadReply(injected(format!(
        "{}'s process was killed: its connections are gone",
        party.name
    )))
}

impl<C: Connection> FaultyConnection<C> {
    /// Served by the coordinator, and noted in the ledger.
    async fn serve(&self, request: &Request) -> Result<Reply, TransportError> {
        let reply = self.inner.request(request).await?;
        self.faults.ledger.observe(request, &reply);
        Ok(reply)
    }

    fn cut_off(&self) -> TransportError {
        TransportError::NotSent(injected(format!(
            "{} is cut off from the coordinators",
            self.party.name
        )))
    }
}

impl<C: Connection> Connection for FaultyConnection<C> {
    async fn request(&self, request: &Request) -> Result<Reply, TransportError> {
        let kind = Kind::of(request);
        if kind == Kind::Raft {
            return self.inner.request(request).await;
        }
        let (faults, party) = (&self.faults, &self.party);
        if party.is_dead(self.life) {
            return Err(killed(party));
        }
        let nth = party.next(kind);
        if let Some(disruption) = faults.plan.disruption(&party.name, kind, nth) {
            let acted = match (disruption, faults.cluster.get()) {
                (Disruption::IsolateLeader(_), Some(hook)) => format!(": {}", hook(disruption)),
                (Disruption::IsolateLeader(_), None) => ": no cluster hook, not acted".into(),
                _ => String::new(),
            };
            let what = format!("{disruption}{acted}");
            faults.record(party, kind, nth, disruption.name(), what);
            match disruption {
                Disruption::Partition(length) => {
                    party.cut_for(length);
                    return Err(self.cut_off());
                }
                Disruption::Kill => {
                    party.kills.send_modify(|kills| *kills += 1);
                }
                Disruption::ClockJump(length) => faults.clock.jump(length.as_millis() as u64),
                Disruption::LostReply => {
                    self.serve(request).await?;
                    return Err(TransportError::Interrupted(injected(disruption)));
                }
                Disruption::IsolateLeader(_) => {}
            }
        }
        if party.is_cut() {
            return Err(self.cut_off());
        }
        let mut reply = None;
        for fault in faults.plan.decide(&party.name, kind, nth) {
            faults.record(party, kind, nth, fault.name(), fault);
            match fault {
                Fault::DropRequest => return Err(TransportError::NotSent(injected(fault))),
                Fault::Delay(length) => tokio::time::sleep(length).await,
                Fault::DropReply => {
                    self.serve(request).await?;
                    return Err(TransportError::Interrupted(injected(fault)));
                }
                Fault::Duplicate => {
                    self.serve(request).await?;
                }
                Fault::Late(length) => {
                    let (late, copy) = (self.clone(), request.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(length).await;
                        let _ = late.serve(&copy).await;
                    });
                    reply = Some(self.serve(request).await?);
                }
            }
        }
        match reply {
            Some(reply) => Ok(reply),
            None => self.serve(request).await,
        }
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use proto_schema::coordinator_api::HeartbeatReply;
    use proto_schema::ids::NodeId;

    use super::*;
    use crate::plan::{PartyPlan, Rates, Scheduled};

    /// A coordinator that answers every request and counts them by kind.
    #[derive(Clone, Default)]
    struct Counting(Arc<Mutex<Vec<Kind>>>);

    impl Counting {
        fn served(&self) -> Vec<Kind> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Transport for Counting {
        type Connection = Counting;

        async fn connect(&self, _address: &str) -> Result<Counting, TransportError> {
            Ok(self.clone())
        }
    }

    impl Connection for Counting {
        async fn request(&self, request: &Request) -> Result<Reply, TransportError> {
            self.0.lock().unwrap().push(Kind::of(request));
            Ok(Reply::Heartbeat(HeartbeatReply::Unknown))
        }

        fn is_closed(&self) -> bool {
            false
        }
    }

    const HEARTBEAT: Request = Request::Heartbeat {
        node: NodeId(1),
        incarnation: 1,
        progress: Vec::new(),
        memory_bytes: None,
    };

    fn lease() -> Request {
        Request::Lease {
            node: NodeId(1),
            max: 1,
            job: None,
            map_epoch: None,
        }
    }

    /// A run whose one party, "n", has `rates` and `disruptions`.
    fn run(
        rates: Rates,
        disruptions: Vec<Scheduled>,
    ) -> (Arc<Faults>, Counting, FaultyConnection<Counting>) {
        let mut plan = FaultPlan::new(1);
        plan.parties
            .insert("n".into(), PartyPlan { rates, disruptions });
        let faults = Faults::new(plan, JumpClock::default());
        let inner = Counting::default();
        let connection = FaultyConnection {
            inner: inner.clone(),
            faults: faults.clone(),
            party: faults.party("n"),
            life: 0,
        };
        (faults, inner, connection)
    }

    fn at(at: Kind, nth: u64, what: Disruption) -> Vec<Scheduled> {
        vec![Scheduled { at, nth, what }]
    }

    #[tokio::test]
    async fn a_dropped_request_is_not_served_and_a_dropped_reply_is() {
        let drop_request = Rates {
            drop_request: 1.0,
            ..Rates::NONE
        };
        let (_, inner, connection) = run(drop_request, Vec::new());
        let sent = connection.request(&HEARTBEAT).await;
        assert!(matches!(sent, Err(TransportError::NotSent(_))), "{sent:?}");
        assert_eq!(inner.served(), []);

        let drop_reply = Rates {
            drop_reply: 1.0,
            ..Rates::NONE
        };
        let (faults, inner, connection) = run(drop_reply, Vec::new());
        let sent = connection.request(&HEARTBEAT).await;
        assert!(
            matches!(sent, Err(TransportError::Interrupted(_))),
            "{sent:?}"
        );
        assert_eq!(inner.served(), [Kind::Heartbeat]);
        // A lease is never answered lost by the rates: the client would
        // not send it again.
        assert!(connection.request(&lease()).await.is_ok());
        assert!(
            faults
                .report()
                .contains("n Heartbeat #1: served, reply dropped")
        );
    }

    #[tokio::test]
    async fn a_duplicate_is_served_twice_and_a_late_copy_again_later() {
        let duplicate = Rates {
            duplicate: 1.0,
            ..Rates::NONE
        };
        let (_, inner, connection) = run(duplicate, Vec::new());
        assert!(connection.request(&HEARTBEAT).await.is_ok());
        assert_eq!(inner.served(), [Kind::Heartbeat, Kind::Heartbeat]);

        let late = Rates {
            late: 1.0,
            max_late: Duration::from_millis(30),
            ..Rates::NONE
        };
        let (_, inner, connection) = run(late, Vec::new());
        assert!(connection.request(&HEARTBEAT).await.is_ok());
        assert_eq!(inner.served(), [Kind::Heartbeat]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(inner.served(), [Kind::Heartbeat, Kind::Heartbeat]);
    }

    #[tokio::test]
    async fn a_party_cut_off_reaches_nothing_until_the_partition_ends() {
        let length = Duration::from_millis(150);
        let (faults, inner, connection) = run(
            Rates::NONE,
            at(Kind::Heartbeat, 2, Disruption::Partition(length)),
        );
        assert!(connection.request(&HEARTBEAT).await.is_ok());
        let started = Instant::now();
        assert!(connection.request(&HEARTBEAT).await.is_err());
        assert!(connection.request(&lease()).await.is_err());
        let transport = faults.transport(inner.clone(), "n");
        assert!(transport.connect("any").await.is_err());
        assert_eq!(inner.served(), [Kind::Heartbeat]);
        tokio::time::sleep(length.saturating_sub(started.elapsed())).await;
        assert!(connection.request(&lease()).await.is_ok());
        assert!(transport.connect("any").await.is_ok());
        assert_eq!(inner.served(), [Kind::Heartbeat, Kind::Lease]);
    }

    #[tokio::test]
    async fn disruptions_kill_jump_the_clock_lose_a_lease_and_reach_the_cluster() {
        let mut disruptions = at(Kind::Heartbeat, 1, Disruption::Kill);
        disruptions.extend(at(
            Kind::Heartbeat,
            2,
            Disruption::ClockJump(Duration::from_secs(60)),
        ));
        disruptions.extend(at(Kind::Lease, 1, Disruption::LostReply));
        disruptions.extend(at(
            Kind::Lease,
            2,
            Disruption::IsolateLeader(Duration::from_secs(1)),
        ));
        let (faults, inner, connection) = run(Rates::NONE, disruptions);
        let hooked = Arc::new(Mutex::new(Vec::new()));
        let seen = hooked.clone();
        faults.on_cluster(Box::new(move |d| {
            seen.lock().unwrap().push(d);
            "acted".into()
        }));
        let mut kills = faults.kills("n");
        assert!(connection.request(&HEARTBEAT).await.is_ok());
        assert!(kills.has_changed().unwrap());
        assert_eq!(*kills.borrow_and_update(), 1);
        // The killed process's calls fail at once; the restarted one's go.
        let dead = connection.request(&HEARTBEAT).await;
        assert!(matches!(dead, Err(TransportError::BadReply(_))), "{dead:?}");
        let restarted = faults.transport(inner.clone(), "n");
        let connection = restarted.connect("any").await.unwrap();
        assert!(connection.request(&HEARTBEAT).await.is_ok());
        assert_eq!(faults.clock().offset_ms(), 60_000);
        let lost = connection.request(&lease()).await;
        assert!(
            matches!(lost, Err(TransportError::Interrupted(_))),
            "{lost:?}"
        );
        assert!(connection.request(&lease()).await.is_ok());
        assert_eq!(
            *hooked.lock().unwrap(),
            [Disruption::IsolateLeader(Duration::from_secs(1))]
        );
        assert_eq!(
            inner.served(),
            [Kind::Heartbeat, Kind::Heartbeat, Kind::Lease, Kind::Lease]
        );
        let report = faults.report();
        assert!(
            report.contains("the leader is cut off for 1s: acted"),
            "{report}"
        );
        assert_eq!(faults.events().len(), 4);
        let tally = faults.tally();
        assert_eq!(
            tally.into_iter().collect::<Vec<_>>(),
            [
                ("clock jump", 1),
                ("kill", 1),
                ("leader cut off", 1),
                ("lost reply to a lease", 1)
            ]
        );
    }
}
