//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format, with
//! the names of RabbitMQ's `rabbitmq_prometheus` plugin for what warren
//! has, so that alert rules and dashboards can be tested against warren.
//! Like RabbitMQ's, the endpoint needs no credentials. Queue metrics carry
//! `vhost` and `queue` labels (RabbitMQ's per-object metrics); every value
//! is read at the moment of the scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Http;

type Labels = Vec<(String, String)>;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// A counter named without its `_total`, which the encoder adds.
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64, AtomicU64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

pub(super) async fn metrics(State(http): State<Arc<Http>>) -> Response {
    let b = &http.broker;
    let mut registry = Registry::default();
    let queues = b.queue_infos();
    let per_queue = |registry: &mut Registry,
                     name: &str,
                     help: &str,
                     value: &dyn Fn(&crate::broker::inspect::QueueInfo) -> usize| {
        let family = Family::<Labels, Gauge>::default();
        for q in &queues {
            let labels = vec![("vhost".to_string(), q.vhost.clone()), ("queue".to_string(), q.name.clone())];
            family.get_or_create(&labels).set(value(q) as i64);
        }
        registry.register(name, help, family);
    };
    per_queue(&mut registry, "rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers", &|q| {
        q.messages_ready
    });
    per_queue(
        &mut registry,
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        &|q| q.messages_unacknowledged,
    );
    per_queue(&mut registry, "rabbitmq_queue_messages", "Sum of ready and unacknowledged messages", &|q| {
        q.messages_ready + q.messages_unacknowledged
    });
    per_queue(&mut registry, "rabbitmq_queue_consumers", "Consumers on a queue", &|q| q.consumers.len());
    let connections = b.connections.all();
    let channels: usize = connections.iter().map(|c| c.info().channels.len()).sum();
    gauge(&mut registry, "rabbitmq_queues", "Queues available", queues.len() as i64);
    gauge(&mut registry, "rabbitmq_connections", "Connections currently open", connections.len() as i64);
    gauge(&mut registry, "rabbitmq_channels", "Channels currently open", channels as i64);
    let consumers: usize = queues.iter().map(|q| q.consumers.len()).sum();
    gauge(&mut registry, "rabbitmq_consumers", "Consumers currently connected", consumers as i64);
    let t = &b.totals;
    let m = b.connections.messages();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for (name, help, value) in [
        (
            "rabbitmq_global_messages_received",
            "Total number of messages received from publishers",
            m.published + load(&t.http_published),
        ),
        ("rabbitmq_global_messages_delivered", "Total number of messages delivered to consumers", m.delivered),
        ("rabbitmq_global_messages_acknowledged", "Total number of messages acknowledged by consumers", m.acknowledged),
        ("rabbitmq_connections_opened", "Total number of connections opened", load(&t.connections_opened)),
        (
            "rabbitmq_connections_closed",
            "Total number of connections closed or terminated",
            load(&t.connections_closed),
        ),
        ("warren_heartbeat_timeouts", "Connections closed for missed heartbeats", load(&t.heartbeat_timeouts)),
    ] {
        counter(&mut registry, name, help, value);
    }
    let alarm = b.alarms.current().memory;
    gauge(
        &mut registry,
        "rabbitmq_alarms_memory_used_watermark",
        "is set to 1 when the memory alarm is on",
        i64::from(alarm),
    );
    let resident = crate::broker::alarm::resident_memory().unwrap_or(0);
    gauge(&mut registry, "rabbitmq_process_resident_memory_bytes", "Memory used in bytes", resident as i64);
    let limit = b.alarms.watermark().unwrap_or(0);
    gauge(&mut registry, "rabbitmq_resident_memory_limit_bytes", "Memory high watermark in bytes", limit as i64);
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}
