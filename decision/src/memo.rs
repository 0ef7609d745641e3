//! Process-wide memo tables for what a decision computes again and again from the same
//! inputs: compiled policies, parsed documents, freeze windows, security verdicts. Every
//! key names its inputs completely (content ids, or the inputs themselves), so an entry
//! can never be stale; the tables only save work and never change an outcome. A table
//! that reaches its size is emptied, which bounds the memory without bookkeeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One memo table, for a `static`.
pub(crate) struct Memo<V> {
    entries: Mutex<Option<HashMap<String, Arc<V>>>>,
    max_entries: usize,
}

impl<V> Memo<V> {
    /// An empty table holding at most `max_entries`.
    pub(crate) const fn new(max_entries: usize) -> Memo<V> {
        Memo {
            entries: Mutex::new(None),
            max_entries,
        }
    }

    /// The value stored under `key`, or the one `compute` makes (stored unless it
    /// failed). Two threads missing together both compute; the values are equal.
    pub(crate) fn get_or_try<E>(
        &self,
        key: &str,
        compute: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        if let Some(value) = self
            .entries
            .lock()
            .ok()
            .and_then(|entries| entries.as_ref()?.get(key).cloned())
        {
            return Ok(value);
        }
        let value = Arc::new(compute()?);
        if let Ok(mut entries) = self.entries.lock() {
            let entries = entries.get_or_insert_with(HashMap::new);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
            entries.insert(key.to_owned(), value.clone());
        }
        Ok(value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn computes_once_and_never_stores_a_failure() {
        static MEMO: Memo<u32> = Memo::new(2);
        let mut calls = 0;
        let mut get = |key: &str, value: Result<u32, &'static str>| {
            MEMO.get_or_try(key, || {
                calls += 1;
                value
            })
        };
        assert_eq!(*get("a", Ok(1)).unwrap(), 1);
        assert_eq!(*get("a", Ok(99)).unwrap(), 1, "stored, not computed again");
        assert_eq!(get("b", Err("no")).err(), Some("no"));
        assert_eq!(*get("b", Ok(2)).unwrap(), 2, "a failure is not stored");
        // Full: emptied, then the new entry stored.
        assert_eq!(*get("c", Ok(3)).unwrap(), 3);
        assert_eq!(*get("a", Ok(4)).unwrap(), 4);
        assert_eq!(calls, 5);
    }
}
