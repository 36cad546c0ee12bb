//! The local feed: shards from a walk of the PATH arguments.
//!
//! The walk runs only as fast as scanners go idle, so the input listing is
//! never held whole. Each file is registered in the ledger, cut into
//! shards, and its shards gathered into bundles.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use super::{BUNDLE_BYTES, BUNDLE_SHARDS, FileRegister, Scanners, ShardFeed};
use crate::actors::JobContext;
use crate::counters::JobCounters;
use crate::input::listing::{Excluded, Listed, Walk};
use crate::input::shard::{InputFile, Shard, plan_shards};
use crate::quarantine::FileProblem;

/// Shards from the files under PATH arguments, in input order.
pub struct WalkFeed {
    inputs: Vec<PathBuf>,
    share: Share,
}

/// Which of the walk's files this node reads: every `count`th, from the
/// `index`th. Every node numbers every file, so a record's position is the
/// same whichever node reads it.
#[derive(Debug, Clone, Copy)]
struct Share {
    index: u32,
    count: u32,
}

impl WalkFeed {
    pub fn new(inputs: Vec<PathBuf>) -> Self {
        Self::share(inputs, 0, 1)
    }

    /// The files numbered `index`, `index + count`, ... of the walk: one
    /// node's share when `count` nodes read the same paths.
    pub fn share(inputs: Vec<PathBuf>, index: u32, count: u32) -> Self {
        let count = count.max(1);
        Self {
            inputs,
            share: Share {
                index: index % count,
                count,
            },
        }
    }
}

impl ShardFeed for WalkFeed {
    fn name(&self) -> &'static str {
        "input walk"
    }

    fn run(&self, ctx: &JobContext, scanners: &Scanners) -> Result<(), String> {
        let mut listing = Listing {
            ctx,
            scanners,
            share: self.share,
            next_seq: 0,
            files: FileRegister::new(ctx),
            bundle: Vec::new(),
            bundle_bytes: 0,
        };
        // Never read the store's own files back as input.
        let excluded = Excluded::dirs(&[ctx.store.db_dir(), ctx.store.tmp_dir()]);
        let mut walk = Walk::new(excluded, ctx.config.follow_links);
        let mut failure = None;
        let _ = walk.run(&self.inputs, &mut |listed| {
            listing.visit(listed).unwrap_or_else(|e| {
                failure = Some(e);
                ControlFlow::Break(())
            })
        });
        JobCounters::add(&ctx.counters.links_skipped, walk.links_skipped());
        match failure {
            Some(failure) => Err(failure),
            None => {
                listing.hand_out_bundle();
                listing.files.finish()
            }
        }
        .map_err(|e| format!("listing the input failed: {e}"))
    }
}

/// One walk's progress: the next file's number, and the bundle being
/// gathered.
struct Listing<'a> {
    ctx: &'a JobContext,
    scanners: &'a Scanners,
    share: Share,
    next_seq: u32,
    files: FileRegister<'a>,
    /// Shards not yet handed out, and their listed bytes.
    bundle: Vec<Shard>,
    bundle_bytes: u64,
}

impl Listing<'_> {
    fn visit(&mut self, listed: Listed) -> Result<ControlFlow<()>, String> {
        let ctx = self.ctx;
        let seq = self.next_seq;
        self.next_seq = seq
            .checked_add(1)
            .ok_or("more than 4 billion input files")?;
        if seq % self.share.count != self.share.index {
            return Ok(ControlFlow::Continue(()));
        }
        let (file, problem) = match listed {
            Listed::File {
                path,
                size,
                modified,
            } => (
                InputFile {
                    seq,
                    path,
                    size,
                    modified,
                },
                None,
            ),
            Listed::Unreadable { path, error } => {
                let file = InputFile {
                    seq,
                    path,
                    size: 0,
                    modified: None,
                };
                let problem = FileProblem {
                    offset: None,
                    message: format!("cannot read: {error}"),
                };
                (file, Some(problem))
            }
        };
        self.files.add(file.clone())?;
        if let Some(problem) = problem {
            tracing::warn!(path = %file.path.display(), "{}", problem.message);
            ctx.store
                .put_problem(ctx.dataset.id, ctx.job.id, seq, &problem)
                .map_err(|e| e.to_string())?;
            return Ok(ControlFlow::Continue(()));
        }
        for shard in plan_shards(Arc::new(file), ctx.config.split_bytes) {
            self.bundle_bytes += shard.listed_bytes();
            self.bundle.push(shard);
            let full = self.bundle.len() >= BUNDLE_SHARDS || self.bundle_bytes >= BUNDLE_BYTES;
            if full && !self.hand_out_bundle() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Hands the bundle to the next idle scanner. Returns `false` if the
    /// job ended meanwhile.
    fn hand_out_bundle(&mut self) -> bool {
        if self.bundle.is_empty() {
            return true;
        }
        self.bundle_bytes = 0;
        self.scanners.hand_out(std::mem::take(&mut self.bundle))
    }
}
