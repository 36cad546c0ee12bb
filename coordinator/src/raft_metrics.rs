//! Raft's health as metrics, for alerts and dashboards: the term, whether
//! this replica leads and whether it knows a leader, leader changes, its
//! log and applied index, how far each follower lags (on the leader), and
//! the age of the leader's last quorum acknowledgement. Read from
//! openraft's metrics channel by one task per replica, which `Service`
//! stops and joins when it shuts down.

use std::collections::BTreeMap;

use openraft::{RaftMetrics, ServerState};
use tokio::task::JoinHandle;

use crate::{Member, Raft, ReplicaId};

/// Gauge: the replica's current Raft term.
pub const RAFT_TERM_METRIC: &str = "quern_raft_term";
/// Gauge: 1 on the leader, 0 elsewhere.
pub const RAFT_IS_LEADER_METRIC: &str = "quern_raft_is_leader";
/// Gauge: 1 while the replica knows a leader, 0 during an election.
pub const RAFT_HAS_LEADER_METRIC: &str = "quern_raft_has_leader";
/// Counter: times the leader this replica knows of changed (to another
/// replica or to none).
pub const RAFT_LEADER_CHANGES_METRIC: &str = "quern_raft_leader_changes_total";
/// Gauge: the index of the last entry in this replica's log.
pub const RAFT_LAST_LOG_INDEX_METRIC: &str = "quern_raft_last_log_index";
/// Gauge: the index of the last entry this replica applied.
pub const RAFT_APPLIED_INDEX_METRIC: &str = "quern_raft_applied_index";
/// Gauge, on the leader, per follower (label `peer`): entries of the
/// leader's log the follower has not matched yet.
pub const RAFT_REPLICATION_LAG_METRIC: &str = "quern_raft_replication_lag_entries";
/// Gauge, on the leader: seconds since a quorum last acknowledged it.
pub const RAFT_QUORUM_ACK_AGE_METRIC: &str = "quern_raft_quorum_ack_age_seconds";

/// Every metric this module records, for the catalogue checks of
/// dashboards and alert rules.
pub const METRICS: [&str; 8] = [
    RAFT_TERM_METRIC,
    RAFT_IS_LEADER_METRIC,
    RAFT_HAS_LEADER_METRIC,
    RAFT_LEADER_CHANGES_METRIC,
    RAFT_LAST_LOG_INDEX_METRIC,
    RAFT_APPLIED_INDEX_METRIC,
    RAFT_REPLICATION_LAG_METRIC,
    RAFT_QUORUM_ACK_AGE_METRIC,
];

/// Gives the metrics their help text; call once the recorder is installed.
pub fn describe_metrics() {
    metrics::describe_gauge!(RAFT_TERM_METRIC, "The replica's current Raft term.");
    metrics::describe_gauge!(RAFT_IS_LEADER_METRIC, "1 on the Raft leader, 0 elsewhere.");
    metrics::describe_gauge!(
        RAFT_HAS_LEADER_METRIC,
        "1 while the replica knows a leader, 0 during an election."
    );
    metrics::describe_counter!(
        RAFT_LEADER_CHANGES_METRIC,
        "Times the leader this replica knows of changed (to another replica or to none)."
    );
    metrics::describe_gauge!(
        RAFT_LAST_LOG_INDEX_METRIC,
        "Index of the last entry in the replica's Raft log."
    );
    metrics::describe_gauge!(
        RAFT_APPLIED_INDEX_METRIC,
        "Index of the last Raft entry the replica applied."
    );
    metrics::describe_gauge!(
        RAFT_REPLICATION_LAG_METRIC,
        "On the leader, per follower (label peer): log entries the follower has not matched."
    );
    metrics::describe_gauge!(
        RAFT_QUORUM_ACK_AGE_METRIC,
        metrics::Unit::Seconds,
        "On the leader: seconds since a quorum last acknowledged it."
    );
}

/// What one reading of openraft's metrics publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    pub term: u64,
    pub is_leader: bool,
    pub leader: Option<ReplicaId>,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Per follower, on the leader only.
    pub lag: BTreeMap<ReplicaId, u64>,
    pub quorum_ack_age_secs: Option<f64>,
}

impl Readings {
    pub fn of(m: &RaftMetrics<ReplicaId, Member>) -> Self {
        let last_log_index = m.last_log_index.unwrap_or(0);
        let lag = m
            .replication
            .iter()
            .flatten()
            .filter(|(peer, _)| **peer != m.id)
            .map(|(&peer, matched)| {
                let matched = matched.map_or(0, |log_id| log_id.index);
                (peer, last_log_index.saturating_sub(matched))
            })
            .collect();
        Self {
            term: m.current_term,
            is_leader: m.state == ServerState::Leader,
            leader: m.current_leader,
            last_log_index,
            applied_index: m.last_applied.map_or(0, |log_id| log_id.index),
            lag,
            quorum_ack_age_secs: m.millis_since_quorum_ack.map(|ms| ms as f64 / 1000.0),
        }
    }

    fn publish(&self, previous: Option<&Readings>) {
        metrics::gauge!(RAFT_TERM_METRIC).set(self.term as f64);
        metrics::gauge!(RAFT_IS_LEADER_METRIC).set(f64::from(u8::from(self.is_leader)));
        metrics::gauge!(RAFT_HAS_LEADER_METRIC).set(f64::from(u8::from(self.leader.is_some())));
        metrics::gauge!(RAFT_LAST_LOG_INDEX_METRIC).set(self.last_log_index as f64);
        metrics::gauge!(RAFT_APPLIED_INDEX_METRIC).set(self.applied_index as f64);
        // Counted from the first reading on, so the counter exists (at 0)
        // before anything changed.
        let changed = previous.is_some_and(|p| p.leader != self.leader);
        metrics::counter!(RAFT_LEADER_CHANGES_METRIC).increment(u64::from(changed));
        for (peer, lag) in &self.lag {
            metrics::gauge!(RAFT_REPLICATION_LAG_METRIC, "peer" => peer.to_string())
                .set(*lag as f64);
        }
        // A follower's lag is the leader's to report: zero what this
        // replica reported while it led.
        for peer in previous.iter().flat_map(|p| p.lag.keys()) {
            if !self.lag.contains_key(peer) {
                metrics::gauge!(RAFT_REPLICATION_LAG_METRIC, "peer" => peer.to_string()).set(0.0);
            }
        }
        metrics::gauge!(RAFT_QUORUM_ACK_AGE_METRIC).set(self.quorum_ack_age_secs.unwrap_or(0.0));
    }
}

/// The task publishing a replica's Raft metrics; stopped and joined by
/// `stop`.
pub struct RaftMetricsTask(JoinHandle<()>);

/// Publishes `raft`'s metrics at every change until the Raft stops.
pub fn publish(raft: &Raft) -> RaftMetricsTask {
    let mut changes = raft.metrics();
    RaftMetricsTask(tokio::spawn(async move {
        let mut previous: Option<Readings> = None;
        loop {
            let readings = Readings::of(&changes.borrow_and_update());
            readings.publish(previous.as_ref());
            previous = Some(readings);
            if changes.changed().await.is_err() {
                return; // the Raft is gone
            }
        }
    }))
}

impl RaftMetricsTask {
    pub async fn stop(self) {
        self.0.abort();
        let _ = self.0.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::{CommittedLeaderId, LogId, StoredMembership, Vote};

    use super::*;

    fn metrics(
        id: ReplicaId,
        state: ServerState,
        leader: Option<ReplicaId>,
    ) -> RaftMetrics<ReplicaId, Member> {
        RaftMetrics {
            running_state: Ok(()),
            id,
            current_term: 7,
            vote: Vote::new(7, id),
            last_log_index: Some(120),
            last_applied: Some(LogId::new(CommittedLeaderId::new(7, id), 118)),
            snapshot: None,
            purged: None,
            state,
            current_leader: leader,
            millis_since_quorum_ack: Some(1500),
            membership_config: Arc::new(StoredMembership::default()),
            replication: None,
        }
    }

    #[test]
    fn a_leader_reports_each_followers_lag_and_not_its_own() {
        let mut m = metrics(1, ServerState::Leader, Some(1));
        let at = |index| Some(LogId::new(CommittedLeaderId::new(7, 1), index));
        m.replication = Some(BTreeMap::from([(1, at(120)), (2, at(100)), (3, None)]));
        let r = Readings::of(&m);
        assert!(r.is_leader);
        assert_eq!(r.term, 7);
        assert_eq!((r.last_log_index, r.applied_index), (120, 118));
        assert_eq!(r.lag, BTreeMap::from([(2, 20), (3, 120)]));
        assert_eq!(r.quorum_ack_age_secs, Some(1.5));
    }

    #[test]
    fn leader_changes_are_counted_and_a_former_leaders_lag_is_zeroed() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut leading = metrics(1, ServerState::Leader, Some(1));
            let at = Some(LogId::new(CommittedLeaderId::new(7, 1), 100));
            leading.replication = Some(BTreeMap::from([(2, at)]));
            let first = Readings::of(&leading);
            first.publish(None);
            let text = handle.render();
            assert!(text.contains("quern_raft_leader_changes_total 0"), "{text}");
            assert!(
                text.contains("quern_raft_replication_lag_entries{peer=\"2\"} 20"),
                "{text}"
            );
            assert!(text.contains("quern_raft_is_leader 1"), "{text}");

            let deposed = Readings::of(&metrics(1, ServerState::Follower, None));
            deposed.publish(Some(&first));
            let text = handle.render();
            assert!(text.contains("quern_raft_leader_changes_total 1"), "{text}");
            assert!(
                text.contains("quern_raft_replication_lag_entries{peer=\"2\"} 0"),
                "{text}"
            );
            assert!(text.contains("quern_raft_has_leader 0"), "{text}");

            let same = Readings::of(&metrics(1, ServerState::Follower, None));
            same.publish(Some(&deposed));
            assert!(
                handle
                    .render()
                    .contains("quern_raft_leader_changes_total 1")
            );
        });
    }

    #[test]
    fn a_follower_reports_no_lag_and_whether_it_knows_a_leader() {
        let r = Readings::of(&metrics(2, ServerState::Follower, Some(1)));
        assert!(!r.is_leader);
        assert_eq!(r.leader, Some(1));
        assert!(r.lag.is_empty());
        let during_election = Readings::of(&metrics(2, ServerState::Candidate, None));
        assert_eq!(during_election.leader, None);
    }
}
