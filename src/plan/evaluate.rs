//! The evaluator: replays a seeded workload in simulated time through a plan, with the same
//! functions the daemon uses ([`Plan::interval`], [`spread`] for the jitter, [`free_seats`]
//! to fill requests, [`stretches`] and [`HazardCounts`] for the shop's history,
//! [`BudgetPlan::sized`] for the budget), and measures what the plan costs and how soon it
//! finds checkouts and orders.
//!
//! Time advances in sweep ticks; each tick polls the carts due, in requests of [`SEATS`].
//! A cart's true status at a poll comes from its [`Timeline`]; a checkout or order is found
//! at the first poll after it happened.

use std::time::Duration;

use rand::{RngExt, SeedableRng};

use super::workload::{CHECKED_OUT, NOT_ORDERED, ORDERED, Timeline};
use super::{
    BudgetPlan, FILL_HORIZON, HazardCounts, Hazards, Plan, Population, SEATS, Situation, free_seats, stretches,
};
use crate::policy::{CadenceConfig, spread};

/// How an evaluation runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Days replayed.
    pub days: f64,
    /// Figures are of the days after this one (the first fill the pipeline of tracked carts).
    pub measured_from_day: f64,
    /// The sweep tick.
    pub tick: Duration,
    /// The jitter of intervals.
    pub jitter: f64,
    /// When tracking ends without an order.
    pub max_age: Duration,
    /// For the budget plan: how often hazards are estimated again, over how much history,
    /// and how much weight the prior keeps.
    pub refresh: Duration,
    /// History the estimate looks at.
    pub history: Duration,
    /// Weight of the prior, as exposure.
    pub prior_strength: Duration,
    /// Seed of the jitter.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            days: 14.0,
            measured_from_day: 7.0,
            tick: Duration::from_secs(15),
            jitter: 0.1,
            max_age: Duration::from_secs(30 * 86_400),
            refresh: Duration::from_secs(3600),
            history: Duration::from_secs(7 * 86_400),
            prior_strength: super::PRIOR_STRENGTH,
            seed: 1,
        }
    }
}

/// A plan to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Planner {
    /// Every cart every so often, requests not filled (what a cron script does).
    Fixed(Duration),
    /// The `[cadence]` tiers, requests not filled (cartwatch before the budget plan).
    Tiers(CadenceConfig),
    /// The square-root rule within a budget, hazards learned from the replayed history,
    /// requests filled.
    Budget {
        /// Requests per day.
        requests_per_day: f64,
        /// Shortest and longest intervals.
        bounds: (Duration, Duration),
        /// The longest interval while an order is near.
        near_order_every: Duration,
    },
}

impl Planner {
    /// A short name for reports.
    pub fn label(&self) -> String {
        match self {
            Planner::Fixed(interval) => format!("fixed {}", humantime::format_duration(*interval)),
            Planner::Tiers(_) => "tiers".into(),
            Planner::Budget { requests_per_day, .. } => format!("budget {requests_per_day:.0}/day"),
        }
    }
}

/// Detection delays of one kind of change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    /// Changes found.
    pub count: usize,
    /// Median delay, seconds.
    pub p50: f64,
    /// 95th percentile, seconds.
    pub p95: f64,
    /// 99th percentile, seconds.
    pub p99: f64,
}

impl Latency {
    fn of(mut delays: Vec<f64>) -> Latency {
        if delays.is_empty() {
            return Latency::default();
        }
        delays.sort_by(f64::total_cmp);
        let at = |q: f64| delays[((delays.len() as f64 - 1.0) * q).round() as usize];
        Latency { count: delays.len(), p50: at(0.5), p95: at(0.95), p99: at(0.99) }
    }
}

/// What an evaluation measured, over the measured days.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The plan.
    pub label: String,
    /// Requests per day.
    pub requests_per_day: f64,
    /// Carts per request (seat use, of 10).
    pub polls_per_request: f64,
    /// Requests per order found.
    pub requests_per_detected_order: f64,
    /// The most requests one tick sent.
    pub peak_requests_per_tick: usize,
    /// Checkouts found.
    pub checked_out: Latency,
    /// Orders found.
    pub ordered: Latency,
    /// Carts replayed.
    pub carts: usize,
}

/// Most changes a timeline of the model has.
const MAX_CHANGES: usize = 10;

/// A cart as the replay keeps it: its truth and what has been seen of it, in one cache line
/// or two (the replay is bound by memory, not arithmetic: a poll touches one cart).
struct SimCart {
    created: f32,
    seen_since: f32,
    last_poll: f32,
    scheduled: u32,
    change_times: [f32; MAX_CHANGES],
    change_statuses: [u8; MAX_CHANGES],
    changes: u8,
    next_change: u8,
    seen: u8,
    done: bool,
}

/// How many sightings of each cart [`SeenLog`] keeps inline.
const SEEN_INLINE: usize = 4;

/// Each cart's statuses as seen (status code, time), in one flat table the refresh reads
/// in order, the rare fifth sighting and later aside: a vector per cart cost a cache miss
/// per cart at every refresh, most of the replay's time.
struct SeenLog {
    inline: Vec<[(u8, f32); SEEN_INLINE]>,
    lengths: Vec<u8>,
    overflow: std::collections::HashMap<u32, Vec<(u8, f32)>>,
}

impl SeenLog {
    fn new(carts: usize) -> SeenLog {
        SeenLog { inline: vec![[(0, 0.0); SEEN_INLINE]; carts], lengths: vec![0; carts], overflow: Default::default() }
    }

    fn push(&mut self, cart: u32, status: u8, at: f32) {
        let index = cart as usize;
        let length = usize::from(self.lengths[index]);
        if length < SEEN_INLINE {
            self.inline[index][length] = (status, at);
            self.lengths[index] += 1;
        } else {
            self.overflow.entry(cart).or_default().push((status, at));
        }
    }

    fn of(&self, cart: usize) -> impl Iterator<Item = (u8, f32)> + '_ {
        let inline = &self.inline[cart][..usize::from(self.lengths[cart])];
        let more = match usize::from(self.lengths[cart]) == SEEN_INLINE {
            true => self.overflow.get(&(cart as u32)).map_or(&[][..], Vec::as_slice),
            false => &[],
        };
        inline.iter().chain(more).copied()
    }
}

/// The statuses of the workload, stored in a cart as their index here (a byte, not a
/// 16-byte string reference: the replay is bound by how many carts fit in the cache).
const STATUSES: [&str; 4] = [NOT_ORDERED, super::workload::PENDING, CHECKED_OUT, ORDERED];

fn code(status: &str) -> u8 {
    STATUSES.iter().position(|known| *known == status).unwrap_or(0) as u8
}

fn near(status: &str) -> bool {
    status == CHECKED_OUT
}

fn progress(status: &str) -> bool {
    status == CHECKED_OUT || status == ORDERED
}

/// Replays `timelines` (in creation order) through `planner`.
pub fn evaluate(timelines: &[Timeline], planner: &Planner, settings: &Settings) -> Report {
    let tick = settings.tick.as_secs_f64();
    let ticks = (settings.days * 86_400.0 / tick).ceil() as usize;
    let measured_from = settings.measured_from_day * 86_400.0;
    let fill = matches!(planner, Planner::Budget { .. });
    let mut random = rand::rngs::StdRng::seed_from_u64(settings.seed);
    let mut carts: Vec<SimCart> = timelines
        .iter()
        .map(|timeline| {
            let mut cart = SimCart {
                created: timeline.created as f32,
                seen_since: timeline.created as f32,
                last_poll: timeline.created as f32,
                scheduled: u32::MAX,
                change_times: [f32::INFINITY; MAX_CHANGES],
                change_statuses: [0; MAX_CHANGES],
                changes: 0,
                next_change: 0,
                seen: 0,
                done: false,
            };
            for (at, status) in timeline.changes.iter().take(MAX_CHANGES) {
                cart.change_times[cart.changes as usize] = *at as f32;
                cart.change_statuses[cart.changes as usize] = code(status);
                cart.changes += 1;
            }
            cart
        })
        .collect();
    // What a budget plan learns from: the statuses seen of each cart, and when.
    let mut histories = SeenLog::new(if fill { timelines.len() } else { 0 });
    let mut queue: Vec<Vec<u32>> = vec![Vec::new(); ticks + 2];
    let mut plan = match planner {
        Planner::Fixed(interval) => Plan::Fixed(*interval),
        Planner::Tiers(cadence) => Plan::Tiers(cadence.clone()),
        Planner::Budget { .. } => Plan::Fixed(settings.tick),
    };
    let prior = Hazards::prior();
    let mut next_refresh = 0.0;
    let mut arrived = 0;
    let (mut requests, mut polls, mut orders_found, mut peak) = (0u64, 0u64, 0u64, 0usize);
    let (mut checkout_delays, mut order_delays) = (Vec::new(), Vec::new());
    let mut due: Vec<u32> = Vec::new();
    for now_tick in 0..ticks {
        let now = now_tick as f64 * tick;
        if let Planner::Budget { requests_per_day, bounds, near_order_every } = planner
            && now >= next_refresh
        {
            plan = Plan::Budget(refresh(
                &carts,
                &histories,
                arrived,
                now,
                &prior,
                settings,
                *requests_per_day,
                *bounds,
                *near_order_every,
            ));
            next_refresh = now + settings.refresh.as_secs_f64();
        }
        due.clear();
        while arrived < carts.len() && f64::from(carts[arrived].created) <= now {
            carts[arrived].scheduled = now_tick as u32;
            due.push(arrived as u32);
            arrived += 1;
        }
        for cart in std::mem::take(&mut queue[now_tick]) {
            if carts[cart as usize].scheduled == now_tick as u32 && !carts[cart as usize].done {
                due.push(cart);
            }
        }
        if due.is_empty() {
            continue;
        }
        if fill {
            // The same rule as the daemon's sweep: the last request's free seats go to the
            // carts due soonest.
            let mut free = free_seats(due.len(), SEATS);
            let horizon = (FILL_HORIZON.as_secs_f64() / tick) as usize;
            let mut ahead = now_tick + 1;
            while free > 0 && ahead <= (now_tick + horizon).min(ticks) {
                while free > 0 {
                    let Some(cart) = queue[ahead].pop() else { break };
                    let state = &mut carts[cart as usize];
                    if state.scheduled == ahead as u32 && !state.done {
                        state.scheduled = now_tick as u32;
                        due.push(cart);
                        free -= 1;
                    }
                }
                ahead += 1;
            }
        }
        let sent = due.len().div_ceil(SEATS);
        if now >= measured_from {
            requests += sent as u64;
            polls += due.len() as u64;
            peak = peak.max(sent);
        }
        let now32 = now as f32;
        for &cart in &due {
            let state = &mut carts[cart as usize];
            while state.next_change < state.changes && state.change_times[state.next_change as usize] <= now32 {
                let index = state.next_change as usize;
                let at = f64::from(state.change_times[index]);
                if at >= measured_from {
                    match STATUSES[usize::from(state.change_statuses[index])] {
                        CHECKED_OUT => checkout_delays.push(now - at),
                        ORDERED => order_delays.push(now - at),
                        _ => {}
                    }
                }
                state.next_change += 1;
            }
            let seen_code = state.next_change.checked_sub(1).map_or(0, |index| state.change_statuses[index as usize]);
            let seen = STATUSES[usize::from(seen_code)];
            if seen_code != state.seen {
                state.seen = seen_code;
                state.seen_since = now32;
                if fill {
                    histories.push(cart, seen_code, now32);
                }
            }
            state.last_poll = now32;
            if seen == ORDERED {
                state.done = true;
                if now >= measured_from {
                    orders_found += 1;
                }
                continue;
            }
            let created = f64::from(state.created);
            if now - created >= settings.max_age.as_secs_f64() {
                state.done = true;
                continue;
            }
            let age = if near(seen) { now - f64::from(state.seen_since) } else { now - created };
            let situation =
                Situation { status: Some(seen), age: Duration::from_secs_f64(age.max(0.0)), order_is_near: near(seen) };
            let interval = spread(plan.interval(&situation), settings.jitter, random.random::<f64>());
            let next_tick = (((now + interval.as_secs_f64()) / tick).ceil() as usize).max(now_tick + 1);
            if next_tick < ticks {
                state.scheduled = next_tick as u32;
                queue[next_tick].push(cart);
            } else {
                state.done = true;
            }
        }
    }
    let days = settings.days - settings.measured_from_day;
    Report {
        label: planner.label(),
        requests_per_day: requests as f64 / days,
        polls_per_request: polls as f64 / (requests as f64).max(1.0),
        requests_per_detected_order: requests as f64 / (orders_found as f64).max(1.0),
        peak_requests_per_tick: peak,
        checked_out: Latency::of(checkout_delays),
        ordered: Latency::of(order_delays),
        carts: timelines.len(),
    }
}

/// The budget plan from what the replay has observed so far, as the daemon builds it from
/// its recorded transitions.
#[allow(clippy::too_many_arguments)]
fn refresh(
    carts: &[SimCart],
    histories: &SeenLog,
    arrived: usize,
    now: f64,
    prior: &Hazards,
    settings: &Settings,
    requests_per_day: f64,
    bounds: (Duration, Duration),
    near_order_every: Duration,
) -> BudgetPlan {
    let mut counts = HazardCounts::default();
    let mut population = Population::default();
    let since = now - settings.history.as_secs_f64();
    let mut seen: Vec<(&str, f64)> = Vec::new();
    for (index, cart) in carts[..arrived].iter().enumerate() {
        let created = f64::from(cart.created);
        if created >= since {
            seen.clear();
            seen.push((NOT_ORDERED, created));
            seen.extend(histories.of(index).map(|(status, at)| (STATUSES[usize::from(status)], f64::from(at))));
            let until = if cart.done { f64::from(cart.last_poll) } else { now };
            for stretch in stretches(created, &seen, until, near, progress) {
                counts.add(&stretch);
            }
        }
        if !cart.done {
            let status = STATUSES[usize::from(cart.seen)];
            let age = if near(status) { now - f64::from(cart.seen_since) } else { now - created };
            population.add(&Situation {
                status: Some(status),
                age: Duration::from_secs_f64(age.max(0.0)),
                order_is_near: near(status),
            });
        }
    }
    let hazards = counts.estimate(prior, settings.prior_strength);
    BudgetPlan::sized(hazards, &population, requests_per_day, SEATS, bounds, near_order_every)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::workload::Model;

    fn short() -> Settings {
        Settings { days: 2.0, measured_from_day: 1.0, ..Settings::default() }
    }

    #[test]
    fn fixed_polling_costs_what_arithmetic_says_and_finds_within_an_interval() {
        let model = Model { carts_per_day: 1_000.0, ..Model::default() };
        let timelines = model.generate(2.0, 3);
        let report = evaluate(&timelines, &Planner::Fixed(Duration::from_secs(60)), &short());
        // Every change is found within a minute and a tick.
        assert!(report.checked_out.p99 <= 75.0 && report.ordered.p99 <= 75.0, "{report:?}");
        assert!(report.checked_out.count > 200);
        // Full requests: many carts are due at each tick.
        assert!(report.polls_per_request > 9.0, "{report:?}");
    }

    #[test]
    fn a_budget_plan_fills_its_requests_and_stays_near_its_budget() {
        let model = Model { carts_per_day: 2_000.0, ..Model::default() };
        let timelines = model.generate(2.0, 5);
        let planner = Planner::Budget {
            requests_per_day: 5_000.0,
            bounds: (Duration::from_secs(15), Duration::from_secs(6 * 3600)),
            near_order_every: Duration::from_secs(60),
        };
        let report = evaluate(&timelines, &planner, &short());
        assert!(report.polls_per_request > 9.5, "seats filled: {report:?}");
        assert!((report.requests_per_day / 5_000.0 - 1.0).abs() < 0.25, "near the budget: {report:?}");
        assert!(
            report.ordered.p95 < 600.0 && report.ordered.p95 < report.checked_out.p95,
            "orders found soonest: {report:?}"
        );
    }
}
