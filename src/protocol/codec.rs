//! Header values: standard base64 with padding of UTF-8 JSON (URL-safe base64 is rejected, as the
//! reference decoders do).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderDecodeError {
    #[error("header is not valid standard base64: {0}")]
    Base64(String),
    #[error("header does not decode to UTF-8 JSON of the expected shape: {0}")]
    Json(String),
}

/// Encodes a value as a header: base64(JSON).
pub fn encode_header<T: Serialize>(value: &T) -> String {
    // Serialising our own wire types cannot fail: they hold no maps with non-string keys.
    let json = serde_json::to_vec(value).unwrap_or_default();
    STANDARD.encode(json)
}

/// Decodes a header value into `T`.
pub fn decode_header<T: DeserializeOwned>(value: &str) -> Result<T, HeaderDecodeError> {
    let bytes = decode_header_bytes(value)?;
    serde_json::from_slice(&bytes).map_err(|e| HeaderDecodeError::Json(e.to_string()))
}

/// Decodes a header value to the JSON bytes it carries.
pub fn decode_header_bytes(value: &str) -> Result<Vec<u8>, HeaderDecodeError> {
    STANDARD
        .decode(value.trim().as_bytes())
        .map_err(|e| HeaderDecodeError::Base64(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn url_safe_alphabet_is_rejected() {
        // "?>?" encodes to "Pz4/" in standard and "Pz4_" in URL-safe base64.
        assert!(decode_header_bytes("Pz4_").is_err());
        assert_eq!(decode_header_bytes("Pz4/").unwrap(), b"?>?");
    }

    proptest! {
        #[test]
        fn json_round_trips(v in proptest::collection::btree_map("[a-zA-Z0-9]{1,8}", any::<i64>(), 0..8)) {
            let encoded = encode_header(&v);
            let back: std::collections::BTreeMap<String, i64> = decode_header(&encoded).unwrap();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,256}") {
            let _ = decode_header::<serde_json::Value>(&s);
        }
    }
}
