//! Properties of the decoder: it never panics, and valid records round-trip.

use proptest::prelude::*;
use rtc_heartbeat::{DecodeLimits, Heartbeat, LimitSource, Load, decode, encode, encode_base};

const NOW_MS: u64 = 1_700_000_000_000;

fn fraction() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), Just(1.0), 0.0..=16.0f64]
}

fn amount() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), 0.0..1e6f64, 0.0..f64::MAX]
}

fn source() -> impl Strategy<Value = LimitSource> {
    prop_oneof![Just(LimitSource::Cgroup), Just(LimitSource::Host)]
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        "[a-z0-9][a-z0-9.-]{0,60}",
        "[A-Za-z0-9_-]{1,64}",
        any::<u64>(),
        0..=NOW_MS,
        (fraction(), fraction(), source(), source()),
        (
            any::<u64>(),
            amount(),
            amount(),
            any::<u64>(),
            amount(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(node, boot, seq, sent_ms, (cpu, mem, cpu_of, mem_of), rest)| {
                let (conn, mps, p95_ms, lag_records, lag_ms, draining) = rest;
                let load = Load {
                    cpu,
                    mem,
                    cpu_of,
                    mem_of,
                    conn,
                    mps,
                    p95_ms,
                    lag_records,
                    lag_ms,
                    draining,
                };
                Heartbeat::new(&node, &boot, seq, sent_ms, &load)
            },
        )
}

proptest! {
    #[test]
    fn valid_records_round_trip_exactly(hb in heartbeat()) {
        let decoded = decode(&encode(&hb), NOW_MS, &DecodeLimits::default());
        prop_assert_eq!(decoded, Ok(hb));
    }

    #[test]
    fn base_records_decode_with_both_sources_equal_to_limit(hb in heartbeat()) {
        let decoded = decode(&encode_base(&hb), NOW_MS, &DecodeLimits::default());
        let limit = LimitSource::both(hb.cpu_of, hb.mem_of);
        let expected = Heartbeat { cpu_of: limit, mem_of: limit, ..hb };
        prop_assert_eq!(decoded, Ok(expected));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes, NOW_MS, &DecodeLimits::default());
    }

    #[test]
    fn corrupted_records_never_panic_and_accepted_ones_round_trip(
        hb in heartbeat(),
        at in any::<proptest::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = encode(&hb);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = decode(&bytes, NOW_MS, &DecodeLimits::default()) {
            // A byte swap can still be a valid record (another digit, say);
            // whatever was accepted passed every check, so it round-trips.
            let again = decode(&encode(&decoded), NOW_MS, &DecodeLimits::default());
            prop_assert_eq!(again, Ok(decoded));
        }
    }

    #[test]
    fn json_of_the_wrong_shape_never_panics(
        value in proptest::arbitrary::any::<(Option<u32>, Option<String>, Option<f64>, Vec<bool>)>(),
    ) {
        let (v, node, cpu, extra) = value;
        let json = serde_json::json!({ "v": v, "node": node, "cpu": cpu, "extra": extra });
        let bytes = serde_json::to_vec(&json).unwrap_or_default();
        prop_assert!(decode(&bytes, NOW_MS, &DecodeLimits::default()).is_err());
    }
}
