//! Read queries: profiles, pages of events by keyset, exports, statistics. They run on
//! reader connections (WAL: readers never block the writer, nor it them).

use rusqlite::{params_from_iter, Connection, OptionalExtension, Row, ToSql};
use trackd_core::read::{
    page_of, row_bytes, EventQuery, EventRow, ExportKey, ExportQuery, PageBudget, Stats,
    StatsQuery, UserProfile, EXPORT_CHUNK_ROWS,
};
use trackd_core::{EventPage, ExportChunk, ProjectId};

pub(super) const EVENT_COLUMNS: &str =
    "e.id, u.user_id, u.email, e.event_name, e.event_key, e.data, \
                             e.source, e.created_at, e.received_at";

pub(super) fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get(0)?,
        user_id: r.get(1)?,
        email: r.get(2)?,
        event_name: r.get(3)?,
        event_key: r.get(4)?,
        data: r.get(5)?,
        source: r.get(6)?,
        created_at: r.get(7)?,
        received_at: r.get(8)?,
    })
}

fn user_ref(conn: &Connection, project: ProjectId, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT id FROM users WHERE project_id = ?1 AND user_key = coalesce(\
             (SELECT user_key FROM users WHERE project_id = ?1 AND user_key = ?2), \
             (SELECT user_key FROM users WHERE project_id = ?1 AND email = ?2 \
              ORDER BY id LIMIT 1))",
    )?
    .query_row(rusqlite::params![project.get(), key], |r| r.get(0))
    .optional()
}

pub(crate) fn user(
    conn: &Connection,
    project: ProjectId,
    key: &str,
) -> rusqlite::Result<Option<UserProfile>> {
    conn.prepare_cached(
        "SELECT user_id, email, phone_number, channels, properties, tags, subscribed, \
         first_seen, last_seen, created_at, updated_at, \
         (SELECT count(*) FROM events WHERE user_ref = users.id) \
         FROM users WHERE project_id = ?1 AND user_key = coalesce(\
             (SELECT user_key FROM users WHERE project_id = ?1 AND user_key = ?2), \
             (SELECT user_key FROM users WHERE project_id = ?1 AND email = ?2 \
              ORDER BY id LIMIT 1))",
    )?
    .query_row(rusqlite::params![project.get(), key], |r| {
        Ok(UserProfile {
            id: r.get(0)?,
            email: r.get(1)?,
            phone_number: r.get(2)?,
            channels: r.get(3)?,
            properties: r.get(4)?,
            tags: r.get(5)?,
            subscribed: r.get(6)?,
            first_seen: r.get(7)?,
            last_seen: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
            event_count: r.get(11)?,
        })
    })
    .optional()
}

/// A page newest first by (event time, id). Only the predicates a query has are in the
/// SQL, so SQLite picks the matching index: by user, by event key, or by time.
pub(crate) fn events(conn: &Connection, q: &EventQuery) -> rusqlite::Result<Option<EventPage>> {
    let mut sql =
        format!("SELECT {EVENT_COLUMNS} FROM events e JOIN users u ON u.id = e.user_ref WHERE ");
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    if let Some(key) = &q.user_key {
        let Some(user) = user_ref(conn, q.project, key)? else {
            return Ok(None);
        };
        sql.push_str("e.user_ref = ?");
        args.push(Box::new(user));
    } else {
        sql.push_str("e.project_id = ?");
        args.push(Box::new(q.project.get()));
    }
    if let Some(key) = &q.event_key {
        sql.push_str(" AND e.event_key = ?");
        args.push(Box::new(key.as_str().to_owned()));
    }
    if let Some(since) = q.since {
        sql.push_str(" AND e.created_at >= ?");
        args.push(Box::new(since.as_micros()));
    }
    if let Some(until) = q.until {
        sql.push_str(" AND e.created_at < ?");
        args.push(Box::new(until.as_micros()));
    }
    // Events added after the walk started are not part of it.
    let max_id = match q.cursor {
        Some(c) => c.max_id,
        None => conn
            .prepare_cached("SELECT coalesce(max(id), 0) FROM events")?
            .query_row([], |r| r.get(0))?,
    };
    sql.push_str(" AND e.id <= ?");
    args.push(Box::new(max_id));
    if let Some(c) = q.cursor {
        sql.push_str(" AND (e.created_at, e.id) < (?, ?)");
        args.push(Box::new(c.created_at));
        args.push(Box::new(c.id));
    }
    sql.push_str(" ORDER BY e.created_at DESC, e.id DESC LIMIT ?");
    // One more than the page: whether another page follows.
    args.push(Box::new(q.limit as i64 + 1));
    let mut stmt = conn.prepare_cached(&sql)?;
    // Rows are read one at a time and the page ends at its byte budget: only one row past
    // the page is ever read, never the whole limit of large events.
    let (rows, more) = PageBudget::fill(
        q.limit,
        stmt.query_map(params_from_iter(args.iter()), event_row)?,
        bytes_of,
    )?;
    let last = more
        .then(|| rows.last().map(|r| (r.created_at, r.id)))
        .flatten();
    Ok(Some(page_of(rows, last, max_id)))
}

/// What a row costs a page.
fn bytes_of(row: &EventRow) -> usize {
    row_bytes(row.data.len(), row.event_name.len())
}

/// One export chunk: the events after `after`, oldest first by receive time, at most
/// [`EXPORT_CHUNK_ROWS`] and about [`PAGE_BYTES`]; one statement, finished before the chunk
/// is handed on, so no snapshot is pinned while a slow client reads (which would also keep
/// the WAL from resetting).
pub(crate) fn export_chunk(
    conn: &Connection,
    q: &ExportQuery,
    after: ExportKey,
) -> rusqlite::Result<ExportChunk> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e JOIN users u ON u.id = e.user_ref \
         WHERE e.project_id = ?1 AND (e.received_at, e.id) > (?2, ?3) \
           AND e.received_at < ?4 \
         ORDER BY e.received_at, e.id LIMIT ?5"
    ))?;
    let rows = stmt.query_map(
        rusqlite::params![
            q.project.get(),
            after.received_at,
            after.id,
            q.end(),
            EXPORT_CHUNK_ROWS as i64 + 1
        ],
        event_row,
    )?;
    let (events, more) = PageBudget::fill(EXPORT_CHUNK_ROWS, rows, bytes_of)?;
    let next = more
        .then(|| events.last())
        .flatten()
        .map(|last: &EventRow| ExportKey {
            received_at: last.received_at,
            id: last.id,
        });
    Ok((events, next))
}

/// The statistics; `None` when the range holds more counts than one answer may.
pub(crate) fn stats(conn: &Connection, q: &StatsQuery) -> rusqlite::Result<Option<Stats>> {
    let width = q.interval.micros();
    let since = q.since.map_or(i64::MIN, |t| t.as_micros());
    let until = q.until.map_or(i64::MAX, |t| t.as_micros());
    let mut stmt = conn.prepare_cached(
        // With the counts retention kept of the events it deleted (per hour).
        "SELECT start, event_key, sum(n) FROM ( \
           SELECT (created_at - ((created_at % ?4) + ?4) % ?4) AS start, event_key, \
                  count(*) AS n \
           FROM events WHERE project_id = ?1 AND created_at >= ?2 AND created_at < ?3 \
           GROUP BY start, event_key \
           UNION ALL \
           SELECT (hour - ((hour % ?4) + ?4) % ?4) AS start, event_key, sum(count) AS n \
           FROM stats_rollup WHERE project_id = ?1 AND hour >= ?2 AND hour < ?3 \
           GROUP BY start, event_key) \
         GROUP BY start, event_key ORDER BY start, event_key LIMIT ?5",
    )?;
    let buckets: Vec<(i64, String, i64)> = stmt
        .query_map(
            rusqlite::params![
                q.project.get(),
                since,
                until,
                width,
                q.max_counts as i64 + 1
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
        .collect::<Result<_, _>>()?;
    if buckets.len() > q.max_counts {
        return Ok(None);
    }
    let mut stats = Stats {
        buckets,
        ..Stats::default()
    };
    let mut stmt = conn.prepare_cached("SELECT name, value FROM counters WHERE project_id = ?1")?;
    let counters = stmt.query_map([q.project.get()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for counter in counters {
        let (name, value) = counter?;
        stats.add_counter(&name, value);
    }
    Ok(Some(stats))
}
