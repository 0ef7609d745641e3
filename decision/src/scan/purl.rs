//! Package URLs (purl-spec, `pkg:type/namespace/name@version?qualifiers#subpath`), as far
//! as VEX matching needs them: the parts compared, percent-decoded and normalised.
//!
//! Written by hand: the one purl crate does more than this needs and is not among the
//! crate's fixed dependencies; matching only reads the five parts.

use super::{normalise_digest, reference_digest};

/// The parts of a package URL that matching compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Purl {
    /// The type, lowercase (`deb`, `golang`, `oci`).
    pub(crate) kind: String,
    /// The namespace, decoded; empty when there is none (`debian`, `golang.org/x`).
    pub(crate) namespace: String,
    /// The name, decoded (`zlib1g`, `net`).
    pub(crate) name: String,
    /// The version, decoded.
    pub(crate) version: Option<String>,
    /// The qualifiers, keys lowercase, values decoded, in the order written.
    pub(crate) qualifiers: Vec<(String, String)>,
}

impl Purl {
    /// Parses `text`; `None` when it is not a package URL.
    pub(crate) fn parse(text: &str) -> Option<Purl> {
        let text = text.trim();
        let scheme = text.get(..4)?;
        if !scheme.eq_ignore_ascii_case("pkg:") {
            return None;
        }
        // The spec tolerates slashes after the scheme (`pkg://deb/…`).
        let rest = text[4..].trim_start_matches('/');
        let rest = rest
            .split_once('#')
            .map_or(rest, |(before, _subpath)| before);
        let (rest, qualifiers) = rest.split_once('?').unwrap_or((rest, ""));
        let (path, version) = match rest.rsplit_once('@') {
            Some((path, version)) => (path, Some(percent_decode(version))),
            None => (rest, None),
        };
        let (kind, path) = path.trim_end_matches('/').split_once('/')?;
        if kind.is_empty() {
            return None;
        }
        let kind = kind.to_ascii_lowercase();
        let (namespace, name) = path.rsplit_once('/').unwrap_or(("", path));
        let mut namespace = namespace
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(percent_decode)
            .collect::<Vec<_>>()
            .join("/");
        let mut name = percent_decode(name);
        if name.is_empty() {
            return None;
        }
        // Type-specific rules of the purl spec that make two spellings one package.
        match kind.as_str() {
            "pypi" => name = name.to_ascii_lowercase().replace('_', "-"),
            "github" | "bitbucket" => {
                namespace = namespace.to_ascii_lowercase();
                name = name.to_ascii_lowercase();
            }
            _ => {}
        }
        let qualifiers = qualifiers
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_ascii_lowercase(), percent_decode(value)))
            .collect();
        Some(Purl {
            kind,
            namespace,
            name,
            version: version.filter(|version| !version.is_empty()),
            qualifiers,
        })
    }

    fn qualifier(&self, key: &str) -> Option<&str> {
        self.qualifiers
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The version split into (epoch, rest). Scanners disagree on where a Debian or RPM
    /// epoch goes: Trivy writes `?epoch=1`, Grype `@1:1.2.13`.
    fn epoch_and_version(&self) -> Option<(Option<&str>, &str)> {
        let version = self.version.as_deref()?;
        if let Some((epoch, rest)) = version.split_once(':') {
            if !epoch.is_empty() && epoch.bytes().all(|byte| byte.is_ascii_digit()) {
                return Some((Some(epoch), rest));
            }
        }
        Some((self.qualifier("epoch"), version))
    }

    /// Whether `self`, a VEX subcomponent, names the package `package`: same type,
    /// namespace and name, and — when `self` has a version — the same version (an epoch
    /// written on one side only does not separate them). Qualifiers are ignored: they
    /// describe the build (`arch`, `distro`), not which package it is.
    pub(crate) fn names_package(&self, package: &Purl) -> bool {
        if self.kind != package.kind
            || self.namespace != package.namespace
            || self.name != package.name
        {
            return false;
        }
        let Some((wanted_epoch, wanted_version)) = self.epoch_and_version() else {
            return true;
        };
        let Some((epoch, version)) = package.epoch_and_version() else {
            return false;
        };
        let epochs_agree = match (wanted_epoch, epoch) {
            (Some(wanted), Some(found)) => {
                wanted.trim_start_matches('0') == found.trim_start_matches('0')
            }
            _ => true,
        };
        epochs_agree && wanted_version == version
    }
}

/// The image digest a VEX product identifier names, if it names one:
///
/// - a digest, `sha256:<hex>`;
/// - an image reference pinned by digest, `registry/repository[:tag]@sha256:<hex>`;
/// - an OCI (or Docker) package URL whose version is the digest,
///   `pkg:oci/name@sha256%3A<hex>?repository_url=…&tag=…`.
///
/// Only the digest counts, not the name, registry or tag around it: the digest alone
/// identifies the image content, and the same image is often known under several names
/// (mirrors, promotions between registries). A tag-only reference names no digest and so
/// never matches: what a tag points to cannot be verified offline, and may change.
pub(crate) fn image_digest(identifier: &str) -> Option<String> {
    let identifier = identifier.trim();
    if identifier
        .get(..4)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("pkg:"))
    {
        let purl = Purl::parse(identifier)?;
        if purl.kind != "oci" && purl.kind != "docker" {
            return None;
        }
        return normalise_digest(purl.version.as_deref()?);
    }
    normalise_digest(identifier).or_else(|| reference_digest(identifier))
}

/// Decodes `%XX` escapes; a malformed escape is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            if let Some(byte) = bytes
                .get(index + 1..index + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                decoded.push(byte);
                index += 3;
                continue;
            }
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    const HEX: &str = "e93b60634151527f1ebe6af2f2a6d5f26747d80f0ad761e1ca7c86ffb8a85454";

    #[test]
    fn parts_are_decoded() {
        let purl = Purl::parse("pkg:npm/%40angular/core@16.2.0?arch=x%2Fy#lib").unwrap();
        assert_eq!(purl.kind, "npm");
        assert_eq!(purl.namespace, "@angular");
        assert_eq!(purl.name, "core");
        assert_eq!(purl.version.as_deref(), Some("16.2.0"));
        assert_eq!(purl.qualifier("arch"), Some("x/y"));

        let go = Purl::parse("pkg:golang/golang.org/x/net@v0.15.0").unwrap();
        assert_eq!(go.namespace, "golang.org/x");
        assert_eq!(go.name, "net");

        assert_eq!(Purl::parse("CVE-2024-1"), None);
        assert_eq!(Purl::parse("pkg:deb"), None);
    }

    #[test]
    fn subcomponents_ignore_qualifiers_and_compare_versions_only_when_given() {
        let trivy = Purl::parse(
            "pkg:deb/debian/zlib1g@1.2.13.dfsg-1?arch=amd64&distro=debian-12.5&epoch=1",
        )
        .unwrap();
        let grype = Purl::parse(
            "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&upstream=zlib&distro=debian-12",
        )
        .unwrap();
        let any_version = Purl::parse("pkg:deb/debian/zlib1g").unwrap();
        let exact = Purl::parse("pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1").unwrap();
        let no_epoch = Purl::parse("pkg:deb/debian/zlib1g@1.2.13.dfsg-1").unwrap();
        let other_version = Purl::parse("pkg:deb/debian/zlib1g@1:1.3.dfsg-3").unwrap();
        let other_epoch = Purl::parse("pkg:deb/debian/zlib1g@2:1.2.13.dfsg-1").unwrap();
        let other_name = Purl::parse("pkg:deb/debian/zlib1g-dev@1:1.2.13.dfsg-1").unwrap();
        for package in [&trivy, &grype] {
            assert!(any_version.names_package(package));
            assert!(exact.names_package(package));
            assert!(no_epoch.names_package(package));
            assert!(!other_version.names_package(package));
            assert!(!other_epoch.names_package(package));
            assert!(!other_name.names_package(package));
        }
        let pypi = Purl::parse("pkg:pypi/Django_Rest@3.14.0").unwrap();
        assert!(Purl::parse("pkg:pypi/django-rest")
            .unwrap()
            .names_package(&pypi));
    }

    #[test]
    fn image_digests_come_from_digests_pinned_references_and_oci_purls_only() {
        let digest = format!("sha256:{HEX}");
        for named in [
            digest.clone(),
            format!("registry.example.com/shop/web@sha256:{HEX}"),
            format!("mirror.example.net/web:1.4.2@sha256:{HEX}"),
            format!("pkg:oci/web@sha256%3A{HEX}?repository_url=registry.example.com/shop/web"),
            format!("pkg:oci/web@sha256%3a{}", HEX.to_uppercase()),
            format!("pkg:oci/web@sha256:{HEX}"),
            format!("pkg:docker/shop/web@sha256%3A{HEX}"),
        ] {
            assert_eq!(image_digest(&named), Some(digest.clone()), "{named}");
        }
        for unnamed in [
            "registry.example.com/shop/web:1.4.2",
            "pkg:oci/web?repository_url=registry.example.com/shop/web&tag=1.4.2",
            "pkg:oci/web@1.4.2",
            "pkg:deb/debian/web@sha256:0000",
        ] {
            assert_eq!(image_digest(unnamed), None, "{unnamed}");
        }
        assert_eq!(
            image_digest(&format!("pkg:deb/debian/web@sha256%3A{HEX}")),
            None,
            "only image purls name images"
        );
    }
}
