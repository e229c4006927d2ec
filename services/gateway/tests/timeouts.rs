//! Connections that never finish are closed within a bounded time and give their descriptors
//! back: a client trickling its headers, one that connects and says nothing, a body sent half,
//! and an engine.io session that never connects the namespace. One test in a file of its own, so
//! that the process's open descriptors are the gateway's and this test's alone.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{stack, token};
use parley_test_support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The gateway's deadlines are ten seconds each; a connection must be gone well within this.
const BOUND: Duration = Duration::from_secs(30);

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Reads until the gateway closes the connection; returns how long that took. `trickle`, when
/// given, is written a byte at a time, one a second, while waiting.
async fn closed_after(mut stream: TcpStream, trickle: Option<&[u8]>) -> Duration {
    let started = Instant::now();
    let mut trickle = trickle.unwrap_or_default().iter();
    let mut buffer = [0u8; 4096];
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Some(byte) = trickle.next() {
                    // A write may fail once the gateway closed; the read then says so.
                    let _ = stream.write_all(&[*byte]).await;
                }
            }
        }
        assert!(
            started.elapsed() < BOUND,
            "the connection is still open after {BOUND:?}"
        );
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Opens an engine.io session over HTTP long-polling and never connects the namespace; returns
/// how long until the gateway closed it (its next poll ends with a close or an error).
async fn unconnected_session(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let open = parley_test_support::http::request(addr, "GET", "/socket.io/?EIO=4&transport=polling", None, None).await;
    let sid = open
        .raw
        .split("\"sid\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    loop {
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        let poll = parley_test_support::http::request(addr, "GET", &path, None, None).await;
        if poll.status != 200 || poll.raw.starts_with('1') {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < BOUND,
            "the session is still open after {BOUND:?}: {}",
            poll.raw
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_are_closed_and_their_descriptors_released() {
    let stack = stack(1).await;
    let addr = stack.gateway(0).addr;
    let baseline = open_descriptors();

    let slowloris = async {
        let mut stream = connect(addr).await;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        closed_after(stream, Some(b"X-Slow: 1111111111111111111111111111111111111111")).await
    };
    let silent = async { closed_after(connect(addr).await, None).await };
    let half_body = async {
        let mut stream = connect(addr).await;
        let head = format!(
            "POST /v1/conversations/{}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"body\":",
            uuid::Uuid::new_v4(),
            token(uuid::Uuid::new_v4())
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        closed_after(stream, None).await
    };
    let idle_keep_alive = async {
        let mut stream = connect(addr).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        closed_after(stream, None).await
    };
    let (slowloris, silent, half_body, idle_keep_alive, session) =
        tokio::join!(slowloris, silent, half_body, idle_keep_alive, unconnected_session(addr));
    println!(
        "closed after: trickled headers {slowloris:?}, silent connection {silent:?}, half-sent body \
         {half_body:?}, idle keep-alive {idle_keep_alive:?}, engine.io session never connected {session:?}"
    );
    let back = eventually("the descriptors to return to their baseline", BOUND, || async {
        let open = open_descriptors();
        (open <= baseline).then_some(open)
    })
    .await;
    println!("open descriptors: {baseline} before, {back} after");
}
