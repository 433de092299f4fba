//! Scalar formats shared by every config source: durations (`250ms`, `2s`,
//! `1m`, `1h`) and socket addresses (`IP:PORT`), with messages that say what
//! a valid value looks like.

use std::net::SocketAddr;
use std::time::Duration;

/// Parses `250ms`, `2s`, `1m`, `1h` (a whole number and a unit; `0` alone is allowed).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: expected a whole number and a unit (ms, s, m or h), such as 250ms, 2s or 1m"
        )
    };
    let text_trimmed = text.trim();
    if text_trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let digits = text_trimmed.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let (number, unit) = text_trimmed.split_at(digits);
    if unit.is_empty() {
        return Err(format!(
            "invalid duration {text:?}: a unit is required, such as {number}s or {number}ms"
        ));
    }
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {text:?}: too large"))
}

/// Writes a duration in the largest unit that represents it exactly.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// The schema of a duration field (`#[schemars(with = "scalar::DurationText")]`):
/// a string that [`parse_duration`] reads, with a pattern the Kubernetes
/// API server checks before the control plane sees the object.
pub struct DurationText;

/// What [`DurationText`] matches: `0`, or a whole number and a unit.
pub const DURATION_PATTERN: &str = "^(0|[0-9]+(ms|s|m|h))$";

impl schemars::JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A whole number and a unit (ms, s, m or h), such as 250ms, 2s or 1m.",
        })
    }
}

/// `#[serde(default = "scalar::default_true")]`
pub fn default_true() -> bool {
    true
}

/// `#[serde(skip_serializing_if = "scalar::is_default")]`
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Parses `IP:PORT` (IPv6 in brackets). Host names are refused with a hint.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("invalid address {text:?}: expected IP:PORT such as 127.0.0.1:8080 or [::1]:8080 (host names are not resolved here)")
    })
}

/// Deserializes a value written either as a string (`parse`) or as a map of
/// fields (`F`, then `from_fields`), as endpoints and DNS targets are.
pub fn string_or_map<'de, D, T, F>(
    d: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
    from_fields: impl FnOnce(F) -> T,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    F: serde::Deserialize<'de>,
{
    use serde::de::{self, MapAccess, Visitor};
    use std::marker::PhantomData;

    struct Either<P, M, F> {
        expecting: &'static str,
        parse: P,
        from_fields: M,
        fields: PhantomData<F>,
    }

    impl<'de, T, F, P, M> Visitor<'de> for Either<P, M, F>
    where
        F: serde::Deserialize<'de>,
        P: FnOnce(&str) -> Result<T, String>,
        M: FnOnce(F) -> T,
    {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.parse)(v).map_err(E::custom)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let fields = F::deserialize(de::value::MapAccessDeserializer::new(map))?;
            Ok((self.from_fields)(fields))
        }
    }

    d.deserialize_any(Either {
        expecting,
        parse,
        from_fields,
        fields: PhantomData,
    })
}

/// `#[serde(with = "scalar::duration")]`
pub mod duration {
    use super::*;
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(Visitor)
    }

    pub(super) struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as 250ms, 2s or 1m")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            if v == 0 {
                Ok(Duration::ZERO)
            } else {
                Err(E::custom(format!(
                    "invalid duration \"{v}\": a unit is required, such as {v}s or {v}ms"
                )))
            }
        }
    }

    /// `#[serde(default, with = "scalar::duration::option")]`
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(d) => s.serialize_str(&format_duration(*d)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            d.deserialize_str(Visitor).map(Some)
        }
    }
}

/// `#[serde(with = "scalar::socket_addr")]`
pub mod socket_addr {
    use super::*;
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(value: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        d.deserialize_str(Visitor)
    }

    struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = SocketAddr;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an address such as 127.0.0.1:8080")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
            parse_socket_addr(v).map_err(E::custom)
        }
    }

    /// `#[serde(default, with = "scalar::socket_addr::option")]`
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            value: &Option<SocketAddr>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(address) => s.collect_str(address),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SocketAddr>, D::Error> {
            d.deserialize_str(Visitor).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_say_what_is_expected() {
        assert!(
            parse_duration("2")
                .unwrap_err()
                .contains("a unit is required, such as 2s or 2ms")
        );
        for bad in ["", "s", "2 s", "1.5s", "-1s", "2d", "ms"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains("expected a whole number and a unit"),
                "{bad:?}: {err}"
            );
        }
        assert!(
            parse_duration("99999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations_round_trip_through_their_text_form() {
        for text in ["250ms", "2s", "1m", "1h", "1500ms", "90s", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn addresses_refuse_host_names_with_a_hint() {
        assert_eq!(parse_socket_addr("[::1]:80").unwrap().port(), 80);
        let err = parse_socket_addr("localhost:80").unwrap_err();
        assert!(err.contains("host names are not resolved"), "{err}");
    }
}
