//! The enforcer's Prometheus metrics.

use cassette_metrics::{Counter, Gauge, Histogram, Registry};

#[derive(Debug, Default)]
pub struct EnforcerMetrics {
    pub apply_duration: Histogram,
    pub failed_applies: Counter,
    pub drift_repairs: Counter,
    pub reconnects: Counter,
    /// Applies that replaced the whole table instead of changing set elements.
    pub table_replacements: Counter,
    /// Events received over sync streams (a resumed stream sends only what is new).
    pub events_received: Counter,
    /// The rules service resent the history from revision 1: its log was
    /// behind, or differed from, what this enforcer had applied.
    pub history_resends: Counter,
    /// States saved before an ack (a journal record, or a compaction).
    pub state_saves: Counter,
    /// Saves that compacted: a new snapshot and an empty journal.
    pub state_compactions: Counter,
    /// How long a save took (it runs beside the kernel transaction).
    pub save_duration: Histogram,
    pub state_save_failures: Counter,
    /// A saved state was put in force (or found in force) at start-up.
    pub state_restores: Counter,
    /// A state file found at start-up was not trusted (corrupt, another
    /// instance's, unreadable).
    pub state_rejections: Counter,
    /// Unconfirmed changes reverted by the enforcer itself, their revert time
    /// having passed while no rules service was reachable.
    pub local_reverts: Counter,
    /// When the enforcer's certificate ends, in Unix seconds; 0 without TLS.
    pub tls_certificate_expiry: Gauge,
}

impl EnforcerMetrics {
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.tls_certificate_expiry.register(
            &mut registry,
            "cassette_enforcer_tls_certificate_expiry_timestamp_seconds",
            "When the enforcer's certificate ends, in Unix seconds; 0 without TLS. Renew it and send SIGHUP.",
        );
        self.apply_duration.register(
            &mut registry,
            "cassette_enforcer_apply_duration_seconds",
            "Time to put a batch of events in force in the kernel.",
        );
        self.failed_applies.register(
            &mut registry,
            "cassette_enforcer_failed_applies_total",
            "Kernel transactions that were refused.",
        );
        self.table_replacements.register(
            &mut registry,
            "cassette_enforcer_table_replacements_total",
            "Applies that replaced the whole table (what it held was unknown, or a delta was refused).",
        );
        self.drift_repairs.register(
            &mut registry,
            "cassette_enforcer_drift_repairs_total",
            "Times the table was found changed behind the enforcer's back and replaced.",
        );
        self.events_received.register(
            &mut registry,
            "cassette_enforcer_events_received_total",
            "Events received over sync streams.",
        );
        self.history_resends.register(
            &mut registry,
            "cassette_enforcer_history_resends_total",
            "Times the rules service resent the history from revision 1 because its log was behind, or differed from, what this enforcer had applied (its log wins).",
        );
        self.state_saves.register(
            &mut registry,
            "cassette_enforcer_state_saves_total",
            "States saved durably before an ack (a journal record, or a compaction).",
        );
        self.state_compactions.register(
            &mut registry,
            "cassette_enforcer_state_compactions_total",
            "Saves that wrote a new snapshot and started an empty journal (the first save of a process, a history that started over, a full journal).",
        );
        self.save_duration.register(
            &mut registry,
            "cassette_enforcer_save_duration_seconds",
            "How long saving the state took (beside the kernel transaction, before the ack).",
        );
        self.state_save_failures.register(
            &mut registry,
            "cassette_enforcer_state_save_failures_total",
            "Applies whose state could not be saved: the kernel holds them, but a restart without the rules service would fall back to an older state.",
        );
        self.state_restores.register(
            &mut registry,
            "cassette_enforcer_state_restores_total",
            "Start-ups that put the saved state in force before reaching the rules service.",
        );
        self.state_rejections.register(
            &mut registry,
            "cassette_enforcer_state_rejections_total",
            "State files not trusted at start-up (corrupt, another instance's, unreadable).",
        );
        self.reconnects.register(
            &mut registry,
            "cassette_enforcer_reconnects_total",
            "Sync streams opened after the first.",
        );
        self.local_reverts.register(
            &mut registry,
            "cassette_enforcer_local_reverts_total",
            "Unconfirmed changes reverted by the enforcer itself while no rules service was reachable.",
        );
        cassette_metrics::encode(&registry)
    }
}
