//! `cartwatch bench floor`: what the sweep's job costs on this machine when nothing but the
//! job is done, so cartwatch's own figures can be read against it in the same run.
//!
//! - The minimal client: one `reqwest` client on a current-thread runtime of its own
//!   thread, `concurrency` requests in flight, each the same POST of 10 cart ids cartwatch
//!   sends (built by the same encoder, before the clock starts), its answer decoded into
//!   borrowed, typed fields.
//! - The minimal writer: one thread with one SQLite connection (WAL, `synchronous =
//!   NORMAL`, as cartwatch's) to a table of cart id, status, order id and poll time, taking
//!   the outcomes of every request waiting for it into one transaction.
//!
//! Neither schedules, retries, logs, keeps metrics or checks anything a real partner might
//! get wrong: the floor is the physical minimum of the same requests and the same writes.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use rusqlite::params;
use serde::Deserialize;

use super::cpu_time;
use cartwatch::cart_id::CartId;
use cartwatch::provider::imaterialise::wire;

/// Cart ids per request, as cartwatch sends them.
const BATCH: usize = 10;

/// What one floor run cost.
pub(super) struct Floor {
    /// Requests answered.
    pub requests: u64,
    /// Carts whose outcome was committed.
    pub carts_written: u64,
    /// Transactions committed.
    pub commits: u64,
    /// From the first request to the last commit.
    pub wall: Duration,
    /// User + system CPU of this process over the same span.
    pub cpu: Duration,
}

impl Floor {
    /// CPU per request answered, in microseconds.
    pub fn cpu_per_request_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// One cart of an answer, as the simulator writes it; nothing is checked.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    carts: Vec<AnsweredCart<'a>>,
}

#[derive(Deserialize)]
struct AnsweredCart<'a> {
    #[serde(rename = "cartID", borrow)]
    cart_id: &'a str,
    #[serde(rename = "cartStatus", borrow)]
    status: &'a str,
    #[serde(rename = "orderID", borrow, default)]
    order_id: Option<&'a str>,
}

/// A cart's outcome as the writer applies it.
type Outcome = (String, String, Option<String>);

/// Polls `carts` once, `concurrency` requests at a time, against the Cart Status API at
/// `base_url`, and writes every outcome to a fresh database in `directory`.
///
/// Fails when the database cannot be set up or a request fails.
pub(super) fn measure(
    base_url: &str,
    api_code: &str,
    carts: &[CartId],
    concurrency: usize,
    directory: &Path,
) -> anyhow::Result<Floor> {
    let mut connection = rusqlite::Connection::open(directory.join("floor.db"))?;
    connection.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    connection.execute_batch(
        "PRAGMA synchronous = NORMAL;
         CREATE TABLE carts (cart_id TEXT PRIMARY KEY, status TEXT, order_id TEXT, polled_at INTEGER) WITHOUT ROWID;",
    )?;
    {
        let transaction = connection.transaction()?;
        let mut insert = transaction.prepare("INSERT INTO carts (cart_id) VALUES (?1)")?;
        for cart in carts {
            insert.execute([cart.as_str()])?;
        }
        drop(insert);
        transaction.commit()?;
    }
    let endpoint = format!("{}/web-api/cartstatus/statuses", base_url.trim_end_matches('/'));
    let bodies: Vec<String> = carts.chunks(BATCH).map(wire::encode_json_request).collect();
    let http = reqwest::Client::builder().build()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let (sender, receiver) = mpsc::channel::<Vec<Outcome>>();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let writer = std::thread::spawn(move || write_all(connection, &receiver));
    let requests = runtime.block_on(async {
        let answered = futures_util::stream::iter(bodies)
            .map(|body| {
                let request = http
                    .post(&endpoint)
                    .header("apiCode", api_code)
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json")
                    .body(body);
                async move {
                    let bytes = request.send().await?.error_for_status()?.bytes().await?;
                    let answer: Answer<'_> = serde_json::from_slice(&bytes)?;
                    let outcomes = answer
                        .carts
                        .iter()
                        .map(|cart| (cart.cart_id.to_owned(), cart.status.to_owned(), cart.order_id.map(str::to_owned)))
                        .collect::<Vec<Outcome>>();
                    anyhow::Ok(outcomes)
                }
            })
            .buffer_unordered(concurrency.max(1));
        futures_util::pin_mut!(answered);
        let mut requests = 0u64;
        while let Some(outcomes) = answered.next().await {
            sender.send(outcomes?).context("the floor's writer stopped")?;
            requests += 1;
        }
        drop(sender);
        anyhow::Ok(requests)
    })?;
    let (carts_written, commits) = writer.join().map_err(|_| anyhow::anyhow!("the floor's writer panicked"))??;
    Ok(Floor { requests, carts_written, commits, wall: started.elapsed(), cpu: cpu_time() - cpu_before })
}

/// Applies outcomes as they arrive, everything waiting at once in one transaction, until the
/// sender hangs up. Returns the carts written and the commits made.
fn write_all(
    mut connection: rusqlite::Connection,
    receiver: &mpsc::Receiver<Vec<Outcome>>,
) -> anyhow::Result<(u64, u64)> {
    let (mut written, mut commits) = (0u64, 0u64);
    while let Ok(first) = receiver.recv() {
        let transaction = connection.transaction()?;
        {
            let mut update = transaction
                .prepare_cached("UPDATE carts SET status = ?2, order_id = ?3, polled_at = ?4 WHERE cart_id = ?1")?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            for outcomes in std::iter::once(first).chain(receiver.try_iter()) {
                for (cart_id, status, order_id) in &outcomes {
                    written += update.execute(params![cart_id, status, order_id, now])? as u64;
                }
            }
        }
        transaction.commit()?;
        commits += 1;
    }
    Ok((written, commits))
}
