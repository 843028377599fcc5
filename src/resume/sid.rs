//! Random identifiers: session ids (bearer secrets, 128 bits) and epochs.

/// `bytes` random bytes from the operating system, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source is available");
    hex::encode(buf)
}

/// A new session id: 128 random bits.
pub fn new_sid() -> String {
    random_hex(16)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sids_are_long_and_distinct() {
        let (a, b) = (super::new_sid(), super::new_sid());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
