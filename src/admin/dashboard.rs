//! The dashboard: one HTML page on the admin listener's `GET /`, with its script
//! and stylesheet embedded in the binary (plain JavaScript, no build step, nothing
//! fetched from elsewhere). The page reads what any client reads —
//! `GET /api/v1/upstreams` about every second, the `/api/v1/events` stream,
//! `/api/v1/cluster` and `/api/v1/whoami` — and changes the table through the
//! native API like any other client, so the access rules, the token and the
//! cross-site guard apply to it unchanged.
//!
//! The page is served with a Content-Security-Policy that lets it load only its
//! own script and stylesheet and talk only to its own origin, and that no other
//! site may frame it (so no page can trick a click on its buttons).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::app::AppState;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// What the page may load and who may frame it.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /` and the page's two assets. Relative links in the page, so that it also
/// works behind a proxy that serves the admin listener under a path.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/style.css", get(style_css))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Revalidated on every load: a new binary serves a new page.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    let mut resp = asset("text/html; charset=utf-8", INDEX_HTML);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::admin::{Access, router};
    use crate::config::{AccessRule, AdminConfig, Config, ServerConfig};
    use crate::upstream::Table;

    async fn get(config: &AdminConfig, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        get_with(config, Request::get(path)).await
    }

    async fn get_with(
        config: &AdminConfig,
        req: axum::http::request::Builder,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let table = Table::from_config(&Config::single_upstream(
            "127.0.0.1:0".parse().unwrap(),
            vec![ServerConfig::new("127.0.0.1:1")],
        ))
        .unwrap();
        let app = router(Arc::new(table), Access::from_config(config));
        let mut req = req.body(Body::empty()).unwrap();
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(client));
        let resp = app.oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn open() -> AdminConfig {
        AdminConfig::new("127.0.0.1:0".parse().unwrap())
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_types() {
        let (status, h, body) = get(&open(), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["x-frame-options"], "DENY");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
        // The page links its assets relatively, and they are there.
        for (link, path, ty) in [
            ("dashboard/app.js", "/dashboard/app.js", "text/javascript"),
            ("dashboard/style.css", "/dashboard/style.css", "text/css"),
        ] {
            assert!(
                body.contains(&format!("\"{link}\"")),
                "{link} not in the page"
            );
            let (status, h, asset) = get(&open(), path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(h["content-type"].to_str().unwrap().starts_with(ty));
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert!(!asset.is_empty());
        }
    }

    #[tokio::test]
    async fn the_page_keeps_the_access_rules_of_the_api() {
        let mut config = open();
        config.rules = vec![AccessRule::Allow("10.0.0.0/8".parse().unwrap())];
        let (status, _, body) = get(&config, "/").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, _, _) = get(&config, "/dashboard/app.js").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn whoami_tells_the_page_whether_to_show_its_buttons() {
        let whoami = |config: AdminConfig, token: Option<&'static str>| async move {
            let mut req = Request::get("/api/v1/whoami");
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let (status, _, body) = get_with(&config, req).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        };
        let v = whoami(open(), None).await;
        assert_eq!(v["write"], true);
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["token_required"], false);

        let mut ro = open();
        ro.read_only = true;
        let v = whoami(ro, None).await;
        assert_eq!(
            (v["write"].as_bool(), v["read_only"].as_bool()),
            (Some(false), Some(true))
        );
        assert!(v["reason"].as_str().unwrap().contains("read-only"));

        let mut reader = open();
        reader.write_rules = Some(vec![AccessRule::Allow("127.0.0.2/32".parse().unwrap())]);
        assert_eq!(whoami(reader, None).await["write"], false);

        let mut tokened = open();
        tokened.token = Some("sixteen-chars-token".into());
        let v = whoami(tokened.clone(), None).await;
        assert_eq!(
            (v["write"].as_bool(), v["token_required"].as_bool()),
            (Some(true), Some(true))
        );
        assert_eq!(v["token_valid"], false);
        assert_eq!(
            whoami(tokened, Some("sixteen-chars-token")).await["token_valid"],
            true
        );
    }

    /// Nothing in the page or its assets points anywhere but its own origin.
    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", super::INDEX_HTML),
            ("app.js", super::APP_JS),
            ("style.css", super::STYLE_CSS),
        ] {
            // The SVG namespace is a name, not a link.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for needle in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(needle), "{name} contains {needle:?}");
            }
        }
    }
}
