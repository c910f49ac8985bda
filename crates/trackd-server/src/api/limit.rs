//! Admission: the bounds a request meets before any work is done for it. In-flight requests
//! per client address (429 past its bound, so one address cannot take every slot) and in
//! all (503 past the bound), requests per second per client address and per tracking token
//! (429). Rate state is keyed, and pruned in the background so an address or token that
//! stopped sending is forgotten: the maps hold only recent senders; the per-address
//! in-flight counts hold only addresses with a request in flight.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use trackd_core::TokenHash;

use super::error::ApiError;
use super::Limits;

/// Paths that no limit refuses: a load balancer's probes and the metrics scrape must get
/// through while the server sheds load.
const EXEMPT: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The admission limits of one server.
pub struct Admission {
    in_flight: Option<Arc<Semaphore>>,
    max_in_flight: usize,
    per_ip_in_flight: Option<Arc<PerIpInFlight>>,
    per_ip: Option<(u32, DefaultKeyedRateLimiter<IpAddr>)>,
    per_token: Option<(u32, DefaultKeyedRateLimiter<TokenHash>)>,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(
    per_second: u32,
) -> Option<(u32, DefaultKeyedRateLimiter<K>)> {
    let rate = NonZeroU32::new(per_second)?;
    // A burst of one second's worth: a client may spend its second's quota at once.
    Some((per_second, RateLimiter::dashmap(Quota::per_second(rate))))
}

/// The client an address counts as: IPv4 (also mapped into IPv6) as it is, IPv6 by its
/// /64 (one host or site gets a /64; counting its 2^64 addresses apart would let it walk
/// around every per-address bound).
pub fn client(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

impl Admission {
    /// The limits of `limits`; a zero turns one off.
    pub fn new(limits: &Limits) -> Self {
        Admission {
            in_flight: (limits.max_in_flight > 0)
                .then(|| Arc::new(Semaphore::new(limits.max_in_flight))),
            max_in_flight: limits.max_in_flight,
            per_ip_in_flight: (limits.max_in_flight_per_ip > 0).then(|| {
                Arc::new(PerIpInFlight {
                    max: limits.max_in_flight_per_ip,
                    counts: Mutex::default(),
                })
            }),
            per_ip: keyed(limits.ip_rate),
            per_token: keyed(limits.token_rate),
        }
    }

    /// Admits `request` or says which limit refused it. The permit is held until the
    /// answer is ready.
    pub fn admit(&self, request: &Request) -> Result<Permit, (ApiError, &'static str)> {
        if EXEMPT.contains(&request.uri().path()) {
            return Ok(Permit::default());
        }
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| client(peer.ip()));
        // Per address first: an address at its bound takes no slot from the others.
        let address = match (&self.per_ip_in_flight, peer) {
            (Some(per_ip), Some(ip)) => {
                Some(PerIpInFlight::acquire(per_ip, ip).ok_or_else(|| {
                    tracing::debug!(max = per_ip.max, "per-address in-flight bound reached");
                    (
                        ApiError::TooManyRequests(format!(
                            "client: more than {} requests in flight from this address",
                            per_ip.max
                        )),
                        "in_flight_per_ip",
                    )
                })?)
            }
            _ => None,
        };
        let permit = match &self.in_flight {
            None => None,
            Some(semaphore) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    tracing::debug!(max = self.max_in_flight, "in-flight bound reached");
                    return Err((ApiError::Overloaded, "in_flight"));
                }
            },
        };
        if let Some((rate, limiter)) = &self.per_ip {
            if let Some(peer) = peer {
                if limiter.check_key(&peer).is_err() {
                    return Err((
                        ApiError::TooManyRequests(format!(
                            "client: more than {rate} requests per second from this address"
                        )),
                        "ip",
                    ));
                }
            }
        }
        Ok(Permit {
            _global: permit,
            _address: address,
        })
    }

    /// Refuses a request over its tracking token's rate.
    pub fn check_token(&self, token: &TokenHash) -> Result<(), ApiError> {
        match &self.per_token {
            Some((rate, limiter)) if limiter.check_key(token).is_err() => {
                Err(ApiError::TooManyRequests(format!(
                    "auth_token: more than {rate} requests per second with this token"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Forgets senders whose quota has fully refilled (they are back to a fresh state).
    pub fn prune(&self) {
        if let Some((_, limiter)) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some((_, limiter)) = &self.per_token {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// How many senders the rate limits remember, and addresses with a request in flight
    /// (for tests of the pruning).
    pub fn tracked(&self) -> usize {
        self.per_ip.as_ref().map_or(0, |(_, l)| l.len())
            + self.per_token.as_ref().map_or(0, |(_, l)| l.len())
            + self.per_ip_in_flight.as_ref().map_or(0, |p| p.len())
    }
}

/// What an admitted request holds until its answer is ready: its in-flight slots, given
/// back on drop (also when the client goes away mid-request).
#[derive(Default)]
pub struct Permit {
    _global: Option<OwnedSemaphorePermit>,
    _address: Option<AddressSlot>,
}

/// Requests in flight per client address; an address is in the map only while it has one.
struct PerIpInFlight {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIpInFlight {
    /// A slot for `ip`, or `None` when it has `max` requests in flight already.
    fn acquire(this: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut counts = this.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= this.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: this.clone(),
            ip,
        })
    }

    fn len(&self) -> usize {
        self.counts.lock().map_or(0, |c| c.len())
    }
}

/// One request's slot in its address's in-flight count.
struct AddressSlot {
    owner: Arc<PerIpInFlight>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_ipv6_client_counts_by_its_64_and_ipv4_as_itself() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: std::net::IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().expect("ip");
        let other: std::net::IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(super::client(a), super::client(b));
        assert_ne!(super::client(a), super::client(other));
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            super::client(mapped),
            "192.0.2.7".parse::<std::net::IpAddr>().expect("ip")
        );
    }

    use super::*;
    use trackd_core::Token;

    #[test]
    fn rate_state_of_quiet_senders_is_pruned() {
        let admission = Admission::new(&Limits {
            token_rate: 1000,
            ..Limits::default()
        });
        for n in 0..10_000 {
            let hash = Token::presented(&format!("tk_{n}")).hash();
            assert!(admission.check_token(&hash).is_ok());
        }
        assert_eq!(admission.tracked(), 10_000);
        // At 1,000 per second one request's worth refills in a millisecond.
        std::thread::sleep(std::time::Duration::from_millis(20));
        admission.prune();
        assert_eq!(admission.tracked(), 0);
    }

    fn request_from(ip: &str) -> Request {
        let mut request = Request::new(axum::body::Body::empty());
        *request.uri_mut() = axum::http::Uri::from_static("/api/v2/events/track");
        let peer: SocketAddr = format!("{ip}:1234").parse().expect("address");
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    }

    fn admitted(result: Result<Permit, (ApiError, &'static str)>) -> Permit {
        match result {
            Ok(permit) => permit,
            Err((e, limit)) => panic!("refused by {limit}: {e:?}"),
        }
    }

    fn refused_by(result: Result<Permit, (ApiError, &'static str)>) -> &'static str {
        match result {
            Ok(_) => panic!("admitted"),
            Err((_, limit)) => limit,
        }
    }

    #[test]
    fn an_address_gets_its_share_of_in_flight_slots_and_gives_them_back() {
        let admission = Admission::new(&Limits {
            max_in_flight: 5,
            max_in_flight_per_ip: 2,
            ..Limits::default()
        });
        let a = request_from("10.0.0.1");
        let held: Vec<Permit> = (0..2).map(|_| admitted(admission.admit(&a))).collect();
        assert_eq!(refused_by(admission.admit(&a)), "in_flight_per_ip");
        // The same address over IPv6 (mapped) is the same client.
        let mapped = request_from("[::ffff:10.0.0.1]");
        assert_eq!(refused_by(admission.admit(&mapped)), "in_flight_per_ip");
        // Others are admitted, up to the global bound.
        let b = admitted(admission.admit(&request_from("10.0.0.2")));
        let c = admitted(admission.admit(&request_from("10.0.0.3")));
        let d = admitted(admission.admit(&request_from("10.0.0.3")));
        let e = request_from("10.0.0.4");
        assert_eq!(refused_by(admission.admit(&e)), "in_flight");
        // A refusal by the global bound gave the address slot back.
        drop((b, c, d));
        assert_eq!(admission.tracked(), 1);
        drop(held);
        assert_eq!(admission.tracked(), 0);
        admitted(admission.admit(&a));
    }

    #[test]
    fn a_token_is_refused_past_its_rate_and_zero_is_unlimited() {
        let limited = Admission::new(&Limits {
            token_rate: 2,
            ..Limits::default()
        });
        let hash = Token::presented("tk_a").hash();
        assert!(limited.check_token(&hash).is_ok());
        assert!(limited.check_token(&hash).is_ok());
        assert!(limited.check_token(&hash).is_err());
        let unlimited = Admission::new(&Limits::default());
        for _ in 0..100_000 {
            assert!(unlimited.check_token(&hash).is_ok());
        }
        assert_eq!(unlimited.tracked(), 0);
    }
}
