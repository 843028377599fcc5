//! Comparing secrets (bearer keys, the admin token) in constant time.

/// Whether `given` equals `secret`, in time that depends only on their lengths.
pub fn equal(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && given
            .iter()
            .zip(secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_only_when_equal() {
        assert!(super::equal(b"key", b"key"));
        assert!(!super::equal(b"kez", b"key"));
        assert!(!super::equal(b"ke", b"key"));
        assert!(!super::equal(b"", b"key"));
    }
}
