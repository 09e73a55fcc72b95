//! Relay connections over token-paged downstream lists (catalog's `page_token`, ordering's
//! `cursor`).
//!
//! A downstream page token points at the start of a page, while a Relay cursor points at one edge.
//! A cursor here is therefore a position: "start at page token `t` and skip `s` items". The last
//! edge of a downstream page gets the next page's token with no skip, so walking a list with
//! `endCursor` costs exactly one downstream call per page; any other edge's cursor works too, at the
//! price of reading the few items it skips.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::GatewayError;

/// The most items asked of a downstream service in one call (both cap their pages at 100).
pub const MAX_DOWNSTREAM_PAGE: usize = 100;
/// The most edges one connection field returns.
pub const MAX_FIRST: i32 = 100;
/// Bounds the number of downstream calls one field may make while skipping.
const MAX_FETCHES: usize = 5;
/// Downstream tokens are base64url of well under 100 bytes; anything longer is not one.
const MAX_TOKEN_CHARS: usize = 128;

/// Where a list continues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub token: String,
    pub skip: usize,
}

impl Position {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.skip, self.token))
    }

    /// Reads an `after` argument; anything this gateway did not hand out is BAD_USER_INPUT, before
    /// any downstream call. The downstream token inside stays opaque (its owner checks it), but it
    /// must look like one: base64url of a bounded length.
    pub fn decode(cursor: &str) -> Result<Self, GatewayError> {
        let invalid = invalid_cursor;
        if cursor.len() > 2 * MAX_TOKEN_CHARS {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(cursor.trim()).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (skip, token) = text.split_once(':').ok_or_else(invalid)?;
        let skip = skip.parse::<usize>().map_err(|_| invalid())?;
        let token_like = token.len() <= MAX_TOKEN_CHARS
            && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if skip > MAX_DOWNSTREAM_PAGE || !token_like {
            return Err(invalid());
        }
        Ok(Self { token: token.to_owned(), skip })
    }
}

fn invalid_cursor() -> GatewayError {
    GatewayError::invalid("after", "not a cursor from this list")
}

/// Whether a downstream service refused the page token it was given (catalog's `page_token`,
/// ordering's `cursor`): the token came from the client's `after`, so that is the argument to name.
fn is_refused_token(error: &GatewayError) -> bool {
    matches!(error, GatewayError::BadUserInput { field: Some(field), .. } if field == "pageToken" || field == "cursor")
}

/// Edges (with their cursors) and whether more follow.
#[derive(Debug)]
pub struct Page<T> {
    pub edges: Vec<(String, T)>,
    pub has_next: bool,
}

/// Checks a `first` argument: 0 to [`MAX_FIRST`].
pub fn page_size(first: i32) -> Result<usize, GatewayError> {
    if (0..=MAX_FIRST).contains(&first) {
        Ok(first as usize)
    } else {
        Err(GatewayError::invalid("first", format!("must be between 0 and {MAX_FIRST}")))
    }
}

/// Collects `first` items after `after`. `fetch(token, size)` returns up to `size` items from
/// `token` and the token of what follows (empty at the end of the list).
pub async fn collect<T, F, Fut>(
    after: Option<&str>,
    first: usize,
    mut fetch: F,
) -> Result<Page<T>, GatewayError>
where
    F: FnMut(String, usize) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), GatewayError>>,
{
    let mut position = after.map(Position::decode).transpose()?.unwrap_or_default();
    let mut edges = Vec::with_capacity(first);
    if first == 0 {
        return Ok(Page { edges, has_next: true });
    }
    for _ in 0..MAX_FETCHES {
        let wanted = first - edges.len();
        // Exactly what is needed, so the last edge ends the downstream page and its cursor is the
        // next page's token: walking by `endCursor` never re-reads an item.
        let size = (position.skip + wanted).min(MAX_DOWNSTREAM_PAGE);
        let (items, next_token) = fetch(position.token.clone(), size)
            .await
            .map_err(|error| if is_refused_token(&error) { invalid_cursor() } else { error })?;
        let count = items.len();
        if count <= position.skip {
            if next_token.is_empty() {
                return Ok(Page { edges, has_next: false });
            }
            position = Position { token: next_token, skip: position.skip - count };
            continue;
        }
        for (index, item) in items.into_iter().enumerate().skip(position.skip).take(wanted) {
            let cursor = if index + 1 == count && !next_token.is_empty() {
                Position { token: next_token.clone(), skip: 0 }
            } else {
                Position { token: position.token.clone(), skip: index + 1 }
            };
            edges.push((cursor.encode(), item));
        }
        let consumed = position.skip + wanted;
        if edges.len() == first {
            return Ok(Page { edges, has_next: count > consumed || !next_token.is_empty() });
        }
        if next_token.is_empty() {
            return Ok(Page { edges, has_next: false });
        }
        position = Position { token: next_token, skip: 0 };
    }
    Ok(Page { has_next: true, edges })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A downstream list of `0..len` whose token is the start index and whose pages hold at most
    /// `max_page` items, recording every call.
    struct Fake {
        len: usize,
        max_page: usize,
        calls: Mutex<Vec<(String, usize)>>,
    }

    impl Fake {
        fn new(len: usize, max_page: usize) -> Self {
            Self { len, max_page, calls: Mutex::new(Vec::new()) }
        }

        async fn fetch(&self, token: String, size: usize) -> Result<(Vec<usize>, String), GatewayError> {
            self.calls.lock().unwrap().push((token.clone(), size));
            let start: usize = if token.is_empty() { 0 } else { token.parse().unwrap() };
            let end = (start + size.min(self.max_page)).min(self.len);
            let next = if end < self.len { end.to_string() } else { String::new() };
            Ok(((start..end).collect(), next))
        }

        fn calls(&self) -> usize {
            self.calls.lock().unwrap().len()
        }
    }

    async fn page(fake: &Fake, after: Option<&str>, first: usize) -> Page<usize> {
        collect(after, first, |t, s| fake.fetch(t, s)).await.unwrap()
    }

    fn items(page: &Page<usize>) -> Vec<usize> {
        page.edges.iter().map(|(_, item)| *item).collect()
    }

    #[tokio::test]
    async fn walking_with_end_cursors_visits_every_item_once() {
        let fake = Fake::new(7, 100);
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let page = page(&fake, after.as_deref(), 3).await;
            seen.extend(items(&page));
            if !page.has_next {
                break;
            }
            after = page.edges.last().map(|(cursor, _)| cursor.clone());
        }
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        assert_eq!(fake.calls(), 3, "one downstream call per page");
    }

    #[tokio::test]
    async fn any_edge_cursor_continues_right_after_that_edge() {
        let fake = Fake::new(10, 100);
        let first = page(&fake, None, 5).await;
        let (middle, _) = &first.edges[1];
        assert_eq!(items(&page(&fake, Some(middle), 3).await), vec![2, 3, 4]);
    }

    #[tokio::test]
    async fn small_downstream_pages_are_stitched_together() {
        let fake = Fake::new(10, 2);
        let page = page(&fake, None, 5).await;
        assert_eq!(items(&page), vec![0, 1, 2, 3, 4]);
        assert!(page.has_next);
    }

    #[tokio::test]
    async fn the_last_page_says_nothing_follows() {
        let fake = Fake::new(4, 100);
        let page = page(&fake, None, 4).await;
        assert_eq!(items(&page), vec![0, 1, 2, 3]);
        assert!(!page.has_next);
        let empty = Fake::new(0, 100);
        assert!(!super::tests::page(&empty, None, 4).await.has_next);
    }

    #[tokio::test]
    async fn foreign_cursors_are_bad_input() {
        let fake = Fake::new(4, 100);
        let error = collect(Some("not-a-cursor!"), 2, |t, s| fake.fetch(t, s)).await.unwrap_err();
        assert_eq!(error.code(), crate::error::ErrorCode::BadUserInput);
        assert_eq!(fake.calls(), 0);
    }

    #[test]
    fn cursors_that_could_not_hold_a_downstream_token_are_refused() {
        let wrap = |text: &str| URL_SAFE_NO_PAD.encode(text);
        for cursor in [
            wrap("3"),
            wrap("x:abc"),
            wrap("-1:abc"),
            wrap("101:abc"),
            wrap("0:abc\0def"),
            wrap("0:abc def"),
            wrap(&format!("0:{}", "A".repeat(129))),
            "A".repeat(10_000),
            "\0".to_owned(),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe, b':']),
        ] {
            let error = Position::decode(&cursor).unwrap_err();
            assert_eq!(error.code(), crate::error::ErrorCode::BadUserInput, "{cursor:?}");
        }
        assert_eq!(Position::decode(&wrap("2:MTIz")).unwrap(), Position { token: "MTIz".into(), skip: 2 });
    }

    #[tokio::test]
    async fn a_token_refused_downstream_is_blamed_on_after() {
        let cursor = Position { token: "Zm9yZ2Vk".into(), skip: 0 }.encode();
        let error = collect(Some(&cursor), 2, |_, _| async {
            Err::<(Vec<()>, String), _>(GatewayError::invalid(
                "pageToken",
                "is not a token this service issued",
            ))
        })
        .await
        .unwrap_err();
        assert!(
            matches!(error, GatewayError::BadUserInput { field: Some(ref f), .. } if f == "after"),
            "{error:?}"
        );
    }

    #[test]
    fn first_is_bounded() {
        assert!(page_size(-1).is_err());
        assert!(page_size(101).is_err());
        assert_eq!(page_size(100).unwrap(), 100);
    }
}
