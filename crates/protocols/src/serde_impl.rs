//! serde helpers used by the generated messages (see `build.rs`).
//!
//! The JSON shape is: proto field names as keys, nested messages as objects
//! (or `null` when unset), enums as integers (their names are accepted too),
//! bytes as arrays of numbers, and 64-bit integers as numbers (strings holding
//! a number are accepted too, as the canonical proto3 JSON mapping writes them).

use std::fmt;
use std::marker::PhantomData;

use protobuf::{Enum, EnumOrUnknown, Message, MessageField};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// `MessageField<T>`: the message as an object, or `null` when unset.
pub mod message_field {
    use super::*;

    /// Serializes a message field as its object, or `null` when unset.
    pub fn serialize<T, S>(field: &MessageField<T>, serializer: S) -> Result<S::Ok, S::Error>
    where
        T: Message + Serialize,
        S: Serializer,
    {
        field.as_ref().serialize(serializer)
    }

    /// Deserializes an object (or `null`) into a message field.
    pub fn deserialize<'de, T, D>(deserializer: D) -> Result<MessageField<T>, D::Error>
    where
        T: Message + Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Option::<T>::deserialize(deserializer).map(MessageField::from_option)
    }
}

/// An enum value as JSON: its number, or its name when deserializing.
struct EnumValue<E: Enum>(EnumOrUnknown<E>);

impl<'de, E: Enum> Deserialize<'de> for EnumValue<E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnumVisitor<E>(PhantomData<E>);

        impl<E: Enum> Visitor<'_> for EnumVisitor<E> {
            type Value = EnumValue<E>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an enum number or name of {}", E::NAME)
            }

            fn visit_i64<Er: de::Error>(self, v: i64) -> Result<Self::Value, Er> {
                let v = i32::try_from(v)
                    .map_err(|_| Er::custom(format!("enum number {v} is out of range")))?;
                Ok(EnumValue(EnumOrUnknown::from_i32(v)))
            }

            fn visit_u64<Er: de::Error>(self, v: u64) -> Result<Self::Value, Er> {
                let v = i32::try_from(v)
                    .map_err(|_| Er::custom(format!("enum number {v} is out of range")))?;
                Ok(EnumValue(EnumOrUnknown::from_i32(v)))
            }

            fn visit_str<Er: de::Error>(self, v: &str) -> Result<Self::Value, Er> {
                E::from_str(v)
                    .map(|e| EnumValue(EnumOrUnknown::new(e)))
                    .ok_or_else(|| Er::custom(format!("unknown value {v:?} of enum {}", E::NAME)))
            }
        }

        deserializer.deserialize_any(EnumVisitor(PhantomData))
    }
}

/// `EnumOrUnknown<E>`: the enum number.
pub mod enum_field {
    use super::*;

    /// Serializes the enum as its number.
    pub fn serialize<E: Enum, S: Serializer>(
        value: &EnumOrUnknown<E>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32(value.value())
    }

    /// Accepts the enum number or the name of one of its values.
    pub fn deserialize<'de, E: Enum, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<EnumOrUnknown<E>, D::Error> {
        EnumValue::<E>::deserialize(deserializer).map(|v| v.0)
    }
}

/// `Option<EnumOrUnknown<E>>` (proto3 `optional` enums): the number or `null`.
pub mod optional_enum_field {
    use super::*;

    /// Serializes the enum as its number, or `null` when unset.
    pub fn serialize<E: Enum, S: Serializer>(
        value: &Option<EnumOrUnknown<E>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.map(|v| v.value()).serialize(serializer)
    }

    /// Accepts `null`, an enum number or a value name.
    pub fn deserialize<'de, E: Enum, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<EnumOrUnknown<E>>, D::Error> {
        Option::<EnumValue<E>>::deserialize(deserializer).map(|v| v.map(|v| v.0))
    }
}

/// `Vec<EnumOrUnknown<E>>`: an array of enum numbers.
pub mod repeated_enum_field {
    use super::*;

    /// Serializes the enums as an array of numbers.
    pub fn serialize<E: Enum, S: Serializer>(
        values: &[EnumOrUnknown<E>],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(values.len()))?;
        for v in values {
            seq.serialize_element(&v.value())?;
        }
        seq.end()
    }

    /// Accepts an array of enum numbers or value names.
    pub fn deserialize<'de, E: Enum, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<EnumOrUnknown<E>>, D::Error> {
        Vec::<EnumValue<E>>::deserialize(deserializer).map(|v| v.into_iter().map(|v| v.0).collect())
    }
}

/// A 64-bit integer type of the generated code (`u64` or `i64`).
pub trait Int64: Copy + Serialize + Sized {
    /// Converts a JSON number or parsed string, failing when out of range.
    fn from_i128(v: i128) -> Option<Self>;
}

impl Int64 for u64 {
    fn from_i128(v: i128) -> Option<Self> {
        u64::try_from(v).ok()
    }
}

impl Int64 for i64 {
    fn from_i128(v: i128) -> Option<Self> {
        i64::try_from(v).ok()
    }
}

/// A 64-bit integer read from a JSON number or a string holding one.
struct Lenient<T>(T);

impl<'de, T: Int64> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor<T>(PhantomData<T>);

        impl<T: Int64> IntVisitor<T> {
            fn convert<E: de::Error>(v: i128) -> Result<Lenient<T>, E> {
                T::from_i128(v)
                    .map(Lenient)
                    .ok_or_else(|| E::custom(format!("integer {v} is out of range")))
            }
        }

        impl<T: Int64> Visitor<'_> for IntVisitor<T> {
            type Value = Lenient<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer, or a string holding one")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Self::convert(v.into())
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Self::convert(v.into())
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let n: i128 = v
                    .trim()
                    .parse()
                    .map_err(|_| E::custom(format!("{v:?} is not an integer")))?;
                Self::convert(n)
            }
        }

        deserializer.deserialize_any(IntVisitor(PhantomData))
    }
}

/// `u64`/`i64`: written as a number, read from a number or a string.
pub mod int64 {
    use super::*;

    /// Serializes the integer as a JSON number.
    pub fn serialize<T: Int64, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    /// Accepts a number or a string holding one.
    pub fn deserialize<'de, T: Int64, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<T, D::Error> {
        Lenient::<T>::deserialize(deserializer).map(|v| v.0)
    }
}

/// `Option<u64>`/`Option<i64>` (proto3 `optional`): a number or `null`.
pub mod optional_int64 {
    use super::*;

    /// Serializes the integer as a number, or `null` when unset.
    pub fn serialize<T: Int64, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    /// Accepts `null`, a number or a string holding one.
    pub fn deserialize<'de, T: Int64, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<Lenient<T>>::deserialize(deserializer).map(|v| v.map(|v| v.0))
    }
}

/// `Vec<u64>`/`Vec<i64>`: an array of numbers (strings accepted).
pub mod repeated_int64 {
    use super::*;

    /// Serializes the integers as an array of numbers.
    pub fn serialize<T: Int64, S: Serializer>(
        values: &[T],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        values.serialize(serializer)
    }

    /// Accepts an array of numbers or strings holding numbers.
    pub fn deserialize<'de, T: Int64, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<T>, D::Error> {
        struct SeqVisitor<T>(PhantomData<T>);

        impl<'de, T: Int64> Visitor<'de> for SeqVisitor<T> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of integers")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(Lenient(v)) = seq.next_element::<Lenient<T>>()? {
                    out.push(v);
                }
                Ok(out)
            }
        }

        deserializer.deserialize_seq(SeqVisitor(PhantomData))
    }
}
