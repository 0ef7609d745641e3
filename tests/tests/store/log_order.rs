//! Following a log by its cursor while several replicas append to it: the follower must
//! see every line exactly once, in order. On PostgreSQL a line's `seq` is drawn when it
//! is inserted but lines commit in another order, so a follower that read up to `seq`
//! 10 could skip a 9 committing after that; the store must not let that happen.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

store_suite!(a_followed_log_misses_no_line_of_concurrent_appenders);

/// Concurrent appenders.
const WRITERS: usize = 8;
/// Lines each appender writes.
const LINES: usize = 200;
/// Stores on the same database, standing for server replicas.
const REPLICAS: usize = 3;

async fn a_followed_log_misses_no_line_of_concurrent_appenders(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-1")]).await;
    if store.backend() == Backend::Postgres {
        delay_log_commits(&f.url).await;
    }
    let mut replicas = vec![store.clone()];
    for _ in 1..REPLICAS {
        replicas.push(connect(&f.url).await);
    }

    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = replicas[writer % REPLICAS].clone();
            tokio::spawn(async move {
                for line in 0..LINES {
                    store
                        .append_log("dep-1", "t1", None, NOW, &format!("w{writer}-{line:03}"))
                        .await
                        .ok_or_panic("appending a line");
                }
            })
        })
        .collect();
    let follower = {
        let (store, writing) = (replicas[REPLICAS - 1].clone(), writing.clone());
        tokio::spawn(async move { follow(&store, &writing).await })
    };
    for writer in writers {
        writer.await.unwrap_or_else(|e| panic!("writer: {e}"));
    }
    writing.store(false, Ordering::SeqCst);
    let seen = follower.await.unwrap_or_else(|e| panic!("follower: {e}"));

    // Every line once, each writer's lines in the order it wrote them.
    let mut unique = BTreeSet::new();
    let duplicates: Vec<_> = seen.iter().filter(|m| !unique.insert(*m)).collect();
    assert!(duplicates.is_empty(), "lines seen twice: {duplicates:?}");
    let expected: BTreeSet<String> = (0..WRITERS)
        .flat_map(|w| (0..LINES).map(move |l| format!("w{w}-{l:03}")))
        .collect();
    let unseen: Vec<_> = expected
        .difference(&unique.into_iter().cloned().collect())
        .cloned()
        .collect();
    assert!(
        unseen.is_empty(),
        "the follower missed {} of {} lines (committed behind its cursor), e.g. {:?}",
        unseen.len(),
        expected.len(),
        &unseen[..unseen.len().min(5)]
    );
    for writer in 0..WRITERS {
        let prefix = format!("w{writer}-");
        let order: Vec<_> = seen.iter().filter(|m| m.starts_with(&prefix)).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "writer {writer} out of order"
        );
    }
    // And a reader from the start sees the same sequence as the follower did.
    let all: Vec<String> = store
        .logs_after("dep-1", 0, 10_000)
        .await
        .ok_or_panic("reading the whole log")
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(all, seen, "the follower's order is the log's order");
}

/// Reads the log by its cursor until the writers are done and a last read finds nothing
/// new; returns the messages in the order read, checking that `seq` only grows.
async fn follow(store: &Store, writing: &AtomicBool) -> Vec<String> {
    let mut cursor = 0;
    let mut seen = Vec::new();
    loop {
        let done = !writing.load(Ordering::SeqCst);
        let lines = store
            .logs_after("dep-1", cursor, 500)
            .await
            .ok_or_panic("following the log");
        for line in &lines {
            assert!(line.seq > cursor, "seq {} after cursor {cursor}", line.seq);
            cursor = line.seq;
            seen.push(line.message.clone());
        }
        if done && lines.is_empty() {
            return seen;
        }
        if lines.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// Makes every log insert on this PostgreSQL database sleep 0–3 ms before its
/// transaction commits (a trigger, so no product code changes for the test): lines
/// drawn in one order then commit in another, as under load across replicas.
async fn delay_log_commits(url: &str) {
    let mut conn = AnyConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    for statement in [
        "CREATE FUNCTION stella_test_log_delay() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(random() * 0.003); RETURN NULL; END $$",
        "CREATE TRIGGER stella_test_log_delay AFTER INSERT ON logs \
         FOR EACH ROW EXECUTE FUNCTION stella_test_log_delay()",
    ] {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("installing the delay trigger: {e}"));
    }
    conn.close().await.ok();
}
