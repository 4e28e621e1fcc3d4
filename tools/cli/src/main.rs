//! `cassette`: the command line for operators and scripts. Every command is
//! one call of the generated client; the service validates (one validation
//! for every door) and this prints its answer, or its error with the field
//! it names, and exits with a code that says what kind of failure it was.

mod document;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cassette_proto::pb::audit_service_client::AuditServiceClient;
use cassette_proto::pb::firewall_service_client::FirewallServiceClient;
use cassette_proto::{parse_duration, pb, Target, TargetError};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::document::Document;
use crate::output::Output;

/// Manage cassette firewalls: create them, open and close ports, wait for the
/// kernel to have a change, read the audit log.
///
/// A rule is named by its port (`5432`, `5432/tcp`, `5432/udp`) or its id.
///
/// Exit codes: 0 ok; 1 other error; 2 usage; 3 not found; 4 invalid input;
/// 5 conflict (already exists, stale revision, a default rule); 6 unavailable
/// or timed out; 7 not allowed (unauthenticated, permission denied); 8 a
/// diagnosis with a failed check.
#[derive(Debug, Parser)]
#[command(name = "cassette", version, about)]
struct Cli {
    #[command(flatten)]
    connection: Connection,

    /// How to print answers (`yaml`: `firewall get` as a document for
    /// `diff -f` and `apply -f`).
    #[arg(
        short = 'o',
        long,
        global = true,
        env = "CASSETTE_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Connection {
    /// The rules service: http://HOST:PORT, https://HOST:PORT or unix:/PATH.
    #[arg(
        long,
        global = true,
        env = "CASSETTE_RULES",
        default_value = "http://127.0.0.1:50051"
    )]
    rules: Target,

    /// A bearer token (sent as `authorization: Bearer ...`).
    #[arg(long, global = true, env = "CASSETTE_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// CA (PEM) the service's certificate must chain to; turns on TLS.
    #[arg(long, global = true, env = "CASSETTE_CA")]
    ca: Option<PathBuf>,

    /// Client certificate (PEM), with --key.
    #[arg(long, global = true, env = "CASSETTE_CERT", requires = "key")]
    cert: Option<PathBuf>,

    /// The client certificate's key (PEM).
    #[arg(long, global = true, env = "CASSETTE_KEY", requires = "cert")]
    key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, show, list and delete firewalls.
    #[command(subcommand)]
    Firewall(FirewallCommand),
    /// Add, toggle, describe and delete rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Keep a change made with --confirm-within (default: every unconfirmed
    /// change of the instance), so it is not undone.
    Confirm {
        instance: String,
        /// The change's revision, as `firewall get` lists it.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Wait until the instance's kernel has a revision (default: the latest).
    Wait {
        instance: String,
        #[arg(long, default_value_t = 0)]
        revision: u64,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// "The latest" is the latest any replica acknowledged before this
        /// call, not the answering replica's.
        #[arg(long)]
        consistent: bool,
    },
    /// The audit log: who changed what, when.
    Events {
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// Keep printing new events as they are committed.
        #[arg(long)]
        follow: bool,
    },
    /// What applying a firewall document (`firewall get -o yaml`, edited)
    /// would change, and what each change that closes a port would cut.
    /// Nothing is changed.
    Diff {
        /// The document, YAML or JSON (`-` reads standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Put a firewall document in force: every rule at once, in one
    /// revision and one kernel transaction.
    Apply {
        /// The document, YAML or JSON (`-` reads standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Refuse if the firewall changed since the document was written
        /// (its `revision`).
        #[arg(long)]
        if_unchanged: bool,
        #[command(flatten)]
        window: Window,
        #[command(flatten)]
        change: Await,
    },
    /// Connections the firewall dropped in the last hour, per port, with
    /// their top sources, most recent first.
    Blocked { instance: String },
    /// The troubleshooting checklist for one port.
    Diagnose {
        instance: String,
        port: u32,
        #[arg(long)]
        udp: bool,
    },
}

#[derive(Debug, Subcommand)]
enum FirewallCommand {
    /// Create an instance's firewall (with SSH, HTTP, HTTPS open); idempotent.
    Create { instance: String },
    /// Show a firewall: each rule with its state.
    Get {
        instance: String,
        /// Include every change any replica acknowledged before this call
        /// (one more etcd round trip on replicas; the default is what the
        /// replica answering has seen).
        #[arg(long)]
        consistent: bool,
    },
    /// List firewalls (every page).
    List {
        /// Only rules that accepted no packet for this long (e.g. 7d, 12h).
        #[arg(long, value_parser = parse_duration)]
        unused_for: Option<Duration>,
    },
    /// Delete a firewall (the instance then accepts nothing).
    Delete { instance: String },
}

/// A change that undoes itself unless confirmed.
#[derive(Debug, Clone, Copy, clap::Args)]
struct Window {
    /// Undo the change after this long (1s to 24h, e.g. 2m) unless
    /// `cassette confirm` keeps it first: a change that locks you out puts
    /// itself back.
    #[arg(long, value_parser = parse_duration)]
    confirm_within: Option<Duration>,
    /// With --confirm-within: a new connection accepted through the rule
    /// confirms the change.
    #[arg(long, requires = "confirm_within")]
    confirm_on_traffic: bool,
}

impl Window {
    fn within(&self) -> Option<prost_types::Duration> {
        self.confirm_within.and_then(|d| d.try_into().ok())
    }
}

/// A change that answers once it is in force.
#[derive(Debug, Clone, Copy, clap::Args)]
struct Await {
    /// Answer once the instance's kernel has the change, waiting at most
    /// this long (up to 300s, e.g. 10s). Exits 6 if its enforcer has not
    /// acknowledged it by then (the change is kept all the same), 1 if the
    /// enforcer failed to apply it.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
}

impl Await {
    fn wait_for_sync(&self) -> Option<prost_types::Duration> {
        self.wait.and_then(|d| d.try_into().ok())
    }

    /// After the answer is printed: the exit for a change that was to be in
    /// force by now and is not.
    fn outcome(&self, firewall: &pb::Firewall) -> anyhow::Result<()> {
        if self.wait.is_none() {
            return Ok(());
        }
        if let Some(late) = firewall
            .warnings
            .iter()
            .find(|w| w.code == cassette_proto::NOT_YET_ACKNOWLEDGED)
        {
            return Err(Exit::new(6, late.message.clone()).into());
        }
        match &firewall.sync {
            Some(sync)
                if sync.failed_revision >= firewall.revision && !sync.last_error.is_empty() =>
            {
                Err(Exit::new(
                    1,
                    format!(
                        "the enforcer failed to apply revision {}: {}",
                        sync.failed_revision, sync.last_error
                    ),
                )
                .into())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Subcommand)]
enum RuleCommand {
    /// Open a port, or a range of ports (27015-27030).
    Add {
        instance: String,
        #[arg(value_parser = parse_ports)]
        port: (u32, u32),
        /// UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        #[arg(long, default_value = "")]
        description: String,
        /// Add it switched off.
        #[arg(long)]
        disabled: bool,
        /// Only from these networks (repeat; CIDR or address).
        #[arg(long = "source")]
        sources: Vec<String>,
        /// Remove it after this long (e.g. 2h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        window: Window,
        #[command(flatten)]
        change: Await,
    },
    /// Turn a rule on (the toggle goes green).
    Enable {
        instance: String,
        /// Its port (5432, 5432/tcp, 5432/udp) or its id.
        rule: String,
        #[command(flatten)]
        window: Window,
        #[command(flatten)]
        change: Await,
    },
    /// Turn a rule off (gray: blocking, rule kept; open connections are cut).
    Disable {
        instance: String,
        /// Its port (5432, 5432/tcp, 5432/udp) or its id.
        rule: String,
        /// Turn SSH off without asking (not needed with --confirm-within).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        window: Window,
        #[command(flatten)]
        change: Await,
    },
    /// Set a rule's description.
    Describe {
        instance: String,
        /// Its port (5432, 5432/tcp, 5432/udp) or its id.
        rule: String,
        description: String,
        #[command(flatten)]
        change: Await,
    },
    /// Delete a custom rule (open connections through it are cut).
    Delete {
        instance: String,
        /// Its port (5432, 5432/tcp, 5432/udp) or its id.
        rule: String,
        #[command(flatten)]
        window: Window,
        #[command(flatten)]
        change: Await,
    },
}

/// Adds the bearer token, if any, to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Firewalls = FirewallServiceClient<InterceptedService<Channel, Bearer>>;
type Audit = AuditServiceClient<InterceptedService<Channel, Bearer>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let target = cli.connection.rules.clone();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = if let Some(status) = error.downcast_ref::<tonic::Status>() {
                match explain(status, &target) {
                    Some(exit) => {
                        eprintln!("error: {}", exit.message);
                        exit.code
                    }
                    None => {
                        output::print_status(status);
                        exit_code(status.code())
                    }
                }
            } else if let Some(exit) = error.downcast_ref::<Exit>() {
                if !exit.message.is_empty() {
                    eprintln!("error: {}", exit.message);
                }
                exit.code
            } else {
                eprintln!("error: {error:#}");
                1
            };
            ExitCode::from(code)
        }
    }
}

/// What a failure that gRPC names in its own words means for the user, when
/// it is a mistake of address, port or TLS rather than the service's answer.
fn explain(status: &tonic::Status, target: &Target) -> Option<Exit> {
    let message = status.message();
    let https = target.to_string().starts_with("https://");
    let all = format!("{message} {:?}", std::error::Error::source(status));
    if message.contains("grpc-status header missing")
        || message.contains("mapped from HTTP status code")
        || message.contains("while receiving response with status")
    {
        return Some(Exit::new(
            2,
            format!(
                "{target} answered in HTTP, not gRPC: that is probably the console's port \
                 (8080 by default); the gRPC API listens on 50051 by default (--rules \
                 http://127.0.0.1:50051)"
            ),
        ));
    }
    if all.contains("Connection refused") || all.contains("ConnectionRefused") {
        return Some(Exit::new(
            6,
            format!(
                "nothing listens at {target} (connection refused): is the rules service \
                 running? ./scripts/run.sh starts one on 127.0.0.1:50051"
            ),
        ));
    }
    let transport = matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
    );
    if transport && https && (all.contains("InvalidContentType") || all.contains("corrupt message"))
    {
        return Some(Exit::new(
            2,
            format!("{target} does not speak TLS: use http:// (and no --ca)"),
        ));
    }
    if let Some(at) = all
        .find("invalid peer certificate: ")
        .filter(|_| transport && https)
    {
        let reason = all[at + "invalid peer certificate: ".len()..]
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or_default();
        let why = match reason {
            "UnknownIssuer" | "BadSignature" => {
                format!("it does not chain to the CA given with --ca ({reason})")
            }
            "NotValidForName" => format!("it is not for this host name ({reason})"),
            _ => format!("refused ({reason})"),
        };
        return Some(Exit::new(
            2,
            format!(
                "{target}'s certificate: {why}; give --ca the CA the service's certificate \
                 chains to (a development PKI's ca.pem)"
            ),
        ));
    }
    if transport && !https && (all.contains("transport error") || all.contains("h2 protocol error"))
    {
        return Some(Exit::new(
            2,
            format!(
                "{target} did not answer plaintext gRPC: if it serves TLS, use https:// with --ca"
            ),
        ));
    }
    None
}

/// The exit code for a failed call's status.
fn exit_code(code: tonic::Code) -> u8 {
    use tonic::Code;
    match code {
        Code::NotFound => 3,
        Code::InvalidArgument | Code::OutOfRange => 4,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => 5,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 6,
        Code::Unauthenticated | Code::PermissionDenied => 7,
        _ => 1,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let yaml = matches!(cli.output, Format::Yaml);
    if yaml && !matches!(cli.command, Command::Firewall(FirewallCommand::Get { .. })) {
        return Err(Exit::new(
            2,
            "--output yaml is for `firewall get` (a document for `diff -f` and `apply -f`)".into(),
        )
        .into());
    }
    let out = Output::new(matches!(cli.output, Format::Json))?;
    let (channel, bearer) = connect(&cli.connection).await?;
    let mut firewalls: Firewalls =
        FirewallServiceClient::with_interceptor(channel.clone(), bearer.clone());
    match cli.command {
        Command::Firewall(command) => match command {
            FirewallCommand::Create { instance } => {
                let request = pb::CreateFirewallRequest {
                    instance_id: instance,
                    request_id: String::new(),
                    ..Default::default()
                };
                out.firewall(&firewalls.create_firewall(request).await?.into_inner())
            }
            FirewallCommand::Get {
                instance,
                consistent,
            } => {
                let request = pb::GetFirewallRequest {
                    instance_id: instance,
                    consistency: consistency(consistent),
                };
                let firewall = firewalls.get_firewall(request).await?.into_inner();
                if yaml {
                    cassette_proto::out!("{}", Document::of(&firewall).to_yaml()?)?;
                    return Ok(());
                }
                out.firewall(&firewall)
            }
            FirewallCommand::List { unused_for } => {
                let mut page_token = String::new();
                let mut all = Vec::new();
                // Bounded: a page holds at least one firewall.
                for _ in 0..1_000_000 {
                    let page = firewalls
                        .list_firewalls(pb::ListFirewallsRequest {
                            page_size: 1000,
                            page_token: page_token.clone(),
                            unused_for: unused_for.and_then(|d| d.try_into().ok()),
                        })
                        .await?
                        .into_inner();
                    all.extend(page.firewalls);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                out.firewalls(&all)
            }
            FirewallCommand::Delete { instance } => {
                let request = pb::DeleteFirewallRequest {
                    instance_id: instance.clone(),
                    ..Default::default()
                };
                firewalls.delete_firewall(request).await?;
                out.done(&format!("deleted the firewall of {instance}"))
            }
        },
        Command::Rule(command) => {
            let (answer, change) = match command {
                RuleCommand::Add {
                    instance,
                    port,
                    udp,
                    description,
                    disabled,
                    sources,
                    ttl,
                    window,
                    change,
                } => {
                    let (first, last) = port;
                    let (port, port_range) = if first == last {
                        (first, None)
                    } else {
                        (0, Some(pb::PortRange { first, last }))
                    };
                    let request = pb::AddRuleRequest {
                        instance_id: instance,
                        port,
                        port_range,
                        protocol: protocol(udp).into(),
                        description,
                        enabled: Some(!disabled),
                        sources,
                        ttl: ttl.and_then(|d| d.try_into().ok()),
                        confirm_within: window.within(),
                        confirm_on_traffic: window.confirm_on_traffic,
                        wait_for_sync: change.wait_for_sync(),
                        ..Default::default()
                    };
                    (firewalls.add_rule(request).await?, change)
                }
                RuleCommand::Enable {
                    instance,
                    rule,
                    window,
                    change,
                } => {
                    let rule = rule_id(&mut firewalls, &instance, &rule).await?;
                    let request = toggle(instance, rule, true, window, change);
                    (firewalls.update_rule(request).await?, change)
                }
                RuleCommand::Disable {
                    instance,
                    rule,
                    yes,
                    window,
                    change,
                } => {
                    let found = find_rule(&mut firewalls, &instance, &rule).await?;
                    let ssh = found.port == 22 && found.protocol != pb::Protocol::Udp as i32;
                    // A window puts SSH back by itself: no lock-out to ask about.
                    if ssh && !yes && window.confirm_within.is_none() {
                        confirm_ssh_off()?;
                    }
                    let request = toggle(instance, found.id, false, window, change);
                    (firewalls.update_rule(request).await?, change)
                }
                RuleCommand::Describe {
                    instance,
                    rule,
                    description,
                    change,
                } => {
                    let request = pb::UpdateRuleRequest {
                        rule_id: rule_id(&mut firewalls, &instance, &rule).await?,
                        instance_id: instance,
                        description: Some(description),
                        wait_for_sync: change.wait_for_sync(),
                        ..Default::default()
                    };
                    (firewalls.update_rule(request).await?, change)
                }
                RuleCommand::Delete {
                    instance,
                    rule,
                    window,
                    change,
                } => {
                    let request = pb::DeleteRuleRequest {
                        rule_id: rule_id(&mut firewalls, &instance, &rule).await?,
                        instance_id: instance,
                        confirm_within: window.within(),
                        confirm_on_traffic: window.confirm_on_traffic,
                        wait_for_sync: change.wait_for_sync(),
                        ..Default::default()
                    };
                    (firewalls.delete_rule(request).await?, change)
                }
            };
            let firewall = answer.into_inner();
            out.firewall(&firewall)?;
            change.outcome(&firewall)
        }
        Command::Confirm { instance, revision } => {
            let revisions = match revision {
                Some(revision) => vec![revision],
                None => {
                    let request = pb::GetFirewallRequest {
                        instance_id: instance.clone(),
                        ..Default::default()
                    };
                    let firewall = firewalls.get_firewall(request).await?.into_inner();
                    firewall.unconfirmed.iter().map(|c| c.revision).collect()
                }
            };
            if revisions.is_empty() {
                return out.done(&format!("{instance} has no unconfirmed change"));
            }
            let mut last = None;
            for revision in revisions {
                let request = pb::ConfirmChangeRequest {
                    instance_id: instance.clone(),
                    revision,
                    ..Default::default()
                };
                last = Some(firewalls.confirm_change(request).await?.into_inner());
            }
            match last {
                Some(firewall) => out.firewall(&firewall),
                None => Ok(()),
            }
        }
        Command::Wait {
            instance,
            revision,
            timeout,
            consistent,
        } => {
            let request = pb::WaitForSyncRequest {
                instance_id: instance,
                revision,
                timeout: timeout.try_into().ok(),
                consistency: consistency(consistent),
            };
            out.sync(&firewalls.wait_for_sync(request).await?.into_inner())
        }
        Command::Events {
            instance,
            actor,
            follow,
        } => {
            let mut audit: Audit = AuditServiceClient::with_interceptor(channel, bearer);
            let request = pb::ListEventsRequest {
                instance_id: instance.unwrap_or_default(),
                actor: actor.unwrap_or_default(),
                follow,
                ..Default::default()
            };
            let mut stream = audit.list_events(request).await?.into_inner();
            let mut header = true;
            while let Some(event) = stream.message().await? {
                out.event(&event, header)?;
                header = false;
            }
            Ok(())
        }
        Command::Diff { file } => {
            let document = read_document(&file)?;
            let request = pb::ApplyFirewallRequest {
                instance_id: document.instance.clone(),
                rules: document.desired()?,
                dry_run: true,
                ..Default::default()
            };
            out.applied(&firewalls.apply_firewall(request).await?.into_inner())
        }
        Command::Apply {
            file,
            if_unchanged,
            window,
            change,
        } => {
            let document = read_document(&file)?;
            let expected_revision = match (if_unchanged, document.written_at()) {
                (false, _) => None,
                (true, Some(revision)) => Some(revision),
                (true, None) => {
                    return Err(Exit::new(
                        2,
                        format!(
                            "{}: --if-unchanged needs the document's revision",
                            file.display()
                        ),
                    )
                    .into())
                }
            };
            let request = pb::ApplyFirewallRequest {
                instance_id: document.instance.clone(),
                rules: document.desired()?,
                expected_revision,
                confirm_within: window.within(),
                confirm_on_traffic: window.confirm_on_traffic,
                wait_for_sync: change.wait_for_sync(),
                ..Default::default()
            };
            let applied = firewalls.apply_firewall(request).await?.into_inner();
            out.applied(&applied)?;
            change.outcome(&applied.firewall.unwrap_or_default())
        }
        Command::Blocked { instance } => {
            let request = pb::GetFirewallRequest {
                instance_id: instance,
                ..Default::default()
            };
            out.blocked(&firewalls.get_firewall(request).await?.into_inner())
        }
        Command::Diagnose {
            instance,
            port,
            udp,
        } => {
            let request = pb::DiagnoseRequest {
                instance_id: instance,
                port,
                protocol: protocol(udp).into(),
            };
            let diagnosis = firewalls.diagnose(request).await?.into_inner();
            out.diagnosis(&diagnosis)?;
            if diagnosis.ok {
                Ok(())
            } else {
                Err(Exit::quiet(8).into())
            }
        }
    }
}

/// A failure of the command itself (not of a call), with its exit code.
#[derive(Debug)]
struct Exit {
    code: u8,
    message: String,
}

impl Exit {
    fn new(code: u8, message: String) -> Self {
        Self { code, message }
    }

    /// An exit code whose reason was printed already.
    fn quiet(code: u8) -> Self {
        Self::new(code, String::new())
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// A firewall document from `path` (`-`: standard input).
fn read_document(path: &std::path::Path) -> anyhow::Result<Document> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| Exit::new(2, format!("cannot read {}: {e}", path.display())))?;
    Document::parse(&text, &path.display().to_string())
        .map_err(|e| Exit::new(4, e.to_string()).into())
}

/// `5432` or `27015-27030` as the numbers it names (the service says
/// whether they are ports).
fn parse_ports(text: &str) -> Result<(u32, u32), String> {
    let number = |part: &str| part.trim().parse::<u32>().ok();
    match text.split_once('-') {
        None => number(text).map(|port| (port, port)),
        Some((first, last)) => number(first).zip(number(last)),
    }
    .ok_or_else(|| format!("{text:?} is not a port like 5432 or a range like 27015-27030"))
}

/// A rule as people name it: its port or range (`5432`, `5432/tcp`,
/// `27015-27030/udp`), or else its id.
fn port_of(named: &str) -> Option<((u32, u32), Option<pb::Protocol>)> {
    let (port, protocol) = match named.split_once('/') {
        Some((port, protocol)) => {
            let protocol = match protocol.to_ascii_lowercase().as_str() {
                "tcp" => pb::Protocol::Tcp,
                "udp" => pb::Protocol::Udp,
                _ => return None,
            };
            (port, Some(protocol))
        }
        None => (named, None),
    };
    parse_ports(port).ok().map(|ports| (ports, protocol))
}

/// A rule's ports as the service answers them.
fn ports_of(rule: &pb::Rule) -> (u32, u32) {
    rule.port_range
        .as_ref()
        .map_or((rule.port, rule.port), |r| (r.first, r.last))
}

/// The rule `named` names on `instance` (by port or id).
async fn find_rule(
    firewalls: &mut Firewalls,
    instance: &str,
    named: &str,
) -> anyhow::Result<pb::Rule> {
    let request = pb::GetFirewallRequest {
        instance_id: instance.to_owned(),
        ..Default::default()
    };
    let firewall = firewalls.get_firewall(request).await?.into_inner();
    let name = |r: &pb::Rule| {
        format!(
            "{}/{} ({})",
            output::ports_text(r),
            output::protocol_name(r.protocol),
            r.id
        )
    };
    let Some(((first, last), protocol)) = port_of(named) else {
        return firewall
            .rules
            .into_iter()
            .find(|r| r.id == named)
            .ok_or_else(|| Exit::new(3, format!("no rule {named} on instance {instance}")).into());
    };
    let mut matching: Vec<pb::Rule> = firewall
        .rules
        .into_iter()
        .filter(|r| {
            let (from, to) = ports_of(r);
            // One port names the rule that covers it; a range, its own.
            let names = if first == last {
                from <= first && first <= to
            } else {
                (from, to) == (first, last)
            };
            names && protocol.is_none_or(|p| r.protocol == p as i32)
        })
        .collect();
    match matching.len() {
        0 => Err(Exit::new(
            3,
            format!("no rule for port {named} on instance {instance}"),
        )
        .into()),
        1 => Ok(matching.remove(0)),
        _ => Err(Exit::new(
            2,
            format!(
                "port {named} names {} rules on {instance}: {}; say {named}/tcp or {named}/udp",
                matching.len(),
                matching.iter().map(name).collect::<Vec<_>>().join(", ")
            ),
        )
        .into()),
    }
}

/// The id of the rule `named` names; an id is passed on as it is (the
/// service says whether it exists).
async fn rule_id(firewalls: &mut Firewalls, instance: &str, named: &str) -> anyhow::Result<String> {
    if port_of(named).is_none() {
        return Ok(named.to_owned());
    }
    Ok(find_rule(firewalls, instance, named).await?.id)
}

/// What the page says before SSH goes off (the product's own warning).
const SSH_WARNING: &str = "If you disable SSH, you'll only have web console access. SSH sessions \
     already open are cut too. To get back in, use the web console from your instance page and \
     re-enable port 22 there.";

/// Asks on a terminal before SSH goes off; refuses without one (a script
/// says --yes).
fn confirm_ssh_off() -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(Exit::new(
            2,
            format!(
                "{SSH_WARNING}\nGive --confirm-within 2m to have it turned back on unless you confirm, \
                 or --yes to disable SSH anyway."
            ),
        )
        .into());
    }
    eprint!("{SSH_WARNING}\nDisable SSH? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Exit::new(1, "SSH stays on".to_owned()).into())
    }
}

fn protocol(udp: bool) -> pb::Protocol {
    if udp {
        pb::Protocol::Udp
    } else {
        pb::Protocol::Tcp
    }
}

fn toggle(
    instance: String,
    rule: String,
    enabled: bool,
    window: Window,
    change: Await,
) -> pb::UpdateRuleRequest {
    pb::UpdateRuleRequest {
        instance_id: instance,
        rule_id: rule,
        enabled: Some(enabled),
        confirm_within: window.within(),
        confirm_on_traffic: window.confirm_on_traffic,
        wait_for_sync: change.wait_for_sync(),
        ..Default::default()
    }
}

/// The channel (TLS with --ca, a client certificate with --cert/--key) and
/// the token interceptor.
async fn connect(c: &Connection) -> anyhow::Result<(Channel, Bearer)> {
    let read = |path: &PathBuf, flag: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
    };
    let tls = match &c.ca {
        None => None,
        Some(ca) => {
            let mut tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--ca")?));
            if let (Some(cert), Some(key)) = (&c.cert, &c.key) {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "--cert")?,
                    read(key, "--key")?,
                ));
            }
            Some(tls)
        }
    };
    let token = match &c.token {
        None => None,
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .context("--token must be printable ASCII")?,
        ),
    };
    // A wrong scheme for the flags given is a usage mistake (exit 2);
    // unreachable is UNAVAILABLE, like a service that answers so (exit 6).
    let channel = c
        .rules
        .connect_with(tls.as_ref())
        .await
        .map_err(|e| -> anyhow::Error {
            match e {
                TargetError::NoTls(_) => Exit::new(
                    2,
                    format!("{e}: give --ca PEM, the CA the service's certificate chains to"),
                )
                .into(),
                TargetError::NotHttps(_) | TargetError::Invalid(_) => {
                    Exit::new(2, e.to_string()).into()
                }
                e => tonic::Status::unavailable(format!(
                    "cannot reach the rules service at {}: {e}{}",
                    c.rules,
                    source_chain(&e)
                ))
                .into(),
            }
        })?;
    Ok((channel, Bearer(token)))
}

/// The causes under `error`, as ": cause: cause" (tonic's own message stops
/// at "transport error").
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut chain = String::new();
    let mut source = error.source();
    // Bounded: error chains are short.
    for _ in 0..8 {
        let Some(cause) = source else { break };
        let text = cause.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = cause.source();
    }
    chain
}

/// `--consistent` as the request's `consistency`.
fn consistency(consistent: bool) -> i32 {
    if consistent {
        pb::ReadConsistency::Linearizable as i32
    } else {
        pb::ReadConsistency::Unspecified as i32
    }
}
