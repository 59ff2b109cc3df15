//! The payload rule: how a data packet from the phone becomes PCM16 samples.
//!
//! Each packet is a 1-byte rolling sequence number followed by 16 kHz mono PCM16 LE. The old
//! bridge made payloads sample-aligned by dropping the first byte of an odd-length payload, then
//! the last byte if still odd, and skipped empty results; the backend receives exactly that today,
//! so the rule is kept byte for byte.

/// Applies the contract's payload rule; `None` means the packet carries no samples and is skipped.
///
/// The contract's second step ("then the last byte if still odd") can never apply: an odd length
/// minus one is even. The fuzz target checks this function against the literal two-step rule.
#[inline]
pub fn sample_aligned(payload: &[u8]) -> Option<&[u8]> {
    let pcm = if payload.len() % 2 == 1 {
        &payload[1..]
    } else {
        payload
    };
    (!pcm.is_empty()).then_some(pcm)
}

#[cfg(test)]
mod tests {
    use super::sample_aligned;

    #[test]
    fn sequence_byte_is_dropped_from_odd_payloads() {
        let packet = [7u8, 1, 2, 3, 4];
        assert_eq!(sample_aligned(&packet), Some(&[1u8, 2, 3, 4][..]));
    }

    #[test]
    fn even_payloads_pass_unchanged() {
        let packet = [1u8, 2, 3, 4];
        assert_eq!(sample_aligned(&packet), Some(&packet[..]));
    }

    #[test]
    fn empty_results_are_skipped() {
        assert_eq!(sample_aligned(&[]), None);
        assert_eq!(sample_aligned(&[9]), None);
    }

    #[test]
    fn a_ten_ms_packet_yields_320_bytes() {
        let packet = [0u8; 321];
        assert_eq!(sample_aligned(&packet).map(<[u8]>::len), Some(320));
    }
}
