//! Serial number arithmetic (RFC 1982) for TSNs and SSNs.
//!
//! Internally TSNs are unwrapped into `u64` so that ordering is plain integer ordering; the
//! wire carries the low 32 bits.

/// Unwrap a 32-bit TSN to the `u64` closest to `reference` (an unwrapped TSN).
pub(crate) fn unwrap_tsn(reference: u64, tsn: u32) -> u64 {
    let delta = tsn.wrapping_sub(reference as u32) as i32;
    reference.wrapping_add_signed(i64::from(delta))
}

/// Whether SSN `a` comes before `b` (RFC 1982 with 16 bits).
pub(crate) fn ssn_lt(a: u16, b: u16) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrapping_follows_the_closest_value_across_the_wrap() {
        let base = u64::from(u32::MAX) - 2;
        assert_eq!(unwrap_tsn(base, u32::MAX), u64::from(u32::MAX));
        assert_eq!(unwrap_tsn(base, 3), u64::from(u32::MAX) + 4);
        assert_eq!(unwrap_tsn(base, u32::MAX - 10), base - 8);
        assert_eq!(unwrap_tsn(1 << 32, 5), (1 << 32) + 5);
    }

    #[test]
    fn ssn_order_wraps() {
        assert!(ssn_lt(1, 2));
        assert!(ssn_lt(65535, 0));
        assert!(!ssn_lt(0, 65535));
        assert!(!ssn_lt(7, 7));
    }
}
