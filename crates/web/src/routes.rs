//! The axum router: host gate, http->https redirects, and one handler per document.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HOST, LOCATION};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::apple::{self, Incoming};
use crate::site::{self, DomainName, Site};
use crate::xml::percent_encode;
use crate::{ConnFacts, Shared, autoconfig, autodiscover, cms_sign, mta_sts, setup};

type AppState = Arc<Shared>;

/// Path prefixes matched in any letter case (CLIENTS.md B.1: `/Autodiscover/Autodiscover.xml`).
const CASE_INSENSITIVE_PREFIXES: [&str; 4] = [
    "/autodiscover/",
    "/mail/",
    "/.well-known/autoconfig/",
    "/.well-known/mta-sts.txt",
];
/// Autoconfig paths (CLIENTS.md A); also served over plain http.
const AUTOCONFIG_PATHS: [&str; 2] = [
    "/mail/config-v1.1.xml",
    "/.well-known/autoconfig/mail/config-v1.1.xml",
];
/// RFC 8461 §3.3: the policy's one path.
const MTA_STS_PATH: &str = "/.well-known/mta-sts.txt";
/// RFC 8555 §8.3: HTTP-01 challenge prefix.
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

const XML: &str = "application/xml; charset=utf-8";
/// Autodiscover answers as Exchange does.
const TEXT_XML: &str = "text/xml; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// CLIENTS.md C: the type Safari hands to the profile installer.
const APPLE_CONFIG: &str = "application/x-apple-aspen-config";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let config = &shared.config;
    let max_body = config.max_body_bytes;
    let request_timeout = config.request_timeout;
    Router::new()
        .route(AUTOCONFIG_PATHS[0], get(autoconfig))
        .route(AUTOCONFIG_PATHS[1], get(autoconfig))
        .route(
            "/autodiscover/autodiscover.xml",
            get(autodiscover_get).post(autodiscover_post),
        )
        .route("/autodiscover/autodiscover.json", get(autodiscover_json))
        .route(
            "/autodiscover/autodiscover.json/v1.0/{address}",
            get(autodiscover_json_v1),
        )
        .route("/apple/{file}", get(apple_profile))
        .route("/setup", get(setup_page))
        .route("/", get(setup_page))
        .route(MTA_STS_PATH, get(mta_sts_policy))
        .route("/.well-known/acme-challenge/{token}", get(acme_challenge))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), gate))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(shared)
}

/// Lowercases the path of the case-insensitive endpoints, so the router matches them.
pub(crate) fn normalize_path<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let path = req.uri().path();
    let lower = path.to_ascii_lowercase();
    if lower == path
        || !CASE_INSENSITIVE_PREFIXES
            .iter()
            .any(|p| lower.starts_with(p))
    {
        return req;
    }
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{lower}?{query}"),
        None => lower,
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(CONTENT_TYPE, TEXT)], body.into()).into_response()
}

fn typed(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    (status, [(CONTENT_TYPE, content_type)], body.into()).into_response()
}

/// An internal failure: the client gets a generic 500 and an id, the log gets the detail.
fn internal(what: &str, err: &dyn std::fmt::Display) -> Response {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = format!("web-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    tracing::error!(%id, %err, "{what}");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error (id {id})\n"),
    )
}

/// `:port` when the HTTPS port is not 443, else nothing.
fn https_port_suffix(shared: &Shared) -> String {
    match shared.config.https_port {
        443 => String::new(),
        port => format!(":{port}"),
    }
}

/// Whether `path` is answered on plain http instead of redirected (issue 6: the autoconfig
/// paths, the MTA-STS policy and ACME challenges).
fn plain_http_allowed(path: &str) -> bool {
    AUTOCONFIG_PATHS.contains(&path) || path == MTA_STS_PATH || path.starts_with(ACME_PREFIX)
}

/// Runs before every handler: resolves the `Host` to a site (404 for names not served), sends
/// plain-http requests to https where required, and logs the request (never its headers).
async fn gate(State(shared): State<AppState>, mut req: Request, next: Next) -> Response {
    let tls = req
        .extensions()
        .get::<ConnFacts>()
        .is_some_and(|facts| facts.tls);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = gate_inner(&shared, tls, &mut req).await;
    let response = match response {
        Some(response) => response,
        None => next.run(req).await,
    };
    tracing::debug!(%method, %path, tls, status = response.status().as_u16(), "http request");
    response
}

/// `Some(response)` when the gate answers itself, `None` to run the handler.
async fn gate_inner(shared: &Shared, tls: bool, req: &mut Request) -> Option<Response> {
    let header = req.headers().get(HOST).and_then(|v| v.to_str().ok());
    let host = match header.or_else(|| req.uri().host()) {
        Some(h) => site::host_of(h),
        None => return Some(text(StatusCode::BAD_REQUEST, "missing Host header\n")),
    };
    let path = req.uri().path();
    // ACME HTTP-01 is validated on port 80 for any name being issued.
    if !tls && path.starts_with(ACME_PREFIX) {
        return None;
    }
    let site = match site::resolve(shared.store.as_ref(), &shared.hostname, &host).await {
        Ok(Some(site)) => site,
        Ok(None) => return Some(text(StatusCode::NOT_FOUND, "unknown host\n")),
        Err(err) => return Some(internal("host lookup failed", &err)),
    };
    // mta-sts.<domain> serves only the policy (and ACME); the policy only there.
    let mta_sts_host = matches!(
        site,
        Site::Domain {
            name: DomainName::MtaSts,
            ..
        }
    );
    if mta_sts_host != (path == MTA_STS_PATH) && !path.starts_with(ACME_PREFIX) {
        return Some(text(StatusCode::NOT_FOUND, "not found\n"));
    }
    if !tls && !plain_http_allowed(path) {
        let target = req
            .uri()
            .path_and_query()
            .map_or(path, PathAndQuery::as_str);
        let location = format!("https://{host}{}{target}", https_port_suffix(shared));
        let status = if path.starts_with("/autodiscover/") {
            // CLIENTS.md B.3: classic Outlook expects a 302 from http autodiscover.<domain>.
            StatusCode::FOUND
        } else if matches!(*req.method(), Method::GET | Method::HEAD) {
            StatusCode::MOVED_PERMANENTLY
        } else {
            StatusCode::PERMANENT_REDIRECT
        };
        let Ok(location) = HeaderValue::try_from(location) else {
            return Some(text(StatusCode::BAD_REQUEST, "bad request target\n"));
        };
        return Some((status, [(LOCATION, location)]).into_response());
    }
    req.extensions_mut().insert(site);
    None
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// A query parameter by name, in any letter case (clients differ: `Email`, `email`).
fn param<'a>(query: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The hosted domain of `address`, or the response to give instead.
async fn hosted_address(shared: &Shared, address: &str) -> Result<store::Address, Response> {
    let Ok(address) = store::Address::parse(address) else {
        return Err(text(StatusCode::BAD_REQUEST, "invalid email address\n"));
    };
    match shared.store.is_hosted_domain(address.domain()).await {
        Ok(true) => Ok(address),
        Ok(false) => Err(text(StatusCode::NOT_FOUND, "domain not hosted here\n")),
        Err(err) => Err(internal("domain lookup failed", &err)),
    }
}

/// CLIENTS.md A. The domain comes from `emailaddress` when given (Thunderbird's MX-based
/// look-up asks `autoconfig.<mail host's base domain>` for any hosted domain), else from the
/// host name (Thunderbird for Android omits the parameter).
async fn autoconfig(
    State(shared): State<AppState>,
    Extension(site): Extension<Site>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let email = param(&query, "emailaddress").filter(|e| !e.starts_with('%'));
    let domain = match email {
        Some(email) => match hosted_address(&shared, email).await {
            Ok(address) => address.domain().clone(),
            Err(response) => return response,
        },
        None => match site.domain() {
            Some(domain) => domain.clone(),
            None => {
                return text(
                    StatusCode::NOT_FOUND,
                    "no domain: add ?emailaddress=you@your.domain\n",
                );
            }
        },
    };
    let doc = autoconfig::document(domain.as_str(), &shared.hostname, &shared.config.ports);
    typed(StatusCode::OK, XML, doc)
}

/// The settings response for `email`, after checking its domain.
async fn autodiscover_for(shared: &Shared, email: &str) -> Response {
    match hosted_address(shared, email).await {
        Ok(address) => typed(
            StatusCode::OK,
            TEXT_XML,
            autodiscover::settings_response(
                &address.to_string(),
                &shared.hostname,
                &shared.config.ports,
            ),
        ),
        Err(response) => response,
    }
}

/// CLIENTS.md B.1/B.4. Any `Authorization` header is ignored: the extractors below never
/// look at headers, and nothing logs them.
async fn autodiscover_post(State(shared): State<AppState>, body: Bytes) -> Response {
    match autodiscover::parse_request(&body) {
        Ok(autodiscover::Request::Outlook { email }) => autodiscover_for(&shared, &email).await,
        Ok(autodiscover::Request::MobileSync) => typed(
            StatusCode::OK,
            TEXT_XML,
            autodiscover::error_response(autodiscover::ErrorCode::SchemaNotSupported),
        ),
        Err(err) => text(StatusCode::BAD_REQUEST, format!("{err}\n")),
    }
}

/// GET with `?email=` (lenient routing, CLIENTS.md B.1); without it, Exchange's "Invalid
/// Request" error document.
async fn autodiscover_get(
    State(shared): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match param(&query, "email").or_else(|| param(&query, "emailaddress")) {
        Some(email) => autodiscover_for(&shared, email).await,
        None => typed(
            StatusCode::OK,
            TEXT_XML,
            autodiscover::error_response(autodiscover::ErrorCode::InvalidRequest),
        ),
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    typed(status, JSON, value.to_string())
}

/// CLIENTS.md B.5, for `address` and the requested `Protocol`.
async fn autodiscover_json_for(
    shared: &Shared,
    address: Option<&str>,
    protocol: Option<&str>,
) -> Response {
    if !protocol.is_some_and(|p| p.eq_ignore_ascii_case("AutodiscoverV1")) {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({
                "ErrorCode": "InvalidProtocol",
                "ErrorMessage": "The given protocol value is invalid. Supported values are 'AutodiscoverV1'.",
            }),
        );
    }
    let Some(address) = address else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"ErrorCode": "InvalidUser", "ErrorMessage": "No email address given."}),
        );
    };
    let address = match hosted_address(shared, address).await {
        Ok(address) => address,
        Err(response) => return response,
    };
    let url = format!(
        "https://autodiscover.{}{}/Autodiscover/Autodiscover.xml",
        address.domain(),
        https_port_suffix(shared)
    );
    json(
        StatusCode::OK,
        &serde_json::json!({"Protocol": "AutodiscoverV1", "Url": url}),
    )
}

async fn autodiscover_json(
    State(shared): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    autodiscover_json_for(&shared, param(&query, "email"), param(&query, "protocol")).await
}

async fn autodiscover_json_v1(
    State(shared): State<AppState>,
    Path(address): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    autodiscover_json_for(&shared, Some(&address), param(&query, "protocol")).await
}

/// CLIENTS.md C: `/apple/<address>.mobileconfig[?protocol=pop3]`, signed when a certificate
/// for the mail host is loaded.
async fn apple_profile(
    State(shared): State<AppState>,
    Path(file): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let suffix = ".mobileconfig";
    let Some(address) = file
        .len()
        .checked_sub(suffix.len())
        .filter(|&cut| file.is_char_boundary(cut) && file[cut..].eq_ignore_ascii_case(suffix))
        .map(|cut| &file[..cut])
    else {
        return not_found().await;
    };
    let address = match hosted_address(&shared, address).await {
        Ok(address) => address,
        Err(response) => return response,
    };
    let incoming = match param(&query, "protocol") {
        Some(p) if p.eq_ignore_ascii_case("pop3") => Incoming::Pop3,
        _ => Incoming::Imap,
    };
    let address = address.to_string();
    let unsigned = match apple::profile(&address, &shared.hostname, &shared.config.ports, incoming)
    {
        Ok(profile) => profile,
        Err(err) => return internal("cannot write profile", &err),
    };
    let body = match shared.certs.certified_key(&shared.hostname) {
        Some(key) => match cms_sign::sign(&unsigned, &key) {
            Ok(signed) => signed,
            Err(err) => return internal("cannot sign profile", &err),
        },
        None => {
            tracing::warn!("no certificate loaded: serving the profile unsigned");
            unsigned
        }
    };
    let name: String = address
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_'))
        .collect();
    let disposition = format!("attachment; filename=\"{name}.mobileconfig\"");
    let Ok(disposition) = HeaderValue::try_from(disposition) else {
        return internal("bad file name", &"non-ASCII Content-Disposition");
    };
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static(APPLE_CONFIG)),
            (CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

/// The setup page, at `/setup` and at `/` of every served name.
async fn setup_page(
    State(shared): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(typed_address) = param(&query, "address") else {
        return typed(StatusCode::OK, HTML, setup::page(&setup::Outcome::Empty));
    };
    let refused = |reason: &str| {
        setup::page(&setup::Outcome::Refused {
            typed: typed_address,
            reason,
        })
    };
    let Ok(address) = store::Address::parse(typed_address) else {
        return typed(
            StatusCode::OK,
            HTML,
            refused("That is not a valid email address."),
        );
    };
    match shared.store.is_hosted_domain(address.domain()).await {
        Ok(true) => {}
        Ok(false) => {
            let reason = format!(
                "{} is not a domain hosted on this server.",
                address.domain()
            );
            return typed(StatusCode::OK, HTML, refused(&reason));
        }
        Err(err) => return internal("domain lookup failed", &err),
    }
    let address = address.to_string();
    let profile_url = format!(
        "https://{}{}/apple/{}.mobileconfig",
        shared.hostname,
        https_port_suffix(&shared),
        percent_encode(&address)
    );
    let page = setup::page(&setup::Outcome::Settings {
        address: &address,
        host: &shared.hostname,
        ports: &shared.config.ports,
        profile_url: &profile_url,
    });
    typed(StatusCode::OK, HTML, page)
}

/// RFC 8461 §3.2: `text/plain`, CRLF lines, never a redirect.
async fn mta_sts_policy(State(shared): State<AppState>) -> Response {
    let config = &shared.config;
    let policy = mta_sts::policy(
        config.mta_sts_mode,
        &[shared.hostname.as_str()],
        config.mta_sts_max_age,
    );
    typed(StatusCode::OK, "text/plain", policy)
}

/// RFC 8555 §8.3: the key authorization as `application/octet-stream`.
async fn acme_challenge(State(shared): State<AppState>, Path(token): Path<String>) -> Response {
    match shared.challenges.get(&token) {
        Some(key_authorization) => typed(
            StatusCode::OK,
            "application/octet-stream",
            key_authorization,
        ),
        None => not_found().await,
    }
}
