//! What one participant may take of a gateway: sends per user (socket and HTTP together), other
//! events per socket and requests per token, and sockets per user. Every limit is per gateway
//! (see the README for what a limit shared across gateways would cost), and `0` turns one off.
//!
//! The rates are GCRA token buckets from `governor`. A keyed bucket is kept only while it is not
//! full again: a sweep every few seconds drops the buckets of users (or tokens) that stopped, so
//! a million distinct users over a day cost what the users active in the last few seconds cost.
//! A socket's own bucket lives and dies with the socket.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, NotUntil, Quota};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ApiError;

/// How often the keyed buckets are swept of the keys that are full again.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The limits as configured: `PARLEY_SEND_RATE`, `PARLEY_SEND_BURST`, `PARLEY_EVENT_RATE`,
/// `PARLEY_MAX_SOCKETS_PER_USER`. `0` turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// Sends per second one user may make on average.
    pub send_rate: u32,
    /// Sends one user may make at once.
    pub send_burst: u32,
    /// Other events per second per socket, and requests per second per token, in bursts of
    /// twice that.
    pub event_rate: u32,
    /// Sockets one user may hold on one gateway.
    pub max_sockets_per_user: u32,
}

impl LimitConfig {
    /// The contract's defaults.
    pub const DEFAULT: LimitConfig = LimitConfig {
        send_rate: 5,
        send_burst: 20,
        event_rate: 100,
        max_sockets_per_user: 20,
    };

    /// No limit at all (benchmarks, tests that are not about limits).
    pub const OFF: LimitConfig = LimitConfig {
        send_rate: 0,
        send_burst: 0,
        event_rate: 0,
        max_sockets_per_user: 0,
    };

    fn send_quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.send_rate)?;
        // A burst below the rate would refuse sends the rate allows.
        let burst = NonZeroU32::new(self.send_burst.max(self.send_rate))?;
        Some(Quota::per_second(rate).allow_burst(burst))
    }

    fn event_quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.event_rate)?;
        let burst = NonZeroU32::new(self.event_rate.saturating_mul(2))?;
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

/// What a refusal was for: `parley_gateway_rate_limited_total{kind}`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Send,
    SocketEvent,
    HttpRequest,
    Socket,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Send => "send",
            Kind::SocketEvent => "socket_event",
            Kind::HttpRequest => "http_request",
            Kind::Socket => "socket",
        }
    }

    fn count(self) {
        metrics::counter!("parley_gateway_rate_limited_total", "kind" => self.as_str()).increment(1);
    }
}

/// The gateway's limits. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Limits(Arc<Inner>);

struct Inner {
    config: LimitConfig,
    sends: Option<DefaultKeyedRateLimiter<Uuid>>,
    /// Keyed by a hash of the bearer token: the token itself need not be kept.
    requests: Option<DefaultKeyedRateLimiter<u64>>,
    event_quota: Option<Quota>,
    sockets: Mutex<HashMap<Uuid, u32>>,
    clock: DefaultClock,
    token_hasher: std::hash::RandomState,
}

/// A socket's own budget of events. `None` inside when the event limit is off.
pub(crate) struct EventBudget(Option<DefaultDirectRateLimiter>);

impl EventBudget {
    /// Spends one event; `rate_limited` when the socket has none left.
    pub(crate) fn spend(&self, limits: &Limits) -> Result<(), ApiError> {
        match &self.0 {
            Some(bucket) => bucket
                .check()
                .map_err(|not_until| limits.refuse(Kind::SocketEvent, &not_until)),
            None => Ok(()),
        }
    }
}

impl Limits {
    pub(crate) fn new(config: LimitConfig) -> Self {
        Limits(Arc::new(Inner {
            config,
            sends: config.send_quota().map(DefaultKeyedRateLimiter::keyed),
            requests: config.event_quota().map(DefaultKeyedRateLimiter::keyed),
            event_quota: config.event_quota(),
            sockets: Mutex::default(),
            clock: DefaultClock::default(),
            token_hasher: std::hash::RandomState::new(),
        }))
    }

    /// Sweeps the keyed buckets every [`SWEEP_EVERY`] until `shutdown`.
    pub(crate) fn start_sweeping(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let limits = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => limits.sweep(),
                }
            }
        })
    }

    /// Forgets the buckets that are full again: their next check would find them so anyway.
    fn sweep(&self) {
        fn sweep<K: Hash + Eq + Clone>(bucket: Option<&DefaultKeyedRateLimiter<K>>) {
            if let Some(bucket) = bucket {
                bucket.retain_recent();
                bucket.shrink_to_fit();
            }
        }
        sweep(self.0.sends.as_ref());
        sweep(self.0.requests.as_ref());
    }

    /// How many keys the keyed buckets hold now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.0.sends.as_ref().map_or(0, DefaultKeyedRateLimiter::len)
            + self.0.requests.as_ref().map_or(0, DefaultKeyedRateLimiter::len)
    }

    fn refuse(&self, kind: Kind, not_until: &NotUntil<<DefaultClock as Clock>::Instant>) -> ApiError {
        kind.count();
        ApiError::rate_limited(not_until.wait_time_from(self.0.clock.now()))
    }

    /// Spends one of `user`'s sends.
    pub(crate) fn spend_send(&self, user: Uuid) -> Result<(), ApiError> {
        match &self.0.sends {
            Some(bucket) => bucket
                .check_key(&user)
                .map_err(|not_until| self.refuse(Kind::Send, &not_until)),
            None => Ok(()),
        }
    }

    /// Spends one request of the bearer `token`.
    pub(crate) fn spend_request(&self, token: &str) -> Result<(), ApiError> {
        match &self.0.requests {
            Some(bucket) => bucket
                .check_key(&self.0.token_hasher.hash_one(token))
                .map_err(|not_until| self.refuse(Kind::HttpRequest, &not_until)),
            None => Ok(()),
        }
    }

    /// A new socket's budget of events.
    pub(crate) fn event_budget(&self) -> EventBudget {
        EventBudget(self.0.event_quota.map(DefaultDirectRateLimiter::direct))
    }

    /// Counts a new socket of `user`; `false` (and nothing counted) when they hold the most
    /// they may already. Each admitted socket is [`Self::release_socket`]d once.
    pub(crate) fn admit_socket(&self, user: Uuid) -> bool {
        let max = self.0.config.max_sockets_per_user;
        let mut sockets = self.0.sockets.lock();
        let held = sockets.entry(user).or_insert(0);
        if max != 0 && *held >= max {
            Kind::Socket.count();
            return false;
        }
        *held += 1;
        true
    }

    /// Counts a socket of `user` gone.
    pub(crate) fn release_socket(&self, user: Uuid) {
        let mut sockets = self.0.sockets.lock();
        if let Entry::Occupied(mut held) = sockets.entry(user) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(send_rate: u32, send_burst: u32, event_rate: u32, max_sockets_per_user: u32) -> Limits {
        Limits::new(LimitConfig {
            send_rate,
            send_burst,
            event_rate,
            max_sockets_per_user,
        })
    }

    #[test]
    fn a_user_sends_a_burst_then_waits_about_one_rate_interval() {
        let limits = limits(5, 20, 0, 0);
        let user = Uuid::new_v4();
        for _ in 0..20 {
            limits.spend_send(user).unwrap();
        }
        let refused = limits.spend_send(user).unwrap_err();
        let wait = refused.retry_after().unwrap();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
        limits
            .spend_send(Uuid::new_v4())
            .expect("another user has a bucket of their own");
    }

    #[test]
    fn a_socket_has_twice_the_event_rate_at_once_and_its_own_budget() {
        let limits = limits(0, 0, 3, 0);
        let (one, two) = (limits.event_budget(), limits.event_budget());
        for _ in 0..6 {
            one.spend(&limits).unwrap();
        }
        assert!(one.spend(&limits).is_err());
        two.spend(&limits).expect("another socket is not slowed");
    }

    #[test]
    fn zero_turns_each_limit_off() {
        let limits = Limits::new(LimitConfig::OFF);
        let (user, budget) = (Uuid::new_v4(), limits.event_budget());
        for _ in 0..10_000 {
            limits.spend_send(user).unwrap();
            limits.spend_request("token").unwrap();
            budget.spend(&limits).unwrap();
            assert!(limits.admit_socket(user));
        }
    }

    #[test]
    fn a_user_holds_at_most_the_socket_cap_and_a_released_socket_lets_another_in() {
        let limits = limits(0, 0, 0, 2);
        let user = Uuid::new_v4();
        assert!(limits.admit_socket(user) && limits.admit_socket(user));
        assert!(!limits.admit_socket(user));
        assert!(limits.admit_socket(Uuid::new_v4()));
        limits.release_socket(user);
        assert!(limits.admit_socket(user));
        assert!(!limits.admit_socket(user));
    }

    #[test]
    fn the_sweep_forgets_the_users_whose_bucket_is_full_again() {
        let limits = limits(1000, 1000, 1000, 0);
        for _ in 0..1000 {
            limits.spend_send(Uuid::new_v4()).unwrap();
            limits.spend_request(&Uuid::new_v4().to_string()).unwrap();
        }
        assert_eq!(limits.tracked(), 2000);
        // One spent cell refills in a millisecond at these rates.
        std::thread::sleep(Duration::from_millis(20));
        limits.sweep();
        assert_eq!(limits.tracked(), 0);
    }

    proptest::proptest! {
        /// At one moment a bucket lets through its burst (for events, twice the rate), and no
        /// more than what refilled at the rate while the requests were made.
        #[test]
        fn a_bucket_lets_through_its_burst_and_what_refilled_meanwhile(rate in 1u32..2000, burst in 0u32..2000) {
            let limits = limits(rate, burst, rate, 0);
            let (user, budget) = (Uuid::new_v4(), limits.event_budget());
            let started = std::time::Instant::now();
            let sends = (0..4000).take_while(|_| limits.spend_send(user).is_ok()).count() as f64;
            let events = (0..4000).take_while(|_| budget.spend(&limits).is_ok()).count() as f64;
            let refilled = started.elapsed().as_secs_f64() * f64::from(rate) + 1.0;
            let send_burst = f64::from(burst.max(rate));
            proptest::prop_assert!(sends >= send_burst && sends <= send_burst + refilled, "{sends} sends");
            let event_burst = f64::from(rate * 2);
            proptest::prop_assert!(events >= event_burst && events <= event_burst + refilled, "{events} events");
        }
    }
}
