//! The JSON bodies of `mpu/{create,complete,abort}`, read into typed fields that can never hold
//! more than the body itself: a field of the wrong shape is kept as a short description (for the
//! error message), an unknown field or a part's `url` is skipped without being stored, and the
//! part list stops being stored after `MAX_PARTS` entries. (A `serde_json::Value` of a 16 MiB
//! array of zeros took 600 MiB.)

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// S3's limit on parts per upload.
pub const MAX_PARTS: usize = 10_000;

/// One field's value: a scalar as sent, or a note of what else was there.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Scalar {
    #[default]
    Absent,
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    /// Any other value, as short JSON text (`[...]` and `{...}` for containers).
    Other(String),
}

impl Scalar {
    /// The value as JSON text, for error messages.
    pub fn json(&self) -> String {
        match self {
            Scalar::Absent | Scalar::Null => "null".to_owned(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(n) => n.to_string(),
            Scalar::Str(s) => serde_json::to_string(s).unwrap_or_default(),
            Scalar::Other(text) => text.clone(),
        }
    }
}

/// `parts` of a complete.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Parts {
    #[default]
    Absent,
    List(Vec<Part>),
    /// More than `MAX_PARTS` entries (the rest was skipped).
    TooMany,
    /// Not a list.
    Invalid(Scalar),
}

/// One entry of `parts`: its number and ETag (its `url` is not needed and not kept).
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Fields {
        part_number: Scalar,
        etag: Scalar,
    },
    /// Not an object.
    Invalid(Scalar),
}

impl Part {
    /// The entry as JSON text, for error messages.
    pub fn json(&self) -> String {
        match self {
            Part::Fields { part_number, etag } => format!(
                "{{\"part_number\": {}, \"etag\": {}}}",
                part_number.json(),
                etag.json()
            ),
            Part::Invalid(value) => value.json(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct MpuBody {
    #[serde(default)]
    pub path: Scalar,
    #[serde(default)]
    pub upload_id: Scalar,
    #[serde(default)]
    pub num_parts: Scalar,
    #[serde(default)]
    pub parts: Parts,
}

/// The body is not a JSON object.
#[derive(Debug, PartialEq, Eq)]
pub struct NotAnObject;

/// The body as MLflow's `_get_request_message` takes it: blank is an empty message, anything
/// but a JSON object is refused.
pub fn parse(bytes: &[u8]) -> Result<MpuBody, NotAnObject> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Ok(MpuBody::default()),
        // serde's derived struct would take a list of the fields too.
        Some(b'{') => serde_json::from_slice(bytes).map_err(|_| NotAnObject),
        Some(_) => Err(NotAnObject),
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(i64::try_from(v).map_or_else(|_| Scalar::Other(v.to_string()), Scalar::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other(
            serde_json::Number::from_f64(v).map_or_else(|| "null".to_owned(), |n| n.to_string()),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("[...]".to_owned()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("{...}".to_owned()))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The visitor methods of a value that is not the shape wanted: each kept as the scalar visitor
/// describes it, wrapped in `$invalid`.
macro_rules! otherwise_invalid {
    ($out:ty, $invalid:path) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<$out, E> {
            ScalarVisitor.visit_bool(v).map($invalid)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<$out, E> {
            ScalarVisitor.visit_i64(v).map($invalid)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<$out, E> {
            ScalarVisitor.visit_u64(v).map($invalid)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<$out, E> {
            ScalarVisitor.visit_f64(v).map($invalid)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<$out, E> {
            ScalarVisitor.visit_str(v).map($invalid)
        }
    };
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Part, D::Error> {
        struct PartVisitor;
        impl<'de> Visitor<'de> for PartVisitor {
            type Value = Part;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a part")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part, A::Error> {
                let (mut part_number, mut etag) = (Scalar::Absent, Scalar::Absent);
                while let Some(name) = map.next_key::<FieldName>()? {
                    match name {
                        FieldName::PartNumber => part_number = map.next_value()?,
                        FieldName::Etag => etag = map.next_value()?,
                        FieldName::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Part::Fields { part_number, etag })
            }
            // Anything else: kept as the scalar visitor describes it.
            fn visit_unit<E: de::Error>(self) -> Result<Part, E> {
                Ok(Part::Invalid(Scalar::Null))
            }
            otherwise_invalid!(Part, Part::Invalid);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Part, A::Error> {
                ScalarVisitor.visit_seq(seq).map(Part::Invalid)
            }
        }
        deserializer.deserialize_any(PartVisitor)
    }
}

/// The keys of a part that are kept; every other key's value is skipped.
enum FieldName {
    PartNumber,
    Etag,
    Other,
}

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FieldName, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = FieldName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<FieldName, E> {
                Ok(match v {
                    "part_number" => FieldName::PartNumber,
                    "etag" => FieldName::Etag,
                    _ => FieldName::Other,
                })
            }
        }
        deserializer.deserialize_identifier(NameVisitor)
    }
}

impl<'de> Deserialize<'de> for Parts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Parts, D::Error> {
        struct PartsVisitor;
        impl<'de> Visitor<'de> for PartsVisitor {
            type Value = Parts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of parts")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parts, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PARTS));
                while parts.len() < MAX_PARTS {
                    match seq.next_element::<Part>()? {
                        Some(part) => parts.push(part),
                        None => return Ok(Parts::List(parts)),
                    }
                }
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(Parts::List(parts));
                }
                drop(parts);
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Parts::TooMany)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Parts, E> {
                Ok(Parts::Absent)
            }
            otherwise_invalid!(Parts, Parts::Invalid);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Parts, A::Error> {
                ScalarVisitor.visit_map(map).map(Parts::Invalid)
            }
        }
        deserializer.deserialize_any(PartsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_as_sent_and_nothing_more() {
        let body = parse(
            br#"{"path": "/tmp/x.bin", "upload_id": "u", "unknown": [1, {"a": 2}],
                 "parts": [{"part_number": 1, "etag": "\"e\"", "url": "http://x/y?token=t"},
                           {"part_number": "2", "etag": 3}, 7, null]}"#,
        )
        .unwrap();
        assert_eq!(body.path, Scalar::Str("/tmp/x.bin".into()));
        assert_eq!(body.upload_id, Scalar::Str("u".into()));
        assert_eq!(body.num_parts, Scalar::Absent);
        let Parts::List(parts) = body.parts else {
            panic!("{:?}", body.parts)
        };
        assert_eq!(
            parts,
            vec![
                Part::Fields {
                    part_number: Scalar::Int(1),
                    etag: Scalar::Str("\"e\"".into())
                },
                Part::Fields {
                    part_number: Scalar::Str("2".into()),
                    etag: Scalar::Int(3)
                },
                Part::Invalid(Scalar::Int(7)),
                Part::Invalid(Scalar::Null),
            ]
        );
        assert_eq!(parts[2].json(), "7");
        assert_eq!(
            parse(br#"{"path": [1, 2], "num_parts": 1.5}"#)
                .unwrap()
                .path,
            Scalar::Other("[...]".into())
        );
        assert_eq!(parse(b"  ").unwrap(), MpuBody::default());
        assert!(parse(b"[1]").is_err());
        assert!(parse(b"{\"path\": ").is_err());
    }

    #[test]
    fn a_part_list_stops_at_the_limit() {
        let mut text = String::from("{\"parts\": [");
        for i in 0..=MAX_PARTS {
            text.push_str(if i == 0 { "0" } else { ",0" });
        }
        text.push_str("]}");
        assert_eq!(parse(text.as_bytes()).unwrap().parts, Parts::TooMany);
        let exactly = text.replacen("0,", "", 1);
        let Parts::List(parts) = parse(exactly.as_bytes()).unwrap().parts else {
            panic!("10,000 entries are allowed");
        };
        assert_eq!(parts.len(), MAX_PARTS);
    }
}
