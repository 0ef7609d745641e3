//! Filtering and paging of the console's lists: `?q=TEXT&page=N` on a list page. A row
//! is kept when any of its shown texts contains the filter (case-insensitively), so a
//! state, a name or a version all filter the same way; then one page of the kept rows
//! is shown, with links to the others. The live update of a page follows the same
//! query (it is part of the view's key).

use serde::Deserialize;

/// The longest filter text accepted.
const MAX_FILTER: usize = 128;

/// A list's filter and page, as given in the query string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Listing {
    /// The filter text (empty: every row).
    #[serde(default)]
    pub q: String,
    /// The page, from 1.
    #[serde(default)]
    pub page: Option<usize>,
}

impl Listing {
    /// The listing with its filter trimmed and bounded, and its page at least 1.
    #[must_use]
    pub fn normalised(self) -> Listing {
        let q: String = self.q.trim().chars().take(MAX_FILTER).collect();
        Listing {
            q,
            page: self.page.filter(|p| *p > 1),
        }
    }

    /// The query string of this listing (`?q=…&page=…`), empty for the default one.
    pub fn query(&self) -> String {
        self.query_for(self.page.unwrap_or(1))
    }

    fn query_for(&self, page: usize) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if !self.q.is_empty() {
            pairs.push(("q", self.q.clone()));
        }
        if page > 1 {
            pairs.push(("page", page.to_string()));
        }
        if pairs.is_empty() {
            return String::new();
        }
        serde_urlencoded::to_string(&pairs)
            .map(|encoded| format!("?{encoded}"))
            .unwrap_or_default()
    }

    /// The listing a query string (without its `?`) names; `None` when it is not one.
    pub fn parse(query: &str) -> Option<Listing> {
        serde_urlencoded::from_str::<Listing>(query)
            .ok()
            .map(Listing::normalised)
    }

    /// Whether a row with these texts is kept by the filter.
    pub fn keeps<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> bool {
        if self.q.is_empty() {
            return true;
        }
        let needle = self.q.to_lowercase();
        texts
            .into_iter()
            .any(|text| text.to_lowercase().contains(&needle))
    }

    /// One page of `rows` (already filtered) of at most `size`, and the pager that
    /// goes with it; `path` is the page's path, `what` names the rows ("releases").
    pub fn page_of<T>(&self, rows: Vec<T>, size: usize, path: &str, what: &str) -> (Vec<T>, Pager) {
        let size = size.max(1);
        let total = rows.len();
        let pages = total.div_ceil(size).max(1);
        let page = self.page.unwrap_or(1).min(pages);
        let shown: Vec<T> = rows
            .into_iter()
            .skip((page - 1) * size)
            .take(size)
            .collect();
        let first = if shown.is_empty() {
            0
        } else {
            (page - 1) * size + 1
        };
        let link = |p: usize| format!("{path}{}", self.query_for(p));
        let pager = Pager {
            path: path.to_owned(),
            q: self.q.clone(),
            what: what.to_owned(),
            summary: if total == 0 {
                format!("no {what}")
            } else {
                format!(
                    "{what} {first}–{} of {total}{}",
                    first + shown.len() - 1,
                    if self.q.is_empty() {
                        String::new()
                    } else {
                        format!(" matching “{}”", self.q)
                    }
                )
            },
            previous: if page > 1 {
                link(page - 1)
            } else {
                String::new()
            },
            next: if page < pages {
                link(page + 1)
            } else {
                String::new()
            },
            page,
            pages,
        };
        (shown, pager)
    }
}

/// What a list page shows around its rows: the filter form and the page links.
#[derive(Clone, Debug, Default)]
pub struct Pager {
    /// The page's path (the filter form's action).
    pub path: String,
    /// The filter text.
    pub q: String,
    /// What the rows are ("targets").
    pub what: String,
    /// "targets 1–100 of 1000 matching “web”".
    pub summary: String,
    /// The previous page's link (empty on the first).
    pub previous: String,
    /// The next page's link (empty on the last).
    pub next: String,
    /// The page shown, from 1.
    pub page: usize,
    /// How many pages there are.
    pub pages: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_case_insensitively_and_pages() {
        let listing = Listing::parse("q=WEB&page=2").expect("a listing");
        assert!(listing.keeps(["api", "web-prod"]));
        assert!(!listing.keeps(["api", "db"]));
        let rows: Vec<usize> = (0..25).collect();
        let (shown, pager) = listing.page_of(rows, 10, "/console/drift", "targets");
        assert_eq!(shown, (10..20).collect::<Vec<_>>());
        assert_eq!(pager.page, 2);
        assert_eq!(pager.pages, 3);
        assert_eq!(pager.previous, "/console/drift?q=WEB");
        assert_eq!(pager.next, "/console/drift?q=WEB&page=3");
        assert_eq!(pager.summary, "targets 11–20 of 25 matching “WEB”");
    }

    #[test]
    fn a_page_past_the_end_shows_the_last_and_bad_queries_are_refused() {
        let listing = Listing::parse("page=99").expect("a listing");
        let (shown, pager) = listing.page_of(vec![1, 2, 3], 2, "/", "releases");
        assert_eq!(shown, vec![3]);
        assert_eq!(pager.page, 2);
        assert!(pager.next.is_empty());
        assert!(Listing::parse("page=-1").is_none());
        assert!(Listing::parse("page=x").is_none());
        assert_eq!(
            Listing::parse("page=1&q=%20").expect("a listing").query(),
            ""
        );
    }

    #[test]
    fn the_query_round_trips_through_parse() {
        let listing = Listing {
            q: "a&b=c d".to_owned(),
            page: Some(3),
        };
        let query = listing.query();
        let back = Listing::parse(query.trim_start_matches('?')).expect("a listing");
        assert_eq!(back, listing);
    }
}
