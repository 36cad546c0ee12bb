//! A client's side of cluster reads: the nodes the coordinators list, each
//! read over its data channel, their answers put together as one store's
//! would be.
//!
//! - `export`: one stream per node, each in key order, merged by the
//!   export's own merge (`export::merge_sources`, a key two nodes hold
//!   written once) straight to the output. Each stream holds its QUIC
//!   window, [`SOURCE_QUEUE_FRAMES`] checked frames and the batch being
//!   merged: memory bounded by the node count, not the dataset.
//! - `get`: the node owning the key's partition under the dataset's map
//!   first (any node if the map does not cover the partitions), then the
//!   others (a key stored before its partition moved); the first sighting
//!   wins.
//! - `jobs` and `files`: every node's part of each job, summed; files
//!   merged by number, rejected records by file and offset.
//!
//! Every listed node is read, lost ones too: a node that cannot answer
//! fails the read with its id and address, never a short answer.
//!
//! Reads show whole jobs: owners publish a committed job each in its own
//! time, so before `export` and `get` read, they wait (up to
//! [`DEFAULT_PUBLISH_WAIT`]) while some node holds a job committed that
//! another holds only staged, and fail naming them if that lasts. An
//! export reads each node's store at one snapshot, which names the jobs
//! it holds; it starts merging only once those are exactly the jobs each
//! node has published and none is half published (else it opens again):
//! a job published while it opens is in it everywhere or nowhere. A `get`
//! is checked the same way before its sighting is returned.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator_client::{ClientError, CoordinatorClient, Transport};
use proto_schema::coordinator_api::NodeStatus;
use proto_schema::quic::channel::{ChannelConfig, ChannelEndpoint, ReadStream};
use proto_schema::read::{
    DatasetShape, FilePart, FoundRecord, JobPart, PublishedJobs, ReadCounts, ReadEvent, ReadItem,
    ReadRequest, RejectedPart,
};
use proto_schema::tls::TlsIdentity;
use proto_schema::{BatchView, JobId, NodeId, Record, ValidBatch, partition_of};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::service::{Piece, answer_here};
use crate::config::Format;
use crate::export::{self, ExportError};
use crate::shuffle::inbound::node_certificate_name;
use crate::store::Store;
use crate::store::catalog::JobState;
use external_sort::SortError;
use external_sort::merge::SortedSource;

/// Checked frames a node's export stream may have waiting for the merge.
pub const SOURCE_QUEUE_FRAMES: usize = 1;
/// How long a read waits for a job committed on some nodes to be published
/// on the others (they publish within moments of the commit, unless down
/// or cut off from the coordinators).
pub const DEFAULT_PUBLISH_WAIT: Duration = Duration::from_secs(30);
/// Between looks while waiting for a job to be published everywhere.
const PUBLISH_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("asking the coordinators for the nodes: {0}")]
    Coordinators(#[from] ClientError),
    #[error("the coordinators list {0} more nodes than their status shows; cannot read them all")]
    TooManyNodes(u64),
    #[error("no node has registered with the coordinators: nothing to read")]
    NoNodes,
    #[error("no node holds dataset {0:?}")]
    NoDataset(String),
    #[error("node {node} at {address}: {reason}")]
    Node {
        node: NodeId,
        address: String,
        reason: String,
    },
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("writing: {0}")]
    Write(#[from] std::io::Error),
    #[error("setting up the data channel: {0}")]
    Setup(String),
    #[error(
        "job {job} is published on nodes {published:?} but still staged on nodes {staged:?} \
         after {waited:?}: a read now would show part of it"
    )]
    Unpublished {
        job: JobId,
        published: Vec<NodeId>,
        staged: Vec<NodeId>,
        waited: Duration,
    },
    #[error(
        "node {node} kept publishing jobs while the read opened, for {waited:?}: \
         a read now could show part of a job"
    )]
    Republished { node: NodeId, waited: Duration },
}

/// A node to read, as the coordinators list it.
#[derive(Debug, Clone)]
pub struct ReadNode {
    pub id: NodeId,
    pub address: String,
    /// The partitions it owns of the dataset read, under the current map.
    pub owns: Option<(u16, u16)>,
}

impl ReadNode {
    fn error(&self, reason: impl std::fmt::Display) -> ReadError {
        ReadError::Node {
            node: self.id,
            address: self.address.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Reads one dataset from every node of a cluster.
pub struct ClusterReader {
    source: Source,
    nodes: Vec<ReadNode>,
    dataset: String,
    publish_wait: Duration,
}

/// The coordinators' nodes, each with the partitions it owns of `dataset`.
pub async fn nodes_of<T: Transport>(
    client: &mut CoordinatorClient<T>,
    dataset: &str,
) -> Result<Vec<ReadNode>, ReadError> {
    let status = client.status().await?;
    if status.nodes_omitted > 0 {
        return Err(ReadError::TooManyNodes(status.nodes_omitted));
    }
    if status.nodes.is_empty() {
        return Err(ReadError::NoNodes);
    }
    Ok(status
        .nodes
        .iter()
        .map(|node: &NodeStatus| ReadNode {
            id: node.id,
            address: node.address.clone(),
            owns: node
                .partitions
                .iter()
                .find(|p| p.dataset == dataset)
                .map(|p| (p.start.get(), p.end.get())),
        })
        .collect())
}

/// Where the nodes' answers come from.
enum Source {
    /// Their read streams, dialled with the client's certificate.
    Channel(ChannelEndpoint),
    /// Their stores, on this machine (`quern dev`'s), one per node in
    /// node order, each answered as its node would.
    Here(Vec<Arc<Store>>),
}

/// One node's answer: the stream after its opening, if it holds the
/// dataset.
pub(super) struct Answer {
    node: ReadNode,
    pub(super) shape: Option<DatasetShape>,
    stream: AnswerStream,
}

/// A node's answer, from its read stream or its store.
enum AnswerStream {
    Remote(ReadStream),
    Here {
        pieces: mpsc::Receiver<Piece>,
        reader: Option<tokio::task::JoinHandle<Result<(), String>>>,
    },
}

/// A node and the coordinators' jobs its answer was read with: those
/// its store snapshot held (none if it did not hold the dataset), `None`
/// if it did not say.
pub(super) type ReadWith = (NodeId, Option<PublishedJobs>);

impl Answer {
    pub(super) fn read_with(&self) -> ReadWith {
        let published = match &self.shape {
            Some(shape) => shape.published,
            None => Some(PublishedJobs::default()),
        };
        (self.node.id, published)
    }
}

impl AnswerStream {
    async fn next(&mut self) -> Result<ReadEvent, String> {
        match self {
            Self::Remote(stream) => stream.next().await.map_err(|e| e.to_string()),
            Self::Here { pieces, reader } => match pieces.recv().await {
                Some(Piece::Item(item)) => Ok(ReadEvent::Item(item)),
                // Exports of local stores merge them directly
                // (`export::export_all`).
                Some(Piece::Batch(_)) => Err("records asked of a local store".into()),
                None => match reader.take() {
                    Some(reader) => match reader.await {
                        Ok(Ok(())) => Ok(ReadEvent::End),
                        Ok(Err(reason)) => Err(reason),
                        Err(e) => Err(format!("the store's reader failed: {e}")),
                    },
                    None => Ok(ReadEvent::End),
                },
            },
        }
    }
}

impl ClusterReader {
    /// Reads `dataset` from `nodes`, dialling with `identity` (the CLI's
    /// client certificate). Call inside a tokio runtime.
    pub fn new(
        identity: &TlsIdentity,
        nodes: Vec<ReadNode>,
        dataset: &str,
    ) -> Result<Self, ReadError> {
        let endpoint = ChannelEndpoint::dial_only(identity, ChannelConfig::default())
            .map_err(|e| ReadError::Setup(e.to_string()))?;
        endpoint.expect_links(nodes.len());
        Ok(Self {
            source: Source::Channel(endpoint),
            nodes,
            dataset: dataset.to_string(),
            publish_wait: DEFAULT_PUBLISH_WAIT,
        })
    }

    /// Reads `dataset`'s jobs and files from the stores of nodes 1, 2, ...
    /// on this machine, put together as the cluster's answers are.
    pub fn here(stores: Vec<Arc<Store>>, dataset: &str) -> Self {
        let nodes = stores
            .iter()
            .zip(1..)
            .map(|(store, id)| ReadNode {
                id: NodeId(id),
                address: store.root().display().to_string(),
                owns: None,
            })
            .collect();
        Self {
            source: Source::Here(stores),
            nodes,
            dataset: dataset.to_string(),
            publish_wait: DEFAULT_PUBLISH_WAIT,
        }
    }

    /// Waits at most `wait` for a job to be published everywhere.
    pub fn with_publish_wait(mut self, wait: Duration) -> Self {
        self.publish_wait = wait;
        self
    }

    /// Returns once no job is published on some nodes and staged on
    /// others, or fails naming the first such job when that lasts past
    /// the publish wait from `started`.
    fn await_whole_jobs(&self, runtime: &Handle, started: Instant) -> Result<(), ReadError> {
        loop {
            let jobs = match self.jobs(runtime) {
                Ok((_, jobs)) => jobs,
                Err(ReadError::NoDataset(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let Some(halfway) = self.halfway(&jobs) else {
                return Ok(());
            };
            if started.elapsed() >= self.publish_wait {
                return Err(halfway);
            }
            std::thread::sleep(PUBLISH_POLL);
        }
    }

    /// The first job published on some nodes and only staged on others,
    /// as the error a read that waited for it in vain returns.
    fn halfway(&self, jobs: &[ClusterJob]) -> Option<ReadError> {
        let (job, published, staged) = jobs.iter().find_map(ClusterJob::halfway)?;
        Some(ReadError::Unpublished {
            job,
            published,
            staged,
            waited: self.publish_wait,
        })
    }

    /// Reads with `read_once` until what it read shows whole jobs. Each
    /// node answering says which jobs its snapshot holds; once the answers
    /// are in, the nodes' jobs are asked again. If every snapshot holds
    /// exactly the jobs its node has published now, and no job is
    /// published on some nodes and staged on others now, the snapshots
    /// together show whole jobs. Otherwise a job was published while they
    /// were read: they are read again, for at most the publish wait.
    fn read_whole<T>(
        &self,
        runtime: &Handle,
        mut read_once: impl FnMut() -> Result<(T, Vec<ReadWith>), ReadError>,
    ) -> Result<T, ReadError> {
        let started = Instant::now();
        loop {
            self.await_whole_jobs(runtime, started)?;
            let (answer, read) = read_once()?;
            let Some(unsettled) = self.unsettled(runtime, &read)? else {
                return Ok(answer);
            };
            if started.elapsed() >= self.publish_wait {
                return Err(unsettled);
            }
            drop(answer);
            std::thread::sleep(PUBLISH_POLL);
        }
    }

    /// Every node's export, opened on snapshots of whole jobs.
    fn open_export(&self, runtime: &Handle) -> Result<(DatasetShape, Vec<Answer>), ReadError> {
        let request = ReadRequest::Export {
            dataset: self.dataset.clone(),
        };
        self.read_whole(runtime, || {
            let (shape, answers, read) = runtime.block_on(self.ask_every(&request))?;
            Ok(((shape, answers), read))
        })
    }

    /// Why answers read with `read` may not show whole jobs, if they may
    /// not.
    pub(super) fn unsettled(
        &self,
        runtime: &Handle,
        read: &[ReadWith],
    ) -> Result<Option<ReadError>, ReadError> {
        let (_, jobs) = self.jobs(runtime)?;
        if let Some(halfway) = self.halfway(&jobs) {
            return Ok(Some(halfway));
        }
        let committed = JobState::Committed.to_string();
        for &(node, in_snapshot) in read {
            let published_now = PublishedJobs::of(jobs.iter().filter_map(|job| {
                job.parts
                    .iter()
                    .any(|(on, state)| *on == node && *state == committed)
                    .then_some(job.job)
            }));
            if in_snapshot != Some(published_now) {
                return Ok(Some(ReadError::Republished {
                    node,
                    waited: self.publish_wait,
                }));
            }
        }
        Ok(None)
    }

    pub fn nodes(&self) -> &[ReadNode] {
        &self.nodes
    }

    /// Sends `request` to `node` and reads its opening.
    async fn ask(&self, node: &ReadNode, request: &ReadRequest) -> Result<Answer, ReadError> {
        let mut stream = match &self.source {
            Source::Channel(endpoint) => {
                let addr: SocketAddr = node
                    .address
                    .parse()
                    .map_err(|e| node.error(format!("not an address: {e}")))?;
                let link = endpoint
                    .connect(addr, &node_certificate_name(node.id))
                    .await
                    .map_err(|e| node.error(e))?;
                AnswerStream::Remote(link.read(request).await.map_err(|e| node.error(e))?)
            }
            Source::Here(stores) => {
                let store = stores[self
                    .nodes
                    .iter()
                    .position(|n| n.id == node.id)
                    .expect("listed")]
                .clone();
                let (pieces, reader) = answer_here(store, request.clone());
                AnswerStream::Here {
                    pieces,
                    reader: Some(reader),
                }
            }
        };
        let shape = match stream.next().await.map_err(|e| node.error(e))? {
            ReadEvent::Item(ReadItem::Dataset(shape)) => Some(shape),
            ReadEvent::Item(ReadItem::Absent) => None,
            // A stream's check lets only an opening come first; a store's
            // answer always opens so.
            _ => return Err(node.error("an answer without its opening")),
        };
        Ok(Answer {
            node: node.clone(),
            shape,
            stream,
        })
    }

    /// `request` to every node at once: the answers of those that hold
    /// the dataset, which must agree on its shape.
    pub(super) async fn ask_all(
        &self,
        request: &ReadRequest,
    ) -> Result<(DatasetShape, Vec<Answer>), ReadError> {
        let (shape, holding, _) = self.ask_every(request).await?;
        Ok((shape, holding))
    }

    /// [`Self::ask_all`], with what every node answered from, those
    /// that do not hold the dataset too.
    async fn ask_every(
        &self,
        request: &ReadRequest,
    ) -> Result<(DatasetShape, Vec<Answer>, Vec<ReadWith>), ReadError> {
        let asked = self.nodes.iter().map(|node| self.ask(node, request));
        let (mut holding, mut read) = (Vec::new(), Vec::new());
        for answer in futures_join_all(asked).await {
            let answer = answer?;
            read.push(answer.read_with());
            if answer.shape.is_some() {
                holding.push(answer);
            }
        }
        let Some(first) = holding.first() else {
            return Err(ReadError::NoDataset(self.dataset.clone()));
        };
        let shape = first.shape.clone().expect("held");
        for answer in &holding {
            let other = answer.shape.as_ref().expect("held");
            if (other.key_field, other.partitions) != (shape.key_field, shape.partitions) {
                return Err(answer.node.error(format!(
                    "its dataset {:?} is {other:?}, node {}'s {shape:?}",
                    self.dataset, first.node.id
                )));
            }
        }
        Ok((shape, holding, read))
    }

    /// Writes the dataset's records to `out` in key order, one per line,
    /// as a local export does. Call outside the runtime `runtime` drives.
    pub fn export(&self, runtime: &Handle, out: &mut impl Write) -> Result<u64, ReadError> {
        let (shape, answers) = self.open_export(runtime)?;
        let format = format_of(&shape);
        let sources: Vec<NodeSource> = answers
            .into_iter()
            .map(|answer| NodeSource::spawn(runtime, answer))
            .collect();
        let sources = sources
            .into_iter()
            .map(|mut s| s.refill().map(|()| s))
            .collect::<Result<Vec<_>, _>>()?;
        let written = export::merge_sources(sources, true, |record| {
            export::write_line(format, &record, out)
        })?;
        out.flush()?;
        Ok(written)
    }

    /// The first sighting of `key`: from the owner of its partition, else
    /// from every node. Read, like an export, only once the snapshots the
    /// nodes answered from show whole jobs.
    pub fn get(&self, runtime: &Handle, key: &[u8]) -> Result<Option<ClusterFound>, ReadError> {
        let request = ReadRequest::Get {
            dataset: self.dataset.clone(),
            key: key.to_vec(),
        };
        let mut found = self.read_whole(runtime, || {
            runtime.block_on(self.first_sighting(key, &request))
        })?;
        if let Some(found) = &mut found
            && found.path.is_none()
            && let Some(job) = found.job
        {
            found.path = runtime.block_on(self.path_of(job, found.file))?;
        }
        Ok(found)
    }

    /// The earliest sighting of `key` the nodes hold (the owner asked
    /// first), with what each node asked read it with.
    async fn first_sighting(
        &self,
        key: &[u8],
        request: &ReadRequest,
    ) -> Result<(Option<ClusterFound>, Vec<ReadWith>), ReadError> {
        let owner = self.owner_of(key);
        let mut read = Vec::new();
        let mut found = None;
        if let Some(owner) = owner {
            let (candidate, with) = self.found_on(owner, request).await?;
            found = candidate;
            read.push(with);
        }
        if found.is_none() {
            let others = self
                .nodes
                .iter()
                .filter(|n| owner.is_none_or(|o| o.id != n.id))
                .map(|node| self.found_on(node, request));
            for answer in futures_join_all(others).await {
                let (candidate, with) = answer?;
                read.push(with);
                if let Some(candidate) = candidate {
                    let earlier = found
                        .as_ref()
                        .is_none_or(|f: &ClusterFound| sighting(&candidate) < sighting(f));
                    if earlier {
                        found = Some(candidate);
                    }
                }
            }
        }
        Ok((found, read))
    }

    /// The node owning `key`'s partition, if the nodes' ranges cover the
    /// dataset's partitions `0..P` without a gap.
    fn owner_of(&self, key: &[u8]) -> Option<&ReadNode> {
        let mut ranges: Vec<(u16, u16, &ReadNode)> = self
            .nodes
            .iter()
            .filter_map(|n| n.owns.map(|(start, end)| (start, end, n)))
            .collect();
        ranges.sort_by_key(|r| r.0);
        let mut next = 0;
        for (start, end, _) in &ranges {
            if *start != next || end <= start {
                return None;
            }
            next = *end;
        }
        let partition = partition_of(key, next.max(1));
        ranges
            .into_iter()
            .find(|(start, end, _)| (*start..*end).contains(&partition))
            .map(|(_, _, node)| node)
    }

    async fn found_on(
        &self,
        node: &ReadNode,
        request: &ReadRequest,
    ) -> Result<(Option<ClusterFound>, ReadWith), ReadError> {
        let mut answer = self.ask(node, request).await?;
        let with = answer.read_with();
        if answer.shape.is_none() {
            return Ok((None, with));
        }
        let mut found = None;
        loop {
            match answer.stream.next().await.map_err(|e| node.error(e))? {
                ReadEvent::Item(ReadItem::Found(f)) => found = f,
                ReadEvent::End => break,
                _ => return Err(node.error("an answer other than a found record to a get")),
            }
        }
        let found = found.map(|f: FoundRecord| ClusterFound {
            node: node.id,
            record: f.record,
            job: f.job,
            file: f.file,
            offset: f.offset,
            path: f.path.map(path_of_bytes),
        });
        Ok((found, with))
    }

    /// The path of `job`'s file `file`, from the first node that listed it.
    async fn path_of(&self, job: JobId, file: u32) -> Result<Option<PathBuf>, ReadError> {
        let request = ReadRequest::FilePath {
            dataset: self.dataset.clone(),
            job,
            file,
        };
        for node in &self.nodes {
            let mut answer = self.ask(node, &request).await?;
            if answer.shape.is_none() {
                continue;
            }
            let mut path = None;
            loop {
                match answer.stream.next().await.map_err(|e| node.error(e))? {
                    ReadEvent::Item(ReadItem::Path(p)) => path = p,
                    ReadEvent::End => break,
                    _ => return Err(node.error("an answer other than a path")),
                }
            }
            if let Some(path) = path {
                return Ok(Some(path_of_bytes(path)));
            }
        }
        Ok(None)
    }

    /// Every job of the dataset with a part on some node, its parts summed.
    pub fn jobs(&self, runtime: &Handle) -> Result<(DatasetShape, Vec<ClusterJob>), ReadError> {
        runtime.block_on(async {
            let request = ReadRequest::Jobs {
                dataset: self.dataset.clone(),
            };
            let (shape, answers) = self.ask_all(&request).await?;
            let mut jobs: std::collections::BTreeMap<JobId, Vec<(NodeId, JobPart)>> =
                Default::default();
            for mut answer in answers {
                let node = answer.node.clone();
                loop {
                    match answer.stream.next().await.map_err(|e| node.error(e))? {
                        ReadEvent::Item(ReadItem::Jobs(parts)) => {
                            for part in parts {
                                jobs.entry(part.job).or_default().push((node.id, part));
                            }
                        }
                        ReadEvent::End => break,
                        _ => return Err(node.error("an answer other than jobs")),
                    }
                }
            }
            let jobs = jobs
                .into_iter()
                .map(|(job, parts)| ClusterJob::of(job, &parts))
                .collect();
            Ok((shape, jobs))
        })
    }

    /// `job`'s files in file order, each node's counters summed, then its
    /// rejected records in file and offset order, each handed to `on`.
    pub fn files(
        &self,
        runtime: &Handle,
        job: &ClusterJob,
        mut on: impl FnMut(JobEntry) -> std::io::Result<()>,
    ) -> Result<(), ReadError> {
        runtime.block_on(async {
            let request = ReadRequest::Files {
                dataset: self.dataset.clone(),
                job: job.job,
            };
            let (_, answers) = self.ask_all(&request).await?;
            let mut cursors: Vec<Cursor> = answers.into_iter().map(Cursor::new).collect();
            // Files: the smallest number first, every node's counters of it
            // added up.
            loop {
                let mut next: Option<u32> = None;
                for cursor in &mut cursors {
                    if let Some(Pending::File(f)) = cursor.peek().await? {
                        next = Some(next.map_or(f.seq, |n| n.min(f.seq)));
                    }
                }
                let Some(seq) = next else { break };
                let mut file = ClusterFile {
                    seq,
                    path: None,
                    size: 0,
                    counts: ReadCounts::default(),
                    problems: Vec::new(),
                };
                for cursor in &mut cursors {
                    // A node with parts of two attempts counted it twice.
                    while let Some(Pending::File(f)) = cursor.peek().await?
                        && f.seq == seq
                    {
                        let Some(Pending::File(f)) = cursor.take() else {
                            unreachable!("peeked")
                        };
                        if job.counts_part(cursor.answer.node.id, f.attempt) {
                            file.add(f, job.attempt);
                        }
                    }
                }
                on(JobEntry::File(file))?;
            }
            loop {
                let mut next: Option<(usize, (u32, u64))> = None;
                for (i, cursor) in cursors.iter_mut().enumerate() {
                    if let Some(Pending::Rejected(r)) = cursor.peek().await? {
                        let at = (r.file, r.offset);
                        if next.is_none_or(|(_, n)| at.cmp(&n) == Ordering::Less) {
                            next = Some((i, at));
                        }
                    }
                }
                let Some((i, _)) = next else { break };
                let Some(Pending::Rejected(r)) = cursors[i].take() else {
                    unreachable!("peeked")
                };
                if r.attempt == job.attempt && job.counts_part(cursors[i].answer.node.id, r.attempt)
                {
                    on(JobEntry::Rejected(r))?;
                }
            }
            Ok(())
        })
    }
}

/// Orders sightings: job, then file and offset (a key stored by a job
/// the node cannot name sorts last).
fn sighting(found: &ClusterFound) -> (u64, u32, u64) {
    (
        found.job.map_or(u64::MAX, JobId::get),
        found.file,
        found.offset,
    )
}

fn format_of(shape: &DatasetShape) -> Format {
    match shape.key_field {
        None => Format::Lines,
        Some(key_field) => Format::Tsv {
            key_field: key_field as usize,
        },
    }
}

fn path_of_bytes(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// Every future's output, in order, all polled at once.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("ready")).collect()
}

/// A key's first sighting in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFound {
    /// The node that answered.
    pub node: NodeId,
    pub record: Vec<u8>,
    /// The coordinators' job it was first seen in, if known.
    pub job: Option<JobId>,
    pub file: u32,
    pub offset: u64,
    pub path: Option<PathBuf>,
}

/// One of the coordinators' jobs, its nodes' parts summed (see
/// [`JobPart`] for a job that recovered a lost owner's partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterJob {
    pub job: JobId,
    /// Its latest attempt with a part on some node: the reads counted.
    pub attempt: u32,
    /// Each node's parts: its id and state.
    pub parts: Vec<(NodeId, String)>,
    /// The earliest part's start.
    pub started_unix: u64,
    pub files: u64,
    pub problem_files: u64,
    pub bytes: u64,
    pub counts: ReadCounts,
    /// The node and attempt of each part counted.
    counted: Vec<(NodeId, u32)>,
}

impl ClusterJob {
    /// The job of `parts`, every one a part of `job`. A part of an earlier
    /// attempt that is neither staged nor committed (it failed, or a node
    /// was lost running it) is left out: the job moved on without it.
    fn of(job: JobId, parts: &[(NodeId, JobPart)]) -> Self {
        let attempt = parts.iter().map(|(_, p)| p.attempt).max().unwrap_or(0);
        let kept = [JobState::Committed, JobState::Staged].map(|s| s.to_string());
        let mut summed = Self {
            job,
            attempt,
            parts: Vec::new(),
            started_unix: u64::MAX,
            files: 0,
            problem_files: 0,
            bytes: 0,
            counts: ReadCounts::default(),
            counted: Vec::new(),
        };
        for (node, part) in parts {
            let latest = part.attempt == attempt;
            if !latest && !kept.contains(&part.state) {
                continue;
            }
            summed.parts.push((*node, part.state.clone()));
            summed.counted.push((*node, part.attempt));
            summed.started_unix = summed.started_unix.min(part.started_unix);
            summed.counts.add_part(&part.counts, latest);
            if latest {
                summed.files += part.files;
                summed.problem_files += part.problem_files;
                summed.bytes += part.bytes;
            }
        }
        summed
    }

    /// Whether `node`'s part of `attempt` counts in this job.
    fn counts_part(&self, node: NodeId, attempt: u32) -> bool {
        self.counted.contains(&(node, attempt))
    }

    /// If some nodes have published the job and others only staged it
    /// (they have yet to publish): the job, those published and those
    /// staged.
    fn halfway(&self) -> Option<(JobId, Vec<NodeId>, Vec<NodeId>)> {
        let on = |state: JobState| {
            let state = state.to_string();
            let nodes: Vec<NodeId> = self
                .parts
                .iter()
                .filter(|(_, s)| *s == state)
                .map(|(node, _)| *node)
                .collect();
            nodes
        };
        let (published, staged) = (on(JobState::Committed), on(JobState::Staged));
        (!published.is_empty() && !staged.is_empty()).then_some((self.job, published, staged))
    }

    /// `committed` when every part is; else each part's state by node.
    pub fn state(&self) -> String {
        let committed = JobState::Committed.to_string();
        if self.parts.iter().all(|(_, s)| *s == committed) {
            return committed;
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(node, state)| format!("node {node} {state}"))
            .collect();
        parts.join(", ")
    }
}

/// What [`ClusterReader::files`] hands on: every file first, then every
/// rejected record.
pub enum JobEntry {
    File(ClusterFile),
    Rejected(RejectedPart),
}

/// One file of a job, its nodes' counters summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFile {
    pub seq: u32,
    /// From the node that listed it (read some of it).
    pub path: Option<PathBuf>,
    pub size: u64,
    pub counts: ReadCounts,
    pub problems: Vec<String>,
}

impl ClusterFile {
    /// Adds a node's counts of the file, of a part of `attempt`; its reads,
    /// rejections and problems only if `attempt` is the job's latest.
    fn add(&mut self, part: FilePart, attempt: u32) {
        if self.path.is_none()
            && let Some(path) = part.path
        {
            self.path = Some(path_of_bytes(path));
            self.size = part.size;
        }
        let latest = part.attempt == attempt;
        self.counts.add_part(&part.counts, latest);
        if latest {
            self.problems.extend(part.problems);
        }
    }
}

/// What a node's `Files` answer has next.
enum Pending {
    File(FilePart),
    Rejected(RejectedPart),
}

/// A node's `Files` answer read one entry at a time.
struct Cursor {
    answer: Answer,
    files: VecDeque<FilePart>,
    rejected: VecDeque<RejectedPart>,
    ended: bool,
}

impl Cursor {
    fn new(answer: Answer) -> Self {
        Self {
            answer,
            files: VecDeque::new(),
            rejected: VecDeque::new(),
            ended: false,
        }
    }

    /// The next entry, reading a frame if none is buffered.
    async fn peek(&mut self) -> Result<Option<Pending>, ReadError> {
        while self.files.is_empty() && self.rejected.is_empty() && !self.ended {
            let node = &self.answer.node;
            match self.answer.stream.next().await.map_err(|e| node.error(e))? {
                ReadEvent::Item(ReadItem::Files(files)) => self.files.extend(files),
                ReadEvent::Item(ReadItem::Rejected(r)) => self.rejected.extend(r),
                ReadEvent::End => self.ended = true,
                _ => return Err(node.error("an answer other than files")),
            }
        }
        Ok(match (self.files.front(), self.rejected.front()) {
            (Some(f), _) => Some(Pending::File(f.clone())),
            (None, Some(r)) => Some(Pending::Rejected(r.clone())),
            (None, None) => None,
        })
    }

    fn take(&mut self) -> Option<Pending> {
        match self.files.pop_front() {
            Some(f) => Some(Pending::File(f)),
            None => self.rejected.pop_front().map(Pending::Rejected),
        }
    }
}

/// A node's export stream as a sorted source of the merge: a task reads
/// and checks its frames into a queue of [`SOURCE_QUEUE_FRAMES`], and the
/// merge (on the calling thread) takes them as it needs them.
struct NodeSource {
    node: ReadNode,
    batches: mpsc::Receiver<Result<ValidBatch, String>>,
    batch: Option<ValidBatch>,
    next: usize,
}

impl NodeSource {
    fn spawn(runtime: &Handle, mut answer: Answer) -> Self {
        let (send, batches) = mpsc::channel(SOURCE_QUEUE_FRAMES);
        let node = answer.node.clone();
        runtime.spawn(async move {
            loop {
                let event = match answer.stream.next().await {
                    Ok(event) => event,
                    Err(e) => {
                        let _ = send.send(Err(e.to_string())).await;
                        return;
                    }
                };
                match event {
                    ReadEvent::Batch(batch) => {
                        if send.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                    ReadEvent::End => return,
                    ReadEvent::Item(_) => {
                        let _ = send.send(Err("an item inside an export".into())).await;
                        return;
                    }
                }
            }
        });
        Self {
            node,
            batches,
            batch: None,
            next: 0,
        }
    }

    /// Moves to the next batch once this one is read; `None` at the end.
    fn refill(&mut self) -> Result<(), SortError> {
        while self.batch.as_ref().is_none_or(|b| self.next >= b.len()) {
            self.next = 0;
            match self.batches.blocking_recv() {
                Some(Ok(batch)) => self.batch = Some(batch),
                Some(Err(reason)) => {
                    self.batch = None;
                    return Err(SortError::io(
                        std::path::Path::new(&format!(
                            "node {} at {}",
                            self.node.id, self.node.address
                        )),
                        std::io::Error::other(reason),
                    ));
                }
                None => {
                    self.batch = None;
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

impl SortedSource for NodeSource {
    fn current(&self) -> Option<Record<'_>> {
        let batch = self.batch.as_ref()?;
        (self.next < batch.len()).then(|| batch.record(self.next))
    }

    fn advance(&mut self) -> Result<(), SortError> {
        self.next += 1;
        self.refill()
    }
}

impl From<SortError> for ReadError {
    fn from(e: SortError) -> Self {
        ReadError::Export(ExportError::Corrupt(e))
    }
}
