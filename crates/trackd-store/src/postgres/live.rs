//! The live view across nodes. A node whose console watches says so every second
//! (`NOTIFY trackd_live_wanted`); while anyone does, every node's commits announce their
//! events (`pg_notify('trackd_live', …)` on the writer's connection right after the commit,
//! outside the transaction: only committed events are announced, and a commit never waits
//! for the notification queue's lock); every node listens on a connection of its own and hands the announced
//! events, read back by id, to its watchers. With nobody watching, commits pay nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::{AsyncMessage, NoTls, Notification};
use trackd_core::{LiveBatch, LiveFeed, ProjectId};

use super::writer::now_ms;

/// How long one `trackd_live_wanted` keeps commits announcing.
const WANTED_FOR_MS: u64 = 3_000;

/// Says, every second while this node's console watches, that events are wanted.
pub(super) async fn announce(pool: Pool, live: LiveFeed) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !live.watched() {
            continue;
        }
        if let Ok(client) = pool.get().await {
            let _ = client
                .execute("SELECT pg_notify('trackd_live_wanted', '')", &[])
                .await;
        }
    }
}

/// Listens for both channels, reconnecting after a failure.
pub(super) async fn listen(config: tokio_postgres::Config, live: LiveFeed, wanted: Arc<AtomicU64>) {
    loop {
        if let Err(e) = listen_once(&config, &live, &wanted).await {
            tracing::debug!(error = %e, "live listener lost its connection");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    live: &LiveFeed,
    wanted: &AtomicU64,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (notes, mut received) = tokio::sync::mpsc::unbounded_channel::<Notification>();
    // The connection's messages drive it: queries and notifications alike.
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if notes.send(n).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute("LISTEN trackd_live; LISTEN trackd_live_wanted")
        .await?;
    while let Some(note) = received.recv().await {
        if note.channel() == "trackd_live_wanted" {
            wanted.fetch_max(now_ms() + WANTED_FOR_MS, Ordering::Relaxed);
            continue;
        }
        if !live.watched() {
            continue;
        }
        let Ok(payload) = serde_json::from_str::<serde_json::Value>(note.payload()) else {
            continue;
        };
        let project = payload["p"].as_i64().unwrap_or_default();
        // Only a watched project's events are read back.
        if !live.watches(ProjectId::new(project)) {
            continue;
        }
        let ids: Vec<i64> = payload["ids"]
            .as_array()
            .map(|ids| ids.iter().filter_map(serde_json::Value::as_i64).collect())
            .unwrap_or_default();
        let events = if ids.is_empty() {
            Vec::new()
        } else {
            super::read::events_by_id(&client, &ids).await?
        };
        live.publish(LiveBatch {
            project: ProjectId::new(project),
            events,
            duplicates: payload["d"].as_u64().unwrap_or_default(),
        });
    }
    driver.abort();
    Ok(())
}
