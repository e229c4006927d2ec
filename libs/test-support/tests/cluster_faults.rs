//! Parley on a three-node JetStream cluster, every stream replicated three times, under the
//! faults an operator meets (issue 20): a `kill -9` of the `PARLEY_CHAT` leader and its restart,
//! a `kill -9` of the JetStream meta leader, a node frozen for 10 s, a rolling restart of all
//! three nodes, a node that comes back with its store wiped, and the `PARLEY_CHAT` leader cut off
//! from the two other nodes for 30 s (a partition: each node then runs on a host of its own, a
//! network namespace, which needs root and iproute2). Each runs under continuous
//! load: four senders (both parties, over both gateways) each sending with a `clientMsgId` and
//! retrying what was not acknowledged with the same id, as a real client does; two gateways, two
//! persistence workers and a notification worker, all real binaries; and a socket of each party
//! on each gateway, reconnecting and replaying from its last `seq` whenever it is dropped.
//!
//! After each fault, with the cluster whole again: every acknowledged message is in history
//! exactly once, in `seq` order, with the `seq` its ack gave; a repeat of any send answers its
//! one message; every socket got each message exactly once, live or by replay; there is exactly
//! one notification per (message, recipient); and every durable consumer has drained. Each test
//! prints the longest window in which no send was acknowledged and the p99 send latency during
//! the fault: figures to read, never assertions (a slow machine fails nothing).
//!
//! The faults run one at a time (each on its own cluster and stack): two of them at once would
//! share two cores between six nats-servers and ten services and measure that instead.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use parking_lot::Mutex;
use parley_test_support::cluster::NatsCluster;
use parley_test_support::sio::{self, Client};
use parley_test_support::stack::{Endpoints, Service, Spec};
use parley_test_support::{
    ProjectFixture, TEST_JWT_SECRET, TestDatabase, conversation_exists, eventually, http, token_for,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// How long the invariants may take to settle once the cluster is whole: a bound, not a speed.
const PATIENCE: Duration = Duration::from_secs(120);

/// Senders (alternately the client and the provider) and the pause between one's sends.
const SENDERS: usize = 4;
const PACE: Duration = Duration::from_millis(250);

/// How long one attempt may wait for its answer before the sender gives up on it and retries:
/// past the gateway's own publish deadline (8 s), so that a slow answer is still an answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(12);

/// Acknowledged sends before a fault, and after it once the cluster is whole: the load spans it.
const BEFORE: usize = 40;
const AFTER: usize = 40;

/// One fault at a time: see the module's doc.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_9_of_the_chat_stream_leader_then_its_restart_loses_and_doubles_nothing() {
    run_fault(
        "kill -9 of the PARLEY_CHAT leader, then its restart",
        |cluster, client| {
            Box::pin(async move {
                let leader = cluster
                    .wait_for_stream_leader(client, parley_nats::CHAT_STREAM, None)
                    .await;
                eprintln!("killing {} (PARLEY_CHAT leader)", cluster.node_name(leader));
                cluster.kill(leader);
                let next = cluster
                    .wait_for_stream_leader(client, parley_nats::CHAT_STREAM, Some(leader))
                    .await;
                eprintln!(
                    "{} leads PARLEY_CHAT; restarting the killed node",
                    cluster.node_name(next)
                );
                cluster.restart(leader);
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_9_of_the_meta_leader_loses_and_doubles_nothing() {
    run_fault("kill -9 of the JetStream meta leader", |cluster, client| {
        Box::pin(async move {
            let leader = cluster.wait_for_meta_leader(None).await;
            // Whether it also led PARLEY_CHAT decides the figures: that election stops sends.
            let chat = cluster.stream_leader(client, parley_nats::CHAT_STREAM).await == Some(leader);
            eprintln!(
                "killing {} (meta leader{})",
                cluster.node_name(leader),
                if chat { ", and PARLEY_CHAT's" } else { "" }
            );
            cluster.kill(leader);
            let next = cluster.wait_for_meta_leader(Some(leader)).await;
            eprintln!("{} is meta leader; restarting the killed node", cluster.node_name(next));
            // Sends go on with a node down; the checks run on the whole cluster again.
            cluster.restart(leader);
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_frozen_for_10_s_loses_and_doubles_nothing() {
    run_fault("the PARLEY_CHAT leader's node frozen for 10 s", |cluster, client| {
        Box::pin(async move {
            // The node leading the stream every send goes to: the freeze that costs the most.
            let leader = cluster
                .wait_for_stream_leader(client, parley_nats::CHAT_STREAM, None)
                .await;
            eprintln!("freezing {} (PARLEY_CHAT leader) for 10 s", cluster.node_name(leader));
            cluster.freeze(leader, Duration::from_secs(10)).await;
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_all_three_nodes_loses_and_doubles_nothing() {
    run_fault("a rolling restart of the three nodes", |cluster, client| {
        Box::pin(async move {
            for index in 0..parley_test_support::cluster::NODES {
                eprintln!("restarting {}", cluster.node_name(index));
                cluster.graceful_restart(index);
                // As an operator does: the next node only once this one has caught up.
                cluster.wait_healed(client).await;
            }
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_back_with_its_store_wiped_loses_and_doubles_nothing() {
    run_fault("a node back with its store wiped", |cluster, client| {
        Box::pin(async move {
            // A follower's disk is replaced: it must catch up from the two that kept theirs.
            let leader = cluster
                .wait_for_stream_leader(client, parley_nats::CHAT_STREAM, None)
                .await;
            let follower = (leader + 1) % parley_test_support::cluster::NODES;
            // Which streams (and whether the meta group) the wiped node led, for reading a
            // failure: a follower of the chat stream may lead the others.
            let mut led = Vec::new();
            for stream in cluster.stream_names(client).await.unwrap_or_default() {
                if cluster.stream_leader(client, &stream).await == Some(follower) {
                    led.push(stream);
                }
            }
            let meta = cluster.meta_leader().await == Some(follower);
            eprintln!(
                "wiping {}'s store (a PARLEY_CHAT follower; leader of {led:?}{})",
                cluster.node_name(follower),
                if meta { " and of the meta group" } else { "" }
            );
            cluster.wipe_and_restart(follower);
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chat_leader_cut_off_from_the_two_other_nodes_for_30_s_loses_and_doubles_nothing() {
    run_fault_on(
        "the PARLEY_CHAT leader cut off from the two other nodes for 30 s",
        Network::Hosts,
        |cluster, client| {
            Box::pin(async move {
                // The minority side keeps its clients (a gateway, a worker) but can commit
                // nothing; the two others elect a leader of their own and go on. A service on
                // the cut-off node moves to another once JetStream has been silent there for
                // 12 s (`parley_nats::reach`): the cut outlasts that by far, and lasts until
                // every service has.
                let leader = cluster
                    .wait_for_stream_leader(client, parley_nats::CHAT_STREAM, None)
                    .await;
                eprintln!(
                    "cutting {} (PARLEY_CHAT leader) off from the two others for 30 s",
                    cluster.node_name(leader)
                );
                // Where the services are decides which of them the cut leaves without JetStream.
                eprintln!("connections: {}", cluster.connections().await);
                let cut = tokio::time::Instant::now();
                cluster.isolate(leader);
                // The cut is real once the other side has a leader of its own.
                let other_side = cluster
                    .node_client((leader + 1) % parley_test_support::cluster::NODES)
                    .await;
                let next = cluster
                    .wait_for_stream_leader(&other_side, parley_nats::CHAT_STREAM, Some(leader))
                    .await;
                eprintln!(
                    "{} leads PARLEY_CHAT on the other side after {:.1?}",
                    cluster.node_name(next),
                    cut.elapsed()
                );
                tokio::time::sleep_until(cut + Duration::from_secs(30)).await;
                // And it lasts until every service has left the cut-off node for one where
                // JetStream answers (the test's own client stays).
                eventually("every service off the cut-off node", PATIENCE, || async {
                    let names = cluster.client_names(leader).await?;
                    names.iter().all(|name| name == "parley-test").then_some(())
                })
                .await;
                eprintln!(
                    "connections {:.1?} after the cut: {}",
                    cut.elapsed(),
                    cluster.connections().await
                );
                cluster.rejoin(leader);
            })
        },
    )
    .await;
}

/// Where the cluster's nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Network {
    /// On loopback ports of this machine.
    Loopback,
    /// Each on a host of its own, so that one can be partitioned from the others.
    Hosts,
}

type Fault = for<'a> fn(
    &'a mut NatsCluster,
    &'a async_nats::Client,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// One acknowledged send.
#[derive(Debug, Clone)]
struct Sent {
    key: String,
    sender: usize,
    id: String,
    seq: i64,
    started: Instant,
    acked: Instant,
    attempts: usize,
}

/// One `message:new` a socket got.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    seq: i64,
    replayed: bool,
}

/// A socket of `user` on one gateway, kept connected by its task: what it got, and how often it
/// had to connect again.
struct Observer {
    label: String,
    got: Arc<Mutex<Vec<Delivery>>>,
    reconnects: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// The cluster, Postgres, two gateways, two persistence workers and a notification worker (real
/// binaries, `PARLEY_STREAM_REPLICAS=3`), and a project whose conversation exists.
struct Stack {
    cluster: NatsCluster,
    client: async_nats::Client,
    js: jetstream::Context,
    gateways: Vec<SocketAddr>,
    services: Vec<Service>,
    endpoints: Endpoints,
    project: ProjectFixture,
    _db: TestDatabase,
}

async fn stack(network: Network) -> Stack {
    parley_service::init_test_tracing();
    let cluster = match network {
        Network::Loopback => NatsCluster::start().await,
        Network::Hosts => NatsCluster::start_partitionable().await,
    };
    let db = TestDatabase::create().await;
    let endpoints = Endpoints::new(cluster.url(), Some(db.url.clone()));
    let specs = [
        Spec::gateway().named("gateway-1"),
        Spec::gateway().named("gateway-2"),
        Spec::persistence().named("persistence-1"),
        Spec::persistence().named("persistence-2"),
        Spec::notification().named("notification"),
    ];
    let mut services = Vec::new();
    for spec in specs {
        services.push(Service::launch(spec.binary().env("PARLEY_STREAM_REPLICAS", "3"), &endpoints).await);
    }
    for service in &mut services {
        service.wait_ready().await;
    }
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let project = ProjectFixture::new("Cluster faults");
    project.publish_started(&js).await;
    conversation_exists(&db, &project).await;
    Stack {
        gateways: vec![services[0].addr, services[1].addr],
        cluster,
        client,
        js,
        services,
        endpoints,
        project,
        _db: db,
    }
}

fn token(user: Uuid) -> String {
    token_for(user, TEST_JWT_SECRET)
}

/// Sender `sender`'s party: even senders are the client, odd ones the provider.
fn party(project: &ProjectFixture, sender: usize) -> Uuid {
    if sender.is_multiple_of(2) {
        project.client()
    } else {
        project.provider()
    }
}

/// Sends until `stop`, each send with its own `clientMsgId`, retried with the same one (on the
/// other gateway each time) until acknowledged, as a real client does.
async fn sender(
    gateways: Vec<SocketAddr>,
    conversation: Uuid,
    user: Uuid,
    sender: usize,
    sent: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
) {
    let path = format!("/v1/conversations/{conversation}/messages");
    let token = token(user);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("s{sender}-m{n}");
        let body = json!({ "body": format!("sender {sender} message {n}"), "clientMsgId": key });
        let started = Instant::now();
        let mut attempts = 0;
        let message = loop {
            let gateway = gateways[(sender + attempts) % gateways.len()];
            attempts += 1;
            match tokio::time::timeout(ATTEMPT_TIMEOUT, http::post(gateway, &path, &token, &body)).await {
                Ok(response) if response.status == 200 || response.status == 201 => {
                    break response.body["message"].clone();
                }
                // The outcome is unknown: the same clientMsgId again.
                Ok(response) if response.status == 503 => tokio::time::sleep(Duration::from_millis(100)).await,
                Ok(response) => panic!("a send answered {}: {}", response.status, response.raw),
                Err(_) => {}
            }
        };
        sent.lock().push(Sent {
            key,
            sender,
            id: message["id"].as_str().unwrap().to_owned(),
            seq: message["seq"].as_i64().unwrap(),
            started,
            acked: Instant::now(),
            attempts,
        });
        n += 1;
        tokio::time::sleep(PACE).await;
    }
}

/// Connects `user` to `url`, retrying while the gateway refuses (it stays up through every
/// fault, so this settles).
async fn connect(url: &str, user: Uuid) -> Client {
    eventually("a socket to connect", PATIENCE, || async {
        Client::connect(url, json!({ "token": token(user) })).await.ok()
    })
    .await
}

/// Keeps a socket of `user` on `url` connected until `stop`, recording every `message:new` of
/// `conversation`. When the gateway drops it, it connects again and joins with the highest `seq`
/// it got, as the client library does, so that the replay fills the gap.
fn observe(label: String, url: String, user: Uuid, conversation: Uuid, stop: Arc<AtomicBool>) -> Observer {
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let reconnects = Arc::new(AtomicUsize::new(0));
    let task = {
        let (got, reconnects) = (got.clone(), reconnects.clone());
        tokio::spawn(async move {
            let mut socket = connect(&url, user).await;
            while !stop.load(Ordering::SeqCst) {
                match socket.next_event(Duration::from_millis(500)).await {
                    Ok((name, data)) if name == "message:new" && data["conversationId"] == json!(conversation) => {
                        got.lock().push(Delivery {
                            id: data["id"].as_str().unwrap().to_owned(),
                            seq: data["seq"].as_i64().unwrap(),
                            replayed: data["replayed"] == true,
                        });
                    }
                    Ok(_) | Err(sio::Error::Timeout) => {}
                    Err(_) => {
                        reconnects.fetch_add(1, Ordering::SeqCst);
                        socket = connect(&url, user).await;
                        let last = got.lock().iter().map(|d| d.seq).max().unwrap_or(0);
                        let ack = eventually("a join after a reconnect", PATIENCE, || async {
                            let ack = socket
                                .emit_with_ack(
                                    "conversation:join",
                                    json!({ "conversationId": conversation, "lastSeq": last }),
                                    ATTEMPT_TIMEOUT,
                                )
                                .await
                                .ok()?;
                            (ack["ok"] == true).then_some(ack)
                        })
                        .await;
                        assert_eq!(ack["complete"], true, "a replay of a few hundred is complete: {ack}");
                    }
                }
            }
        })
    };
    Observer {
        label,
        got,
        reconnects,
        task,
    }
}

/// Every stored message of `conversation`, ascending, paged over HTTP.
async fn all_stored(addr: SocketAddr, conversation: Uuid, token: &str) -> Option<Vec<Value>> {
    let mut stored = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let query = before.map_or(String::new(), |seq| format!("&beforeSeq={seq}"));
        let path = format!("/v1/conversations/{conversation}/messages?limit=200{query}");
        let page = tokio::time::timeout(ATTEMPT_TIMEOUT, http::get(addr, &path, token))
            .await
            .ok()?;
        if page.status != 200 {
            return None;
        }
        let messages = page.body["messages"].as_array()?.clone();
        before = messages.first().and_then(|m| m["seq"].as_i64());
        stored.splice(0..0, messages);
        if page.body["hasMore"] != true {
            return Some(stored);
        }
    }
}

/// Every notification in `PARLEY_NOTIFICATIONS`, counted by `Nats-Msg-Id`.
async fn stored_notifications(js: &jetstream::Context) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for (id, _) in parley_test_support::stream_messages(js, parley_nats::NOTIFICATIONS_STREAM).await {
        *out.entry(id).or_insert(0) += 1;
    }
    out
}

/// The durable consumers of every stream whose backlog is not yet zero (`None` while the cluster
/// does not answer): name, pending, awaiting ack.
async fn undrained(client: &async_nats::Client, streams: &[String]) -> Option<Vec<(String, u64, u64)>> {
    let ask = |subject: String, payload: &'static str| async move {
        let reply = tokio::time::timeout(Duration::from_secs(3), client.request(subject, payload.into()))
            .await
            .ok()?
            .ok()?;
        serde_json::from_slice::<Value>(&reply.payload).ok()
    };
    let mut out = Vec::new();
    for stream in streams {
        let names = ask(format!("$JS.API.CONSUMER.NAMES.{stream}"), "{}").await?;
        for name in names["consumers"].as_array()?.iter().filter_map(Value::as_str) {
            let info = ask(format!("$JS.API.CONSUMER.INFO.{stream}.{name}"), "").await?;
            if info["config"]["durable_name"].as_str().is_none() {
                continue; // a gateway's ordered consumer: nothing to drain
            }
            let (pending, ack_pending) = (info["num_pending"].as_u64()?, info["num_ack_pending"].as_u64()?);
            if pending > 0 || ack_pending > 0 {
                out.push((format!("{stream}/{name}"), pending, ack_pending));
            }
        }
    }
    Some(out)
}

/// The `p`-th percentile of `values` (nearest rank).
fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    if values.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Runs `fault` under the load and checks every invariant once the cluster is whole again.
async fn run_fault(name: &str, fault: Fault) {
    run_fault_on(name, Network::Loopback, fault).await;
}

/// [`run_fault`] on a cluster whose nodes run as `network` says.
async fn run_fault_on(name: &str, network: Network, fault: Fault) {
    let _one = ONE_AT_A_TIME.lock().await;
    let begun = Instant::now();
    let mut stack = stack(network).await;
    let conversation = stack.project.conversation_id();
    let stop_observing = Arc::new(AtomicBool::new(false));
    let mut observers = Vec::new();
    for (g, addr) in stack.gateways.iter().enumerate() {
        for (who, user) in [
            ("client", stack.project.client()),
            ("provider", stack.project.provider()),
        ] {
            observers.push(observe(
                format!("{who} on gateway {}", g + 1),
                format!("http://{addr}"),
                user,
                conversation,
                stop_observing.clone(),
            ));
        }
    }
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop_sending = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            tokio::spawn(sender(
                stack.gateways.clone(),
                conversation,
                party(&stack.project, i),
                i,
                sent.clone(),
                stop_sending.clone(),
            ))
        })
        .collect();
    let acked = || sent.lock().len();
    eventually("sends acknowledged before the fault", PATIENCE, || async {
        (acked() >= BEFORE).then_some(())
    })
    .await;

    let fault_started = Instant::now();
    fault(&mut stack.cluster, &stack.client).await;
    let fault_ended = Instant::now();
    stack.cluster.wait_healed(&stack.client).await;
    let healed = Instant::now();
    let after_heal = acked();
    eventually("sends acknowledged once the cluster is whole", PATIENCE, || async {
        (acked() >= after_heal + AFTER).then_some(())
    })
    .await;
    stop_sending.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap();
    }
    let sent: Vec<Sent> = sent.lock().clone();
    let checking = Instant::now();

    // The figures: the longest stretch without an ack from the fault to the heal, and the p99
    // latency of the sends begun in it (retries included, as a user waits through them).
    let mut acks: Vec<Instant> = sent.iter().map(|s| s.acked).filter(|t| *t > fault_started).collect();
    acks.sort();
    let mut window = Duration::ZERO;
    let mut previous = fault_started;
    for t in acks {
        window = window.max(t - previous);
        previous = t;
        if t > healed {
            break;
        }
    }
    let mut during: Vec<Duration> = sent
        .iter()
        .filter(|s| s.started >= fault_started && s.started <= healed)
        .map(|s| s.acked - s.started)
        .collect();
    let retried = sent.iter().filter(|s| s.attempts > 1).count();
    eprintln!(
        "[{name}] fault {:.1?}, whole again {:.1?} later; {} sends acknowledged ({} begun during the fault, {retried} needed a retry); longest window without an ack {window:.2?}; send latency during the fault p50 {:.0?} p99 {:.0?} max {:.0?}",
        fault_ended - fault_started,
        healed - fault_ended,
        sent.len(),
        during.len(),
        percentile(&mut during, 50.0),
        percentile(&mut during, 99.0),
        percentile(&mut during, 100.0),
    );

    // Each send got its own message (distinct keys, distinct ids), and a repeat of any send that
    // needed a retry, or of a sample of the others, answers that message again.
    let by_id: BTreeMap<&str, &Sent> = sent.iter().map(|s| (s.id.as_str(), s)).collect();
    assert_eq!(by_id.len(), sent.len(), "two sends acknowledged as one message");
    let repeats = sent.iter().filter(|s| s.attempts > 1 || s.seq % 10 == 0);
    for s in repeats {
        let user = party(&stack.project, s.sender);
        let path = format!("/v1/conversations/{conversation}/messages");
        let body = json!({ "body": "a repeat", "clientMsgId": s.key });
        let answer = eventually("a repeat to be answered", PATIENCE, || async {
            let response = http::post(stack.gateways[0], &path, &token(user), &body).await;
            (response.status != 503).then_some(response)
        })
        .await;
        assert_eq!(
            answer.status, 200,
            "a repeat of {} is not the original: {}",
            s.key, answer.raw
        );
        assert_eq!(
            (
                answer.body["message"]["id"].as_str(),
                answer.body["message"]["seq"].as_i64()
            ),
            (Some(s.id.as_str()), Some(s.seq)),
            "a repeat of {} maps to another message",
            s.key
        );
    }

    // History: every acknowledged message once, in seq order, with its ack's seq, and no other.
    let reader = token(stack.project.provider());
    let stored = eventually("every acknowledged message in history", PATIENCE, || async {
        let stored = all_stored(stack.gateways[1], conversation, &reader).await?;
        (stored.len() >= sent.len()).then_some(stored)
    })
    .await;
    let stored_ids: Vec<&str> = stored.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let mut distinct = stored_ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), stored_ids.len(), "a message stored twice");
    assert_eq!(
        stored.len(),
        sent.len(),
        "history holds a message nobody was acknowledged"
    );
    let seqs: Vec<i64> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "history out of seq order: {seqs:?}"
    );
    for message in &stored {
        let id = message["id"].as_str().unwrap();
        let s = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id} stored but never acknowledged"));
        assert_eq!(message["seq"].as_i64(), Some(s.seq), "{id} stored with another seq");
    }

    let history_settled = checking.elapsed();
    // Sockets: each got every message exactly once, live or by replay after a reconnect.
    let short_of = || {
        observers
            .iter()
            .filter_map(|o| {
                let got = o.got.lock();
                let missing: Vec<i64> = by_id
                    .values()
                    .filter(|s| !got.iter().any(|d| d.id == s.id))
                    .map(|s| s.seq)
                    .collect();
                let reconnects = o.reconnects.load(Ordering::SeqCst);
                (!missing.is_empty()).then(|| {
                    format!(
                        "{}: {} missing (seqs {:?}…{:?}), {} got, {reconnects} reconnects",
                        o.label,
                        missing.len(),
                        missing.iter().min(),
                        missing.iter().max(),
                        got.len()
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    let all_delivered = tokio::time::timeout(PATIENCE, async {
        while !short_of().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        all_delivered.is_ok(),
        "sockets short of messages after {PATIENCE:?}:\n{}\nwhat each node holds:\n{}",
        short_of().join("\n"),
        stack.cluster.local_views().await
    );
    let sockets_settled = checking.elapsed();
    stop_observing.store(true, Ordering::SeqCst);
    for observer in &mut observers {
        (&mut observer.task).await.unwrap();
        let got = observer.got.lock();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for delivery in got.iter() {
            *counts.entry(delivery.id.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{} got messages twice: {twice:?}", observer.label);
        let unknown: Vec<_> = counts.keys().filter(|id| !by_id.contains_key(*id)).collect();
        assert!(
            unknown.is_empty(),
            "{} got unacknowledged messages: {unknown:?}",
            observer.label
        );
        eprintln!(
            "[{name}] {}: {} messages, {} by replay, {} reconnects",
            observer.label,
            got.len(),
            got.iter().filter(|d| d.replayed).count(),
            observer.reconnects.load(Ordering::SeqCst),
        );
    }

    // Every durable consumer drained (none stuck), then one notification per (message,
    // recipient): the other party.
    let streams = stack.cluster.stream_names(&stack.client).await.unwrap();
    let mut last_seen = Vec::new();
    let drained = tokio::time::timeout(PATIENCE, async {
        loop {
            match undrained(&stack.client, &streams).await {
                Some(left) if left.is_empty() => return,
                Some(left) => last_seen = left,
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(drained.is_ok(), "durable consumers stuck with a backlog: {last_seen:?}");
    // Drained counts only if every worker's consumer is there to drain (a worker once passed
    // for ready before it had any).
    for definition in [
        parley_nats::PERSISTENCE_CHAT_CONSUMER,
        parley_nats::PERSISTENCE_PROJECTS_CONSUMER,
        parley_nats::NOTIFICATION_MESSAGES_CONSUMER,
        parley_nats::NOTIFICATION_DIRECTORY_CONSUMER,
    ] {
        let name = definition.durable_name().unwrap();
        assert!(
            parley_test_support::consumer_info(&stack.js, definition.stream, &name)
                .await
                .is_some(),
            "the durable consumer {name} does not exist"
        );
    }
    let drained_after = checking.elapsed();
    let notifications = stored_notifications(&stack.js).await;
    let mut missing = Vec::new();
    for s in &sent {
        let recipient = party(&stack.project, s.sender + 1);
        match notifications.get(&format!("{}.{recipient}", s.id)) {
            Some(1) => {}
            Some(n) => panic!("{n} notifications of {} to its recipient", s.id),
            None => missing.push(s.id.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} notifications missing: {missing:?}\nwhat each node holds:\n{}",
        missing.len(),
        sent.len(),
        stack.cluster.local_views().await
    );
    assert_eq!(notifications.len(), sent.len(), "notifications of messages nobody sent");

    // Binaries' logs go with a passing test (a failing one keeps them for reading).
    drop(observers);
    stack.services.clear();
    let _ = std::fs::remove_dir_all(&stack.endpoints.log_dir);
    eprintln!(
        "[{name}] once the load stopped: history complete after {history_settled:.1?}, every socket after \
         {sockets_settled:.1?}, every durable consumer drained after {drained_after:.1?}; {:.0?} all told",
        begun.elapsed()
    );
}
