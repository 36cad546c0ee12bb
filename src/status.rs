//! `quern status`: the leader's view of the cluster (members' health,
//! nodes with their liveness, memory and partitions, datasets, recent jobs
//! with their phase and what a running one waits on), as text or JSON. With
//! `--replicas`, each coordinator's own view instead (applied index, state
//! digest) and whether they agree.

use std::io::Write;
use std::process::ExitCode;

use coordinator_client::replicas::verdict;
use proto_schema::coordinator_api::{
    JobPhase, JobStatus, MemberStatus, NodeState, NodeStatus, StatusReport,
};

use crate::args::StatusArgs;
use crate::cluster_client;
use crate::report::size;

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    if args.replicas {
        return replicas(&args);
    }
    let runtime = cluster_client::runtime()?;
    let report = runtime.block_on(async {
        let mut client = cluster_client::connect(&args.client)?;
        anyhow::Ok(client.status().await?)
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_text(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A member's part in the group, as the report's replica knows it.
pub(crate) fn member_role(report: &StatusReport, member: &MemberStatus) -> &'static str {
    if Some(member.id) == report.leader {
        "leader"
    } else if member.voter {
        "voter"
    } else {
        "learner"
    }
}

/// The last contact with a member, as both views print it.
pub(crate) fn last_contact(member: &MemberStatus) -> String {
    member
        .last_contact_ms
        .map_or_else(|| "never".into(), |ms| format!("{ms} ms ago"))
}

fn write_text(out: &mut impl Write, report: &StatusReport) -> std::io::Result<()> {
    match report.leader {
        Some(leader) => writeln!(out, "leader {leader}, term {}", report.term)?,
        None => writeln!(
            out,
            "NO LEADER (term {}): replica {}'s view",
            report.term, report.replica
        )?,
    }
    writeln!(
        out,
        "log index {}, applied {}",
        or_dash(report.last_log_index),
        or_dash(report.last_applied)
    )?;
    writeln!(out, "\nmembers:")?;
    writeln!(
        out,
        "  {:>4}  {:<24} {:<7} {:>10}  last contact",
        "id", "address", "role", "matched"
    )?;
    for m in &report.members {
        writeln!(
            out,
            "  {:>4}  {:<24} {:<7} {:>10}  {}",
            m.id,
            m.address,
            member_role(report, m),
            or_dash(m.matched_index),
            last_contact(m)
        )?;
    }
    write_nodes(out, report)?;
    writeln!(out, "\ndatasets:")?;
    if report.datasets.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for d in &report.datasets {
        let open = d
            .open_submission
            .map_or_else(String::new, |s| format!(", submission {s} open"));
        writeln!(out, "  {} ({}): {} files{open}", d.name, d.format, d.files)?;
    }
    writeln!(out, "\njobs (newest first):")?;
    if report.jobs.is_empty() {
        writeln!(out, "  (none)")?;
    } else {
        writeln!(
            out,
            "  {:>6}  {:<16} {:<10} {:>9} {:>9} {:>9} {:>9}  {:>9} {:>9} {:>9}",
            "job",
            "dataset",
            "phase",
            "new",
            "changed",
            "unchanged",
            "gone",
            "pending",
            "leased",
            "done"
        )?;
    }
    for j in &report.jobs {
        writeln!(
            out,
            "  {:>6}  {:<16} {:<10} {:>9} {:>9} {:>9} {:>9}  {:>9} {:>9} {:>9}",
            j.id,
            j.dataset,
            j.phase.name(),
            j.new,
            j.changed,
            j.unchanged,
            j.gone,
            j.shards_pending,
            j.shards_leased,
            j.shards_done
        )?;
        if let Some(waits) = waits_on(j) {
            writeln!(out, "  {:>6}  waits on {waits}", "")?;
        }
        if j.attempt > 0 {
            let cause = j.restarted.as_deref().unwrap_or("no cause recorded");
            writeln!(
                out,
                "  {:>6}  attempt {}: restarted, {cause}",
                "", j.attempt
            )?;
        }
    }
    Ok(())
}

fn write_nodes(out: &mut impl Write, report: &StatusReport) -> std::io::Result<()> {
    writeln!(out, "\nnodes:")?;
    if report.nodes.is_empty() {
        writeln!(out, "  (none registered)")?;
        return Ok(());
    }
    writeln!(
        out,
        "  {:>4}  {:<22} {:>14}  {:<9} {:>12} {:>10} {:>9}  partitions",
        "id", "address", "incarnation", "state", "heard", "memory", "scanning"
    )?;
    for n in &report.nodes {
        writeln!(
            out,
            "  {:>4}  {:<22} {:>14}  {:<9} {:>12} {:>10} {:>9}  {}",
            n.id,
            n.address,
            n.incarnation,
            node_state(n.state),
            heard(n),
            n.memory_bytes.map_or_else(|| "-".into(), size),
            n.shards_scanning,
            partitions(n)
        )?;
    }
    if report.nodes_omitted > 0 {
        writeln!(out, "  ... and {} more nodes", report.nodes_omitted)?;
    }
    Ok(())
}

/// When the leader last heard from the node.
pub(crate) fn heard(node: &NodeStatus) -> String {
    node.silent_ms
        .map_or_else(|| "-".into(), |ms| format!("{ms} ms ago"))
}

pub(crate) fn node_state(state: NodeState) -> &'static str {
    match state {
        NodeState::Alive => "alive",
        NodeState::Overdue => "overdue",
        NodeState::Lost => "lost",
        NodeState::Untracked => "untracked",
    }
}

/// `logs 0..32 (map 3), web 16..32 (map 1)`, or `-`.
pub(crate) fn partitions(node: &NodeStatus) -> String {
    if node.partitions.is_empty() {
        return "-".into();
    }
    let owned: Vec<String> = node
        .partitions
        .iter()
        .map(|p| format!("{} {}..{} (map {})", p.dataset, p.start, p.end, p.map_epoch))
        .collect();
    owned.join(", ")
}

/// What a running job waits on, in words: its unread shards, then the
/// owners that have not staged; `None` for a job that waits on no node.
pub fn waits_on(job: &JobStatus) -> Option<String> {
    match job.phase {
        JobPhase::Scanning => Some(format!(
            "{} shards pending, {} leased",
            job.shards_pending, job.shards_leased
        )),
        JobPhase::Staging => {
            let owners: Vec<String> = job.unstaged.iter().map(|n| n.to_string()).collect();
            let map = job
                .map_epoch
                .map_or_else(String::new, |epoch| format!(" under map {epoch}"));
            Some(if owners.is_empty() {
                format!("its commit (every owner staged{map})")
            } else {
                format!("node {} to stage{map}", owners.join(", "))
            })
        }
        JobPhase::Submitting | JobPhase::Committed | JobPhase::Aborted => None,
    }
}

fn replicas(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = cluster_client::runtime()?;
    let answers = runtime.block_on(async {
        let client = cluster_client::connect(&args.client)?;
        anyhow::Ok(client.replicas().await)
    })?;
    let verdict = verdict(&answers);
    let mut out = std::io::stdout().lock();
    if args.json {
        let replicas: Vec<serde_json::Value> = answers
            .iter()
            .map(|(address, answer)| match answer {
                Ok(report) => {
                    let mut value = serde_json::to_value(report).expect("a report serializes");
                    value["address"] = address.as_str().into();
                    value
                }
                Err(e) => serde_json::json!({ "address": address, "error": e.to_string() }),
            })
            .collect();
        let report = serde_json::json!({ "verdict": verdict, "replicas": replicas });
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<24} {:>7} {:>6} {:>6} {:>10} {:>10} {:>10}  state hash",
            "address", "replica", "term", "leader", "log index", "applied", "records"
        )?;
        for (address, answer) in &answers {
            match answer {
                Ok(r) => writeln!(
                    out,
                    "{address:<24} {:>7} {:>6} {:>6} {:>10} {:>10} {:>10}  {:016x}",
                    r.replica,
                    r.term,
                    or_dash(r.leader),
                    or_dash(r.last_log_index),
                    or_dash(r.last_applied),
                    r.state_records,
                    r.state_hash
                )?,
                Err(e) => writeln!(out, "{address:<24} unreachable: {e}")?,
            }
        }
        writeln!(out, "replicas: {verdict}")?;
    }
    Ok(ExitCode::SUCCESS)
}
