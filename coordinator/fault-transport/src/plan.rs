//! What goes wrong, decided by a seed. Each party (a node, a submitter)
//! has its own rates of per-request faults and a short list of
//! disruptions at chosen requests. A decision depends only on the seed,
//! the party, the request's kind and how many requests of that kind the
//! party sent before it, never on timing or on other parties: the same
//! seed puts the same faults on the same requests however the threads
//! interleave (what the cluster then does with them may still vary).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::kind::Kind;

/// How often each per-request fault happens to a party's requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Not delivered (the client tries again).
    pub drop_request: f64,
    /// Held back before it is served, for up to `max_delay`.
    pub delay: f64,
    pub max_delay: Duration,
    /// Of a repeatable request: served, its reply lost (the client sends
    /// it again).
    pub drop_reply: f64,
    /// Of a repeatable request: served twice.
    pub duplicate: f64,
    /// Of a repeatable request: served, and a copy of it served again up
    /// to `max_late` later, after the requests that follow it (a
    /// straggler from an earlier connection).
    pub late: f64,
    pub max_late: Duration,
}

impl Rates {
    pub const NONE: Rates = Rates {
        drop_request: 0.0,
        delay: 0.0,
        max_delay: Duration::ZERO,
        drop_reply: 0.0,
        duplicate: 0.0,
        late: 0.0,
        max_late: Duration::ZERO,
    };
}

/// A per-request fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    DropRequest,
    Delay(Duration),
    DropReply,
    Duplicate,
    Late(Duration),
}

impl Fault {
    /// What kind of fault, for tallies.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::DropRequest => "request dropped",
            Fault::Delay(_) => "delayed",
            Fault::DropReply => "reply dropped",
            Fault::Duplicate => "served twice",
            Fault::Late(_) => "late copy",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::DropRequest => write!(f, "request dropped"),
            Fault::Delay(d) => write!(f, "delayed {d:?}"),
            Fault::DropReply => write!(f, "served, reply dropped"),
            Fault::Duplicate => write!(f, "served twice"),
            Fault::Late(d) => write!(f, "served, and a copy served again {d:?} later"),
        }
    }
}

/// A fault that changes the course of a job, at most a few per party.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruption {
    /// The party is cut off from every coordinator for this long, from
    /// this request on (its requests are not delivered).
    Partition(Duration),
    /// The party's process is killed (`Faults::kills` fires); the request
    /// goes on.
    Kill,
    /// The coordinators' clock jumps this far ahead.
    ClockJump(Duration),
    /// Served, and its reply lost, even if the client never resends it
    /// (a lease or a write: the caller's `Ambiguous`).
    LostReply,
    /// The coordinators' leader is cut off from its peers and every
    /// client for this long (acted by the run's cluster hook,
    /// `Faults::on_cluster`); the request goes on.
    IsolateLeader(Duration),
}

impl Disruption {
    /// What kind of disruption, for tallies.
    pub fn name(&self) -> &'static str {
        match self {
            Disruption::Partition(_) => "partition",
            Disruption::Kill => "kill",
            Disruption::ClockJump(_) => "clock jump",
            Disruption::LostReply => "lost reply to a lease",
            Disruption::IsolateLeader(_) => "leader cut off",
        }
    }
}

impl fmt::Display for Disruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disruption::Partition(d) => write!(f, "cut off from the coordinators for {d:?}"),
            Disruption::Kill => write!(f, "killed"),
            Disruption::ClockJump(d) => write!(f, "the coordinators' clock jumps {d:?} ahead"),
            Disruption::LostReply => write!(f, "served, reply lost"),
            Disruption::IsolateLeader(d) => write!(f, "the leader is cut off for {d:?}"),
        }
    }
}

/// A disruption at the party's `nth` request (from 1) of kind `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub at: Kind,
    pub nth: u64,
    pub what: Disruption,
}

/// One party's faults.
#[derive(Debug, Clone, PartialEq)]
pub struct PartyPlan {
    pub rates: Rates,
    pub disruptions: Vec<Scheduled>,
}

/// Every party's faults under one seed. A party not named has none.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    pub seed: u64,
    pub parties: BTreeMap<String, PartyPlan>,
}

impl FaultPlan {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            parties: BTreeMap::new(),
        }
    }

    /// A random stream for drawing `party`'s plan for `purpose`: the same
    /// for the same seed, independent of every other stream.
    pub fn rng(&self, party: &str, purpose: &str) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(mix(self.seed, &[party.as_bytes(), purpose.as_bytes()]))
    }

    /// The disruption at `party`'s `nth` request of `kind`, if any.
    pub fn disruption(&self, party: &str, kind: Kind, nth: u64) -> Option<Disruption> {
        let plan = self.parties.get(party)?;
        plan.disruptions
            .iter()
            .find(|d| d.at == kind && d.nth == nth)
            .map(|d| d.what)
    }

    /// The per-request faults of `party`'s `nth` request of `kind`, in the
    /// order they act: before it is served, then after.
    pub fn decide(&self, party: &str, kind: Kind, nth: u64) -> Vec<Fault> {
        let Some(plan) = self.parties.get(party) else {
            return Vec::new();
        };
        let rates = &plan.rates;
        let kind_name = kind.to_string();
        let mut rng = ChaCha8Rng::seed_from_u64(mix(
            self.seed,
            &[party.as_bytes(), kind_name.as_bytes(), &nth.to_le_bytes()],
        ));
        // Every draw is made whatever the earlier ones gave, so changing
        // one rate does not move the faults the others decide.
        let draws: [f64; 5] = std::array::from_fn(|_| rng.random());
        let delay = random_duration(&mut rng, rates.max_delay);
        let late = random_duration(&mut rng, rates.max_late);
        if draws[0] < rates.drop_request {
            return vec![Fault::DropRequest];
        }
        let mut faults = Vec::new();
        if draws[1] < rates.delay && !delay.is_zero() {
            faults.push(Fault::Delay(delay));
        }
        if kind.repeatable() {
            if draws[2] < rates.drop_reply {
                faults.push(Fault::DropReply);
            } else if draws[3] < rates.duplicate {
                faults.push(Fault::Duplicate);
            } else if draws[4] < rates.late && !late.is_zero() {
                faults.push(Fault::Late(late));
            }
        }
        faults
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fault plan of seed {}:", self.seed)?;
        for (party, plan) in &self.parties {
            let r = &plan.rates;
            writeln!(
                f,
                "  {party}: drop request {:.3}, delay {:.3} (up to {:?}), drop reply {:.3}, \
                 duplicate {:.3}, late copy {:.3} (up to {:?})",
                r.drop_request, r.delay, r.max_delay, r.drop_reply, r.duplicate, r.late, r.max_late
            )?;
            for d in &plan.disruptions {
                writeln!(f, "    at its {} #{}: {}", d.at, d.nth, d.what)?;
            }
        }
        Ok(())
    }
}

fn random_duration(rng: &mut ChaCha8Rng, max: Duration) -> Duration {
    let max_ms = max.as_millis() as u64;
    Duration::from_millis(if max_ms == 0 {
        0
    } else {
        rng.random_range(1..=max_ms)
    })
}

/// FNV-1a over the seed and the parts (each ended by its length), so
/// streams differ whenever any part does. Stable across platforms and
/// Rust versions, unlike std's hashers.
fn mix(seed: u64, parts: &[&[u8]]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    eat(&seed.to_le_bytes());
    for part in parts {
        eat(part);
        eat(&(part.len() as u64).to_le_bytes());
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64, rates: Rates) -> FaultPlan {
        let mut plan = FaultPlan::new(seed);
        plan.parties.insert(
            "node-1".into(),
            PartyPlan {
                rates,
                disruptions: vec![Scheduled {
                    at: Kind::Lease,
                    nth: 2,
                    what: Disruption::Kill,
                }],
            },
        );
        plan
    }

    const BUSY: Rates = Rates {
        drop_request: 0.1,
        delay: 0.3,
        max_delay: Duration::from_millis(50),
        drop_reply: 0.1,
        duplicate: 0.1,
        late: 0.1,
        max_late: Duration::from_millis(200),
    };

    #[test]
    fn a_seed_decides_the_same_faults_every_time() {
        let (a, b) = (plan(7, BUSY), plan(7, BUSY));
        let other = plan(8, BUSY);
        let mut differs = false;
        for nth in 1..200 {
            for kind in [Kind::Heartbeat, Kind::Lease, Kind::Complete] {
                assert_eq!(a.decide("node-1", kind, nth), b.decide("node-1", kind, nth));
                differs |= a.decide("node-1", kind, nth) != other.decide("node-1", kind, nth);
            }
        }
        assert!(differs, "another seed decides other faults");
        assert_eq!(
            a.disruption("node-1", Kind::Lease, 2),
            Some(Disruption::Kill)
        );
        assert_eq!(a.disruption("node-1", Kind::Lease, 3), None);
        assert_eq!(a.disruption("node-2", Kind::Lease, 2), None);
        assert!(
            a.decide("node-2", Kind::Lease, 1).is_empty(),
            "no plan, no faults"
        );
    }

    #[test]
    fn requests_the_client_never_resends_are_never_served_twice_or_lost_after() {
        let always = Rates {
            drop_request: 0.0,
            drop_reply: 1.0,
            duplicate: 1.0,
            late: 1.0,
            ..BUSY
        };
        let plan = plan(1, always);
        for nth in 1..100 {
            for kind in [Kind::Lease, Kind::Renew, Kind::Write] {
                let faults = plan.decide("node-1", kind, nth);
                assert!(
                    faults.iter().all(|f| matches!(f, Fault::Delay(_))),
                    "{kind} #{nth}: {faults:?}"
                );
            }
            let faults = plan.decide("node-1", Kind::Complete, nth);
            assert!(faults.contains(&Fault::DropReply), "{faults:?}");
        }
    }

    #[test]
    fn rates_come_out_near_their_values() {
        let plan = plan(3, BUSY);
        let n = 20_000;
        let dropped = (1..=n)
            .filter(|&nth| plan.decide("node-1", Kind::Heartbeat, nth) == [Fault::DropRequest])
            .count();
        let share = dropped as f64 / n as f64;
        assert!((0.08..0.12).contains(&share), "{share}");
        for nth in 1..=n {
            for fault in plan.decide("node-1", Kind::Heartbeat, nth) {
                match fault {
                    Fault::Delay(d) => assert!(d <= BUSY.max_delay && !d.is_zero()),
                    Fault::Late(d) => assert!(d <= BUSY.max_late && !d.is_zero()),
                    _ => {}
                }
            }
        }
    }
}
