//! What an upgrade request carries, read the same way for every wire protocol: offered
//! sub-protocols, query parameters, headers.

use hyper::header::SEC_WEBSOCKET_PROTOCOL;
use hyper::Request;

/// The sub-protocols the client offered (the header may repeat and hold lists).
pub fn offered<B>(request: &Request<B>) -> impl Iterator<Item = &str> {
    request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether the client offered `protocol`.
pub fn offers<B>(request: &Request<B>, protocol: &str) -> bool {
    offered(request).any(|p| p == protocol)
}

/// A query parameter's value, percent-decoded (the first, if it repeats).
pub fn query_param<B>(request: &Request<B>, name: &str) -> Option<String> {
    request.uri().query().and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    })
}

/// A header's value, when it is visible ASCII.
pub fn header<B>(request: &Request<B>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_protocols_from_lists_and_repeated_headers() {
        let request = Request::builder()
            .header("sec-websocket-protocol", "a, b ,c")
            .header("sec-websocket-protocol", "d")
            .body(())
            .unwrap();
        assert_eq!(offered(&request).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert!(offers(&request, "b"));
        assert!(!offers(&request, "a, b"));
    }

    #[test]
    fn query_parameters_are_decoded_and_the_first_wins() {
        let request = Request::builder()
            .uri("/cable?sid=a%2Bb&x=1&sid=second&token=a+b")
            .body(())
            .unwrap();
        assert_eq!(query_param(&request, "sid").as_deref(), Some("a+b"));
        assert_eq!(query_param(&request, "token").as_deref(), Some("a b"));
        assert_eq!(query_param(&request, "missing"), None);
        let bare = Request::builder().uri("/cable").body(()).unwrap();
        assert_eq!(query_param(&bare, "sid"), None);
    }

    #[test]
    fn headers_that_are_not_visible_ascii_are_absent() {
        let request = Request::builder()
            .header("x-jid", "token")
            .header(
                "x-bad",
                hyper::header::HeaderValue::from_bytes(b"\xff").unwrap(),
            )
            .body(())
            .unwrap();
        assert_eq!(header(&request, "x-jid").as_deref(), Some("token"));
        assert_eq!(header(&request, "x-bad"), None);
    }
}
