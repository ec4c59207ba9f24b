//! `expiration`: runs the worker; `expiration inspect [requeue [ID...]]` inspects its queue.

use std::ffi::OsString;
use std::process::ExitCode;

use common::config::Settings;
use common::telemetry::ErrorChain;
use expiration::config::Config;
use expiration::inspect::Inspect;
use expiration::startup::Application;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|arg| arg.to_str()) {
        Some("inspect") => {
            args.splice(..2, [OsString::from("expiration inspect")]);
            inspect(Inspect::load_from(args))
        }
        Some("run") => {
            args.remove(1);
            run(Config::load_from(args))
        }
        _ => run(Config::load_from(args)),
    }
}

fn run(config: Config) -> ExitCode {
    let log = config.log.clone();
    common::service::main("the expiration worker", &log, |shutdown| async move {
        let app = Application::build(config).await?;
        tracing::info!(ops = %app.ops_address(), "ops endpoints listening");
        app.run(shutdown).await
    })
}

fn inspect(inspect: Inspect) -> ExitCode {
    let queue = inspect.redis.queue().tag();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime starts");
    match runtime.block_on(inspect.run()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("expiration inspect: queue {queue}: {}", ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}
