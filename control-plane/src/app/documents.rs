//! Stored documents (scan reports, VEX, policies) as decisions read them: by id, from a
//! process-wide cache.
//!
//! A document's id is the `sha256:` of its content, so a cached copy can never be
//! stale and needs no invalidation across replicas; only which documents a decision
//! reads (the newest report per scanner, every VEX document) comes from the store each
//! time. Without the cache every decision copied each report (tens of kilobytes apiece)
//! out of the database again.

use std::collections::HashMap;
use std::sync::Arc;

use stella_decision::gates::Documents;

use super::App;
use crate::error::AppError;
use crate::store::StoreError;

/// Bytes of document content kept before the cache starts over.
const MAX_CACHED_BYTES: usize = 64 * 1024 * 1024;

/// Document contents by id.
#[derive(Debug, Default)]
pub struct DocumentCache {
    inner: parking_lot::Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    by_id: HashMap<String, Arc<[u8]>>,
    bytes: usize,
}

impl DocumentCache {
    fn get(&self, id: &str) -> Option<Arc<[u8]>> {
        self.inner.lock().by_id.get(id).cloned()
    }

    fn put(&self, id: String, content: Arc<[u8]>) {
        let mut cached = self.inner.lock();
        if cached.bytes + content.len() > MAX_CACHED_BYTES {
            // Simple and bounded: the documents decisions read are few and shared, so
            // they are back after one miss each.
            cached.by_id.clear();
            cached.bytes = 0;
        }
        cached.bytes += content.len();
        cached.by_id.insert(id, content);
    }
}

impl App {
    /// The documents with these ids, from the cache or else the store (in one read);
    /// `NotFound` naming the first that does not exist.
    pub(super) async fn documents(&self, ids: &[&str]) -> Result<Documents, AppError> {
        let mut documents = Documents::new();
        let mut missing = Vec::new();
        for id in ids {
            match self.document_cache.get(id) {
                Some(content) => {
                    documents.insert((*id).to_owned(), content);
                }
                None => missing.push(*id),
            }
        }
        if missing.is_empty() {
            return Ok(documents);
        }
        for document in self.store.get_documents(&missing).await? {
            let content: Arc<[u8]> = document.content.into_bytes().into();
            // Only content that matches its id is cached, so a row edited in the
            // database cannot poison later decisions (the decision checks it too).
            if stella_decision::sha256_id(&content) == document.id {
                self.document_cache
                    .put(document.id.clone(), content.clone());
            }
            documents.insert(document.id, content);
        }
        if let Some(absent) = missing.iter().find(|id| !documents.contains_key(**id)) {
            return Err(StoreError::NotFound {
                entity: "document",
                key: (*absent).to_owned(),
            }
            .into());
        }
        Ok(documents)
    }
}
