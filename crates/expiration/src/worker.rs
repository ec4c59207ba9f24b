//! The firing loop: claims due jobs from the [`Queue`] and hands each to a [`JobHandler`].
//!
//! The loop sleeps until the earliest due time (or lease expiry) the last claim reported, and is
//! woken early when an earlier job is scheduled: by this process directly, by other replicas
//! through the queue's wake channel. It holds at most [`CLAIM_AHEAD`] times `concurrency` claimed
//! jobs, so a claimed job waits at most one round of publishes for a handler slot: its lease
//! (which must exceed twice the publish timeout) never ticks away in the waiting. Claiming ahead
//! of the free slots lets a saturated worker claim in batches, each claim being one round trip.
//! A fired job is completed in batches by a separate task; a failed one is retried with
//! exponential backoff, then dead-lettered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use common::bus::Backoff;
use common::telemetry::{ErrorChain, truncate};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::queue::{Claim, ID_BYTES, Job, MAX_BATCH, Queue, QueueError, RetryOutcome};

/// How many claimed jobs a worker holds per handler slot (see the module documentation).
pub const CLAIM_AHEAD: usize = 2;

/// Most claims one worker has in flight at once: while one is on its way back, the next is
/// already queued in Redis, which is never left idle by a busy worker's round trips.
pub const CLAIMS_IN_FLIGHT: usize = 2;

/// Any error a handler reports.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Does what a due job means. Called at least once per job: after a crash between firing and
/// completion the job fires again, so the effect must be idempotent.
pub trait JobHandler: Send + Sync + 'static {
    /// Fires `job`; an error makes the worker retry it later. An [`Unavailable`] error says a
    /// dependency failed, not the job: the retry comes soon and does not count as an attempt.
    fn fire(&self, job: &Job) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Whether firing can succeed now; while it cannot (the handler's dependency is known to be
    /// down) the worker claims nothing, so no job spends its attempts on an outage.
    fn ready(&self) -> bool {
        true
    }
}

/// A handler's dependency (NATS) failed; the job itself is not at fault.
#[derive(Debug, thiserror::Error)]
#[error("dependency unavailable")]
pub struct Unavailable(#[source] pub BoxError);

/// How soon a job whose handler's dependency was unavailable is due again.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// How a worker claims and retries.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Most jobs being fired at once by this process.
    pub concurrency: usize,
    /// How long a claimed job stays ours; past it, any replica may claim it again.
    pub lease: Duration,
    /// Claims of one job before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay before a failed job is due again, by attempt.
    pub backoff: Backoff,
    /// Longest sleep without any wake-up: only a safety net for a wake message lost while the
    /// subscription was reconnecting, never what normally decides when a job fires.
    pub max_idle: Duration,
    /// Test-only fault injection: claim jobs and never fire them, as a process stuck (then
    /// killed) between claim and publish would. See `EXPIRATION_FAULT_HOLD_BEFORE_PUBLISH`.
    pub hold_before_fire: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 256,
            lease: Duration::from_secs(30),
            max_attempts: 10,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            max_idle: Duration::from_secs(1),
            hold_before_fire: false,
        }
    }
}

/// What one [`Worker::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Jobs claimed.
    pub claimed: usize,
    /// Jobs fired and completed.
    pub fired: usize,
    /// Jobs whose handler failed (rescheduled or dead-lettered).
    pub failed: usize,
}

/// Claims due jobs and fires them with `H`.
pub struct Worker<H> {
    context: Arc<Context<H>>,
}

struct Context<H> {
    queue: Queue,
    handler: H,
    options: WorkerOptions,
    metrics: Metrics,
}

impl<H: JobHandler> Worker<H> {
    /// A worker on `queue` firing with `handler`, counting in `metrics`.
    pub fn new(queue: Queue, handler: H, options: WorkerOptions, metrics: Metrics) -> Self {
        Worker {
            context: Arc::new(Context {
                queue,
                handler,
                options,
                metrics,
            }),
        }
    }

    /// One pass without timers, for tests: claims what is due (up to `concurrency`), fires it
    /// all, completes what fired and retries what failed.
    pub async fn step(&self) -> Result<Step, QueueError> {
        let context = &self.context;
        let options = &context.options;
        let claim = context
            .queue
            .claim(options.concurrency.min(MAX_BATCH), options.lease)
            .await?;
        context.metrics.pending.set(claim.pending as i64);
        let results = futures::future::join_all(
            claim
                .jobs
                .iter()
                .map(|job| async move { (job, context.handler.fire(job).await) }),
        )
        .await;
        let mut done = Vec::new();
        let mut failed = 0;
        for (job, result) in results {
            match result {
                Ok(()) => {
                    context.count_fired(&claim, job);
                    done.push((job.id.clone(), job.token));
                }
                Err(e) => {
                    failed += 1;
                    context.fail(job, &*e).await;
                }
            }
        }
        let completed = context.queue.complete(&done).await?;
        context
            .metrics
            .lease_lost
            .inc_by(done.len() as u64 - completed);
        Ok(Step {
            claimed: claim.jobs.len(),
            fired: done.len(),
            failed,
        })
    }

    /// Runs until `shutdown`: then claims nothing more, lets the jobs in hand finish and be
    /// completed, and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let context = self.context;
        let options = &context.options;
        if options.hold_before_fire {
            tracing::warn!(
                "fault injection EXPIRATION_FAULT_HOLD_BEFORE_PUBLISH is on: claimed jobs are never fired (tests only)"
            );
        }
        let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let budget_size = (options.concurrency.max(1) * CLAIM_AHEAD).min(MAX_BATCH);
        let budget = Arc::new(Semaphore::new(budget_size));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let completer = tokio::spawn(complete_loop(
            context.queue.clone(),
            done_rx,
            context.metrics.clone(),
        ));
        let mut in_hand = JoinSet::new();
        let fire_all = |in_hand: &mut JoinSet<()>, claim, room| {
            for job in take_jobs(claim, room) {
                in_hand.spawn(fire_one(
                    context.clone(),
                    job,
                    slots.clone(),
                    done_tx.clone(),
                    shutdown.clone(),
                ));
            }
        };
        // Each claim in flight holds the room it may fill; what it does not fill is given back.
        let mut claims = futures::stream::FuturesUnordered::new();
        let mut pause = Duration::from_millis(50);
        let mut last_full = false;
        // Set when a claim found less than it could take (or failed): no claim is started
        // until this sleep ends or a wake-up comes.
        let mut idle: Option<Duration> = None;
        let mut waiting_for_handler = false;
        loop {
            // Right after a full claim we are saturated: waiting for half the room makes the next
            // claim a batch rather than a trickle of one-job claims.
            let want = if last_full {
                (budget_size / 2).max(1)
            } else {
                1
            };
            let ready = context.handler.ready();
            if ready && waiting_for_handler {
                tracing::info!("the handler can fire again; claiming");
                waiting_for_handler = false;
            }
            let may_claim = ready && idle.is_none() && claims.len() < CLAIMS_IN_FLIGHT;
            if may_claim && let Ok(mut room) = budget.clone().try_acquire_many_owned(want as u32) {
                // All the room there is, in one claim.
                let more = budget.available_permits().min(MAX_BATCH - want);
                if more > 0
                    && let Ok(extra) = budget.clone().try_acquire_many_owned(more as u32)
                {
                    room.merge(extra);
                }
                let queue = context.queue.clone();
                let lease = options.lease;
                claims.push(async move {
                    let claim = queue.claim(room.num_permits(), lease).await;
                    (claim, room)
                });
                continue;
            }
            if !ready && !waiting_for_handler {
                tracing::warn!(
                    "the handler cannot fire (NATS unavailable); claiming nothing until it can"
                );
                waiting_for_handler = true;
            }
            let resting = idle.filter(|_| claims.is_empty());
            let rested = async {
                match resting {
                    Some(sleep) => {
                        tokio::select! {
                            _ = context.queue.woken() => {}
                            _ = tokio::time::sleep(sleep) => {}
                        }
                    }
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((claim, room)) = claims.next() => {
                    let claim = match claim {
                        Ok(claim) => claim,
                        Err(e) => {
                            tracing::warn!(error = %ErrorChain(&e), ?pause, "cannot claim jobs; trying again");
                            last_full = false;
                            idle = Some(pause);
                            pause = (pause * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    };
                    pause = Duration::from_millis(50);
                    context.metrics.claims.inc();
                    context.metrics.pending.set(claim.pending as i64);
                    if claim.reclaimed > 0 {
                        tracing::warn!(
                            count = claim.reclaimed,
                            "took over jobs whose lease expired (a worker died or stalled)"
                        );
                    }
                    let full = claim.jobs.len() == room.num_permits();
                    last_full = full;
                    if full {
                        // More is due: whatever rest an earlier claim (or failure) set is over.
                        idle = None;
                    } else {
                        // Nothing more is due now. The rest starts once the other claim in
                        // flight (if any) is back; without it, two claims would keep replacing
                        // each other on an empty queue.
                        idle = Some(
                            claim
                                .next_in()
                                .unwrap_or(options.max_idle)
                                .min(options.max_idle),
                        );
                    }
                    fire_all(&mut in_hand, claim, room);
                    while in_hand.try_join_next().is_some() {}
                }
                _ = rested => idle = None,
                room = budget.clone().acquire_many_owned(want as u32), if may_claim => {
                    drop(room);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)), if !ready => {}
            }
        }
        tracing::info!(
            in_hand = in_hand.len(),
            "worker stopping; finishing jobs in hand"
        );
        // What the claims in flight leased is fired too, rather than left to its lease.
        while let Some((claim, room)) = claims.next().await {
            if let Ok(claim) = claim {
                fire_all(&mut in_hand, claim, room);
            }
        }
        while in_hand.join_next().await.is_some() {}
        drop(done_tx);
        let _ = completer.await;
        tracing::info!("worker stopped");
    }
}

impl<H: JobHandler> Context<H> {
    fn count_fired(&self, claim: &Claim, job: &Job) {
        self.metrics.fired.inc();
        self.metrics
            .lateness
            .observe(claim.lateness(job).as_secs_f64());
    }

    /// Retries `job` after its backoff, or dead-letters it when out of attempts; postpones it
    /// without using an attempt when its handler's dependency was [`Unavailable`].
    async fn fail(&self, job: &Job, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        if error.is::<Unavailable>() {
            match self.queue.postpone(job, UNAVAILABLE_RETRY).await {
                Ok(_) => {
                    self.metrics.postponed.inc();
                    tracing::warn!(job = %truncate(&job.id, ID_BYTES), error = %ErrorChain(error), delay = ?UNAVAILABLE_RETRY, "cannot fire now; postponed without using an attempt");
                }
                Err(e) => {
                    tracing::warn!(job = %truncate(&job.id, ID_BYTES), error = %ErrorChain(&e), "cannot postpone a job; it fires again when its lease expires");
                }
            }
            return;
        }
        let options = &self.options;
        let delay = options.backoff.delay(u64::from(job.attempts));
        // Bounded: it is logged, and kept with a dead-lettered job.
        let reason = truncate(&ErrorChain(error).to_string(), 300).into_owned();
        match self
            .queue
            .retry(job, delay, options.max_attempts, &reason)
            .await
        {
            Ok(RetryOutcome::Rescheduled) => {
                self.metrics.retried.inc();
                tracing::warn!(job = %truncate(&job.id, ID_BYTES), attempts = job.attempts, ?delay, error = %reason, "firing failed; retrying after backoff");
            }
            Ok(RetryOutcome::DeadLettered) => {
                self.metrics.dead_lettered.inc();
                tracing::error!(job = %truncate(&job.id, ID_BYTES), attempts = job.attempts, error = %reason, "firing failed for the last time; job dead-lettered");
            }
            Ok(RetryOutcome::LeaseLost) => {
                tracing::info!(job = %truncate(&job.id, ID_BYTES), "firing failed, but the job was moved or cancelled meanwhile");
            }
            Err(e) => {
                // Nothing is lost: the lease expires and the job is claimed again.
                tracing::warn!(job = %truncate(&job.id, ID_BYTES), error = %ErrorChain(&e), "cannot reschedule a failed job; it fires again when its lease expires");
            }
        }
    }
}

/// A claimed job with what it needs to be fired: its claim (for lateness; its jobs taken out)
/// and its share of the room the claim held.
struct Claimed {
    claim: Arc<Claim>,
    job: Job,
    room: OwnedSemaphorePermit,
}

/// Splits a claim's room among its jobs; the room it did not fill is free again.
fn take_jobs(mut claim: Claim, mut room: OwnedSemaphorePermit) -> Vec<Claimed> {
    let jobs = std::mem::take(&mut claim.jobs);
    let claim = Arc::new(claim);
    jobs.into_iter()
        .map(|job| Claimed {
            claim: claim.clone(),
            job,
            room: room.split(1).expect("a claim takes no more than its room"),
        })
        .collect()
}

async fn fire_one<H: JobHandler>(
    context: Arc<Context<H>>,
    claimed: Claimed,
    slots: Arc<Semaphore>,
    done: mpsc::UnboundedSender<(String, u64)>,
    shutdown: CancellationToken,
) {
    let Claimed { claim, job, room } = claimed;
    let _room = room;
    // Slots are handed out first come, first served: jobs fire in claim order.
    let _slot = slots
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    if context.options.hold_before_fire {
        tracing::warn!(job = %truncate(&job.id, ID_BYTES), attempts = job.attempts, "holding a claimed job before publishing (fault injection)");
        shutdown.cancelled().await;
        return;
    }
    match context.handler.fire(&job).await {
        Ok(()) => {
            context.count_fired(&claim, &job);
            tracing::debug!(job = %truncate(&job.id, ID_BYTES), lateness = ?claim.lateness(&job), "fired");
            let _ = done.send((job.id, job.token));
        }
        Err(e) => context.fail(&job, &*e).await,
    }
}

/// Completes fired jobs in batches of whatever has arrived since the last call.
async fn complete_loop(
    queue: Queue,
    mut done: mpsc::UnboundedReceiver<(String, u64)>,
    metrics: Metrics,
) {
    let mut batch = Vec::new();
    while done.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=5 {
            match queue.complete(&batch).await {
                Ok(completed) => {
                    metrics.lease_lost.inc_by(batch.len() as u64 - completed);
                    break;
                }
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %ErrorChain(&e), ?pause, "cannot complete fired jobs; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    // They fire once more after their lease; the message id absorbs the duplicate.
                    tracing::error!(error = %ErrorChain(&e), count = batch.len(), "giving up completing fired jobs; they will fire again after their lease");
                }
            }
        }
        batch.clear();
    }
}
