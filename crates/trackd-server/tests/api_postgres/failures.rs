//! A batch that fails inside PostgreSQL, on a connection that stays up (a trigger raises
//! in the events insert, mid-transaction, or in the counters upsert, the last statement
//! before the commit): each failed batch answers 503 and leaves nothing, not even its dedup
//! records, and the connection it used goes back to the pool rolled back, fit for the next
//! batch.

use crate::helpers::{ChildServer, PgDatabase};
use crate::nodes::send;

fn sql(db: &PgDatabase, statements: &str) {
    let statements = statements.to_owned();
    db.with_client(|c| {
        Box::pin(async move {
            c.batch_execute(&statements)
                .await
                .unwrap_or_else(|e| panic!("{statements}: {e}"))
        })
    })
}

/// (events stored with `data.n = n`, dedup records, the `accepted` counter).
fn stored(db: &PgDatabase, n: i64) -> (i64, i64, i64) {
    db.with_client(|c| {
        Box::pin(async move {
            let row = c
                .query_one(
                    "SELECT (SELECT count(*) FROM events WHERE (data::jsonb->>'n')::bigint = $1), \
                            (SELECT count(*) FROM dedup), \
                            (SELECT coalesce(sum(value), 0)::bigint FROM counters \
                             WHERE name = 'accepted')",
                    &[&n],
                )
                .await
                .expect("counts");
            (row.get(0), row.get(1), row.get(2))
        })
    })
}

#[tokio::test]
async fn a_batch_failing_in_the_database_answers_503_leaves_nothing_and_its_connection_works_on() {
    crate::skip_without_postgres!();
    let db = PgDatabase::create().await;
    let dir = tempfile::tempdir().expect("dir");
    let node = ChildServer::spawn(dir.path(), &[("TRACKD_DATABASE_URL", db.url.as_str())]);
    let token = node.printed("tracking token:");
    let client = reqwest::Client::new();
    assert_eq!(send(&client, &node, &token, 0).await, (200, false));
    assert_eq!(stored(&db, 0), (1, 1, 1));
    // A statement fails while `boom` names its table: the events insert (mid-transaction)
    // or the counters upsert (the batch's last statement before its COMMIT).
    sql(
        &db,
        "CREATE TABLE boom (at text); \
         CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF EXISTS (SELECT 1 FROM boom WHERE at = TG_TABLE_NAME) THEN \
             RAISE EXCEPTION 'boom on %', TG_TABLE_NAME; \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER boom BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION boom(); \
         CREATE TRIGGER boom BEFORE INSERT OR UPDATE ON counters \
           FOR EACH ROW EXECUTE FUNCTION boom();",
    );
    // Events stored (and dedup records, and accepted ones counted) so far.
    let mut total = 1;
    for (n, table) in [(1, "events"), (2, "counters")] {
        sql(&db, &format!("INSERT INTO boom VALUES ('{table}')"));
        // More failed batches than the pool has connections: each one's connection fails
        // and is handed back.
        for _ in 0..6 {
            assert_eq!(
                send(&client, &node, &token, n).await,
                (503, false),
                "{table}"
            );
        }
        assert_eq!(
            stored(&db, n as i64),
            (0, total, total),
            "{table}: nothing of a failed batch"
        );
        sql(&db, "DELETE FROM boom");
        // Its dedup record was rolled back with it: the retry is stored, not a duplicate.
        assert_eq!(
            send(&client, &node, &token, n).await,
            (200, false),
            "{table}"
        );
        total += 1;
        assert_eq!(stored(&db, n as i64), (1, total, total), "{table}");
        // Every connection works on.
        for m in 0..10 {
            let k = 100 * n + m;
            assert_eq!(
                send(&client, &node, &token, k).await,
                (200, false),
                "{table}"
            );
            total += 1;
            assert_eq!(stored(&db, k as i64), (1, total, total), "{table}");
        }
    }
    assert_eq!(total, 23);
}
