//! A fake of the partner APIs cartwatch talks to, on loopback, for the demo, the tests and
//! the benchmarks: the i.materialise Cart Status and Add/Remove Cart Item APIs and the
//! Titelive MediaWeb cart API.
//!
//! It is written from the partner's documents, not from cartwatch's client code, so the two
//! can disagree where one of them misreads the documents.
//!
//! Its carts follow seeded scripts (NotOrdered → Pending → CheckedOut → Ordered, some never
//! ordering, some going back), advancing one step after being served a scripted number of
//! times, so a poller that commits what it is told never misses a step. It injects faults on
//! request, and it tells the truth: every status each cart entered, and when.

mod faults;
mod imaterialise_api;
mod titelive_api;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_util::sync::CancellationToken;

pub use faults::{DataFault, Fault, FaultSpec};
pub use wire::Status;

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimulatorSettings {
    /// Seed of every random choice: scripts, order ids, faults.
    pub seed: u64,
    /// Simulated carts with scripts.
    pub carts: usize,
    /// Extra cart ids the simulator does not know (answered with per-cart error 101).
    pub unknown_carts: usize,
    /// Added to every request.
    pub latency: Duration,
    /// The apiCode it accepts.
    pub api_code: String,
    /// Fewest times a status is served before the cart moves on.
    pub min_dwell: u32,
    /// Most times a status is served before the cart moves on.
    pub max_dwell: u32,
    /// Faults to inject.
    pub faults: FaultSpec,
    /// How long a "timeout" fault keeps the request waiting.
    pub hang_for: Duration,
    /// Titelive sessions with scripted carts.
    pub titelive_sessions: usize,
    /// The Titelive domain code it serves.
    pub titelive_domain: String,
    /// Every cart shows this status for good, instead of following a script.
    pub uniform_status: Option<Status>,
    /// Cart items in the catalogue at start (the Add/Remove Cart Item API accepts them);
    /// `POST /_sim/items` makes more.
    pub items: usize,
}

impl Default for SimulatorSettings {
    fn default() -> SimulatorSettings {
        SimulatorSettings {
            seed: 1,
            carts: 30,
            unknown_carts: 2,
            latency: Duration::ZERO,
            api_code: DEMO_API_CODE.to_owned(),
            min_dwell: 1,
            max_dwell: 3,
            faults: FaultSpec::default(),
            hang_for: Duration::from_secs(120),
            titelive_sessions: 0,
            titelive_domain: "00000".into(),
            uniform_status: None,
            items: 5,
        }
    }
}

/// The apiCode the demo and tests use with the simulator.
pub const DEMO_API_CODE: &str = "00000000-0000-4000-8000-00000000c0de";

/// A status a simulated cart entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrueTransition {
    /// The cart.
    pub cart_id: String,
    /// Previous status; `None` for the first.
    pub from: Option<String>,
    /// New status.
    pub to: String,
    /// The OrderID, for `Ordered`.
    pub order_id: Option<String>,
    /// When the simulator moved the cart.
    pub at: DateTime<Utc>,
}

struct SimCart {
    created_raw: String,
    script: Vec<(Status, u32)>,
    position: usize,
    served_here: u32,
    order_id: String,
    /// Cart item ids in the cart (Add/Remove Cart Item API).
    items: std::collections::BTreeSet<String>,
    /// Belongs to another partner (item changes get 101).
    foreign: bool,
    /// Expired (item changes get 111).
    expired: bool,
}

impl SimCart {
    fn status(&self) -> &Status {
        &self.script[self.position].0
    }

    fn settled(&self) -> bool {
        self.position + 1 == self.script.len() && self.served_here > 0
    }
}

/// What the simulator answers about one cart.
pub(crate) struct Served {
    status: Status,
    order_id: Option<String>,
    created_raw: String,
    /// The status before the current one, if any.
    before: Option<Status>,
}

/// One request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// When it arrived.
    pub at: std::time::Instant,
    /// How many cart ids it asked about (0 when the body was not read).
    pub cart_ids: usize,
    /// The cart ids it asked about, in canonical form.
    pub asked: Vec<String>,
    /// How it was answered: `ok`, `unauthorized`, `fault:<kind>`, `code102`, `code501`.
    pub outcome: &'static str,
}

/// Request figures.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests received on the status endpoint.
    pub requests: AtomicU64,
    /// Requests answered with an injected fault.
    pub faults: AtomicU64,
    /// Cart ids asked about.
    pub cart_lookups: AtomicU64,
    /// Total time spent handling requests, in microseconds (latency included).
    pub busy_micros: AtomicU64,
    /// Requests being handled right now.
    pub in_flight: AtomicU64,
    /// When the first request arrived, in Unix microseconds (0 before).
    pub first_request_unix_micros: AtomicU64,
}

pub(crate) struct SimState {
    settings: SimulatorSettings,
    carts: Mutex<HashMap<String, SimCart>>,
    unknown: Vec<String>,
    truth: Mutex<Vec<TrueTransition>>,
    rng: Mutex<ChaCha8Rng>,
    faults: Mutex<FaultSpec>,
    api_code: Mutex<String>,
    request_log: Mutex<Vec<RequestRecord>>,
    /// Cart items that exist, with whether their validity has expired.
    catalog: Mutex<HashMap<String, bool>>,
    /// Requests to the Add/Remove Cart Item API.
    item_requests: AtomicU64,
    /// Titelive sessions by token.
    sessions: Mutex<HashMap<String, titelive_api::SimSession>>,
    stats: Stats,
    shutdown: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimState {
    fn new(settings: SimulatorSettings, shutdown: CancellationToken) -> SimState {
        let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
        let now = Utc::now();
        let mut carts = HashMap::new();
        let mut truth = Vec::new();
        for _ in 0..settings.carts {
            let id = random_guid(&mut rng);
            let mut script = random_script(&mut rng, settings.min_dwell, settings.max_dwell.max(settings.min_dwell));
            if let Some(status) = &settings.uniform_status {
                script = vec![(status.clone(), u32::MAX)];
            }
            let created = now - chrono::Duration::seconds(rng.random_range(60..3600));
            // The partner writes zone-less dates with a varying number of fraction digits.
            let created_raw = match rng.random_range(0..3) {
                0 => created.format("%Y-%m-%dT%H:%M:%S").to_string(),
                1 => created.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
                _ => created.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
            };
            truth.push(TrueTransition {
                cart_id: id.clone(),
                from: None,
                to: script[0].0.as_str().to_owned(),
                order_id: None,
                at: now,
            });
            let order_id = random_guid(&mut rng);
            let cart = SimCart {
                created_raw,
                script,
                position: 0,
                served_here: 0,
                order_id,
                items: Default::default(),
                foreign: false,
                expired: false,
            };
            carts.insert(id, cart);
        }
        let unknown = (0..settings.unknown_carts).map(|_| random_guid(&mut rng)).collect();
        let mut sessions = HashMap::new();
        for _ in 0..settings.titelive_sessions {
            let token: String = (0..26)
                .map(|_| {
                    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
                    char::from(alphabet[rng.random_range(0..alphabet.len())])
                })
                .collect();
            let session =
                titelive_api::random_session(&mut rng, settings.min_dwell, settings.max_dwell.max(settings.min_dwell));
            truth.push(TrueTransition {
                cart_id: token.clone(),
                from: None,
                to: titelive_api::status_name(session.script_start()),
                order_id: None,
                at: now,
            });
            sessions.insert(token, session);
        }
        // The catalogue has a random source of its own, so that it leaves the carts, the
        // sessions and the faults of a seed as they were.
        let mut catalog_rng = ChaCha8Rng::seed_from_u64(settings.seed ^ 0x17e5_ca7a_1065);
        let catalog = (0..settings.items).map(|_| (random_guid(&mut catalog_rng), false)).collect();
        SimState {
            api_code: Mutex::new(settings.api_code.clone()),
            faults: Mutex::new(settings.faults.clone()),
            settings,
            carts: Mutex::new(carts),
            unknown,
            truth: Mutex::new(truth),
            rng: Mutex::new(rng),
            request_log: Mutex::new(Vec::new()),
            catalog: Mutex::new(catalog),
            item_requests: AtomicU64::new(0),
            sessions: Mutex::new(sessions),
            stats: Stats::default(),
            shutdown,
        }
    }

    fn items(&self) -> Vec<(String, bool)> {
        let mut items: Vec<(String, bool)> =
            lock(&self.catalog).iter().map(|(id, expired)| (id.clone(), *expired)).collect();
        items.sort();
        items
    }

    fn new_item(&self, expired: bool) -> String {
        let id = random_guid(&mut lock(&self.rng));
        lock(&self.catalog).insert(id.clone(), expired);
        id
    }

    /// Serves one cart: its current status, then moves it on if its dwell is over. Also
    /// returns the status before the current one, for a stale copy.
    fn serve(&self, cart_id: &str) -> Option<Served> {
        let mut carts = lock(&self.carts);
        let cart = carts.get_mut(cart_id)?;
        let status = cart.status().clone();
        let answer = Served {
            status: status.clone(),
            order_id: (status == Status::Ordered).then(|| cart.order_id.clone()),
            created_raw: cart.created_raw.clone(),
            before: cart.position.checked_sub(1).map(|position| cart.script[position].0.clone()),
        };
        cart.served_here += 1;
        let dwell = cart.script[cart.position].1;
        if cart.served_here >= dwell && cart.position + 1 < cart.script.len() {
            cart.position += 1;
            cart.served_here = 0;
            let to = cart.status().clone();
            lock(&self.truth).push(TrueTransition {
                cart_id: cart_id.to_owned(),
                from: Some(status.as_str().to_owned()),
                order_id: (to == Status::Ordered).then(|| cart.order_id.clone()),
                to: to.as_str().to_owned(),
                at: Utc::now(),
            });
        }
        Some(answer)
    }

    /// Moves a cart to `status` for good (its script ends there), recording the truth.
    fn force_status(&self, cart_id: &str, status: Status) -> bool {
        let mut carts = lock(&self.carts);
        let Some(cart) = carts.get_mut(cart_id) else { return false };
        let previous = cart.status().clone();
        cart.script = vec![(status.clone(), u32::MAX)];
        cart.position = 0;
        cart.served_here = 0;
        if previous != status {
            lock(&self.truth).push(TrueTransition {
                cart_id: cart_id.to_owned(),
                from: Some(previous.as_str().to_owned()),
                order_id: (status == Status::Ordered).then(|| cart.order_id.clone()),
                to: status.as_str().to_owned(),
                at: Utc::now(),
            });
        }
        true
    }

    fn draw(&self) -> f64 {
        lock(&self.rng).random::<f64>()
    }
}

fn random_guid(rng: &mut ChaCha8Rng) -> String {
    let bytes: [u8; 16] = rng.random();
    uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().to_string()
}

/// A script: the statuses a cart goes through, each with how many times it is served.
fn random_script(rng: &mut ChaCha8Rng, min_dwell: u32, max_dwell: u32) -> Vec<(Status, u32)> {
    use Status::*;
    let path: &[Status] = match rng.random_range(0..100) {
        0..60 => &[NotOrdered, Pending, CheckedOut, Ordered],
        60..70 => &[Pending, CheckedOut, Pending, CheckedOut, Ordered],
        70..80 => &[NotOrdered, Pending],
        80..90 => &[Pending, CheckedOut],
        _ => &[Pending, Ordered],
    };
    path.iter().map(|status| (status.clone(), rng.random_range(min_dwell.max(1)..=max_dwell.max(1)))).collect()
}

/// A running simulator. Dropping it does not stop it; call [`Simulator::stop`].
pub struct Simulator {
    address: SocketAddr,
    state: Arc<SimState>,
    server: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Starts the simulator on `listen` (use port 0 for any free port).
    ///
    /// Fails when the address cannot be bound.
    pub async fn start(settings: SimulatorSettings, listen: SocketAddr) -> std::io::Result<Simulator> {
        let shutdown = CancellationToken::new();
        let state = Arc::new(SimState::new(settings, shutdown.clone()));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let app = imaterialise_api::router(Arc::clone(&state)).merge(titelive_api::router(Arc::clone(&state)));
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
            if let Err(error) = serve.await {
                tracing::error!(error = %error, "simulator stopped with an error");
            }
        });
        Ok(Simulator { address, state, server })
    }

    /// The base URL to configure as `imaterialise.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every cart id it knows (lower-case GUIDs), then the unknown ones.
    pub fn cart_ids(&self) -> Vec<String> {
        let mut known: Vec<String> = lock(&self.state.carts).keys().cloned().collect();
        known.sort();
        known.extend(self.state.unknown.iter().cloned());
        known
    }

    /// The ids it answers with error 101.
    pub fn unknown_cart_ids(&self) -> Vec<String> {
        self.state.unknown.clone()
    }

    /// Every status every cart entered, in order.
    pub fn truth(&self) -> Vec<TrueTransition> {
        lock(&self.state.truth).clone()
    }

    /// Whether every cart has reached the end of its script and been served there.
    pub fn settled(&self) -> bool {
        self.unsettled() == 0
    }

    /// How many carts (and Titelive sessions) have not settled yet.
    pub fn unsettled(&self) -> usize {
        lock(&self.state.carts).values().filter(|cart| !cart.settled()).count()
            + lock(&self.state.sessions).values().filter(|session| !session.settled()).count()
    }

    /// The Titelive session tokens it knows.
    pub fn session_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = lock(&self.state.sessions).keys().cloned().collect();
        tokens.sort();
        tokens
    }

    /// Replaces the faults it injects.
    pub fn set_faults(&self, faults: FaultSpec) {
        *lock(&self.state.faults) = faults;
    }

    /// Replaces the apiCode it accepts.
    pub fn set_api_code(&self, api_code: &str) {
        *lock(&self.state.api_code) = api_code.to_owned();
    }

    /// Request figures.
    pub fn stats(&self) -> &Stats {
        &self.state.stats
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.stats.requests.load(Ordering::Relaxed)
    }

    /// The number of cart ids in each request answered with statuses, in arrival order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        lock(&self.state.request_log).iter().filter(|r| r.outcome == "ok").map(|r| r.cart_ids).collect()
    }

    /// Every request received, in arrival order.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        lock(&self.state.request_log).clone()
    }

    /// Creates a cart item the Add/Remove Cart Item API accepts (or refuses with 107 when
    /// `expired`), and returns its id.
    pub fn new_item(&self, expired: bool) -> String {
        self.state.new_item(expired)
    }

    /// The catalogue: every cart item id, with whether its validity has expired, sorted.
    pub fn items(&self) -> Vec<(String, bool)> {
        self.state.items()
    }

    /// Moves a cart to `status` for good.
    pub fn force_status(&self, cart_id: &str, status: Status) -> bool {
        self.state.force_status(cart_id, status)
    }

    /// Marks a cart as another partner's (101) or expired (111) for item changes.
    pub fn mark_cart(&self, cart_id: &str, foreign: bool, expired: bool) {
        if let Some(cart) = lock(&self.state.carts).get_mut(cart_id) {
            cart.foreign = foreign;
            cart.expired = expired;
        }
    }

    /// The items in a cart.
    pub fn cart_items(&self, cart_id: &str) -> Vec<String> {
        lock(&self.state.carts).get(cart_id).map(|cart| cart.items.iter().cloned().collect()).unwrap_or_default()
    }

    /// Requests received by the Add/Remove Cart Item API.
    pub fn item_requests(&self) -> u64 {
        self.state.item_requests.load(Ordering::Relaxed)
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(self) {
        self.state.shutdown.cancel();
        let _ = self.server.await;
    }
}
