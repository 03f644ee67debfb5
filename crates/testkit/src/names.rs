use std::process;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Longest `kind` kept in a name, so names stay short enough for every use.
const MAX_KIND_LEN: usize = 20;

/// A name no other test of any run is using: `rtc-<kind>-<pid>-<n>-<suffix>`.
///
/// The process id and a per-process counter keep the tests of one run apart;
/// the suffix, from the wall clock, keeps a run apart from leftovers of an
/// earlier process that had the same id. `kind` is reduced to lowercase ASCII
/// letters, digits and `-` (at most 20 characters), so the name is a valid
/// Kubernetes namespace (a DNS-1123 label), Kafka topic and Redis key part.
pub fn unique_name(kind: &str) -> String {
    let kind: String = kind
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .take(MAX_KIND_LEN)
        .collect();
    let kind = kind.trim_matches('-');
    let kind = if kind.is_empty() { "test" } else { kind };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("rtc-{kind}-{}-{n}-{}", process::id(), time_suffix())
}

/// Four base-36 digits of the current millisecond: it repeats only every
/// 36^4 ms (about 28 minutes), which is plenty next to pid and counter.
#[expect(
    clippy::disallowed_methods,
    reason = "names only need to differ between runs, not to be a clock that tests depend on"
)]
fn time_suffix() -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let mut rest = millis % 36u128.pow(4);
    let mut digits = [b'0'; 4];
    for digit in digits.iter_mut().rev() {
        *digit = DIGITS[(rest % 36) as usize];
        rest /= 36;
    }
    digits.iter().map(|&d| char::from(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(name: &str) -> bool {
        name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn names_differ_within_a_process() {
        let a = unique_name("ns");
        let b = unique_name("ns");
        assert_ne!(a, b);
    }

    #[test]
    fn names_are_dns_labels_whatever_the_kind() {
        for kind in [
            "ns",
            "Heart Beat",
            "",
            "---",
            "topic_with.dots",
            &"x".repeat(100),
        ] {
            let name = unique_name(kind);
            assert!(is_dns_label(&name), "{name:?} from kind {kind:?}");
        }
    }

    #[test]
    fn names_carry_kind_and_process_id() {
        let name = unique_name("lease");
        assert!(name.starts_with(&format!("rtc-lease-{}-", process::id())));
    }
}
