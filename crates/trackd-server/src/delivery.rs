//! The delivery loops (DESIGN §8): every destination of every project gets a loop that
//! holds its lease, reads the project's outbox after the destination's cursor, sends, and
//! moves the cursor only after the receiver acknowledged. Nothing here is on the ingest
//! path: a dead receiver only grows the backlog on disk.
//!
//! - [`run`]: the manager. Once a second it reads the destinations and starts or stops
//!   loops (a new one, a pause, a resume, a replay each change the set); every few seconds
//!   it refreshes the metrics and prunes the passed part of the outbox.
//! - A loop ([`Loop`]) per (destination, generation), with a lease keeper beside it: when
//!   the lease is lost (another node took it) or the generation moves, the loop stops and
//!   its reports are refused by the store.
//! - Senders: [`Loop::webhook`] (signed batches), [`Loop::vero`] (one Vero call per item,
//!   in order per user, 16 users at once), [`Loop::nats`] (JetStream, `Nats-Msg-Id`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use trackd_core::delivery::{
    backoff, batch_id, dead_letter_excerpt, retry_after, sign, verdict, webhook_body,
    DeliveryReport, Destination, DestinationKind, ItemKind, OutboxItem, Verdict,
};
use trackd_core::{Clock, DynStore};

/// How delivery runs.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Whether this node delivers at all.
    pub enabled: bool,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// The first retry's ceiling; doubles to 10 minutes.
    pub retry_base: Duration,
    /// How long delivered items stay in the outbox (for `replay`).
    pub keep: Duration,
    /// How often an idle loop looks for new items.
    pub poll: Duration,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            enabled: true,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(1),
            keep: Duration::from_secs(24 * 3600),
            poll: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// How often the manager looks at the destinations.
const MANAGE_EVERY: Duration = Duration::from_secs(1);
/// How often backlog gauges are counted and the outbox pruned.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Items a Vero or NATS loop reads at once.
const READ_ITEMS: usize = 500;
/// How often a loop looks for dead letters to redrive.
const REDRIVE_EVERY: Duration = Duration::from_secs(1);
/// Items a Vero relay reads ahead of its oldest unacknowledged one.
const VERO_READ_AHEAD: usize = 5_000;
/// Bytes of items a Vero relay holds read ahead (events may be up to the body limit each).
const VERO_READ_AHEAD_BYTES: usize = 16 * 1024 * 1024;
/// An item read this long ago is checked again before it is sent (its user may have been
/// deleted meanwhile).
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// How often a Vero relay records its progress while calls run.
const VERO_REPORT_EVERY: Duration = Duration::from_millis(250);
/// Users whose Vero calls are in flight at once.
const VERO_USERS_IN_FLIGHT: usize = 16;

/// A destination's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    project: String,
    destination: String,
}

/// An attempt's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    project: String,
    destination: String,
    outcome: &'static str,
}

/// Delivery's metrics, per destination.
#[derive(Default)]
pub struct DeliveryMetrics {
    backlog: Family<DestinationLabels, Gauge>,
    oldest: Family<DestinationLabels, Gauge>,
    dead_letters: Family<DestinationLabels, Gauge>,
    delivered: Family<DestinationLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    /// The destinations with series: a removed one's go at the next refresh.
    shown: std::sync::Mutex<std::collections::HashSet<DestinationLabels>>,
}

impl DeliveryMetrics {
    /// Registers the metrics (`trackd_delivery_*`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "delivery_backlog",
            "Outbox items after a destination's cursor",
            self.backlog.clone(),
        );
        registry.register(
            "delivery_oldest_undelivered_seconds",
            "Age of a destination's oldest undelivered item",
            self.oldest.clone(),
        );
        registry.register(
            "delivery_dead_letters",
            "Items a destination's receiver refused for good, waiting for redrive",
            self.dead_letters.clone(),
        );
        registry.register(
            "delivery_delivered",
            "Items a destination's receiver acknowledged",
            self.delivered.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts by outcome (ok, retry, dead, paused)",
            self.attempts.clone(),
        );
    }

    /// Notes that `d` has series (so its removal drops them).
    fn showing(&self, d: &Destination) {
        let labels = DestinationLabels {
            project: d.project_name.clone(),
            destination: d.spec.name.clone(),
        };
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        if !shown.contains(&labels) {
            shown.insert(labels);
        }
    }

    fn attempt(&self, d: &Destination, outcome: &'static str) {
        self.showing(d);
        self.attempts
            .get_or_create(&AttemptLabels {
                project: d.project_name.clone(),
                destination: d.spec.name.clone(),
                outcome,
            })
            .inc();
    }

    /// Sets every destination's gauges, and drops the series of destinations gone since
    /// the last refresh (removed: an alert on their dead letters must not fire forever).
    fn refresh(&self, destinations: &[Destination], now: trackd_core::Timestamp) {
        let mut present = std::collections::HashSet::new();
        for d in destinations {
            let labels = DestinationLabels {
                project: d.project_name.clone(),
                destination: d.spec.name.clone(),
            };
            self.backlog.get_or_create(&labels).set(d.backlog);
            self.oldest
                .get_or_create(&labels)
                .set(d.oldest_undelivered_secs(now));
            self.dead_letters.get_or_create(&labels).set(d.dead_letters);
            present.insert(labels);
        }
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        for gone in shown.difference(&present) {
            self.backlog.remove(gone);
            self.oldest.remove(gone);
            self.dead_letters.remove(gone);
            self.delivered.remove(gone);
            for outcome in ["ok", "retry", "dead", "paused"] {
                self.attempts.remove(&AttemptLabels {
                    project: gone.project.clone(),
                    destination: gone.destination.clone(),
                    outcome,
                });
            }
        }
        *shown = present;
    }
}

/// What the loops share.
struct Shared {
    store: DynStore,
    clock: Arc<dyn Clock>,
    config: DeliveryConfig,
    metrics: Arc<DeliveryMetrics>,
    http: reqwest::Client,
    /// This process's name in leases.
    node: String,
}

/// Runs every destination's delivery until `stop` is cancelled.
pub async fn run(
    store: DynStore,
    clock: Arc<dyn Clock>,
    config: DeliveryConfig,
    metrics: Arc<DeliveryMetrics>,
    stop: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .user_agent(concat!("trackd/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "delivery cannot start: no HTTP client");
            return;
        }
    };
    let shared = Arc::new(Shared {
        store,
        clock,
        config,
        metrics,
        http,
        node: format!("{:016x}", rand::random::<u64>()),
    });
    let mut loops: HashMap<i64, (i64, CancellationToken)> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(MANAGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refresh: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let refresh = last_refresh.is_none_or(|t| t.elapsed() >= REFRESH_EVERY);
        let destinations = match shared.store.destinations(None, refresh).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading destinations failed, retrying");
                continue;
            }
        };
        if refresh {
            last_refresh = Some(tokio::time::Instant::now());
            shared.metrics.refresh(&destinations, shared.clock.now());
            let keep = i64::try_from(shared.config.keep.as_micros()).unwrap_or(i64::MAX);
            let store = shared.store.clone();
            tokio::spawn(async move {
                // Chunks of a few thousand rows, each its own short write.
                for _ in 0..100 {
                    match store.prune_outbox(keep).await {
                        Ok(0) => break,
                        Ok(n) => tracing::debug!(deleted = n, "outbox pruned"),
                        Err(e) => {
                            tracing::debug!(error = %e, "outbox prune failed");
                            break;
                        }
                    }
                }
            });
        }
        let mut wanted: HashMap<i64, i64> = HashMap::new();
        for d in destinations {
            if d.paused.is_some() {
                continue;
            }
            wanted.insert(d.id, d.generation);
            let running = loops
                .get(&d.id)
                .is_some_and(|(g, token)| *g == d.generation && !token.is_cancelled());
            if !running {
                if let Some((_, old)) = loops.remove(&d.id) {
                    old.cancel();
                }
                let token = stop.child_token();
                loops.insert(d.id, (d.generation, token.clone()));
                tasks.spawn(Loop::start(shared.clone(), d, token));
            }
        }
        loops.retain(|id, (generation, token)| {
            let keep = wanted.get(id) == Some(generation);
            if !keep {
                token.cancel();
            }
            keep
        });
        while tasks.try_join_next().is_some() {}
    }
    // Each loop records what was acknowledged before it stops, so a clean shutdown sends
    // nothing twice.
    for (_, token) in loops.into_values() {
        token.cancel();
    }
    let _ = tokio::time::timeout(STOP_WAIT, tasks.join_all()).await;
}

/// How long a stopping node waits for its loops to record where they are.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// Why a loop stopped sending.
enum Stop {
    /// Cancelled: paused, removed, a new generation, the lease lost, shutting down.
    Cancelled,
}

/// One destination's delivery at one generation.
struct Loop {
    shared: Arc<Shared>,
    d: Destination,
    stop: CancellationToken,
    /// The last position acknowledged (or dead) that the store has not been told yet.
    unreported: Option<i64>,
    /// Items acknowledged since the last report.
    delivered: i64,
    /// Whether the store holds a last error to clear.
    failing: bool,
    nats: Option<async_nats::jetstream::Context>,
    /// When dead letters were last looked for.
    redrive_checked: tokio::time::Instant,
    /// The failure of a Vero call last recorded while its batch was still going.
    noted_error: std::sync::Mutex<Option<String>>,
}

impl Loop {
    async fn start(shared: Arc<Shared>, d: Destination, stop: CancellationToken) {
        let token = stop.clone();
        Self::run(shared, d, stop).await;
        // However the loop ended, the manager sees it as not running and starts another.
        token.cancel();
    }

    async fn run(shared: Arc<Shared>, d: Destination, stop: CancellationToken) {
        let mut l = Loop {
            shared,
            d,
            stop,
            unreported: None,
            delivered: 0,
            failing: false,
            nats: None,
            redrive_checked: tokio::time::Instant::now() - REDRIVE_EVERY,
            noted_error: std::sync::Mutex::new(None),
        };
        // The lease first: only one node delivers a destination.
        loop {
            match l
                .shared
                .store
                .lease(l.d.id, &l.shared.node, l.ttl_ms())
                .await
            {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "lease failed"),
            }
            if l.sleep(MANAGE_EVERY).await.is_err() {
                return;
            }
        }
        // Re-read at the lease: another node may have moved the cursor meanwhile.
        match l.shared.store.destinations(Some(l.d.project), false).await {
            Ok(all) => match all.into_iter().find(|x| x.id == l.d.id) {
                Some(fresh) if fresh.generation == l.d.generation && fresh.paused.is_none() => {
                    l.d = fresh
                }
                _ => return,
            },
            Err(_) => return,
        }
        l.failing = l.d.last_error.is_some();
        // An error recorded before this loop (another node's, an earlier run's) is cleared
        // by this loop's first success.
        *l.noted_error.lock().unwrap_or_else(|e| e.into_inner()) = l.d.last_error.clone();
        tracing::info!(destination = %l.d.spec.name, kind = l.d.spec.kind.as_str(), "delivering");
        tokio::spawn(keep_lease(l.shared.clone(), l.d.id, l.stop.clone()));
        let _ = l.deliver().await;
        l.stop.cancel();
        l.flush().await;
    }

    /// After the loop stopped: records what was acknowledged and not yet written (one try:
    /// if it fails, those items are sent again, which at-least-once allows).
    async fn flush(&mut self) {
        let Some(upto) = self.unreported.take() else {
            return;
        };
        let report = DeliveryReport {
            destination: self.d.id,
            generation: self.d.generation,
            node: self.shared.node.clone(),
            cursor: Some(upto),
            pending_to: Some(0),
            delivered: std::mem::take(&mut self.delivered),
            ..Default::default()
        };
        let delivered = report.delivered;
        if let Ok(Ok(true)) =
            tokio::time::timeout(STOP_WAIT, self.shared.store.report_delivery(report)).await
        {
            self.count_delivered(delivered);
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.shared.config.lease_ttl.as_millis()).unwrap_or(10_000)
    }

    /// Sleeps, or stops early when cancelled.
    async fn sleep(&self, d: Duration) -> Result<(), Stop> {
        tokio::select! {
            () = tokio::time::sleep(d) => Ok(()),
            () = self.stop.cancelled() => Err(Stop::Cancelled),
        }
    }

    async fn report(&self, mut r: DeliveryReport) -> Result<(), Stop> {
        r.destination = self.d.id;
        r.generation = self.d.generation;
        r.node = self.shared.node.clone();
        loop {
            if self.stop.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            match self.shared.store.report_delivery(r.clone()).await {
                Ok(true) => {
                    self.count_delivered(r.delivered);
                    return Ok(());
                }
                Ok(false) => {
                    // Another generation, or another node holds the lease.
                    self.stop.cancel();
                    return Err(Stop::Cancelled);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recording delivery failed, retrying");
                    self.sleep(Duration::from_secs(1)).await?;
                }
            }
        }
    }

    /// Records what was acknowledged and not yet written (and that no batch is going out);
    /// `true` when there was something to record.
    async fn record_acknowledged(&mut self) -> Result<bool, Stop> {
        let Some(upto) = self.unreported else {
            return Ok(false);
        };
        self.report(DeliveryReport {
            cursor: Some(upto),
            pending_to: Some(0),
            delivered: self.delivered,
            ..Default::default()
        })
        .await?;
        self.unreported = None;
        self.delivered = 0;
        Ok(true)
    }

    /// Counts acknowledged items in the metrics, once they are recorded.
    fn count_delivered(&self, n: i64) {
        if n > 0 {
            self.shared.metrics.showing(&self.d);
            self.shared
                .metrics
                .delivered
                .get_or_create(&DestinationLabels {
                    project: self.d.project_name.clone(),
                    destination: self.d.spec.name.clone(),
                })
                .inc_by(n as u64);
        }
    }

    async fn deliver(&mut self) -> Result<(), Stop> {
        if self.d.spec.kind == DestinationKind::Vero {
            return self.relay().await;
        }
        let mut cursor = self.d.cursor;
        let mut pending_to = self.d.pending_to;
        loop {
            self.redrive().await?;
            let limit = match self.d.spec.kind {
                DestinationKind::Webhook => self.d.spec.batch as usize,
                _ => READ_ITEMS,
            };
            let read = self
                .shared
                .store
                .outbox(self.d.project, cursor, limit)
                .await;
            let mut items = match read {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the outbox failed, retrying");
                    self.sleep(Duration::from_secs(1)).await?;
                    continue;
                }
            };
            if pending_to > cursor {
                // The batch that was being sent before a restart: the same range again.
                items.retain(|i| i.pos <= pending_to);
            }
            let Some(last) = items.last().map(|i| i.pos) else {
                if self.record_acknowledged().await? {
                    pending_to = 0;
                }
                self.sleep(self.shared.config.poll).await?;
                continue;
            };
            let first_after = cursor;
            let wanted: Vec<&OutboxItem> = items
                .iter()
                .filter(|i| i.is_live() && self.d.spec.wants(i))
                .collect();
            if wanted.is_empty() {
                self.unreported = Some(last);
                cursor = last;
                continue;
            }
            // Tell the store what is acknowledged so far and which batch is going out, in
            // one write: after a crash the same batch (same id) is sent again. The store
            // refuses it once the destination is paused: nothing more goes out.
            if pending_to != last || self.unreported.is_some() {
                self.report(DeliveryReport {
                    cursor: self.unreported,
                    pending_to: Some(last),
                    delivered: self.delivered,
                    ..Default::default()
                })
                .await?;
                self.unreported = None;
                self.delivered = 0;
                pending_to = last;
            }
            let dead = match self.d.spec.kind {
                DestinationKind::Webhook => self.webhook(first_after, last, &wanted).await?,
                DestinationKind::Vero => self.vero_each(&wanted).await?,
                DestinationKind::Nats => self.nats(&wanted).await?,
            };
            let n = wanted.len() as i64 - dead.len() as i64;
            if dead.is_empty() && !self.failing {
                self.delivered += n;
                self.unreported = Some(last);
            } else {
                // Dead letters and a cleared error are written at once.
                let last_error = if self.failing { Some(None) } else { None };
                let cleared = dead.is_empty();
                let delivered = n + std::mem::take(&mut self.delivered);
                self.report(DeliveryReport {
                    cursor: Some(last),
                    pending_to: Some(0),
                    delivered,
                    dead,
                    last_error,
                    ..Default::default()
                })
                .await?;
                if cleared {
                    self.failing = false;
                }
                pending_to = 0;
            }
            cursor = last;
            if items.len() < limit {
                // A partial batch: the backlog is drained and items trickle in. What was
                // acknowledged is recorded now (a kill while waiting re-sends nothing that
                // was not in flight); then a few more gather (a fraction of the idle poll),
                // so batches stay large while ingest is busy.
                if self.record_acknowledged().await? {
                    pending_to = 0;
                }
                self.sleep(self.shared.config.poll / 4).await?;
            }
        }
    }

    /// The Vero relay: one call per item, in commit order per user, up to
    /// [`VERO_USERS_IN_FLIGHT`] users at once, pipelined: each user's next call starts as
    /// soon as its previous one is acknowledged, whatever the other users do, and items are
    /// read ahead (up to [`VERO_READ_AHEAD`]) while calls run. A user whose calls keep
    /// failing holds up only its own later items (and, past the read-ahead, the reading of
    /// more). The cursor is the position before the oldest item not yet acknowledged.
    async fn relay(&self) -> Result<(), Stop> {
        let mut p = Progress {
            read: self.d.cursor,
            ..Progress::default()
        };
        let result = self.relay_loop(&mut p).await;
        // Stopped (a pause, a shutdown, the lease lost): what was acknowledged since the
        // last report is recorded now, once, so it is not sent again.
        let cursor = p.cursor();
        if cursor > self.d.cursor || p.delivered > 0 || !p.dead.is_empty() || !p.redriven.is_empty()
        {
            let report = DeliveryReport {
                destination: self.d.id,
                generation: self.d.generation,
                node: self.shared.node.clone(),
                cursor: Some(cursor),
                pending_to: Some(0),
                delivered: p.delivered,
                dead: std::mem::take(&mut p.dead),
                redriven: std::mem::take(&mut p.redriven),
                ..Default::default()
            };
            if let Ok(Ok(true)) =
                tokio::time::timeout(STOP_WAIT, self.shared.store.report_delivery(report)).await
            {
                self.count_delivered(p.delivered);
            }
        }
        result
    }

    async fn relay_loop(&self, p: &mut Progress) -> Result<(), Stop> {
        // Dead letters being sent again (behind the cursor: not in `pending`).
        let mut redriving: BTreeSet<i64> = BTreeSet::new();
        let mut redrive_checked: Option<tokio::time::Instant> = None;
        let mut reported = self.d.cursor;
        // Per user, in order, the items read and not yet sent.
        let mut pending_bytes = 0usize;
        let mut queues: HashMap<i64, VecDeque<(tokio::time::Instant, OutboxItem)>> = HashMap::new();
        // Users with an item ready and none in flight, in the order they became ready; and
        // every user that is ready or has a call in flight (one call per user at a time).
        let mut ready: VecDeque<i64> = VecDeque::new();
        let mut scheduled: std::collections::HashSet<i64> = std::collections::HashSet::new();
        // A reidentify or delete read and not yet done: nothing is read past it.
        let mut barrier: Option<i64> = None;
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut last_report = tokio::time::Instant::now();
        loop {
            // Dead letters asked for again join their users' queues.
            if redriving.is_empty() && redrive_checked.is_none_or(|t| t.elapsed() >= REDRIVE_EVERY)
            {
                redrive_checked = Some(tokio::time::Instant::now());
                if let Ok(items) = self.shared.store.redrive_items(self.d.id, READ_ITEMS).await {
                    for item in items {
                        redriving.insert(item.pos);
                        if !item.is_live() {
                            p.redriven.push(item.pos);
                            redriving.remove(&item.pos);
                            continue;
                        }
                        if scheduled.insert(item.user_ref) {
                            ready.push_back(item.user_ref);
                        }
                        queues
                            .entry(item.user_ref)
                            .or_default()
                            .push_back((tokio::time::Instant::now(), item));
                    }
                }
            }
            // Read ahead; not past a barrier (a reidentify or a delete) until every item
            // before it is done, and nothing past it until it is: it changes who the user is
            // at Vero, which per-user order alone (users are rows here) cannot order.
            let mut read_any = false;
            if barrier.is_none_or(|b| !p.pending.contains_key(&b)) {
                barrier = None;
            }
            if barrier.is_none()
                && p.pending.len() < VERO_READ_AHEAD
                && pending_bytes < VERO_READ_AHEAD_BYTES
            {
                match self
                    .shared
                    .store
                    .outbox(self.d.project, p.read, READ_ITEMS)
                    .await
                {
                    Ok(items) => {
                        for item in items {
                            let wanted = item.is_live() && self.d.spec.wants(&item);
                            let barrier_kind = matches!(
                                item.kind,
                                ItemKind::UserReidentify | ItemKind::UserDelete
                            );
                            if wanted && barrier_kind && !p.pending.is_empty() {
                                // Read again once what is before it is done.
                                break;
                            }
                            p.read = item.pos;
                            read_any = true;
                            if !wanted {
                                continue;
                            }
                            if barrier_kind {
                                barrier = Some(item.pos);
                            }
                            p.pending.insert(item.pos, item.bytes());
                            pending_bytes += item.bytes();
                            if scheduled.insert(item.user_ref) {
                                ready.push_back(item.user_ref);
                            }
                            queues
                                .entry(item.user_ref)
                                .or_default()
                                .push_back((tokio::time::Instant::now(), item));
                            if barrier.is_some() {
                                break;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the outbox failed, retrying"),
                }
            }
            // Record progress: now and then while calls run, at once when idle; and before
            // new calls start, announce them: the store refuses that once the destination
            // is paused, which stops the loop before it sends anything more.
            let cursor = p.cursor();
            let moved = cursor > reported
                || !p.dead.is_empty()
                || p.delivered > 0
                || !p.redriven.is_empty();
            let starting = !ready.is_empty() && running.len() < VERO_USERS_IN_FLIGHT;
            let announce = starting && (read_any || running.is_empty());
            let busy = starting || !running.is_empty();
            if announce
                || (moved && (running.is_empty() || last_report.elapsed() >= VERO_REPORT_EVERY))
            {
                let failing = std::mem::take(
                    &mut *self.noted_error.lock().unwrap_or_else(|e| e.into_inner()),
                );
                self.report(DeliveryReport {
                    cursor: Some(cursor),
                    pending_to: Some(if busy { p.read.max(1) } else { 0 }),
                    delivered: std::mem::take(&mut p.delivered),
                    dead: std::mem::take(&mut p.dead),
                    redriven: std::mem::take(&mut p.redriven),
                    last_error: if failing.is_some() && !busy {
                        Some(None)
                    } else {
                        None
                    },
                    ..Default::default()
                })
                .await?;
                if busy {
                    *self.noted_error.lock().unwrap_or_else(|e| e.into_inner()) = failing;
                }
                reported = cursor;
                last_report = tokio::time::Instant::now();
            }
            // Start calls: each ready user's next item.
            while running.len() < VERO_USERS_IN_FLIGHT {
                let Some(user) = ready.pop_front() else { break };
                match queues.get_mut(&user).and_then(VecDeque::pop_front) {
                    Some((read_at, item)) => {
                        // Waited behind its user's earlier calls: it may be gone since.
                        let stale = read_at.elapsed() >= RECHECK_AFTER;
                        running.push(self.vero_call(item, stale));
                    }
                    None => {
                        scheduled.remove(&user);
                    }
                }
            }
            if running.is_empty() {
                if !read_any {
                    self.sleep(self.shared.config.poll).await?;
                }
                continue;
            }
            // Wait for a call to end (or, with room to read ahead, a poll interval).
            let can_read =
                p.pending.len() < VERO_READ_AHEAD && pending_bytes < VERO_READ_AHEAD_BYTES;
            let next = tokio::select! {
                n = running.next() => n,
                () = tokio::time::sleep(self.shared.config.poll), if can_read => None,
                () = self.stop.cancelled() => return Err(Stop::Cancelled),
            };
            let Some(outcome) = next else { continue };
            let (user, pos, outcome) = outcome?;
            if let Some(bytes) = p.pending.remove(&pos) {
                pending_bytes -= bytes;
            }
            let was_dead = redriving.remove(&pos);
            match outcome {
                CallOutcome::Gone => {
                    if was_dead {
                        p.redriven.push(pos);
                    }
                }
                CallOutcome::Ack => {
                    p.delivered += 1;
                    if was_dead {
                        p.redriven.push(pos);
                    }
                }
                CallOutcome::Dead(status, excerpt) => {
                    if was_dead {
                        p.redriven.push(pos);
                    }
                    p.dead.push((pos, status, excerpt));
                }
                CallOutcome::Pause(why) => {
                    // No new call; the others still going are dropped. What was
                    // acknowledged is recorded; the rest is sent again after a resume.
                    drop(running);
                    // The refused call is not acknowledged: it stays ahead of the cursor.
                    p.pending.insert(pos, 0);
                    let cursor = p.cursor();
                    self.shared.metrics.attempt(&self.d, "paused");
                    tracing::warn!(destination = %self.d.spec.name, reason = %why.what, "destination paused");
                    let why = why.status_text();
                    self.report(DeliveryReport {
                        cursor: Some(cursor),
                        delivered: std::mem::take(&mut p.delivered),
                        dead: std::mem::take(&mut p.dead),
                        redriven: std::mem::take(&mut p.redriven),
                        last_error: Some(Some(why.clone())),
                        pause: Some(why),
                        ..Default::default()
                    })
                    .await?;
                    self.stop.cancel();
                    return Err(Stop::Cancelled);
                }
            }
            if queues.get(&user).is_some_and(|q| !q.is_empty()) {
                ready.push_back(user);
            } else {
                queues.remove(&user);
                scheduled.remove(&user);
            }
        }
    }

    /// One Vero call, retried until acknowledged or refused for good: `(user, position,
    /// what became of it)`.
    async fn vero_call(
        &self,
        item: OutboxItem,
        stale: bool,
    ) -> Result<(i64, i64, CallOutcome), Stop> {
        let outcome = if stale && !self.still_there(&item).await {
            CallOutcome::Gone
        } else {
            self.vero_item(&item).await?
        };
        Ok((item.user_ref, item.pos, outcome))
    }

    /// Whether an item read earlier is still in the outbox (its user not deleted since).
    /// When the store cannot say, it is taken as there.
    async fn still_there(&self, item: &OutboxItem) -> bool {
        match self
            .shared
            .store
            .outbox(self.d.project, item.pos - 1, 1)
            .await
        {
            Ok(found) => found
                .first()
                .is_some_and(|f| f.pos == item.pos && f.is_live()),
            Err(_) => true,
        }
    }

    /// Sends the dead letters marked for redrive, if any (looked for every few seconds).
    async fn redrive(&mut self) -> Result<(), Stop> {
        if self.redrive_checked.elapsed() < REDRIVE_EVERY {
            return Ok(());
        }
        self.redrive_checked = tokio::time::Instant::now();
        {
            let items = match self
                .shared
                .store
                .redrive_items(self.d.id, self.d.spec.batch.max(1) as usize)
                .await
            {
                Ok(items) if !items.is_empty() => items,
                _ => return Ok(()),
            };
            // Dead letters go out without a batch announcement: ask the store first whether
            // the destination was paused meanwhile.
            let paused = match self
                .shared
                .store
                .destinations(Some(self.d.project), false)
                .await
            {
                Ok(all) => all
                    .iter()
                    .find(|d| d.id == self.d.id)
                    .is_none_or(|d| d.paused.is_some()),
                Err(_) => true,
            };
            if paused {
                self.stop.cancel();
                return Err(Stop::Cancelled);
            }
            let positions: Vec<i64> = items.iter().map(|i| i.pos).collect();
            let wanted: Vec<&OutboxItem> = items.iter().filter(|i| i.is_live()).collect();
            let first = positions[0] - 1;
            let last = positions[positions.len() - 1];
            let dead = if wanted.is_empty() {
                Vec::new()
            } else {
                match self.d.spec.kind {
                    DestinationKind::Webhook => {
                        // A redriven batch has an id of its own (its own range, marked as
                        // such), not one a receiver saw for another batch.
                        self.webhook(first, -last, &wanted).await?
                    }
                    DestinationKind::Vero => self.vero_each(&wanted).await?,
                    DestinationKind::Nats => self.nats(&wanted).await?,
                }
            };
            let n = wanted.len() as i64 - dead.len() as i64;
            self.report(DeliveryReport {
                delivered: n,
                redriven: positions,
                dead,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Records a failed attempt (once per run of failures, or when the error changes).
    async fn failed(&mut self, failure: Failure) -> Result<(), Stop> {
        tracing::info!(destination = %self.d.spec.name, error = %failure.what, "delivery attempt failed");
        let error = failure.status_text();
        if !self.failing || self.d.last_error.as_deref() != Some(error.as_str()) {
            self.report(DeliveryReport {
                last_error: Some(Some(error.clone())),
                ..Default::default()
            })
            .await?;
            self.d.last_error = Some(error);
            self.failing = true;
        }
        Ok(())
    }

    /// Waits before attempt `attempt + 1`.
    async fn back_off(&self, attempt: u32, asked: Option<Duration>) -> Result<(), Stop> {
        let wait = backoff(
            self.shared.config.retry_base,
            attempt,
            rand::random::<f64>(),
            asked,
        );
        self.sleep(wait).await
    }

    /// One webhook batch, retried until acknowledged or refused for good; returns the dead
    /// letters (every item of a refused batch).
    async fn webhook(
        &mut self,
        after: i64,
        last: i64,
        items: &[&OutboxItem],
    ) -> Result<Vec<(i64, u16, String)>, Stop> {
        let id = if last < 0 {
            format!(
                "{}_redrive",
                batch_id(self.d.id, self.d.generation, after, -last)
            )
        } else {
            batch_id(self.d.id, self.d.generation, after, last)
        };
        let mut current: Vec<OutboxItem> = items.iter().map(|i| (*i).clone()).collect();
        let mut body = self.batch_body(&current);
        let mut attempt = 0u32;
        loop {
            // Wall-clock seconds, whatever clock stamps receive times: receivers check a
            // signature's freshness against their own clock.
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let Some(signature) = sign(&self.d.secret, &id, timestamp, &body) else {
                self.pause(Failure::plain("the signing secret is not a whsec_ secret"))
                    .await?;
                return Err(Stop::Cancelled);
            };
            let request = self
                .shared
                .http
                .post(&self.d.spec.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body.clone());
            match self.attempt(request).await? {
                Judged::Ack => return Ok(Vec::new()),
                Judged::Dead(status, excerpt) => {
                    return Ok(current
                        .iter()
                        .map(|i| (i.pos, status, excerpt.clone()))
                        .collect());
                }
                Judged::Pause(why) => {
                    self.pause(why).await?;
                    return Err(Stop::Cancelled);
                }
                Judged::Retry(error, asked) => {
                    self.failed(error).await?;
                    self.back_off(attempt, asked).await?;
                    attempt = attempt.saturating_add(1);
                    // A user deleted while the batch waited takes its items out of it
                    // (same range, same id): read the range again before the next attempt.
                    if last > 0 {
                        if let Ok(fresh) = self
                            .shared
                            .store
                            .outbox(self.d.project, after, self.d.spec.batch as usize)
                            .await
                        {
                            let fresh: Vec<OutboxItem> = fresh
                                .into_iter()
                                .filter(|i| i.pos <= last && i.is_live() && self.d.spec.wants(i))
                                .collect();
                            if fresh.is_empty() {
                                return Ok(Vec::new());
                            }
                            if fresh
                                .iter()
                                .map(|i| i.pos)
                                .ne(current.iter().map(|i| i.pos))
                            {
                                body = self.batch_body(&fresh);
                                current = fresh;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A webhook batch's body for `items`.
    fn batch_body(&self, items: &[OutboxItem]) -> bytes::Bytes {
        let refs: Vec<&OutboxItem> = items.iter().collect();
        bytes::Bytes::from(webhook_body(self.d.project, &self.d.project_name, &refs))
    }

    /// Sends one request (or stops, when cancelled) and says what its answer means; counted
    /// in the attempts metric by outcome (a pause is counted where it is recorded).
    async fn attempt(&self, request: reqwest::RequestBuilder) -> Result<Judged, Stop> {
        let answer = tokio::select! {
            a = request.send() => a,
            () = self.stop.cancelled() => return Err(Stop::Cancelled),
        };
        let judged = self.judge(answer).await;
        let outcome = match &judged {
            Judged::Ack => "ok",
            Judged::Dead(..) => "dead",
            Judged::Retry(..) => "retry",
            Judged::Pause(_) => return Ok(judged),
        };
        self.shared.metrics.attempt(&self.d, outcome);
        Ok(judged)
    }

    /// Reads an answer (or its absence) into what to do next.
    async fn judge(&self, answer: Result<reqwest::Response, reqwest::Error>) -> Judged {
        match answer {
            Err(e) => Judged::Retry(Failure::plain(describe(&e)), None),
            Ok(response) => {
                let status = response.status().as_u16();
                let asked = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        retry_after(v, trackd_core::Clock::now(&trackd_core::SystemClock))
                    });
                let v = verdict(status, asked, self.d.spec.kind);
                if v == Verdict::Ack {
                    return Judged::Ack;
                }
                let excerpt = dead_letter_excerpt(&first_kib(response).await);
                match v {
                    Verdict::Ack => Judged::Ack,
                    Verdict::Retry(asked) => Judged::Retry(
                        Failure::answered(format!("the receiver answered {status}"), &excerpt),
                        asked,
                    ),
                    Verdict::Dead => Judged::Dead(status, excerpt),
                    Verdict::Pause => Judged::Pause(Failure::answered(
                        format!("Vero answered {status} (the destination's token is refused)"),
                        &excerpt,
                    )),
                }
            }
        }
    }

    async fn pause(&mut self, why: Failure) -> Result<(), Stop> {
        self.shared.metrics.attempt(&self.d, "paused");
        tracing::warn!(destination = %self.d.spec.name, reason = %why.what, "destination paused");
        let why = why.status_text();
        let delivered = std::mem::take(&mut self.delivered);
        let upto = self.unreported.take();
        self.report(DeliveryReport {
            cursor: upto,
            delivered,
            last_error: Some(Some(why.clone())),
            pause: Some(why),
            ..Default::default()
        })
        .await?;
        self.stop.cancel();
        Ok(())
    }

    /// Items one after another as Vero calls, for the batch paths (`Loop::relay` is how a
    /// Vero destination is delivered; this keeps those paths whole).
    async fn vero_each(&mut self, items: &[&OutboxItem]) -> Result<Vec<(i64, u16, String)>, Stop> {
        let mut dead = Vec::new();
        for item in items {
            match self.vero_item(item).await? {
                CallOutcome::Ack | CallOutcome::Gone => {}
                CallOutcome::Dead(status, excerpt) => dead.push((item.pos, status, excerpt)),
                CallOutcome::Pause(why) => {
                    self.pause(why).await?;
                    return Err(Stop::Cancelled);
                }
            }
        }
        Ok(dead)
    }

    /// One item as the Vero call it came from, retried until acknowledged or refused for
    /// good (or the token is refused).
    async fn vero_item(&self, item: &OutboxItem) -> Result<CallOutcome, Stop> {
        let token = self.d.spec.token.as_deref().unwrap_or_default();
        let base = self.d.spec.url.trim_end_matches('/');
        let (method, path, body) = item.vero_request(self.d.project);
        let url = format!(
            "{base}{path}?auth_token={}",
            percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
        );
        let method =
            reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut attempt = 0u32;
        loop {
            let request = self
                .shared
                .http
                .request(method.clone(), &url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            match self.attempt(request).await? {
                Judged::Ack => return Ok(CallOutcome::Ack),
                Judged::Dead(status, excerpt) => return Ok(CallOutcome::Dead(status, excerpt)),
                Judged::Pause(why) => return Ok(CallOutcome::Pause(why)),
                Judged::Retry(failure, asked) => {
                    tracing::info!(destination = %self.d.spec.name, error = %failure.what, "vero call failed");
                    self.note_failure(&failure.status_text()).await?;
                    self.back_off(attempt, asked).await?;
                    attempt = attempt.saturating_add(1);
                    if !self.still_there(item).await {
                        return Ok(CallOutcome::Gone);
                    }
                }
            }
        }
    }

    /// Records a Vero call's failure at once, while the batch goes on: one user's call may
    /// be retried for long, and until the batch is through nothing else would say that
    /// the destination is failing. Once per distinct error.
    async fn note_failure(&self, error: &str) -> Result<(), Stop> {
        {
            let noted = self.noted_error.lock().unwrap_or_else(|e| e.into_inner());
            if noted.as_deref() == Some(error) {
                return Ok(());
            }
        }
        let report = DeliveryReport {
            destination: self.d.id,
            generation: self.d.generation,
            node: self.shared.node.clone(),
            last_error: Some(Some(error.to_owned())),
            ..Default::default()
        };
        match self.shared.store.report_delivery(report).await {
            Ok(true) => {
                *self.noted_error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(error.to_owned());
                Ok(())
            }
            Ok(false) => {
                self.stop.cancel();
                Err(Stop::Cancelled)
            }
            // Recorded when the batch is through, if not before.
            Err(e) => {
                tracing::debug!(error = %e, "recording a failure failed");
                Ok(())
            }
        }
    }

    /// Every item published to JetStream with its id as `Nats-Msg-Id`, then every PubAck
    /// awaited; a failure sends them all again (the stream drops what it already has).
    async fn nats(&mut self, items: &[&OutboxItem]) -> Result<Vec<(i64, u16, String)>, Stop> {
        let prefix = self.d.spec.subject_prefix.clone().unwrap_or_default();
        let project = subject_token(&self.d.project_name);
        let mut attempt = 0u32;
        loop {
            let published = self.publish(items, &prefix, &project).await;
            match published {
                Ok(dead) => {
                    self.shared.metrics.attempt(&self.d, "ok");
                    if !dead.is_empty() {
                        self.shared.metrics.attempt(&self.d, "dead");
                    }
                    return Ok(dead);
                }
                Err(error) => {
                    self.shared.metrics.attempt(&self.d, "retry");
                    self.nats = None;
                    self.failed(Failure::plain(error)).await?;
                    self.back_off(attempt, None).await?;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Publishes the items and awaits their PubAcks; returns the items the server can never
    /// take (larger than its `max_payload`), which go to the dead letters.
    async fn publish(
        &mut self,
        items: &[&OutboxItem],
        prefix: &str,
        project: &str,
    ) -> Result<Vec<(i64, u16, String)>, String> {
        let timeout = self.shared.config.timeout;
        if self.nats.is_none() {
            let connect = async_nats::ConnectOptions::new()
                .connection_timeout(timeout)
                .request_timeout(Some(timeout))
                .connect(self.d.spec.url.as_str());
            let client = tokio::select! {
                c = connect => c.map_err(|e| format!("connecting to NATS failed: {e}"))?,
                () = self.stop.cancelled() => return Err("stopped".into()),
            };
            self.nats = Some(async_nats::jetstream::new(client));
        }
        let Some(js) = self.nats.clone() else {
            return Err("no NATS connection".into());
        };
        let mut acks = Vec::with_capacity(items.len());
        let mut dead = Vec::new();
        for item in items {
            let kind = if item.kind == ItemKind::Event {
                "event"
            } else {
                "user"
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", item.id(self.d.project).as_str());
            let mut payload = Vec::with_capacity(512);
            item.write_json(self.d.project, &mut payload);
            let published = js
                .publish_with_headers(
                    format!("{prefix}.{project}.{kind}"),
                    headers,
                    payload.into(),
                )
                .await;
            match published {
                Ok(ack) => acks.push(ack),
                // Larger than the server takes: no retry will ever get it through. Refused
                // for good, as a receiver's 413 would be; the rest goes on.
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
                {
                    let why = format!("NATS refused the message: {e}");
                    dead.push((item.pos, 413, dead_letter_excerpt(why.as_bytes())));
                }
                Err(e) => return Err(format!("publishing to NATS failed: {e}")),
            }
        }
        let all = futures_util::future::join_all(
            acks.into_iter().map(std::future::IntoFuture::into_future),
        );
        let acked = tokio::select! {
            a = tokio::time::timeout(timeout, all) => a.map_err(|_| "NATS did not acknowledge in time".to_owned())?,
            () = self.stop.cancelled() => return Err("stopped".into()),
        };
        for ack in acked {
            ack.map_err(|e| format!("JetStream refused a message: {e}"))?;
        }
        Ok(dead)
    }
}

/// Where a Vero relay stands: read up to `read`; `pending` read and not yet acknowledged
/// (position → bytes); and what is acknowledged, dead or redriven since the last report.
#[derive(Default)]
struct Progress {
    read: i64,
    pending: std::collections::BTreeMap<i64, usize>,
    delivered: i64,
    dead: Vec<(i64, u16, String)>,
    redriven: Vec<i64>,
}

impl Progress {
    /// The position before the oldest item not yet acknowledged.
    fn cursor(&self) -> i64 {
        self.pending
            .first_key_value()
            .map_or(self.read, |(p, _)| p - 1)
    }
}

/// What became of one Vero call.
enum CallOutcome {
    Ack,
    /// Its user was deleted while it waited: nothing to send.
    Gone,
    Dead(u16, String),
    Pause(Failure),
}

/// What became of an attempt.
enum Judged {
    Ack,
    Retry(Failure, Option<Duration>),
    Dead(u16, String),
    Pause(Failure),
}

/// Why an attempt failed or a destination paused: what happened, and what the receiver
/// answered (the first KiB of its body, on one line). The answer goes into the
/// destination's status, which the project's secret key reads, but never into the log: a
/// receiver (a proxy's error page, Vero itself) may echo the request, user ids, emails and
/// payloads included, and logs hold none of those (DESIGN §4).
#[derive(Debug, Clone)]
struct Failure {
    what: String,
    answer: Option<String>,
}

impl Failure {
    fn plain(what: impl Into<String>) -> Self {
        Failure {
            what: what.into(),
            answer: None,
        }
    }

    fn answered(what: String, excerpt: &str) -> Self {
        Failure {
            what,
            answer: Some(one_line(excerpt)),
        }
    }

    /// The destination's `last_error` or pause reason.
    fn status_text(&self) -> String {
        match &self.answer {
            Some(answer) => format!("{}: {answer}", self.what),
            None => self.what.clone(),
        }
    }
}

/// Renews a loop's lease every third of its life; cancels the loop when it is lost, or
/// when it could not be renewed for a whole lease (the store unreachable: another node may
/// hold it by now, and two nodes must not deliver one destination).
async fn keep_lease(shared: Arc<Shared>, destination: i64, stop: CancellationToken) {
    let ttl = shared.config.lease_ttl;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(10_000);
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(ttl / 3) => {}
            () = stop.cancelled() => return,
        }
        match shared.store.lease(destination, &shared.node, ttl_ms).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::warn!(destination, "lease lost to another node, stopping");
                stop.cancel();
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "lease renewal failed");
                if renewed.elapsed() >= ttl {
                    tracing::warn!(destination, "lease not renewed in time, stopping");
                    stop.cancel();
                    return;
                }
            }
        }
    }
}

/// A project name as one subject token: `.` (a separator in NATS) becomes `%2E`. `%` is
/// not in project names, so two projects never share a subject (`a.b` and `a_b` did when
/// `.` became `_`).
fn subject_token(name: &str) -> String {
    name.replace('.', "%2E")
}

/// A transport error, briefly.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the receiver did not answer in time".into()
    } else if e.is_connect() {
        "the receiver refused the connection or could not be reached".into()
    } else {
        // Never the error's own text: it names the URL, which may hold a credential (a
        // Vero token, a webhook URL's key).
        let cause = std::error::Error::source(e)
            .map_or_else(|| "no answer".to_owned(), ToString::to_string);
        format!("the request failed: {cause}")
    }
}

/// The first KiB of an answer's body (what a dead letter keeps), never more.
async fn first_kib(mut response: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < trackd_core::delivery::DEAD_LETTER_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            _ => break,
        }
    }
    out.truncate(trackd_core::delivery::DEAD_LETTER_BODY_BYTES);
    out
}

fn one_line(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    line.trim().to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn projects_never_share_a_subject_token() {
        let names = ["a.b", "a_b", "a-b", "ab", ".", "..", "a.", "_"];
        let tokens: std::collections::HashSet<String> =
            names.iter().map(|n| super::subject_token(n)).collect();
        assert_eq!(tokens.len(), names.len(), "{tokens:?}");
        assert!(tokens.iter().all(|t| !t.contains('.') && !t.is_empty()));
        assert_eq!(super::subject_token("shop.eu"), "shop%2Eeu");
        assert_eq!(super::subject_token("shop_eu"), "shop_eu");
    }
}
