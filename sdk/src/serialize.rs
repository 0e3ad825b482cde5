//! Pluggable value serialization for [`Store`](crate::Store)s.
//!
//! A [`Serializer`] turns values into the bytes a connector stores and back.
//! It is itself serializable because it travels inside every proxy (as part
//! of the [`StoreConfig`](crate::StoreConfig)), so the consumer decodes with
//! the same format the producer used.

use std::any::{Any, TypeId};
use std::fmt::Debug;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Encodes values to bytes and back. A serializer is itself serializable (it
/// travels inside proxies, so the consumer decodes the way the producer encoded).
///
/// ```
/// use proxymesh::{Bincode, Serializer};
/// let bytes = Bincode.encode(&(1u32, "two")).unwrap();
/// let back: (u32, String) = Bincode.decode(bytes).unwrap();
/// assert_eq!(back, (1, "two".to_string()));
/// ```
pub trait Serializer: Clone + Send + Sync + Serialize + DeserializeOwned + Debug + 'static {
    /// Encode `value`.
    fn encode<T: Serialize + 'static>(&self, value: &T) -> Result<Bytes>;
    /// Decode a value of type `T` from `data`.
    fn decode<T: DeserializeOwned + 'static>(&self, data: Bytes) -> Result<T>;
}

/// The raw bytes of `value` if it is a `Vec<u8>` or [`Bytes`].
pub fn raw_bytes<T: 'static>(value: &T) -> Option<Bytes> {
    let any = value as &dyn Any;
    if let Some(b) = any.downcast_ref::<Bytes>() {
        Some(b.clone())
    } else {
        any.downcast_ref::<Vec<u8>>()
            .map(|v| Bytes::copy_from_slice(v))
    }
}

/// `data` as a `T`, if `T` is `Vec<u8>` or [`Bytes`] (without copying when
/// possible); otherwise `data` is handed back.
pub fn from_raw_bytes<T: 'static>(data: Bytes) -> std::result::Result<T, Bytes> {
    let id = TypeId::of::<T>();
    let boxed: Box<dyn Any> = if id == TypeId::of::<Bytes>() {
        Box::new(data)
    } else if id == TypeId::of::<Vec<u8>>() {
        Box::new(Vec::<u8>::from(data))
    } else {
        return Err(data);
    };
    Ok(*boxed.downcast::<T>().expect("type checked above"))
}

/// The default serializer: compact binary [bincode](https://docs.rs/bincode)
/// 2 (`config::standard()`, through serde).
///
/// Byte buffers pass through untouched: a `Vec<u8>` or [`Bytes`] value is
/// stored as exactly its bytes, so it can be read by anything (the CLI, other
/// languages) and costs no encoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bincode;

impl Serializer for Bincode {
    fn encode<T: Serialize + 'static>(&self, value: &T) -> Result<Bytes> {
        if let Some(raw) = raw_bytes(value) {
            return Ok(raw);
        }
        bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map(Bytes::from)
            .map_err(|e| {
                Error::Serialization(format!(
                    "bincode encoding of {}: {e}",
                    std::any::type_name::<T>()
                ))
            })
    }

    fn decode<T: DeserializeOwned + 'static>(&self, data: Bytes) -> Result<T> {
        let data = match from_raw_bytes::<T>(data) {
            Ok(v) => return Ok(v),
            Err(data) => data,
        };
        let (value, used) =
            bincode::serde::decode_from_slice::<T, _>(&data, bincode::config::standard()).map_err(
                |e| {
                    Error::Serialization(format!(
                        "bincode decoding as {}: {e}",
                        std::any::type_name::<T>()
                    ))
                },
            )?;
        if used != data.len() {
            return Err(Error::Serialization(format!(
                "bincode decoding as {}: {} trailing bytes (was the object stored as another type?)",
                std::any::type_name::<T>(),
                data.len() - used
            )));
        }
        Ok(value)
    }
}

/// JSON ([serde_json](https://docs.rs/serde_json)): slower and larger than
/// [`Bincode`], but readable by any tool. Every value, byte buffers included,
/// is stored as JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Json;

impl Serializer for Json {
    fn encode<T: Serialize + 'static>(&self, value: &T) -> Result<Bytes> {
        serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
            Error::Serialization(format!(
                "JSON encoding of {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }

    fn decode<T: DeserializeOwned + 'static>(&self, data: Bytes) -> Result<T> {
        serde_json::from_slice(&data).map_err(|e| {
            Error::Serialization(format!(
                "JSON decoding as {}: {e}",
                std::any::type_name::<T>()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn roundtrip<S: Serializer>(s: S) {
        let v: BTreeMap<String, Vec<u32>> = [("a".into(), vec![1, 2]), ("b".into(), vec![])].into();
        let b = Serializer::encode(&s, &v).unwrap();
        assert_eq!(
            Serializer::decode::<BTreeMap<String, Vec<u32>>>(&s, b).unwrap(),
            v
        );
        assert!(Serializer::decode::<u64>(&s, Bytes::from_static(b"\xff\xff")).is_err());
    }

    #[test]
    fn bincode_and_json_roundtrip() {
        roundtrip(Bincode);
        roundtrip(Json);
    }

    #[test]
    fn bincode_passes_bytes_through() {
        let v = vec![1u8, 2, 3];
        assert_eq!(
            Serializer::encode(&Bincode, &v).unwrap(),
            Bytes::from(v.clone())
        );
        assert_eq!(
            Serializer::decode::<Vec<u8>>(&Bincode, Bytes::from(v.clone())).unwrap(),
            v
        );
        let b = Bytes::from_static(b"raw");
        assert_eq!(Serializer::encode(&Bincode, &b).unwrap(), b);
        assert_eq!(Serializer::decode::<Bytes>(&Bincode, b.clone()).unwrap(), b);
        // Other types are encoded.
        assert_ne!(
            Serializer::encode(&Bincode, &vec![1u16, 2]).unwrap().len(),
            2
        );
        // JSON encodes byte vectors as arrays.
        assert_eq!(
            Serializer::encode(&Json, &vec![1u8, 2]).unwrap(),
            Bytes::from_static(b"[1,2]")
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let b = Serializer::encode(&Bincode, &(1u32, 2u32)).unwrap();
        assert!(Serializer::decode::<u32>(&Bincode, b).is_err());
    }
}
