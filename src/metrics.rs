//! Prometheus metrics: counters the daemon moves as it works, and gauges read from the
//! database at scrape time, rendered in the Prometheus text format by `prometheus-client`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Summary;
use crate::upstream::Mode;

/// `provider` and `outcome`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Partner API.
    pub provider: String,
    /// `ok`, or the failure label (`auth`, `http_5xx`, `timeout`...).
    pub outcome: String,
}

/// `to` status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// Status after the change.
    pub to: String,
}

/// Event `type`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The event type.
    pub r#type: String,
}

/// `sink` and `outcome`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The sink.
    pub sink: String,
    /// `delivered`, `retry` or `dead`.
    pub outcome: String,
}

/// `state` and `status`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CartLabels {
    /// Lifecycle state.
    pub state: String,
    /// Last status seen, or empty.
    pub status: String,
}

/// A `sink`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// The sink.
    pub sink: String,
}

/// A `provider`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Partner API.
    pub provider: String,
}

/// Every metric cartwatch exports.
pub struct Metrics {
    registry: Registry,
    /// Sweeps run.
    pub sweeps: Counter,
    /// Ticks skipped because a sweep was running.
    pub sweeps_skipped: Counter,
    /// Sweep wall time.
    pub sweep_duration: Histogram,
    /// Time to write one batch's outcome (its transaction, and waiting for the writer).
    pub store_apply_duration: Histogram,
    /// Requests to partner APIs.
    pub upstream_requests: Family<RequestLabels, Counter>,
    /// Status changes recorded.
    pub transitions: Family<TransitionLabels, Counter>,
    /// Events written to the outbox.
    pub events_written: Family<EventLabels, Counter>,
    /// Delivery attempts.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// 1 while a partner API is paused (authentication failure or open circuit).
    pub upstream_paused: Family<ProviderLabels, Gauge>,
    /// Unix time of the last sweep that reached every due cart without a failure.
    pub last_successful_sweep: Gauge<f64, AtomicU64>,
    /// Carts by state and status (read at scrape time).
    pub carts: Family<CartLabels, Gauge>,
    /// Pending deliveries per sink (read at scrape time).
    pub outbox_backlog: Family<SinkLabels, Gauge>,
    /// Pending deliveries held behind a dead letter of their cart, per sink (read at scrape
    /// time).
    pub deliveries_held: Family<SinkLabels, Gauge>,
    /// Daemons sharing the database (PostgreSQL; read at scrape time).
    pub members: Gauge,
    /// Carts polled early to fill a request's free seats.
    pub seats_filled: Family<ProviderLabels, Counter>,
    /// The polling plan's figures, per provider and `figure`.
    pub plan: Family<PlanLabels, Gauge<f64, AtomicU64>>,
}

/// `provider` and `figure` of the polling plan.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabels {
    /// Partner API.
    pub provider: String,
    /// `budget_requests_per_day`, `expected_requests_per_day`, `actual_requests_per_day`
    /// or `estimated_p95_detection_seconds`.
    pub figure: String,
}

/// What the daemon's plan expects and what it does, for `/metrics` and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PlanFigures {
    /// The requests per day the plan may spend (the tiers have no budget: 0).
    pub budget_requests_per_day: f64,
    /// What the plan expects to send, on the carts tracked now.
    pub expected_requests_per_day: f64,
    /// What the sweeps of the last hour sent, per day.
    pub actual_requests_per_day: f64,
    /// The plan's estimate of the 95th percentile of detection delay, in seconds.
    pub estimated_p95_detection_seconds: f64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let sweeps = Counter::default();
        let sweeps_skipped = Counter::default();
        let sweep_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let store_apply_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let upstream_requests = Family::default();
        let transitions = Family::default();
        let events_written = Family::default();
        let deliveries = Family::default();
        let upstream_paused = Family::default();
        let last_successful_sweep = Gauge::default();
        let carts = Family::default();
        let outbox_backlog = Family::default();
        let deliveries_held = Family::default();
        let members = Gauge::default();
        let seats_filled = Family::default();
        let plan = Family::default();
        let mut registry = Registry::with_prefix("cartwatch");
        registry.register("sweeps", "Sweeps run", sweeps.clone());
        registry.register(
            "sweeps_skipped",
            "Schedule ticks skipped because a sweep was still running",
            sweeps_skipped.clone(),
        );
        registry.register("sweep_duration_seconds", "Wall time of each sweep", sweep_duration.clone());
        registry.register(
            "store_apply_duration_seconds",
            "Time from handing one batch's outcome to the database writer until it is committed",
            store_apply_duration.clone(),
        );
        registry.register("upstream_requests", "Requests to partner APIs by outcome", upstream_requests.clone());
        registry.register("transitions", "Cart status changes recorded, by new status", transitions.clone());
        registry.register("events_written", "Events written to the outbox, by type", events_written.clone());
        registry.register("deliveries", "Delivery attempts by sink and outcome", deliveries.clone());
        registry.register(
            "upstream_paused",
            "1 while a partner API is paused (401 or open circuit)",
            upstream_paused.clone(),
        );
        registry.register(
            "last_successful_sweep_timestamp_seconds",
            "Unix time of the last sweep that reached every due cart without a failure",
            last_successful_sweep.clone(),
        );
        registry.register("carts", "Carts by state and last status", carts.clone());
        registry.register("outbox_backlog", "Deliveries waiting, by sink", outbox_backlog.clone());
        registry.register(
            "deliveries_held",
            "Deliveries waiting behind a dead letter of the same cart, by sink",
            deliveries_held.clone(),
        );
        registry.register("members", "Daemons sharing the database, alive in the last minute", members.clone());
        registry.register(
            "seats_filled",
            "Carts polled before they were due to fill the free seats of a sweep's last request",
            seats_filled.clone(),
        );
        registry.register(
            "plan",
            "The polling plan per provider: budget, expected and actual requests per day, estimated p95 detection delay (s)",
            plan.clone(),
        );
        Metrics {
            registry,
            seats_filled,
            plan,
            sweeps,
            sweeps_skipped,
            sweep_duration,
            store_apply_duration,
            upstream_requests,
            transitions,
            events_written,
            deliveries,
            upstream_paused,
            last_successful_sweep,
            carts,
            outbox_backlog,
            deliveries_held,
            members,
        }
    }
}

impl Metrics {
    /// Counts a request's outcome.
    pub fn request(&self, provider: &str, outcome: &str) {
        self.upstream_requests
            .get_or_create(&RequestLabels { provider: provider.into(), outcome: outcome.into() })
            .inc();
    }

    /// Publishes a provider's plan figures.
    pub fn set_plan(&self, provider: &str, figures: &PlanFigures) {
        for (figure, value) in [
            ("budget_requests_per_day", figures.budget_requests_per_day),
            ("expected_requests_per_day", figures.expected_requests_per_day),
            ("actual_requests_per_day", figures.actual_requests_per_day),
            ("estimated_p95_detection_seconds", figures.estimated_p95_detection_seconds),
        ] {
            self.plan.get_or_create(&PlanLabels { provider: provider.into(), figure: figure.into() }).set(value);
        }
    }

    /// Sets the paused gauge from an upstream's mode.
    pub fn set_paused(&self, provider: &str, mode: Mode) {
        self.upstream_paused
            .get_or_create(&ProviderLabels { provider: provider.into() })
            .set(i64::from(mode != Mode::Healthy));
    }

    /// Refreshes the gauges read from the database's `summary` and renders everything in the
    /// Prometheus text format.
    pub fn render(&self, summary: &Summary) -> String {
        self.carts.clear();
        for (state, status, count) in &summary.carts {
            let labels = CartLabels { state: state.clone(), status: status.clone().unwrap_or_default() };
            self.carts.get_or_create(&labels).set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        self.outbox_backlog.clear();
        self.deliveries_held.clear();
        self.members.set(i64::try_from(summary.members.len()).unwrap_or(i64::MAX));
        for sink in &summary.sinks {
            let labels = SinkLabels { sink: sink.sink.clone() };
            self.outbox_backlog.get_or_create(&labels).set(i64::try_from(sink.pending).unwrap_or(i64::MAX));
            self.deliveries_held.get_or_create(&labels).set(i64::try_from(sink.held).unwrap_or(i64::MAX));
        }
        for record in &summary.upstreams {
            self.set_paused(&record.provider, record.snapshot.mode);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
