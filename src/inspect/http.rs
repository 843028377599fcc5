//! The inspector's two answers: the page (`GET /inspect`, one HTML document with its script,
//! styles and the vendored chart library inlined) and its data (`GET /inspect/data`, JSON).
//! Both need the admin token: HTTP basic auth with any user name and the token as password,
//! or `?token=`. Without it: 401 with `WWW-Authenticate: Basic` and no data.

use std::sync::OnceLock;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};

use super::Inspector;

const PAGE: &str = include_str!("assets/inspect.html");
const SCRIPT: &str = include_str!("assets/inspect.js");
const STYLE: &str = include_str!("assets/inspect.css");
const UPLOT_JS: &str = include_str!("assets/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/vendor/uPlot.min.css");

/// The page with everything inlined, built once.
fn page() -> &'static str {
    static PAGE_HTML: OnceLock<String> = OnceLock::new();
    PAGE_HTML.get_or_init(|| {
        PAGE.replace("/*UPLOT_CSS*/", UPLOT_CSS)
            .replace("/*STYLE*/", STYLE)
            .replace("/*UPLOT_JS*/", UPLOT_JS)
            .replace("/*SCRIPT*/", SCRIPT)
    })
}

/// Whether the request carries `token`: as the password of HTTP basic auth, or `?token=`.
pub fn authorized<B>(request: &Request<B>, token: &str) -> bool {
    let token = token.as_bytes();
    let by_query = request.uri().query().is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(key, value)| key == "token" && crate::secret::equal(value.as_bytes(), token))
    });
    let by_basic = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, encoded) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(encoded)
        })
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .is_some_and(|decoded| match decoded.iter().position(|b| *b == b':') {
            Some(colon) => crate::secret::equal(&decoded[colon + 1..], token),
            None => false,
        });
    by_query || by_basic
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Answers `/inspect` and `/inspect/data`.
pub async fn answer<B>(
    inspector: &Inspector,
    token: &str,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"GET only\n"),
        );
    }
    if !authorized(request, token) {
        let mut response = respond(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"the inspector needs the admin token\n"),
        );
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cable-gateway inspector\", charset=\"UTF-8\""),
        );
        return response;
    }
    match request.uri().path() {
        "/inspect/data" => {
            let snapshot = inspector.snapshot().await;
            let body = serde_json::to_vec(&*snapshot).unwrap_or_default();
            respond(StatusCode::OK, "application/json", Bytes::from(body))
        }
        _ => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(page().as_bytes()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, authorization: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        builder.body(()).unwrap()
    }

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[test]
    fn the_token_by_basic_auth_or_query() {
        let token = "s3cret:with colon";
        assert!(authorized(
            &request("/inspect?token=s3cret%3Awith%20colon", None),
            token
        ));
        assert!(authorized(
            &request("/inspect", Some(&basic("admin:s3cret:with colon"))),
            token
        ));
        assert!(authorized(
            &request("/inspect", Some(&basic(":s3cret:with colon"))),
            token
        ));
        for wrong in [
            request("/inspect", None),
            request("/inspect?token=s3cret", None),
            request("/inspect?token=", None),
            request("/inspect", Some(&basic("s3cret:with colon"))),
            request("/inspect", Some("Bearer s3cret:with colon")),
            request("/inspect", Some("Basic !!!")),
        ] {
            assert!(!authorized(&wrong, token), "{:?}", wrong.uri());
        }
    }

    #[test]
    fn the_page_inlines_its_assets() {
        let page = page();
        assert!(page.contains("uPlot"));
        assert!(!page.contains("/*SCRIPT*/"));
        assert!(!page.contains("src=\"http"), "no CDN");
    }
}
