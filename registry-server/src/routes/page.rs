//! The web page (SPEC 11) at `GET /`: one HTML file, one script and one style
//! sheet from `registry-server/web/`, embedded in the binary at build time, so
//! the page works offline and loads nothing from another site. They need no
//! token (SPEC 7): the page asks the operator for one and sends it itself.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");

/// Only the server's own scripts, styles and API: no inline script, no other site.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// `GET /`.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "webPage",
    tag = "page",
    summary = "The web page",
    description = "The fleet live, a form to push commands and the rollouts filling in. \
        Needs no token: with tokens configured, the page asks for an operator token.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)),
)]
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/app.js`.
#[utoipa::path(
    get,
    path = "/assets/app.js",
    operation_id = "webPageScript",
    tag = "page",
    summary = "The web page's script",
    responses((status = 200, description = "The script", content_type = "text/javascript", body = String)),
)]
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /assets/style.css`.
#[utoipa::path(
    get,
    path = "/assets/style.css",
    operation_id = "webPageStyle",
    tag = "page",
    summary = "The web page's style sheet",
    responses((status = 200, description = "The style sheet", content_type = "text/css", body = String)),
)]
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Small files: revalidating costs little, and a new binary shows at once.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}
