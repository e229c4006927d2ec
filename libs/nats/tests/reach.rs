//! A process on a node cut off from the rest of its cluster moves to a node where JetStream
//! answers (`parley_nats::reach`), on a real three-node cluster whose nodes each have a host of
//! their own, so that one can be partitioned from the two others.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use parley_test_support::cluster::NatsCluster;
use parley_test_support::eventually;
use tokio_util::sync::CancellationToken;

/// A bound on the move, far past its design (12 s of silence, then a reconnect): not a speed.
const PATIENCE: Duration = Duration::from_secs(90);

/// The hardest case: the node cut off leads the chat stream, so for a while it still answers
/// for it (as a cut-off meta leader answered account requests for 20 s), from a group it no
/// longer hears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_the_chat_leader_cut_off_from_the_cluster_moves_to_a_node_where_a_send_is_stored() {
    let cluster = NatsCluster::start_partitionable().await;
    let setup = cluster.client().await;
    parley_nats::ensure_streams(&jetstream::new(setup.clone()), 3)
        .await
        .unwrap();
    let leader = cluster
        .wait_for_stream_leader(&setup, parley_nats::CHAT_STREAM, None)
        .await;
    // Given only the leader: the others come from its INFO, as a cluster advertises them.
    let client = parley_nats::connect(&cluster.node_url(leader), "parley-test")
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    js.get_stream(parley_nats::CHAT_STREAM).await.unwrap();
    assert_eq!(client.server_info().server_name, cluster.node_name(leader));
    let shutdown = CancellationToken::new();
    let reach = tokio::spawn(parley_nats::reach::stay_in_reach(client.clone(), shutdown.clone()));

    let cut = Instant::now();
    cluster.isolate(leader);
    let moved_to = eventually("the client on a node where a send is stored", PATIENCE, || async {
        let name = client.server_info().server_name;
        let publish = async {
            js.publish(
                parley_events::subjects::conversation_messages(uuid::Uuid::new_v4()),
                "probe".into(),
            )
            .await?
            .await
        };
        let stored = matches!(tokio::time::timeout(Duration::from_secs(2), publish).await, Ok(Ok(_)));
        (name != cluster.node_name(leader) && stored).then_some(name)
    })
    .await;
    eprintln!(
        "moved from {} to {moved_to} {:.1?} after the cut",
        cluster.node_name(leader),
        cut.elapsed()
    );
    cluster.rejoin(leader);
    shutdown.cancel();
    reach.await.unwrap();
}
