//! `cassette-rules health`: SERVING from grpc.health.v1, for container
//! health checks and scripts.

use std::path::PathBuf;

use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig};

use super::flags::read;

pub async fn health(
    rules: &cassette_proto::Target,
    tls_ca: Option<&PathBuf>,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let tls = match tls_ca {
        Some(path) => Some(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path, "--tls-ca")?)),
        ),
        None => None,
    };
    let check = || async {
        let mut client = HealthClient::new(rules.connect_with(tls.as_ref()).await?);
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        anyhow::ensure!(
            status == ServingStatus::Serving as i32,
            "{rules} is not serving"
        );
        anyhow::Ok(())
    };
    let deadline = Instant::now() + wait.unwrap_or_default();
    loop {
        let result = tokio::time::timeout(Duration::from_secs(5), check())
            .await
            .with_context(|| format!("{rules} did not answer within 5 s"))
            .and_then(|r| r);
        match result {
            Ok(()) => {
                cassette_proto::outln!("SERVING")?;
                return Ok(());
            }
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
