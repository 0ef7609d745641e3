//! The audit page: the newest entries of the tenant's chain, verified on the server.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Audit entries listed on one page (newest first), and the longest chain the page
/// verifies.
const AUDIT_PER_PAGE: usize = 100;

const AUDIT_VERIFIED: i64 = 100_000;

#[derive(Template)]
#[template(path = "audit.html")]
pub(super) struct AuditPage {
    verification: String,
    verified_class: String,
    entries: Vec<(i64, String, String, String, String, String)>,
    pager: Pager,
}

pub(super) async fn audit(signed: &Signed, listing: &Listing) -> Result<AuditPage, AppError> {
    let store = &signed.app.store;
    let entries = store.list_audit_entries(0, AUDIT_VERIFIED).await?;
    let checkpoints = store.list_audit_checkpoints(0, AUDIT_VERIFIED).await?;
    let keys: Vec<stella_decision::dsse::PublicKey> = store
        .list_signing_keys()
        .await?
        .into_iter()
        .filter_map(|(_, pem, _)| stella_decision::dsse::PublicKey::from_pem(&pem).ok())
        .collect();
    let (verification, verified_class) = if i64::try_from(entries.len()).unwrap_or(i64::MAX)
        >= AUDIT_VERIFIED
    {
        (
            format!("longer than {AUDIT_VERIFIED} entries: verify it with `stella audit verify`"),
            "note".to_owned(),
        )
    } else {
        match stella_decision::audit::verify_chain(&entries, &checkpoints, &keys) {
            Ok(summary) => (
                format!(
                    "verified: {} entries, {} signed checkpoints, every hash and link intact{}",
                    summary.entries,
                    summary.checkpoints,
                    summary
                        .last_checkpoint_seq
                        .map(|seq| format!("; the newest checkpoint signs entry {seq}"))
                        .unwrap_or_default()
                ),
                "notice".to_owned(),
            ),
            Err(fault) => (
                format!("NOT verified: {}", fault.message),
                "error".to_owned(),
            ),
        }
    };
    let entries: Vec<_> = entries
        .iter()
        .rev()
        .filter(|e| {
            listing.keeps([
                e.actor.as_str(),
                e.action.as_str(),
                e.object.as_str(),
                e.outcome.as_str(),
            ])
        })
        .map(|e| {
            (
                e.seq,
                format_utc_ms(e.at_ms),
                e.actor.clone(),
                e.action.clone(),
                e.object.clone(),
                e.outcome.clone(),
            )
        })
        .collect();
    let (entries, pager) = listing.page_of(entries, AUDIT_PER_PAGE, "/console/audit", "entries");
    Ok(AuditPage {
        verification,
        verified_class,
        entries,
        pager,
    })
}

/// `GET /console/audit` (admin, as `GET /api/v1/audit`)
pub async fn audit_page(
    State(state): State<ApiState>,
    signed: Signed,
    RawQuery(query): RawQuery,
) -> Response {
    list_page(&state, &signed, query, View::Audit).await
}
