//! How answers are printed: tables for people (each rule with its state), or
//! protobuf JSON for scripts (the shape grpcurl prints), one object a line.
//! Errors print the server's message and the fields it names.

use cassette_proto::{pb, ProtoJson};
use tonic_types::StatusExt;

pub struct Output {
    json: Option<ProtoJson>,
}

impl Output {
    pub fn new(json: bool) -> anyhow::Result<Self> {
        Ok(Self {
            json: json.then(ProtoJson::new).transpose()?,
        })
    }

    fn json(&self, name: &str, message: &impl prost::Message) -> anyhow::Result<bool> {
        match &self.json {
            Some(json) => {
                cassette_proto::outln!("{}", json.to_string(name, message)?)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub fn firewall(&self, firewall: &pb::Firewall) -> anyhow::Result<()> {
        if self.json("Firewall", firewall)? {
            return Ok(());
        }
        cassette_proto::out!("{}", firewall_table(firewall))?;
        Ok(())
    }

    /// ApplyFirewall's answer: each change, with what it cuts, and the
    /// revision (or that it was a dry run).
    pub fn applied(&self, answer: &pb::ApplyFirewallResponse) -> anyhow::Result<()> {
        if self.json("ApplyFirewallResponse", answer)? {
            return Ok(());
        }
        cassette_proto::out!("{}", changes_text(answer))?;
        Ok(())
    }

    /// What the firewall dropped lately: one `BlockedTraffic` a line in JSON.
    pub fn blocked(&self, firewall: &pb::Firewall) -> anyhow::Result<()> {
        if self.json.is_some() {
            for blocked in &firewall.blocked {
                self.json("BlockedTraffic", blocked)?;
            }
            return Ok(());
        }
        cassette_proto::out!("{}", blocked_table(firewall))?;
        Ok(())
    }

    pub fn firewalls(&self, firewalls: &[pb::Firewall]) -> anyhow::Result<()> {
        for (i, firewall) in firewalls.iter().enumerate() {
            if i > 0 && self.json.is_none() {
                cassette_proto::outln!()?;
            }
            self.firewall(firewall)?;
        }
        Ok(())
    }

    pub fn sync(&self, sync: &pb::SyncStatus) -> anyhow::Result<()> {
        if self.json("SyncStatus", sync)? {
            return Ok(());
        }
        cassette_proto::outln!("{}", sync_line(sync))?;
        Ok(())
    }

    /// One event, in the offline audit's words; the first (`header`) under
    /// a header row.
    pub fn event(&self, event: &pb::Event, header: bool) -> anyhow::Result<()> {
        if self.json("Event", event)? {
            return Ok(());
        }
        if header {
            cassette_proto::outln!("{}", cassette_proto::EVENT_COLUMNS)?;
        }
        match cassette_proto::event_from_pb(event) {
            Ok(event) => cassette_proto::outln!("{}", cassette_proto::describe_event(&event))?,
            Err(error) => cassette_proto::outln!(
                "{} {}#{} (an event this cassette cannot read: {error})",
                event.sequence,
                event.instance_id,
                event.revision
            )?,
        }
        Ok(())
    }

    pub fn diagnosis(&self, diagnosis: &pb::Diagnosis) -> anyhow::Result<()> {
        if self.json("Diagnosis", diagnosis)? {
            return Ok(());
        }
        for check in &diagnosis.checks {
            let result = match pb::CheckResult::try_from(check.result) {
                Ok(pb::CheckResult::Pass) => "PASS",
                Ok(pb::CheckResult::Fail) => "FAIL",
                _ => "UNKNOWN",
            };
            cassette_proto::outln!("{result:<7} {:<18} {}", check.name, check.detail)?;
            if !check.next_step.is_empty() {
                cassette_proto::outln!("{:26}next: {}", "", check.next_step)?;
            }
        }
        Ok(())
    }

    pub fn done(&self, what: &str) -> anyhow::Result<()> {
        if self.json.is_none() {
            cassette_proto::outln!("{what}")?;
        }
        Ok(())
    }
}

/// `5432`, or `27015-27030` for a range.
pub fn ports_text(rule: &pb::Rule) -> String {
    match &rule.port_range {
        Some(range) if range.first != range.last => format!("{}-{}", range.first, range.last),
        _ => rule.port.to_string(),
    }
}

pub fn protocol_name(protocol: i32) -> &'static str {
    match pb::Protocol::try_from(protocol) {
        Ok(pb::Protocol::Udp) => "udp",
        _ => "tcp",
    }
}

fn state_name(sync: &pb::SyncStatus) -> &'static str {
    match pb::SyncState::try_from(sync.state) {
        Ok(pb::SyncState::InSync) => "in sync",
        Ok(pb::SyncState::Pending) => "pending",
        Ok(pb::SyncState::Error) => "error",
        Ok(pb::SyncState::NoEnforcer) => "no enforcer",
        _ => "unknown",
    }
}

/// The sync state in a few words (the table's header).
fn sync_state(sync: &pb::SyncStatus) -> String {
    format!(
        "{} (applied revision {} of {})",
        state_name(sync),
        sync.applied_revision,
        sync.latest_revision
    )
}

fn sync_line(sync: &pb::SyncStatus) -> String {
    let mut line = format!(
        "{}: applied revision {} of {}",
        state_name(sync),
        sync.applied_revision,
        sync.latest_revision
    );
    if let Some(latency) = sync
        .last_ack_latency
        .and_then(|d| std::time::Duration::try_from(d).ok())
    {
        line.push_str(&format!(
            ", last ack {:.1} ms after its commit",
            latency.as_secs_f64() * 1e3
        ));
    }
    if !sync.last_error.is_empty() {
        line.push_str(&format!(
            " (revision {} failed: {})",
            sync.failed_revision, sync.last_error
        ));
    }
    line
}

/// The firewall as a table: one row a rule, with its toggle and its state.
fn firewall_table(firewall: &pb::Firewall) -> String {
    let mut out = format!("{}  revision {}", firewall.instance_id, firewall.revision);
    if let Some(sync) = &firewall.sync {
        out.push_str(&format!("  {}", sync_state(sync)));
    }
    out.push('\n');
    let mut rows = vec![[
        "PORT".to_owned(),
        "PROTO".to_owned(),
        "ON".to_owned(),
        "STATUS".to_owned(),
        "HITS".to_owned(),
        "FROM".to_owned(),
        "RULE".to_owned(),
        "DESCRIPTION".to_owned(),
    ]];
    for rule in &firewall.rules {
        let status = match pb::RuleStatus::try_from(rule.status) {
            Ok(pb::RuleStatus::Applied) => "applied",
            Ok(pb::RuleStatus::Pending) => "pending",
            Ok(pb::RuleStatus::Failed) => "failed",
            _ => "-",
        };
        let mut description = rule.description.clone();
        if let Some(expires) = rule.expire_time {
            description.push_str(&format!(" (expires {expires})"));
        }
        if let Some(revert) = rule.revert_time.filter(|_| rule.unconfirmed_revision > 0) {
            description.push_str(&format!(
                " (unconfirmed: undone at {revert} unless confirmed)"
            ));
        }
        rows.push([
            ports_text(rule),
            protocol_name(rule.protocol).to_owned(),
            if rule.enabled { "on" } else { "off" }.to_owned(),
            status.to_owned(),
            rule.hits.to_string(),
            if rule.sources.is_empty() {
                "anywhere".to_owned()
            } else {
                rule.sources.join(",")
            },
            rule.id.clone(),
            description.trim().to_owned(),
        ]);
    }
    out.push_str(&columns(&rows));
    for change in &firewall.unconfirmed {
        out.push_str(&format!(
            "unconfirmed: revision {} ({}) is undone at {} unless confirmed: cassette confirm {} --revision {}\n",
            change.revision,
            change.summary,
            change
                .revert_time
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            firewall.instance_id,
            change.revision
        ));
    }
    for warning in &firewall.warnings {
        out.push_str(&format!("warning: {}\n", warning.message));
    }
    out
}

/// One line a change (`+` added, `-` removed, `~` changed, with what
/// differs), what a closing change cuts, then the outcome.
fn changes_text(answer: &pb::ApplyFirewallResponse) -> String {
    let mut out = String::new();
    for change in &answer.changes {
        let Some(rule) = change.after.as_ref().or(change.before.as_ref()) else {
            continue;
        };
        let name = format!(
            "{}/{} {}",
            ports_text(rule),
            protocol_name(rule.protocol),
            rule.id
        );
        let line = match (&change.before, &change.after) {
            (None, Some(after)) => format!("+ {name}: added{}", state(after)),
            (Some(_), None) => format!("- {name}: removed"),
            (Some(before), Some(after)) => format!("~ {name}: {}", differences(before, after)),
            (None, None) => continue,
        };
        out.push_str(&line);
        if let Some(impact) = &change.impact {
            out.push_str(&if impact.reported {
                format!(
                    " (cuts {} open connections; {} packets in the last hour{})",
                    impact.open_connections,
                    impact.hits_last_hour,
                    impact
                        .last_hit_time
                        .map(|t| format!(", the last at {t}"))
                        .unwrap_or_default()
                )
            } else {
                " (closes traffic; the enforcer reported nothing to say how much)".to_owned()
            });
        }
        out.push('\n');
    }
    let firewall = answer.firewall.as_ref();
    let instance = firewall.map_or("", |f| f.instance_id.as_str());
    let revision = firewall.map_or(0, |f| f.revision);
    out.push_str(&match (answer.changes.len(), answer.dry_run) {
        (0, _) => format!("{instance}: no changes (revision {revision})\n"),
        (n, true) => format!("{instance}: {} (dry run: nothing applied)\n", changes(n)),
        (n, false) => format!(
            "{instance}: {} applied as revision {revision}\n",
            changes(n)
        ),
    });
    if let Some(firewall) = firewall {
        for warning in &firewall.warnings {
            out.push_str(&format!("warning: {}\n", warning.message));
        }
    }
    out
}

fn changes(n: usize) -> String {
    if n == 1 {
        "1 change".to_owned()
    } else {
        format!("{n} changes")
    }
}

/// ", off" or ", from 10.0.0.0/8" for an added rule that is not simply on.
fn state(rule: &pb::Rule) -> String {
    let mut text = String::new();
    if !rule.enabled {
        text.push_str(", off");
    }
    if !rule.sources.is_empty() {
        text.push_str(&format!(", from {}", rule.sources.join(",")));
    }
    text
}

/// What differs between two versions of a rule: "on -> off; ...".
fn differences(before: &pb::Rule, after: &pb::Rule) -> String {
    let on = |enabled: bool| if enabled { "on" } else { "off" };
    let from = |sources: &[String]| {
        if sources.is_empty() {
            "anywhere".to_owned()
        } else {
            sources.join(",")
        }
    };
    let mut what = Vec::new();
    if before.enabled != after.enabled {
        what.push(format!("{} -> {}", on(before.enabled), on(after.enabled)));
    }
    if before.description != after.description {
        what.push(format!(
            "description {:?} -> {:?}",
            before.description, after.description
        ));
    }
    if before.sources != after.sources {
        what.push(format!(
            "from {} -> {}",
            from(&before.sources),
            from(&after.sources)
        ));
    }
    if before.expire_time != after.expire_time {
        let at = |t: Option<prost_types::Timestamp>| {
            t.map_or_else(|| "never".to_owned(), |t| t.to_string())
        };
        what.push(format!(
            "expires {} -> {}",
            at(before.expire_time),
            at(after.expire_time)
        ));
    }
    what.join("; ")
}

/// Rows as left-aligned columns two spaces apart, a line each.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// What the firewall dropped lately: a row a port, most recent first.
fn blocked_table(firewall: &pb::Firewall) -> String {
    if firewall.blocked.is_empty() {
        return format!(
            "{}: no blocked connection reported in the last hour\n",
            firewall.instance_id
        );
    }
    let mut rows = vec![[
        "PORT".to_owned(),
        "PROTO".to_owned(),
        "ATTEMPTS".to_owned(),
        "SOURCES".to_owned(),
        "LAST".to_owned(),
        "WHY".to_owned(),
        "TOP SOURCES".to_owned(),
    ]];
    for blocked in &firewall.blocked {
        let top: Vec<String> = blocked
            .top_sources
            .iter()
            .map(|s| format!("{} ({})", s.address, s.attempts))
            .collect();
        rows.push([
            blocked.port.to_string(),
            protocol_name(blocked.protocol).to_owned(),
            blocked.attempts.to_string(),
            blocked.distinct_sources.to_string(),
            blocked
                .last_time
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            match pb::BlockedReason::try_from(blocked.reason) {
                Ok(pb::BlockedReason::NoRule) => "no rule",
                Ok(pb::BlockedReason::RuleOff) => "rule off",
                Ok(pb::BlockedReason::SourceNotAllowed) => "source not allowed",
                Ok(pb::BlockedReason::AcceptedNow) => "accepted now",
                _ => "-",
            }
            .to_owned(),
            top.join(", "),
        ]);
    }
    columns(&rows)
}

/// The server's message, and each field it names, on stderr.
pub fn print_status(status: &tonic::Status) {
    eprintln!("error: {:?}: {}", status.code(), status.message());
    // Each field once: the message usually names them already.
    if let Some(bad) = status.get_details_bad_request() {
        for violation in bad.field_violations {
            let line = format!("{}: {}", violation.field, violation.description);
            if !status.message().contains(&line) {
                eprintln!("  {line}");
            }
        }
    }
}
