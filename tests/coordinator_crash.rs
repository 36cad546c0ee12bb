//! Crash recovery of coordinator processes: three `quern coordinator`s,
//! one SIGKILLed while `quern submit` sends a manifest of thousands of
//! files in many chunks, then restarted on its data directory. Whatever
//! the moment, the submission either completes or is aborted and completes
//! when submitted again, counting every file exactly once against the last
//! finished submission; the replicas end at the same applied index with
//! identical states (the restarted one included); and an identical
//! re-submission finds nothing new or changed.
//!
//! The kill points: the leader, then a follower, once the leader has
//! applied the first chunks (a follower then applies the same entries at
//! about that moment); then the leader and a follower in turn at random
//! moments drawn from a seed (`QUERN_CRASH_SEED`; printed, so a failure
//! can be replayed).

mod common;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, figure, text, tsv_line};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Files of the first round's manifest; each round lists `NEW_PER_ROUND`
/// more, and changes the mtime of every 41st.
const FILES: usize = 16_000;
const NEW_PER_ROUND: usize = 150;
/// About 1 KiB paths: a chunk (at most 1 MiB) holds about 1000 files, so
/// a manifest is sent in 16 or more chunks.
const PAD: usize = 1_000;
const DATASET: &str = "crash";
/// Bounds every wait for the cluster: elections, a client noticing a dead
/// leader, catching up.
const PATIENCE: Duration = Duration::from_secs(60);

fn files(round: u64) -> usize {
    FILES + NEW_PER_ROUND * round as usize
}

fn mtime(file: usize, round: u64) -> u64 {
    if file as u64 % 41 == round % 41 {
        1_800_000_000 + round
    } else {
        1_700_000_000
    }
}

/// What `submit` prints: new, changed, unchanged, gone, pending shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    new: u64,
    changed: u64,
    unchanged: u64,
    gone: u64,
    pending: u64,
}

impl Counts {
    fn of(summary: &str) -> Self {
        Self {
            new: figure(summary, "new"),
            changed: figure(summary, "changed"),
            unchanged: figure(summary, "unchanged"),
            gone: figure(summary, "gone"),
            pending: figure(summary, "pending shards"),
        }
    }

    /// Round `round`'s manifest against the last finished one's.
    fn expected(finished: Option<u64>, round: u64) -> Self {
        let mut counts = Self {
            new: 0,
            changed: 0,
            unchanged: 0,
            gone: 0,
            pending: 0,
        };
        for file in 0..files(round) {
            match finished {
                Some(before) if file < files(before) => {
                    if mtime(file, before) == mtime(file, round) {
                        counts.unchanged += 1;
                    } else {
                        counts.changed += 1;
                    }
                }
                _ => counts.new += 1,
            }
        }
        counts.gone = finished.map_or(0, |before| {
            files(before).saturating_sub(files(round)) as u64
        });
        counts.pending = counts.new + counts.changed;
        counts
    }
}

/// Which replica dies.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Leader,
    Follower,
}

/// When it dies, counted from the start of the submission.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Once the leader has applied chunks holding this many files.
    AfterFiles(u64),
    After(Duration),
}

/// The cluster and what it has finished so far.
struct Crashes {
    cluster: Cluster,
    /// The round whose manifest the last finished submission listed.
    finished: Option<u64>,
    kills_mid_submission: u32,
    /// `quern submit --chunks-in-flight`.
    chunks_in_flight: &'static str,
}

impl Crashes {
    fn start(chunks_in_flight: &'static str) -> Self {
        let mut cluster = Cluster::start();
        cluster.wait_for_leader(PATIENCE);
        Self {
            cluster,
            finished: None,
            kills_mid_submission: 0,
            chunks_in_flight,
        }
    }

    fn manifest(&self, round: u64) -> std::path::PathBuf {
        let path = self.cluster.path(&format!("round-{round}.tsv"));
        if !path.exists() {
            let text: String = (0..files(round))
                .map(|file| tsv_line(file, mtime(file, round), PAD))
                .collect();
            std::fs::write(&path, text).unwrap();
        }
        path
    }

    fn spawn_submit(&self, round: u64) -> Child {
        self.cluster
            .client(&[
                "submit",
                "--no-progress",
                "--chunks-in-flight",
                self.chunks_in_flight,
                "--dataset",
                DATASET,
                "--manifest",
            ])
            .arg(self.manifest(round))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Submits round `round`'s manifest, kills `victim` at `moment`,
    /// restarts it (at once, or once the submission has ended), and checks
    /// that the submission completes, at once or when submitted again, and
    /// that the replicas then agree.
    fn round(&mut self, round: u64, victim: Victim, moment: Moment, restart_at_once: bool) {
        let started = Instant::now();
        let mut submit = self.spawn_submit(round);
        let leader = self.wait_for(moment, &mut submit);
        let mid_submission = submit.try_wait().unwrap().is_none();
        let victim = match victim {
            Victim::Leader => leader,
            Victim::Follower => leader % 3 + 1,
        };
        self.cluster.kill(victim);
        if restart_at_once {
            self.cluster.restart(victim);
        }
        let out = wait_for_exit(submit);
        if !restart_at_once {
            self.cluster.restart(victim);
        }
        self.kills_mid_submission += u32::from(mid_submission);
        let stderr = text(&out.stderr);
        let outcome = if out.status.success() {
            let counts = Counts::of(&text(&out.stdout));
            assert_eq!(
                counts,
                Counts::expected(self.finished, round),
                "round {round}: the submission went through, counting files wrongly"
            );
            "completed".to_owned()
        } else {
            // A failed submission was aborted, or had finished before its
            // answer was lost, or had not begun (the kill cut the
            // dataset's creation): never half.
            assert!(
                stderr.contains("was aborted")
                    || stderr.contains("had finished")
                    || !stderr.contains("submission"),
                "round {round}: {stderr}"
            );
            let counts = self.submit_until_done(round);
            let expected = Counts::expected(self.finished, round);
            let finished_anyway = Counts::expected(Some(round), round);
            assert!(
                counts == expected || counts == finished_anyway,
                "round {round}: submitted again, {counts:?}; expected {expected:?} \
                 (the first submission aborted) or {finished_anyway:?} (it had finished)\n\
                 the first submission said: {stderr}"
            );
            format!(
                "failed, then completed ({})",
                if counts == expected {
                    "it had been aborted"
                } else {
                    "it had finished"
                }
            )
        };
        self.finished = Some(round);
        let replicas = self.cluster.wait_until_replicas_agree(PATIENCE);
        eprintln!(
            "round {round}: killed {victim} (leader was {leader}) {} at {moment:?}, restarted {}; \
             submission {outcome}; replicas agree at applied index {} in {:.1} s",
            if mid_submission {
                "mid-submission"
            } else {
                "after the submission ended"
            },
            if restart_at_once {
                "at once"
            } else {
                "after it"
            },
            replicas[0]["last_applied"],
            started.elapsed().as_secs_f64()
        );
    }

    /// Waits for `moment`; returns the leader at that time.
    fn wait_for(&mut self, moment: Moment, submit: &mut Child) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        match moment {
            Moment::After(delay) => std::thread::sleep(delay),
            Moment::AfterFiles(files) => loop {
                let status = self.cluster.status();
                let job = &status["jobs"][0];
                let sent = ["new", "changed", "unchanged"]
                    .iter()
                    .map(|k| job[k].as_u64().unwrap_or(0))
                    .sum::<u64>();
                if job["phase"] == "submitting" && sent >= files {
                    break;
                }
                if let Some(status) = submit.try_wait().unwrap() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = submit.stderr.take() {
                        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
                    }
                    panic!(
                        "the submission ended ({status}) before {files} files were applied \
                         (make the manifest longer if it succeeded): {stderr}"
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{files} files not applied within {PATIENCE:?}: {status}"
                );
                std::thread::sleep(Duration::from_millis(20));
            },
        }
        self.cluster.wait_for_leader(PATIENCE)["leader"]
            .as_u64()
            .unwrap()
    }

    /// Submits round `round`'s manifest until it goes through (a try may
    /// fail while the cluster elects a leader or the victim restarts).
    fn submit_until_done(&self, round: u64) -> Counts {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = wait_for_exit(self.spawn_submit(round));
            if out.status.success() {
                return Counts::of(&text(&out.stdout));
            }
            assert!(
                Instant::now() < deadline,
                "round {round} not submitted within {PATIENCE:?}: {}",
                text(&out.stderr)
            );
        }
    }

    /// Nothing was lost: the last round's manifest again is all unchanged,
    /// and the replicas agree.
    fn resubmit_identical(&self) {
        let round = self.finished.expect("a round finished");
        let counts = self.submit_until_done(round);
        assert_eq!(
            counts,
            Counts::expected(Some(round), round),
            "an identical re-submission found new or changed files"
        );
        self.cluster.wait_until_replicas_agree(PATIENCE);
    }
}

fn wait_for_exit(mut child: Child) -> Output {
    let deadline = Instant::now() + PATIENCE * 2;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!(
                "quern submit still running after {:?}: {}",
                PATIENCE * 2,
                text(&child.wait_with_output().unwrap().stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn leader_and_follower_killed_mid_submission() {
    // One chunk in flight: the submission lasts 16 Raft round trips, so the
    // kill after the first applied chunk lands mid-way however fast the
    // replicas are (with 8 in flight, a loaded machine's status polls
    // sometimes saw the submission only once it had ended).
    let mut crashes = Crashes::start("1");
    // A first submission, so the next ones have a catalogue to compare.
    crashes.round(0, Victim::Follower, Moment::AfterFiles(1), false);
    crashes.round(1, Victim::Leader, Moment::AfterFiles(1), true);
    crashes.round(2, Victim::Follower, Moment::AfterFiles(1), false);
    crashes.resubmit_identical();
    assert_eq!(crashes.kills_mid_submission, 3, "a kill came too late");
}

#[test]
fn leader_and_follower_killed_at_random_moments() {
    let seed = std::env::var("QUERN_CRASH_SEED")
        .map(|s| s.parse().expect("QUERN_CRASH_SEED is a number"))
        .unwrap_or(20_261_203);
    eprintln!("seed {seed} (QUERN_CRASH_SEED={seed} replays it)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut crashes = Crashes::start("8");
    // Leader and follower, each restarted at once and after the
    // submission, at random moments of it (about 1 s in a debug build).
    for round in 0..4 {
        let victim = if round % 2 == 0 {
            Victim::Leader
        } else {
            Victim::Follower
        };
        let moment = Moment::After(Duration::from_millis(rng.random_range(0..1000)));
        crashes.round(round, victim, moment, round < 2);
    }
    crashes.resubmit_identical();
}
