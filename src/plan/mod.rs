//! The polling plan: how long until each cart is polled again. Pure: no clock, no I/O.
//!
//! Two plans. [`Plan::Tiers`] is the fixed `[cadence]` table of age tiers. [`Plan::Budget`]
//! spends a request budget where it finds checkouts and orders soonest: each cart is polled
//! at a rate proportional to the square root of its *hazard*, the chance per unit time that
//! it moves towards an order (checks out, or orders) given its status and age. For changes
//! arriving at rates `h_i` and polls at rates `r_i` with `Σ r_i` fixed, the expected
//! detection delay `Σ h_i / (2 r_i)` is least at `r_i ∝ sqrt(h_i)` (the square-root rule of
//! web-crawler refresh scheduling). Hazards come from the shop's own recorded transitions
//! ([`HazardCounts`]), smoothed towards a prior from the documented workload model until
//! enough history exists.
//!
//! The daemon and the evaluator ([`evaluate`]) call the same functions: [`Plan::interval`]
//! for every poll, [`free_seats`] to fill the last request of a sweep.

pub mod evaluate;
pub mod workload;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::{DAY, MINUTE, Problems, SECOND};
use crate::policy::{CadenceConfig, poll_interval};

/// Upper edges of the age buckets, in seconds; the last bucket is everything older.
pub const AGE_EDGES: [u64; 14] =
    [60, 120, 300, 600, 1200, 1800, 3600, 7200, 14_400, 28_800, 86_400, 172_800, 345_600, 604_800];

/// How many age buckets there are.
pub const BUCKETS: usize = AGE_EDGES.len() + 1;

/// The bucket of an age.
pub fn bucket(age: Duration) -> usize {
    let seconds = age.as_secs();
    AGE_EDGES.iter().position(|edge| seconds < *edge).unwrap_or(AGE_EDGES.len())
}

/// A human name for a bucket: `10m–20m`.
pub fn bucket_name(index: usize) -> String {
    let label = |seconds: u64| humantime::format_duration(Duration::from_secs(seconds)).to_string();
    match index {
        0 => format!("<{}", label(AGE_EDGES[0])),
        index if index >= AGE_EDGES.len() => format!("≥{}", label(AGE_EDGES[AGE_EDGES.len() - 1])),
        index => format!("{}–{}", label(AGE_EDGES[index - 1]), label(AGE_EDGES[index])),
    }
}

/// Seats in one request of the partner API.
pub const SEATS: usize = 10;

/// How many more carts a request of `due` carts (and its predecessors) could take: the free
/// seats of the last request, filled with carts due soon.
pub fn free_seats(due: usize, seats: usize) -> usize {
    let seats = seats.max(1);
    (seats - due % seats) % seats
}

/// How far ahead a sweep looks for carts to fill free seats with.
pub const FILL_HORIZON: Duration = Duration::from_secs(3600);

/// What the plan needs to know about a cart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Situation<'a> {
    /// The last status seen, if any.
    pub status: Option<&'a str>,
    /// Its age: since it entered its status when an order is near, since it was created
    /// otherwise.
    pub age: Duration,
    /// Whether an order is near (CheckedOut): then it is kept close whatever the plan.
    pub order_is_near: bool,
}

/// Each status's hazard per age bucket, per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Hazards {
    by_status: Vec<(String, [f64; BUCKETS])>,
    /// For a status never seen (or none yet).
    fallback: [f64; BUCKETS],
}

impl Hazards {
    /// The hazards of the documented workload ([`workload::Model::default`]): the prior
    /// until the shop's own history says otherwise.
    pub fn prior() -> Hazards {
        workload::Model::default().hazards()
    }

    /// Hazards from explicit rows.
    pub fn new(by_status: Vec<(String, [f64; BUCKETS])>, fallback: [f64; BUCKETS]) -> Hazards {
        Hazards { by_status, fallback }
    }

    /// The hazard of a cart in `status` in age bucket `bucket`, per second.
    pub fn rate(&self, status: Option<&str>, bucket: usize) -> f64 {
        let row = status
            .and_then(|status| self.by_status.iter().find(|(name, _)| name == status))
            .map_or(&self.fallback, |(_, row)| row);
        row[bucket.min(BUCKETS - 1)]
    }

    /// The statuses with a row of their own, and the rows.
    pub fn rows(&self) -> &[(String, [f64; BUCKETS])] {
        &self.by_status
    }
}

/// Evidence for hazards: per status and age bucket, the changes towards an order seen and
/// the time carts spent there (seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HazardCounts {
    cells: BTreeMap<String, [(f64, f64); BUCKETS]>,
}

/// A stretch of a cart's history in one status.
#[derive(Debug, Clone, PartialEq)]
pub struct Stretch<'a> {
    /// The status seen.
    pub status: &'a str,
    /// Its age (on the status's clock: see [`Situation::age`]) when the stretch began.
    pub age_at_start: Duration,
    /// How long it lasted (until the next status was seen, or until now).
    pub length: Duration,
    /// Whether it ended with a change towards an order.
    pub progressed: bool,
}

impl HazardCounts {
    /// Adds one stretch of a cart's history.
    pub fn add(&mut self, stretch: &Stretch<'_>) {
        if !self.cells.contains_key(stretch.status) {
            self.cells.insert(stretch.status.to_owned(), [(0.0, 0.0); BUCKETS]);
        }
        let Some(cells) = self.cells.get_mut(stretch.status) else { return };
        let mut age = stretch.age_at_start.as_secs_f64();
        let end = age + stretch.length.as_secs_f64();
        while age < end {
            let index = bucket(Duration::from_secs_f64(age));
            let upper = AGE_EDGES.get(index).map_or(f64::INFINITY, |edge| *edge as f64);
            let until = upper.min(end);
            cells[index].1 += until - age;
            if until >= end && stretch.progressed {
                cells[index].0 += 1.0;
            }
            age = until;
        }
        if stretch.length.is_zero() && stretch.progressed {
            cells[bucket(stretch.age_at_start)].0 += 1.0;
        }
    }

    /// Changes towards an order counted so far.
    pub fn events(&self) -> f64 {
        self.cells.values().flat_map(|row| row.iter().map(|(events, _)| events)).sum()
    }

    /// The hazards these counts show, each cell pulled towards `prior` as if `strength` of
    /// exposure at the prior's rate had been seen too: a cell with little evidence keeps
    /// close to the prior, one with much follows its own.
    pub fn estimate(&self, prior: &Hazards, strength: Duration) -> Hazards {
        let strength = strength.as_secs_f64();
        let blend = |events: f64, exposure: f64, prior_rate: f64| {
            (events + prior_rate * strength) / (exposure + strength).max(f64::MIN_POSITIVE)
        };
        let mut rows: Vec<(String, [f64; BUCKETS])> = prior.by_status.clone();
        for (status, cells) in &self.cells {
            let prior_row = rows.iter().find(|(name, _)| name == status).map_or(prior.fallback, |(_, row)| *row);
            let mut row = [0.0; BUCKETS];
            for (index, (events, exposure)) in cells.iter().enumerate() {
                row[index] = blend(*events, *exposure, prior_row[index]);
            }
            match rows.iter_mut().find(|(name, _)| name == status) {
                Some((_, existing)) => *existing = row,
                None => rows.push((status.clone(), row)),
            }
        }
        Hazards { by_status: rows, fallback: prior.fallback }
    }
}

/// The stretches of a cart's observed history: each status seen (`seen`: status and when it
/// was first seen, in seconds on any clock), from then until the next was seen, or until
/// `until`. `created` is when the cart was created on the same clock; `near` says which
/// statuses count age from their own start (an order is near), `progress` which changes
/// count as progress towards an order.
pub fn stretches<'a, 's>(
    created: f64,
    seen: &'s [(&'a str, f64)],
    until: f64,
    near: impl Fn(&str) -> bool + 's,
    progress: impl Fn(&str) -> bool + 's,
) -> impl Iterator<Item = Stretch<'a>> + 's {
    seen.iter().enumerate().map(move |(index, (status, since))| {
        let (end, progressed) = match seen.get(index + 1) {
            Some((next, at)) => (*at, progress(next)),
            None => (until, false),
        };
        let start = if near(status) { *since } else { created };
        Stretch {
            status,
            age_at_start: Duration::from_secs_f64((since - start).max(0.0)),
            length: Duration::from_secs_f64((end - since).max(0.0)),
            progressed,
        }
    })
}

/// How many tracked carts are in each status and age bucket, and whether an order is near.
/// Counting a cart allocates nothing (the replay counts every cart at every refresh).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Population {
    by_status: BTreeMap<String, [[u64; 2]; BUCKETS]>,
    unseen: [[u64; 2]; BUCKETS],
}

impl Population {
    /// Counts one tracked cart.
    pub fn add(&mut self, situation: &Situation<'_>) {
        let row = match situation.status {
            None => &mut self.unseen,
            Some(status) => {
                if !self.by_status.contains_key(status) {
                    self.by_status.insert(status.to_owned(), [[0; 2]; BUCKETS]);
                }
                let Some(row) = self.by_status.get_mut(status) else { return };
                row
            }
        };
        row[bucket(situation.age)][usize::from(situation.order_is_near)] += 1;
    }

    /// The carts counted.
    pub fn total(&self) -> u64 {
        self.cells().map(|(.., count)| count).sum()
    }

    /// Every cell with carts: status, age bucket, whether an order is near, carts.
    pub fn cells(&self) -> impl Iterator<Item = (Option<&str>, usize, bool, u64)> {
        std::iter::once((None, &self.unseen))
            .chain(self.by_status.iter().map(|(status, row)| (Some(status.as_str()), row)))
            .flat_map(|(status, row)| {
                row.iter().enumerate().flat_map(move |(bucket, counts)| {
                    [(status, bucket, false, counts[0]), (status, bucket, true, counts[1])]
                })
            })
            .filter(|(.., count)| *count > 0)
    }
}

/// `[plan]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// `budget` (the square-root rule within a request budget) or `tiers` (the `[cadence]`
    /// table).
    pub mode: PlanMode,
    /// Requests per day to spend, per provider; 0 for what the `[cadence]` tiers would send
    /// for the carts tracked now (at most half of the rate limit).
    pub requests_per_day: u64,
    /// How often the hazards are estimated again from the recorded transitions.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// How far back the estimate looks.
    #[serde(with = "humantime_serde")]
    pub history: Duration,
    /// The shortest interval between two polls of a cart.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// The longest.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
}

/// Which plan the daemon follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanMode {
    /// The square-root rule within a budget.
    Budget,
    /// The `[cadence]` age tiers.
    Tiers,
}

impl PlanConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut Problems) {
        problems.number("plan.requests_per_day", self.requests_per_day, 0..=100_000_000);
        problems.duration("plan.refresh", self.refresh, MINUTE, DAY);
        problems.duration("plan.history", self.history, DAY, 90 * DAY);
        problems.duration("plan.min_interval", self.min_interval, SECOND, DAY);
        problems.duration("plan.max_interval", self.max_interval, self.min_interval.max(SECOND), 30 * DAY);
    }

    /// The requests per day to spend: the configured number, or what the tiers would send
    /// (`tiers_would_send`), at most half of what `requests_per_second` allows (0: no limit).
    pub fn budget(&self, tiers_would_send: f64, requests_per_second: f64) -> f64 {
        if self.requests_per_day > 0 {
            return self.requests_per_day as f64;
        }
        let ceiling = if requests_per_second > 0.0 { requests_per_second * 86_400.0 / 2.0 } else { f64::MAX };
        tiers_would_send.min(ceiling).max(1.0)
    }
}

/// How much the prior weighs against the shop's own history, in each status and age bucket:
/// as much as this much time of carts observed there.
pub const PRIOR_STRENGTH: Duration = Duration::from_secs(6 * 3600);

/// The square-root plan's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetPlan {
    /// The hazards.
    pub hazards: Hazards,
    /// Polls per second per unit of `sqrt(hazard)`.
    pub scale: f64,
    /// Shortest interval.
    pub min_interval: Duration,
    /// Longest interval.
    pub max_interval: Duration,
    /// The longest interval while an order is near.
    pub near_order_every: Duration,
    /// The requests per day it was sized for.
    pub requests_per_day: f64,
}

/// A polling plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The fixed age tiers of `[cadence]`.
    Tiers(CadenceConfig),
    /// The square-root rule within a budget.
    Budget(BudgetPlan),
    /// Every cart every `interval` (for comparisons).
    Fixed(Duration),
}

/// How long after a cart's checkout the budget plan keeps it within `near_order_every`
/// whatever its hazard says; after that the hazard alone decides (a cart checked out for
/// days is not about to order).
pub const NEAR_ORDER_WINDOW: Duration = Duration::from_secs(3600);

impl BudgetPlan {
    fn interval_at(&self, rate: f64, order_is_near: bool) -> Duration {
        let per_second = self.scale * rate.max(0.0).sqrt();
        let interval = if per_second > 0.0 {
            Duration::try_from_secs_f64(1.0 / per_second).unwrap_or(self.max_interval)
        } else {
            self.max_interval
        };
        let ceiling = if order_is_near { self.near_order_every.min(self.max_interval) } else { self.max_interval };
        interval.clamp(self.min_interval, ceiling.max(self.min_interval))
    }

    /// A plan that spends `requests_per_day` on `population`, `seats` carts a request: the
    /// scale found by bisection, since the interval bounds make the spending non-linear in it.
    pub fn sized(
        hazards: Hazards,
        population: &Population,
        requests_per_day: f64,
        seats: usize,
        bounds: (Duration, Duration),
        near_order_every: Duration,
    ) -> BudgetPlan {
        let mut plan = BudgetPlan {
            hazards,
            scale: 1.0,
            min_interval: bounds.0,
            max_interval: bounds.1,
            near_order_every,
            requests_per_day,
        };
        let target = requests_per_day * seats as f64 / 86_400.0;
        let (mut low, mut high) = (1e-9_f64, 1e9_f64);
        for _ in 0..200 {
            let middle = (low * high).sqrt();
            plan.scale = middle;
            if plan.polls_per_second(population) > target {
                high = middle;
            } else {
                low = middle;
            }
        }
        plan.scale = low;
        plan
    }

    /// The polls per second this plan spends on `population`.
    pub fn polls_per_second(&self, population: &Population) -> f64 {
        population
            .cells()
            .map(|(status, bucket, near, count)| {
                let near = near && bucket < self::bucket(NEAR_ORDER_WINDOW);
                count as f64 / self.interval_at(self.hazards.rate(status, bucket), near).as_secs_f64()
            })
            .sum()
    }
}

impl Plan {
    /// How long until a cart in `situation` is polled again (before jitter).
    pub fn interval(&self, situation: &Situation<'_>) -> Duration {
        match self {
            Plan::Tiers(cadence) => poll_interval(cadence, situation.age, situation.order_is_near),
            Plan::Fixed(interval) => *interval,
            Plan::Budget(plan) => {
                let near = situation.order_is_near && situation.age < NEAR_ORDER_WINDOW;
                plan.interval_at(plan.hazards.rate(situation.status, bucket(situation.age)), near)
            }
        }
    }

    /// Why a cart in `situation` gets the interval it gets, for people.
    pub fn explain(&self, situation: &Situation<'_>) -> String {
        let interval = humantime::format_duration(self.interval(situation));
        let status = situation.status.unwrap_or("(not seen yet)");
        match self {
            Plan::Tiers(_) if situation.order_is_near => {
                format!("every {interval}: {status}, an order is near (cadence.checked_out_every)")
            }
            Plan::Tiers(_) => format!("every {interval}: the cadence tier of its age"),
            Plan::Fixed(_) => format!("every {interval}"),
            Plan::Budget(plan) => {
                let index = bucket(situation.age);
                let per_day = plan.hazards.rate(situation.status, index) * 86_400.0;
                let bound = if situation.order_is_near && situation.age < NEAR_ORDER_WINDOW {
                    "; checked out within the hour, so at most cadence.checked_out_every"
                } else {
                    ""
                };
                format!(
                    "every {interval}: {status} at age {}, chance of checking out or ordering {:.3} per day; \
                     polled in proportion to its square root within {:.0} requests a day{bound}",
                    bucket_name(index),
                    per_day,
                    plan.requests_per_day
                )
            }
        }
    }

    /// What this plan is expected to cost and achieve on `population`: requests per day at
    /// `seats` carts a request, and the 95th percentile of detection delay, each change
    /// arriving at its cell's hazard and found on average half an interval later.
    pub fn expectation(&self, population: &Population, seats: usize) -> Expectation {
        let prior;
        let hazards = match self {
            Plan::Budget(plan) => &plan.hazards,
            _ => {
                prior = Hazards::prior();
                &prior
            }
        };
        let mut polls = 0.0;
        let mut cells = Vec::new();
        for (status, bucket, near, count) in population.cells() {
            let situation = Situation {
                status,
                age: Duration::from_secs(bucket.checked_sub(1).map_or(0, |index| AGE_EDGES[index])),
                order_is_near: near,
            };
            let interval = self.interval(&situation).as_secs_f64();
            polls += count as f64 / interval;
            cells.push((count as f64 * hazards.rate(status, bucket), interval));
        }
        let weight: f64 = cells.iter().map(|(events, _)| events).sum();
        let share_within = |delay: f64| {
            cells.iter().map(|(events, interval)| events * (delay / interval).min(1.0)).sum::<f64>()
                / weight.max(f64::MIN_POSITIVE)
        };
        let (mut low, mut high) = (0.0_f64, 30.0 * 86_400.0);
        for _ in 0..100 {
            let middle = (low + high) / 2.0;
            if share_within(middle) >= 0.95 {
                high = middle;
            } else {
                low = middle;
            }
        }
        Expectation {
            requests_per_day: polls * 86_400.0 / seats.max(1) as f64,
            p95_detection: Duration::from_secs_f64(high),
        }
    }
}

/// What a plan is expected to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expectation {
    /// Requests per day.
    pub requests_per_day: f64,
    /// The 95th percentile of detection delay.
    pub p95_detection: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn flat(rate: f64) -> [f64; BUCKETS] {
        [rate; BUCKETS]
    }

    fn situation(status: &'static str, age: u64) -> Situation<'static> {
        Situation { status: Some(status), age: S(age), order_is_near: false }
    }

    #[test]
    fn the_budget_is_spent_and_polls_follow_the_square_root_of_the_hazard() {
        let hazards = Hazards::new(vec![("Hot".into(), flat(0.04)), ("Cold".into(), flat(0.0001))], flat(0.0));
        let mut population = Population::default();
        for _ in 0..100 {
            population.add(&situation("Hot", 10));
            population.add(&situation("Cold", 10));
        }
        let plan = BudgetPlan::sized(hazards, &population, 8_640.0, 10, (S(1), S(30 * 86_400)), S(60));
        // 8,640 requests a day of 10 carts = one poll a second for all 200 carts.
        assert!((plan.polls_per_second(&population) - 1.0).abs() < 1e-6, "{}", plan.polls_per_second(&population));
        let plan = Plan::Budget(plan);
        let hot = plan.interval(&situation("Hot", 10)).as_secs_f64();
        let cold = plan.interval(&situation("Cold", 10)).as_secs_f64();
        // sqrt(0.04 / 0.0001) = 20: a hot cart is polled twenty times as often.
        assert!((cold / hot - 20.0).abs() < 0.01, "{cold} / {hot}");
    }

    #[test]
    fn bounds_hold_and_near_orders_stay_close() {
        let hazards = Hazards::new(vec![("CheckedOut".into(), flat(1e-7)), ("Pending".into(), flat(10.0))], flat(0.0));
        let mut population = Population::default();
        population.add(&Situation { status: Some("CheckedOut"), age: S(5), order_is_near: true });
        population.add(&situation("Pending", 5));
        let plan = Plan::Budget(BudgetPlan::sized(hazards, &population, 1.0, 10, (S(15), S(6 * 3600)), S(60)));
        assert_eq!(plan.interval(&Situation { status: Some("CheckedOut"), age: S(5), order_is_near: true }), S(60));
        assert_eq!(plan.interval(&situation("Pending", 5)), S(6 * 3600), "a tiny budget stops at the longest interval");
        let generous = Hazards::new(vec![("Pending".into(), flat(10.0))], flat(0.0));
        let plan = Plan::Budget(BudgetPlan::sized(generous, &population, 1e9, 10, (S(15), S(6 * 3600)), S(60)));
        assert_eq!(plan.interval(&situation("Pending", 5)), S(15), "a huge budget stops at the shortest");
    }

    #[test]
    fn hazards_are_estimated_from_history_and_start_from_the_prior() {
        let prior = Hazards::new(vec![("Pending".into(), flat(0.001))], flat(0.0005));
        let empty = HazardCounts::default();
        assert_eq!(empty.estimate(&prior, S(3600)), prior, "cold start: the prior");
        let mut counts = HazardCounts::default();
        // 100 carts spend ten minutes Pending in the 1–2 minute bucket... and half progress.
        for index in 0..100 {
            counts.add(&Stretch { status: "Pending", age_at_start: S(60), length: S(60), progressed: index % 2 == 0 });
        }
        assert_eq!(counts.events(), 50.0);
        let estimated = counts.estimate(&prior, S(1));
        // 50 changes in 6,000 seconds of exposure.
        let rate = estimated.rate(Some("Pending"), bucket(S(90)));
        assert!((rate - 50.0 / 6000.0).abs() < 1e-4, "{rate}");
        // Buckets without evidence keep the prior.
        assert!((estimated.rate(Some("Pending"), bucket(S(10))) - 0.001).abs() < 1e-12);
        // A stretch across buckets spreads its exposure and counts its change at its end.
        let mut across = HazardCounts::default();
        across.add(&Stretch { status: "Pending", age_at_start: S(30), length: S(100), progressed: true });
        let cells = across.cells["Pending"];
        assert_eq!((cells[0], cells[1]), ((0.0, 30.0), (0.0, 60.0)));
        assert_eq!(cells[2], (1.0, 10.0), "the change is counted where the stretch ends, at 130 s");
    }

    #[test]
    fn the_default_budget_is_what_the_tiers_would_send_within_half_the_rate_limit() {
        let mut config = PlanConfig {
            mode: PlanMode::Budget,
            requests_per_day: 0,
            refresh: S(3600),
            history: S(7 * 86_400),
            min_interval: S(15),
            max_interval: S(6 * 3600),
        };
        assert_eq!(config.budget(100_000.0, 5.0), 100_000.0);
        assert_eq!(config.budget(1_000_000.0, 5.0), 216_000.0, "half of 5 a second");
        assert_eq!(config.budget(1_000_000.0, 0.0), 1_000_000.0, "no limit");
        config.requests_per_day = 5_000;
        assert_eq!(config.budget(1_000_000.0, 5.0), 5_000.0, "the operator's number");
        let mut problems = Problems::default();
        config.max_interval = S(1);
        config.check(&mut problems);
        assert!(format!("{problems:?}").contains("plan.max_interval"), "{problems:?}");
    }

    #[test]
    fn free_seats_fill_the_last_request_only() {
        assert_eq!([0, 1, 3, 9, 10, 11, 20].map(|due| free_seats(due, 10)), [0, 9, 7, 1, 0, 9, 0]);
    }

    #[test]
    fn the_expectation_counts_requests_and_the_delay_tail() {
        let mut population = Population::default();
        for _ in 0..600 {
            population.add(&situation("Pending", 10));
        }
        let expectation = Plan::Fixed(S(60)).expectation(&population, 10);
        // 600 carts a minute, 10 a request: 60 requests a minute.
        assert!((expectation.requests_per_day - 86_400.0).abs() < 1.0);
        // A change is found within the interval, uniformly: p95 at 57 s.
        assert!((expectation.p95_detection.as_secs_f64() - 57.0).abs() < 0.1, "{:?}", expectation.p95_detection);
    }
}
