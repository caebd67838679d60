//! A seeded model of a shop's carts: when they are created, opened, checked out and ordered.
//! It gives the evaluator its truth, and the planner its prior hazards before a shop has
//! history of its own.

use std::time::Duration;

use rand::{Rng, RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal};

use super::{AGE_EDGES, BUCKETS, Hazards};

/// The status names of the model (the i.materialise spelling).
pub const NOT_ORDERED: &str = "NotOrdered";
/// Opened by the customer.
pub const PENDING: &str = "Pending";
/// Checked out: an order is near.
pub const CHECKED_OUT: &str = "CheckedOut";
/// Ordered.
pub const ORDERED: &str = "Ordered";

/// A lognormal delay by its median and `sigma`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delay {
    /// The median.
    pub median: Duration,
    /// The standard deviation of its logarithm.
    pub sigma: f64,
}

impl Delay {
    fn sample(&self, random: &mut impl Rng) -> f64 {
        let distribution = LogNormal::new(self.median.as_secs_f64().max(1e-3).ln(), self.sigma.max(1e-6));
        distribution.map_or(self.median.as_secs_f64(), |distribution| distribution.sample(random))
    }

    fn density(&self, seconds: f64) -> f64 {
        if seconds <= 0.0 {
            return 0.0;
        }
        let z = (seconds.ln() - self.median.as_secs_f64().ln()) / self.sigma;
        (-0.5 * z * z).exp() / (seconds * self.sigma * (2.0 * std::f64::consts::PI).sqrt())
    }

    fn probability_by(&self, seconds: f64) -> f64 {
        if seconds <= 0.0 {
            return 0.0;
        }
        let z = (seconds.ln() - self.median.as_secs_f64().ln()) / self.sigma;
        0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
    }
}

/// The workload model. Defaults: 20,000 carts a day; 80 % opened (median 30 s); 40 % of the
/// opened check out (median 10 min after creation, σ 1.5); of those, 85 % order (median
/// 4 min later, σ 1), 10 % go back to Pending (and check out again half the time), 5 %
/// stay checked out.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Carts registered per day.
    pub carts_per_day: f64,
    /// How much the arrival rate swings over a day: 0 for flat, 1 for none at 4 am.
    pub daily_rhythm: f64,
    /// Share of carts the customer opens.
    pub opened: f64,
    /// From creation to opening.
    pub open_delay: Delay,
    /// Share of opened carts that check out.
    pub checkout: f64,
    /// From creation (or from going back to Pending) to checking out.
    pub checkout_delay: Delay,
    /// Share of checked-out carts that order.
    pub order: f64,
    /// Share that go back to Pending instead.
    pub back_to_pending: f64,
    /// Share of those that check out again.
    pub checkout_again: f64,
    /// From checking out to ordering (or going back).
    pub order_delay: Delay,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            carts_per_day: 20_000.0,
            daily_rhythm: 0.0,
            opened: 0.8,
            open_delay: Delay { median: Duration::from_secs(30), sigma: 1.0 },
            checkout: 0.4,
            checkout_delay: Delay { median: Duration::from_secs(600), sigma: 1.5 },
            order: 0.85,
            back_to_pending: 0.10,
            checkout_again: 0.5,
            order_delay: Delay { median: Duration::from_secs(240), sigma: 1.0 },
        }
    }
}

/// One cart's true history: when it was created (seconds from the start) and every status
/// it entered after `NotOrdered`, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// When it was created and registered.
    pub created: f64,
    /// Its changes: when, and to which status.
    pub changes: Vec<(f64, &'static str)>,
}

impl Model {
    /// The carts created over `days`, with their histories, in creation order.
    pub fn generate(&self, days: f64, seed: u64) -> Vec<Timeline> {
        let mut random = rand::rngs::StdRng::seed_from_u64(seed);
        let mut timelines = Vec::with_capacity((self.carts_per_day * days * 1.05) as usize);
        let peak = self.carts_per_day * (1.0 + self.daily_rhythm.clamp(0.0, 1.0)) / 86_400.0;
        let mut now = 0.0;
        let end = days * 86_400.0;
        loop {
            // A Poisson process, thinned to the daily rhythm.
            now += -random.random::<f64>().max(f64::MIN_POSITIVE).ln() / peak.max(f64::MIN_POSITIVE);
            if now >= end {
                break;
            }
            let phase = (now / 86_400.0 - 4.0 / 24.0) * std::f64::consts::TAU;
            let rate = 1.0 - self.daily_rhythm.clamp(0.0, 1.0) * phase.cos();
            if random.random::<f64>() * (1.0 + self.daily_rhythm.clamp(0.0, 1.0)) > rate {
                continue;
            }
            timelines.push(self.history(now, &mut random));
        }
        timelines
    }

    fn history(&self, created: f64, random: &mut impl Rng) -> Timeline {
        let mut changes = Vec::new();
        if random.random::<f64>() < self.opened {
            let opened = created + self.open_delay.sample(random);
            changes.push((opened, PENDING));
            if random.random::<f64>() < self.checkout {
                let mut checked_out = (created + self.checkout_delay.sample(random)).max(opened + 1.0);
                for _ in 0..4 {
                    changes.push((checked_out, CHECKED_OUT));
                    let next = checked_out + self.order_delay.sample(random);
                    let outcome = random.random::<f64>();
                    if outcome < self.order {
                        changes.push((next, ORDERED));
                        break;
                    }
                    if outcome >= self.order + self.back_to_pending {
                        break;
                    }
                    changes.push((next, PENDING));
                    if random.random::<f64>() >= self.checkout_again {
                        break;
                    }
                    checked_out = next + self.checkout_delay.sample(random);
                }
            }
        }
        Timeline { created, changes }
    }

    /// The model's hazards of a change towards an order, per status and age bucket (age
    /// since creation; since checking out for `CheckedOut`), each taken at the bucket's
    /// middle: the prior of the planner.
    pub fn hazards(&self) -> Hazards {
        let checkout_share = self.opened * self.checkout;
        let checkout = |age: f64| {
            let density = checkout_share * self.checkout_delay.density(age);
            density / (1.0 - checkout_share * self.checkout_delay.probability_by(age)).max(1e-9)
        };
        let order = |age: f64| {
            let leaving = self.order + self.back_to_pending;
            let density = self.order * self.order_delay.density(age);
            density / (1.0 - leaving * self.order_delay.probability_by(age)).max(1e-9)
        };
        let row = |rate: &dyn Fn(f64) -> f64| {
            let mut row = [0.0; BUCKETS];
            for (index, cell) in row.iter_mut().enumerate() {
                let lower = index.checked_sub(1).map_or(1.0, |previous| AGE_EDGES[previous] as f64);
                let upper = AGE_EDGES.get(index).map_or(lower * 3.0, |edge| *edge as f64);
                *cell = rate((lower * upper).sqrt());
            }
            row
        };
        let pending = row(&checkout);
        // A cart last seen not yet opened may have been opened since; a little less likely
        // to move than a Pending one.
        let not_ordered = pending.map(|rate| rate * self.opened);
        Hazards::new(
            vec![
                (NOT_ORDERED.into(), not_ordered),
                (PENDING.into(), pending),
                (CHECKED_OUT.into(), row(&order)),
                (ORDERED.into(), [0.0; BUCKETS]),
            ],
            not_ordered,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_workload_has_the_documented_shares() {
        let timelines = Model::default().generate(2.0, 7);
        let count = timelines.len() as f64;
        assert!((count - 40_000.0).abs() < 1_000.0, "{count} carts in two days");
        let share = |status: &str| {
            timelines.iter().filter(|t| t.changes.iter().any(|(_, s)| *s == status)).count() as f64 / count
        };
        assert!((share(PENDING) - 0.8).abs() < 0.02);
        assert!((share(CHECKED_OUT) - 0.32).abs() < 0.02);
        assert!((share(ORDERED) - 0.32 * (0.85 + 0.1 * 0.5 * 0.85)).abs() < 0.02, "{}", share(ORDERED));
        // Every history moves forward in time.
        assert!(
            timelines
                .iter()
                .all(|t| t.changes.windows(2).all(|w| w[0].0 <= w[1].0)
                    && t.changes.iter().all(|(at, _)| *at > t.created))
        );
    }

    #[test]
    fn prior_hazards_peak_where_the_model_says_checkouts_happen() {
        let hazards = Model::default().hazards();
        let rate = |status, age| hazards.rate(Some(status), super::super::bucket(Duration::from_secs(age)));
        assert!(rate(PENDING, 600) > rate(PENDING, 86_400 * 3), "young carts check out more");
        assert!(rate(CHECKED_OUT, 240) > 5.0 * rate(PENDING, 240), "an order is nearer than a checkout");
        assert_eq!(rate(ORDERED, 60), 0.0);
    }
}
