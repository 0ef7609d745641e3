//! Content digests and OCI image references.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Invalid;

/// A content digest, `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(text: &str) -> Result<Digest, Invalid> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| Invalid(format!("digest `{text}` must start with sha256:")))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Invalid(format!(
                "digest `{text}` must be sha256: and 64 lowercase hex digits"
            )));
        }
        Ok(Digest(text.to_owned()))
    }

    /// The text, `sha256:…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = Invalid;
    fn try_from(text: String) -> Result<Self, Invalid> {
        Digest::parse(&text)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

/// The longest image reference taken, normalised (registry and `library/` added).
const MAX_REFERENCE_LEN: usize = 512;

/// An OCI image reference, `[registry/]repository[:tag][@digest]`, normalised as Docker
/// does: without a registry part it is `docker.io`, and `library/` is added to one-part
/// Docker Hub names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Registry host (and port): `registry.example.com:5000`, `127.0.0.1:5000`, `docker.io`.
    pub registry: String,
    /// Repository path: `team/app`.
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest, if given.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference; refuses anything Docker would refuse.
    pub fn parse(text: &str) -> Result<ImageRef, Invalid> {
        let bad = |why: &str| Invalid(format!("invalid image reference `{text}`: {why}"));
        if text.is_empty()
            || text.len() > MAX_REFERENCE_LEN
            || text.chars().any(char::is_whitespace)
        {
            return Err(bad("empty, too long or contains white space"));
        }
        let (name_and_tag, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest).map_err(|e| bad(&e.0))?)),
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (
                    &name_and_tag[..split],
                    Some(name_and_tag[split + 1..].to_owned()),
                )
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = &tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ if name.contains('/') => ("docker.io".to_owned(), name.to_owned()),
            _ => ("docker.io".to_owned(), format!("library/{name}")),
        };
        let valid_repository = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                    })
                    && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            });
        if !valid_repository {
            return Err(bad(
                "repository must be lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        if registry.is_empty() {
            return Err(bad("empty registry"));
        }
        let image = ImageRef {
            registry,
            repository,
            tag,
            digest,
        };
        // The limit holds for the normalised form too (`docker.io/library/` added), which
        // is what a release stores and what is parsed again later.
        if image.to_string().len() > MAX_REFERENCE_LEN {
            return Err(bad("longer than 512 characters with its registry"));
        }
        Ok(image)
    }

    /// `registry/repository@digest`: the form a release pins.
    pub fn pinned(&self, digest: &Digest) -> String {
        format!("{}/{}@{}", self.registry, self.repository, digest)
    }

    /// The tag to resolve: the given one, or `latest`.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// Whether the registry is on a loopback address (plain HTTP allowed, as with Docker).
    pub fn is_loopback_registry(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
            _ => self.registry.as_str(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn image_references_parse_as_docker_does() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1").expect("valid");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.is_loopback_registry());
        let r = ImageRef::parse("busybox").expect("valid");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.tag_or_latest(), "latest");
        assert!(!r.is_loopback_registry());
        let r = ImageRef::parse(&format!("localhost:5000/app@{D}")).expect("valid");
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(D));
        assert_eq!(
            r.pinned(&Digest::parse(D).expect("digest")),
            format!("localhost:5000/app@{D}")
        );
        let r = ImageRef::parse(&format!("registry.example.com/app:v2@{D}")).expect("valid");
        assert_eq!(r.tag.as_deref(), Some("v2"));
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "Upper/Case",
            "app:",
            "app:bad tag",
            "app@sha256:123",
            "app@md5:0123",
            "registry.example.com/",
            "a//b",
            "app:-x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} should be refused");
        }
        // 500 characters, 518 with `docker.io/library/`: refused, since the stored
        // normalised form would not parse again.
        let long = "a".repeat(500);
        let error = ImageRef::parse(&long).expect_err("too long once normalised");
        assert!(error.0.contains("512"), "{error:?}");
        let fits = "a".repeat(512 - "docker.io/library/".len());
        assert!(ImageRef::parse(&fits).is_ok());
    }
}
