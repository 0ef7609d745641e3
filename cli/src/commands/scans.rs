//! `stella scan …`: import Trivy and Grype reports and OpenVEX documents; show what is
//! known about an image digest.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Subcommand;

use super::{path, print, query, Context};
use crate::output::{self, cell};

/// `stella scan …`
#[derive(Debug, Subcommand)]
pub enum ScanCommand {
    /// Import a Trivy JSON report (SchemaVersion 2), a Grype JSON report or an OpenVEX
    /// document, told apart by content; the environments running what it concerns are
    /// evaluated again.
    Import {
        /// The image a report covers: `sha256:<hex>`, `REPO@sha256:<hex>` or a tag,
        /// resolved now. Required for a report; optional for VEX, which names its
        /// products itself.
        #[arg(long, value_name = "REF_OR_DIGEST")]
        image: Option<String>,
        /// The file, as the scanner or `vexctl` wrote it (`-` for standard input).
        file: PathBuf,
    },
    /// Show the reports on an image digest and its findings, with what suppresses each.
    Show {
        /// `sha256:<hex>`.
        digest: String,
    },
}

/// `stella scan …`.
pub async fn scan(context: &Context, command: ScanCommand) -> anyhow::Result<()> {
    match command {
        ScanCommand::Import { image, file } => import(context, image.as_deref(), &file).await,
        ScanCommand::Show { digest } => show(context, &digest).await,
    }
}

async fn import(context: &Context, image: Option<&str>, file: &PathBuf) -> anyhow::Result<()> {
    let bytes = if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut bytes)
            .await
            .context("reading the document from standard input")?;
        bytes
    } else {
        tokio::fs::read(file)
            .await
            .with_context(|| format!("reading {}", file.display()))?
    };
    let (bytes, converted) = utf8(bytes).with_context(|| format!("reading {}", file.display()))?;
    if converted {
        context.note(&format!(
            "{} is UTF-16: sending it as UTF-8 (the stored id is of the UTF-8 bytes)",
            file.display()
        ));
    }
    let value = context
        .client
        .post_document(&format!("/scans{}", query(&[("image", image)])), bytes)
        .await?;
    print(context.format, &value, |v| {
        let vex = v["kind"] == "openvex";
        let count = if vex {
            ("statements", "/statements")
        } else {
            ("findings", "/findings")
        };
        let mut fields = vec![("document", "/document_id"), ("kind", "/kind")];
        if !vex || !v["digest"].is_null() {
            fields.push(("digest", "/digest"));
        }
        fields.push(count);
        output::details(v, &fields);
        println!(
            "{}",
            if v["created"] == true {
                "imported"
            } else {
                "imported before: nothing changed"
            }
        );
        let reevaluated = v["reevaluated"].as_array().cloned().unwrap_or_default();
        println!();
        if reevaluated.is_empty() {
            println!("no environment runs what it concerns");
        } else {
            output::table(
                &["environment", "release", "verdict", "changed"],
                reevaluated
                    .iter()
                    .map(|r| {
                        vec![
                            cell(r, "/environment"),
                            cell(r, "/release"),
                            cell(r, "/state"),
                            if r["changed"] == true { "yes" } else { "no" }.to_owned(),
                        ]
                    })
                    .collect(),
            );
        }
    });
    Ok(())
}

async fn show(context: &Context, digest: &str) -> anyhow::Result<()> {
    let value = context
        .client
        .get(&format!("/scans/{}", path(digest)))
        .await?;
    print(context.format, &value, |v| {
        output::details(v, &[("digest", "/digest")]);
        println!();
        let reports = v["reports"].as_array().cloned().unwrap_or_default();
        output::table(
            &[
                "report",
                "scanner",
                "version",
                "findings",
                "counts",
                "imported by",
                "imported",
            ],
            reports
                .iter()
                .map(|r| {
                    vec![
                        short(&cell(r, "/document_id")),
                        cell(r, "/kind"),
                        cell(r, "/scanner_version"),
                        cell(r, "/findings"),
                        if r["current"] == true { "yes" } else { "no" }.to_owned(),
                        cell(r, "/imported_by"),
                        cell(r, "/imported_at"),
                    ]
                })
                .collect(),
        );
        println!();
        let findings = v["findings"].as_array().cloned().unwrap_or_default();
        if findings.is_empty() {
            println!("no findings");
            return;
        }
        output::table(
            &[
                "id",
                "severity",
                "package",
                "installed",
                "fixed",
                "suppressed by",
            ],
            findings
                .iter()
                .map(|f| {
                    let suppressed = if f["suppressed_by"].is_object() {
                        format!(
                            "{} ({})",
                            cell(f, "/suppressed_by/status"),
                            short(&cell(f, "/suppressed_by/document_id"))
                        )
                    } else {
                        "-".to_owned()
                    };
                    vec![
                        cell(f, "/id"),
                        cell(f, "/severity"),
                        cell(f, "/package"),
                        cell(f, "/installed_version"),
                        cell(f, "/fixed_version"),
                        suppressed,
                    ]
                })
                .collect(),
        );
    });
    Ok(())
}

/// `sha256:` and the first 12 hex digits, as image ids are usually shortened.
fn short(id: &str) -> String {
    match id.get(..19) {
        Some(prefix) if id.len() > 19 => format!("{prefix}…"),
        _ => id.to_owned(),
    }
}

/// The bytes as UTF-8: as they are, or converted from UTF-16 with a byte-order mark
/// (what `trivy … > report.json` writes in Windows PowerShell 5); `true` when converted.
fn utf8(bytes: Vec<u8>) -> anyhow::Result<(Vec<u8>, bool)> {
    let little_endian = match bytes.as_slice() {
        [0xFF, 0xFE, ..] => true,
        [0xFE, 0xFF, ..] => false,
        _ => return Ok((bytes, false)),
    };
    let body = &bytes[2..];
    if !body.len().is_multiple_of(2) {
        bail!("not valid UTF-16: odd number of bytes");
    }
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|pair| {
            if little_endian {
                u16::from_le_bytes([pair[0], pair[1]])
            } else {
                u16::from_be_bytes([pair[0], pair[1]])
            }
        })
        .collect();
    let text = String::from_utf16(&units).context("not valid UTF-16")?;
    Ok((text.into_bytes(), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_with_a_byte_order_mark_becomes_utf8() -> anyhow::Result<()> {
        let mut little = vec![0xFF, 0xFE];
        little.extend("{\"a\":\"é\"}".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(utf8(little)?, ("{\"a\":\"é\"}".as_bytes().to_vec(), true));
        let mut big = vec![0xFE, 0xFF];
        big.extend("{}".encode_utf16().flat_map(u16::to_be_bytes));
        assert_eq!(utf8(big)?, (b"{}".to_vec(), true));
        assert_eq!(utf8(b"{}".to_vec())?, (b"{}".to_vec(), false));
        assert!(utf8(vec![0xFF, 0xFE, 0x7B]).is_err());
        Ok(())
    }

    #[test]
    fn ids_are_shortened_like_image_ids() {
        let id = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short(&id), "sha256:abababababab…");
        assert_eq!(short("-"), "-");
    }
}
