//! Image references pinned by digest (`registry/repo@sha256:<hex>`).

use std::fmt;

/// An image reference pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository, with its registry host when it names one
    /// (`127.0.0.1:5000/shop/web`); a tag given with the digest is dropped.
    pub repository: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
}

impl ImageRef {
    /// Parses `repo[:tag]@sha256:<64 lowercase hex>`; the error says what is wrong.
    pub fn parse(reference: &str) -> Result<ImageRef, String> {
        let (name, digest) = reference
            .split_once('@')
            .ok_or_else(|| "no @sha256: digest".to_owned())?;
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| "the digest is not sha256:".to_owned())?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("the digest is not 64 lowercase hex digits".to_owned());
        }
        // A tag is what follows a colon after the last slash (a colon before it is the
        // registry's port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let repository = match name[last_slash..].find(':') {
            Some(colon) => &name[..last_slash + colon],
            None => name,
        };
        if repository.is_empty()
            || repository.ends_with('/')
            || repository
                .chars()
                .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
        {
            return Err("the repository name is empty or invalid".to_owned());
        }
        Ok(ImageRef {
            repository: repository.to_owned(),
            digest: digest.to_owned(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_digest_references() {
        let image =
            ImageRef::parse(&format!("127.0.0.1:5000/shop/web@sha256:{HEX}")).expect("parse");
        assert_eq!(image.repository, "127.0.0.1:5000/shop/web");
        assert_eq!(image.digest, format!("sha256:{HEX}"));
        assert_eq!(
            image.to_string(),
            format!("127.0.0.1:5000/shop/web@sha256:{HEX}")
        );

        let tagged =
            ImageRef::parse(&format!("localhost:5000/web:v1@sha256:{HEX}")).expect("parse");
        assert_eq!(tagged.repository, "localhost:5000/web");

        let bare = ImageRef::parse(&format!("nginx:1.25@sha256:{HEX}")).expect("parse");
        assert_eq!(bare.repository, "nginx");
    }

    #[test]
    fn refuses_unpinned_references() {
        for bad in [
            "nginx:latest".to_owned(),
            "nginx@sha256:abc".to_owned(),
            format!("nginx@sha512:{HEX}"),
            format!("@sha256:{HEX}"),
            format!("Nginx@sha256:{HEX}"),
            format!("nginx@sha256:{}", HEX.to_uppercase()),
        ] {
            assert!(ImageRef::parse(&bad).is_err(), "{bad} should be refused");
        }
    }
}
