//! Bounded connections: what keeps connections that do nothing from
//! starving the service of descriptors, on every listener (gRPC and the
//! console, TCP and Unix, TLS or not).
//!
//! Each listener's connections pass a [`Gate`] the moment they are
//! accepted, before any handshake, and are counted until they close:
//! - at most [`ConnectionLimits::max_per_listener`] at once: at the cap, a new
//!   connection makes room by closing the oldest one that has not finished
//!   its handshake or sent a request; only when every connection has, is
//!   the new one closed at once;
//! - a connection must send its first request within
//!   [`ConnectionLimits::first_request`] of being accepted (TLS handshake
//!   included), and one with no request open is closed after
//!   [`ConnectionLimits::idle`] without a new one (an enforcer's sync stream,
//!   a follow stream or a live view is a request open for as long as it
//!   lasts).
//!
//! A connection is closed from below: its reads end (EOF) and its writes
//! fail, so whichever server holds it (tonic, hyper, a TLS handshake) drops
//! it. What counts as a request is told from above: [`Activity::request`]
//! by the server's request layer, for as long as the response body lives.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cassette_service::RulesMetrics;
use futures_util::task::AtomicWaker;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::{Stream, StreamExt};

/// Descriptors kept free of connections: the log's files, etcd's channels,
/// the listeners, the service's own work.
pub const RESERVED_DESCRIPTORS: u64 = 256;
/// How often a gate looks for connections past their deadlines.
const SWEEP: Duration = Duration::from_millis(250);

/// How many connections a listener holds, and how long they may do nothing.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_per_listener: usize,
    /// From accept to the first request (a TLS handshake included); also
    /// how long each HTTP/1 request's headers may take.
    pub first_request: Duration,
    /// With no request open, from the last one's end to the next one's start.
    pub idle: Duration,
}

impl ConnectionLimits {
    pub const DEFAULT_FIRST_REQUEST: Duration = Duration::from_secs(10);
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

    /// `max_per_listener`, or `listeners`' share of the descriptors this
    /// process may open, less [`RESERVED_DESCRIPTORS`].
    pub fn new(
        max_per_listener: Option<usize>,
        listeners: usize,
        first_request: Duration,
        idle: Duration,
    ) -> Self {
        let max_per_listener = max_per_listener.unwrap_or_else(|| {
            let available = descriptor_limit().saturating_sub(RESERVED_DESCRIPTORS);
            let share = available / listeners.max(1) as u64;
            usize::try_from(share).unwrap_or(usize::MAX).max(16)
        });
        Self {
            max_per_listener,
            first_request,
            idle,
        }
    }
}

/// Raises this process's soft descriptor limit to its hard limit (a busy
/// service needs more than the usual 1024); the limit it then has.
pub fn raise_descriptor_limit() -> u64 {
    let Some(limit) = descriptor_rlimit() else {
        return 1024;
    };
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

/// This process's soft descriptor limit.
fn descriptor_limit() -> u64 {
    descriptor_rlimit().map_or(1024, |limit| limit.rlim_cur)
}

fn descriptor_rlimit() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes `limit`.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// What a request learns of its connection: its client's certificate
/// chain, when it presented one (verified by the handshake), and its life
/// (see `connections`).
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
    pub activity: Option<Arc<Activity>>,
}

/// One connection's life, as its gate and its server see it.
#[derive(Debug)]
pub struct Activity {
    id: u64,
    accepted: Instant,
    /// Its TLS handshake finished (at once without TLS).
    established: AtomicBool,
    requests: AtomicU64,
    open: AtomicUsize,
    /// When its last request started or ended.
    last_request: Mutex<Option<Instant>>,
    closing: AtomicBool,
    waker: AtomicWaker,
}

impl Activity {
    /// Its handshake finished.
    pub fn established(&self) {
        self.established.store(true, Ordering::Release);
    }

    /// A request starts; it is open until the guard is dropped (with the
    /// response body, for a stream).
    pub fn request(self: &Arc<Self>) -> OpenRequest {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.open.fetch_add(1, Ordering::AcqRel);
        self.touch();
        OpenRequest(self.clone())
    }

    fn touch(&self) {
        *self.last_request.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether the cap may close it to make room: it has not finished its
    /// handshake, or not sent a request.
    fn evictable(&self) -> bool {
        !self.established.load(Ordering::Acquire) || self.requests.load(Ordering::Acquire) == 0
    }

    /// Why it must close now, if it must.
    fn overdue(&self, limits: &ConnectionLimits, now: Instant) -> Option<&'static str> {
        if self.requests.load(Ordering::Acquire) == 0 {
            return (now.duration_since(self.accepted) > limits.first_request)
                .then_some("no request in time");
        }
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = *self.last_request.lock().unwrap_or_else(|p| p.into_inner());
        last.filter(|last| now.duration_since(*last) > limits.idle)
            .map(|_| "idle")
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// A request open on a connection (see [`Activity::request`]).
#[derive(Debug)]
pub struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A listener's connections: the cap and the deadlines.
#[derive(Clone)]
pub struct Gate(Arc<GateInner>);

struct GateInner {
    limits: ConnectionLimits,
    metrics: Arc<RulesMetrics>,
    next_id: AtomicU64,
    /// By id: oldest first.
    open: Mutex<BTreeMap<u64, Arc<Activity>>>,
}

impl Gate {
    /// A gate for one listener, with a task that closes connections past
    /// their deadlines for as long as the gate is in use.
    pub fn new(limits: ConnectionLimits, metrics: Arc<RulesMetrics>) -> Self {
        let gate = Self(Arc::new(GateInner {
            limits,
            metrics,
            next_id: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
        }));
        let weak = Arc::downgrade(&gate.0);
        tokio::spawn(sweep(weak));
        gate
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.0.limits
    }

    /// Admits `io`, closing the oldest connection that is not established
    /// (or has sent no request) if the listener is at its cap; `None` when
    /// every connection is: then `io` is closed at once.
    pub fn admit<S>(&self, io: S) -> Option<Tracked<S>> {
        let inner = &self.0;
        let mut open = inner.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= inner.limits.max_per_listener {
            let victim = open
                .values()
                .find(|a| a.evictable() && !a.is_closing())
                .cloned();
            match victim {
                Some(victim) => {
                    open.remove(&victim.id);
                    victim.close();
                    inner.metrics.connections_evicted.inc();
                }
                None => {
                    inner.metrics.connections_refused.inc();
                    tracing::warn!(
                        cap = inner.limits.max_per_listener,
                        "every connection is busy: refusing a new one (--max-connections)"
                    );
                    return None;
                }
            }
        }
        let activity = Arc::new(Activity {
            id: inner.next_id.fetch_add(1, Ordering::Relaxed),
            accepted: Instant::now(),
            established: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            last_request: Mutex::new(None),
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        open.insert(activity.id, activity.clone());
        Some(Tracked {
            io,
            activity,
            gate: Arc::downgrade(&self.0),
        })
    }

    /// `accepted` (a listener's connections) through this gate, established
    /// at once unless a TLS handshake follows. An accept that fails (out of
    /// descriptors) is logged and retried after a pause.
    pub fn admit_all<S>(
        &self,
        accepted: impl Stream<Item = io::Result<S>> + Send + 'static,
        tls: bool,
    ) -> impl Stream<Item = io::Result<Tracked<S>>> + Send + 'static
    where
        S: Send + 'static,
    {
        let gate = self.clone();
        let established = move |tracked: Tracked<S>| {
            if !tls {
                tracked.activity().established();
            }
            tracked
        };
        accepted
            .then(|accepted| async move {
                if let Err(error) = &accepted {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                accepted
            })
            .filter_map(move |accepted| match accepted {
                Ok(io) => gate.admit(io).map(established).map(Ok),
                Err(_) => None,
            })
    }
}

/// Closes connections past their deadlines until the gate is dropped.
async fn sweep(gate: Weak<GateInner>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(gate) = gate.upgrade() else { return };
        let now = Instant::now();
        let mut open = gate.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, activity| match activity.overdue(&gate.limits, now) {
            None => true,
            Some(why) => {
                tracing::debug!(reason = why, "closing a connection");
                gate.metrics.connections_timed_out.inc();
                activity.close();
                false
            }
        });
    }
}

/// A connection a [`Gate`] admitted: counted until dropped, and ended from
/// below when the gate closes it.
pub struct Tracked<S> {
    io: S,
    activity: Arc<Activity>,
    gate: Weak<GateInner>,
}

impl<S> Tracked<S> {
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S> Drop for Tracked<S> {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.upgrade() {
            let mut open = gate.open.lock().unwrap_or_else(|p| p.into_inner());
            open.remove(&self.activity.id);
        }
    }
}

impl<S> tonic::transport::server::Connected for Tracked<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        PeerInfo {
            certificates: None,
            activity: Some(self.activity.clone()),
        }
    }
}

/// The tower layer that tells each connection's [`Activity`] of its
/// requests (found in the request's [`PeerInfo`]), open until
/// the response body is done.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackRequests;

impl<S> tower::Layer<S> for TrackRequests {
    type Service = Tracking<S>;

    fn layer(&self, inner: S) -> Tracking<S> {
        Tracking(inner)
    }
}

#[derive(Debug, Clone)]
pub struct Tracking<S>(S);

impl<S, B, R> tower::Service<axum::http::Request<B>> for Tracking<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = axum::http::Response<TrackedBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let open = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.activity.as_ref())
            .map(Activity::request);
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| TrackedBody::new(body, open)))
        })
    }
}

/// A response body that holds its request open until it is done.
#[derive(Debug)]
pub struct TrackedBody<B> {
    body: B,
    _open: Option<OpenRequest>,
}

impl<B> TrackedBody<B> {
    pub fn new(body: B, open: Option<OpenRequest>) -> Self {
        Self { body, _open: open }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the service",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.activity.waker.register(cx.waker());
        if self.activity.is_closing() {
            return Poll::Ready(Ok(())); // end of stream
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.activity.is_closing() {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.activity.is_closing() {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(cap: usize) -> Gate {
        let limits = ConnectionLimits {
            max_per_listener: cap,
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        Gate::new(limits, Arc::new(RulesMetrics::default()))
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_connection_without_a_request_makes_room() {
        let gate = gate(2);
        let a = gate.admit("a").unwrap();
        a.activity().established();
        let _busy = a.activity().request();
        let b = gate.admit("b").unwrap();
        let c = gate.admit("c").expect("b makes room");
        assert!(b.activity().is_closing() && !a.activity().is_closing());
        c.activity().established();
        let _also_busy = c.activity().request();
        assert!(gate.admit("d").is_none(), "every connection is busy");
        drop(b);
        assert!(gate.admit("e").is_none(), "b was no longer counted");
        drop(a);
        assert!(gate.admit("f").is_some(), "a's place is free");
    }

    #[test]
    fn deadlines_are_the_first_request_and_then_idleness() {
        let limits = ConnectionLimits {
            max_per_listener: 10,
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let started = Instant::now();
        let activity = Arc::new(Activity {
            id: 0,
            accepted: started,
            established: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            last_request: Mutex::new(None),
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let later = |s| started + Duration::from_secs(s);
        assert_eq!(activity.overdue(&limits, later(5)), None);
        assert_eq!(
            activity.overdue(&limits, later(11)),
            Some("no request in time")
        );
        let open = activity.request();
        assert_eq!(
            activity.overdue(&limits, later(3600)),
            None,
            "a stream is open"
        );
        drop(open);
        let ended = Instant::now();
        assert_eq!(
            activity.overdue(&limits, ended + Duration::from_secs(59)),
            None
        );
        assert_eq!(
            activity.overdue(&limits, ended + Duration::from_secs(61)),
            Some("idle")
        );
    }
}
