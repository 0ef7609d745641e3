//! A real `moto_server` (PyPI `moto[server]`, provisioned by `cargo xtask test`) on a
//! free loopback port, killed on drop: the AWS API as the SDK speaks it, for the ECS
//! target's API shape, tags and task definitions. Its ECS services never run tasks; the
//! running count and the rollout state of a service's deployment are fixed when it is
//! created, by `MOTO_ECS_SERVICE_RUNNING` (set here to `running`).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{free_port, TestDir};

/// The SDK the ecs target uses, for tests and benches that drive ECS (moto, the double)
/// the way an operator's tooling would.
pub use aws_sdk_ecs;

/// The command `moto[server]` installs.
pub const MOTO_SERVER: &str = "moto_server";

/// Keys moto accepts (it checks no signature).
pub const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// See [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    dir: TestDir,
    child: tokio::process::Child,
}

impl Moto {
    /// Starts moto with `MOTO_ECS_SERVICE_RUNNING=running`; fails loudly when moto is
    /// not installed.
    pub async fn start(running: u32) -> anyhow::Result<Moto> {
        let found = std::process::Command::new(MOTO_SERVER)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !found.is_ok_and(|status| status.success()) {
            bail!(
                "{MOTO_SERVER} is missing: pip install 'moto[server]' (cargo xtask test provisions it)"
            );
        }
        let dir = TestDir::new("moto");
        let port = free_port().await?;
        let log = std::fs::File::create(dir.path().join("moto.log"))?;
        let child = tokio::process::Command::new(MOTO_SERVER)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ECS_SERVICE_RUNNING", running.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting moto_server")?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let ready = crate::wait_until("moto_server to answer", Duration::from_secs(30), || {
            let http = http.clone();
            let probe = format!("{url}/moto-api/");
            async move { http.get(probe).send().await.ok().map(|_| ()) }
        })
        .await;
        if let Err(error) = ready {
            let log = std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default();
            return Err(error.context(format!("moto_server did not start; its log: {log}")));
        }
        Ok(Moto { url, dir, child })
    }

    /// An ECS client of the SDK for this server.
    pub fn ecs_client(&self) -> aws_sdk_ecs::Client {
        ecs_client(&self.url)
    }

    /// What moto logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// An ECS client of the SDK (rustls on ring, like the ecs target's) for the endpoint
/// `url`, signing with [`ACCESS_KEY_ID`] in [`REGION`].
pub fn ecs_client(url: &str) -> aws_sdk_ecs::Client {
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .region(aws_sdk_ecs::config::Region::new(REGION))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "moto",
        ))
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .endpoint_url(url)
        .build();
    aws_sdk_ecs::Client::from_conf(config)
}
