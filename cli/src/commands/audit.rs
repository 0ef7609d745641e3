//! `stella audit list|verify`: the tamper-evident audit log (admin only).
//!
//! `verify` fetches the whole chain and its checkpoints and checks them here, with the
//! same code as every other verifier (`stella_decision::audit::verify_chain`), against
//! the server keys recorded when this CLI first talked to the server (or `--key`): a
//! checkpoint signed by any other key is refused, so whoever can write the database
//! cannot forge one.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use stella_decision::audit::{verify_chain, AuditEntry, Checkpoint};
use stella_decision::dsse::PublicKey;

use super::{query, rows, Context};
use crate::trust;

/// Entries or checkpoints asked for per request while paging through the log.
const PAGE: usize = 10_000;

/// `stella audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit entries in order: who did what to what, and how it ended.
    List {
        /// Only entries after this seq.
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// At most this many (at most 10000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Verify the whole chain and its signed checkpoints, here.
    ///
    /// Fetches every entry and checkpoint and checks them with the keys this CLI
    /// trusts; exits 1 naming the first bad entry if an entry was edited, deleted or
    /// reordered, the chain was truncated before a checkpoint, or a checkpoint is
    /// forged. Prints `ok: N entries, M checkpoints, K after the last checkpoint`:
    /// those K are protected by the chain alone until the next checkpoint.
    Verify {
        /// The public key (PEM) that must have signed the checkpoints [default: the
        /// server keys recorded when this CLI first talked to the server about signed
        /// records].
        #[arg(long, value_name = "PUBKEY")]
        key: Option<PathBuf>,
    },
}

/// `stella audit …`.
pub async fn audit(context: &Context, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::List { after, limit } => {
            let after = after.map(|a| a.to_string());
            let limit = limit.to_string();
            let entries = context
                .client
                .get(&format!(
                    "/audit{}",
                    query(&[("after", after.as_deref()), ("limit", Some(&limit))])
                ))
                .await?;
            context.print(&entries, |entries| {
                rows(
                    entries,
                    &["seq", "time", "actor", "action", "object", "outcome"],
                    &["/seq", "/at", "/actor", "/action", "/object", "/outcome"],
                );
            });
            Ok(())
        }
        AuditCommand::Verify { key } => verify(context, key).await,
    }
}

async fn verify(context: &Context, key: Option<PathBuf>) -> anyhow::Result<()> {
    let trusted = match &key {
        Some(key) => {
            let pem = std::fs::read_to_string(key)
                .with_context(|| format!("reading the key {}", key.display()))?;
            vec![PublicKey::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("the key {}: {e}", key.display()))?]
        }
        None => {
            trust::record_server_keys(context).await?;
            let keys = trust::recorded_keys()?;
            if keys.is_empty() {
                bail!("no trusted key: pass --key PUBKEY");
            }
            keys
        }
    };
    // Checkpoints first: every one of them then signs an entry that exists when the
    // entries are fetched, so appends in between never look like truncation.
    let checkpoints: Vec<Checkpoint> =
        fetch_all(context, "/audit/checkpoints", |c: &Checkpoint| c.seq).await?;
    let entries: Vec<AuditEntry> = fetch_all(context, "/audit", |e: &AuditEntry| e.seq).await?;
    let summary = verify_chain(&entries, &checkpoints, &trusted)
        .map_err(|fault| anyhow::anyhow!("the audit log does not verify: {fault}"))?;
    let report = json!({
        "ok": true,
        "entries": summary.entries,
        "checkpoints": summary.checkpoints,
        "last_checkpoint_seq": summary.last_checkpoint_seq,
        "unsigned_tail": summary.unsigned_tail,
        "last_hash": summary.last_hash,
    });
    context.print(&report, |_| {
        println!(
            "ok: {} entries, {} checkpoints, {} after the last checkpoint",
            summary.entries, summary.checkpoints, summary.unsigned_tail
        );
    });
    Ok(())
}

/// Every item of a paged audit list, page by page after the last seq seen.
async fn fetch_all<T: DeserializeOwned>(
    context: &Context,
    path: &str,
    seq: impl Fn(&T) -> i64,
) -> anyhow::Result<Vec<T>> {
    let mut all: Vec<T> = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = context
            .client
            .get(&format!("{path}?after={after}&limit={PAGE}"))
            .await?;
        let page: Vec<T> = serde_json::from_value(page)
            .with_context(|| format!("the server's {path} is not a list of audit records"))?;
        let full = page.len() >= PAGE;
        let last = page.last().map(&seq);
        all.extend(page);
        match last {
            Some(last) if full && last > after => after = last,
            _ => return Ok(all),
        }
    }
}
