//! `expiration`: runs the worker; `expiration inspect [requeue [ID...]]` inspects its queue.

use anyhow::Context;
use expiration::config::{Config, RedisConfig};
use expiration::inspect;
use expiration::queue::Queue;
use expiration::startup::Application;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: expiration                   run the worker
       expiration inspect           pending count, next due time, dead-lettered jobs
       expiration inspect requeue [ID...]
                                    make dead-lettered jobs due now (all when no ID)
       expiration --env-vars        the environment variables it reads, as JSON";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["run"] => run().await,
        ["inspect"] => {
            let queue = queue().await?;
            print!("{}", inspect::report(&queue).await?);
            Ok(())
        }
        ["inspect", "requeue", ids @ ..] => {
            let queue = queue().await?;
            let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            let count = queue.requeue_dead(&ids).await?;
            println!("requeued {count} dead-lettered job(s)");
            Ok(())
        }
        ["--env-vars"] => {
            println!("{}", common::env::to_json(&expiration::config::env_vars()));
            Ok(())
        }
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => anyhow::bail!("unknown arguments {args:?}\n{USAGE}"),
    }
}

async fn run() -> anyhow::Result<()> {
    common::telemetry::init();
    let config = Config::from_env().context("invalid configuration")?;
    let app = Application::build(config)
        .await
        .context("cannot start the worker")?;
    tracing::info!(ops = %app.ops_address(), "ops endpoints listening");
    let shutdown = CancellationToken::new();
    common::shutdown::cancel_on_signal(shutdown.clone())?;
    app.run(shutdown).await;
    Ok(())
}

async fn queue() -> anyhow::Result<Queue> {
    let config = RedisConfig::from_env().context("invalid configuration")?;
    Queue::connect(&config.url, config.queue.clone())
        .await
        .with_context(|| format!("cannot reach Redis for queue {}", config.queue.tag()))
}
