//! Starts the WS-Management listener double (`winrm_double.py`, written from MS-WSMV;
//! its header says what it implements) as a child process: HTTPS with a certificate
//! made now by `rcgen`, or plain HTTP with message encryption; Basic and NTLM
//! (pyspnego's acceptor) for one user; commands run on this host, Windows paths under
//! the test's directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::TestDir;

/// The double's script.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/doubles/winrm_double.py");

/// The NTLM user of a double: `DOMAIN\user`.
pub const USER: &str = r"WINHOST\deploy";

/// A running double; killed on drop.
#[derive(Debug)]
pub struct WinrmDouble {
    child: tokio::process::Child,
    dir: TestDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The password of [`USER`].
    pub password: String,
    https: bool,
}

impl WinrmDouble {
    /// Starts a double over HTTPS.
    pub async fn start() -> anyhow::Result<WinrmDouble> {
        Self::start_with(true).await
    }

    /// Starts a double over plain HTTP: it takes only encrypted envelopes (NTLM).
    pub async fn start_http() -> anyhow::Result<WinrmDouble> {
        Self::start_with(false).await
    }

    async fn start_with(https: bool) -> anyhow::Result<WinrmDouble> {
        let dir = TestDir::new("winrm-double");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root)?;
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])?;
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem())?;
        std::fs::write(
            dir.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )?;
        let password = format!("Pw-{}", uuid::Uuid::new_v4().simple());
        let log = std::fs::File::create(dir.path().join("double.log"))?;
        let mut command = tokio::process::Command::new("python3");
        command.arg(SCRIPT).arg("--root").arg(&root).args([
            "--user",
            USER,
            "--password",
            &password,
        ]);
        if https {
            command
                .arg("--cert")
                .arg(dir.path().join("cert.pem"))
                .arg("--key")
                .arg(dir.path().join("key.pem"));
        }
        let mut child = command
            .arg("--record")
            .arg(dir.path().join("record.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting python3 winrm_double.py")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("the winrm double did not start in 20 s")??
            .context("the winrm double exited")?;
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("unexpected first line {line:?}"))?;
        Ok(WinrmDouble {
            child,
            dir,
            port,
            password,
            https,
        })
    }

    /// `https://127.0.0.1:PORT/wsman`, or `http://…` for a plain HTTP double.
    pub fn endpoint(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/wsman", self.port)
    }

    /// The PEM of the listener's certificate (for `ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Where a Windows path (`C:\a\b`) of the double is on this host.
    pub fn host_path(&self, windows: &str) -> PathBuf {
        let (drive, rest) = windows.split_once(':').unwrap_or(("C", windows));
        let mut path = self.dir.path().join("root").join(drive.to_uppercase());
        for part in rest.split('\\').filter(|p| !p.is_empty()) {
            path.push(part);
        }
        path
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The requests the double accepted, one JSON document each.
    pub fn records(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let text =
            std::fs::read_to_string(self.dir.path().join("record.jsonl")).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).context("a record line"))
            .collect()
    }

    /// What the double logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("double.log")).unwrap_or_default()
    }

    /// Stops it now.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}
