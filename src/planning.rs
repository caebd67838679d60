//! The polling plan the daemon follows, sized from what the store has recorded: the
//! transitions of the last `plan.history` give each status and age its hazard, the carts
//! tracked now give the population the budget is shared among. The daemon builds it at
//! start, every `plan.refresh` and after a reload; `cartwatch plan` and `status` build the
//! same from the same rows to explain it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::metrics::PlanFigures;
use crate::model::{CartState, Ending, StatusModel};
use crate::plan::{
    BudgetPlan, HazardCounts, Hazards, PRIOR_STRENGTH, Plan, PlanConfig, PlanMode, Population, stretches,
};
use crate::reconcile::{Context, Rules, cart_age, situation};
use crate::store::{PlanHistory, ReportStore, StoreError};
use crate::time::to_chrono;

/// A plan and what it was built from.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The plan.
    pub plan: Plan,
    /// The hazards estimated (the prior blended with the recorded history).
    pub hazards: Hazards,
    /// Changes towards an order seen in the history.
    pub changes_seen: f64,
    /// The carts tracked now, by status and age.
    pub population: Population,
    /// Budget, expected and actual requests, estimated p95.
    pub figures: PlanFigures,
}

/// How the actual request rate is measured: the sweeps of this last stretch of time.
const ACTUAL_WINDOW: Duration = Duration::from_secs(3600);

/// Builds the plan `config` asks for, for the provider `model` names, from the store's
/// history at `now`. `seats` is the provider's batch size, `requests_per_second` its limit.
///
/// Fails when the store cannot be read.
pub async fn build(
    store: &dyn ReportStore,
    config: &PlanConfig,
    rules: &Rules,
    model: Arc<dyn StatusModel>,
    seats: usize,
    requests_per_second: f64,
    now: DateTime<Utc>,
) -> Result<Planned, StoreError> {
    let provider = model.name();
    let since = now - to_chrono(config.history);
    let context = Context { now, rules: Arc::new(rules.clone()), model: Arc::clone(&model) };
    // What the carts say, gathered one cart at a time as the store hands them over.
    let evidence = Arc::new(std::sync::Mutex::new((HazardCounts::default(), Population::default())));
    let gathered = Arc::clone(&evidence);
    let visit = move |history: PlanHistory| {
        let near = |status: &str| context.model.order_is_near(status);
        let progress =
            |status: &str| context.model.order_is_near(status) || context.model.ending(status) == Ending::Ordered;
        let seconds = |instant: DateTime<Utc>| instant.timestamp_millis() as f64 / 1000.0;
        let mut evidence = gathered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cart = &history.cart;
        if cart.tracked_since >= since && !history.seen.is_empty() {
            let created = seconds(now) - cart_age(cart, &context).as_secs_f64();
            let seen: Vec<(&str, f64)> =
                history.seen.iter().map(|(status, at)| (status.as_str(), seconds(*at))).collect();
            let until = match cart.state {
                CartState::Tracking => now,
                _ => cart.finished_at.or(cart.last_polled_at).unwrap_or(now).min(now),
            };
            for stretch in stretches(created, &seen, seconds(until), near, progress) {
                evidence.0.add(&stretch);
            }
        }
        if cart.state == CartState::Tracking {
            evidence.1.add(&situation(cart, &context));
        }
    };
    store.plan_history(provider.to_owned(), since, Box::new(visit)).await?;
    let (counts, population) = std::mem::take(&mut *evidence.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let hazards = counts.estimate(&Hazards::prior(), PRIOR_STRENGTH);
    let tiers = Plan::Tiers(rules.cadence.clone());
    let tiers_would_send = tiers.expectation(&population, seats).requests_per_day;
    let (plan, budget) = match config.mode {
        PlanMode::Tiers => (tiers, 0.0),
        PlanMode::Budget => {
            let budget = config.budget(tiers_would_send, requests_per_second);
            let sized = BudgetPlan::sized(
                hazards.clone(),
                &population,
                budget,
                seats,
                (config.min_interval, config.max_interval),
                rules.cadence.checked_out_every,
            );
            (Plan::Budget(sized), budget)
        }
    };
    let expectation = plan.expectation(&population, seats);
    let sent = store.requests_since(provider.to_owned(), now - to_chrono(ACTUAL_WINDOW)).await?;
    let figures = PlanFigures {
        budget_requests_per_day: budget,
        expected_requests_per_day: expectation.requests_per_day,
        actual_requests_per_day: sent as f64 * 86_400.0 / ACTUAL_WINDOW.as_secs_f64(),
        estimated_p95_detection_seconds: expectation.p95_detection.as_secs_f64(),
    };
    Ok(Planned { plan, hazards, changes_seen: counts.events(), population, figures })
}
