//! The `inspect` command: what Bull users get from a dashboard, as text.

use std::fmt::Write;

use clap::{Parser, Subcommand};
use common::config::Settings;

use crate::config::RedisConfig;
use crate::queue::{DeadJob, Queue, QueueError, Stats, from_ms};

/// Shows the expiration queue: pending jobs, the next due time, dead-lettered jobs; or makes
/// dead-lettered jobs due again.
#[derive(Debug, Parser)]
#[command(name = "expiration inspect", version, long_about = None)]
pub struct Inspect {
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(subcommand)]
    pub action: Option<Action>,
}

impl Settings for Inspect {}

/// What to do besides showing the queue.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Make dead-lettered jobs due now (all of them when no id is given)
    Requeue {
        /// Order ids of the jobs to requeue
        ids: Vec<String>,
    },
}

impl Inspect {
    /// Connects to the queue and does what was asked; the text to print.
    pub async fn run(self) -> Result<String, QueueError> {
        let queue = Queue::open(&self.redis.target(), self.redis.queue()).await?;
        Ok(match self.action {
            None => report(&queue).await?.to_string(),
            Some(Action::Requeue { ids }) => {
                let count = queue.requeue_dead(&ids).await?;
                format!("requeued {count} dead-lettered job(s)\n")
            }
        })
    }
}

/// A snapshot of the queue for people.
#[derive(Debug, Clone)]
pub struct Report {
    /// Queue name as its hash tag.
    pub queue: String,
    /// Counts and the next due time.
    pub stats: Stats,
    /// Dead-lettered jobs, oldest failure first.
    pub dead: Vec<DeadJob>,
}

/// Reads the snapshot.
pub async fn report(queue: &Queue) -> Result<Report, QueueError> {
    Ok(Report {
        queue: queue.name().tag(),
        stats: queue.stats().await?,
        dead: queue.dead().await?,
    })
}

fn time(ms: i64) -> String {
    common::events::timestamp::format(&from_ms(ms))
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stats = &self.stats;
        let mut text = String::new();
        let _ = writeln!(text, "queue        {}", self.queue);
        let _ = writeln!(
            text,
            "pending      {} ({} waiting, {} being fired)",
            stats.pending(),
            stats.waiting,
            stats.leased
        );
        let next = match stats.next_due_ms {
            Some(due) if due <= stats.now_ms => {
                format!("{} (overdue by {} ms)", time(due), stats.now_ms - due)
            }
            Some(due) => format!("{} (in {} ms)", time(due), due - stats.now_ms),
            None => "none".into(),
        };
        let _ = writeln!(text, "next due     {next}");
        let _ = writeln!(text, "dead-letter  {}", stats.dead);
        for job in &self.dead {
            let _ = writeln!(
                text,
                "  {}  due {}  failed {}  attempts {}  {}",
                job.id,
                time(job.due),
                time(job.failed_at),
                job.attempts,
                job.reason
            );
        }
        f.write_str(&text)
    }
}
