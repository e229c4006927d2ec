//! A socket lives no longer than its token: when the token's `exp` passes, the gateway disconnects
//! the socket, and the client reconnects with a fresh token and catches up by replay.
//!
//! One task holds every socket's deadline in a timer queue, rather than a task (and a reference
//! to the socket) per socket: a deadline costs a queue entry, and a socket that leaves first is
//! forgotten at once.

use std::collections::HashMap;
use std::time::SystemTime;

use futures::StreamExt;
use socketioxide::SocketIo;
use socketioxide::socket::Sid;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

enum Command {
    Expire(Sid, SystemTime),
    Forget(Sid),
}

/// Where sockets' deadlines are registered. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Lifetimes {
    commands: mpsc::UnboundedSender<Command>,
}

/// The receiving end, for [`start`] once the Socket.IO server exists.
pub(crate) struct Deadlines(mpsc::UnboundedReceiver<Command>);

impl Lifetimes {
    pub(crate) fn new() -> (Lifetimes, Deadlines) {
        let (commands, receiver) = mpsc::unbounded_channel();
        (Lifetimes { commands }, Deadlines(receiver))
    }

    /// Disconnects socket `sid` at `deadline`.
    pub(crate) fn expire_at(&self, sid: Sid, deadline: SystemTime) {
        let _ = self.commands.send(Command::Expire(sid, deadline));
    }

    /// Socket `sid` left: it has no deadline any more.
    pub(crate) fn forget(&self, sid: Sid) {
        let _ = self.commands.send(Command::Forget(sid));
    }
}

/// Disconnects each socket of `io` at its deadline, until `shutdown`.
pub(crate) fn start(deadlines: Deadlines, io: SocketIo, shutdown: CancellationToken) -> JoinHandle<()> {
    let Deadlines(mut commands) = deadlines;
    tokio::spawn(async move {
        let mut queue: DelayQueue<Sid> = DelayQueue::new();
        let mut keys: HashMap<Sid, Key> = HashMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Expire(sid, deadline)) => {
                        let wait = deadline.duration_since(SystemTime::now()).unwrap_or_default();
                        keys.insert(sid, queue.insert(sid, wait));
                    }
                    Some(Command::Forget(sid)) => {
                        if let Some(key) = keys.remove(&sid) {
                            queue.remove(&key);
                        }
                    }
                },
                Some(expired) = queue.next(), if !queue.is_empty() => {
                    let sid = expired.into_inner();
                    keys.remove(&sid);
                    if let Some(socket) = io.get_socket(sid) {
                        metrics::counter!("parley_gateway_expired_sockets_total").increment(1);
                        tracing::debug!(%sid, "token expired; disconnecting");
                        let _ = socket.disconnect();
                    }
                }
            }
        }
    })
}
