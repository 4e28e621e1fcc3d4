//! `cassette-rules pki`: a development PKI (a CA, the service's certificate,
//! client certificates for enforcers and principals). Production operators
//! bring their own; the service only needs PEM files.

use std::path::PathBuf;

use anyhow::Context;
use cassette_auth::{PrincipalName, TrustDomain};
use cassette_model::InstanceId;
use cassette_pki::Pki;
use clap::{ArgGroup, Args, Subcommand};

#[derive(Debug, Args)]
pub struct PkiArgs {
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Make a CA (ca.pem, ca.key), a server certificate (server.pem,
    /// server.key) for localhost, 127.0.0.1, ::1 and each --server-name, and
    /// the event log's Ed25519 signing key (log-signing.key) with the file of
    /// trusted public keys that holds its own (log-trusted-keys.pem).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "cassette.local")]
        trust_domain: TrustDomain,
        /// Another DNS name or IP address the service is reached by (repeatable).
        #[arg(long)]
        server_name: Vec<String>,
        /// How many days the server certificate is valid (the CA: 10 years).
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Issue a client certificate with a SPIFFE identity: enforcer-<ID>.pem/.key
    /// or principal-<NAME>.pem/.key in the directory; or, with --peer, a
    /// cluster member's certificate (an etcd member's: server and client
    /// authentication for the DNS name NAME): NAME.pem/.key.
    #[command(group(ArgGroup::new("identity").required(true).args(["enforcer", "principal", "peer"])))]
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// spiffe://<trust-domain>/enforcer/<ID>: the enforcer of instance ID.
        #[arg(long)]
        enforcer: Option<String>,
        /// spiffe://<trust-domain>/principal/<NAME>: an API caller.
        #[arg(long)]
        principal: Option<String>,
        /// A cluster member reached as NAME (an etcd member).
        #[arg(long, value_name = "NAME")]
        peer: Option<String>,
        /// How many days the certificate is valid.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

pub fn run(args: PkiArgs) -> anyhow::Result<()> {
    match args.command {
        PkiCommand::Init {
            dir,
            trust_domain,
            server_name,
            days,
        } => {
            let pki = Pki::init_for(&dir, trust_domain.as_str(), &server_name, days_of(days))
                .with_context(|| format!("cannot make a PKI in {}", dir.display()))?;
            cassette_proto::outln!("CA:     {}", pki.ca_cert_path().display())?;
            cassette_proto::outln!(
                "server: {} {}",
                pki.server_cert_path().display(),
                pki.server_key_path().display()
            )?;
            cassette_proto::outln!(
                "log:    {} {}",
                pki.log_signing_key_path().display(),
                pki.log_trusted_keys_path().display()
            )?;
        }
        PkiCommand::Issue {
            dir,
            enforcer,
            principal,
            peer,
            days,
        } => {
            let pki = Pki::open(&dir).with_context(|| {
                format!(
                    "cannot open the PKI in {} (run `pki init` first)",
                    dir.display()
                )
            })?;
            if let Some(name) = peer {
                let issued = pki.issue_peer(&name, days_of(days))?;
                cassette_proto::outln!(
                    "{name}: {} {}",
                    issued.cert_path.display(),
                    issued.key_path.display()
                )?;
                return Ok(());
            }
            let domain = TrustDomain::parse(pki.trust_domain())?;
            let (uri, stem) = match (enforcer, principal) {
                (Some(id), _) => {
                    let id = InstanceId::parse(&id).context("invalid --enforcer")?;
                    (domain.enforcer_uri(id.as_str()), format!("enforcer-{id}"))
                }
                (None, Some(name)) => {
                    let name = PrincipalName::parse(&name).context("invalid --principal")?;
                    (
                        domain.principal_uri(name.as_str()),
                        format!("principal-{name}"),
                    )
                }
                (None, None) => anyhow::bail!("give --enforcer or --principal"),
            };
            let issued = pki.issue_for(&uri, &stem, days_of(days))?;
            cassette_proto::outln!(
                "{uri}: {} {}",
                issued.cert_path.display(),
                issued.key_path.display()
            )?;
        }
    }
    Ok(())
}

fn days_of(days: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(days) * 24 * 3600)
}
