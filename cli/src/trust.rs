//! The server keys this CLI trusts to have signed decisions and audit checkpoints:
//! recorded at first use (the first time it fetches a decision, an evidence packet or
//! the audit log from a server), like an SSH client's known hosts. `evidence verify`
//! and `audit verify` without `--key` trust these and nothing else: a key that merely
//! came inside a packet, or is listed by a server later, proves nothing.
//!
//! Kept in `$STELLA_CONFIG_DIR/known-keys.json` (default `$XDG_CONFIG_HOME/stella`, else
//! `~/.config/stella`).
//!
//! Beside them, `known-servers.json` keeps the CA fingerprint of each `https://` server
//! whose certificate no system root vouched for, recorded at first use; a server whose
//! CA differs later is refused (see `client.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use stella_decision::dsse::PublicKey;

use crate::commands::Context;

/// One recorded key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KnownKey {
    key_id: String,
    public_key_pem: String,
    recorded_at: String,
}

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct KnownKeys {
    /// Keys by server URL.
    servers: BTreeMap<String, Vec<KnownKey>>,
}

fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("STELLA_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("stella"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("stella")),
        None => bail!("no place for known keys: set STELLA_CONFIG_DIR or HOME"),
    }
}

fn file() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("known-keys.json"))
}

fn load() -> anyhow::Result<KnownKeys> {
    let path = file()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a known-keys file", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(KnownKeys::default()),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(keys: &KnownKeys) -> anyhow::Result<()> {
    let path = file()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(keys).context("encoding known keys")?;
    // Written beside and renamed, so a crash never leaves half a trust store.
    let temp = path.with_extension("json.tmp");
    std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))
}

/// Every recorded key, of every server.
pub fn recorded_keys() -> anyhow::Result<Vec<PublicKey>> {
    let known = load()?;
    let mut keys = Vec::new();
    for (server, list) in &known.servers {
        for key in list {
            keys.push(
                PublicKey::from_pem(&key.public_key_pem)
                    .map_err(|e| anyhow::anyhow!("recorded key {} of {server}: {e}", key.key_id))?,
            );
        }
    }
    Ok(keys)
}

/// Records the server's keys the first time this CLI talks to it about decisions. Keys
/// it lists later that were not recorded are not trusted; a note says so.
pub async fn record_server_keys(context: &Context) -> anyhow::Result<()> {
    let listed = context.client.get("/keys").await?;
    let server = context.client.base().to_owned();
    let mut known = load()?;
    let listed: Vec<KnownKey> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| {
            Some(KnownKey {
                key_id: k["key_id"].as_str()?.to_owned(),
                public_key_pem: k["public_key_pem"].as_str()?.to_owned(),
                recorded_at: crate::output::now(),
            })
        })
        .collect();
    for key in &listed {
        let parsed = PublicKey::from_pem(&key.public_key_pem)
            .map_err(|e| anyhow::anyhow!("the server's key {}: {e}", key.key_id))?;
        if parsed.key_id() != key.key_id {
            bail!(
                "the server lists key {} whose PEM is key {}: refusing to record it",
                key.key_id,
                parsed.key_id()
            );
        }
    }
    match known.servers.get(&server) {
        None => {
            context.note(&format!(
                "recorded {} signing key{} of {server} (first use): {}",
                listed.len(),
                if listed.len() == 1 { "" } else { "s" },
                listed
                    .iter()
                    .map(|k| k.key_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            known.servers.insert(server, listed);
            save(&known)?;
        }
        Some(recorded) => {
            for key in &listed {
                if !recorded.iter().any(|r| r.key_id == key.key_id) {
                    context.note(&format!(
                        "note: {server} lists signing key {} that was not recorded at first use; it is not trusted (check it, then verify with --key)",
                        key.key_id
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The file of server CA pins.
pub fn known_servers_file() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("known-servers.json"))
}

/// One pinned server CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KnownServer {
    ca_fingerprint: String,
    recorded_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KnownServers {
    /// Pins by server URL.
    servers: BTreeMap<String, KnownServer>,
}

fn load_servers() -> anyhow::Result<KnownServers> {
    let path = known_servers_file()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a known-servers file", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(KnownServers::default()),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// The CA fingerprint pinned for `server`, if any.
pub fn server_ca(server: &str) -> anyhow::Result<Option<stella_pki::Fingerprint>> {
    let known = load_servers()?;
    match known.servers.get(server) {
        None => Ok(None),
        Some(entry) => stella_pki::Fingerprint::parse(&entry.ca_fingerprint)
            .map(Some)
            .map_err(|_| {
                anyhow::anyhow!(
                    "the pin of {server} in {} is not a fingerprint",
                    known_servers_file()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
            }),
    }
}

/// Pins `server`'s CA at its first use, and says so on stderr. A failure to write is a
/// note, not an error: the connection was verified, it just will not be remembered.
pub fn record_server_ca(server: &str, fingerprint: &stella_pki::Fingerprint) {
    let result = (|| -> anyhow::Result<bool> {
        let mut known = load_servers()?;
        if known.servers.contains_key(server) {
            return Ok(false);
        }
        known.servers.insert(
            server.to_owned(),
            KnownServer {
                ca_fingerprint: fingerprint.to_string(),
                recorded_at: crate::output::now(),
            },
        );
        let path = known_servers_file()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&known).context("encoding known servers")?;
        let temp = path.with_extension("json.tmp");
        std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
        std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(true)
    })();
    match result {
        Ok(true) => {
            eprintln!("trusting {server} at first use: its CA fingerprint is {fingerprint}");
        }
        Ok(false) => {}
        Err(error) => eprintln!("note: cannot record the CA of {server}: {error:#}"),
    }
}
