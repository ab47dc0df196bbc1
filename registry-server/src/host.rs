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

/// The last Host a connection sent that was valid. A client sends the same
/// Host on every request of a connection: the same bytes again are valid
/// without a copy and a parse (about 1,100 instructions a request).
#[derive(Clone, Default)]
pub struct LastValidHost(Option<Box<[u8]>>);

impl LastValidHost {
    /// Whether `host` is valid: the last valid one again, or parsed now
    /// (and then remembered).
    fn check(&mut self, host: &HeaderValue) -> bool {
        if self.0.as_deref() == Some(host.as_bytes()) {
            return true;
        }
        let valid = valid_host(host).is_some();
        if valid {
            self.0 = Some(host.as_bytes().into());
        }
        valid
    }
}

/// Refuses (400) a request whose Host is invalid, repeated, or
/// missing from an HTTP/1.1 request (RFC 9110 says a server must).
/// `last_valid` is its connection's.
pub fn check_host(request: &Request, last_valid: &mut LastValidHost) -> Result<(), ApiError> {
    if !PROBES.contains(&request.uri().path()) {
        let mut hosts = request.headers().get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(host), None) => {
                if !last_valid.check(host) {
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
    fn the_last_valid_host_is_remembered_and_an_invalid_one_is_not() {
        let mut last = LastValidHost::default();
        let host = HeaderValue::from_static("registry.example:8080");
        assert!(last.check(&host));
        assert!(last.check(&host));
        let evil = HeaderValue::from_static("user@registry.example");
        assert!(!last.check(&evil));
        assert!(!last.check(&evil));
        assert!(last.check(&HeaderValue::from_static("other.example")));
        assert!(last.check(&host));
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
