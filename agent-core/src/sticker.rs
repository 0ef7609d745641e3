//! Version stickers: what was deployed on a target, by whom, under which decision, sealed
//! with the SHA-256 of its canonical JSON (BRIEF §4).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The fields of a sticker, before it is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickerFields {
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment name.
    pub environment: String,
    /// Target name.
    pub target: String,
    /// Component name.
    pub component: String,
    /// The image with its digest: `repo@sha256:…`.
    pub image: String,
    /// The deployment that wrote this sticker.
    pub deployment_id: String,
    /// The promotion decision the deployment carried out.
    pub decision_id: String,
    /// When the component was deployed, RFC 3339 UTC (see [`rfc3339_utc`]).
    pub deployed_at: String,
    /// The agent that deployed it.
    pub agent_id: String,
}

/// A sealed sticker: the fields plus `sticker_digest`, the `sha256:<hex>` of the canonical
/// JSON (RFC 8785) of all the other fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sticker {
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment name.
    pub environment: String,
    /// Target name.
    pub target: String,
    /// Component name.
    pub component: String,
    /// The image with its digest: `repo@sha256:…`.
    pub image: String,
    /// The deployment that wrote this sticker.
    pub deployment_id: String,
    /// The promotion decision the deployment carried out.
    pub decision_id: String,
    /// When the component was deployed, RFC 3339 UTC.
    pub deployed_at: String,
    /// The agent that deployed it.
    pub agent_id: String,
    /// `sha256:<hex>` of the canonical JSON of the fields above.
    pub sticker_digest: String,
}

impl Sticker {
    /// Seals the fields: computes `sticker_digest`.
    pub fn seal(fields: StickerFields) -> Sticker {
        let sticker_digest = digest_of(&fields);
        let StickerFields {
            release,
            version,
            environment,
            target,
            component,
            image,
            deployment_id,
            decision_id,
            deployed_at,
            agent_id,
        } = fields;
        Sticker {
            release,
            version,
            environment,
            target,
            component,
            image,
            deployment_id,
            decision_id,
            deployed_at,
            agent_id,
            sticker_digest,
        }
    }

    /// The fields without the digest.
    pub fn fields(&self) -> StickerFields {
        StickerFields {
            release: self.release.clone(),
            version: self.version.clone(),
            environment: self.environment.clone(),
            target: self.target.clone(),
            component: self.component.clone(),
            image: self.image.clone(),
            deployment_id: self.deployment_id.clone(),
            decision_id: self.decision_id.clone(),
            deployed_at: self.deployed_at.clone(),
            agent_id: self.agent_id.clone(),
        }
    }

    /// Whether `sticker_digest` matches the other fields: `false` means the sticker was
    /// edited after it was written (`sticker_tampered`).
    pub fn verify(&self) -> bool {
        digest_of(&self.fields()) == self.sticker_digest
    }

    /// The whole sticker, digest included, as canonical JSON: the form stored on targets
    /// and sent in `StickerReport`.
    pub fn to_canonical_json(&self) -> String {
        let fields = self.fields();
        let mut map = field_map(&fields);
        map.insert("sticker_digest", self.sticker_digest.as_str());
        canonical_json(&map)
    }

    /// Parses a sticker as found on a target (any JSON key order or whitespace).
    pub fn from_json(json: &[u8]) -> Result<Sticker, serde_json::Error> {
        serde_json::from_slice(json)
    }
}

/// Formats a time as RFC 3339 UTC with exactly three fraction digits
/// (`2024-05-01T12:00:00.250Z`), the form of `deployed_at` and of every time Stella shows.
/// Stickers written in the earlier whole-second form still verify: the digest covers the
/// text as stored.
pub fn rfc3339_utc(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

fn digest_of(fields: &StickerFields) -> String {
    let json = canonical_json(&field_map(fields));
    format!("sha256:{}", hex::encode(Sha256::digest(json.as_bytes())))
}

fn field_map(fields: &StickerFields) -> BTreeMap<&'static str, &str> {
    BTreeMap::from([
        ("release", fields.release.as_str()),
        ("version", fields.version.as_str()),
        ("environment", fields.environment.as_str()),
        ("target", fields.target.as_str()),
        ("component", fields.component.as_str()),
        ("image", fields.image.as_str()),
        ("deployment_id", fields.deployment_id.as_str()),
        ("decision_id", fields.decision_id.as_str()),
        ("deployed_at", fields.deployed_at.as_str()),
        ("agent_id", fields.agent_id.as_str()),
    ])
}

/// RFC 8785 for an object of strings: keys sorted (ASCII keys, so byte order equals the
/// UTF-16 order the RFC asks for), no whitespace. serde_json escapes strings as RFC 8785
/// does (`\"`, `\\`, `\b\f\n\r\t`, other controls as lowercase `\u00xx`, nothing else), so
/// a full canonicalizer dependency is not needed for string-only objects.
fn canonical_json(map: &BTreeMap<&'static str, &str>) -> String {
    let mut out = String::from("{");
    for (index, (key, value)) in map.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&json_string(key));
        out.push(':');
        out.push_str(&json_string(value));
    }
    out.push('}');
    out
}

fn json_string(value: &str) -> String {
    // Serializing a `&str` cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> StickerFields {
        StickerFields {
            release: "shop".into(),
            version: "1.2.3".into(),
            environment: "prod".into(),
            target: "web-1".into(),
            component: "api".into(),
            image: "registry.local/shop/api@sha256:0123".into(),
            deployment_id: "dep-1".into(),
            decision_id: "sha256:abcd".into(),
            deployed_at: "2024-05-01T12:00:00Z".into(),
            agent_id: "agent-1".into(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_without_whitespace() {
        let sticker = Sticker::seal(fields());
        let json = sticker.to_canonical_json();
        assert!(json.starts_with(
            r#"{"agent_id":"agent-1","component":"api","decision_id":"sha256:abcd","deployed_at":"2024-05-01T12:00:00Z","deployment_id":"dep-1","environment":"prod","image":"#
        ));
        assert!(json.ends_with(&format!(
            r#""sticker_digest":"{}","target":"web-1","version":"1.2.3"}}"#,
            sticker.sticker_digest
        )));
        assert!(!json.contains(' '));
    }

    #[test]
    fn digest_covers_every_field_but_itself() {
        let sticker = Sticker::seal(fields());
        let expected = {
            let json = r#"{"agent_id":"agent-1","component":"api","decision_id":"sha256:abcd","deployed_at":"2024-05-01T12:00:00Z","deployment_id":"dep-1","environment":"prod","image":"registry.local/shop/api@sha256:0123","release":"shop","target":"web-1","version":"1.2.3"}"#;
            format!("sha256:{}", hex::encode(Sha256::digest(json.as_bytes())))
        };
        assert_eq!(sticker.sticker_digest, expected);
        assert!(sticker.verify());

        let mut tampered = sticker;
        tampered.image = "registry.local/shop/api@sha256:ffff".into();
        assert!(!tampered.verify());
    }

    #[test]
    fn round_trips_through_any_json_form() {
        let sticker = Sticker::seal(fields());
        let pretty = serde_json::to_vec_pretty(&sticker).expect("serialize");
        let parsed = Sticker::from_json(&pretty).expect("parse");
        assert_eq!(parsed, sticker);
        assert!(parsed.verify());
        let canonical = Sticker::from_json(sticker.to_canonical_json().as_bytes()).expect("parse");
        assert_eq!(canonical, sticker);
    }

    #[test]
    fn escapes_as_rfc_8785() {
        assert_eq!(
            json_string("a\"b\\c\n\u{1}é/"),
            "\"a\\\"b\\\\c\\n\\u0001é/\""
        );
    }

    #[test]
    fn deployed_at_is_utc_with_milliseconds() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_714_564_800_123_000_000)
            .expect("time")
            .to_offset(time::UtcOffset::from_hms(2, 0, 0).expect("offset"));
        assert_eq!(rfc3339_utc(at), "2024-05-01T12:00:00.123Z");
    }
}
