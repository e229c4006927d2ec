//! Part 6, transcript export: one conversation of 100,000 messages (10,000 in short mode),
//! written through the store's own chained write path in batches as the worker writes them, then
//! exported through the real gateway (`GET /v1/conversations/{id}/transcript`). The baseline is Postgres sending the same rows in
//! chain order (`COPY (SELECT …) TO STDOUT`), the least any export must cost.
//!
//! Reported with it: the gateway's resident memory before the export and its peak after (a
//! streamed export keeps it flat; a `Vec` of 100k rows would add tens of MiB) and the export's
//! size. The export is
//! checked: it parses and verifies with the offline verifier against the gateway's key.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use chrono::{TimeDelta, Utc};
use futures::StreamExt as _;
use parley_store::MessageRow;
use parley_test_support::{ProjectFixture, TEST_JWT_SECRET, token_for};
use serde_json::json;
use sqlx::{Connection as _, PgConnection};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

use crate::stack::{Infra, ready};
use crate::{Context, Figure};

/// Rows per write, as the worker's default batch.
const BATCH: usize = 5000;

pub async fn run(context: &Context) -> anyhow::Result<Vec<Figure>> {
    let n: usize = context.size(10_000, 100_000);
    let infra = Infra::start(context).await?;
    let store = infra.db.store();
    let project = ProjectFixture::new("Bench transcript");
    let conversation = project.conversation_id();
    store.apply_project_started(&project.event).await?;
    let start = Utc::now();
    let mut seq = 0i64;
    while (seq as usize) < n {
        let rows: Vec<MessageRow> = (0..BATCH.min(n - seq as usize))
            .map(|_| {
                seq += 1;
                MessageRow {
                    id: Uuid::now_v7(),
                    conversation_id: conversation,
                    seq,
                    sender_id: if seq % 2 == 0 {
                        project.client()
                    } else {
                        project.provider()
                    },
                    body: crate::persistence::body(seq as usize),
                    client_msg_id: None,
                    created_at: start + TimeDelta::milliseconds(seq),
                }
            })
            .collect();
        store.insert_messages(&rows).await?;
    }
    store.pool().close().await;

    // Baseline: the same rows in chain order, straight out of Postgres.
    let mut conn = PgConnection::connect(&infra.db.url).await?;
    let began = Instant::now();
    let mut copy = conn
        .copy_out_raw(&format!(
            "COPY (SELECT chain_n, seq, id, sender_id, body, created_at, client_msg_id, chain_hash FROM messages \
             WHERE conversation_id = '{conversation}' ORDER BY chain_n) TO STDOUT"
        ))
        .await?;
    let mut baseline_bytes = 0usize;
    while let Some(chunk) = copy.next().await {
        baseline_bytes += chunk?.len();
    }
    let baseline = began.elapsed();
    drop(copy);
    conn.close().await.ok();

    let (gateway, addr) = infra.gateway(context)?;
    ready(addr).await?;
    let rss_before = gateway.rss_kib();
    let token = token_for(project.client(), TEST_JWT_SECRET);
    let began = Instant::now();
    let body = get_streamed(addr, &format!("/v1/conversations/{conversation}/transcript"), &token).await?;
    let elapsed = began.elapsed();
    let peak_after = peak_rss_kib(gateway.child.id());

    let export: serde_json::Value = serde_json::from_slice(&body).context("the export is not JSON")?;
    let keys = parley_transcript::keys::TranscriptKeys::parse(crate::stack::TRANSCRIPT_KEY, None)?;
    let verified = parley_transcript::verify::verify(&export, &keys.public_keys())
        .map_err(|failure| anyhow::anyhow!("the export does not verify: {failure}"))?;
    ensure!(
        verified.size == n as u64 + 1,
        "the export holds {} entries, not {}",
        verified.size,
        n + 1
    );

    let rate = n as f64 / elapsed.as_secs_f64();
    let baseline_rate = n as f64 / baseline.as_secs_f64();
    Ok(vec![Figure::higher(
        &context.figure_name(&format!("Transcript export, {n} messages")),
        rate,
        "entries/s",
        "Postgres COPY of the same rows",
        baseline_rate,
        0.0,
        "reported (seconds, not minutes; memory flat)",
        json!({
            "messages": n,
            "exportSeconds": elapsed.as_secs_f64(),
            "exportBytes": body.len(),
            "baselineSeconds": baseline.as_secs_f64(),
            "baselineBytes": baseline_bytes,
            "gatewayRssKibBefore": rss_before,
            "gatewayPeakRssKibAfter": peak_after,
        }),
    )])
}

/// `GET path` over HTTP/1.1 with `Connection: close`, read as it arrives; the body, de-chunked.
async fn get_streamed(addr: std::net::SocketAddr, path: &str, token: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    ensure!(head.starts_with("HTTP/1.1 200"), "the export answered {head}");
    let mut rest = &raw[split + 4..];
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(rest.to_vec());
    }
    let mut body = Vec::with_capacity(rest.len());
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without a size")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end])?.trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The peak resident memory of a process in KiB (`VmHWM`), from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
