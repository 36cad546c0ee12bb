//! Which of the coordinators' jobs a node's local job ran: a node runs its
//! part of a cluster job as a local job of its own number, recorded with
//! the inputs it shows (`JobInfo::inputs`), which name the cluster's
//! job. Cluster reads (`reads`) sum the nodes' parts of a job by it.

use proto_schema::JobId;

use crate::store::catalog::JobInfo;

const PREFIX: &str = "job ";
const SUFFIX: &str = " of the coordinators";

/// The inputs a node's local job records for its part of `job`.
pub fn inputs(job: JobId) -> Vec<String> {
    vec![format!("{PREFIX}{job}{SUFFIX}")]
}

/// The coordinators' job `local` ran a part of, if it ran one.
pub fn of(local: &JobInfo) -> Option<JobId> {
    let [input] = local.inputs.as_slice() else {
        return None;
    };
    let id = input.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    // One spelling per id, as `inputs` writes it.
    let id: u64 = id.parse().ok().filter(|n: &u64| n.to_string() == id)?;
    Some(JobId(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::catalog::{JobState, WriteMode};
    use proptest::prelude::*;

    fn local(inputs: Vec<String>) -> JobInfo {
        JobInfo {
            dataset: proto_schema::DatasetId(1),
            id: 3,
            state: JobState::Committed,
            inputs,
            write_mode: WriteMode::Merge,
            started_unix: 0,
            finished_unix: None,
            totals: None,
        }
    }

    proptest! {
        #[test]
        fn a_part_names_its_job(job in any::<u64>()) {
            prop_assert_eq!(of(&local(inputs(JobId(job)))), Some(JobId(job)));
        }
    }

    #[test]
    fn other_inputs_name_none() {
        for inputs in [
            vec![],
            vec!["/srv/logs".to_string()],
            vec!["job 01 of the coordinators".to_string()],
            vec!["job 1 of the coordinators".into(), "x".into()],
        ] {
            assert_eq!(of(&local(inputs.clone())), None, "{inputs:?}");
        }
    }
}
