//! The one place where stored values are turned into bytes and back.
//!
//! A record is `[1][bincode payload]` while its type is at layout 1, and
//! `[2][layout][bincode payload]` once its fields have changed ([`Record::LAYOUT`] > 1), so
//! every stored record says which layout of its type it is: a build that changes a type's
//! fields bumps its layout and reads the older ones in [`Record::upgrade`], instead of
//! finding a file full of undecodable jobs after an upgrade. Types still at layout 1 write
//! version 1 exactly as before, so older builds keep reading what this one writes.
//! Decoding is bounded by [`MAX_RECORD_BYTES`]: bincode trusts length prefixes, and without a
//! limit a forged prefix would make it try to allocate gigabytes and abort the process.

use serde::{de::DeserializeOwned, Serialize};

/// Format version of a record at layout 1 (no layout byte).
pub const FORMAT_V1: u8 = 1;
/// Format version of a record with a layout byte.
pub const FORMAT_V2: u8 = 2;

/// Largest record the codec will decode (and encode). Prompts, answers and cached bodies are
/// far smaller; anything larger is garbage or an attack.
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_RECORD_BYTES>()
}

/// A type stored in the database (bincode is positional: its fields are its layout).
pub trait Record: Serialize + DeserializeOwned {
    /// The layout written now. Bump it when the fields change, and read the older layouts in
    /// [`Record::upgrade`].
    const LAYOUT: u8 = 1;

    /// Reads a record of an older `layout` (its bincode payload).
    fn upgrade(layout: u8, _payload: &[u8]) -> Result<Self, CodecError> {
        Err(CodecError::UnknownLayout {
            found: layout,
            current: Self::LAYOUT,
        })
    }
}

/// Why a record could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error(
        "unknown record format version {0} (this build reads versions {FORMAT_V1} and {FORMAT_V2})"
    )]
    UnknownVersion(u8),
    #[error("record layout {found} is newer than this build's {current}; upgrade reasonq")]
    NewerLayout { found: u8, current: u8 },
    #[error("record layout {found} cannot be read (this build writes layout {current})")]
    UnknownLayout { found: u8, current: u8 },
    #[error("record is corrupt: {0}")]
    Corrupt(String),
    #[error("record has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("cannot encode record: {0}")]
    Encode(String),
}

/// Encodes a record with its type's current layout.
pub fn encode<T: Record>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = match T::LAYOUT {
        1 => vec![FORMAT_V1],
        layout => vec![FORMAT_V2, layout],
    };
    let header = out.len();
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    // bincode only enforces the limit when decoding; never store what could not be read back.
    if out.len() - header > MAX_RECORD_BYTES {
        return Err(CodecError::Encode(format!(
            "record is {} bytes, more than the {MAX_RECORD_BYTES} byte limit",
            out.len() - header
        )));
    }
    Ok(out)
}

/// Decodes a record of the current or an older layout, rejecting unknown versions, newer
/// layouts, garbage and trailing bytes. Never panics.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    let (layout, payload) = match version {
        FORMAT_V1 => (1, rest),
        FORMAT_V2 => {
            let (&layout, payload) = rest.split_first().ok_or(CodecError::Empty)?;
            (layout, payload)
        }
        other => return Err(CodecError::UnknownVersion(other)),
    };
    if layout > T::LAYOUT {
        return Err(CodecError::NewerLayout {
            found: layout,
            current: T::LAYOUT,
        });
    }
    if layout < T::LAYOUT {
        return T::upgrade(layout, payload);
    }
    payload_of(payload)
}

/// The bincode payload of one layout, whole. For [`Record::upgrade`] implementations, which
/// decode an older layout's struct and convert it.
pub fn payload_of<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| CodecError::Corrupt(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::TrailingBytes(payload.len() - used));
    }
    Ok(value)
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

    impl Record for Sample {}

    /// `Sample` after a field was added: layout 2, reading layout 1 records.
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct SampleV2 {
        id: u64,
        text: String,
        tags: Vec<String>,
        score: u32,
    }

    impl Record for SampleV2 {
        const LAYOUT: u8 = 2;
        fn upgrade(layout: u8, payload: &[u8]) -> Result<Self, CodecError> {
            match layout {
                1 => {
                    let old: Sample = payload_of(payload)?;
                    Ok(SampleV2 {
                        id: old.id,
                        text: old.text,
                        tags: old.tags,
                        score: 0,
                    })
                }
                _ => Err(CodecError::UnknownLayout {
                    found: layout,
                    current: 2,
                }),
            }
        }
    }

    #[test]
    fn a_record_of_an_older_layout_is_read_and_a_newer_one_refused() {
        let old = encode(&Sample {
            id: 3,
            text: "t".into(),
            tags: vec![],
        })
        .unwrap();
        assert_eq!(old[0], FORMAT_V1, "layout 1 writes what older builds read");
        let up: SampleV2 = decode(&old).unwrap();
        assert_eq!((up.id, up.score), (3, 0));
        let new = encode(&up).unwrap();
        assert_eq!(&new[..2], &[FORMAT_V2, 2]);
        assert_eq!(decode::<SampleV2>(&new).unwrap(), up);
        assert_eq!(
            decode::<Sample>(&new),
            Err(CodecError::NewerLayout {
                found: 2,
                current: 1
            })
        );
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
