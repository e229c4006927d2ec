//! What the gateway does with a socket that cannot keep up. Its outgoing queue is bounded; once
//! an emit finds it full, the socket has lost a message it was counted on to get, and the only
//! honest answer is to end the connection: the client reconnects and replays from the `lastSeq`
//! it really has (Centrifugo's rule). Fan-out, replay and acknowledgements all follow it.
//!
//! socketioxide's own `disconnect` needs a free slot in that full queue, so the connection is cut
//! below it, through the kill switch every connection carries (see `listener`).

use axum::extract::ConnectInfo;
use socketioxide::SendError;
use socketioxide::extract::SocketRef;
use tokio_util::sync::CancellationToken;

/// The kill switch of one connection, in every request's extensions as its connect info.
#[derive(Clone, Default)]
pub(crate) struct ConnectionKill(CancellationToken);

impl ConnectionKill {
    /// Ends the connection: its next read and write fail, and a pending read wakes up to fail.
    pub(crate) fn cut(&self) {
        self.0.cancel();
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the connection is cut.
    pub(crate) fn cut_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.clone().cancelled_owned()
    }
}

/// Applies the rule to what an emit (or an ack) to `socket` returned: a socket whose queue was
/// full is disconnected. The result is passed on for the caller's own counting.
pub(crate) fn checked(socket: &SocketRef, sent: Result<(), SendError>) -> Result<(), SendError> {
    if let Err(SendError::Socket(socketioxide::SocketError::InternalChannelFull)) = &sent {
        drop_slow(socket);
    }
    sent
}

/// Ends `socket`'s connection because it cannot take what it is sent.
fn drop_slow(socket: &SocketRef) {
    metrics::counter!("parley_gateway_slow_sockets_total").increment(1);
    tracing::debug!(sid = %socket.id, "socket queue full; disconnecting it");
    match socket.req_parts().extensions.get::<ConnectInfo<ConnectionKill>>() {
        Some(ConnectInfo(kill)) => kill.cut(),
        // Not over a connection of ours (not expected): at least stop sending to it.
        None => socket.leave_all(),
    }
    // Takes effect at once if the queue has room again (a polling client), and closes the
    // socket for socketioxide; the cut above ends the websocket either way.
    let _ = socket.clone().disconnect();
}
