//! The Origin allow-list (`CABLE_ALLOWED_ORIGINS`).
//!
//! Entries are exact origins (`https://app.example.com`) or wildcards (`*.example.com`,
//! `https://*.example.com`); an entry without a scheme matches any scheme. An empty list allows
//! every origin, and a request without an Origin header (native apps, mobile SDKs, servers) is
//! always allowed: only browsers send Origin, and only browsers need protecting.

/// Whether an upgrade with this Origin header may proceed.
pub fn allowed(allow_list: &[String], origin: Option<&str>) -> bool {
    let mut patterns = allow_list
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .peekable();
    if patterns.peek().is_none() {
        return true;
    }
    let Some(origin) = origin else { return true };
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    patterns.any(|pattern| matches(&pattern.trim_end_matches('/').to_ascii_lowercase(), &origin))
}

fn matches(pattern: &str, origin: &str) -> bool {
    if pattern == origin {
        return true;
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    let pattern_host = match pattern.split_once("://") {
        Some((pattern_scheme, pattern_host)) if pattern_scheme == scheme => pattern_host,
        Some(_) => return false,
        None => pattern,
    };
    match pattern_host.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern_host == host,
    }
}

#[cfg(test)]
mod tests {
    use super::allowed;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_list_allows_all() {
        assert!(allowed(&[], Some("https://evil.test")));
        assert!(allowed(&list(&[""]), Some("https://evil.test")));
    }

    #[test]
    fn no_origin_is_always_allowed() {
        assert!(allowed(&list(&["https://app.example.com"]), None));
    }

    #[test]
    fn exact_and_wildcard() {
        let l = list(&[
            "https://app.example.com",
            "*.widgets.test",
            "http://*.corp.test",
        ]);
        assert!(allowed(&l, Some("https://app.example.com")));
        assert!(allowed(&l, Some("HTTPS://APP.EXAMPLE.COM/")));
        assert!(!allowed(&l, Some("http://app.example.com")));
        assert!(!allowed(&l, Some("https://evil.example.com")));
        assert!(allowed(&l, Some("https://shop.widgets.test")));
        assert!(allowed(&l, Some("https://a.b.widgets.test")));
        assert!(!allowed(&l, Some("https://a.widgets.test:8443")));
        assert!(!allowed(&l, Some("https://widgets.test")));
        assert!(!allowed(&l, Some("https://evilwidgets.test")));
        assert!(allowed(&l, Some("http://x.corp.test")));
        assert!(!allowed(&l, Some("https://x.corp.test")));
        assert!(!allowed(&l, Some("null")));
    }
}
