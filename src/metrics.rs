//! Prometheus metrics: counters and histograms the daemon moves as it works, gauges read
//! from the database at scrape time, the process's own figures, all rendered in the classic
//! Prometheus text format (`text/plain; version=0.0.4`) by the `prometheus` crate, which
//! `promtool check metrics` and every scraper accept.
//!
//! Every series whose labels are known in advance (each provider, sink, event type and
//! outcome) exists from start at zero, so `absent()` alerts and rate queries work before the
//! first event.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder, exponential_buckets,
};

use crate::events::EventType;
use crate::store::Summary;
use crate::upstream::Mode;

/// The content type of [`Metrics::render`]'s body.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

/// Every metric cartwatch exports.
pub struct Metrics {
    registry: Registry,
    /// Sweeps run.
    pub sweeps: IntCounter,
    /// Ticks skipped because a sweep was running.
    pub sweeps_skipped: IntCounter,
    /// Sweep wall time.
    pub sweep_duration: Histogram,
    /// Time to write one batch's outcome (its transaction, and waiting for the writer): the
    /// time from a change's first sighting to its event being written.
    pub store_apply_duration: Histogram,
    upstream_requests: IntCounterVec,
    upstream_request_duration: HistogramVec,
    transitions: IntCounterVec,
    events_written: IntCounterVec,
    deliveries: IntCounterVec,
    delivery_pass_duration: HistogramVec,
    event_delivery_latency: HistogramVec,
    upstream_paused: IntGaugeVec,
    /// Unix time of the last sweep that reached every due cart without a failure.
    pub last_successful_sweep: Gauge,
    /// Database operations of sweeps that failed (after their retries).
    pub store_errors: IntCounter,
    carts: IntGaugeVec,
    outbox_backlog: IntGaugeVec,
    deliveries_held: IntGaugeVec,
    oldest_undelivered: GaugeVec,
    members: IntGauge,
    seats_filled: IntCounterVec,
    plan: GaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The outcomes of a request counted from start.
const REQUEST_OUTCOMES: [&str; 1] = ["ok"];

/// The outcomes of a delivery attempt.
const DELIVERY_OUTCOMES: [&str; 3] = ["delivered", "retry", "dead"];

/// The figures of the polling plan.
const PLAN_FIGURES: [&str; 4] = [
    "budget_requests_per_day",
    "expected_requests_per_day",
    "actual_requests_per_day",
    "estimated_p95_detection_seconds",
];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("cartwatch")
}

fn histogram_opts(name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
    HistogramOpts::new(name, help).namespace("cartwatch").buckets(buckets)
}

/// Buckets from `start` doubling `count` times; the arguments are constants.
fn doubling(start: f64, count: usize) -> Vec<f64> {
    exponential_buckets(start, 2.0, count).unwrap_or_default()
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new().expect("the metric definitions are valid and registered once")
    }
}

impl Metrics {
    fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let register = |collector: Box<dyn prometheus::core::Collector>| registry.register(collector);
        let sweeps = IntCounter::with_opts(opts("sweeps_total", "Sweeps run"))?;
        let sweeps_skipped = IntCounter::with_opts(opts(
            "sweeps_skipped_total",
            "Schedule ticks skipped because a sweep was still running",
        ))?;
        let sweep_duration = Histogram::with_opts(histogram_opts(
            "sweep_duration_seconds",
            "Wall time of each sweep",
            doubling(0.01, 14),
        ))?;
        let store_apply_duration = Histogram::with_opts(histogram_opts(
            "store_apply_duration_seconds",
            "Time from a batch's answer (the first sighting of its changes) until its outcome and events are committed",
            doubling(0.000_05, 16),
        ))?;
        let upstream_requests = IntCounterVec::new(
            opts("upstream_requests_total", "Requests to partner APIs by outcome"),
            &["provider", "outcome"],
        )?;
        let upstream_request_duration = HistogramVec::new(
            histogram_opts(
                "upstream_request_duration_seconds",
                "Time from sending a request to a partner API to its answer (or failure)",
                doubling(0.005, 14),
            ),
            &["provider"],
        )?;
        let transitions =
            IntCounterVec::new(opts("transitions_total", "Cart status changes recorded, by new status"), &["to"])?;
        let events_written =
            IntCounterVec::new(opts("events_written_total", "Events written to the outbox, by type"), &["type"])?;
        let deliveries = IntCounterVec::new(
            opts("deliveries_total", "Delivery attempts by sink and outcome"),
            &["sink", "outcome"],
        )?;
        let delivery_pass_duration = HistogramVec::new(
            histogram_opts(
                "delivery_pass_duration_seconds",
                "Time to attempt one batch of deliveries to a sink (webhook requests run concurrently)",
                doubling(0.001, 14),
            ),
            &["sink"],
        )?;
        let event_delivery_latency = HistogramVec::new(
            histogram_opts(
                "event_delivery_latency_seconds",
                "Time from an event being written to its delivery, per sink",
                doubling(0.01, 20),
            ),
            &["sink"],
        )?;
        let upstream_paused = IntGaugeVec::new(
            opts("upstream_paused", "1 while a partner API is paused (401 or open circuit)"),
            &["provider"],
        )?;
        let last_successful_sweep = Gauge::with_opts(opts(
            "last_successful_sweep_timestamp_seconds",
            "Unix time of the last sweep that reached every due cart without a failure",
        ))?;
        let store_errors = IntCounter::with_opts(opts(
            "store_errors_total",
            "Database operations of sweeps that failed after their retries (the carts concerned stay due)",
        ))?;
        let carts = IntGaugeVec::new(opts("carts", "Carts by state and last status"), &["state", "status"])?;
        let outbox_backlog = IntGaugeVec::new(opts("outbox_backlog", "Deliveries waiting, by sink"), &["sink"])?;
        let deliveries_held = IntGaugeVec::new(
            opts("deliveries_held", "Deliveries waiting behind a dead letter of the same cart, by sink"),
            &["sink"],
        )?;
        let oldest_undelivered = GaugeVec::new(
            opts(
                "oldest_undelivered_event_age_seconds",
                "Age of the oldest event waiting for delivery, by sink (0 when none waits)",
            ),
            &["sink"],
        )?;
        let members = IntGauge::with_opts(opts("members", "Daemons sharing the database, alive in the last minute"))?;
        let seats_filled = IntCounterVec::new(
            opts(
                "seats_filled_total",
                "Carts polled before they were due to fill the free seats of a sweep's last request",
            ),
            &["provider"],
        )?;
        let plan = GaugeVec::new(
            opts(
                "plan",
                "The polling plan per provider: budget, expected and actual requests per day, estimated p95 detection delay (s)",
            ),
            &["provider", "figure"],
        )?;
        let build_info =
            IntGaugeVec::new(opts("build_info", "Always 1: the version of cartwatch running"), &["version"])?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(Box::new(sweeps.clone()))?;
        register(Box::new(sweeps_skipped.clone()))?;
        register(Box::new(sweep_duration.clone()))?;
        register(Box::new(store_apply_duration.clone()))?;
        register(Box::new(upstream_requests.clone()))?;
        register(Box::new(upstream_request_duration.clone()))?;
        register(Box::new(transitions.clone()))?;
        register(Box::new(events_written.clone()))?;
        register(Box::new(deliveries.clone()))?;
        register(Box::new(delivery_pass_duration.clone()))?;
        register(Box::new(event_delivery_latency.clone()))?;
        register(Box::new(upstream_paused.clone()))?;
        register(Box::new(last_successful_sweep.clone()))?;
        register(Box::new(store_errors.clone()))?;
        register(Box::new(carts.clone()))?;
        register(Box::new(outbox_backlog.clone()))?;
        register(Box::new(deliveries_held.clone()))?;
        register(Box::new(oldest_undelivered.clone()))?;
        register(Box::new(members.clone()))?;
        register(Box::new(seats_filled.clone()))?;
        register(Box::new(plan.clone()))?;
        register(Box::new(build_info))?;
        register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        for event_type in EventType::ALL {
            events_written.with_label_values(&[event_type.as_str()]);
        }
        Ok(Metrics {
            registry,
            sweeps,
            sweeps_skipped,
            sweep_duration,
            store_apply_duration,
            upstream_requests,
            upstream_request_duration,
            transitions,
            events_written,
            deliveries,
            delivery_pass_duration,
            event_delivery_latency,
            upstream_paused,
            last_successful_sweep,
            store_errors,
            carts,
            outbox_backlog,
            deliveries_held,
            oldest_undelivered,
            members,
            seats_filled,
            plan,
        })
    }

    /// Creates every series of `providers` and `sinks` at zero, so each exists from start.
    pub fn prepare(&self, providers: &[&str], sinks: &[String]) {
        for provider in providers {
            for outcome in REQUEST_OUTCOMES {
                self.upstream_requests.with_label_values(&[provider, outcome]);
            }
            self.upstream_request_duration.with_label_values(&[provider]);
            self.upstream_paused.with_label_values(&[provider]);
            self.seats_filled.with_label_values(&[provider]);
            for figure in PLAN_FIGURES {
                self.plan.with_label_values(&[provider, figure]);
            }
        }
        for sink in sinks {
            for outcome in DELIVERY_OUTCOMES {
                self.deliveries.with_label_values(&[sink.as_str(), outcome]);
            }
            self.delivery_pass_duration.with_label_values(&[sink.as_str()]);
            self.event_delivery_latency.with_label_values(&[sink.as_str()]);
        }
    }

    /// Counts a request's outcome and how long it took.
    pub fn request(&self, provider: &str, outcome: &str, took: Duration) {
        self.upstream_requests.with_label_values(&[provider, outcome]).inc();
        self.upstream_request_duration.with_label_values(&[provider]).observe(took.as_secs_f64());
    }

    /// Counts a status change recorded.
    pub fn transition(&self, to: &str) {
        self.transitions.with_label_values(&[to]).inc();
    }

    /// Counts an event written.
    pub fn event_written(&self, event_type: EventType) {
        self.events_written.with_label_values(&[event_type.as_str()]).inc();
    }

    /// Counts a delivery attempt's outcome.
    pub fn delivery(&self, sink: &str, outcome: &str) {
        self.deliveries.with_label_values(&[sink, outcome]).inc();
    }

    /// Records one pass of deliveries to `sink`.
    pub fn delivery_pass(&self, sink: &str, took: Duration) {
        self.delivery_pass_duration.with_label_values(&[sink]).observe(took.as_secs_f64());
    }

    /// Records an event delivered `latency` after it was written.
    pub fn delivered_after(&self, sink: &str, latency: Duration) {
        self.event_delivery_latency.with_label_values(&[sink]).observe(latency.as_secs_f64());
    }

    /// Counts carts polled early in free seats.
    pub fn seats_filled(&self, provider: &str, carts: u64) {
        self.seats_filled.with_label_values(&[provider]).inc_by(carts);
    }

    /// Publishes a provider's plan figures.
    pub fn set_plan(&self, provider: &str, figures: &PlanFigures) {
        let values = [
            figures.budget_requests_per_day,
            figures.expected_requests_per_day,
            figures.actual_requests_per_day,
            figures.estimated_p95_detection_seconds,
        ];
        for (figure, value) in PLAN_FIGURES.into_iter().zip(values) {
            self.plan.with_label_values(&[provider, figure]).set(value);
        }
    }

    /// Sets the paused gauge from an upstream's mode.
    pub fn set_paused(&self, provider: &str, mode: Mode) {
        self.upstream_paused.with_label_values(&[provider]).set(i64::from(mode != Mode::Healthy));
    }

    /// Refreshes the gauges read from the database's `summary` and renders everything in the
    /// Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self, summary: &Summary) -> String {
        let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.carts.reset();
        for (state, status, carts) in &summary.carts {
            self.carts.with_label_values(&[state.as_str(), status.as_deref().unwrap_or_default()]).set(count(*carts));
        }
        self.members.set(count(summary.members.len() as u64));
        for sink in &summary.sinks {
            let name = sink.sink.as_str();
            self.outbox_backlog.with_label_values(&[name]).set(count(sink.pending));
            self.deliveries_held.with_label_values(&[name]).set(count(sink.held));
            self.oldest_undelivered.with_label_values(&[name]).set(sink.oldest_pending_age.as_secs_f64());
        }
        for record in &summary.upstreams {
            self.set_paused(&record.provider, record.snapshot.mode);
        }
        let mut body = Vec::new();
        // Encoding into memory fails only on a metric that cannot be encoded, which the
        // definitions above rule out; a partial body is still served.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut body);
        String::from_utf8_lossy(&body).into_owned()
    }
}
