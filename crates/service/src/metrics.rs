//! The rules service's Prometheus metrics.

use cassette_metrics::{Counter, Gauge, Histogram, Registry};

#[derive(Debug, Default)]
pub struct RulesMetrics {
    /// Commit of an event -> its enforcer's ack received (live events only).
    pub ack_latency: Histogram,
    /// Where an ack's latency goes: the writer deciding a batch,
    pub commit_decide: Histogram,
    /// appending it to the log, durably,
    pub commit_append: Histogram,
    /// from the decision to the events sent on the enforcer's stream,
    pub sync_send: Histogram,
    /// from there to the ack, less the enforcer's own time (the two hops),
    pub sync_transport: Histogram,
    /// and the enforcer's own time (from each ack): folding, the kernel
    /// transaction, saving its state (beside it), in all.
    pub enforcer_fold: Histogram,
    pub enforcer_apply: Histogram,
    pub enforcer_save: Histogram,
    pub enforcer_total: Histogram,
    pub connected_enforcers: Gauge,
    /// Instances with sync state (streams, waiters, acks): only existing ones.
    pub tracked_instances: Gauge,
    pub events_appended: Counter,
    pub failed_acks: Counter,
    /// Acks of a revision their stream was never sent.
    pub ignored_acks: Counter,
    /// Ok acks whose ruleset hash differs from the service's for that revision.
    pub ruleset_hash_mismatches: Counter,
    /// Sync streams closed because a newer stream for the instance opened.
    pub replaced_streams: Counter,
    /// Sync streams sent the whole history because their Hello disagreed with
    /// the log (a revision it does not have, or a different ruleset).
    pub history_resends: Counter,
    /// Records met that fail verification (no trusted signature covers
    /// them, or they break the chain): the service is read-only since.
    pub log_verification_failures: Counter,
    /// When the soonest-ending certificate the service holds (its server
    /// certificate, the client CA) ends, in Unix seconds; 0 without TLS.
    pub tls_certificate_expiry: Gauge,
    /// How many of them end within 14 days.
    pub tls_certificates_expiring: Gauge,
    /// Connections closed to make room for a new one at a listener's cap
    /// (they had not finished their handshake or sent a request).
    pub connections_evicted: Counter,
    /// New connections closed at once: the listener was at its cap and every
    /// connection was busy.
    pub connections_refused: Counter,
    /// Connections closed for sending no request in time, or for idling.
    pub connections_timed_out: Counter,
    /// Answers that append nothing (refusals, no-ops) decided again because
    /// this replica's view was behind the shared log's head.
    pub stale_decisions: Counter,
    /// Projection snapshots written, how long each took (capture to the
    /// directory's fsync), the last one's size and anchor.
    pub snapshots_written: Counter,
    pub snapshot_write: Histogram,
    pub snapshot_bytes: Gauge,
    pub snapshot_anchor: Gauge,
    /// Projection snapshots not used at start-up (damaged, unsealed on a
    /// signed log, another log's) or found to disagree with the log after it.
    pub snapshots_refused: Counter,
}

impl RulesMetrics {
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.ack_latency.register(
            &mut registry,
            "cassette_rules_ack_latency_seconds",
            "Commit of an event to its enforcer's acknowledgement, on the service's clock.",
        );
        for (histogram, name, help) in [
            (&self.commit_decide, "cassette_rules_commit_decide_seconds", "The writer deciding a batch of changes against the projection."),
            (&self.commit_append, "cassette_rules_commit_append_seconds", "Appending a batch's events to the log, durably (fsync, or the etcd transaction)."),
            (&self.sync_send, "cassette_rules_sync_send_seconds", "From an event's commit (its decision) to its sending on the enforcer's stream."),
            (&self.sync_transport, "cassette_rules_sync_transport_seconds", "From the sending of events to their ack, less the enforcer's own time: the network both ways."),
            (&self.enforcer_fold, "cassette_rules_enforcer_fold_seconds", "Enforcers folding a batch of events (as their acks tell)."),
            (&self.enforcer_apply, "cassette_rules_enforcer_apply_seconds", "Enforcers' kernel transactions (as their acks tell)."),
            (&self.enforcer_save, "cassette_rules_enforcer_save_seconds", "Enforcers saving their state before the ack, beside the kernel transaction (as their acks tell)."),
            (&self.enforcer_total, "cassette_rules_enforcer_seconds", "Enforcers' time from a batch's arrival to its ack (as their acks tell)."),
        ] {
            histogram.register(&mut registry, name, help);
        }
        self.connected_enforcers.register(
            &mut registry,
            "cassette_rules_connected_enforcers",
            "Open enforcer sync streams.",
        );
        self.tracked_instances.register(
            &mut registry,
            "cassette_rules_tracked_instances",
            "Instances the service keeps sync state for (existing instances with a stream, waiter or ack).",
        );
        self.events_appended.register(
            &mut registry,
            "cassette_rules_events_appended_total",
            "Events durably appended to the log.",
        );
        self.failed_acks.register(
            &mut registry,
            "cassette_rules_failed_acks_total",
            "Acknowledgements reporting a failed apply.",
        );
        self.ignored_acks.register(
            &mut registry,
            "cassette_rules_ignored_acks_total",
            "Acknowledgements of a revision their sync stream was never sent (ignored).",
        );
        self.ruleset_hash_mismatches.register(
            &mut registry,
            "cassette_rules_ruleset_hash_mismatches_total",
            "Acknowledgements whose ruleset hash differs from the one the service computes.",
        );
        self.replaced_streams.register(
            &mut registry,
            "cassette_rules_replaced_sync_streams_total",
            "Sync streams closed because a newer one for the same instance opened.",
        );
        self.history_resends.register(
            &mut registry,
            "cassette_rules_history_resends_total",
            "Sync streams sent the whole history because their Hello disagreed with the log (a revision it does not have, or a ruleset hash that differs).",
        );
        self.log_verification_failures.register(
            &mut registry,
            "cassette_rules_log_verification_failures_total",
            "Records of the event log met (at start-up or reading other replicas' appends) that fail verification: no trusted signature covers them, or they break the hash chain. The service is read-only since.",
        );
        self.tls_certificate_expiry.register(
            &mut registry,
            "cassette_rules_tls_certificate_expiry_timestamp_seconds",
            "When the soonest-ending certificate the service holds (server certificate, client CA) ends, in Unix seconds; 0 without TLS.",
        );
        self.tls_certificates_expiring.register(
            &mut registry,
            "cassette_rules_tls_certificates_expiring",
            "Certificates the service holds that end within 14 days (renew them and send SIGHUP).",
        );
        self.connections_evicted.register(
            &mut registry,
            "cassette_rules_connections_evicted_total",
            "Connections closed to make room at a listener's cap (no handshake finished or no request sent yet).",
        );
        self.connections_refused.register(
            &mut registry,
            "cassette_rules_connections_refused_total",
            "New connections closed at once: the listener was at its cap (--max-connections) with every connection busy.",
        );
        self.connections_timed_out.register(
            &mut registry,
            "cassette_rules_connections_timed_out_total",
            "Connections closed for sending no request within --first-request-timeout, or none for --idle-timeout.",
        );
        self.stale_decisions.register(
            &mut registry,
            "cassette_rules_stale_decisions_total",
            "Refusals and no-ops decided again because this replica's view was behind the shared log's head (replicas on etcd).",
        );
        self.snapshots_written.register(
            &mut registry,
            "cassette_rules_snapshots_written_total",
            "Projection snapshots written (start-up loads the newest and replays only the log after it).",
        );
        self.snapshot_write.register(
            &mut registry,
            "cassette_rules_snapshot_write_seconds",
            "Writing a projection snapshot, from taking it to its directory's fsync (off the writer).",
        );
        self.snapshot_bytes.register(
            &mut registry,
            "cassette_rules_snapshot_bytes",
            "The size of the last projection snapshot written.",
        );
        self.snapshot_anchor.register(
            &mut registry,
            "cassette_rules_snapshot_anchor_sequence",
            "The log record the newest projection snapshot (written or loaded) was taken at.",
        );
        self.snapshots_refused.register(
            &mut registry,
            "cassette_rules_snapshots_refused_total",
            "Projection snapshots not used at start-up (damaged, not sealed by a trusted key, not taken on this log), or that the background walk of the log found to disagree with it (the service is read-only since).",
        );
        cassette_metrics::encode(&registry)
    }
}
