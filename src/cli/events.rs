//! `cartwatch events`: the outbox, followed or listed, and its dead letters redelivered or
//! skipped.

use std::path::PathBuf;

use cartwatch::config::Purpose;
use cartwatch::store::Store;
use chrono::{DateTime, Utc};

use super::{EXIT_DATABASE, EXIT_REJECTED, Failure, loaded, open_existing_store};

pub async fn events(
    config_path: Option<PathBuf>,
    after: i64,
    limit: u32,
    follow: bool,
    json: bool,
) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    let database = |error| Failure::new(EXIT_DATABASE, error);
    let mut cursor = after;
    loop {
        let events = store.events_after(cursor, limit).await.map_err(database)?;
        let seqs = events.iter().map(|event| event.seq).collect();
        let states = store.delivery_states(seqs).await.map_err(database)?;
        let mut out = std::io::stdout().lock();
        for event in &events {
            let deliveries: Vec<&cartwatch::outbox::DeliveryState> =
                states.iter().filter(|(seq, _)| *seq == event.seq).map(|(_, state)| state).collect();
            let line = if json {
                cartwatch::render::event_json_with_deliveries(event, &deliveries)
            } else {
                cartwatch::render::render_event_row(event, &deliveries)
            };
            if std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes()).is_err() {
                // The reader went away (a closed pipe): nothing more to do.
                return Ok(());
            }
            cursor = event.seq;
        }
        let _ = std::io::Write::flush(&mut out);
        drop(out);
        if !follow {
            return Ok(());
        }
        if events.len() < limit as usize {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}

pub async fn dead_letters(
    config_path: Option<PathBuf>,
    endpoint: Option<String>,
    limit: u32,
    json: bool,
) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    check_endpoint(store.as_ref(), endpoint.as_deref()).await?;
    let letters = store.dead_letters(endpoint, limit).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    if letters.is_empty() && !json {
        crate::say!("no dead letters");
    }
    for letter in &letters {
        match json {
            true => {
                crate::say!("{}", cartwatch::render::event_json_with_deliveries(&letter.event, &[&letter.delivery]))
            }
            false => crate::say!("{}", cartwatch::render::render_dead_letter(letter)),
        }
    }
    Ok(())
}

pub async fn check_endpoint(store: &dyn Store, endpoint: Option<&str>) -> Result<(), Failure> {
    let Some(endpoint) = endpoint else { return Ok(()) };
    let names = store.sink_names().await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    if names.iter().any(|name| name == endpoint) {
        return Ok(());
    }
    Err(Failure::new(
        EXIT_REJECTED,
        anyhow::anyhow!("no endpoint named {endpoint:?}; known endpoints: {}", names.join(", ")),
    ))
}

/// The events `redeliver --since` replays.
pub struct Range {
    /// Written at or after this.
    pub since: DateTime<Utc>,
    /// Written before this (default: now).
    pub until: Option<DateTime<Utc>>,
    /// Of this type only.
    pub event_type: Option<String>,
}

pub async fn redeliver(
    config_path: Option<PathBuf>,
    mut event_ids: Vec<String>,
    dead: bool,
    endpoint: Option<String>,
    range: Option<Range>,
) -> Result<(), Failure> {
    if event_ids.is_empty() && !dead && range.is_none() {
        return Err(Failure::new(
            EXIT_REJECTED,
            anyhow::anyhow!("give event ids, --dead for every dead letter, or --since for a time range"),
        ));
    }
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    check_endpoint(store.as_ref(), endpoint.as_deref()).await?;
    if let Some(range) = range {
        let until = range.until.unwrap_or_else(|| Utc::now() + chrono::Duration::seconds(1));
        let found = store
            .event_ids_between(range.since, until, range.event_type)
            .await
            .map_err(|error| Failure::new(EXIT_DATABASE, error))?;
        crate::say!(
            "{} event(s) written from {} until {}",
            found.len(),
            cartwatch::time::format_ts(range.since),
            cartwatch::time::format_ts(until)
        );
        event_ids.extend(found);
    }
    let (queued, unknown) = store
        .redeliver(event_ids, dead, endpoint, Utc::now())
        .await
        .map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    crate::say!("{queued} deliver(ies) queued; a running daemon sends them within a second");
    if !unknown.is_empty() {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("unknown event id(s): {}", unknown.join(", "))));
    }
    Ok(())
}

pub async fn skip(
    config_path: Option<PathBuf>,
    event_ids: Vec<String>,
    dead: bool,
    endpoint: Option<String>,
) -> Result<(), Failure> {
    if event_ids.is_empty() && !dead {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("give event ids, or --dead for every dead letter")));
    }
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    check_endpoint(store.as_ref(), endpoint.as_deref()).await?;
    let (skipped, unknown) = store
        .skip_dead(event_ids, dead, endpoint, Utc::now())
        .await
        .map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    crate::say!("{skipped} dead letter(s) skipped; the later events of their carts go out now");
    if !unknown.is_empty() {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("unknown event id(s): {}", unknown.join(", "))));
    }
    Ok(())
}
