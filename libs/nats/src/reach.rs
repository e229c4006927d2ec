//! A process stays where JetStream answers. A NATS client keeps a healthy connection to its
//! server however long that server has been cut off from the rest of its cluster (a partition):
//! every publish, request and pull through it then goes unanswered, while the nodes on the other
//! side have elected leaders of their own and serve. Measured on the test cluster: with both
//! gateways on a node cut off for 15 s, no send was acknowledged for the whole 15 s, although the
//! two other nodes led `PARLEY_CHAT` again after 6–9 s.
//!
//! [`stay_in_reach`] asks for the `PARLEY_CHAT` stream's state (every process depends on that
//! stream) through the client's server every [`PROBE_EVERY`]. It counts as an answer only when it
//! comes from a leader that hears from a follower: a leader cut off with its clients goes on
//! answering for a while (a cut-off JetStream meta leader answered account requests for 20 s)
//! while its followers fall silent. After [`CUT_OFF_AFTER`] without such an answer (longer than
//! any leader election the fault suite saw, so that an election alone moves nobody) the client
//! reconnects. [`ServerChoice`], the reconnect callback [`crate::connect`] installs, then picks a
//! server other than the one it picked last, so that the reconnect does not land where it left.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::ClusterInfo;
use async_nats::{Server, ServerAddr, jetstream};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How often JetStream is asked, and how long one question may take.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How long JetStream may stay silent through a server before the client leaves it: past a
/// leader election (the longest seen by the fault suite, a frozen leader's, took about 9 s).
pub const CUT_OFF_AFTER: Duration = Duration::from_secs(12);

/// How recently a stream leader must have heard from a follower for its answer to count: Raft
/// heartbeats come every second, so several missed in a row mean the followers are out of reach.
pub const FOLLOWER_SILENCE: Duration = Duration::from_secs(5);

/// Until `shutdown`: every [`PROBE_EVERY`], asks for the chat stream's state through `client`'s
/// server; after [`CUT_OFF_AFTER`] without an answer that counts ([`answer_counts`]) while
/// connected, reconnects the client (to another server: see [`ServerChoice`]) and gives the new
/// server as long.
pub async fn stay_in_reach(client: async_nats::Client, shutdown: CancellationToken) {
    let js = jetstream::new(client.clone());
    let mut last_answer = Instant::now();
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // A client that is reconnecting already looks for a server.
        if client.connection_state() != State::Connected {
            last_answer = Instant::now();
            continue;
        }
        let answered = match tokio::time::timeout(PROBE_EVERY, js.get_stream(crate::CHAT_STREAM)).await {
            Ok(Ok(stream)) => answer_counts(stream.cached_info().cluster.as_ref()),
            // JetStream answered, before anything made the stream: nothing to leave for.
            Ok(Err(error)) => matches!(
                error.kind(),
                GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND
            ),
            Err(_) => false,
        };
        if answered {
            last_answer = Instant::now();
            continue;
        }
        if last_answer.elapsed() < CUT_OFF_AFTER {
            continue;
        }
        let server = client.server_info().server_name;
        warn!(
            server,
            silent_for = ?last_answer.elapsed(),
            "JetStream does not answer through this NATS server; moving to another"
        );
        metrics::counter!("parley_nats_server_moves_total").increment(1);
        if let Err(error) = client.force_reconnect().await {
            warn!(%error, "could not make the NATS client reconnect");
        }
        last_answer = Instant::now();
    }
}

/// Whether a stream's state, as its leader gave it, shows a leader in reach of its group: one
/// without followers (a single server, one replica), or one that heard from a current follower
/// within [`FOLLOWER_SILENCE`].
pub fn answer_counts(cluster: Option<&ClusterInfo>) -> bool {
    cluster.is_none_or(|cluster| {
        cluster.replicas.is_empty()
            || cluster
                .replicas
                .iter()
                .any(|peer| peer.current && !peer.offline && peer.active < FOLLOWER_SILENCE)
    })
}

/// The client's choice of server on every connect: among the servers that failed least often
/// lately, one other than the last it picked when there is such a one, preferring those
/// `NATS_URL` names over those the cluster advertised, at random. A server that was left because
/// it was cut off is thus not picked again at once, and one that refuses connections is tried
/// after the others. The preference matters where nodes listen on every interface (the compose
/// files): each then also advertises its addresses, which the client adds to its pool beside the
/// names, so the server just left would otherwise come back under another address.
#[derive(Debug, Clone, Default)]
pub struct ServerChoice {
    last: Arc<Mutex<Option<ServerAddr>>>,
}

impl ServerChoice {
    /// The server to connect to next, from the client's pool; `None` for an empty pool.
    pub fn pick(&self, servers: &[Server]) -> Option<ServerAddr> {
        let fewest = servers.iter().map(|s| s.failed_attempts).min()?;
        let least: Vec<&Server> = servers.iter().filter(|s| s.failed_attempts == fewest).collect();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let others: Vec<&Server> = least
            .iter()
            .copied()
            .filter(|s| Some(&s.addr) != last.as_ref())
            .collect();
        let named: Vec<&Server> = others.iter().copied().filter(|s| !s.is_discovered).collect();
        let from = if !named.is_empty() {
            named
        } else if !others.is_empty() {
            others
        } else {
            least
        };
        // Random enough to spread processes over the servers; no cryptographic need.
        let index = usize::try_from(uuid::Uuid::new_v4().as_u128() % from.len() as u128).unwrap_or(0);
        let pick = from.get(index)?.addr.clone();
        *last = Some(pick.clone());
        Some(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(url: &str, failed_attempts: usize) -> Server {
        Server {
            addr: url.parse().expect("a server address"),
            failed_attempts,
            did_connect: true,
            is_discovered: false,
            last_error: None,
        }
    }

    fn advertised(url: &str) -> Server {
        Server {
            is_discovered: true,
            ..server(url, 0)
        }
    }

    #[test]
    fn a_reconnect_prefers_the_servers_nats_url_names_to_their_advertised_addresses() {
        let choice = ServerChoice::default();
        let named = [
            server("nats://nats-1:4222", 0),
            server("nats://nats-2:4222", 0),
            server("nats://nats-3:4222", 0),
        ];
        let mut pool = named.to_vec();
        pool.extend(
            [
                "nats://172.18.0.2:4222",
                "nats://172.18.0.3:4222",
                "nats://172.18.0.4:4222",
            ]
            .map(advertised),
        );
        for _ in 0..100 {
            let pick = choice.pick(&pool).unwrap();
            assert!(
                named.iter().any(|s| s.addr == pick),
                "{pick:?} is an advertised address"
            );
        }
        // Named servers that refuse connections give way to the advertised ones.
        let mut failing = pool.clone();
        for server in &mut failing[..3] {
            server.failed_attempts = 1;
        }
        let pick = choice.pick(&failing).unwrap();
        assert!(failing[3..].iter().any(|s| s.addr == pick));
        // A single name, left: the advertised ones are the only others.
        let single = [server("nats://nats:4222", 0), advertised("nats://172.18.0.3:4222")];
        assert_eq!(choice.pick(&single).unwrap(), single[0].addr);
        assert_eq!(choice.pick(&single).unwrap(), single[1].addr);
    }

    fn peer(current: bool, active: Duration) -> async_nats::jetstream::stream::PeerInfo {
        async_nats::jetstream::stream::PeerInfo {
            name: "nats-2".into(),
            current,
            active,
            ..Default::default()
        }
    }

    #[test]
    fn an_answer_counts_from_a_leader_that_hears_from_a_follower_or_has_none() {
        let cluster = |replicas| ClusterInfo {
            leader: Some("nats-1".into()),
            replicas,
            ..Default::default()
        };
        let heard = peer(true, Duration::from_millis(300));
        let silent = peer(true, Duration::from_secs(7));
        let behind = peer(false, Duration::from_millis(300));
        assert!(answer_counts(None), "a single server");
        assert!(answer_counts(Some(&cluster(vec![]))), "one replica");
        assert!(answer_counts(Some(&cluster(vec![silent.clone(), heard]))));
        assert!(!answer_counts(Some(&cluster(vec![silent.clone(), silent]))), "cut off");
        assert!(!answer_counts(Some(&cluster(vec![behind]))), "no current follower");
    }

    #[test]
    fn a_reconnect_never_picks_the_server_it_picked_last_while_another_failed_as_rarely() {
        let choice = ServerChoice::default();
        let pool = [
            server("nats://a:4222", 0),
            server("nats://b:4222", 0),
            server("nats://c:4222", 0),
        ];
        let mut previous = choice.pick(&pool).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let next = choice.pick(&pool).unwrap();
            assert_ne!(next, previous);
            seen.insert(next.clone());
            previous = next;
        }
        assert_eq!(seen.len(), 3, "every server gets its turn");
    }

    #[test]
    fn a_reconnect_goes_back_to_the_last_server_when_the_others_failed_more() {
        let choice = ServerChoice::default();
        let alone = [server("nats://a:4222", 0)];
        assert_eq!(choice.pick(&alone).unwrap(), alone[0].addr);
        assert_eq!(choice.pick(&alone).unwrap(), alone[0].addr);
        let pool = [
            server("nats://a:4222", 0),
            server("nats://b:4222", 2),
            server("nats://c:4222", 1),
        ];
        for _ in 0..20 {
            assert_eq!(choice.pick(&pool).unwrap(), pool[0].addr);
        }
        assert_eq!(choice.pick(&[]), None);
    }
}
