//! Credentials: where a request's token is found, and the in-memory cache of active
//! credentials that keeps the lookup off the database.
//!
//! The cache is reloaded whenever the store's credential version changes: checked every
//! second in the background (so a revocation takes effect within a second), and on a miss,
//! so a token created a moment ago works at once. A refusal never comes from a stale cache:
//! an unknown token waits for a reload that started after it was seen to be missing. The
//! reloads are single flight: however many requests miss at once, one reload runs and
//! every request that was waiting for it reads its result, so unknown tokens cost the store
//! at most one version check at a time (and the failed-credential limit bounds them per
//! address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use trackd_core::project::contains_secret_key;
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

/// Why a secret key in a query string is refused even where it would be valid.
const SECRET_IN_QUERY: &str =
    "a secret key must never be sent in a query string (revoke it: URLs are logged)";

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
            Some(_) => return Err(ApiError::bad_request(name, "must be a string")),
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
        return Err(ApiError::bad_request(
            "authorization",
            "given more than once",
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
    /// Reloads started so far: a miss waits for one numbered past what it saw.
    reloads_started: AtomicU64,
    /// The number of the last reload that finished (successfully or not).
    reloads_done: AtomicU64,
    /// Held by the one reload running; misses queue on it.
    reloading: tokio::sync::Mutex<()>,
}

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
            reloads_started: AtomicU64::new(0),
            reloads_done: AtomicU64::new(0),
            reloading: tokio::sync::Mutex::new(()),
        }))
    }

    /// Whether the cache holds the credential with this hash, without reloading: the
    /// check a long-lived stream repeats to end once its key is revoked.
    pub fn holds(&self, hash: &TokenHash) -> bool {
        self.get(hash).is_some()
    }

    fn get(&self, hash: &TokenHash) -> Option<Credential> {
        let map = self.map.read().ok()?.clone();
        map.get(hash).cloned()
    }

    /// Reloads when the store's credential version moved (the background check). It runs
    /// as one of the single-flight reloads, so two reloads never race to install their
    /// sets and an older set never replaces a newer one.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        self.reload_after(self.reloads_started.load(Ordering::Acquire))
            .await
    }

    /// One reload: checks the version and reads the set if it moved. Callers hold
    /// `reloading`.
    async fn reload(&self) -> Result<(), StoreError> {
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

    /// Looks a token up. On a miss, waits for a reload that started after the miss was
    /// seen (joining one that is about to start, or running it), then looks again: a token
    /// created before the request arrived is always found.
    pub async fn lookup(&self, token: &Token) -> Result<Option<Credential>, StoreError> {
        let hash = token.hash();
        // Read before the lookup: any reload numbered past this one started after it.
        let seen = self.reloads_started.load(Ordering::Acquire);
        if let Some(found) = self.get(&hash) {
            return Ok(Some(found));
        }
        self.reload_after(seen).await?;
        Ok(self.get(&hash))
    }

    /// Makes sure a reload that started after `seen` reloads had started has succeeded.
    /// Only a successful reload counts: a request queued behind one that failed runs its
    /// own (and is answered 503 if that fails too), never refused from the stale set.
    async fn reload_after(&self, seen: u64) -> Result<(), StoreError> {
        let _running = self.reloading.lock().await;
        // While this request queued, another may have run a reload that started after the
        // miss: its result is as fresh as one this request would run.
        if self.reloads_done.load(Ordering::Acquire) > seen {
            return Ok(());
        }
        let number = self.reloads_started.fetch_add(1, Ordering::AcqRel) + 1;
        self.reload().await?;
        self.reloads_done.store(number, Ordering::Release);
        Ok(())
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
        (CredentialKind::Secret, Location::Query(_)) => {
            Err(ApiError::bad_request(field, SECRET_IN_QUERY))
        }
        (CredentialKind::Secret, _) => Err(ApiError::Forbidden(format!(
            "{field}: a secret key is not accepted here, use a tracking token"
        ))),
    }
}

/// Refuses, on every route (probes, the console and unknown paths included), a request
/// whose query string holds anything shaped like a secret key, under whatever name: the
/// key has leaked into URLs and logs and should be revoked. A shape check
/// ([`trackd_core::project::contains_secret_key`]): nothing is looked up, so a query
/// cannot test candidate keys, and the answer never echoes the value. It names the
/// parameter, or `query` when the key is the parameter's name.
pub async fn refuse_secret_in_query(request: Request, next: Next) -> Response {
    if let Some(field) = request.uri().query().and_then(secret_in_query) {
        return ApiError::bad_request(field, SECRET_IN_QUERY).into_response();
    }
    next.run(request).await
}

/// The parameter of `query` that holds a secret key (`query` when a name holds one).
fn secret_in_query(query: &str) -> Option<String> {
    let decode = |part: &str| -> String {
        let spaced = part.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name);
        if contains_secret_key(&name) {
            return Some("query".to_owned());
        }
        if contains_secret_key(&decode(value)) {
            return Some(name);
        }
    }
    None
}

/// Resolves the secret key of a read route: `Authorization: Bearer` only. (A secret key in
/// the query string never gets here: [`refuse_secret_in_query`] answered it.)
pub async fn secret_credential(
    cache: &CredentialCache,
    headers: &HeaderMap,
) -> Result<Credential, ApiError> {
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
