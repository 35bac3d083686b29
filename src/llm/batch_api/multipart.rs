//! A `multipart/form-data` body for one file upload (OpenAI `POST /files`), built by hand:
//! the form is two fields, not worth a dependency.

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;

use super::LlmError;

/// Fixed boundaries, tried in turn; one that occurs in the payload cannot delimit it.
const BOUNDARIES: [&str; 3] = [
    "reasonq-7f3a1c9e5b2d4068a1e3",
    "reasonq-c41d8e2a9f6b3750d2c8",
    "reasonq-0b9e6f4d2a8c1e3579f0",
];

/// The body and its content type: the text fields, then the file.
pub(super) fn form(
    fields: &[(&str, &str)],
    file_field: &str,
    filename: &str,
    file_type: &str,
    file: &[u8],
) -> Result<(Bytes, HeaderValue), LlmError> {
    let boundary = BOUNDARIES
        .iter()
        .find(|b| {
            !file.windows(b.len()).any(|w| w == b.as_bytes())
                && !fields.iter().any(|(_, v)| v.contains(**b))
        })
        .ok_or_else(|| {
            LlmError::InvalidRequest("the upload holds every multipart boundary we use".into())
        })?;
    let safe = |s: &str| !s.bytes().any(|b| matches!(b, b'"' | b'\r' | b'\n' | b'\\'));
    if !safe(filename) || !safe(file_field) || fields.iter().any(|(n, _)| !safe(n)) {
        return Err(LlmError::InvalidRequest(format!(
            "multipart names must not hold quotes or line breaks: {filename:?}"
        )));
    }
    let mut out = BytesMut::with_capacity(file.len() + 512);
    for (name, value) in fields {
        out.put_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    out.put_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; filename=\"{filename}\"\r\nContent-Type: {file_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    out.put_slice(file);
    out.put_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = HeaderValue::try_from(format!("multipart/form-data; boundary={boundary}"))
        .map_err(|e| LlmError::InvalidRequest(e.to_string()))?;
    Ok((out.freeze(), content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_boundary_choice() {
        let (body, ct) = form(
            &[("purpose", "batch")],
            "file",
            "t1.jsonl",
            "application/jsonl",
            b"{}\n",
        )
        .unwrap();
        let b = BOUNDARIES[0];
        assert_eq!(
            ct.to_str().unwrap(),
            format!("multipart/form-data; boundary={b}")
        );
        let want = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t1.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{{}}\n\r\n--{b}--\r\n"
        );
        assert_eq!(std::str::from_utf8(&body).unwrap(), want);
        // A payload holding the first boundary gets the second.
        let (_, ct) = form(&[], "file", "x", "text/plain", BOUNDARIES[0].as_bytes()).unwrap();
        assert!(ct.to_str().unwrap().ends_with(BOUNDARIES[1]));
        let all = BOUNDARIES.concat();
        assert!(form(&[], "file", "x", "text/plain", all.as_bytes()).is_err());
        assert!(form(&[], "file", "a\"b", "text/plain", b"").is_err());
    }
}
