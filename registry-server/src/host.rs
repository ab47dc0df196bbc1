//! The `Host` header (RFC 9110, 7.2): `host[:port]` and nothing else, checked
//! on every request but the probes, so that no request with a Host that is
//! not one (userinfo, a path, a query, a fragment, a port that is not a
//! number under 65536) reaches a handler or is echoed into `sseEndpoint`.

use axum::extract::Request;
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, Version, header};

use crate::error::ApiError;

/// Paths answered whatever the Host: a probe never depends on anything else.
const PROBES: [&str; 2] = ["/livez", "/readyz"];

/// Refuses (400) a request whose Host is invalid, repeated, or
/// missing from an HTTP/1.1 request (RFC 9110 says a server must).
pub fn check_host(request: &Request) -> Result<(), ApiError> {
    if !PROBES.contains(&request.uri().path()) {
        let mut hosts = request.headers().get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(host), None) => {
                if valid_host(host).is_none() {
                    return Err(ApiError::BadRequest(
                        "the Host header must be host[:port], with no userinfo, path, query or fragment"
                            .into(),
                    ));
                }
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest("more than one Host header".into()));
            }
            (None, _) if request.version() >= Version::HTTP_11 => {
                return Err(ApiError::BadRequest(
                    "an HTTP/1.1 request needs a Host header".into(),
                ));
            }
            (None, _) => {}
        }
    }
    Ok(())
}

/// The request's Host when it is a valid `host[:port]`.
pub fn request_host(headers: &HeaderMap) -> Option<Authority> {
    headers.get(header::HOST).and_then(valid_host)
}

/// `value` as an authority of the form `host[:port]`: parsed by `http`'s URI
/// parser, which refuses a path, a query and a fragment, and then without
/// userinfo, with a host, and with a port that is a number under 65536 when
/// there is one.
fn valid_host(value: &HeaderValue) -> Option<Authority> {
    let authority = Authority::try_from(value.as_bytes()).ok()?;
    // `host()` leaves the port out: anything past it is `:port`, which must be
    // a number under 65536 (`port_u16` is none for anything else).
    let host = authority.host();
    let has_port = authority.as_str().len() > host.len();
    let valid = !host.is_empty()
        && !authority.as_str().contains('@')
        && (!has_port || authority.port_u16().is_some());
    valid.then_some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(host: &str) -> bool {
        valid_host(&HeaderValue::from_str(host).unwrap()).is_some()
    }

    #[test]
    fn host_and_port_are_valid() {
        for host in [
            "registry.example",
            "registry.example:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "[2001:db8::1]",
            "xn--bcher-kva.example",
        ] {
            assert!(valid(host), "{host}");
        }
    }

    #[test]
    fn userinfo_path_query_fragment_and_bad_ports_are_not() {
        for host in [
            "",
            "user@registry.example",
            "user:pw@registry.example:80",
            "evil.example/x?",
            "evil.example/x",
            "evil.example?x",
            "evil.example#x",
            "registry.example:65536",
            "registry.example:http",
            "registry.example:-1",
            "registry.example:",
            ":8080",
            "[::1",
            "a b",
        ] {
            assert!(!valid(host), "{host}");
        }
    }
}
