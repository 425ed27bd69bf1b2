//! The bundled usage UI (`dashboard/`, Vue 3 + Vite) as an axum [`Router`]
//! under `/ui/`.
//!
//! `make ui` builds the app into `dashboard/dist/`. Release builds embed that
//! folder in the binary; debug builds read it from disk at run time (so
//! `npm run build` shows without recompiling). A binary built without it
//! answers `/ui/` with a page saying how to build it: `cargo build` never
//! needs npm.
//!
//! Both servers of the UI (the standalone gateway and the operator) share
//! its sign-in session ([`session`]) and its inventory views ([`inventory`]).

pub mod inventory;
pub mod session;

use std::borrow::Cow;

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

/// Where the UI is served.
pub const PREFIX: &str = "/ui";

#[derive(rust_embed::Embed)]
#[folder = "dist/"]
#[allow_missing = true]
struct Dist;

/// Whether this binary has the built UI (release: embedded; debug: on disk now).
pub fn built() -> bool {
    Dist::get("index.html").is_some()
}

/// `GET /ui`, `/ui/` and `/ui/{path}`: the built files; any other path under
/// `/ui/` gets `index.html`, so the app's own routes (`/ui/logs?model=...`)
/// survive a reload and can be shared.
pub fn router() -> Router {
    Router::new()
        .route(PREFIX, get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { file("index.html") }))
        .route("/ui/{*path}", get(|Path(path): Path<String>| async move { file(&path) }))
}

// Content-Security-Policy: scripts and data only from this origin. Styles
// allow inline: the component library (Naive UI) injects its CSS at run time.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(path: &str) -> Response {
    let (found, path) = match Dist::get(path) {
        Some(f) => (f, path),
        // An app route, or a missing asset: assets are hashed, so only the
        // app itself answers for names it does not have.
        None if !path.starts_with("assets/") => match Dist::get("index.html") {
            Some(f) => (f, "index.html"),
            None => return not_built(),
        },
        None => return StatusCode::NOT_FOUND.into_response(),
    };
    let mime = found.metadata.mimetype();
    // Hashed asset names change with their content: cache them for good;
    // index.html is asked for every time, so a new build shows at once.
    let cache = if path.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    let body: Cow<'static, [u8]> = found.data;
    let mut response = body.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

fn not_built() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "The usage UI is not built into this binary: run `make ui` (needs Node.js and npm), then rebuild \
         (`make run` does both).\n",
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt as _;

    use super::*;

    async fn get(path: &str) -> Response {
        router().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap()
    }

    /// Run after `make ui` (as `make ui-test` does); without `dist/` the UI
    /// says how to build it.
    #[tokio::test]
    async fn serves_the_app_its_routes_and_hashed_assets() {
        let index = get("/ui/").await;
        if !built() {
            assert_eq!(index.status(), StatusCode::NOT_FOUND);
            return;
        }
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(index.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(index.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        assert!(index.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        // An app route reloads into the app.
        let route = get("/ui/logs").await;
        assert_eq!(route.status(), StatusCode::OK);
        assert_eq!(route.headers()[header::CACHE_CONTROL], "no-cache");
        // Hashed assets are cached for good; a missing one is a 404, not the app.
        let asset = Dist::iter().find(|p| p.starts_with("assets/") && p.ends_with(".js")).unwrap();
        let js = get(&format!("/ui/{asset}")).await;
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(js.headers()[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
        assert_eq!(get("/ui/assets/gone-123.js").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/ui").await.status(), StatusCode::PERMANENT_REDIRECT);
    }
}
