//! The load generator's connections: a few tasks, each driving the readers of many Socket.IO
//! connections, instead of a task per connection.
//!
//! A bench that holds 10k sockets with a task each measures the tokio scheduler as much as the
//! gateway, and on 2 cores the bench competes with the stack it measures. Here each lane is
//! one task polling a `FuturesUnordered` of [`Driver`]s, which wakes only the connections
//! that have something to read; connections are spread over the lanes round-robin.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use parley_test_support::sio::{Client, Connector, Driver};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Lanes, each a task driving many connections. Dropping the fleet drops every driver, which
/// closes the connections its clients still hold.
pub struct Fleet {
    lanes: Vec<mpsc::UnboundedSender<Driver>>,
    next: AtomicUsize,
    _tasks: JoinSet<()>,
}

impl Fleet {
    /// One lane per core the runtime can use.
    pub fn new() -> Self {
        let lanes = std::thread::available_parallelism().map_or(2, usize::from);
        let mut tasks = JoinSet::new();
        let senders = (0..lanes)
            .map(|_| {
                let (adopt, incoming) = mpsc::unbounded_channel();
                tasks.spawn(drive(incoming));
                adopt
            })
            .collect();
        Self {
            lanes: senders,
            next: AtomicUsize::new(0),
            _tasks: tasks,
        }
    }

    /// Connects, and hands the connection's reader to a lane.
    pub async fn connect(&self, connector: Connector) -> Result<Client, parley_test_support::sio::Error> {
        let (client, driver) = connector.connect_driven().await?;
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        // A lane only ends when the fleet is dropped, and this borrows the fleet.
        let _ = self.lanes[lane].send(driver);
        Ok(client)
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

/// One lane: adopts drivers as they come and polls them until the fleet is dropped.
async fn drive(mut incoming: mpsc::UnboundedReceiver<Driver>) {
    let mut drivers = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(driver) = incoming.recv() => drivers.push(driver),
            Some(()) = drivers.next() => {}
            else => return,
        }
    }
}
