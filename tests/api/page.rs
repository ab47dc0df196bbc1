//! SPEC 11 and 7, the web page: `GET /` and its script and style sheet are
//! served from the binary, open even when tokens are configured, and load
//! nothing from another site. What the page does is tested in a browser
//! (tests/browser).

use registry_server::Config;
use registry_tests::TestServer;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};

const PAGE: [(&str, &str); 3] = [
    ("/", "text/html"),
    ("/assets/app.js", "text/javascript"),
    ("/assets/style.css", "text/css"),
];

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_a_token_even_when_tokens_are_configured() {
    let server = TestServer::start_with(|config: &mut Config| {
        config.auth.operator_tokens = vec!["operator-secret-77a1".into()];
    })
    .await;
    for (path, content_type) in PAGE {
        let response = server.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let served = response.headers()[CONTENT_TYPE].to_str().unwrap();
        assert!(served.starts_with(content_type), "{path}: {served}");
        let policy = response.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
        let body = response.text().await.unwrap();
        // Nothing from another site: every reference is to the server itself.
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} names another site"
        );
    }
    assert_eq!(
        server.get("/api/v1/agents").await.status(),
        StatusCode::UNAUTHORIZED,
        "the page is open, the API is not"
    );
}

#[tokio::test]
async fn the_page_loads_its_own_script_and_style_sheet() {
    let server = TestServer::start().await;
    let html = server.get("/").await.text().await.unwrap();
    assert!(html.contains(r#"<script src="/assets/app.js""#), "{html}");
    assert!(
        html.contains(r#"<link rel="stylesheet" href="/assets/style.css">"#),
        "{html}"
    );
    let script = server.get("/assets/app.js").await.text().await.unwrap();
    assert!(
        script.contains("/api/v1/events"),
        "the script follows the fleet stream"
    );
    assert_eq!(
        server.get("/assets/nothing.js").await.status(),
        StatusCode::NOT_FOUND
    );
}
