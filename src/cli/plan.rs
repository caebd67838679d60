//! `cartwatch plan`: the polling plan as the daemon sizes it from this database: the budget,
//! the requests a day expected and sent, the estimated p95 detection delay, and the hazard
//! table behind it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cartwatch::config::{Config, Purpose};
use cartwatch::model::StatusModel;
use cartwatch::plan::{AGE_EDGES, BUCKETS, Situation, bucket_name};
use cartwatch::planning::Planned;
use cartwatch::provider::Provider;
use cartwatch::store::Store;
use chrono::Utc;
use serde_json::json;

use super::{EXIT_DATABASE, Failure, loaded, open_existing_store};

/// The plan for `provider` as the daemon would size it now.
pub async fn planned(store: &dyn Store, config: &Config, provider: &Arc<dyn Provider>) -> Result<Planned, Failure> {
    let settings = provider.client_settings();
    let model = Arc::clone(provider) as Arc<dyn StatusModel>;
    cartwatch::planning::build(
        store,
        &config.plan,
        &config.rules(),
        model,
        settings.batch_size,
        settings.requests_per_second,
        Utc::now(),
    )
    .await
    .map_err(|error| Failure::new(EXIT_DATABASE, error))
}

pub async fn plan(config_path: Option<PathBuf>, json: bool) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    for provider in loaded.config.providers().enabled() {
        let planned = planned(store.as_ref(), &loaded.config, &provider).await?;
        if json {
            crate::say_raw!("{}\n", plan_json(provider.as_ref(), &planned, true));
        } else {
            crate::say_raw!("{}", render_plan(provider.as_ref(), &planned));
        }
    }
    Ok(())
}

/// The start of an age bucket, as the age the plan is asked about.
fn bucket_start(index: usize) -> Duration {
    Duration::from_secs(index.checked_sub(1).map_or(0, |index| AGE_EDGES[index]))
}

/// A cart in `status` at the start of age bucket `bucket`.
fn situation_at<'a>(provider: &dyn Provider, status: Option<&'a str>, bucket: usize) -> Situation<'a> {
    let order_is_near = status.is_some_and(|status| provider.order_is_near(status));
    Situation { status, age: bucket_start(bucket), order_is_near }
}

/// Each status with carts or a hazard row: the statuses of the hazard table, then any other
/// tracked status.
fn statuses(planned: &Planned) -> Vec<Option<String>> {
    let mut statuses: Vec<Option<String>> =
        planned.hazards.rows().iter().map(|(status, _)| Some(status.clone())).collect();
    for (status, ..) in planned.population.cells() {
        let status = status.map(str::to_owned);
        if !statuses.contains(&status) {
            statuses.push(status);
        }
    }
    statuses
}

fn carts_in(planned: &Planned, status: Option<&str>, bucket: usize) -> u64 {
    planned
        .population
        .cells()
        .filter(|(cell_status, cell_bucket, ..)| *cell_status == status && *cell_bucket == bucket)
        .map(|(.., count)| count)
        .sum()
}

/// The estimated p95 detection delay, to the second, for people.
fn p95_text(planned: &Planned) -> String {
    let seconds = planned.figures.estimated_p95_detection_seconds.round() as u64;
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// One line of a provider's plan figures, for `status`.
pub fn render_figures(provider: &str, planned: &Planned) -> String {
    let figures = &planned.figures;
    let budget = match &planned.plan {
        cartwatch::plan::Plan::Budget(_) => format!("budget {:.0} requests a day", figures.budget_requests_per_day),
        _ => "the [cadence] tiers".to_owned(),
    };
    format!(
        "plan {provider}: {budget}; expected {:.0}, sent {:.0} (last hour × 24); estimated p95 detection {} (`cartwatch plan`)",
        figures.expected_requests_per_day,
        figures.actual_requests_per_day,
        p95_text(planned)
    )
}

fn render_plan(provider: &dyn Provider, planned: &Planned) -> String {
    let figures = &planned.figures;
    let mut out = String::new();
    let mode = match &planned.plan {
        cartwatch::plan::Plan::Budget(_) => "budget (square-root rule)",
        _ => "tiers ([cadence])",
    };
    let _ = writeln!(out, "{}: plan {mode}", provider.name());
    if figures.budget_requests_per_day > 0.0 {
        let _ = writeln!(out, "  budget                 {:>12.0} requests a day", figures.budget_requests_per_day);
    }
    let _ = writeln!(out, "  expected               {:>12.0} requests a day", figures.expected_requests_per_day);
    let _ = writeln!(out, "  sent (last hour × 24)  {:>12.0} requests a day", figures.actual_requests_per_day);
    let _ = writeln!(out, "  estimated p95 delay    {}", p95_text(planned));
    let _ = writeln!(
        out,
        "  carts tracked {}; changes towards an order in the history: {:.0}",
        planned.population.total(),
        planned.changes_seen
    );
    let _ = writeln!(out, "\n  {:<12} {:<11} {:>14} {:>10} {:>7}", "status", "age", "chance/hour", "every", "carts");
    for status in statuses(planned) {
        for bucket in 0..BUCKETS {
            let name = status.as_deref();
            let situation = situation_at(provider, name, bucket);
            let rate = planned.hazards.rate(name, bucket) * 3600.0;
            let carts = carts_in(planned, name, bucket);
            let _ = writeln!(
                out,
                "  {:<12} {:<11} {:>14.5} {:>10} {:>7}",
                name.unwrap_or("(none)"),
                bucket_name(bucket),
                rate,
                humantime::format_duration(planned.plan.interval(&situation)).to_string(),
                carts
            );
        }
    }
    out
}

/// The plan as JSON: its figures, and with `hazards` the hazard table.
pub fn plan_json(provider: &dyn Provider, planned: &Planned, with_hazards: bool) -> serde_json::Value {
    let figures = &planned.figures;
    let mut hazards = Vec::new();
    for status in statuses(planned).into_iter().filter(|_| with_hazards) {
        for bucket in 0..BUCKETS {
            let name = status.as_deref();
            let situation = situation_at(provider, name, bucket);
            hazards.push(json!({
                "status": name,
                "age": bucket_name(bucket),
                "ageFromSeconds": bucket_start(bucket).as_secs(),
                "chancePerHour": planned.hazards.rate(name, bucket) * 3600.0,
                "intervalSeconds": planned.plan.interval(&situation).as_secs_f64(),
                "carts": carts_in(planned, name, bucket),
            }));
        }
    }
    json!({
        "provider": provider.name(),
        "mode": match &planned.plan { cartwatch::plan::Plan::Budget(_) => "budget", _ => "tiers" },
        "budgetRequestsPerDay": figures.budget_requests_per_day.round(),
        "expectedRequestsPerDay": figures.expected_requests_per_day.round(),
        "actualRequestsPerDay": figures.actual_requests_per_day.round(),
        "estimatedP95DetectionSeconds": figures.estimated_p95_detection_seconds.round(),
        "cartsTracked": planned.population.total(),
        "changesSeen": planned.changes_seen,
        "hazards": with_hazards.then_some(hazards),
    })
}
