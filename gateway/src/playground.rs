//! The GraphiQL playground, served entirely from the binary so it works offline.
//!
//! The page is a small template of ours; GraphiQL and React come from their npm packages (see
//! `assets/README.md`) and are served under `/assets/<version>/`, with the version in the path so
//! they can be cached for a year. The page loads nothing from anywhere else, which its Content
//! Security Policy enforces.
//!
//! It opens with the README's "Try it" operations as ready tabs (`assets/playground-tabs.json`,
//! embedded in the page as inert JSON that `playground.js` reads, so no inline script is needed);
//! `trusted-documents.example.json` lists exactly those documents, so they also run where trusted
//! documents are enforced.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// Part of every asset URL; bump it when any asset changes (the revision: `playground.js` learnt
/// the ready tabs in r2).
pub const ASSET_VERSION: &str = concat!("graphiql-3.8.3-", env!("CARGO_PKG_VERSION"), "-r2");

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 8] = [
    Asset {
        name: "graphiql.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/graphiql.min.css"),
    },
    Asset {
        name: "react.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/react-dom.production.min.js"),
    },
    Asset {
        name: "playground.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/playground.js"),
    },
    Asset {
        name: "LICENSE.graphiql",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../assets/LICENSE.graphiql"),
    },
    Asset {
        name: "LICENSE.react",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../assets/LICENSE.react"),
    },
    Asset {
        name: "LICENSE.react-dom",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../assets/LICENSE.react-dom"),
    },
];

/// GraphiQL's CSS-in-JS needs inline styles; scripts come only from this origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

/// The playground's ready tabs: GraphiQL's `defaultTabs` (`query`, `variables`, `headers`).
const TABS: &str = include_str!("../assets/playground-tabs.json");

/// The playground page.
pub fn page() -> Response {
    let mut response = Html(html()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn html() -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>TicketFlow GraphQL playground</title>
  <link rel="stylesheet" href="/assets/{v}/graphiql.min.css">
  <style>html, body, #graphiql {{ height: 100%; margin: 0; }}</style>
</head>
<body>
  <div id="graphiql">Loading the playground…</div>
  <script type="application/json" id="playground-tabs">{tabs}</script>
  <script src="/assets/{v}/react.production.min.js"></script>
  <script src="/assets/{v}/react-dom.production.min.js"></script>
  <script src="/assets/{v}/graphiql.min.js"></script>
  <script src="/assets/{v}/playground.js"></script>
</body>
</html>
"#,
        v = ASSET_VERSION,
        // Inert data, but `</script>` inside it would still end the element.
        tabs = TABS.replace("</", "<\\/")
    )
}

/// `GET /assets/{version}/{name}`: an embedded asset, cached for a year.
pub async fn asset(Path((version, name)): Path<(String, String)>) -> Response {
    let found = ASSETS.iter().find(|asset| asset.name == name);
    match found {
        Some(asset) if version == ASSET_VERSION => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            asset.bytes,
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_gateway_assets() {
        let page = page();
        let csp = page.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"));
        let html = html();
        assert!(!html.contains("//"), "no absolute or protocol-relative URLs in the page");
        for name in ["graphiql.min.js", "graphiql.min.css", "react.production.min.js", "playground.js"] {
            assert!(html.contains(&format!("/assets/{ASSET_VERSION}/{name}")), "{name}");
            assert!(ASSETS.iter().any(|asset| asset.name == name));
        }
    }

    #[test]
    fn the_ready_tabs_are_the_readme_operations_and_all_trusted_in_the_example_manifest() {
        let tabs: Vec<serde_json::Value> = serde_json::from_str(TABS).unwrap();
        let names: Vec<&str> = tabs
            .iter()
            .map(|tab| {
                let query = tab["query"].as_str().unwrap();
                let operation = query.lines().find(|line| !line.starts_with('#')).unwrap();
                operation.split(['(', ' ']).nth(1).unwrap()
            })
            .collect();
        assert_eq!(names, ["Browse", "Register", "Login", "Place", "Pay", "Mine", "Live"]);
        let manifest: std::collections::HashMap<String, String> =
            serde_json::from_str(include_str!("../trusted-documents.example.json")).unwrap();
        for tab in &tabs {
            let query = tab["query"].as_str().unwrap();
            assert_eq!(manifest.get(&crate::documents::sha256_hex(query)).map(String::as_str), Some(query));
            assert!(async_graphql::parser::parse_query(query).is_ok(), "{query}");
        }
        assert_eq!(manifest.len(), tabs.len());
        assert!(tabs[0]["query"].as_str().unwrap().contains("Authorization"), "the auth header is explained");
        assert!(html().contains("id=\"playground-tabs\""));
    }

    #[tokio::test]
    async fn assets_are_served_with_their_type_only_under_the_current_version() {
        let js = asset(Path((ASSET_VERSION.to_owned(), "graphiql.min.js".to_owned()))).await;
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(js.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        let stale = asset(Path(("graphiql-0.0.1".to_owned(), "graphiql.min.js".to_owned()))).await;
        assert_eq!(stale.status(), StatusCode::NOT_FOUND);
        let unknown = asset(Path((ASSET_VERSION.to_owned(), "../Cargo.toml".to_owned()))).await;
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    }
}
