//! Wires the command line to the library; decides nothing itself.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mlflow_artifact_proxy::Proxy;
use mlflow_artifact_proxy::config::{Cli, Command, LogFormat};
use mlflow_artifact_proxy::store::s3;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Before anything else runs (one thread): so that rust-s3's client trusts AWS_CA_BUNDLE too
    // (`tls`), start again with SSL_CERT_FILE set to it; `exec` returns only on failure.
    if let Some(mut command) = mlflow_artifact_proxy::store::tls::ca_bundle_as_ssl_cert_file() {
        use std::os::unix::process::CommandExt;
        let error = command.exec();
        eprintln!(
            "mlflow-artifact-proxy: cannot start again with SSL_CERT_FILE=AWS_CA_BUNDLE: {error}"
        );
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(Box::new(cli.serve)));
    let format = match &command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    init_logging(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mlflow-artifact-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Serve(args) => serve(args.build()?).await,
            Command::EnsureBucket(args) => {
                let config = args.store.build()?;
                let outcome =
                    s3::ensure_bucket(&config, Duration::from_secs(args.wait_secs)).await?;
                println!("bucket {:?} {outcome}", config.bucket);
                Ok(())
            }
            Command::Healthcheck(args) => healthcheck(&args.url).await,
            Command::ConfigReference => {
                print!("{}", mlflow_artifact_proxy::config::reference::render());
                Ok(())
            }
            Command::SweepUploads(args) => {
                let config = args.store.build()?;
                let store = s3::Store::new(
                    &config,
                    mlflow_artifact_proxy::ops::metrics::Metrics::new(),
                    mlflow_artifact_proxy::wire::timeouts::Timeouts::default().s3,
                )?;
                let age = Duration::from_secs(args.older_than_hours.saturating_mul(3600));
                let report =
                    mlflow_artifact_proxy::store::stale_uploads::sweep(&store, age, |_| false)
                        .await
                        .map_err(|e| format!("sweep failed: {e}"))?;
                println!(
                    "open uploads: {}, aborted: {}, failed: {}",
                    report.open, report.aborted, report.failed
                );
                if report.failed > 0 {
                    return Err(format!("{} uploads could not be aborted", report.failed));
                }
                Ok(())
            }
            Command::Gc(args) => {
                let out: mlflow_artifact_proxy::commands::gc::Sink =
                    Arc::new(|line| println!("{line}"));
                mlflow_artifact_proxy::commands::gc::run(
                    mlflow_artifact_proxy::commands::gc::GcConfig::from_args(&args)?,
                    None,
                    out,
                )
                .await
                .map(drop)
            }
            Command::Verify(args) => {
                let out: mlflow_artifact_proxy::commands::verify::Sink =
                    Arc::new(|line| println!("{line}"));
                // Exit 2 when it could not run at all: 1 means a mismatch.
                return Ok(
                    match mlflow_artifact_proxy::commands::verify::run(&args, out).await {
                        Ok(summary) => ExitCode::from(summary.exit_code()),
                        Err(message) => {
                            eprintln!("mlflow-artifact-proxy: verify: {message}");
                            ExitCode::from(2)
                        }
                    },
                );
            }
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("mlflow-artifact-proxy: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: mlflow_artifact_proxy::config::ServeConfig) -> Result<(), String> {
    let upstream = config.upstream.clone();
    let endpoint = config.store.endpoint.clone();
    let proxy = Proxy::start(config).await?;
    tracing::info!(
        "listening on {} (metrics on {}), MLflow at {upstream}, S3 at {endpoint}",
        proxy.addr,
        proxy.metrics_addr
    );
    shutdown_signal().await;
    tracing::info!("signal received");
    proxy.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// GET the URL on loopback with a tiny HTTP/1.1 client; 200 → Ok.
async fn healthcheck(url: &str) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status() == http::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{url}: {}", response.status()))
    }
}
