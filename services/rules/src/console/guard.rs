//! What keeps other web pages out of the console, in every mode.
//!
//! A browser sends some requests to any site without asking it first: a
//! "simple" POST (`text/plain`, a form) or a `no-cors` fetch, from whatever
//! page is open. And a name an attacker's DNS points at 127.0.0.1 a moment
//! after the page loaded (DNS rebinding) makes the console that page's own
//! origin. So, before any route runs:
//! - the `Host` must name the console: its listen address, `localhost`, or a
//!   name given with `--http-allowed-hosts` (421 otherwise, reads included);
//! - a request that changes something must be `Content-Type:
//!   application/json` (415 otherwise), which no page can send to another
//!   origin without a preflight the console never grants;
//! - and must not come from another origin: an `Origin` that is not the
//!   console's own, or a browser's `Sec-Fetch-Site` other than `same-origin`
//!   (403). The API's reads are refused cross-site too (a live stream holds
//!   a slot; a diagnosis asks the enforcer for a report).
//!
//! Tools (curl, grpcurl's JSON, Prometheus) send neither `Origin` nor
//! `Sec-Fetch-Site`, and are let through on the `Host` and `Content-Type`
//! rules alone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::json_response;

/// Which hosts and origins are the console's own.
#[derive(Debug, Clone)]
pub struct Guard {
    scheme: &'static str,
    listen: SocketAddr,
    /// Lowercase, without a trailing dot.
    allowed_hosts: Vec<String>,
}

impl Guard {
    /// The console on `listen` (HTTPS when `tls`), also reached by the names
    /// in `allowed_hosts` (say, the name a reverse proxy or a DNS entry
    /// gives it).
    pub fn new(listen: SocketAddr, tls: bool, allowed_hosts: &[String]) -> Self {
        Self {
            scheme: if tls { "https" } else { "http" },
            listen,
            allowed_hosts: allowed_hosts.iter().map(|h| normalize(h)).collect(),
        }
    }

    /// Whether `host` (a `Host` header's name, without the port) is one of
    /// the console's names.
    fn allows_host(&self, host: &str) -> bool {
        let host = normalize(host);
        if host == "localhost" || self.allowed_hosts.contains(&host) {
            return true;
        }
        // An address literal cannot be rebound: the listen address, or any
        // address when the console listens on all of them.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.listen.ip().is_unspecified() || ip == self.listen.ip(),
            Err(_) => false,
        }
    }

    /// The request's host and port, if it names one of the console's hosts;
    /// why not, if it names another.
    fn host<'r>(&self, request: &'r Request) -> Result<Option<Authority<'r>>, String> {
        let named = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        let Some(named) = named else {
            // HTTP/1.0 without a Host: no browser sends that.
            return Ok(None);
        };
        match Authority::parse(named) {
            Some(authority) if self.allows_host(authority.host) => Ok(Some(authority)),
            _ => Err(format!(
                "host {named:?} is not this console's: reach it by its listen address ({}), \
                 localhost, or a name given with --http-allowed-hosts",
                self.listen
            )),
        }
    }

    /// Whether `origin` (an `Origin` header) is the console's own origin
    /// as the request reached it (`host`).
    fn own_origin(&self, origin: &str, host: Option<&Authority<'_>>) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false; // "null": a sandboxed frame, a file, a redirect
        };
        let (Some(origin), Some(host)) = (Authority::parse(rest), host) else {
            return false;
        };
        let default = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        scheme.eq_ignore_ascii_case(self.scheme)
            && normalize(origin.host) == normalize(host.host)
            && origin.port.unwrap_or(default) == host.port.unwrap_or(default)
    }
}

/// A `Host` or an origin's `host[:port]`.
struct Authority<'a> {
    host: &'a str,
    port: Option<u16>,
}

impl<'a> Authority<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let (host, port) = match text.rsplit_once(':') {
            // An IPv6 literal's colons are inside its brackets.
            Some((host, port)) if !port.contains(']') => (host, Some(port.parse().ok()?)),
            _ => (text, None),
        };
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return None;
        }
        Some(Self { host, port })
    }
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether the method changes something.
fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the body is declared JSON (`application/json`, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Runs before every console route.
pub async fn check(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let host = match guard.host(&request) {
        Ok(host) => host,
        Err(why) => return refusal(StatusCode::MISDIRECTED_REQUEST, "PERMISSION_DENIED", &why),
    };
    let headers = request.headers();
    let method = request.method();
    let api = request.uri().path().starts_with("/api/");
    if changes(method) || api {
        // Browsers say where a request comes from; tools say nothing.
        let site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("same-origin");
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or(""));
        let foreign_origin = origin.is_some_and(|o| !guard.own_origin(o, host.as_ref()));
        if !matches!(site, "same-origin" | "none") || foreign_origin {
            let from = origin.unwrap_or(site);
            return refusal(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                &format!(
                    "refused a request from another site ({from}): the console takes its API \
                     calls only from its own page"
                ),
            );
        }
    }
    if changes(method) && !is_json(headers) {
        return refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "INVALID_ARGUMENT",
            "a request that changes something must be Content-Type: application/json",
        );
    }
    next.run(request).await
}

/// A refusal in the JSON API's error shape.
fn refusal(http: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "error": { "code": code, "status": http.as_u16(), "message": message }
    });
    json_response(http, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(listen: &str, allowed: &[&str]) -> Guard {
        let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        Guard::new(listen.parse().unwrap(), false, &allowed)
    }

    #[test]
    fn hosts_are_the_listen_address_localhost_and_the_allowed_names() {
        let g = guard("127.0.0.1:8080", &["Console.Example.COM"]);
        for host in [
            "127.0.0.1",
            "localhost",
            "LOCALHOST.",
            "console.example.com",
        ] {
            assert!(g.allows_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "127.0.0.2",
            "[::1]",
            "localhost.evil.example",
            "",
        ] {
            assert!(!g.allows_host(host), "{host}");
        }
        let any = guard("[::]:8080", &[]);
        assert!(any.allows_host("[2001:db8::1]") && any.allows_host("10.0.0.7"));
        assert!(!any.allows_host("evil.example"));
    }

    #[test]
    fn authorities_parse_with_and_without_ports() {
        let a = Authority::parse("[::1]:8080").unwrap();
        assert_eq!((a.host, a.port), ("[::1]", Some(8080)));
        let a = Authority::parse("[::1]").unwrap();
        assert_eq!((a.host, a.port), ("[::1]", None));
        let a = Authority::parse("localhost").unwrap();
        assert_eq!((a.host, a.port), ("localhost", None));
        assert!(Authority::parse("host:port").is_none());
        assert!(Authority::parse("user@host").is_none());
    }

    #[test]
    fn the_own_origin_matches_scheme_host_and_port() {
        let g = guard("127.0.0.1:8080", &[]);
        let host = Authority::parse("127.0.0.1:8080").unwrap();
        assert!(g.own_origin("http://127.0.0.1:8080", Some(&host)));
        for origin in [
            "https://127.0.0.1:8080",
            "http://127.0.0.1:3000",
            "http://localhost:8080",
            "http://evil.example",
            "null",
        ] {
            assert!(!g.own_origin(origin, Some(&host)), "{origin}");
        }
        let default_port = Authority::parse("localhost").unwrap();
        assert!(g.own_origin("http://localhost:80", Some(&default_port)));
    }

    #[test]
    fn json_is_the_essence_whatever_the_parameters() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&headers));
    }
}
