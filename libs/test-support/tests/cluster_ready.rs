//! Every Parley process becomes ready on a three-node cluster that has just formed, with the
//! streams replicated three times (issue 20's second defect): two gateways, two persistence
//! workers and a notification worker started together, as `docker compose --profile cluster up`
//! starts them, each creating the same streams, buckets and consumers at once.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use parley_test_support::TestDatabase;
use parley_test_support::cluster::NatsCluster;
use parley_test_support::stack::{Endpoints, Service, Spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_process_becomes_ready_together_on_a_cluster_that_has_just_formed() {
    parley_service::init_test_tracing();
    let cluster = NatsCluster::start().await;
    let db = TestDatabase::create().await;
    let endpoints = Endpoints::new(cluster.url(), Some(db.url.clone()));
    let specs = [
        Spec::gateway(),
        Spec::gateway(),
        Spec::persistence(),
        Spec::persistence(),
        Spec::notification(),
    ];
    let mut services = Vec::new();
    for spec in specs {
        let spec = spec.binary().env("PARLEY_STREAM_REPLICAS", "3");
        services.push(Service::launch(spec, &endpoints).await);
    }
    let started = std::time::Instant::now();
    // All five start at once; each wait panics with the log's tail past READY_TIMEOUT.
    for service in &mut services {
        service.wait_ready().await;
    }
    eprintln!("all five ready {:?} after they started", started.elapsed());
    // On a formed, healthy cluster every stream and consumer is applied at the first attempt: a
    // failed attempt there is a request the server left unanswered and the whole set-up starting
    // over (the defect: every stream's create timing out in turn, all processes in step).
    for service in &services {
        let failed: Vec<String> = service
            .log_lines()
            .into_iter()
            .filter(|line| {
                let message = line["message"].as_str().unwrap_or_default();
                message.starts_with("applying streams") || message.starts_with("opening the presence bucket")
            })
            .map(|line| line.to_string())
            .collect();
        assert!(failed.is_empty(), "{} retried its set-up: {failed:#?}", service.name());
    }
    drop(services);
    // Binaries' logs go with a passing test (a failing one keeps them for reading).
    let _ = std::fs::remove_dir_all(&endpoints.log_dir);
}
