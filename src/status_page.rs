//! The status page a coordinator serves at `/` on its `--metrics` address:
//! what `quern status` prints (leader and term, members, datasets, recent
//! jobs with their shards and what each running job waits on) as one
//! small HTML page rendered here, with no script and no external asset;
//! it reloads itself every `REFRESH_SECONDS`. It is built from the
//! answering replica's own `StatusReport`.
//!
//! The page is a list of sections (`SECTIONS`), each a function of the
//! report: a new table is one more function. Every string from the state
//! reaches the page through `Html::text`, which escapes it (dataset names
//! and addresses come from users).

use proto_schema::coordinator_api::{JobStatus, StatusReport};

use crate::status::{heard, last_contact, member_role, node_state, or_dash, partitions, waits_on};

/// The page reloads itself this often (a meta refresh).
pub const REFRESH_SECONDS: u32 = 2;
/// Rows of one table on the page; past it the page says how many more
/// there are (`quern status --json` lists them all).
pub const MAX_ROWS: usize = 100;

/// The page's sections, top to bottom.
const SECTIONS: [fn(&StatusReport) -> Html; 5] = [summary, members, nodes, datasets, jobs];

/// HTML: text escaped on the way in, or markup written here.
#[derive(Debug)]
struct Html(String);

impl Html {
    /// `text`, escaped for an element's content or a quoted attribute.
    fn text(text: &str) -> Self {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
        }
        Self(out)
    }

    fn of(value: impl ToString) -> Self {
        Self::text(&value.to_string())
    }

    /// Markup written in this file, never anything from the state.
    fn markup(markup: String) -> Self {
        Self(markup)
    }
}

pub fn render(report: &StatusReport) -> String {
    let body: String = SECTIONS.iter().map(|section| section(report).0).collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>Quern: {}</title><style>{STYLE}</style></head>\
         <body>{body}</body></html>\n",
        leadership(report).0
    )
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
    h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}\
    table{border-collapse:collapse}th,td{padding:.25em .7em;text-align:left;\
    border-bottom:1px solid #ddd;vertical-align:middle}\
    .bar{display:flex;width:14em;height:1em;background:#e4e4e4;border-radius:3px;overflow:hidden}\
    .done{background:#3a9d5d}.leased{background:#e0a030}\
    .warn{color:#b00020;font-weight:bold}.more{color:#666}";

fn leadership(report: &StatusReport) -> Html {
    match report.leader {
        Some(leader) => Html::markup(format!("leader {leader}, term {}", report.term)),
        None => Html::markup(format!("NO LEADER, term {}", report.term)),
    }
}

fn summary(report: &StatusReport) -> Html {
    let view = if report.leader == Some(report.replica) {
        "the leader's view".to_string()
    } else {
        format!(
            "a follower's view: members' health is known on the leader's page (replica {})",
            or_dash(report.leader)
        )
    };
    let class = if report.leader.is_some() {
        ""
    } else {
        " class=\"warn\""
    };
    Html::markup(format!(
        "<h1>Quern cluster</h1><p id=\"leader\"{class}>{}</p>\
         <p>Replica {}: {view}. Log index {}, applied {}.</p>",
        leadership(report).0,
        report.replica,
        or_dash(report.last_log_index),
        or_dash(report.last_applied)
    ))
}

fn members(report: &StatusReport) -> Html {
    let rows = report.members.iter().map(|m| {
        vec![
            Html::of(m.id),
            Html::text(&m.address),
            Html::text(member_role(report, m)),
            Html::of(or_dash(m.matched_index)),
            Html::text(&last_contact(m)),
        ]
    });
    table(
        "members",
        "Members",
        &["id", "address", "role", "matched index", "last contact"],
        rows,
        report.members.len(),
    )
}

fn nodes(report: &StatusReport) -> Html {
    let rows = report.nodes.iter().map(|n| {
        vec![
            Html::of(n.id),
            Html::text(&n.address),
            Html::text(node_state(n.state)),
            Html::text(&heard(n)),
            Html::text(
                &n.memory_bytes
                    .map_or_else(|| "-".into(), crate::report::size),
            ),
            Html::of(n.shards_scanning),
            Html::text(&partitions(n)),
        ]
    });
    table(
        "nodes",
        "Nodes",
        &[
            "id",
            "address",
            "state",
            "heard",
            "memory",
            "scanning",
            "partitions",
        ],
        rows,
        report.nodes.len() + report.nodes_omitted as usize,
    )
}

fn datasets(report: &StatusReport) -> Html {
    let rows = report.datasets.iter().map(|d| {
        vec![
            Html::text(&d.name),
            Html::text(&d.format),
            Html::of(d.files),
            Html::of(or_dash(d.open_submission)),
        ]
    });
    table(
        "datasets",
        "Datasets",
        &["name", "format", "files", "open submission"],
        rows,
        report.datasets.len(),
    )
}

fn jobs(report: &StatusReport) -> Html {
    let rows = report.jobs.iter().map(|j| {
        vec![
            Html::of(j.id),
            Html::text(&j.dataset),
            Html::text(j.phase.name()),
            Html::of(format!(
                "{} new, {} changed, {} unchanged, {} gone",
                j.new, j.changed, j.unchanged, j.gone
            )),
            shard_bar(j),
            Html::text(waits_on(j).as_deref().unwrap_or("-")),
        ]
    });
    table(
        "jobs",
        "Jobs (newest first)",
        &["job", "dataset", "state", "files", "shards", "waits on"],
        rows,
        report.jobs.len(),
    )
}

/// The job's shards as one bar, done then leased then pending, and the
/// same in words.
fn shard_bar(job: &JobStatus) -> Html {
    let total = job.shards_pending + job.shards_leased + job.shards_done;
    let percent = |part: u64| part as f64 * 100.0 / total.max(1) as f64;
    Html::markup(format!(
        "<div class=\"bar\" title=\"{} pending, {} leased, {} done\">\
         <div class=\"done\" style=\"width:{:.1}%\"></div>\
         <div class=\"leased\" style=\"width:{:.1}%\"></div></div>\
         <span class=\"progress\">{} / {total} shards done ({:.0}%)</span>",
        job.shards_pending,
        job.shards_leased,
        job.shards_done,
        percent(job.shards_done),
        percent(job.shards_leased),
        job.shards_done,
        if total == 0 {
            100.0
        } else {
            percent(job.shards_done)
        },
    ))
}

/// A section: a heading and a table of at most `MAX_ROWS` of `rows`
/// (`count` in all), or a line saying there is none.
fn table(
    id: &str,
    heading: &str,
    headers: &[&str],
    rows: impl Iterator<Item = Vec<Html>>,
    count: usize,
) -> Html {
    let mut out = format!("<h2>{heading}</h2>");
    if count == 0 {
        out += &format!("<p id=\"{id}\">(none)</p>");
        return Html::markup(out);
    }
    out += &format!("<table id=\"{id}\"><tr>");
    for header in headers {
        out += &format!("<th>{header}</th>");
    }
    out += "</tr>";
    for row in rows.take(MAX_ROWS) {
        out += "<tr>";
        for cell in row {
            out += &format!("<td>{}</td>", cell.0);
        }
        out += "</tr>";
    }
    out += "</table>";
    if count > MAX_ROWS {
        out += &format!(
            "<p class=\"more\">and {} more (quern status --json lists them all)</p>",
            count - MAX_ROWS
        );
    }
    Html::markup(out)
}

#[cfg(test)]
mod tests {
    use proto_schema::command::StagedCounts;
    use proto_schema::coordinator_api::{DatasetStatus, JobPhase, MemberStatus};
    use proto_schema::ids::{DatasetId, Epoch, JobId, NodeId};

    use super::*;

    fn job(id: u64, dataset: &str, pending: u64, leased: u64, done: u64) -> JobStatus {
        JobStatus {
            id: JobId(id),
            dataset: dataset.into(),
            began_ms: 0,
            phase: if pending + leased > 0 {
                JobPhase::Scanning
            } else {
                JobPhase::Staging
            },
            new: pending + leased + done,
            changed: 0,
            unchanged: 0,
            gone: 0,
            shards_pending: pending,
            shards_leased: leased,
            shards_done: done,
            map_epoch: Some(Epoch(1)),
            unstaged: vec![NodeId(2)],
            staged: StagedCounts::default(),
            attempt: 0,
            restarted: None,
            recovery: None,
        }
    }

    fn report(datasets: Vec<DatasetStatus>, jobs: Vec<JobStatus>) -> StatusReport {
        StatusReport {
            replica: 1,
            leader: Some(1),
            term: 7,
            last_log_index: Some(42),
            last_applied: Some(42),
            members: vec![MemberStatus {
                id: 1,
                address: "127.0.0.1:7001".into(),
                voter: true,
                matched_index: Some(42),
                last_contact_ms: Some(0),
            }],
            nodes: Vec::new(),
            nodes_omitted: 0,
            datasets,
            jobs,
        }
    }

    fn dataset(name: &str) -> DatasetStatus {
        DatasetStatus {
            name: name.into(),
            id: DatasetId(1),
            format: "lines".into(),
            open_submission: None,
            files: 3,
        }
    }

    #[test]
    fn strings_from_the_state_are_escaped() {
        let hostile = "<script>alert('x')</script>\"&";
        let page = render(&report(
            vec![dataset(hostile)],
            vec![job(1, hostile, 1, 0, 0)],
        ));
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("alert('x')"), "{page}");
        let escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;";
        assert_eq!(page.matches(escaped).count(), 2, "{page}");
        // The page's own markup is intact around them.
        assert!(page.contains("<table id=\"datasets\">"));
        assert!(page.ends_with("</body></html>\n"));
    }

    #[test]
    fn a_jobs_bar_shows_its_shards_and_what_it_waits_on() {
        let running = job(5, "logs", 1, 1, 2);
        let bar = shard_bar(&running).0;
        assert!(
            bar.contains("class=\"done\" style=\"width:50.0%\""),
            "{bar}"
        );
        assert!(
            bar.contains("class=\"leased\" style=\"width:25.0%\""),
            "{bar}"
        );
        assert!(bar.contains("2 / 4 shards done (50%)"), "{bar}");
        let staging = job(7, "logs", 0, 0, 3);
        assert!(shard_bar(&staging).0.contains("3 / 3 shards done (100%)"));
        let submitting = JobStatus {
            phase: JobPhase::Submitting,
            ..job(8, "logs", 0, 0, 0)
        };
        // What it waits on, in `quern status`'s words.
        let page = render(&report(Vec::new(), vec![running.clone(), staging]));
        assert!(page.contains("1 shards pending, 1 leased"), "{page}");
        assert!(page.contains("node 2 to stage under map 1"), "{page}");
        let committed = JobStatus {
            phase: JobPhase::Committed,
            ..job(9, "logs", 0, 0, 3)
        };
        // No shards (nothing new or changed): nothing left, not 0 of 0.
        assert!(
            shard_bar(&submitting)
                .0
                .contains("0 / 0 shards done (100%)")
        );

        let page = render(&report(vec![dataset("logs")], vec![running, committed]));
        assert!(page.contains("<td>committed</td>"), "{page}");
        assert!(page.contains("leader 1, term 7"), "{page}");
    }

    #[test]
    fn tables_stop_at_max_rows_and_say_how_many_more() {
        let jobs: Vec<JobStatus> = (0..MAX_ROWS as u64 + 3)
            .map(|i| job(i, "logs", 0, 0, 1))
            .collect();
        let page = render(&report(vec![], jobs));
        let table = &page[page.find("<table id=\"jobs\">").unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        // A header row and MAX_ROWS rows.
        assert_eq!(table.matches("<tr>").count(), MAX_ROWS + 1);
        assert!(page.contains("and 3 more"), "{page}");
        assert!(page.contains("<p id=\"datasets\">(none)</p>"));
    }

    #[test]
    fn a_page_without_a_leader_says_so() {
        let mut alone = report(vec![], vec![]);
        alone.leader = None;
        alone.replica = 2;
        let page = render(&alone);
        assert!(
            page.contains("<p id=\"leader\" class=\"warn\">NO LEADER, term 7</p>"),
            "{page}"
        );
        assert!(page.contains("a follower's view"), "{page}");
    }
}
