//! [`StoreMetrics`]: what every store backend reports about its writes, registered by the
//! server on its Prometheus registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The writer's numbers. Cloning shares them (the metric types are handles).
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Writes (requests) per committed transaction.
    pub batch_size: Histogram,
    /// Seconds from a batch's start to its commit.
    pub commit_seconds: Histogram,
    /// Writes waiting for the writer.
    pub queue_depth: Gauge,
    /// Batches that failed (nothing of them committed).
    pub commit_failures: Counter,
    /// Times the writer reopened its database connection after a failure.
    pub reopens: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            // 1, 2, 4, ... 2048: the writer takes up to 1024 writes per batch.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            // 100 µs to ~3.3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            queue_depth: Gauge::default(),
            commit_failures: Counter::default(),
            reopens: Counter::default(),
        }
    }
}

impl StoreMetrics {
    /// Adds these metrics to `registry` (names get the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "store_commit_batch_size",
            "Writes per committed transaction",
            self.batch_size.clone(),
        );
        registry.register(
            "store_commit_duration_seconds",
            "Time to write and commit one batch",
            self.commit_seconds.clone(),
        );
        registry.register(
            "store_write_queue_depth",
            "Writes waiting for the writer",
            self.queue_depth.clone(),
        );
        registry.register(
            "store_commit_failures",
            "Batches that failed, nothing of them committed",
            self.commit_failures.clone(),
        );
        registry.register(
            "store_reopens",
            "Times the writer reopened the database after a failure",
            self.reopens.clone(),
        );
    }
}
