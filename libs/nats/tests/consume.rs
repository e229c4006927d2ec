//! The shared consumer runtime against a real nats-server: each disposition does to the message
//! what it says, burials keep the dead-letter format the CLI reads, "retry then bury" counts
//! deliveries, handlers run concurrently, and shutdown finishes and acks the messages in hand.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use futures::StreamExt;
use parley_events::DeadLetter;
use parley_nats::consume::{DeadLetters, Disposition, Handler, RetryLimit, Runtime};
use parley_test_support::{NatsServer, consumer_info, eventually};
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(30);
const STREAM: &str = "TEST_CONSUME";
const DURABLE: &str = "test-consumer";

async fn setup() -> (NatsServer, jetstream::Context, PullConsumer) {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    parley_nats::ensure_streams(&js, 1).await.unwrap();
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["test.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(DURABLE.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    (nats, js, consumer)
}

async fn publish(js: &jetstream::Context, subject: &str, payload: &str) -> u64 {
    js.publish(subject.to_owned(), payload.to_owned().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// The dead letters recorded so far: each with its subject and `Nats-Msg-Id`.
async fn dead_letters(js: &jetstream::Context, count: usize) -> Vec<(DeadLetter, String, String)> {
    let stream = js.get_stream(parley_nats::DEADLETTER_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut letters = Vec::new();
    for _ in 0..count {
        let message = tokio::time::timeout(PATIENCE, messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(parley_nats::MSG_ID_HEADER))
            .map(std::string::ToString::to_string)
            .unwrap_or_default();
        letters.push((
            serde_json::from_slice(&message.payload).unwrap(),
            message.subject.to_string(),
            id,
        ));
    }
    letters
}

/// Says what the payload asks for, and counts deliveries per payload.
#[derive(Default, Clone)]
struct AsTold {
    deliveries: Arc<Mutex<HashMap<String, usize>>>,
}

impl AsTold {
    fn deliveries(&self, payload: &str) -> usize {
        self.deliveries.lock().unwrap().get(payload).copied().unwrap_or(0)
    }
}

impl Handler for AsTold {
    async fn handle(&self, message: &jetstream::Message) -> Disposition {
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        let seen = {
            let mut deliveries = self.deliveries.lock().unwrap();
            let seen = deliveries.entry(payload.clone()).or_default();
            *seen += 1;
            *seen
        };
        match payload.as_str() {
            "retry once" if seen == 1 => Disposition::Retry {
                after: Duration::from_millis(100),
            },
            "terminate" => Disposition::terminate("told to"),
            "bury" => Disposition::bury("poison"),
            "give up" => RetryLimit {
                after: Duration::from_millis(50),
                max_deliveries: 3,
            }
            .retry_or_bury(message, "waited three times"),
            _ => Disposition::Ack,
        }
    }
}

#[tokio::test]
async fn each_disposition_settles_its_message_and_burials_keep_the_dead_letter_format() {
    let (_nats, js, consumer) = setup().await;
    let handler = AsTold::default();
    let shutdown = CancellationToken::new();
    let runtime = Runtime::new(js.clone(), consumer)
        .dead_letters(DeadLetters::new(js.clone(), "test", "parley_test_dead_lettered_total"))
        .run(handler.clone(), shutdown.clone());
    let running = tokio::spawn(runtime);

    for payload in ["ack", "retry once", "terminate"] {
        publish(&js, "test.a", payload).await;
    }
    let buried = publish(&js, "test.poison", "bury").await;
    publish(&js, "test.b", "give up").await;

    eventually("every message to be settled", PATIENCE, || async {
        let info = consumer_info(&js, STREAM, DURABLE).await?;
        (info.num_pending == 0 && info.num_ack_pending == 0 && handler.deliveries("give up") == 3).then_some(())
    })
    .await;
    assert_eq!(handler.deliveries("ack"), 1);
    assert_eq!(
        handler.deliveries("retry once"),
        2,
        "a retry comes back once, then acks"
    );
    assert_eq!(
        handler.deliveries("terminate"),
        1,
        "a terminated message never comes back"
    );
    assert_eq!(handler.deliveries("bury"), 1);
    assert_eq!(
        handler.deliveries("give up"),
        3,
        "retried until its third delivery, then buried"
    );

    let letters = dead_letters(&js, 2).await;
    let (letter, subject, id) = letters
        .iter()
        .find(|(letter, _, _)| letter.stream_seq == buried)
        .expect("the buried message is a dead letter");
    assert_eq!(subject, "parley.deadletter.test");
    assert_eq!(*id, format!("{STREAM}-{buried}"));
    assert_eq!(letter.stream, STREAM);
    assert_eq!(letter.subject, "test.poison");
    assert_eq!(letter.reason, "poison");
    assert_eq!(letter.payload, "bury");
    assert!(
        letters
            .iter()
            .any(|(letter, _, _)| letter.reason == "waited three times")
    );

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, running).await.unwrap().unwrap().unwrap();
}

/// Holds each message a while, counting how many it holds at once.
#[derive(Default, Clone)]
struct Slow {
    started: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    in_hand: Arc<AtomicUsize>,
    most_in_hand: Arc<AtomicUsize>,
}

impl Handler for Slow {
    async fn handle(&self, _message: &jetstream::Message) -> Disposition {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.in_hand.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_hand.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.in_hand.fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
        Disposition::Ack
    }
}

#[tokio::test]
async fn handlers_run_concurrently_and_shutdown_finishes_and_acks_the_messages_in_hand() {
    let (_nats, js, consumer) = setup().await;
    for i in 0..20 {
        publish(&js, "test.slow", &format!("message {i}")).await;
    }
    let handler = Slow::default();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        Runtime::new(js.clone(), consumer)
            .concurrency(4)
            .run(handler.clone(), shutdown.clone()),
    );
    eventually("four messages in hand", PATIENCE, || async {
        (handler.in_hand.load(Ordering::SeqCst) == 4).then_some(())
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, running).await.unwrap().unwrap().unwrap();

    let started = handler.started.load(Ordering::SeqCst);
    assert_eq!(handler.most_in_hand.load(Ordering::SeqCst), 4, "up to four at once");
    assert_eq!(
        handler.finished.load(Ordering::SeqCst),
        started,
        "every message in hand finished"
    );
    assert!(started < 20, "no new message is taken after the shutdown");
    eventually("the finished messages to be acked", PATIENCE, || async {
        let info = consumer_info(&js, STREAM, DURABLE).await?;
        (info.ack_floor.stream_sequence == started as u64).then_some(())
    })
    .await;
}
