//! The figures every fault run prints and asserts: rows published, answered,
//! duplicates dropped, dead-lettered, read from `score-batch`'s summary line, its
//! output file and the dead-letter queue.

use std::path::Path;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::OutRow;

/// The counters of `score-batch`'s last line (`score-batch: N rows in J jobs: ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows in the input, all published.
    pub rows: u64,
    /// Jobs they were split into.
    pub jobs: u64,
    /// Rows scored.
    pub scored: u64,
    /// Rows answered with an error.
    pub failed: u64,
    /// Results dropped because their job was already answered.
    pub duplicates: u64,
    /// Jobs published again (result overdue).
    pub republished: u64,
    /// Connections re-made.
    pub reconnects: u64,
}

/// Finds and parses `score-batch`'s summary line in its stderr.
pub fn parse_summary(stderr: &str) -> Option<Summary> {
    let line = stderr
        .lines()
        .find(|l| l.contains(" rows in ") && l.contains(" jobs: "))?;
    // Every figure follows a fixed word; take the number next to it.
    let num_before = |word: &str| -> Option<u64> {
        let i = line.find(word)?;
        line[..i]
            .split_whitespace()
            .last()?
            .trim_matches(',')
            .parse()
            .ok()
    };
    let num_after = |word: &str| -> Option<u64> {
        let i = line.find(word)? + word.len();
        line[i..]
            .split_whitespace()
            .next()?
            .trim_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    };
    Some(Summary {
        rows: num_before(" rows in ")?,
        jobs: num_before(" jobs: ")?,
        scored: num_before(" scored")?,
        failed: num_before(" failed")?,
        duplicates: num_after("duplicates dropped")?,
        republished: num_after("republished")?,
        reconnects: num_after("reconnects")?,
    })
}

/// Messages waiting in `queue` (passive declare; 0 when it does not exist).
pub async fn queue_len(conn: &lapin::Connection, queue: &str) -> u32 {
    let Ok(ch) = conn.create_channel().await else {
        return 0;
    };
    let opts = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let n = match ch
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await
    {
        Ok(q) => q.message_count(),
        Err(_) => 0,
    };
    let _ = ch.close(200, "".into()).await;
    n
}

/// True when `SURGE_FAULTS=full` (`make test-faults`): fault tests then run at full
/// size (100,000 rows, 10,000 hostile messages); otherwise at the reduced size that
/// `make test` and CI run.
pub fn full_suite() -> bool {
    std::env::var("SURGE_FAULTS").as_deref() == Ok("full")
}

/// `full` under [`full_suite`], else `reduced`.
pub fn size(full: usize, reduced: usize) -> usize {
    if full_suite() {
        full
    } else {
        reduced
    }
}

/// Takes `want` messages from `queue` (acking each), or panics after `within`.
pub async fn take(
    conn: &lapin::Connection,
    queue: &str,
    want: usize,
    within: std::time::Duration,
) -> Vec<lapin::message::Delivery> {
    use futures_util::StreamExt;
    let ch = conn.create_channel().await.expect("opening a channel");
    let tag = format!("take-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = crate::consume(&ch, queue, &tag).await;
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::with_capacity(want);
    while got.len() < want {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let d = match next {
            Ok(Some(Ok(d))) => d,
            Ok(other) => panic!("consumer of {queue} ended: {other:?}"),
            Err(_) => panic!(
                "only {} of {want} messages in {queue} within {within:?}",
                got.len()
            ),
        };
        d.acker
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .expect("acking a message");
        got.push(d);
    }
    // A quorum queue may apply a channel's close before the acks sent just ahead of
    // it, and return those messages: give the acks time to land.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let _ = ch.close(200, "".into()).await;
    got
}

/// A string header of a message (`None` when absent or not a string).
pub fn header(d: &lapin::message::Delivery, key: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(key)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The `reason` of the first `x-death` entry the broker added to a dead letter
/// (`expired`, `delivery_limit`, `rejected`, `maxlen`).
pub fn x_death_reason(d: &lapin::message::Delivery) -> Option<String> {
    use lapin::types::AMQPValue;
    let AMQPValue::FieldArray(deaths) = d.properties.headers().as_ref()?.inner().get("x-death")?
    else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Takes the `n` messages of a dead-letter queue and counts them by reason: the
/// worker's `x-surge-error-kind`, else the broker's `x-death` reason.
pub async fn dead_reasons(
    conn: &lapin::Connection,
    queue: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    for d in take(conn, queue, n, std::time::Duration::from_secs(10)).await {
        let why = header(&d, "x-surge-error-kind")
            .or_else(|| x_death_reason(&d).map(|r| format!("x-death {r}")))
            .unwrap_or_else(|| "unknown".into());
        *by.entry(why).or_default() += 1;
    }
    by
}

/// Resident memory of a process, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// A KiB field of `/proc/<pid>/status` (`VmRSS`, `VmHWM` the peak resident set, ...);
/// `None` once the process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Rows that appear more than once in a score-batch output, and rows missing from it.
pub fn duplicated_and_missing(out: &[OutRow], expected_rows: usize) -> (usize, usize) {
    let mut seen = vec![0u32; expected_rows];
    let mut dup = 0;
    for r in out {
        if let Some(c) = r.row_id.parse::<usize>().ok().and_then(|i| seen.get_mut(i)) {
            *c += 1;
            if *c > 1 {
                dup += 1;
            }
        }
    }
    let missing = seen.iter().filter(|&&c| c == 0).count();
    (dup, missing)
}

/// Prints the standard figures line of a fault run and asserts the guarantees:
/// every published row answered (0 lost) and none twice in the output.
pub fn report(test: &str, s: &Summary, out: &[OutRow], dead_lettered: u32, output: &Path) {
    let (dup_rows, missing) = duplicated_and_missing(out, s.rows as usize);
    println!(
        "FIGURES {test}: rows published {}, answered {} ({} scored, {} failed), duplicate results dropped {}, \
         jobs republished {}, reconnects {}, dead-lettered {dead_lettered}, lost {missing}, duplicated in output {dup_rows}",
        s.rows,
        s.scored + s.failed,
        s.scored,
        s.failed,
        s.duplicates,
        s.republished,
        s.reconnects
    );
    assert_eq!(missing, 0, "{test}: rows lost ({})", output.display());
    assert_eq!(
        dup_rows,
        0,
        "{test}: rows duplicated in {}",
        output.display()
    );
    assert_eq!(s.scored + s.failed, s.rows, "{test}: answered != published");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let line = "x\nscore-batch: 20000 rows in 1000 jobs: 19990 scored, 10 failed; 12.3s, 1626 rows/s; duplicates dropped 7, republished 2, reconnects 1\n";
        assert_eq!(
            parse_summary(line),
            Some(Summary {
                rows: 20000,
                jobs: 1000,
                scored: 19990,
                failed: 10,
                duplicates: 7,
                republished: 2,
                reconnects: 1
            })
        );
        assert_eq!(parse_summary("nothing"), None);
    }
}
