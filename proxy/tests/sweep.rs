//! The two sweepers of abandoned multipart uploads (the running proxy's and `sweep-uploads`) are
//! one: both stay inside the destination prefix. Issue 21: the running proxy listed under the raw
//! prefix, so a destination `s3://bucket/mlflow` aborted the uploads of `s3://bucket/mlflow-other/`.

mod common;

use std::time::Duration;

use common::*;
use mlflow_artifact_proxy::Proxy;
use mlflow_artifact_proxy::artifacts::upload::sweep;
use mlflow_artifact_proxy::ops::metrics::Metrics;
use mlflow_artifact_proxy::store::s3::Store;
use mlflow_artifact_proxy::store::stale_uploads;

/// S3s-fs cannot list multipart uploads (501): there both sweepers say so and abort nothing.
fn unsupported(error: &mlflow_artifact_proxy::store::s3::StoreError) -> bool {
    error.to_string().contains("501")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sweepers_stay_inside_the_destination_prefix() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let store = |prefix: &str| {
        Store::new(
            &s3.store_config(prefix),
            Metrics::new(),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let (mine, other) = (store("mlflow"), store("mlflow-other"));
    let mut config = serve_config(&s3, &format!("http://{}", mlflow.addr));
    config.store = s3.store_config("mlflow");
    let proxy = Proxy::start(config).await.unwrap();

    for round in ["the running proxy's sweep", "sweep-uploads"] {
        let kept = other
            .create_multipart(
                &other.key(&format!("1/{round}.bin")),
                "application/octet-stream",
                false,
            )
            .await
            .unwrap();
        let swept = mine
            .create_multipart(
                &mine.key(&format!("1/{round}.bin")),
                "application/octet-stream",
                false,
            )
            .await
            .unwrap();
        // Age 0: every upload of the destination is stale.
        let aborted = match round {
            "sweep-uploads" => stale_uploads::sweep(&mine, Duration::ZERO, |_| false)
                .await
                .map(|report| report.aborted),
            _ => sweep::sweep(&proxy.app, Duration::ZERO).await,
        };
        let open = match aborted {
            Err(e) if store_name() == "s3s-fs" => {
                assert!(unsupported(&e), "{round}: {e}");
                mine.abort_multipart(&mine.key(&format!("1/{round}.bin")), &swept)
                    .await
                    .unwrap();
                other
                    .abort_multipart(&other.key(&format!("1/{round}.bin")), &kept)
                    .await
                    .unwrap();
                continue;
            }
            Err(e) => panic!("{round}: {e}"),
            Ok(aborted) => {
                assert_eq!(aborted, 1, "{round}: only the destination's own upload");
                store("").list_multipart_uploads("").await.unwrap()
            }
        };
        let ids: Vec<&str> = open.iter().map(|(_, id, _)| id.as_str()).collect();
        assert_eq!(ids, [kept.as_str()], "{round}: {open:?}");
        other
            .abort_multipart(&other.key(&format!("1/{round}.bin")), &kept)
            .await
            .unwrap();
    }
    proxy.shutdown().await;
}
