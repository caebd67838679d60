//! `cartwatch track` and `cartwatch untrack`: registering carts, by argument or from a file,
//! and ending their tracking.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cartwatch::config::Purpose;
use cartwatch::model::TrackRequest;
use cartwatch::provider::Registry;
use cartwatch::store::{TrackOutcome, UntrackOutcome};
use chrono::Utc;

use super::{EXIT_DATABASE, EXIT_REJECTED, EXIT_USAGE, Failure, loaded, open_existing_store, open_store};

/// Reads cart ids (and optional references) from arguments and an optional file; every
/// malformed id is reported, with its line for files.
pub fn collect_track_requests(
    providers: &Registry,
    provider: &str,
    account: &str,
    cart_ids: &[String],
    reference: Option<&str>,
    lines: Option<Vec<(usize, String)>>,
) -> Result<Vec<TrackRequest>, Vec<String>> {
    let mut requests = Vec::new();
    let mut problems = Vec::new();
    let request = |text: &str, reference: Option<&str>| {
        providers.track_request(provider, text, Some(account), reference.map(str::to_owned))
    };
    for text in cart_ids {
        match request(text, reference) {
            Ok(request) => requests.push(request),
            Err(error) => problems.push(error),
        }
    }
    for (number, line) in lines.unwrap_or_default() {
        // A comment is a line that starts with `#`; anywhere else `#` is text (a reference
        // "order #12" stays whole, and an id followed by a note is refused, never cut).
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, own_reference) = match line.split_once([',', '\t']) {
            Some((id, own)) => (id.trim(), Some(own.trim()).filter(|text| !text.is_empty())),
            None => (line, None),
        };
        match request(id, own_reference.or(reference)) {
            Ok(request) => requests.push(request),
            Err(error) => problems.push(format!("line {number}: {error}")),
        }
    }
    if problems.is_empty() { Ok(requests) } else { Err(problems) }
}

pub fn read_lines(file: &Path) -> anyhow::Result<Vec<(usize, String)>> {
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("while opening {}", file.display()))?,
        ))
    };
    reader
        .lines()
        .enumerate()
        .map(|(index, line)| Ok((index + 1, line.with_context(|| format!("while reading {}", file.display()))?)))
        .collect()
}

pub async fn track(
    config_path: Option<PathBuf>,
    cart_ids: Vec<String>,
    provider: String,
    domain: Option<String>,
    reference: Option<String>,
    file: Option<PathBuf>,
) -> Result<(), Failure> {
    if cart_ids.is_empty() && file.is_none() {
        return Err(Failure::new(
            EXIT_REJECTED,
            anyhow::anyhow!("give cart ids as arguments or --file FILE (use - for standard input)"),
        ));
    }
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let providers = loaded.config.providers();
    let rejected = |message: String| Failure::new(EXIT_REJECTED, anyhow::anyhow!(message));
    let found = providers.get(&provider).ok_or_else(|| {
        let message = format!("unknown provider {provider:?}; known providers: {}", providers.names());
        Failure::new(EXIT_USAGE, anyhow::anyhow!(message))
    })?;
    let account = found.account(domain.as_deref()).map_err(rejected)?;
    let lines = file.as_deref().map(read_lines).transpose()?;
    let requests = collect_track_requests(&providers, found.name(), &account, &cart_ids, reference.as_deref(), lines)
        .map_err(|problems| rejected(format!("nothing was registered:\n  {}", problems.join("\n  "))))?;
    let store = open_store(&loaded.config).await?;
    let now = Utc::now();
    let outcomes = store.track(requests, now, now).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    let mut added = 0;
    for (cart_id, outcome) in &outcomes {
        match outcome {
            TrackOutcome::Added => added += 1,
            TrackOutcome::AlreadyTracked { replaced: None } => crate::say!("{cart_id}: already tracked"),
            TrackOutcome::AlreadyTracked { replaced: Some(previous) } => crate::say!(
                "{cart_id}: already tracked; its reference {:?} is replaced by the one given",
                cartwatch::render::printable(previous)
            ),
            TrackOutcome::Resumed(state) => {
                crate::say!("{cart_id}: tracking resumed (it was {state}); it is polled again from now")
            }
            TrackOutcome::Finished(state) => {
                crate::say!("{cart_id}: not tracked again, its state is {state}")
            }
        }
    }
    crate::say!("{added} cart(s) added, {} given", outcomes.len());
    Ok(())
}

pub async fn untrack(config_path: Option<PathBuf>, cart_ids: Vec<String>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let providers = loaded.config.providers();
    let parsed: Result<Vec<String>, _> = cart_ids.iter().map(|text| providers.public_id(text)).collect();
    let parsed =
        parsed.map_err(|error| Failure::new(EXIT_REJECTED, anyhow::anyhow!("{error}; nothing was changed")))?;
    let store = open_existing_store(&loaded.config).await?;
    let outcomes = store.untrack(parsed, Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    let mut unknown = 0;
    for (cart_id, outcome) in outcomes {
        match outcome {
            UntrackOutcome::Untracked => crate::say!("{cart_id}: untracked"),
            UntrackOutcome::NotTracking(state) => {
                crate::say!("{cart_id}: was not being tracked (state {state})")
            }
            UntrackOutcome::Unknown => {
                unknown += 1;
                crate::say!("{cart_id}: unknown cart");
            }
        }
    }
    if unknown > 0 {
        return Err(Failure::new(EXIT_REJECTED, anyhow::anyhow!("{unknown} cart id(s) are not in the database")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers() -> Registry {
        cartwatch::config::Config::default().providers()
    }

    #[test]
    fn track_requests_from_arguments_and_lines() {
        let lines = vec![
            (1, "# carts from the shop".to_owned()),
            (2, "BEE2C269-1DBD-4F67-B9F1-2EA2D3B4917B,order-9".to_owned()),
            (3, "   ".to_owned()),
            (4, "  # an indented comment".to_owned()),
            (5, "59dcca18-05e7-4f5c-8b4e-89e987ea1e51,order #12".to_owned()),
            (6, "6b8a1c2e-0f3d-4e5a-9b7c-1d2e3f4a5b6c".to_owned()),
        ];
        let arguments = ["921A2046-66A5-4C5F-B9A6-4BC646FA5E5A".to_owned()];
        let requests =
            collect_track_requests(&providers(), "imaterialise", "", &arguments, Some("batch-1"), Some(lines)).unwrap();
        assert_eq!(requests.len(), 4);
        assert_eq!(requests[0].cart_id.as_str(), "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a");
        assert_eq!(requests[1].reference.as_deref(), Some("order-9"));
        assert_eq!(requests[2].reference.as_deref(), Some("order #12"), "a # inside a reference is kept");
        assert_eq!(requests[3].reference.as_deref(), Some("batch-1"));
    }

    #[test]
    fn a_note_after_an_id_is_refused_rather_than_cut() {
        let lines = Some(vec![(3, "59dcca18-05e7-4f5c-8b4e-89e987ea1e51  # from the shop".to_owned())]);
        let problems = collect_track_requests(&providers(), "imaterialise", "", &[], None, lines).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("line 3:"), "{problems:?}");
    }

    #[test]
    fn every_malformed_id_is_reported_with_its_line() {
        let lines = Some(vec![(7, "12345".to_owned())]);
        let problems =
            collect_track_requests(&providers(), "imaterialise", "", &["nope".to_owned()], None, lines).unwrap_err();
        assert_eq!(problems.len(), 2);
        assert!(problems[0].contains("\"nope\""));
        assert!(problems[1].starts_with("line 7: malformed cart id \"12345\""));
    }

    #[test]
    fn titelive_tokens_keep_their_case_and_carry_the_domain() {
        let token = "AbCdEfGhIjKlMnOpQrStUvWxYz".to_owned();
        let requests =
            collect_track_requests(&providers(), "titelive", "00000", std::slice::from_ref(&token), None, None)
                .unwrap();
        assert_eq!(requests[0].session_token.as_deref(), Some(token.as_str()), "the token is kept as typed");
        let derived = cartwatch::provider::titelive::derived_id(&token);
        assert_eq!((requests[0].cart_id.as_str(), requests[0].account.as_str()), (derived.as_str(), "00000"));
        let problems =
            collect_track_requests(&providers(), "titelive", "00000", &["short".to_owned()], None, None).unwrap_err();
        assert!(problems[0].contains("malformed Titelive session token"));
    }
}
