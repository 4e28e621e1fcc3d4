//! Metrics on `prometheus-client` (OpenMetrics text), with the few shapes the
//! services use (counters, gauges, latency histograms in seconds), and the
//! `/metrics` endpoint on axum, the HTTP stack the console also runs on.
//!
//! Each service keeps its metrics in one struct of handles registered once in
//! a [`Registry`] under the names they have always had; counters are
//! registered without their `_total` suffix, which the encoder adds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::{counter, gauge, histogram};
use tokio::net::TcpListener;

pub use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds in seconds, from 100 µs to 10 s.
const LATENCY_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

#[derive(Debug, Default, Clone)]
pub struct Counter(counter::Counter);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }

    /// Registers as `name` (which ends in `_total`, as it is exposed).
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        let name = name.strip_suffix("_total").unwrap_or(name);
        registry.register(name, help_text(help), self.0.clone());
    }
}

#[derive(Debug, Default, Clone)]
pub struct Gauge(gauge::Gauge);

impl Gauge {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn dec(&self) {
        self.0.dec();
    }

    pub fn get(&self) -> i64 {
        self.0.get()
    }

    pub fn set(&self, value: i64) {
        self.0.set(value);
    }

    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help_text(help), self.0.clone());
    }
}

/// A latency histogram in seconds with fixed buckets (100 µs to 10 s).
#[derive(Debug, Clone)]
pub struct Histogram(histogram::Histogram);

impl Default for Histogram {
    fn default() -> Self {
        Self(histogram::Histogram::new(LATENCY_BOUNDS))
    }
}

impl Histogram {
    pub fn observe(&self, value: Duration) {
        self.0.observe(value.as_secs_f64());
    }

    /// Registers as `name` (which ends in `_seconds`).
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help_text(help), self.0.clone());
    }
}

/// prometheus-client ends every help text with a period of its own.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// The registry's metrics in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(%error, "cannot encode metrics");
    }
    out
}

/// A handler for `GET /metrics`.
pub async fn respond(text: String) -> axum::response::Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// Serves `GET /metrics` with `render()`'s text until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move { respond(render()).await }
        }),
    );
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(%error, "metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn names_stay_and_histogram_buckets_are_cumulative() {
        let mut registry = Registry::default();
        let h = Histogram::default();
        h.register(&mut registry, "lat_seconds", "Test latency.");
        let c = Counter::default();
        c.register(&mut registry, "things_total", "things");
        let g = Gauge::default();
        g.register(&mut registry, "open_things", "open");
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        c.add(7);
        g.inc();
        let out = encode(&registry);
        assert!(
            out.contains("lat_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("lat_seconds_bucket{le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("lat_seconds_bucket{le=\"10.0\"} 2\n"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("lat_seconds_count 3\n"), "{out}");
        assert!(out.contains("things_total 7\n"), "{out}");
        assert!(out.contains("open_things 1\n"), "{out}");
        assert!(out.contains("# HELP lat_seconds Test latency.\n"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counter = Counter::default();
        let mut registry = Registry::default();
        counter.register(&mut registry, "things_total", "things");
        counter.add(7);
        let registry = Arc::new(registry);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(move || encode(&registry)),
            async {
                let _ = stopped.await;
            },
        ));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("openmetrics-text"), "{response}");
        assert!(response.contains("things_total 7\n"), "{response}");
        let _ = stop.send(());
        server.await.unwrap();
    }
}
