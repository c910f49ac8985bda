//! Read queries: profiles, pages of events by keyset, exports, statistics. The same queries
//! as `sqlite/read.rs`, with the same answers, on a pooled connection outside the writers'
//! transactions (MVCC: reads never block writes, nor they reads).

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, GenericClient, Row};
use trackd_core::read::{
    page_of, row_bytes, EventQuery, EventRow, ExportKey, ExportQuery, PageBudget, Stats,
    StatsQuery, UserProfile, EXPORT_CHUNK_ROWS,
};
use trackd_core::{EventPage, ExportChunk, ProjectId};

pub(super) const EVENT_COLUMNS: &str =
    "e.id, u.user_id, u.email, e.event_name, e.event_key, e.data, \
                             e.source, e.created_at, e.received_at";

pub(super) fn event_row(r: &Row) -> Result<EventRow, Error> {
    Ok(EventRow {
        id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        email: r.try_get(2)?,
        event_name: r.try_get(3)?,
        event_key: r.try_get(4)?,
        data: r.try_get(5)?,
        source: r.try_get(6)?,
        created_at: r.try_get(7)?,
        received_at: r.try_get(8)?,
    })
}

/// Whether text can be stored at all: PostgreSQL text cannot hold NUL, so no stored key
/// has one, and asking for one is an error instead of "none" (SQLite just finds nothing).
/// Write bodies refuse NUL; path segments and query strings can still carry `%00`.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

async fn user_ref(
    client: &impl GenericClient,
    project: ProjectId,
    key: &str,
) -> Result<Option<i64>, Error> {
    if !storable(key) {
        return Ok(None);
    }
    match client
        .query_opt(
            "SELECT id FROM users WHERE project_id = $1 AND user_key = coalesce(\
             (SELECT user_key FROM users WHERE project_id = $1 AND user_key = $2), \
             (SELECT user_key FROM users WHERE project_id = $1 AND email = $2 \
              ORDER BY id LIMIT 1))",
            &[&project.get(), &key],
        )
        .await?
    {
        Some(row) => row.try_get(0).map(Some),
        None => Ok(None),
    }
}

pub(super) async fn user(
    client: &impl GenericClient,
    project: ProjectId,
    key: &str,
) -> Result<Option<UserProfile>, Error> {
    if !storable(key) {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT user_id, email, phone_number, channels, properties, tags, subscribed, \
             first_seen, last_seen, created_at, updated_at, \
             (SELECT count(*) FROM events WHERE user_ref = users.id) \
             FROM users WHERE project_id = $1 AND user_key = coalesce(\
             (SELECT user_key FROM users WHERE project_id = $1 AND user_key = $2), \
             (SELECT user_key FROM users WHERE project_id = $1 AND email = $2 \
              ORDER BY id LIMIT 1))",
            &[&project.get(), &key],
        )
        .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    Ok(Some(UserProfile {
        id: r.try_get(0)?,
        email: r.try_get(1)?,
        phone_number: r.try_get(2)?,
        channels: r.try_get(3)?,
        properties: r.try_get(4)?,
        tags: r.try_get(5)?,
        subscribed: r.try_get(6)?,
        first_seen: r.try_get(7)?,
        last_seen: r.try_get(8)?,
        created_at: r.try_get(9)?,
        updated_at: r.try_get(10)?,
        event_count: r.try_get(11)?,
    }))
}

/// A statement's arguments, numbered as they are bound.
#[derive(Default)]
struct Args(Vec<Box<dyn ToSql + Sync + Send>>);

impl Args {
    /// Binds `value` and returns its placeholder.
    fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(value));
        format!("${}", self.0.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect()
    }
}

/// A page newest first by (event time, id). Only the predicates a query has are in the
/// SQL, so the planner picks the matching index: by user, by event key, or by time.
pub(super) async fn events(
    client: &impl GenericClient,
    q: &EventQuery,
) -> Result<Option<EventPage>, Error> {
    // First the page's ids and sizes (`octet_length` reads a TOASTed value's header, not
    // the value), so the page ends at its byte budget; then only those rows whole.
    let mut sql = "SELECT e.id, octet_length(e.data), octet_length(e.event_name), e.created_at \
                   FROM events e WHERE "
        .to_owned();
    let mut args = Args::default();
    if let Some(key) = &q.user_key {
        let Some(user) = user_ref(client, q.project, key).await? else {
            return Ok(None);
        };
        sql.push_str(&format!("e.user_ref = {}", args.bind(user)));
    } else {
        sql.push_str(&format!("e.project_id = {}", args.bind(q.project.get())));
    }
    if let Some(key) = &q.event_key {
        if !storable(key.as_str()) {
            return Ok(Some((Vec::new(), None)));
        }
        sql.push_str(&format!(
            " AND e.event_key = {}",
            args.bind(key.as_str().to_owned())
        ));
    }
    if let Some(since) = q.since {
        sql.push_str(&format!(
            " AND e.created_at >= {}",
            args.bind(since.as_micros())
        ));
    }
    if let Some(until) = q.until {
        sql.push_str(&format!(
            " AND e.created_at < {}",
            args.bind(until.as_micros())
        ));
    }
    // Events added after the walk started are not part of it.
    let max_id = match q.cursor {
        Some(c) => c.max_id,
        None => client
            .query_one("SELECT coalesce(max(id), 0) FROM events", &[])
            .await?
            .try_get(0)?,
    };
    sql.push_str(&format!(" AND e.id <= {}", args.bind(max_id)));
    if let Some(c) = q.cursor {
        let created_at = args.bind(c.created_at);
        let id = args.bind(c.id);
        sql.push_str(&format!(" AND (e.created_at, e.id) < ({created_at}, {id})"));
    }
    // One more than the page: whether another page follows.
    sql.push_str(&format!(
        " ORDER BY e.created_at DESC, e.id DESC LIMIT {}",
        args.bind(q.limit as i64 + 1)
    ));
    let keys = client.query(sql.as_str(), &args.refs()).await?;
    let (picked, more) = PageBudget::fill(q.limit, keys.iter().map(sized), |k| k.bytes)?;
    let ids: Vec<i64> = picked.iter().map(|k| k.id).collect();
    // The page's end comes from this statement: the rows read below may be fewer (a user
    // deleted in between), and the walk goes on after the end all the same.
    let last = more
        .then(|| picked.last().map(|k| (k.time, k.id)))
        .flatten();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e JOIN users u ON u.id = e.user_ref \
         WHERE e.id = ANY($1) ORDER BY e.created_at DESC, e.id DESC"
    );
    let rows = client
        .query(sql.as_str(), &[&ids])
        .await?
        .iter()
        .map(event_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(page_of(rows, last, max_id)))
}

/// A row of a page's first statement: `id`, the sizes of `data` and `event_name`, and the
/// time the page is ordered by.
struct Sized {
    id: i64,
    bytes: usize,
    time: i64,
}

fn sized(row: &tokio_postgres::Row) -> Result<Sized, Error> {
    let data: i32 = row.try_get(1)?;
    let name: i32 = row.try_get(2)?;
    Ok(Sized {
        id: row.try_get(0)?,
        bytes: row_bytes(data.max(0) as usize, name.max(0) as usize),
        time: row.try_get(3)?,
    })
}

/// One export chunk: the events after `after`, oldest first by receive time, at most
/// [`EXPORT_CHUNK_ROWS`] and about [`PAGE_BYTES`]. As for a page: the keys and sizes first
/// (`octet_length` reads a TOASTed value's header), then only the rows that fit.
pub(super) async fn export_chunk(
    client: &impl GenericClient,
    q: &ExportQuery,
    after: ExportKey,
) -> Result<ExportChunk, Error> {
    let keys = client
        .query(
            "SELECT e.id, octet_length(e.data), octet_length(e.event_name), e.received_at \
             FROM events e \
             WHERE e.project_id = $1 AND (e.received_at, e.id) > ($2, $3) \
               AND e.received_at < $4 \
             ORDER BY e.received_at, e.id LIMIT $5",
            &[
                &q.project.get(),
                &after.received_at,
                &after.id,
                &q.end(),
                &(EXPORT_CHUNK_ROWS as i64 + 1),
            ],
        )
        .await?;
    let (picked, more) = PageBudget::fill(EXPORT_CHUNK_ROWS, keys.iter().map(sized), |k| k.bytes)?;
    let ids: Vec<i64> = picked.iter().map(|k| k.id).collect();
    let end = picked.last().map(|k| ExportKey {
        received_at: k.time,
        id: k.id,
    });
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e JOIN users u ON u.id = e.user_ref \
         WHERE e.id = ANY($1) ORDER BY e.received_at, e.id"
    );
    let events = client
        .query(sql.as_str(), &[&ids])
        .await?
        .iter()
        .map(event_row)
        .collect::<Result<Vec<_>, _>>()?;
    // The chunk's end comes from the first statement: the rows read after it may be fewer
    // (a user deleted in between) and the export still goes on after the end.
    let next = if more { end } else { None };
    Ok((events, next))
}

/// Events by id, for the live view of events committed by any node.
pub(super) async fn events_by_id(
    client: &impl GenericClient,
    ids: &[i64],
) -> Result<Vec<EventRow>, Error> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e JOIN users u ON u.id = e.user_ref \
         WHERE e.id = ANY($1) ORDER BY e.id"
    );
    client
        .query(sql.as_str(), &[&ids])
        .await?
        .iter()
        .map(event_row)
        .collect()
}

/// The statistics; `None` when the range holds more counts than one answer may.
pub(super) async fn stats(
    client: &impl GenericClient,
    q: &StatsQuery,
) -> Result<Option<Stats>, Error> {
    let width = q.interval.micros();
    let since = q.since.map_or(i64::MIN, |t| t.as_micros());
    let until = q.until.map_or(i64::MAX, |t| t.as_micros());
    // Text sorts by the database's collation unless told otherwise; "C" is SQLite's
    // BINARY (byte order), so keys come in the same order (the JSON keeps it).
    let buckets = client
        .query(
            // With the counts retention kept of the events it deleted (per hour).
            "SELECT start, event_key, sum(n)::bigint FROM ( \
               SELECT (created_at - ((created_at % $4) + $4) % $4) AS start, event_key, \
                      count(*) AS n \
               FROM events WHERE project_id = $1 AND created_at >= $2 AND created_at < $3 \
               GROUP BY start, event_key \
               UNION ALL \
               SELECT (hour - ((hour % $4) + $4) % $4) AS start, event_key, sum(count) AS n \
               FROM stats_rollup WHERE project_id = $1 AND hour >= $2 AND hour < $3 \
               GROUP BY start, event_key) AS b \
             GROUP BY start, event_key ORDER BY start, event_key COLLATE \"C\" LIMIT $5",
            &[
                &q.project.get(),
                &since,
                &until,
                &width,
                &(q.max_counts as i64 + 1),
            ],
        )
        .await?
        .iter()
        .map(|r| -> Result<(i64, String, i64), Error> {
            Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if buckets.len() > q.max_counts {
        return Ok(None);
    }
    let mut stats = Stats {
        buckets,
        ..Stats::default()
    };
    // Each node adds to its own shard of a counter: the total is their sum. SQLite reads
    // the counters in primary key order, by name in byte order; so do these, so refusal
    // reasons come in the same order.
    let counters = client
        .query(
            "SELECT name, sum(value)::bigint FROM counters WHERE project_id = $1 \
             GROUP BY name ORDER BY name COLLATE \"C\"",
            &[&q.project.get()],
        )
        .await?;
    for counter in &counters {
        let name: String = counter.try_get(0)?;
        let value: i64 = counter.try_get(1)?;
        stats.add_counter(&name, value);
    }
    Ok(Some(stats))
}
