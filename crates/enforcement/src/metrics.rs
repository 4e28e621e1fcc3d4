//! The enforcer's Prometheus metrics.

use cassette_metrics::{Counter, Histogram};

#[derive(Debug, Default)]
pub struct EnforcerMetrics {
    pub apply_duration: Histogram,
    pub failed_applies: Counter,
    pub drift_repairs: Counter,
    pub reconnects: Counter,
    /// Applies that replaced the whole table instead of changing set elements.
    pub table_replacements: Counter,
}

impl EnforcerMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.apply_duration.write(
            &mut out,
            "cassette_enforcer_apply_duration_seconds",
            "Time to put a batch of events in force in the kernel.",
        );
        self.failed_applies.write(
            &mut out,
            "cassette_enforcer_failed_applies_total",
            "Kernel transactions that were refused.",
        );
        self.table_replacements.write(
            &mut out,
            "cassette_enforcer_table_replacements_total",
            "Applies that replaced the whole table (what it held was unknown, or a delta was refused).",
        );
        self.drift_repairs.write(
            &mut out,
            "cassette_enforcer_drift_repairs_total",
            "Times the table was found changed behind the enforcer's back and replaced.",
        );
        self.reconnects.write(
            &mut out,
            "cassette_enforcer_reconnects_total",
            "Sync streams opened after the first.",
        );
        out
    }
}
