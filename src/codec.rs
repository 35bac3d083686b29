//! The one place where stored values are turned into bytes and back.
//!
//! Every value is `[format version][bincode (serde) payload]`. The version byte lets a later
//! format (postcard, wincode, ...) be introduced as version 2 while old records still decode.
//! Decoding is bounded by [`MAX_RECORD_BYTES`]: bincode trusts length prefixes, and without a
//! limit a forged prefix would make it try to allocate gigabytes and abort the process.

use serde::{de::DeserializeOwned, Serialize};

/// Format version written in front of every record.
pub const FORMAT_V1: u8 = 1;

/// Largest record the codec will decode (and encode). Prompts, answers and cached bodies are
/// far smaller; anything larger is garbage or an attack.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
}

/// Why a record could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("unknown record format version {0} (this build reads version {FORMAT_V1})")]
    UnknownVersion(u8),
    #[error("record is corrupt: {0}")]
    Corrupt(String),
    #[error("record has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("cannot encode record: {0}")]
    Encode(String),
}

/// Encodes a value with the current format version.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    // bincode only enforces the limit when decoding; never store what could not be read back.
    if out.len() - 1 > MAX_RECORD_BYTES {
        return Err(CodecError::Encode(format!(
            "record is {} bytes, more than the {MAX_RECORD_BYTES} byte limit",
            out.len() - 1
        )));
    }
    Ok(out)
}

/// Decodes a value, rejecting unknown versions, garbage and trailing bytes. Never panics.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, payload) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        FORMAT_V1 => {
            let (value, used) = bincode::serde::decode_from_slice(payload, config())
                .map_err(|e| CodecError::Corrupt(e.to_string()))?;
            if used != payload.len() {
                return Err(CodecError::TrailingBytes(payload.len() - used));
            }
            Ok(value)
        }
        other => Err(CodecError::UnknownVersion(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Sample {
        id: u64,
        text: String,
        tags: Vec<String>,
    }

    #[test]
    fn round_trip_keeps_the_value() {
        let v = Sample {
            id: 7,
            text: "héllo".into(),
            tags: vec!["a".into()],
        };
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<Sample>(&bytes).unwrap(), v);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode::<Sample>(&[]), Err(CodecError::Empty));
        assert_eq!(
            decode::<Sample>(&[9, 1, 2]),
            Err(CodecError::UnknownVersion(9))
        );
        // A forged huge length prefix for `text` must be refused by the limit, not allocated.
        let forged = [
            FORMAT_V1, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        assert!(matches!(
            decode::<Sample>(&forged),
            Err(CodecError::Corrupt(_))
        ));
        let mut bytes = encode(&Sample {
            id: 1,
            text: String::new(),
            tags: vec![],
        })
        .unwrap();
        bytes.push(0);
        assert_eq!(decode::<Sample>(&bytes), Err(CodecError::TrailingBytes(1)));
    }
}
