//! Time as a value: the engine never reads a clock, the shell passes `now` in.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// Milliseconds since the Unix epoch. Wall-clock, because rollout state is persisted and a
/// restarted cutover must know how long a step has already run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }
    pub const fn millis(self) -> u64 {
        self.0
    }
    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64),
        )
    }
    /// How long after `earlier` this is; zero if it is not after.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
    /// `2026-12-04T15:54:22.123Z`: the form people read in messages (UTC, milliseconds).
    /// Pure arithmetic on the value; no clock is read.
    pub fn rfc3339(self) -> String {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(self.0);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// A duration written the human way in config and JSON (`"90s"`, `"500ms"`, `"1m30s"`), in the
/// one grammar of [`parse_duration`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn get(self) -> Duration {
        self.0
    }
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Dur {
    /// In the grammar [`parse_duration`] reads, so a serialised `Dur` always parses back:
    /// `1h 30m`, `500ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_nanos();
        if total == 0 {
            return f.write_str("0s");
        }
        let mut rest = total;
        let mut first = true;
        for (unit, nanos) in UNITS {
            let n = rest / nanos;
            rest %= nanos;
            if n > 0 {
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "{n}{unit}")?;
                first = false;
            }
        }
        Ok(())
    }
}

/// The units of the duration grammar, largest first, with their length in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// What every error about a duration says, so that there is one grammar to learn.
pub const DURATION_GRAMMAR: &str = "write a whole number and a unit (d, h, m, s, ms), several \
     from the largest down, like \"250ms\", \"5s\", \"90s\", \"1m30s\" or \"1h\"";

/// Parses the one duration grammar of cutover (config, admin API, CLI): one or more terms
/// `<whole number><unit>`, units `d`, `h`, `m`, `s`, `ms` (and `us`, `ns`), each unit at most
/// once and from the largest down, optionally separated by spaces: `250ms`, `5s`, `1m30s`,
/// `1h 30m`. A bare `0` is zero. No fractions (`1.5s` is `1s500ms`), no words (`5 seconds`).
///
/// The error says what is wrong; [`DURATION_GRAMMAR`] says how to write it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut last_unit: Option<usize> = None;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let (num, after) = rest.split_at(digits);
        let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(letters);
        if unit.is_empty() {
            let word: String = after
                .trim_start()
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            return Err(if after.starts_with('.') {
                format!("{s:?} has a fraction, and fractions are not part of the grammar")
            } else if word.is_empty() {
                format!("{num} has no unit")
            } else if UNITS.iter().any(|(u, _)| *u == word) {
                format!("a space between {num} and {word}")
            } else {
                format!("unknown unit {word:?}")
            });
        }
        let Some(idx) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!("unknown unit {unit:?}"));
        };
        if last_unit.is_some_and(|l| idx <= l) {
            return Err(format!(
                "unit {unit:?} comes after a unit at most as large (the largest unit first, each once)"
            ));
        }
        last_unit = Some(idx);
        let n: u128 = num.parse().map_err(|_| format!("{num} is too large"))?;
        total = n
            .checked_mul(UNITS[idx].1)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| format!("{s:?} is too long"))?;
        rest = after.trim_start();
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| format!("{s:?} is too long"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

impl std::str::FromStr for Dur {
    type Err = String;
    /// [`parse_duration`], with an error that names the grammar.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s)
            .map(Dur)
            .map_err(|e| format!("{s:?} is not a duration: {e}; {DURATION_GRAMMAR}"))
    }
}

impl From<Duration> for Dur {
    fn from(d: Duration) -> Self {
        Dur(d)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration in double quotes, like \"5s\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dur, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_grammar_reads_its_examples() {
        let ms = |s: &str| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("5s"), Ok(5_000));
        assert_eq!(ms("90s"), Ok(90_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("1m 30s"), Ok(90_000));
        assert_eq!(ms(" 1h "), Ok(3_600_000));
        assert_eq!(ms("1d"), Ok(86_400_000));
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms("0s"), Ok(0));
        assert_eq!(parse_duration("1ms 500us"), Ok(Duration::from_micros(1500)));
    }

    #[test]
    fn the_grammar_refuses_what_it_does_not_say() {
        for (bad, why) in [
            ("", "is empty"),
            ("five", "expected a number"),
            ("10", "10 has no unit"),
            ("1.5s", "fraction"),
            ("5 seconds", "unknown unit \"seconds\""),
            ("2min", "unknown unit \"min\""),
            ("30s1m", "largest unit first"),
            ("1s1s", "largest unit first"),
            ("-5s", "expected a number"),
            ("99999999999999999999999d", "too"),
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let e = "2min".parse::<Dur>().unwrap_err();
        assert!(e.ends_with(DURATION_GRAMMAR), "{e}");
    }

    proptest! {
        /// A `Dur` is persisted and sent as its Display: it must always parse back.
        #[test]
        fn display_parses_back(nanos in 0u64..u64::MAX) {
            let d = Dur(Duration::from_nanos(nanos));
            prop_assert_eq!(d.to_string().parse::<Dur>(), Ok(d));
        }
    }

    #[test]
    fn display_is_short() {
        assert_eq!(Dur::from_secs(90).to_string(), "1m 30s");
        assert_eq!(Dur::from_millis(500).to_string(), "500ms");
        assert_eq!(Dur::from_secs(3600).to_string(), "1h");
        assert_eq!(Dur::default().to_string(), "0s");
    }
}
