//! Releases: immutable sets of digests; tags are resolved once, at creation.

use super::{invalid, now_ms, validate_name, App};
use crate::domain::{Component, Digest, ImageRef, Release, User};
use crate::error::{AppError, ErrorKind};
use crate::store::StoreError;

/// A release component as requested: name and image reference (tag or digest).
#[derive(Debug, Clone)]
pub struct ComponentRequest {
    /// Component name.
    pub name: String,
    /// Image reference.
    pub image: String,
}

impl App {
    /// Creates an immutable release: every tag is resolved to a digest once, now.
    /// The same name and version with the same digests is returned as it is;
    /// with other digests it is refused.
    pub async fn create_release(
        &self,
        name: &str,
        version: &str,
        components: Vec<ComponentRequest>,
        created_by: &User,
    ) -> Result<(Release, bool), AppError> {
        validate_name("release", name)?;
        if version.is_empty()
            || version.len() > 128
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
        {
            return Err(AppError::invalid(format!(
                "invalid version `{version}`: use letters, digits, '.', '_', '-', '+'"
            )));
        }
        if components.is_empty() {
            return Err(AppError::invalid(
                "a release needs at least one --component NAME=IMAGE",
            ));
        }
        let mut parsed = Vec::with_capacity(components.len());
        for component in &components {
            validate_name("component", &component.name)?;
            let image = ImageRef::parse(&component.image).map_err(invalid)?;
            parsed.push((component, image));
        }
        parsed.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        if parsed.windows(2).any(|w| w[0].0.name == w[1].0.name) {
            return Err(AppError::invalid("component names must be unique"));
        }
        let mut resolved = Vec::with_capacity(parsed.len());
        for (component, image) in parsed {
            let access = self.registry_access(&image.registry).await?;
            let digest: Digest = self
                .registry
                .resolve(&image, &access)
                .await
                .map_err(|error| {
                    use crate::registry::RegistryError;
                    let kind = match &error {
                        RegistryError::NotFound { .. } => ErrorKind::InvalidArgument,
                        RegistryError::Unauthorized { .. } => ErrorKind::FailedPrecondition,
                        _ => ErrorKind::Unavailable,
                    };
                    AppError::new(
                        kind,
                        "image_unresolved",
                        format!("component `{}`: {error}", component.name),
                    )
                })?;
            resolved.push(Component {
                name: component.name.clone(),
                source: component.image.clone(),
                image: image.pinned(&digest),
                digest,
            });
        }
        let release = Release {
            name: name.to_owned(),
            version: version.to_owned(),
            components: resolved,
            created_by: created_by.name.clone(),
            created_at_ms: now_ms(),
        };
        match self.store.create_release(&release).await {
            Ok(()) => {
                tracing::info!(release = %name, version, "release created");
                Ok((release, true))
            }
            Err(StoreError::Conflict { .. }) => {
                let existing = self.store.get_release(name, version).await?;
                if existing.same_content(&release) {
                    Ok((existing, false))
                } else {
                    Err(AppError::new(
                        ErrorKind::Conflict,
                        "release_immutable",
                        format!("release {name}@{version} exists with other digests; releases are immutable: use a new version"),
                    ))
                }
            }
            Err(other) => Err(other.into()),
        }
    }
}
