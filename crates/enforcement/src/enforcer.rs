//! The sync loop: hello, fold, apply, ack; reconnect with backoff; repair drift.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use cassette_model::{fold, Event, Firewall, InstanceId};
use cassette_proto::pb::enforcer_service_client::EnforcerServiceClient;
use cassette_proto::pb::sync_request::Message;
use cassette_proto::{event_from_pb, pb, Keepalive, Target};
use cassette_ruleset::{Ruleset, TableName};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig};
use tracing::{info, info_span, warn, Instrument};

use crate::report::Reporter;
use crate::{EnforcerMetrics, Kernel, KernelError, StateFile};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Events kept for the next journal record while saves fail; past this, the
/// next save that works compacts instead.
const MAX_UNSAVED: usize = 10_000;

/// A save running off the runtime, beside a kernel transaction.
struct SaveInFlight {
    /// The state file back, the outcome, and how long the save itself took.
    handle: tokio::task::JoinHandle<(
        StateFile,
        Result<crate::Saving, crate::StateError>,
        Duration,
    )>,
    /// The revision and number of local reverts it saves.
    key: (u64, usize),
    started: Instant,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The rules service's endpoints (replicas): a session uses one, and the
    /// next session after a failure tries the next.
    pub rules: Vec<Target>,
    /// How a dead connection to the rules service is noticed.
    pub keepalive: Keepalive,
    /// TLS to the rules service: the CA to check it with and this enforcer's
    /// certificate (`spiffe://<trust-domain>/enforcer/<instance>`).
    pub tls: ClientTls,
    pub instance: InstanceId,
    /// Names this process in the service's logs.
    pub enforcer_id: String,
    pub table: TableName,
    /// How often the table is read back and repaired if it drifted.
    pub refresh_interval: Duration,
    /// How often the table's hit counters are reported while connected.
    pub report_interval: Duration,
    /// Where what was applied is saved after each apply and put back in force
    /// at start-up (`None`: nothing is saved; a restart starts from the
    /// defaults, or from what the kernel still holds).
    pub state_dir: Option<PathBuf>,
}

/// TLS to the rules service, replaceable while the enforcer runs (a renewed
/// certificate, on SIGHUP): each new connection uses what it holds then; an
/// open stream goes on with what it was made with. Empty: plaintext.
#[derive(Debug, Clone, Default)]
pub struct ClientTls(Arc<RwLock<Option<ClientTlsConfig>>>);

impl ClientTls {
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Self(Arc::new(RwLock::new(tls)))
    }

    pub fn current(&self) -> Option<ClientTlsConfig> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The next connection uses `tls`.
    pub fn replace(&self, tls: ClientTlsConfig) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(tls);
    }

    pub fn is_some(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// One instance's enforcer. Owns the kernel backend and what it knows is in it.
pub struct Enforcer<K: Kernel> {
    config: Config,
    /// `None` only while a blocking kernel call has it.
    kernel: Option<K>,
    /// The folded firewall: every event received so far.
    firewall: Option<Firewall>,
    /// Unconfirmed changes (their revisions) this enforcer reverted itself,
    /// their revert time having passed while it could reach no rules
    /// service: the kernel holds the firewall with them undone until the log
    /// settles them (the service's own revert, or a confirmation it took in
    /// time).
    locally_reverted: Vec<u64>,
    /// What the kernel holds, as far as this process knows (`None`: unknown,
    /// so the next apply replaces the table).
    in_kernel: Option<Ruleset>,
    /// A repair failed: the kernel may not hold `in_kernel`. The next Hello
    /// says revision 0, so the service resends everything (and shows PENDING,
    /// then the outcome), and the next apply replaces the whole table.
    kernel_unsure: bool,
    /// The saved state, when `config.state_dir` is set (`None` also while a
    /// save runs).
    state: Option<StateFile>,
    /// The events folded since the last save, in order: the next journal
    /// record.
    unsaved: Vec<pb::Event>,
    /// The revision (and local reverts) last saved or restored.
    saved_revision: Option<(u64, usize)>,
    /// Why the saved state was not trusted at start-up: told to the service
    /// in each Hello until a good state has been saved.
    state_error: Option<String>,
    /// Saving has been failing (one warning per run of failures).
    save_failing: bool,
    /// Remembers hit counts between reports.
    reporter: Reporter,
    metrics: Arc<EnforcerMetrics>,
    /// A shared connection to use instead of dialing `config.rules` (many
    /// simulated enforcers multiplexed over a few connections).
    channel: Option<Channel>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] cassette_proto::TargetError),
    #[error("sync stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the rules service closed the stream")]
    Closed,
    #[error("event stream does not fold: {0}")]
    Fold(String),
    #[error("no rules service endpoint is configured")]
    NoEndpoint,
    #[error("the table could not be repaired: resyncing from revision 0 to report it")]
    RepairFailed,
    #[error("an unconfirmed change reached its revert time before a stream opened")]
    RevertDue,
}

impl<K: Kernel> Enforcer<K> {
    pub fn new(config: Config, kernel: K) -> Self {
        let state = config
            .state_dir
            .as_ref()
            .map(|dir| StateFile::new(dir, &config.table));
        Self {
            config,
            kernel: Some(kernel),
            firewall: None,
            locally_reverted: Vec::new(),
            in_kernel: None,
            kernel_unsure: false,
            state,
            unsaved: Vec::new(),
            saved_revision: None,
            state_error: None,
            save_failing: false,
            reporter: Reporter::default(),
            metrics: Arc::default(),
            channel: None,
        }
    }

    /// Streams over `channel` (an HTTP/2 connection shared with others)
    /// instead of dialing the rules service itself.
    pub fn with_channel(mut self, channel: Channel) -> Self {
        self.channel = Some(channel);
        self
    }

    pub fn metrics(&self) -> Arc<EnforcerMetrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` resolves. The kernel keeps its last ruleset when
    /// the enforcer stops or loses the rules service (fail-static).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        self.start().await;
        let mut backoff = BACKOFF_START;
        let mut sessions = 0u64;
        let mut endpoint = 0usize;
        let mut last_restore = Instant::now();
        loop {
            if sessions > 0 {
                self.metrics.reconnects.inc();
            }
            sessions += 1;
            let started = Instant::now();
            let session = self.session(endpoint);
            let result = tokio::select! {
                _ = &mut shutdown => return,
                result = session => result,
            };
            match result {
                Err(SessionError::RevertDue) => self.revert_locally().await,
                Err(error) => {
                    warn!(%error, "sync session ended");
                    // One endpoint down or unreachable: the next session tries another.
                    endpoint = endpoint.wrapping_add(1);
                }
                Ok(()) => {}
            }
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_START;
            }
            let pause = jitter(backoff);
            info!(pause_ms = pause.as_millis() as u64, "reconnecting");
            let wake = Instant::now() + pause;
            loop {
                // Disconnected, the table is still looked after, and a change
                // nobody confirmed in time is undone here.
                let next_restore = last_restore + self.config.refresh_interval;
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep_until(wake.into()) => break,
                    _ = tokio::time::sleep_until(next_restore.into()) => {
                        self.keep_in_force().await;
                        last_restore = Instant::now();
                    }
                    () = sleep_until_wall(self.next_local_revert()) => self.revert_locally().await,
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Before the first sync: the saved state, when there is one to trust
    /// (an instance that rebooted keeps its firewall without the rules
    /// service); otherwise the defaults on an empty kernel.
    async fn start(&mut self) {
        let Some(state) = self.state.as_ref().map(|s| s.paths().clone()) else {
            return self.install_defaults_if_empty().await;
        };
        match state.load_off_runtime(&self.config.instance).await {
            Ok(Some(saved)) => self.restore_saved(saved).await,
            Ok(None) => {
                info!(
                    path = %state.snapshot().display(),
                    "no saved state: this instance has not synced here before"
                );
                self.install_defaults_if_empty().await;
            }
            Err(error) => {
                self.metrics.state_rejections.inc();
                warn!(
                    %error,
                    "not trusting the saved state: the kernel keeps its table (the defaults if it has none) and the enforcer resyncs from revision 0"
                );
                self.state_error = Some(error.to_string());
                self.install_defaults_if_empty().await;
            }
        }
    }

    /// Puts a saved firewall in force (one transaction), unless the backend
    /// can vouch that the kernel already holds it (nft cannot, for a table a
    /// previous process built: it replaces it once). The Hello then carries
    /// its revision: nothing is replayed if nothing changed.
    async fn restore_saved(&mut self, saved: crate::Saved) {
        let revision = saved.firewall.revision;
        self.saved_revision = Some((revision, saved.locally_reverted.len()));
        self.firewall = Some(saved.firewall);
        self.locally_reverted = saved.locally_reverted;
        let desired = self.desired();
        let d = desired.clone();
        if let Ok(true) = self.kernel_call(move |k| k.holds(&d)).await {
            info!(revision, "the kernel holds the saved state");
            self.in_kernel = Some(desired);
            self.metrics.state_restores.inc();
            return;
        }
        self.metrics.table_replacements.inc();
        let d = desired.clone();
        match self.kernel_call(move |k| k.replace(&d)).await {
            Ok(()) => {
                info!(
                    revision,
                    "put the saved state in force before reaching the rules service"
                );
                self.in_kernel = Some(desired);
                self.metrics.state_restores.inc();
            }
            Err(error) => {
                self.metrics.failed_applies.inc();
                warn!(%error, revision, "cannot put the saved state in force; retrying, and reporting once connected");
            }
        }
    }

    /// The product promises a firewall on by default: before the first sync,
    /// an empty kernel gets the default rules.
    async fn install_defaults_if_empty(&mut self) {
        let exists = self.kernel_call(|k| k.exists()).await;
        match exists {
            Ok(true) => info!("table present; it stays until the first sync replaces it"),
            Ok(false) => {
                let defaults = Ruleset::defaults();
                let d = defaults.clone();
                match self.kernel_call(move |k| k.replace(&d)).await {
                    Ok(()) => {
                        info!("installed the default rules before the first sync");
                        self.in_kernel = Some(defaults);
                    }
                    Err(error) => warn!(%error, "cannot install the default rules"),
                }
            }
            Err(error) => warn!(%error, "cannot read the table"),
        }
    }

    fn revision(&self) -> u64 {
        self.firewall.as_ref().map_or(0, |f| f.revision)
    }

    async fn session(&mut self, endpoint: usize) -> Result<(), SessionError> {
        let channel = match &self.channel {
            Some(channel) => channel.clone(),
            None => {
                let Some(target) = self
                    .config
                    .rules
                    .get(endpoint % self.config.rules.len().max(1))
                else {
                    return Err(SessionError::NoEndpoint);
                };
                info!(rules = %target, "connecting");
                tokio::time::timeout_at(
                    wall_deadline(self.next_local_revert()),
                    target.dial(self.config.tls.current().as_ref(), self.config.keepalive),
                )
                .await
                .map_err(|_| SessionError::RevertDue)??
            }
        };
        let mut client = EnforcerServiceClient::new(channel);
        let (acks, outbound) = mpsc::channel(16);
        // The hash vouches for the revision only when the kernel is known to
        // hold exactly its ruleset (not after a failed apply or repair).
        let desired = self.desired();
        let holds_folded = !self.kernel_unsure
            && self.firewall.is_some()
            && self.locally_reverted.is_empty()
            && self.in_kernel.as_ref() == Some(&desired);
        if !self.locally_reverted.is_empty() {
            info!(
                reverted = ?self.locally_reverted,
                "telling the rules service about the changes reverted here while it was out of reach"
            );
        }
        let hello = pb::SyncRequest {
            message: Some(Message::Hello(pb::Hello {
                instance_id: self.config.instance.to_string(),
                applied_revision: if self.kernel_unsure {
                    0
                } else {
                    self.revision()
                },
                enforcer_id: self.config.enforcer_id.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                applied_ruleset_hash: if holds_folded {
                    desired.hash()
                } else {
                    String::new()
                },
                state_error: self.state_error.clone().unwrap_or_default(),
                locally_reverted: self.locally_reverted.clone(),
            })),
        };
        let _ = acks.send(hello).await;
        // Until a stream is open, a change nobody confirmed is undone here
        // when its revert time comes (dialing a frozen or cut-off service
        // can take long).
        let opened = tokio::time::timeout_at(
            wall_deadline(self.next_local_revert()),
            client.sync(ReceiverStream::new(outbound)),
        )
        .await
        .map_err(|_| SessionError::RevertDue)?;
        let mut inbound = opened?.into_inner();
        info!(revision = self.revision(), "sync stream open");

        // A previous apply may have failed: try again now that we can report
        // it (an unsure kernel is re-applied when the history arrives).
        if !self.kernel_unsure
            && self.firewall.is_some()
            && self.in_kernel.as_ref() != Some(&self.desired())
        {
            self.apply_and_ack(&acks, None).await;
        }
        let mut refresh = tokio::time::interval(self.config.refresh_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        let mut report = tokio::time::interval(self.config.report_interval);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first report comes one interval in (or when asked), not with
        // every reconnect; the first reading of the process is its baseline.
        report.tick().await;
        if !self.reporter.has_baseline() {
            let counters = self.kernel_call(|k| k.counters()).await.unwrap_or(None);
            self.reporter.baseline(counters, SystemTime::now());
        }
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let first = message?.ok_or(SessionError::Closed)?;
                    let mut report_now = first.report_now;
                    let mut events = first.events;
                    // Batch whatever else has already arrived into one transaction.
                    while let Some(next) = inbound.message().now_or_never() {
                        let next = next?.ok_or(SessionError::Closed)?;
                        report_now |= next.report_now;
                        events.extend(next.events);
                    }
                    if !events.is_empty() {
                        let arrived = Instant::now();
                        self.metrics.events_received.add(events.len() as u64);
                        self.fold_events(events)?;
                        let folded = arrived.elapsed();
                        self.apply_and_ack(&acks, Some((arrived, folded))).await;
                    }
                    if report_now {
                        self.report(&acks).await;
                    }
                }
                _ = refresh.tick() => self.repair_drift(&acks).await?,
                _ = report.tick() => self.report(&acks).await,
            }
        }
    }

    fn fold_events(&mut self, events: Vec<pb::Event>) -> Result<(), SessionError> {
        for wire in events {
            let event: Event = event_from_pb(&wire)
                .map_err(|e| SessionError::Fold(format!("event {}: {e}", wire.revision)))?;
            if event.revision == 1 && self.revision() >= 1 {
                // The service resends the history from the start: its log is
                // behind what this enforcer applied (restored from a backup),
                // or differs from it. Its answer wins.
                warn!(
                    applied_revision = self.revision(),
                    "the rules service resends the history from revision 1 (its log is behind, or differs from, what this enforcer applied): its log wins, starting over"
                );
                self.metrics.history_resends.inc();
                self.firewall = None;
                self.saved_revision = None;
                self.unsaved.clear();
            }
            if event.revision <= self.revision() {
                continue; // already folded (a resend after reconnect)
            }
            match fold(self.firewall.take(), &event) {
                Ok(firewall) => {
                    self.firewall = Some(firewall);
                    if self.state.is_some() && self.unsaved.len() < MAX_UNSAVED {
                        self.unsaved.push(wire);
                    }
                }
                Err(error) => {
                    // Start over from scratch on the next connection.
                    self.firewall = None;
                    self.saved_revision = None;
                    self.unsaved.clear();
                    self.in_kernel = None;
                    return Err(SessionError::Fold(error.to_string()));
                }
            }
        }
        self.settle_local_reverts();
        Ok(())
    }

    /// Forgets the local reverts the log has settled: the service's own
    /// revert (the log now agrees), or a confirmation it took before the
    /// revert time (the log wins: the change is put back in force).
    fn settle_local_reverts(&mut self) {
        // What settles a revert is a new event: the next save sees a new
        // revision and saves.
        let firewall = self.firewall.as_ref();
        self.locally_reverted.retain(|revision| {
            let open =
                firewall.is_some_and(|f| f.unconfirmed().iter().any(|c| c.revision == *revision));
            if !open {
                info!(
                    reverted_revision = revision,
                    "the log has settled a change reverted here"
                );
            }
            open
        });
    }

    /// The earliest revert time of an unconfirmed change not yet reverted here.
    fn next_local_revert(&self) -> Option<SystemTime> {
        self.firewall
            .as_ref()?
            .unconfirmed()
            .iter()
            .filter(|c| !self.locally_reverted.contains(&c.revision))
            .map(|c| c.revert_time)
            .min()
    }

    /// Undoes the unconfirmed changes whose revert time has passed (no rules
    /// service being reachable to do it), puts that in force, and saves it.
    async fn revert_locally(&mut self) {
        let now = SystemTime::now();
        let Some(firewall) = self.firewall.as_ref() else {
            return;
        };
        let due: Vec<u64> = firewall
            .due_reverts(now)
            .map(|c| c.revision)
            .filter(|r| !self.locally_reverted.contains(r))
            .collect();
        if due.is_empty() {
            return;
        }
        for revision in &due {
            warn!(
                instance_id = %self.config.instance,
                reverted_revision = revision,
                "an unconfirmed change passed its revert time while no rules service was reachable: reverted it here"
            );
            self.metrics.local_reverts.inc();
        }
        self.locally_reverted.extend(due);
        let desired = self.desired();
        let span = info_span!("apply", instance_id = %self.config.instance, revision = self.revision(), local_revert = true);
        match self.put_in_force(desired).instrument(span.clone()).await {
            Ok(()) => self.save_state().instrument(span).await,
            Err(error) => span.in_scope(|| {
                warn!(%error, "cannot put the local revert in force; retrying with the next repair")
            }),
        }
    }

    /// What the kernel should hold: the folded firewall, with the changes
    /// reverted here undone.
    fn desired(&self) -> Ruleset {
        match &self.firewall {
            Some(firewall) if !self.locally_reverted.is_empty() => Ruleset::of(Some(
                &firewall.reverted_locally(&self.locally_reverted, SystemTime::now()),
            )),
            firewall => Ruleset::of(firewall.as_ref()),
        }
    }

    /// Puts the folded state in force (one transaction) and saves it, side by
    /// side, then acks the result: what is acknowledged survives a reboot
    /// too. `arrived`: when the batch arrived, and how long its fold took.
    async fn apply_and_ack(
        &mut self,
        acks: &mpsc::Sender<pb::SyncRequest>,
        arrived: Option<(Instant, Duration)>,
    ) {
        let revision = self.revision();
        let span = info_span!("apply", instance_id = %self.config.instance, revision);
        let desired = self.desired();
        // The save needs no kernel, the kernel no save: both run at once. If
        // the kernel refuses, the state saved is still the one to put in
        // force (at start-up), as the folded firewall is.
        let save = self.start_save();
        let started = Instant::now();
        let result = self
            .put_in_force(desired.clone())
            .instrument(span.clone())
            .await;
        let elapsed = started.elapsed();
        self.metrics.apply_duration.observe(elapsed);
        let saved = self.finish_save(save).instrument(span.clone()).await;
        let (fold_duration, enforcer_duration) = match arrived {
            Some((at, fold)) => (fold.try_into().ok(), at.elapsed().try_into().ok()),
            None => (None, None),
        };
        let save_duration = saved.and_then(|d| d.try_into().ok());
        let ack = match &result {
            Ok(()) => {
                span.in_scope(|| {
                    info!(
                        apply_us = elapsed.as_micros() as u64,
                        save_us = saved.map(|d| d.as_micros() as u64),
                        "applied"
                    )
                });
                pb::Ack {
                    revision,
                    ok: true,
                    error: String::new(),
                    apply_duration: elapsed.try_into().ok(),
                    ruleset_hash: desired.hash(),
                    fold_duration,
                    save_duration,
                    enforcer_duration,
                }
            }
            Err(error) => {
                self.metrics.failed_applies.inc();
                span.in_scope(|| warn!(%error, "apply failed; the previous ruleset stays"));
                pb::Ack {
                    revision,
                    ok: false,
                    error: error.0.clone(),
                    apply_duration: elapsed.try_into().ok(),
                    ruleset_hash: self
                        .in_kernel
                        .as_ref()
                        .map(Ruleset::hash)
                        .unwrap_or_default(),
                    fold_duration,
                    save_duration,
                    enforcer_duration,
                }
            }
        };
        let _ = acks
            .send(pb::SyncRequest {
                message: Some(Message::Ack(ack)),
            })
            .await;
    }

    /// Reports what the enforcer sees: the table's hit counters and record
    /// of dropped attempts (if the backend keeps any) and the sockets
    /// listening in the instance.
    async fn report(&mut self, acks: &mpsc::Sender<pb::SyncRequest>) {
        let counters = self
            .kernel_call(|k| k.counters())
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(%error, "cannot read the table's counters");
                None
            });
        let sockets = tokio::task::spawn_blocking(|| {
            crate::instance_sockets(std::path::Path::new("/proc/net"))
        })
        .await
        .ok()
        .and_then(|read| {
            read.inspect_err(|error| tracing::debug!(%error, "cannot read the listening sockets"))
                .ok()
        });
        let report = self.reporter.report(counters, sockets, SystemTime::now());
        let _ = acks
            .send(pb::SyncRequest {
                message: Some(Message::Report(report)),
            })
            .await;
    }

    /// Saves what the kernel now holds. A failure is reported, never fatal:
    /// the kernel holds the ruleset, only a restart without the rules service
    /// would fall back to the older saved state.
    async fn save_state(&mut self) {
        let save = self.start_save();
        self.finish_save(save).await;
    }

    /// Starts saving the folded firewall off the runtime, unless it is
    /// already saved (or nothing is kept).
    fn start_save(&mut self) -> Option<SaveInFlight> {
        let firewall = self.firewall.clone()?;
        let key = (firewall.revision, self.locally_reverted.len());
        if self.saved_revision == Some(key) {
            return None;
        }
        let mut state = self.state.take()?;
        let events = std::mem::take(&mut self.unsaved);
        let reverted = self.locally_reverted.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let saving = state.save(&firewall, &reverted, events);
            (state, saving, started.elapsed())
        });
        Some(SaveInFlight {
            handle,
            key,
            started: Instant::now(),
        })
    }

    /// Waits for a save started by [`Enforcer::start_save`]; how long it took
    /// (from its start on the blocking pool to its end, not to this wait's).
    async fn finish_save(&mut self, save: Option<SaveInFlight>) -> Option<Duration> {
        let save = save?;
        let (revision, _) = save.key;
        let (saving, took) = match save.handle.await {
            Ok((state, saving, took)) => {
                self.state = Some(state);
                (saving, took)
            }
            Err(panic) => {
                // Whatever the save left, a new StateFile compacts first.
                let dir = self.config.state_dir.clone().unwrap_or_default();
                self.state = Some(StateFile::new(dir, &self.config.table));
                let failed = Err(crate::StateError::Save {
                    path: self.config.state_dir.clone().unwrap_or_default(),
                    source: std::io::Error::other(panic.to_string()),
                });
                (failed, save.started.elapsed())
            }
        };
        match saving {
            Ok(saving) => {
                self.metrics.state_saves.inc();
                self.metrics.save_duration.observe(took);
                if saving == crate::Saving::Compacted {
                    self.metrics.state_compactions.inc();
                }
                self.saved_revision = Some(save.key);
                self.state_error = None;
                if std::mem::take(&mut self.save_failing) {
                    info!(revision, "saving the state works again");
                }
            }
            Err(error) => {
                self.metrics.state_save_failures.inc();
                if !std::mem::replace(&mut self.save_failing, true) {
                    warn!(%error, revision, "cannot save the applied state: the kernel holds it, but a restart without the rules service would fall back to an older one");
                }
            }
        }
        Some(took)
    }

    /// Changes the kernel from what it holds to `desired`: element changes
    /// when what it holds is known, else (or if that fails) a full replace.
    async fn put_in_force(&mut self, desired: Ruleset) -> Result<(), KernelError> {
        if !self.kernel_unsure && self.in_kernel.as_ref() == Some(&desired) {
            return Ok(());
        }
        let known = if self.kernel_unsure {
            None
        } else {
            self.in_kernel.clone()
        };
        let result = match known {
            Some(current) => match self.kernel_update(current, desired.clone()).await {
                Ok(()) => Ok(()),
                Err(error) => {
                    warn!(%error, "element update refused; replacing the table");
                    self.metrics.table_replacements.inc();
                    let d = desired.clone();
                    self.kernel_call(move |k| k.replace(&d)).await
                }
            },
            None => {
                self.metrics.table_replacements.inc();
                let d = desired.clone();
                self.kernel_call(move |k| k.replace(&d)).await
            }
        };
        if result.is_ok() {
            self.in_kernel = Some(desired);
            self.kernel_unsure = false;
        }
        result
    }

    /// Reads the table back; if it is not what we put there, replaces it. A
    /// repair that fails ends the session: the next one reports it (its Hello
    /// says revision 0, and the re-apply's outcome is acked).
    async fn repair_drift(
        &mut self,
        acks: &mpsc::Sender<pb::SyncRequest>,
    ) -> Result<(), SessionError> {
        let desired = self.desired();
        if self.firewall.is_some()
            && (self.kernel_unsure || self.in_kernel.as_ref() != Some(&desired))
        {
            // The last apply (or repair) failed: retry it, and report.
            self.apply_and_ack(acks, None).await;
            return Ok(());
        }
        self.restore_table().await;
        if self.kernel_unsure {
            return Err(SessionError::RepairFailed);
        }
        Ok(())
    }

    /// While disconnected: keeps what this enforcer means to hold in force. A
    /// saved state that could not be put in force at start-up is retried;
    /// otherwise the table is repaired if it drifted.
    async fn keep_in_force(&mut self) {
        if self.in_kernel.is_none() && self.firewall.is_some() {
            let desired = self.desired();
            match self.put_in_force(desired).await {
                Ok(()) => {
                    info!(
                        revision = self.revision(),
                        "put in force while disconnected"
                    );
                    self.save_state().await;
                }
                Err(error) => warn!(%error, "still cannot put the ruleset in force"),
            }
            return;
        }
        self.restore_table().await;
    }

    /// Puts back what this enforcer last applied if the kernel no longer
    /// holds it. Needs no rules service: fail-static keeps the last ruleset,
    /// which includes restoring it when someone flushes it.
    async fn restore_table(&mut self) {
        let Some(expected) = self.in_kernel.clone() else {
            return;
        };
        let e = expected.clone();
        match self.kernel_call(move |k| k.holds(&e)).await {
            Ok(true) => self.kernel_unsure = false,
            Ok(false) => {
                warn!(instance_id = %self.config.instance, "table drifted; replacing it");
                let e = expected.clone();
                match self.kernel_call(move |k| k.replace(&e)).await {
                    Ok(()) => {
                        self.metrics.drift_repairs.inc();
                        self.kernel_unsure = false;
                        info!("drift repaired");
                    }
                    Err(error) => {
                        warn!(%error, "cannot repair drift");
                        self.kernel_unsure = true;
                    }
                }
            }
            Err(error) => {
                warn!(%error, "cannot read the table back");
                self.kernel_unsure = true;
            }
        }
    }

    /// Turns the table from `current` (what it holds) into `desired`: in
    /// place when the backend's updates answer at once
    /// ([`Kernel::quick_updates`]), else like every other kernel call.
    async fn kernel_update(
        &mut self,
        current: Ruleset,
        desired: Ruleset,
    ) -> Result<(), KernelError> {
        let off_runtime = !self.kernel.as_ref().is_some_and(|k| k.quick_updates());
        self.kernel_call_where(off_runtime, move |k| k.update(&current, &desired))
            .await
    }

    /// Runs a kernel call: off the async runtime if it may block
    /// ([`Kernel::BLOCKS`]), in place otherwise.
    async fn kernel_call<T: Send + 'static>(
        &mut self,
        call: impl FnOnce(&mut K) -> Result<T, KernelError> + Send + 'static,
    ) -> Result<T, KernelError> {
        self.kernel_call_where(K::BLOCKS, call).await
    }

    /// Runs a kernel call on the blocking pool (`off_runtime`) or in place.
    /// A call that panics loses the backend either way.
    async fn kernel_call_where<T: Send + 'static>(
        &mut self,
        off_runtime: bool,
        call: impl FnOnce(&mut K) -> Result<T, KernelError> + Send + 'static,
    ) -> Result<T, KernelError> {
        let Some(mut kernel) = self.kernel.take() else {
            return Err(KernelError(
                "kernel backend lost by an earlier panic".into(),
            ));
        };
        let joined = if off_runtime {
            tokio::task::spawn_blocking(move || {
                let result = call(&mut kernel);
                (kernel, result)
            })
            .await
            .map_err(|e| e.to_string())
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let result = call(&mut kernel);
                (kernel, result)
            }))
            .map_err(|_| "a panic".to_owned())
        };
        match joined {
            Ok((kernel, result)) => {
                self.kernel = Some(kernel);
                result
            }
            Err(e) => Err(KernelError(format!("kernel call panicked: {e}"))),
        }
    }
}

/// Full jitter: a random pause in [base/2, base].
fn jitter(base: Duration) -> Duration {
    let random = RandomState::new().hash_one(Instant::now());
    let half = base / 2;
    half + Duration::from_nanos(random % (half.as_nanos() as u64).max(1))
}

/// A tokio deadline for a wall-clock time (`None`: far away).
fn wall_deadline(at: Option<SystemTime>) -> tokio::time::Instant {
    let far = Duration::from_secs(365 * 24 * 3600);
    let wait = at.map_or(far, |at| {
        at.duration_since(SystemTime::now()).unwrap_or_default()
    });
    tokio::time::Instant::now() + wait.min(far)
}

/// Sleeps until a wall-clock time (`None`: far away).
async fn sleep_until_wall(at: Option<SystemTime>) {
    tokio::time::sleep_until(wall_deadline(at)).await;
}
