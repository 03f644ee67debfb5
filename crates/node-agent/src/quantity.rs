//! Kubernetes resource quantities (`"500m"`, `"1"`, `"1Gi"`, `"512Mi"`,
//! `"1e3"`), parsed exactly into billionths of a unit.
//!
//! The grammar is the API server's: a signed decimal number followed by a
//! binary suffix (`Ki` .. `Ei`), a decimal suffix (`n`, `u`, `m`, none, `k`,
//! `M` .. `E`) or a decimal exponent (`e3`, `E-2`). As in Kubernetes, digits
//! finer than one billionth round up.

use std::fmt;

/// What a quantity may look like, for error messages.
const ALLOWED: &str = "a decimal number with an optional suffix (n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei) or exponent (e3), such as \"500m\", \"1\", \"1Gi\" or \"512Mi\"";

/// Billionths in one unit.
const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// A quantity that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The text is not a quantity at all.
    #[error("invalid quantity {value:?}: {reason}; expected {ALLOWED}")]
    Syntax {
        /// The text as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The text is a quantity, but too large to hold.
    #[error("quantity {value:?} is too large; expected {ALLOWED} below 2^63")]
    TooLarge {
        /// The text as given.
        value: String,
    },
    /// The quantity is negative where only zero or more makes sense.
    #[error("quantity {value:?} is negative; a {what} must be zero or more")]
    Negative {
        /// The text as given.
        value: String,
        /// What the quantity was for (`cpu limit`, `memory limit`).
        what: &'static str,
    },
}

impl QuantityError {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Syntax { .. } => "syntax",
            Self::TooLarge { .. } => "too_large",
            Self::Negative { .. } => "negative",
        }
    }
}

/// An exact quantity, in billionths of its unit (cores, bytes, pods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nanos: i128,
}

impl Quantity {
    /// The largest magnitude kept: 2^63 units, beyond any real CPU or memory.
    const LIMIT: i128 = (1_i128 << 63) * NANOS_PER_UNIT;

    /// Nothing.
    pub const ZERO: Self = Self { nanos: 0 };

    /// One unit (one core, one byte).
    pub const ONE: Self = Self {
        nanos: NANOS_PER_UNIT,
    };

    /// `units` whole units.
    pub fn from_units(units: i64) -> Self {
        Self {
            nanos: i128::from(units) * NANOS_PER_UNIT,
        }
    }

    /// Parses a quantity as the API server writes it.
    ///
    /// # Errors
    ///
    /// [`QuantityError::Syntax`] when `text` is not a quantity,
    /// [`QuantityError::TooLarge`] when it is 2^63 units or more.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let syntax = |reason| QuantityError::Syntax {
            value: text.to_owned(),
            reason,
        };
        let too_large = || QuantityError::TooLarge {
            value: text.to_owned(),
        };
        if text.is_empty() {
            return Err(syntax("it is empty"));
        }
        if text.trim() != text {
            return Err(syntax("it has surrounding spaces"));
        }
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_len);
        let (whole, fraction) = match number.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (number, ""),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(syntax("it has no digits"));
        }
        if fraction.contains('.') {
            return Err(syntax("it has more than one decimal point"));
        }
        let scale = Scale::from_suffix(suffix).ok_or_else(|| syntax("its suffix is unknown"))?;

        // value = digits × 10^(exponent) × multiplier, kept as a digit string
        // and a power of ten so nothing is lost before the final rounding.
        let digits: String = whole.chars().chain(fraction.chars()).collect();
        let digits = digits.trim_start_matches('0');
        let fraction_len = i64::try_from(fraction.len()).map_err(|_| too_large())?;
        let mut exponent = 9 - fraction_len; // into billionths
        let multiplier: i128 = match scale {
            Scale::Decimal(power) => {
                exponent += i64::from(power);
                1
            }
            Scale::Binary(shift) => 1_i128 << shift,
        };
        if digits.is_empty() {
            return Ok(Self { nanos: 0 });
        }
        // Drop digits finer than one billionth, remembering whether any was
        // not zero so the result rounds up, as the API server does.
        let mut kept = digits;
        let mut dropped_nonzero = false;
        if exponent < 0 {
            let drop = usize::try_from(-exponent).map_err(|_| too_large())?;
            if drop >= kept.len() {
                dropped_nonzero = true; // digits is non-empty and has no leading zero
                kept = "";
            } else {
                let (head, tail) = kept.split_at(kept.len() - drop);
                dropped_nonzero = tail.bytes().any(|b| b != b'0');
                kept = head;
            }
            exponent = 0;
        }
        // 39 digits overflow i128; anything that long is far past the limit.
        if kept.len() + usize::try_from(exponent).map_err(|_| too_large())? > 38 {
            return Err(too_large());
        }
        let mut value: i128 = 0;
        for b in kept.bytes() {
            value = value * 10 + i128::from(b - b'0');
        }
        for _ in 0..exponent {
            value *= 10;
        }
        if dropped_nonzero {
            value += 1;
        }
        let value = value.checked_mul(multiplier).ok_or_else(too_large)?;
        if value >= Self::LIMIT {
            return Err(too_large());
        }
        Ok(Self {
            nanos: if negative { -value } else { value },
        })
    }

    /// The quantity in billionths of its unit.
    pub fn nanos(self) -> i128 {
        self.nanos
    }

    /// Whether the quantity is below zero.
    pub fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// Thousandths of the unit, rounded up (millicores for CPU).
    pub fn millis_ceil(self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// Whole units, rounded up (bytes for memory).
    pub fn units_ceil(self) -> i128 {
        div_ceil(self.nanos, NANOS_PER_UNIT)
    }

    /// `self / divisor`, rounded up, as the downward API divides resources
    /// (`resourceFieldRef` with a `divisor`).
    pub fn div_ceil(self, divisor: Self) -> Option<i128> {
        if divisor.nanos <= 0 {
            return None;
        }
        Some(div_ceil(self.nanos, divisor.nanos))
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % 1_000_000 == 0 && self.nanos % NANOS_PER_UNIT != 0 {
            write!(f, "{}m", self.nanos / 1_000_000)
        } else if self.nanos % NANOS_PER_UNIT == 0 {
            write!(f, "{}", self.nanos / NANOS_PER_UNIT)
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

/// `a / b` rounded towards positive infinity, for `b > 0`.
fn div_ceil(a: i128, b: i128) -> i128 {
    let quotient = a / b;
    if a % b > 0 { quotient + 1 } else { quotient }
}

/// A suffix's meaning: times 10^n, or times 2^n.
#[derive(Debug, Clone, Copy)]
enum Scale {
    Decimal(i32),
    Binary(u32),
}

impl Scale {
    fn from_suffix(suffix: &str) -> Option<Self> {
        Some(match suffix {
            "n" => Self::Decimal(-9),
            "u" => Self::Decimal(-6),
            "m" => Self::Decimal(-3),
            "" => Self::Decimal(0),
            "k" => Self::Decimal(3),
            "M" => Self::Decimal(6),
            "G" => Self::Decimal(9),
            "T" => Self::Decimal(12),
            "P" => Self::Decimal(15),
            "E" => Self::Decimal(18),
            "Ki" => Self::Binary(10),
            "Mi" => Self::Binary(20),
            "Gi" => Self::Binary(30),
            "Ti" => Self::Binary(40),
            "Pi" => Self::Binary(50),
            "Ei" => Self::Binary(60),
            _ => {
                let exponent = suffix.strip_prefix(['e', 'E'])?;
                let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // Beyond ±60 the value is either zero-ish or far too large;
                // clamping keeps the arithmetic bounded.
                let power: i32 = exponent.parse().unwrap_or(if exponent.starts_with('-') {
                    -1000
                } else {
                    1000
                });
                Self::Decimal(power.clamp(-1000, 1000))
            }
        })
    }
}

/// Parses a quantity that must not be negative, naming `what` it is for.
///
/// # Errors
///
/// As [`Quantity::parse`], and [`QuantityError::Negative`] below zero.
pub fn parse_non_negative(text: &str, what: &'static str) -> Result<Quantity, QuantityError> {
    let quantity = Quantity::parse(text)?;
    if quantity.is_negative() {
        return Err(QuantityError::Negative {
            value: text.to_owned(),
            what,
        });
    }
    Ok(quantity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nanos(text: &str) -> i128 {
        match Quantity::parse(text) {
            Ok(q) => q.nanos(),
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    #[test]
    fn plain_numbers_and_decimal_suffixes() {
        assert_eq!(nanos("1"), 1_000_000_000);
        assert_eq!(nanos("0"), 0);
        assert_eq!(nanos("500m"), 500_000_000);
        assert_eq!(nanos("1.5"), 1_500_000_000);
        assert_eq!(nanos("0.25"), 250_000_000);
        assert_eq!(nanos(".5"), 500_000_000);
        assert_eq!(nanos("2."), 2_000_000_000);
        assert_eq!(nanos("1k"), 1_000_000_000_000);
        assert_eq!(nanos("3M"), 3_000_000_000_000_000);
        assert_eq!(nanos("100n"), 100);
        assert_eq!(nanos("7u"), 7_000);
        assert_eq!(nanos("+2"), 2_000_000_000);
        assert_eq!(nanos("-2"), -2_000_000_000);
    }

    #[test]
    fn binary_suffixes() {
        assert_eq!(nanos("1Ki"), 1024 * 1_000_000_000);
        assert_eq!(nanos("512Mi"), 512 * (1 << 20) * 1_000_000_000);
        assert_eq!(nanos("1Gi"), (1 << 30) * 1_000_000_000);
        assert_eq!(nanos("1.5Gi"), 3 * (1 << 29) * 1_000_000_000);
    }

    #[test]
    fn exponents() {
        assert_eq!(nanos("1e3"), 1_000_000_000_000);
        assert_eq!(nanos("1E3"), 1_000_000_000_000);
        assert_eq!(nanos("5e-3"), 5_000_000);
        assert_eq!(nanos("2e+2"), 200_000_000_000);
    }

    #[test]
    fn digits_finer_than_a_billionth_round_up() {
        assert_eq!(nanos("0.1n"), 1);
        assert_eq!(nanos("1.0000000001"), 1_000_000_001);
        assert_eq!(nanos("1.0000000000"), 1_000_000_000);
        assert_eq!(nanos("1e-30"), 1);
    }

    #[test]
    fn units_and_millis_round_up() {
        let q = |t| Quantity::parse(t).expect("quantity");
        assert_eq!(q("500m").millis_ceil(), 500);
        assert_eq!(q("0.0001").millis_ceil(), 1);
        assert_eq!(q("2").millis_ceil(), 2000);
        assert_eq!(q("1Gi").units_ceil(), 1 << 30);
        assert_eq!(q("1500m").units_ceil(), 2);
        assert_eq!(q("1Gi").div_ceil(q("1Mi")), Some(1024));
        assert_eq!(q("1").div_ceil(q("0")), None);
    }

    #[test]
    fn bad_input_is_rejected_with_the_value_and_what_is_allowed() {
        for bad in [
            "", " 1", "1 ", "abc", "1.2.3", "Gi", "1Gb", "1ki", "1e", "1e+", "--1", ".", "1m2",
            "0x10", "1_000",
        ] {
            let err = Quantity::parse(bad).expect_err(bad);
            let message = err.to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
            assert!(message.contains("\"512Mi\""), "{message}");
            assert_eq!(err.label(), "syntax", "{bad:?}");
        }
    }

    #[test]
    fn huge_values_are_refused_not_wrapped() {
        for huge in [
            "9Ei",
            "1e30",
            "100000000000000000000",
            "99999999999999999999999999999999999999999999",
        ] {
            let err = Quantity::parse(huge).expect_err(huge);
            assert_eq!(err.label(), "too_large", "{huge}: {err}");
        }
        assert_eq!(nanos("1e-1000"), 1);
        assert_eq!(nanos("0e1000"), 0);
    }

    #[test]
    fn negative_quantities_are_refused_where_they_make_no_sense() {
        let err = parse_non_negative("-1", "cpu limit").expect_err("negative");
        assert_eq!(
            err.to_string(),
            "quantity \"-1\" is negative; a cpu limit must be zero or more"
        );
        assert!(parse_non_negative("0", "cpu limit").is_ok());
    }

    #[test]
    fn display_is_short() {
        let q = |t| Quantity::parse(t).expect("quantity");
        assert_eq!(q("500m").to_string(), "500m");
        assert_eq!(q("2").to_string(), "2");
        assert_eq!(q("5n").to_string(), "5n");
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,24}") {
            let _ = Quantity::parse(&text);
        }

        #[test]
        fn parsing_never_panics_on_quantity_like_text(text in "[-+]?[0-9.]{0,30}(e[-+]?[0-9]{0,5}|[numkMGTPE]|[KMGTPE]i)?") {
            let _ = Quantity::parse(&text);
        }

        #[test]
        fn integers_with_suffixes_are_exact(n in 0_u32..1_000_000, suffix in prop::sample::select(vec![("", 9_u32), ("m", 6), ("k", 12)])) {
            let q = Quantity::parse(&format!("{n}{}", suffix.0)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(q.nanos(), i128::from(n) * 10_i128.pow(suffix.1));
        }

        #[test]
        fn millis_round_trip_through_display(m in 0_u32..10_000_000) {
            let q = Quantity::parse(&format!("{m}m")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = Quantity::parse(&q.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(q, again);
        }
    }
}
