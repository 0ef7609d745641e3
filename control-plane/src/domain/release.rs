//! Releases (immutable sets of digests) and the registries they come from.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Digest;

/// One component of a release: an image pinned by digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Component name.
    pub name: String,
    /// The reference as given at creation (may carry a tag).
    pub source: String,
    /// `registry/repository@sha256:…`.
    pub image: String,
    /// The digest.
    pub digest: Digest,
}

/// An immutable release: named, versioned set of digests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Release name.
    pub name: String,
    /// Version (free text, unique per name).
    pub version: String,
    /// Components, sorted by name.
    pub components: Vec<Component>,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at_ms: i64,
}

impl Release {
    /// Whether two releases pin the same components to the same digests.
    pub fn same_content(&self, other: &Release) -> bool {
        self.components.len() == other.components.len()
            && self
                .components
                .iter()
                .zip(&other.components)
                .all(|(a, b)| a.name == b.name && a.image == b.image)
    }
}

/// A registry Stella resolves tags against and agents pull from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Host and port, as in image references.
    pub host: String,
    /// Plain HTTP, or HTTPS without certificate verification, allowed (as Docker's
    /// insecure registries).
    pub insecure: bool,
    /// User name for basic or token auth.
    pub username: Option<String>,
    /// The password, sealed with the server's secrets key (never plain text).
    pub password_sealed: Option<String>,
    /// Creation or last change.
    pub updated_at_ms: i64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field(
                "password",
                &self.password_sealed.as_ref().map(|_| "<sealed>"),
            )
            .finish()
    }
}
