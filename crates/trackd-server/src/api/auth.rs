//! Credentials: where a request's token is found, and the in-memory cache of active
//! credentials that keeps the lookup off the database.
//!
//! The cache is reloaded whenever the store's credential version changes: checked every
//! second in the background (so a revocation takes effect within a second), and on a miss
//! (so a token created a moment ago works at once), at most ten times a second so unknown
//! tokens cannot turn into database load.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use serde_json::{Map, Value};
use trackd_core::{Credential, CredentialKind, DynStore, StoreError, Token, TokenHash};

use super::error::ApiError;

/// Where a credential was found, in the order they are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// `?auth_token=` or `?tracking_api_key=`.
    Query(&'static str),
    /// `auth_token` or `tracking_api_key` in the body.
    Body(&'static str),
    /// `Authorization: Bearer`.
    Header,
}

impl Location {
    fn field(self) -> &'static str {
        match self {
            Location::Query(name) | Location::Body(name) => name,
            Location::Header => "authorization",
        }
    }
}

const NAMES: [&str; 2] = ["auth_token", "tracking_api_key"];

/// Finds the credential, first found wins: query `auth_token`, query `tracking_api_key`,
/// body `auth_token`, body `tracking_api_key`, `Authorization: Bearer`. Empty values count
/// as absent.
pub fn find(
    query: &[(String, String)],
    body: &Map<String, Value>,
    headers: &HeaderMap,
) -> Result<Option<(Token, Location)>, ApiError> {
    for name in NAMES {
        if let Some((_, v)) = query.iter().find(|(k, v)| k == name && !v.is_empty()) {
            return Ok(Some((Token::presented(v), Location::Query(name))));
        }
    }
    for name in NAMES {
        match body.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => return Ok(Some((Token::presented(s), Location::Body(name)))),
            Some(_) => return Err(ApiError::BadRequest(format!("{name}: must be a string"))),
        }
    }
    Ok(bearer(headers)?.map(|t| (Token::presented(t), Location::Header)))
}

/// The token of `Authorization: Bearer <token>`. An absent or empty header, or an empty
/// token, is no credential; a header sent twice or in another scheme is refused rather
/// than guessed at.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "authorization: given more than once".into(),
        ));
    }
    let malformed = || ApiError::Unauthorized("authorization: must be Bearer <token>".into());
    let value = value.to_str().map_err(|_| malformed())?.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed());
    }
    let token = token.trim();
    Ok((!token.is_empty()).then_some(token))
}

/// Active credentials by hash, refreshed from the store.
pub struct CredentialCache {
    store: DynStore,
    map: RwLock<Arc<HashMap<TokenHash, Credential>>>,
    version: AtomicU64,
    last_miss_check: Mutex<Option<Instant>>,
}

/// The least time between two reloads caused by unknown tokens.
const MISS_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often the background task looks for changes (revocations).
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl CredentialCache {
    /// Loads every active credential.
    pub async fn load(store: DynStore) -> Result<Arc<Self>, StoreError> {
        let (version, creds) = store.credentials().await?;
        Ok(Arc::new(CredentialCache {
            store,
            map: RwLock::new(Arc::new(index(creds))),
            version: AtomicU64::new(version),
            last_miss_check: Mutex::new(None),
        }))
    }

    fn get(&self, hash: &TokenHash) -> Option<Credential> {
        let map = self.map.read().ok()?.clone();
        map.get(hash).cloned()
    }

    /// Reloads when the store's credential version moved.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let current = self.store.credentials_version().await?;
        if current != self.version.load(Ordering::Acquire) {
            let (version, creds) = self.store.credentials().await?;
            if let Ok(mut map) = self.map.write() {
                *map = Arc::new(index(creds));
            }
            self.version.store(version, Ordering::Release);
            tracing::info!(version, "credentials reloaded");
        }
        Ok(())
    }

    /// Looks a token up, reloading on a miss if the last miss-reload is old enough.
    pub async fn lookup(&self, token: &Token) -> Result<Option<Credential>, StoreError> {
        let hash = token.hash();
        if let Some(found) = self.get(&hash) {
            return Ok(Some(found));
        }
        let due = match self.last_miss_check.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| t.elapsed() >= MISS_CHECK_EVERY);
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if due {
            self.refresh().await?;
            return Ok(self.get(&hash));
        }
        Ok(None)
    }
}

fn index(creds: Vec<Credential>) -> HashMap<TokenHash, Credential> {
    creds.into_iter().map(|c| (c.hash, c)).collect()
}

/// Resolves the credential of a Vero (tracking) route.
pub async fn tracking_credential(
    cache: &CredentialCache,
    found: Option<(Token, Location)>,
) -> Result<Credential, ApiError> {
    let Some((token, location)) = found else {
        return Err(ApiError::Unauthorized(
            "auth_token: missing (send it as ?auth_token=, ?tracking_api_key=, in the body, \
             or as Authorization: Bearer)"
                .into(),
        ));
    };
    let field = location.field();
    let credential = cache.lookup(&token).await?;
    let Some(credential) = credential else {
        tracing::debug!(token = %token.hash().fingerprint(), "unknown credential");
        return Err(ApiError::Unauthorized(format!(
            "{field}: unknown credential"
        )));
    };
    match (credential.kind, location) {
        (CredentialKind::Tracking, _) => Ok(credential),
        (CredentialKind::Secret, Location::Query(_)) => Err(ApiError::BadRequest(format!(
            "{field}: a secret key must never be sent in a query string (revoke it: URLs are logged)"
        ))),
        (CredentialKind::Secret, _) => Err(ApiError::Forbidden(format!(
            "{field}: a secret key is not accepted here, use a tracking token"
        ))),
    }
}

/// Resolves the secret key of a read route: `Authorization: Bearer` only. A secret key
/// anywhere in the query string is refused even when the header is right: it has leaked
/// into URLs and logs and should be revoked.
pub async fn secret_credential(
    cache: &CredentialCache,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Credential, ApiError> {
    for (name, value) in query {
        if value.is_empty() {
            continue;
        }
        let found = cache.lookup(&Token::presented(value)).await?;
        if found.is_some_and(|c| c.kind == CredentialKind::Secret) {
            return Err(ApiError::BadRequest(format!(
                "{name}: a secret key must never be sent in a query string (revoke it: URLs are logged)"
            )));
        }
    }
    let Some((token, _)) = find(&[], &Map::new(), headers)? else {
        return Err(ApiError::Unauthorized(
            "authorization: missing (send Authorization: Bearer <secret key>)".into(),
        ));
    };
    match cache.lookup(&token).await? {
        None => Err(ApiError::Unauthorized(
            "authorization: unknown credential".into(),
        )),
        Some(c) if c.kind == CredentialKind::Tracking => Err(ApiError::Forbidden(
            "authorization: a tracking token cannot read, use a secret key".into(),
        )),
        Some(c) => Ok(c),
    }
}

/// Limits requests with a failed credential (missing or unknown) per client address:
/// past `limit` failures within a second, the address gets 429 + `Retry-After` without a
/// lookup, so guessing tokens is slow and cannot load the store. Entries older than a
/// second are pruned, so the map holds at most the addresses that failed in the last second.
pub struct FailedAuthLimiter {
    limit: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// How long one window of the limiter lasts.
const FAILED_AUTH_WINDOW: Duration = Duration::from_secs(1);
/// Above this many tracked addresses, stale ones are pruned on the next failure.
const FAILED_AUTH_PRUNE_AT: usize = 10_000;

impl FailedAuthLimiter {
    /// At most `limit` failed requests per address per second; 0 is unlimited.
    pub fn new(limit: u32) -> Self {
        FailedAuthLimiter {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses the request when `ip` spent its failures for the current window.
    pub fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        if self.limit == 0 {
            return Ok(());
        }
        let Ok(windows) = self.windows.lock() else {
            return Ok(());
        };
        match windows.get(&ip) {
            Some((start, n)) if start.elapsed() < FAILED_AUTH_WINDOW && *n >= self.limit => {
                Err(ApiError::TooManyRequests(format!(
                    "auth_token: more than {} requests with a missing or unknown credential \
                     in a second from this address",
                    self.limit
                )))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed credential from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let Ok(mut windows) = self.windows.lock() else {
            return;
        };
        if windows.len() >= FAILED_AUTH_PRUNE_AT {
            windows.retain(|_, (start, _)| start.elapsed() < FAILED_AUTH_WINDOW);
        }
        let entry = windows.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILED_AUTH_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    /// Runs `resolve` unless `ip` is over its limit, counting an unauthenticated outcome.
    pub async fn guard<T>(
        &self,
        ip: IpAddr,
        resolve: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        self.check(ip)?;
        let result = resolve.await;
        if matches!(result, Err(ApiError::Unauthorized(_))) {
            self.failed(ip);
        }
        result
    }
}
