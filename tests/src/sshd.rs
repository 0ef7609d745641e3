//! A real OpenSSH server for tests: Debian's `/usr/sbin/sshd` on a free loopback port,
//! with its own host key, `authorized_keys` and pid file in a temp dir, killed on drop.
//! Tests run as root, and root may run docker: that is the "user who may run docker";
//! [`ensure_nodocker_user`] makes a user who may not.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::{free_port, TestDir};

/// Where Debian's `openssh-server` installs the server.
pub const SSHD_BIN: &str = "/usr/sbin/sshd";
/// A user without docker access, for script mode.
pub const NODOCKER_USER: &str = "stella-nodocker";

/// A running sshd.
#[derive(Debug)]
pub struct TestSshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The host key's fingerprint, `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// A private key (OpenSSH format, no passphrase) that `authorized_keys` accepts.
    pub client_key: PathBuf,
    dir: TestDir,
    child: Option<tokio::process::Child>,
}

impl TestSshd {
    /// Starts sshd with a fresh host key and one authorized client key.
    pub async fn start() -> anyhow::Result<TestSshd> {
        assert!(
            Path::new(SSHD_BIN).exists(),
            "{SSHD_BIN} is missing: install the Debian package openssh-server (cargo xtask test provisions it)"
        );
        let dir = TestDir::new("sshd");
        // The remote user reads authorized_keys itself: every user may traverse.
        set_mode(dir.path(), 0o755)?;
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let host_key = dir.path().join("host_ed25519");
        keygen(&host_key).await?;
        let client_key = dir.path().join("client_ed25519");
        keygen(&client_key).await?;
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)?;
        set_mode(&authorized, 0o644)?;
        let fingerprint = fingerprint_of(&host_key.with_extension("pub")).await?;
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {}\n\
                 AuthorizedKeysFile {}\n\
                 StrictModes no\n\
                 PidFile {}\n\
                 UsePAM no\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n\
                 MaxStartups 200\n\
                 MaxSessions 100\n\
                 LogLevel VERBOSE\n",
                host_key.display(),
                authorized.display(),
                dir.path().join("sshd.pid").display()
            ),
        )?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port().await?;
            let log = std::fs::File::create(dir.path().join("sshd.log"))?;
            let mut child = tokio::process::Command::new(SSHD_BIN)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .arg("-p")
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting sshd")?;
            match wait_banner(port, &mut child).await {
                Ok(()) => {
                    return Ok(TestSshd {
                        port,
                        fingerprint,
                        client_key,
                        dir,
                        child: Some(child),
                    })
                }
                Err(error) => {
                    let _ = child.kill().await;
                    last_error = Some(error);
                }
            }
        }
        let log = std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default();
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("sshd did not start"))
            .context(format!("sshd did not start; its log: {log}")))
    }

    /// The test's directory (readable by every user).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The host's public key file.
    pub fn host_key_pub(&self) -> PathBuf {
        self.dir.path().join("host_ed25519.pub")
    }

    /// The PEM of [`TestSshd::client_key`].
    pub fn client_key_pem(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.client_key)?)
    }

    /// What sshd logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The listening sshd's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// Kills (SIGKILL) every session process of this sshd — the `sshd` processes below
    /// the listener: the privileged monitor and, for a user other than root, its
    /// unprivileged child that holds the connection too — so each client connection
    /// drops at once, as a network cut would. The commands the sessions ran are left
    /// running, orphaned, as after a cut. Returns how many sessions there were.
    pub fn kill_sessions(&self) -> usize {
        let Some(pid) = self.pid() else { return 0 };
        let sessions = children_of(pid);
        let mut sshd = Vec::new();
        let mut pending = sessions.clone();
        while let Some(next) = pending.pop() {
            let comm = std::fs::read_to_string(format!("/proc/{next}/comm")).unwrap_or_default();
            if comm.trim() == "sshd" {
                sshd.push(next);
                pending.extend(children_of(next));
            }
        }
        for child in &sshd {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &child.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        sessions.len()
    }

    /// How many sessions (connections) sshd serves now.
    pub fn session_count(&self) -> usize {
        self.pid().map_or(0, |pid| children_of(pid).len())
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        self.kill_sessions();
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
    }
}

/// The process ids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces, so read after the `)`.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

async fn wait_banner(port: u16, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("sshd exited: {status}");
        }
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut banner = [0u8; 8];
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut banner)).await;
            if matches!(read, Ok(Ok(n)) if n >= 4 && banner.starts_with(b"SSH-")) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out waiting for sshd's banner on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ssh-keygen -t ed25519 -N '' -f PATH` (PATH and PATH.pub).
pub async fn keygen(path: &Path) -> anyhow::Result<()> {
    run(tokio::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "stella-test", "-f"])
        .arg(path))
    .await
    .map(drop)
}

/// The `SHA256:…` fingerprint `ssh-keygen -lf` prints for a public key file.
pub async fn fingerprint_of(public_key: &Path) -> anyhow::Result<String> {
    let output = run(tokio::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public_key))
    .await?;
    output
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no fingerprint in {output:?}"))
}

static USER_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Creates (once) the system user [`NODOCKER_USER`], not in the docker group, with a
/// login shell and no password (`*`, which sshd does not take for a locked account);
/// returns its uid and gid.
pub fn ensure_nodocker_user() -> anyhow::Result<(u32, u32)> {
    ensure_user(NODOCKER_USER, &[])
}

/// Creates (once) a system user `name` with `/bin/sh` as its shell (which reads no
/// start-up file for commands), in `groups`, and no password (`*`, which sshd does not
/// take for a locked account); returns its uid and gid.
pub fn ensure_user(name: &str, groups: &[&str]) -> anyhow::Result<(u32, u32)> {
    let _guard = USER_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let id = |flag: &str| -> Option<u32> {
        let output = std::process::Command::new("id")
            .args([flag, name])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let mut useradd = std::process::Command::new("useradd");
        useradd.args(["--system", "--create-home", "--shell", "/bin/sh"]);
        if !groups.is_empty() {
            useradd.args(["--groups", &groups.join(",")]);
        }
        let status = useradd.arg(name).status().context("useradd")?;
        if !status.success() && id("-u").is_none() {
            bail!("useradd {name} failed: {status}");
        }
    }
    let status = std::process::Command::new("usermod")
        .args(["-p", "*", name])
        .status()
        .context("usermod")?;
    if !status.success() {
        bail!("usermod -p '*' {name} failed: {status}");
    }
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => bail!("user {name} has no uid"),
    }
}

/// A directory owned by `uid`:`gid` (mode 0755).
pub fn owned_dir(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(path)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    set_mode(path, 0o755)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

async fn run(command: &mut tokio::process::Command) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .context("running a command")?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            command.as_std(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
