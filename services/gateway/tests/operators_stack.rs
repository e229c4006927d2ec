//! The operators' stack in deploy/: the Prometheus alert rules pass `promtool check rules` and
//! their own unit tests, and every metric the Grafana dashboard and the rules name is one the
//! services really export, scraped from the three binaries after the traffic each panel shows.
//! (A renamed metric would otherwise leave a panel blank and an alert silent, with nothing to say
//! so.)

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use parley_gateway::LimitConfig;
use parley_test_support::sio::Client;
use parley_test_support::stack::{Spec, TestStack};
use parley_test_support::{ProjectFixture, TEST_JWT_SECRET, conversation_exists, http, publish_json};
use serde_json::{Value, json};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// `promtool` from Debian's `prometheus` package (scripts/lib.sh installs it), or a clear failure.
fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool cannot run ({e}): install Debian's prometheus package (scripts/lib.sh does)")
        })
}

#[test]
fn the_alert_rules_pass_promtool_and_fire_on_the_series_they_are_about() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    let said = String::from_utf8_lossy(&checked.stdout).into_owned() + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "promtool check rules: {said}");
    assert!(said.contains("SUCCESS: 4 rules found"), "{said}");

    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    let said = String::from_utf8_lossy(&tested.stdout).into_owned() + &String::from_utf8_lossy(&tested.stderr);
    assert!(tested.status.success(), "promtool test rules: {said}");
}

/// Every `parley_*` name in `text` (PromQL expressions, or anything holding them).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("parley_") {
        let preceded = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The PromQL of every panel target in a Grafana dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().expect("the dashboard has panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().expect("each target has an expr").to_owned())
        .collect()
}

/// Names exported in Prometheus text: each sample's metric name.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

async fn scrape(addr: SocketAddr) -> String {
    let response = http::request(addr, "GET", "/metrics", None, None).await;
    assert_eq!(response.status, 200, "{}", response.raw);
    response.raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported_by_the_services() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/parley.json")).unwrap()).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 8, "the dashboard has its panels' queries: {queries:?}");
    let mut named = metric_names(&queries.join("\n"));
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    named.extend(metric_names(&rules));
    for panel in [
        "parley_gateway_sends_total",
        "parley_gateway_delivery_latency_seconds_bucket",
        "parley_consumer_pending",
        "parley_gateway_connected_sockets",
        "parley_persistence_dead_lettered_total",
        "parley_gateway_refusals_total",
        "parley_emails_failed_total",
        "parley_gateway_ready",
    ] {
        assert!(
            named.contains(panel),
            "the dashboard or the rules show {panel}: {named:?}"
        );
    }

    // The three binaries, as deployed: a gateway with a send limit of one at once, and a
    // notification worker whose SMTP server is not there, emailing after 100 ms.
    let stack = TestStack::builder().streams().build().await;
    let limits = LimitConfig {
        send_rate: 1,
        send_burst: 1,
        ..LimitConfig::OFF
    };
    let gateway = stack.start(Spec::gateway().binary().limits(limits)).await;
    let persistence = stack.start(Spec::persistence().binary()).await;
    let smtp = format!("smtp://127.0.0.1:{}", parley_test_support::smtp::free_port());
    let notification = stack
        .start(Spec::notification().binary().email(smtp, Duration::from_millis(100)))
        .await;

    // What each panel shows: a connected socket, an accepted send (delivered back to the
    // sender's socket), a rate-limited one, a dead letter, and a digest for the offline provider
    // that cannot be sent.
    let project = ProjectFixture::new("Dashboards");
    project.publish_started(&stack.js).await;
    conversation_exists(stack.db(), &project).await;
    publish_json(&stack.js, "parley.project.started", &json!({ "not": "a project" })).await;
    let token = parley_test_support::token_for(project.client(), TEST_JWT_SECRET);
    let mut client = Client::connect(&gateway.url(), json!({ "token": token }))
        .await
        .unwrap();
    let conversation = project.conversation_id();
    let wait = Duration::from_secs(15);
    let send = |body: &str| {
        client.emit_with_ack(
            "message:send",
            json!({ "conversationId": conversation, "body": body }),
            wait,
        )
    };
    let accepted = send("for the dashboard").await.unwrap();
    assert_eq!(accepted["ok"], true, "{accepted}");
    let limited = send("one too many").await.unwrap();
    assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");
    let (event, _) = client.next_event(wait).await.unwrap();
    assert_eq!(event, "message:new");

    // Polled, since the workers' gauges and the digest's failure come on their own time.
    let services = [gateway.addr, persistence.addr, notification.addr];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = BTreeSet::new();
        for addr in services {
            seen.extend(exported(&scrape(addr).await));
        }
        let missing: Vec<&String> = named.iter().filter(|name| !seen.contains(*name)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "named in deploy/ but not exported by any service: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let gateway_text = scrape(gateway.addr).await;
    assert!(gateway_text.contains("parley_gateway_ready 1"), "{gateway_text}");
}
