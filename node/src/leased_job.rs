//! A node's part of one of the coordinators' jobs, as `quern dev`
//! (`embedded`) and `quern node` both run it: join with a new incarnation
//! (`register`), then run the ingest pipeline on a `LeaseFeed` of the
//! job's shards into the node's store until the coordinators commit the
//! job (`run`). The node's local dataset is made from the spec the
//! coordinators hold (`for_dataset`), the inverse of `spec_of`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coordinator_client::{ClientError, CoordinatorClient, Transport};
use proto_schema::command::{DatasetFormat, DatasetSpec, KeySpec, Response};
use proto_schema::coordinator_api::NodeRegistration;
use proto_schema::ids::NodeId;
use tokio::runtime::Handle;

use crate::actors::feed::lease::{LeaseFeed, LeaseSettings, LeaseTarget};
use crate::config::{DEFAULT_PARTITIONS, Format, IngestConfig};
use crate::counters::JobCounters;
use crate::ingest::{self, IngestError, IngestOutcome};
use crate::input::roots::Roots;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("node {node} could not register: {source}")]
    Client { node: NodeId, source: ClientError },
    #[error("node {node} could not register: {reason}")]
    Refused { node: NodeId, reason: String },
}

/// A new incarnation: the clock in ms, so a restart registers a higher one.
pub fn new_incarnation() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// Registers `node` at a new incarnation, which it returns. `address` is
/// the node's data channel; `cert_fingerprint` its certificate's.
pub async fn register<T: Transport>(
    client: &mut CoordinatorClient<T>,
    node: NodeId,
    address: String,
    cert_fingerprint: [u8; 32],
) -> Result<u64, RegisterError> {
    let incarnation = new_incarnation();
    let registration = NodeRegistration {
        node,
        incarnation,
        address,
        cert_fingerprint,
    };
    match client.register(registration).await {
        Ok(Response::NodeRegistered { .. }) => Ok(incarnation),
        Ok(other) => Err(RegisterError::Refused {
            node,
            reason: format!("{other:?}"),
        }),
        Err(source) => Err(RegisterError::Client { node, source }),
    }
}

/// The spec of a new dataset made with `config`'s name, format and
/// partitions.
pub fn spec_of(config: &IngestConfig) -> DatasetSpec {
    let (format, key) = match config.format {
        Format::Lines => (DatasetFormat::Lines, KeySpec::WholeLine),
        Format::Tsv { key_field } => (
            DatasetFormat::Tsv,
            KeySpec::Field {
                index: key_field as u32,
                delimiter: b'\t',
            },
        ),
    };
    DatasetSpec {
        name: config.dataset.clone(),
        format,
        key,
        partitions: config.partitions.unwrap_or(DEFAULT_PARTITIONS),
    }
}

/// `config` for the dataset `spec` describes; `Err` names a format nodes
/// cannot ingest yet.
pub fn for_dataset(config: IngestConfig, spec: &DatasetSpec) -> Result<IngestConfig, String> {
    let format = match (&spec.format, &spec.key) {
        (DatasetFormat::Lines, KeySpec::WholeLine) => Format::Lines,
        (DatasetFormat::Tsv, KeySpec::Field { index, delimiter }) if *delimiter == b'\t' => {
            Format::Tsv {
                key_field: *index as usize,
            }
        }
        (format, key) => {
            return Err(format!(
                "dataset {:?} is {format:?} keyed by {key:?}, which nodes cannot ingest yet",
                spec.name
            ));
        }
    };
    Ok(IngestConfig {
        dataset: spec.name.clone(),
        format,
        partitions: Some(spec.partitions),
        ..config
    })
}

/// One job for one node.
pub struct LeasedJob<T: Transport> {
    /// The feed's own connection to the coordinators.
    pub client: CoordinatorClient<T>,
    pub target: LeaseTarget,
    /// Its `data_dir` is the node's store.
    pub ingest: IngestConfig,
    /// Where the node may read: a path outside them is a rejected file.
    pub roots: Roots,
    /// Between heartbeats while the job runs.
    pub heartbeat: Duration,
    /// Recorded with the local job as what it ingests.
    pub shown_inputs: Vec<String>,
}

/// Runs `job` into `store` until the coordinators commit it; the feed
/// calls them on `runtime`, which must outlive the job. If `cancel`
/// completes first, the job is aborted with its output as reason. Call
/// from a thread outside any async runtime.
pub fn run<T: Transport>(
    job: LeasedJob<T>,
    store: Arc<Store>,
    runtime: Handle,
    counters: Arc<JobCounters>,
    cancel: impl Future<Output = String>,
) -> Result<IngestOutcome, IngestError> {
    let settings = LeaseSettings {
        heartbeat: job.heartbeat,
        roots: Some(job.roots),
        ..LeaseSettings::default()
    };
    let feed = LeaseFeed::new(job.client, job.target, runtime, settings);
    let prepared = ingest::prepare_with_feed(
        store,
        job.ingest,
        job.shown_inputs,
        Arc::new(feed),
        counters,
    )?;
    ingest::run(prepared, cancel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_and_the_config_made_from_it_agree() {
        for format in [Format::Lines, Format::Tsv { key_field: 3 }] {
            let config = IngestConfig {
                dataset: "logs".into(),
                format,
                partitions: Some(12),
                ..IngestConfig::default()
            };
            let spec = spec_of(&config);
            let back = for_dataset(IngestConfig::default(), &spec).unwrap();
            assert_eq!(
                (back.dataset.as_str(), back.format, back.partitions),
                ("logs", format, Some(12))
            );
        }
        let jsonl = DatasetSpec {
            name: "j".into(),
            format: DatasetFormat::Jsonl,
            key: KeySpec::JsonPointer("/id".into()),
            partitions: 4,
        };
        let refused = for_dataset(IngestConfig::default(), &jsonl).unwrap_err();
        assert!(refused.contains("cannot ingest"), "{refused}");
    }
}
