//! `cartwatch simulate`: the partner simulator as its own process.

use anyhow::Context as _;
use cartwatch_simulator::{DEMO_API_CODE, Simulator, SimulatorSettings};

use super::{EXIT_FAILURE, Failure};

pub async fn simulate(settings: SimulatorSettings, listen: std::net::SocketAddr) -> Result<(), Failure> {
    cartwatch::logging::init(&cartwatch::config::LoggingConfig {
        level: "warn".into(),
        format: cartwatch::config::LogFormat::Auto,
    });
    let simulator = Simulator::start(settings, listen)
        .await
        .map_err(|error| Failure::new(EXIT_FAILURE, anyhow::anyhow!("cannot listen on {listen}: {error}")))?;
    // The first line is for programs that start the simulator and need its address.
    crate::say!("{}", simulator.base_url());
    crate::say!("apiCode {DEMO_API_CODE}; Titelive domain 00000; see {}/_sim/stats", simulator.base_url());
    let items = simulator.items();
    if !items.is_empty() {
        crate::say!(
            "cart items for `cartwatch items add CART ITEM`: {} (more: POST {}/_sim/items)",
            items.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(" "),
            simulator.base_url()
        );
    }
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("while installing signal handlers")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    simulator.stop().await;
    Ok(())
}
