//! The `winrm` target against the WS-Management listener double (`tests/src/doubles/`,
//! written from MS-WSMV, NTLM verified by pyspnego's acceptor): deploys with the release
//! in `$env:STELLA_*`, stickers, drift, re-delivery, Basic and NTLM, refused passwords,
//! failing and long-running scripts, the envelopes compared with pywinrm's, and
//! releases through a real control plane and agent (rollback, remediation).
//!
//! Every test has its own double (and directory), so the tests run in parallel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use stella_agent_core::{
    ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, DriftKind, Plan, Progress, Sticker,
    Target, TargetSpec,
};
use stella_target_winrm::WinrmTarget;
use stella_tests::doubles::winrm::{WinrmDouble, USER};
use stella_tests::init_tracing;

const STICKER_DIR: &str = r"C:\ProgramData\Stella\stickers";

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// One test's host: the double and a target name.
struct Host {
    double: WinrmDouble,
    target: WinrmTarget,
    name: String,
}

impl Host {
    async fn start(prefix: &str) -> anyhow::Result<Host> {
        init_tracing();
        Ok(Host {
            double: WinrmDouble::start().await?,
            target: WinrmTarget::new(),
            name: format!("{prefix}-{}", suffix()),
        })
    }

    /// Where the script of a test writes, on this host.
    fn work(&self) -> PathBuf {
        let work = self.double.dir().join("work");
        let _ = std::fs::create_dir_all(&work);
        work
    }

    fn settings(&self, auth: &str, script: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("endpoint".to_owned(), self.double.endpoint()),
            ("user".to_owned(), USER.to_owned()),
            (
                "password_secret".to_owned(),
                "${secret.win_password}".to_owned(),
            ),
            ("auth".to_owned(), auth.to_owned()),
            (
                "ca_file".to_owned(),
                self.double.ca_file().display().to_string(),
            ),
            ("script".to_owned(), script.to_owned()),
        ])
    }

    fn task(&self, version: &str, settings: BTreeMap<String, String>) -> DeployTask {
        let mut task = DeployTask {
            deployment_id: format!("dep-{version}-{}", suffix()),
            decision_id: format!("sha256:{}", "e".repeat(64)),
            environment: "edge".to_owned(),
            release: "shop".to_owned(),
            version: version.to_owned(),
            target: TargetSpec {
                name: self.name.clone(),
                kind: "winrm".to_owned(),
                settings,
            },
            components: vec![
                ComponentSpec {
                    name: "web-api".to_owned(),
                    image: format!("registry.example/shop/api@sha256:{}", "a".repeat(64)),
                },
                ComponentSpec {
                    name: "db".to_owned(),
                    image: format!("registry.example/shop/db@sha256:{}", "b".repeat(64)),
                },
            ],
            registry_auth: Vec::new(),
            generation: 0,
            secrets: Default::default(),
            slot: None,
        };
        task.secrets
            .0
            .insert("win_password".to_owned(), self.double.password.clone());
        task
    }

    fn sticker_file(&self, component: &str) -> PathBuf {
        self.double
            .host_path(&format!(r"{STICKER_DIR}\{}\{component}.json", self.name))
    }

    async fn apply(&self, task: &DeployTask) -> (Result<ApplyOutcome, String>, Vec<String>) {
        let (progress, mut lines) = Progress::channel("agent-test", &task.deployment_id);
        let result = self
            .target
            .apply(task, &Plan::default(), &progress, &CancellationToken::new())
            .await;
        drop(progress);
        let mut collected = Vec::new();
        while let Some(line) = lines.recv().await {
            collected.push(line);
        }
        (
            result.map_err(|e| stella_agent_core::error_chain(&e)),
            collected,
        )
    }
}

mod client;
mod encrypted;
mod envelopes;
mod through_server;
