//! Admission: the bounds a request meets before any work is done for it. In-flight requests
//! (503 past the bound), requests per second per client address and per tracking token
//! (429). Rate state is keyed, and pruned in the background so an address or token that
//! stopped sending is forgotten: the maps hold only recent senders.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

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

impl Admission {
    /// The limits of `limits`; a zero turns one off.
    pub fn new(limits: &Limits) -> Self {
        Admission {
            in_flight: (limits.max_in_flight > 0)
                .then(|| Arc::new(Semaphore::new(limits.max_in_flight))),
            max_in_flight: limits.max_in_flight,
            per_ip: keyed(limits.ip_rate),
            per_token: keyed(limits.token_rate),
        }
    }

    /// Admits `request` or says which limit refused it. The permit is held until the
    /// answer is ready.
    pub fn admit(
        &self,
        request: &Request,
    ) -> Result<Option<OwnedSemaphorePermit>, (ApiError, &'static str)> {
        if EXEMPT.contains(&request.uri().path()) {
            return Ok(None);
        }
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
            let peer = request.extensions().get::<ConnectInfo<SocketAddr>>();
            if let Some(ConnectInfo(peer)) = peer {
                if limiter.check_key(&peer.ip()).is_err() {
                    return Err((
                        ApiError::TooManyRequests(format!(
                            "client: more than {rate} requests per second from this address"
                        )),
                        "ip",
                    ));
                }
            }
        }
        Ok(permit)
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

    /// How many senders the rate limits remember (for tests of the pruning).
    pub fn tracked(&self) -> usize {
        self.per_ip.as_ref().map_or(0, |(_, l)| l.len())
            + self.per_token.as_ref().map_or(0, |(_, l)| l.len())
    }
}

#[cfg(test)]
mod tests {
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
