//! `/metrics` in Prometheus text format: the core's counts, read at scrape time
//! from its snapshot, and request latencies by route, method and status (timed
//! in front of the router, by `front`).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use registry_core::{AgentStatus, CommandStatus, Registry};

/// The metrics registry of one server.
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    requests: Family<RequestLabels, Histogram>,
    connections: ConnectionMetrics,
}

/// What the connection layer counts, shared with the accept loop.
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: Gauge,
    closed: Family<[(&'static str, &'static str); 1], Counter>,
}

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy)]
pub enum CloseReason {
    /// Idle longest when a new connection arrived at `server.max_connections`.
    Evicted,
    /// Arrived at `server.max_connections` with no connection idle.
    Refused,
    /// Its request head did not arrive whole within `server.head_timeout`.
    HeadTimeout,
    /// Idle for `server.idle_timeout`.
    IdleTimeout,
}

impl ConnectionMetrics {
    const REASONS: [CloseReason; 4] = [
        CloseReason::Evicted,
        CloseReason::Refused,
        CloseReason::HeadTimeout,
        CloseReason::IdleTimeout,
    ];

    /// Every series at 0, so that each is listed before its first count.
    fn new() -> Self {
        let metrics = Self {
            open: Gauge::default(),
            closed: Family::default(),
        };
        for reason in Self::REASONS {
            let _ = metrics.closed.get_or_create(&Self::labels(reason));
        }
        metrics
    }

    fn labels(reason: CloseReason) -> [(&'static str, &'static str); 1] {
        let reason = match reason {
            CloseReason::Evicted => "evicted",
            CloseReason::Refused => "refused",
            CloseReason::HeadTimeout => "head_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
        };
        [("reason", reason)]
    }

    /// Sets the number of open connections.
    pub fn set_open(&self, open: usize) {
        self.open.set(as_i64(open));
    }

    /// Counts a connection the server closed.
    pub fn closed(&self, reason: CloseReason) {
        self.closed.get_or_create(&Self::labels(reason)).inc();
    }
}

/// The labels of one request's latency. Built once per route, method and
/// status (see [`TimedRoute`]); hashes the template by its address: each
/// route's template is one `Arc`.
#[derive(Clone, Debug)]
struct RequestLabels {
    method: Method,
    route: Arc<str>,
    status: u16,
}

impl PartialEq for RequestLabels {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method
            && Arc::ptr_eq(&self.route, &other.route)
            && self.status == other.status
    }
}

impl Eq for RequestLabels {}

impl Hash for RequestLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.method.hash(state);
        Arc::as_ptr(&self.route).cast::<u8>().hash(state);
        self.status.hash(state);
    }
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        ("method", self.method.as_str()).encode(encoder.encode_label())?;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("status", self.status).encode(encoder.encode_label())
    }
}

impl Metrics {
    /// Metrics over `registry`'s counts.
    pub fn new(registry: Registry) -> Self {
        let requests = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 50 µs to about 13 s.
            Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
        });
        let mut metrics = prometheus_client::registry::Registry::default();
        metrics.register(
            "registry_http_request_duration_seconds",
            "Time from a request's arrival to its response head, by route",
            requests.clone(),
        );
        metrics.register_collector(Box::new(CoreCollector(registry)));
        let connections = ConnectionMetrics::new();
        metrics.register(
            "registry_connections",
            "Connections open now",
            connections.open.clone(),
        );
        metrics.register(
            "registry_connections_closed",
            "Connections the server closed itself, by reason",
            connections.closed.clone(),
        );
        Self {
            registry: metrics,
            requests,
            connections,
        }
    }

    /// The connection layer's metrics.
    pub fn connections(&self) -> &ConnectionMetrics {
        &self.connections
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// A request being timed, from its arrival to its response head.
pub struct Timing {
    route: Arc<TimedRoute>,
    started: Instant,
    method: Method,
}

impl Timing {
    /// Records the request's latency, answered with `status`.
    pub fn answered(self, status: u16) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.route.series(self.method, status).observe(seconds);
    }
}

/// One timed route: its template and the histograms of its requests by method
/// and status, which are the family's own series (a `Histogram` clone shares
/// its counts), so `/metrics` lists them as before. A route sees a handful of
/// (method, status) pairs: a request finds its histogram by a short scan of
/// them under a read lock, without hashing its labels into the family's map.
pub struct TimedRoute {
    template: Arc<str>,
    family: Family<RequestLabels, Histogram>,
    series: RwLock<Vec<(Method, u16, Histogram)>>,
}

impl TimedRoute {
    /// The histogram of this route's requests by `method`, answered `status`;
    /// taken from the family, and kept, the first time.
    fn series(&self, method: Method, status: u16) -> Histogram {
        let known = |series: &[(Method, u16, Histogram)]| {
            series
                .iter()
                .find(|(m, s, _)| *s == status && *m == method)
                .map(|(_, _, histogram)| histogram.clone())
        };
        if let Some(histogram) = known(&self.series.read().unwrap_or_else(PoisonError::into_inner))
        {
            return histogram;
        }
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(histogram) = known(&series) {
            return histogram;
        }
        let labels = RequestLabels {
            method: method.clone(),
            route: self.template.clone(),
            status,
        };
        let histogram = self.family.get_or_create(&labels).clone();
        series.push((method, status, histogram.clone()));
        histogram
    }

    /// Starts timing a request to this route.
    pub fn time(self: &Arc<Self>, method: &Method) -> Timing {
        Timing {
            route: self.clone(),
            started: Instant::now(),
            method: method.clone(),
        }
    }
}

/// The templates of the API's routes (the routes timed), matched against a
/// request's path to label its latency. Built from the very routes the router
/// serves (their OpenAPI paths, which `utoipa_axum` registers with axum too),
/// and matched by the same matcher axum uses.
pub struct ApiRoutes(matchit::Router<Arc<TimedRoute>>);

impl ApiRoutes {
    /// The routes of `templates`, timed into `metrics`.
    pub fn new<'a>(metrics: &Metrics, templates: impl IntoIterator<Item = &'a String>) -> Self {
        let mut routes = matchit::Router::new();
        for template in templates {
            let route = TimedRoute {
                template: Arc::from(template.as_str()),
                family: metrics.requests.clone(),
                series: RwLock::default(),
            };
            // The router refused any template matchit can't take, at start.
            let _ = routes.insert(template.as_str(), Arc::new(route));
        }
        Self(routes)
    }

    /// The route `path` matches, if any.
    pub fn matching(&self, path: &str) -> Option<&Arc<TimedRoute>> {
        self.0.at(path).ok().map(|matched| matched.value)
    }
}

/// Reads the core's snapshot at scrape time, so nothing is counted twice.
struct CoreCollector(Registry);

impl fmt::Debug for CoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CoreCollector")
    }
}

/// Writes one gauge family, a value per label set.
fn gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], usize)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(as_i64(*value)).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes one gauge without labels.
fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: usize) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(as_i64(value)).encode(metric)
}

/// Writes one counter family, a value per label set.
fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], u64)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes one counter without labels.
fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn as_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The transitions the lifecycle can make.
const TRANSITIONS: [(AgentStatus, AgentStatus); 4] = [
    (AgentStatus::Live, AgentStatus::Stale),
    (AgentStatus::Stale, AgentStatus::Dead),
    (AgentStatus::Stale, AgentStatus::Live),
    (AgentStatus::Dead, AgentStatus::Live),
];

impl Collector for CoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.0.stats();
        let agent_labels = AgentStatus::ALL.map(|status| [("status", status.as_str())]);
        let agents: Vec<_> = AgentStatus::ALL
            .iter()
            .zip(&agent_labels)
            .map(|(status, labels)| (&labels[..], stats.agents_in(*status)))
            .collect();
        gauges(&mut encoder, "registry_agents", "Agents by status", &agents)?;

        let command_labels = CommandStatus::ALL.map(|status| [("status", status.as_str())]);
        let commands: Vec<_> = CommandStatus::ALL
            .iter()
            .zip(&command_labels)
            .map(|(status, labels)| (&labels[..], stats.commands_in(*status)))
            .collect();
        gauges(
            &mut encoder,
            "registry_commands",
            "Commands retained, by status",
            &commands,
        )?;
        gauge(
            &mut encoder,
            "registry_command_payload_bytes",
            "Payload bytes retained (a rollout's payload once), bounded by commands.max_retained_bytes",
            stats.payload_bytes,
        )?;
        gauge(
            &mut encoder,
            "registry_open_streams",
            "Agent streams open now",
            stats.open_streams,
        )?;
        gauge(
            &mut encoder,
            "registry_brake_engaged",
            "1 while the brake holds every STALE -> DEAD (a mass failure), else 0",
            usize::from(stats.brake_engaged),
        )?;
        gauge(
            &mut encoder,
            "registry_brake_held_agents",
            "STALE agents whose STALE -> DEAD the brake holds",
            stats.brake_held,
        )?;
        gauge(
            &mut encoder,
            "registry_scheduled_deadlines",
            "Lifecycle, expiry and retention deadlines scheduled",
            stats.scheduled_deadlines,
        )?;

        let transition_labels =
            TRANSITIONS.map(|(from, to)| [("from", from.as_str()), ("to", to.as_str())]);
        let transitions: Vec<_> = TRANSITIONS
            .iter()
            .zip(&transition_labels)
            .map(|((from, to), labels)| (&labels[..], stats.transitions_between(*from, *to)))
            .collect();
        counters(
            &mut encoder,
            "registry_transitions",
            "Lifecycle transitions",
            &transitions,
        )?;
        counter(
            &mut encoder,
            "registry_heartbeats",
            "Heartbeats accepted",
            stats.heartbeats,
        )?;
        counter(
            &mut encoder,
            "registry_registrations",
            "Registrations, new and resumed",
            stats.registrations,
        )?;
        counter(
            &mut encoder,
            "registry_commands_created",
            "Commands created",
            stats.commands_created,
        )?;
        counter(
            &mut encoder,
            "registry_stream_replacements",
            "Streams ended because a newer one for the same agent replaced them",
            stats.stream_replacements,
        )?;
        counter(
            &mut encoder,
            "registry_slow_streams_closed",
            "Streams closed because their reader fell a whole queue behind",
            stats.slow_streams_closed,
        )?;
        Ok(())
    }
}
