//! Text for people: the `status` summary, one cart in detail, and demo event lines.

use std::fmt::Write;

use crate::outbox::{DeadLetter, DeliveryState, StoredEvent};
use crate::store::{CartDetail, Summary};
use crate::time::format_ts;
use crate::upstream::Mode;

/// The `cartwatch status` summary.
pub fn render_summary(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Carts");
    if summary.carts.is_empty() {
        let _ = writeln!(out, "  none registered yet (cartwatch track <cart-id>)");
    } else {
        let _ = writeln!(out, "  {:<11} {:<14} {:>9}", "state", "status", "carts");
        for (state, status, count) in &summary.carts {
            let status = status.as_deref().map_or("(not seen)".into(), printable);
            let _ = writeln!(out, "  {:<11} {:<14} {:>9}", printable(state), status, count);
        }
    }
    let _ = writeln!(out, "  due now: {}", summary.due_now);
    for (cart_id, reason) in &summary.invalid {
        let _ = writeln!(out, "  invalid: {}: {}", printable(cart_id), printable(reason));
    }

    let _ = writeln!(out, "\nUpstream");
    if summary.upstreams.is_empty() {
        let _ = writeln!(out, "  no requests yet");
    }
    for record in &summary.upstreams {
        let snapshot = &record.snapshot;
        let mut line = format!("  {:<13} {}", record.provider, snapshot.mode.as_str());
        if snapshot.mode != Mode::Healthy {
            if let Some(since) = snapshot.since {
                let _ = write!(line, " since {}", crate::time::format_ts(since));
            }
            if let Some(next) = snapshot.next_probe_at {
                let _ = write!(line, ", next probe at {}", crate::time::format_ts(next));
            }
        }
        if let Some(until) = snapshot.throttled_until {
            let _ = write!(line, ", throttled until {}", crate::time::format_ts(until));
        }
        let _ = write!(line, ", batch size {}", snapshot.batch_size);
        if snapshot.consecutive_failures > 0 {
            let _ = write!(line, ", {} failure(s) in a row", snapshot.consecutive_failures);
        }
        match record.last_success_at {
            Some(at) => {
                let _ = write!(line, ", last answered {}", crate::time::format_ts(at));
            }
            None => line.push_str(", never answered yet"),
        }
        let _ = writeln!(out, "{line}");
        if let Some(error) = &record.last_error {
            let at = record.last_error_at.map(crate::time::format_ts).unwrap_or_default();
            let _ = writeln!(out, "  {:<13} last error {at}: {}", "", printable(error));
        }
    }

    if !summary.members.is_empty() {
        let _ = writeln!(out, "\nDaemons sharing the database");
        for member in &summary.members {
            let _ = writeln!(
                out,
                "  {} (pid {}, version {}) since {}, last seen {}, {} cart(s) claimed",
                printable(&member.host),
                member.pid,
                printable(&member.version),
                crate::time::format_ts(member.started_at),
                crate::time::format_ts(member.last_seen),
                member.carts_claimed
            );
        }
    }

    let _ = writeln!(out, "\nSinks");
    if summary.sinks.is_empty() {
        let _ = writeln!(out, "  none configured");
    }
    for sink in &summary.sinks {
        let _ = writeln!(out, "{}", render_sink_line(sink));
    }
    let _ = writeln!(out, "\nEvents written: {}", summary.events);
    match &summary.last_sweep {
        Some(sweep) => {
            let _ = writeln!(
                out,
                "Last sweep: started {}, {} cart(s), {} request(s), {} failed, {} change(s), {} event(s){}",
                sweep.started_at,
                sweep.carts_polled,
                sweep.requests,
                sweep.failures,
                sweep.transitions,
                sweep.events,
                sweep.stopped_early.as_deref().map(|reason| format!("; stopped early: {reason}")).unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(out, "Last sweep: none yet");
        }
    }
    out
}

/// One sink's delivery figures, and what an operator can do about held or queued events.
pub fn render_sink_line(sink: &crate::store::SinkSummary) -> String {
    let mut line = format!(
        "  {:<20} pending {:>7}  delivered {:>9}  dead {:>6}",
        sink.sink, sink.pending, sink.delivered, sink.dead
    );
    if sink.held > 0 {
        let _ = write!(
            line,
            "  held {} behind dead letters (`cartwatch events redeliver --dead` or `events skip --dead`)",
            sink.held
        );
    }
    if let Some(reason) = &sink.disabled {
        let _ = write!(
            line,
            "  DISABLED: {} (events are queued; `cartwatch webhooks enable {}`)",
            printable(reason),
            sink.sink
        );
    }
    line
}

/// Text from the partner or the database made safe for a terminal: control characters (an
/// escape sequence could recolour or rewrite the screen) are shown escaped, not sent.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect(),
    )
}

/// One cart with its transitions as JSON, camelCase like the webhook payloads: the HTTP
/// API's `GET /v1/carts/{id}` and `cartwatch status ID --json`.
pub fn cart_detail_json(detail: &CartDetail) -> serde_json::Value {
    let cart = &detail.cart;
    serde_json::json!({
        "cartId": cart.cart_id,
        "provider": cart.provider,
        "reference": cart.reference,
        "state": cart.state.as_str(),
        "status": cart.status,
        "orderId": cart.order_id,
        "cartCreatedAt": cart.created_at_raw,
        "registeredAt": format_ts(cart.registered_at),
        "lastPolledAt": cart.last_polled_at.map(format_ts),
        "nextPollAt": cart.next_poll_at.map(format_ts),
        "consecutiveErrors": cart.consecutive_errors,
        "lastError": cart.last_error,
        "transitions": detail.transitions,
    })
}

/// One cart in detail, with its transitions.
pub fn render_cart_detail(detail: &CartDetail) -> String {
    let cart = &detail.cart;
    let mut out = String::new();
    let field = |out: &mut String, name: &str, value: Option<&str>| {
        let _ = writeln!(out, "{name:<18} {}", value.map_or("-".into(), printable));
    };
    field(&mut out, "cart", Some(&cart.cart_id));
    field(&mut out, "provider", Some(&cart.provider));
    field(&mut out, "reference", cart.reference.as_deref());
    field(&mut out, "state", Some(cart.state.as_str()));
    field(&mut out, "status", cart.status.as_deref());
    field(&mut out, "order id", cart.order_id.as_deref());
    field(&mut out, "created (partner)", cart.created_at_raw.as_deref());
    field(&mut out, "registered", Some(&format_ts(cart.registered_at)));
    field(&mut out, "last polled", cart.last_polled_at.map(format_ts).as_deref());
    field(&mut out, "next poll", cart.next_poll_at.map(format_ts).as_deref());
    let errors = cart.consecutive_errors.to_string();
    field(&mut out, "errors in a row", Some(&errors));
    field(&mut out, "last error", cart.last_error.as_deref());
    let _ = writeln!(out, "\nTransitions");
    if detail.transitions.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    for transition in &detail.transitions {
        let _ = writeln!(
            out,
            "  {}  {} -> {}{}{}",
            printable(&transition.detected_at),
            transition.from_status.as_deref().map_or("(unknown)".into(), printable),
            printable(&transition.to_status),
            transition.order_id.as_deref().map(|id| format!("  order {}", printable(id))).unwrap_or_default(),
            transition.event_id.as_deref().map(|id| format!("  event {id}")).unwrap_or_default(),
        );
    }
    out
}

/// The first eight characters of an id and an ellipsis, to keep a line within 80 columns.
fn short(id: &str) -> String {
    let printable = printable(id);
    match printable.char_indices().nth(8) {
        Some((end, _)) => format!("{}…", &printable[..end]),
        None => printable.into_owned(),
    }
}

/// A demo line for an event, within 80 columns: a symbol, the type in words, the cart (its
/// id shortened) and what matters.
pub fn render_event_line(event: &StoredEvent, elapsed: std::time::Duration) -> String {
    let payload: serde_json::Value = serde_json::from_str(&event.payload).unwrap_or_default();
    let data = &payload["data"];
    let text = |key: &str| data[key].as_str().map(str::to_owned);
    let (symbol, words) = match event.event_type.as_str() {
        "cart.checked_out" => ("→", "checked out"),
        "cart.ordered" => ("★", "ordered"),
        "cart.not_found" => ("✗", "not found"),
        "cart.expired" => ("⌛", "expired"),
        "cart.pending" => ("·", "pending"),
        "cart.reopened" => ("↺", "reopened"),
        "cart.ready" => ("✓", "ready"),
        "cart.session_expired" => ("⌛", "session ended"),
        "cart.items_changed" => ("✎", "items changed"),
        "upstream.auth_failed" => ("!", "upstream auth failed"),
        "upstream.auth_recovered" => ("✓", "upstream auth recovered"),
        "webhook.dead_lettered" => ("!", "dead letter"),
        "webhook.endpoint_disabled" => ("!", "endpoint disabled"),
        other => ("•", other),
    };
    let mut line = format!("  {:>6.1}s  {symbol} {words:<12}", elapsed.as_secs_f64());
    if let Some(cart_id) = event.cart_id.as_deref() {
        let _ = write!(line, " {}", short(cart_id));
    }
    if let Some(reference) = text("reference") {
        let _ = write!(line, "  ref {}", printable(&reference));
    }
    if let Some(order_id) = text("orderId") {
        let _ = write!(line, "  order {}", short(&order_id));
    }
    if let Some(message) = text("message") {
        let _ = write!(line, "  {}", printable(&message));
    }
    line
}

/// One event as a text row for `cartwatch events`: position, time, type, cart, and each
/// sink's delivery state.
pub fn render_event_row(event: &StoredEvent, deliveries: &[&DeliveryState]) -> String {
    let mut line = format!(
        "{:>7}  {}  {:<24} {:<36}  {}",
        event.seq,
        printable(&event.created_at),
        printable(&event.event_type),
        event.cart_id.as_deref().map_or("-".into(), printable),
        printable(&event.event_id)
    );
    for delivery in deliveries {
        let _ = write!(line, "  {}:{}", delivery.sink, delivery.state);
        if delivery.state != "delivered" || delivery.attempts > 1 {
            let _ = write!(line, "({} attempt(s))", delivery.attempts);
        }
    }
    line
}

/// One event as a JSON line with its delivery states, for `cartwatch events --json`.
pub fn event_json_with_deliveries(event: &StoredEvent, deliveries: &[&DeliveryState]) -> String {
    let mut value: serde_json::Value =
        serde_json::from_str(&crate::sinks::log::event_line(event)).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(object) = value.as_object_mut() {
        object.insert("deliveries".into(), serde_json::to_value(deliveries).unwrap_or_default());
    }
    value.to_string()
}

/// One dead letter for `cartwatch events dead`.
pub fn render_dead_letter(letter: &DeadLetter) -> String {
    let delivery = &letter.delivery;
    format!(
        "{}  {}  {}  {}  endpoint {}  dead since {}  after {} attempt(s)  last {}: {}",
        letter.event.seq,
        printable(&letter.event.event_id),
        printable(&letter.event.event_type),
        letter.event.cart_id.as_deref().map_or("-".into(), printable),
        printable(&delivery.sink),
        delivery.dead_at.as_deref().map_or("?".into(), printable),
        delivery.attempts,
        delivery.last_status.map_or("no answer".to_owned(), |status| format!("HTTP {status}")),
        delivery.last_error.as_deref().map_or("-".into(), printable),
    )
}

/// One cart item as confirmed by the partner.
pub fn render_cart_item(item: &crate::provider::imaterialise::items::CartItem) -> String {
    let price = |price: Option<rust_decimal::Decimal>| price.map_or("-".to_owned(), |p| p.to_string());
    format!(
        "  {}  quantity {}  your price {} {}  i.materialise price {}{}",
        item.cart_item_id,
        item.quantity.map_or("-".to_owned(), |q| q.to_string()),
        price(item.my_sales_unit_price),
        item.currency.as_deref().unwrap_or(""),
        price(item.imat_unit_price),
        item.valid_until.as_deref().map(|until| format!("  valid until {until}")).unwrap_or_default(),
    )
}

/// One recorded item change for `cartwatch items list`.
pub fn render_item_change(change: &crate::store::ItemChange) -> String {
    format!(
        "{}  {:<6} {}  quantity {}  your price {} {}  i.materialise price {}",
        change.changed_at,
        change.action,
        change.cart_item_id,
        change.quantity.map_or("-".to_owned(), |q| q.to_string()),
        change.my_sales_unit_price.as_deref().unwrap_or("-"),
        change.currency.as_deref().unwrap_or(""),
        change.imat_unit_price.as_deref().unwrap_or("-"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(printable("Pending"), "Pending");
        let shown = printable("Pend\u{1b}[2J\u{1b}]0;owned\u{7}ing\r\n");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
    }
}
