//! Running one ingest job: prepare it (validate, open the dataset, register
//! the job), run it under its supervisor, shut it down within the timeout,
//! and record how it ended.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::Actor;
use tokio::sync::oneshot;

use crate::actors::feed::ShardFeed;
use crate::actors::feed::walk::WalkFeed;
use crate::actors::job::{JobActor, JobArgs};
use crate::actors::messages::JobMsg;
use crate::actors::{JobContext, LaneMap, Routes};
use crate::config::{ConfigError, IngestConfig, MemoryPlan};
use crate::counters::{JOB_PROGRESS_INTERVAL, JobCounters};
use crate::job_runtime;
use crate::memory::monitor::MemoryPeaks;
use crate::memory::{self, Governor, GovernorLimits, Monitor};
use crate::shuffle::ShuffleJob;
use crate::store::catalog::{DatasetInfo, JobInfo, JobState, JobTotals};
use crate::store::{Store, StoreError};
use crate::tally_runs::TallyRuns;
use external_sort::batch_pool::BatchPool;
use proto_schema::shuffle::PartitionRange;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Scratch {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the partition map does not fit the dataset: {0}")]
    PartitionMap(String),
    #[error("could not start the memory monitor: {0}")]
    Monitor(std::io::Error),
    #[error("could not start the job's threads: {0}")]
    Runtime(std::io::Error),
    #[error("job {job} of dataset {dataset:?} failed, nothing was committed: {reason}")]
    Failed {
        dataset: String,
        job: u32,
        reason: String,
    },
    /// A part of the coordinators' job, staged and left so until they
    /// decide (`staged_parts::settle`).
    #[error(
        "job {job} of dataset {dataset:?} is staged; it stays so until the coordinators \
         decide: {reason}"
    )]
    Staged {
        dataset: String,
        job: u32,
        reason: String,
    },
}

/// A job registered and ready to run.
pub struct PreparedJob {
    ctx: Arc<JobContext>,
    feed: Arc<dyn ShardFeed>,
}

/// How a job that committed went.
#[derive(Debug)]
pub struct IngestOutcome {
    pub dataset: DatasetInfo,
    pub job: JobInfo,
    pub totals: JobTotals,
    pub elapsed: Duration,
    /// Stages that outlived the shutdown timeout (the job still committed).
    pub hung_stages: Vec<String>,
    /// Highest memory figures seen while the job ran.
    pub memory: MemoryPeaks,
}

impl PreparedJob {
    pub fn plan(&self) -> &MemoryPlan {
        &self.ctx.plan
    }

    pub fn dataset(&self) -> &DatasetInfo {
        &self.ctx.dataset
    }

    pub fn job(&self) -> &JobInfo {
        &self.ctx.job
    }
}

/// Validates the job and registers it as running, with its shards from a
/// walk of the PATH arguments `inputs`.
pub fn prepare(
    store: Arc<Store>,
    config: IngestConfig,
    inputs: Vec<PathBuf>,
    counters: Arc<JobCounters>,
) -> Result<PreparedJob, IngestError> {
    let shown_inputs = inputs.iter().map(|p| p.display().to_string()).collect();
    let feed = Arc::new(WalkFeed::new(inputs));
    prepare_with_feed(store, config, shown_inputs, feed, counters)
}

/// As [`prepare`], with the job's shards from `feed`; `shown_inputs` are
/// recorded with the job as what it ingests.
pub fn prepare_with_feed(
    store: Arc<Store>,
    config: IngestConfig,
    shown_inputs: Vec<String>,
    feed: Arc<dyn ShardFeed>,
    counters: Arc<JobCounters>,
) -> Result<PreparedJob, IngestError> {
    prepare_part(store, config, shown_inputs, feed, counters, Owned::All)
}

/// The partitions a part's lanes take records of.
pub enum Owned {
    /// Every partition: one node, or a map with one owner.
    All,
    /// Its share of the map; the records of the others go to their owners
    /// over the data channel, and its lanes take its peers' streams too.
    Shuffled(ShuffleJob),
    /// A lost owner's, read again from every shard of the job (a recovery
    /// part, lineage); the records of every other partition are read and
    /// dropped: their owners have them.
    Only(PartitionRange),
}

/// A job's part on this node: its shards from `feed`, its records kept or
/// sent on as `owned` says.
pub fn prepare_part(
    store: Arc<Store>,
    config: IngestConfig,
    shown_inputs: Vec<String>,
    feed: Arc<dyn ShardFeed>,
    counters: Arc<JobCounters>,
    owned: Owned,
) -> Result<PreparedJob, IngestError> {
    config.validate()?;
    let dataset = store.open_dataset(&config.dataset, config.format, config.partitions)?;
    let (lanes, routes, plan, shuffle) = match owned {
        Owned::All => {
            let lanes = LaneMap::new(dataset.partitions, config.threads);
            let plan = MemoryPlan::new(config.memory_bytes, lanes.lanes, config.batch_bytes);
            (lanes, Routes::local(&lanes), plan, None)
        }
        Owned::Only(partitions) => {
            let lanes = LaneMap::over(partitions, config.threads);
            let plan = MemoryPlan::new(config.memory_bytes, lanes.lanes, config.batch_bytes);
            (lanes, Routes::only(dataset.partitions, &lanes), plan, None)
        }
        Owned::Shuffled(shuffle) => {
            let lanes = LaneMap::over(shuffle.owned, config.threads);
            let remote: Vec<_> = shuffle.remote.iter().map(|r| r.partitions).collect();
            let routes = Routes::cluster(dataset.partitions, &lanes, &remote)
                .map_err(IngestError::PartitionMap)?;
            let destinations = lanes.lanes + remote.len();
            let plan = MemoryPlan::shuffling(
                config.memory_bytes,
                lanes.lanes,
                destinations,
                config.batch_bytes,
            );
            (lanes, routes, plan, Some(shuffle))
        }
    };
    plan.publish_metrics();
    let governor = Governor::new(GovernorLimits::new(
        plan.heap_bytes(),
        plan.edge_capacity,
        plan.batch_bytes,
        plan.run_bytes,
    ));
    let job = store.begin_part(&dataset, shown_inputs, feed.cluster_part())?;
    let scratch = store
        .tmp_dir()
        .join(format!("job-{}-{}", dataset.id, job.id));
    if let Err(source) = std::fs::create_dir_all(&scratch) {
        store.end_job(
            &job,
            JobState::Failed {
                reason: source.to_string(),
            },
            None,
        )?;
        return Err(IngestError::Scratch {
            path: scratch,
            source,
        });
    }
    let ctx = JobContext {
        store,
        dataset,
        job,
        config,
        plan,
        governor: Arc::new(governor),
        pool: Arc::new(BatchPool::new(plan.heap_bytes())),
        lanes,
        routes,
        shuffle,
        counters,
        tally_runs: Arc::new(TallyRuns::new(scratch.join("counts"))),
        scratch,
        hung_stages: Mutex::new(Vec::new()),
    };
    Ok(PreparedJob {
        ctx: Arc::new(ctx),
        feed,
    })
}

/// Runs a prepared job to its end, on a runtime of its own (see
/// [`job_runtime`]), and returns once the runtime's threads are gone. If
/// `cancel` completes first, the job is aborted with its output as the
/// reason. Call from a thread outside any async runtime.
pub fn run(
    prepared: PreparedJob,
    cancel: impl Future<Output = String>,
) -> Result<IngestOutcome, IngestError> {
    let runtime = job_runtime::build(prepared.ctx.config.threads).map_err(IngestError::Runtime)?;
    let outcome = runtime.block_on(supervise(prepared, cancel));
    runtime.shutdown_timeout(job_runtime::SHUTDOWN_GRACE);
    // The job's threads have exited, returning their pages; give back what
    // is left free, so a long-running process returns to its baseline.
    memory::release_free_memory();
    outcome
}

async fn supervise(
    prepared: PreparedJob,
    cancel: impl Future<Output = String>,
) -> Result<IngestOutcome, IngestError> {
    let started = Instant::now();
    let PreparedJob { ctx, feed } = prepared;
    let store = ctx.store.clone();
    let monitor = Monitor::start(ctx.governor.clone(), Box::new(move || store.memory_usage()))
        .map_err(IngestError::Monitor)?;
    let progress = {
        let counters = ctx.counters.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(JOB_PROGRESS_INTERVAL);
            loop {
                every.tick().await;
                counters.publish_progress();
            }
        })
    };
    let (reply, mut result) = oneshot::channel();
    let args = JobArgs {
        ctx: ctx.clone(),
        feed,
        reply,
    };
    let ended = match Actor::spawn(None, JobActor, args).await {
        Err(e) => Err(format!("could not start the job's stages: {e}")),
        Ok((job_actor, handle)) => {
            let ended = tokio::select! {
                ended = &mut result => ended,
                reason = cancel => {
                    let _ = job_actor.cast(JobMsg::Abort(reason));
                    (&mut result).await
                }
            }
            .unwrap_or_else(|_| Err("the job's supervisor stopped without a result".into()));
            // The supervisor stops itself once the job ends, taking up to the
            // shutdown timeout to stop its stages; allow it a little more.
            let limit = ctx.config.shutdown_timeout + Duration::from_secs(1);
            if tokio::time::timeout(limit, handle).await.is_err() {
                ctx.hung_stages
                    .lock()
                    .expect("hung stages lock")
                    .push("job supervisor".into());
            }
            ended
        }
    };
    progress.abort();
    let _ = progress.await;
    ctx.counters.publish_progress();
    let _ = std::fs::remove_dir_all(&ctx.scratch);
    let memory = monitor.stop();
    let hung_stages = std::mem::take(&mut *ctx.hung_stages.lock().expect("hung stages lock"));
    let store = &ctx.store;
    match ended {
        Ok(totals) => Ok(IngestOutcome {
            dataset: ctx.dataset.clone(),
            job: store.end_job(&ctx.job, JobState::Committed, Some(totals))?,
            totals,
            elapsed: started.elapsed(),
            hung_stages,
            memory,
        }),
        Err(mut reason) => {
            if !hung_stages.is_empty() {
                reason.push_str(&format!(
                    "; did not stop in time: {}",
                    hung_stages.join(", ")
                ));
            }
            // A part of the coordinators' job left staged waits for their
            // decision (`staged_parts::settle`); anything else failed.
            let (dataset, job) = (ctx.dataset.name.clone(), ctx.job.id);
            let recorded = store.job(ctx.dataset.id, ctx.job.id)?;
            if recorded.is_some_and(|job| job.state == JobState::Staged) {
                return Err(IngestError::Staged {
                    dataset,
                    job,
                    reason,
                });
            }
            store.end_job(
                &ctx.job,
                JobState::Failed {
                    reason: reason.clone(),
                },
                None,
            )?;
            Err(IngestError::Failed {
                dataset,
                job,
                reason,
            })
        }
    }
}
