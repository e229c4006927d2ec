//! What the gateway does with a socket that cannot keep up. Its outgoing queue is bounded twice:
//! in packets (socketioxide's own queue) and in bytes, as what was handed to the socket's
//! connection less what the connection has written out. Once either bound is reached the socket
//! has lost, or is about to hold too much of, what it was counted on to get, and the only honest
//! answer is to end the connection: the client reconnects and replays from the `lastSeq` it
//! really has (Centrifugo's rule). Fan-out, replay and acknowledgements all follow it, so a
//! client that asks and never reads its answers is cut once they pass [`OUTPUT_BOUND_BYTES`].
//!
//! socketioxide's own `disconnect` needs a free slot in that full queue, so the connection is cut
//! below it, through the [`Carrier`] every connection has (see `listener`). A socket's carrier is
//! the connection its engine.io session was opened on, or, once it upgraded from polling, the
//! websocket it upgraded to: the listener records that upgrade in [`Upgrades`].
//!
//! The byte bound applies to websocket sockets, whose every packet leaves by their carrier. A
//! polling socket's packets leave by whichever connection polls next, so its carrier's count
//! says nothing; an unread polling socket is bounded in time instead, by the engine.io
//! heartbeat it cannot answer without polling.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ConnectInfo;
use parking_lot::Mutex;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, TransportType};
use tokio_util::sync::CancellationToken;

/// Bytes a socket may have handed to its connection and not yet written out. Above the largest
/// burst the gateway produces for a healthy client, with room to spare: a join's replay of 1000
/// messages of 5000 three-byte characters is about 15 MB, a history page at most 6 MB.
pub(crate) const OUTPUT_BOUND_BYTES: u64 = 32 * 1024 * 1024;

/// One TCP connection as the gateway sees it: a kill switch, and a count of the bytes handed to
/// it for its sockets against the bytes it wrote. In every request's extensions as its connect
/// info.
#[derive(Clone, Default)]
pub(crate) struct Carrier(Arc<CarrierState>);

#[derive(Default)]
struct CarrierState {
    kill: CancellationToken,
    handed: AtomicU64,
    written: AtomicU64,
    /// The engine.io session that upgraded to this connection, if one did.
    upgraded: Mutex<Option<Sid>>,
}

impl Carrier {
    /// Ends the connection: its next read and write fail, and a pending read wakes up to fail.
    pub(crate) fn cut(&self) {
        self.0.kill.cancel();
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.0.kill.is_cancelled()
    }

    /// Resolves once the connection is cut.
    pub(crate) fn cut_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.kill.clone().cancelled_owned()
    }

    /// Counts bytes the connection wrote out.
    pub(crate) fn wrote(&self, bytes: usize) {
        self.0.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts bytes handed to the connection; returns how many are handed and not yet written.
    /// Framing the socket adds is written but never handed, so this errs low, never high.
    fn hand(&self, bytes: usize) -> u64 {
        let handed = self.0.handed.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        handed.saturating_sub(self.0.written.load(Ordering::Relaxed))
    }
}

/// Which connection each upgraded engine.io session now uses, for [`carrier_of`]. One per
/// listener, in every request's extensions; an entry lives as long as its connection.
#[derive(Clone, Default)]
pub(crate) struct Upgrades(Arc<Mutex<HashMap<Sid, Carrier>>>);

impl Upgrades {
    /// Notes that the session of a websocket request for `/socket.io/?…&transport=websocket&sid=…`
    /// now uses `carrier`. A request without a session id opens its session on this connection
    /// already, and needs no note.
    pub(crate) fn note(&self, uri: &axum::http::Uri, carrier: &Carrier) {
        let Some(query) = uri.query() else { return };
        let mut websocket = false;
        let mut sid = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("transport", "websocket")) => websocket = true,
                Some(("sid", value)) => sid = value.parse::<Sid>().ok(),
                _ => {}
            }
        }
        if let (true, Some(sid)) = (websocket, sid) {
            *carrier.0.upgraded.lock() = Some(sid);
            self.0.lock().insert(sid, carrier.clone());
        }
    }

    /// Forgets the session that upgraded to `carrier`, whose connection has ended.
    pub(crate) fn forget(&self, carrier: &Carrier) {
        if let Some(sid) = carrier.0.upgraded.lock().take() {
            let mut upgrades = self.0.lock();
            if upgrades.get(&sid).is_some_and(|c| Arc::ptr_eq(&c.0, &carrier.0)) {
                upgrades.remove(&sid);
            }
        }
    }

    fn get(&self, sid: Sid) -> Option<Carrier> {
        self.0.lock().get(&sid).cloned()
    }
}

/// The connection `socket`'s packets leave by (see the module's doc).
fn carrier_of(socket: &SocketRef) -> Option<Carrier> {
    let extensions = &socket.req_parts().extensions;
    if let Some(upgraded) = extensions.get::<Upgrades>().and_then(|u| u.get(socket.id)) {
        return Some(upgraded);
    }
    extensions.get::<ConnectInfo<Carrier>>().map(|ConnectInfo(c)| c.clone())
}

/// Applies the rule to what an emit (or an ack) of `bytes` to `socket` returned: a socket whose
/// queue was full, or whose connection holds more than [`OUTPUT_BOUND_BYTES`] not yet written,
/// is disconnected. The result is passed on for the caller's own counting.
pub(crate) fn checked(socket: &SocketRef, bytes: usize, sent: Result<(), SendError>) -> Result<(), SendError> {
    match &sent {
        Err(SendError::Socket(socketioxide::SocketError::InternalChannelFull)) => drop_slow(socket, "queue full"),
        Ok(()) if socket.transport_type() == TransportType::Websocket => {
            if let Some(carrier) = carrier_of(socket)
                && carrier.hand(bytes) > OUTPUT_BOUND_BYTES
            {
                drop_slow(socket, "unwritten output over its bound");
            }
        }
        _ => {}
    }
    sent
}

/// The length of `value`'s JSON, as an emit of it will write it, without keeping the JSON.
pub(crate) fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing the gateway's own reply types cannot fail; a failure counts what was written.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Ends `socket`'s connection because it cannot take what it is sent.
fn drop_slow(socket: &SocketRef, why: &'static str) {
    metrics::counter!("parley_gateway_slow_sockets_total").increment(1);
    tracing::debug!(sid = %socket.id, why, "socket cannot keep up; disconnecting it");
    match carrier_of(socket) {
        Some(carrier) => carrier.cut(),
        // Not over a connection of ours (not expected): at least stop sending to it.
        None => socket.leave_all(),
    }
    // Takes effect at once if the queue has room again (a polling client), and closes the
    // socket for socketioxide; the cut above ends the websocket either way.
    let _ = socket.clone().disconnect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_websocket_request_naming_a_session_is_noted_as_its_upgrade() {
        let upgrades = Upgrades::default();
        let sid = Sid::new();
        let carrier = Carrier::default();
        for uri in [
            format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            "/socket.io/?EIO=4&transport=websocket".to_owned(),
            format!("/socket.io/?EIO=4&transport=websocket&sid=not-a-sid{sid}"),
        ] {
            upgrades.note(&uri.parse().unwrap(), &carrier);
            assert!(upgrades.get(sid).is_none(), "{uri}");
        }
        upgrades.note(
            &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}")
                .parse()
                .unwrap(),
            &carrier,
        );
        assert!(upgrades.get(sid).is_some_and(|c| Arc::ptr_eq(&c.0, &carrier.0)));
        upgrades.forget(&carrier);
        assert!(upgrades.get(sid).is_none());
    }

    #[test]
    fn what_is_handed_and_not_written_is_what_counts() {
        let carrier = Carrier::default();
        assert_eq!(carrier.hand(100), 100);
        carrier.wrote(60);
        assert_eq!(carrier.hand(10), 50);
        carrier.wrote(500);
        assert_eq!(carrier.hand(0), 0);
    }

    #[test]
    fn json_len_is_the_length_of_the_json() {
        let value = serde_json::json!({"ok": true, "messages": ["ü", 1, null]});
        assert_eq!(json_len(&value), serde_json::to_vec(&value).unwrap().len());
    }
}
