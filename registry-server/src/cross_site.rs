//! The cross-site rule and CORS (SPEC 10), one middleware in front of every
//! other check, tokens included: a browser request from another site is
//! refused with 403 before it has any effect, unless its origin is one of
//! `server.cors_origins`, whose answers then carry the CORS headers and whose
//! preflights are answered here, without a token.
//!
//! The rule guards the API (`/api/...`) and `/metrics`; the probes, and the
//! web page a link from another site may open, are outside it. Clients that
//! send neither `Origin` nor `Sec-Fetch-Site` (agents, curl) are never refused.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, uri::Authority};
use axum::response::{IntoResponse, Response};

use crate::config::ServerConfig;
use crate::error::ApiError;

/// What a preflight may ask for: every method and request header the API uses.
const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, DELETE");
const ALLOW_HEADERS: HeaderValue =
    HeaderValue::from_static("Authorization, Content-Type, Last-Event-ID");
/// Answer headers a page may read besides the simple ones.
const EXPOSE_HEADERS: HeaderValue = HeaderValue::from_static("Retry-After, WWW-Authenticate");
/// How long a browser may keep a preflight's answer, in seconds.
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// A web origin: scheme, host and port, compared without regard to letter case
/// and with the scheme's default port filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]`, as browsers send it in `Origin` and as
    /// `server.cors_origins` lists it; `http` and `https` only, no path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?} is not an origin: write scheme://host[:port], no path");
        let (scheme, authority) = text.split_once("://").ok_or_else(invalid)?;
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(invalid());
        }
        let authority: Authority = authority.parse().map_err(|_| invalid())?;
        Self::new(scheme, &authority).ok_or_else(invalid)
    }

    /// The origin of `server.public_url`: its scheme, host and port, its path left out.
    fn of_url(url: &str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        Self::new(scheme, &authority.parse().ok()?)
    }

    fn new(scheme: &str, authority: &Authority) -> Option<Self> {
        let scheme = scheme.to_ascii_lowercase();
        let default_port = default_port(&scheme)?;
        Some(Self {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port),
            scheme,
        })
    }

    /// Whether this origin is the server's as a request's `Host` names it: the
    /// same host and port, by `http` or `https`.
    fn is_host(&self, host: &Authority) -> bool {
        self.host.eq_ignore_ascii_case(host.host())
            && self.port
                == host
                    .port_u16()
                    .unwrap_or(default_port(&self.scheme).unwrap_or(0))
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Whether the rule guards `path`: the API and `/metrics`, not the probes nor the web page.
pub fn guards(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

/// The rule as configured: the origins allowed to call from a browser, and
/// the server's own, when `server.public_url` names it.
#[derive(Debug)]
pub struct CrossSite {
    allowed: Vec<Origin>,
    own: Option<Origin>,
}

/// What the rule makes of one request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not a cross-site request, or not one the rule guards.
    Pass,
    /// From an origin of `server.cors_origins`.
    Allowed,
    /// From another site: refused.
    Refused(&'static str),
}

impl CrossSite {
    /// The rule of `server`'s settings, checked at start.
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            allowed: server
                .cors_origins
                .iter()
                .filter_map(|origin| Origin::parse(origin).ok())
                .collect(),
            own: Some(server.public_url.as_str())
                .filter(|url| !url.is_empty())
                .and_then(Origin::of_url),
        }
    }

    fn judge(&self, path: &str, headers: &HeaderMap) -> Verdict {
        if !guards(path) {
            return Verdict::Pass;
        }
        let origin = headers.get(header::ORIGIN).map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| Origin::parse(text).ok())
        });
        if let Some(Some(origin)) = &origin
            && self.allowed.contains(origin)
        {
            return Verdict::Allowed;
        }
        let fetch_site = headers
            .get(SEC_FETCH_SITE)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if fetch_site.eq_ignore_ascii_case(b"cross-site")
            || fetch_site.eq_ignore_ascii_case(b"same-site")
        {
            return Verdict::Refused("Sec-Fetch-Site says it comes from another site");
        }
        match origin {
            None => Verdict::Pass,
            Some(Some(origin)) if self.is_own(&origin, headers) => Verdict::Pass,
            Some(_) => Verdict::Refused("its Origin is not this server's"),
        }
    }

    fn is_own(&self, origin: &Origin, headers: &HeaderMap) -> bool {
        match &self.own {
            Some(own) => own == origin,
            None => headers
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
                .and_then(|host| host.parse::<Authority>().ok())
                .is_some_and(|host| origin.is_host(&host)),
        }
    }

    fn has_allowed_origins(&self) -> bool {
        !self.allowed.is_empty()
    }
}

/// What the rule makes of a request before it is routed: answered here (a
/// refusal, or an allowed origin's preflight), or routed, its answer then
/// finished with [`Finish::apply`].
pub enum Decision {
    /// Answered without routing.
    Answer(Response),
    /// Routed; what its answer gets.
    Route(Finish),
}

/// The CORS headers a routed request's answer gets.
pub struct Finish {
    /// The allowed origin the request came from.
    allowed_origin: Option<HeaderValue>,
    /// Whether the answer depends on `Origin` (some origins are allowed):
    /// caches must know.
    vary: bool,
}

impl CrossSite {
    /// Refuses cross-site requests and answers preflights from allowed
    /// origins; says what headers the others' answers get.
    pub fn decide(&self, request: &Request) -> Decision {
        let verdict = self.judge(request.uri().path(), request.headers());
        let origin = || request.headers().get(header::ORIGIN).cloned();
        match verdict {
            Verdict::Refused(why) => Decision::Answer(
                ApiError::Forbidden(format!(
                    "cross-site requests are refused: {why} (allowed origins are set in server.cors_origins)"
                ))
                .into_response(),
            ),
            Verdict::Allowed => {
                let origin = origin();
                let preflight = request.method() == Method::OPTIONS
                    && request
                        .headers()
                        .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
                if preflight && let Some(origin) = origin {
                    let mut response = StatusCode::NO_CONTENT.into_response();
                    let headers = response.headers_mut();
                    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
                    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS);
                    headers.insert(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE);
                    allow(headers, origin);
                    return Decision::Answer(response);
                }
                Decision::Route(Finish {
                    vary: origin.is_none() && self.has_allowed_origins(),
                    allowed_origin: origin,
                })
            }
            Verdict::Pass => Decision::Route(Finish {
                allowed_origin: None,
                vary: self.has_allowed_origins(),
            }),
        }
    }
}

impl Finish {
    /// Adds the CORS headers to a routed request's answer.
    pub fn apply(self, response: &mut Response) {
        let headers = response.headers_mut();
        if let Some(origin) = self.allowed_origin {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS);
            allow(headers, origin);
        } else if self.vary {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// The headers that let `origin` read an answer.
fn allow(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(public_url: &str, cors_origins: &[&str]) -> CrossSite {
        CrossSite::new(&ServerConfig {
            public_url: public_url.into(),
            cors_origins: cors_origins.iter().map(|o| (*o).to_owned()).collect(),
            ..ServerConfig::default()
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    const PATH: &str = "/api/v1/agents/a-1/events";

    #[test]
    fn origins_compare_without_case_and_with_default_ports() {
        assert_eq!(
            Origin::parse("HTTPS://Ops.Example").unwrap(),
            Origin::parse("https://ops.example:443").unwrap()
        );
        assert_ne!(
            Origin::parse("http://ops.example").unwrap(),
            Origin::parse("https://ops.example").unwrap()
        );
        for bad in [
            "*",
            "null",
            "ops.example",
            "ftp://ops.example",
            "https://ops.example/",
            "https://ops.example/app",
            "https://user@ops.example",
            "https://",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn requests_without_origin_or_sec_fetch_site_pass() {
        let open = rule("", &[]);
        assert_eq!(open.judge(PATH, &HeaderMap::new()), Verdict::Pass);
        assert_eq!(
            open.judge(PATH, &headers(&[("host", "registry:8080")])),
            Verdict::Pass
        );
    }

    #[test]
    fn the_servers_own_origin_is_the_host_by_http_or_https_when_public_url_is_empty() {
        let open = rule("", &[]);
        for (host, origin) in [
            ("registry:8080", "http://registry:8080"),
            ("registry:8080", "https://registry:8080"),
            ("registry", "http://registry"),
            ("registry", "https://registry"),
            ("Registry:80", "http://registry"),
            ("[::1]:8080", "http://[::1]:8080"),
        ] {
            let request = headers(&[("host", host), ("origin", origin)]);
            assert_eq!(open.judge(PATH, &request), Verdict::Pass, "{origin}");
        }
        for (host, origin) in [
            ("registry:8080", "http://registry:9090"),
            ("registry", "https://registry:80"),
            ("registry:8080", "http://evil.example:8080"),
            ("registry:8080", "null"),
        ] {
            let request = headers(&[("host", host), ("origin", origin)]);
            assert!(
                matches!(open.judge(PATH, &request), Verdict::Refused(_)),
                "{origin}"
            );
        }
    }

    #[test]
    fn with_a_public_url_only_its_origin_is_the_servers_own() {
        let behind_proxy = rule("https://registry.example/base/", &[]);
        let own = headers(&[
            ("host", "10.0.0.5:8080"),
            ("origin", "https://registry.example"),
        ]);
        assert_eq!(behind_proxy.judge(PATH, &own), Verdict::Pass);
        let by_host = headers(&[
            ("host", "10.0.0.5:8080"),
            ("origin", "http://10.0.0.5:8080"),
        ]);
        assert!(matches!(
            behind_proxy.judge(PATH, &by_host),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn sec_fetch_site_cross_site_and_same_site_are_refused_unless_the_origin_is_allowed() {
        let rule = rule("", &["https://ops.example"]);
        for site in ["cross-site", "same-site"] {
            let request = headers(&[("sec-fetch-site", site)]);
            assert!(matches!(rule.judge(PATH, &request), Verdict::Refused(_)));
            let allowed = headers(&[("sec-fetch-site", site), ("origin", "https://ops.example")]);
            assert_eq!(rule.judge(PATH, &allowed), Verdict::Allowed);
        }
        for site in ["same-origin", "none"] {
            let request = headers(&[("sec-fetch-site", site)]);
            assert_eq!(rule.judge(PATH, &request), Verdict::Pass);
        }
    }

    #[test]
    fn the_probes_and_the_web_page_are_outside_the_rule() {
        let rule = rule("", &[]);
        let cross = headers(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://x.example"),
        ]);
        for path in ["/livez", "/readyz", "/"] {
            assert_eq!(rule.judge(path, &cross), Verdict::Pass, "{path}");
        }
        for path in ["/metrics", "/api/v1/agents", "/api/v1/openapi.json"] {
            assert!(
                matches!(rule.judge(path, &cross), Verdict::Refused(_)),
                "{path}"
            );
        }
    }
}
