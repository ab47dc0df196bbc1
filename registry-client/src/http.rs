//! What both sides share to speak HTTP to the registry: its base URL, with
//! paths built segment by segment (an id is never parsed as a path), and the
//! HTTP client.

use std::time::Duration;

use url::Url;

use crate::error::Error;

/// The registry's base URL (`http://registry.example:8080`, a path kept).
#[derive(Clone, Debug)]
pub(crate) struct Base(Url);

impl Base {
    /// Checks `url`: an absolute `http` or `https` URL.
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = Url::parse(url).map_err(|err| invalid(&err.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if parsed.cannot_be_a_base() || parsed.host().is_none() {
            return Err(invalid("it must name a host"));
        }
        Ok(Self(parsed))
    }

    /// The URL of the path made of `segments` under the base, each segment
    /// percent-encoded as needed.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.0.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// The base as given.
    pub(crate) fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// An HTTP client for the registry. No overall timeout, since streams stay
/// open; each call that must end sets its own.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("registry-client/", env!("CARGO_PKG_VERSION")))
        .build()
        // Building fails only when the TLS backend cannot start.
        .unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_built_under_the_base_and_ids_encoded() {
        let base = Base::parse("http://registry.example:8080/prefix/").unwrap();
        assert_eq!(
            base.url(&["api", "v1", "agents", "a/b"]).as_str(),
            "http://registry.example:8080/prefix/api/v1/agents/a%2Fb"
        );
        let bare = Base::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            bare.url(&["api", "v1", "agents"]).as_str(),
            "http://127.0.0.1:8080/api/v1/agents"
        );
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(Base::parse("ftp://x").is_err());
        assert!(Base::parse("localhost:8080").is_err());
    }
}
