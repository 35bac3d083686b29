//! What every page is made of: escaping (prompts and answers are untrusted text), URL
//! parts, the page frame, and how times, money and counts read.

use std::fmt::{self, Display, Write};
use std::time::Duration;

use crate::cost::Money;

/// `text` escaped for HTML text and quoted attribute values.
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// Shorthand for [`Esc`].
pub fn esc(text: &str) -> Esc<'_> {
    Esc(text)
}

/// `text` percent-encoded for a path segment or a query value (everything but RFC 3986's
/// unreserved characters).
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The link to a batch's lines page.
pub fn batch_href(batch: &str) -> String {
    format!("/view/batches/{}", url(batch))
}

/// What a page's frame needs to know.
pub struct Frame<'a> {
    pub title: &'a str,
    /// `batches` or `memory`: the tab shown as current.
    pub tab: &'a str,
    /// The JSON endpoint the script polls to refresh the page, if it is live.
    pub live: Option<&'a str>,
    /// Actions need the service key (the script asks for it).
    pub key_required: bool,
    /// `reasonq view`: read-only.
    pub read_only: bool,
}

/// A whole page: the frame around `body`. The script and style sheet are this server's own
/// (`/static/`), the only ones the Content-Security-Policy lets run.
pub fn page(frame: &Frame<'_>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · reasonq</title><link rel=\"stylesheet\" href=\"/static/view.css\">\
         <script src=\"/static/view.js\" defer></script></head>\
         <body data-key=\"{}\"{}><header><a class=\"brand\" href=\"/\">reasonq</a>\
         <nav><a href=\"/\"{}>Batches</a><a href=\"/view/memory\"{}>Memory</a></nav>{}</header>\
         <main>",
        esc(frame.title),
        if frame.key_required {
            "required"
        } else {
            "none"
        },
        frame
            .live
            .map(|l| format!(" data-live=\"{}\"", esc(l)))
            .unwrap_or_default(),
        current(frame.tab == "batches"),
        current(frame.tab == "memory"),
        if frame.read_only {
            "<span class=\"mode\">read-only</span>"
        } else {
            ""
        },
    );
    out.push_str(body);
    out.push_str("</main></body></html>\n");
    out
}

fn current(yes: bool) -> &'static str {
    if yes {
        " aria-current=\"page\""
    } else {
        ""
    }
}

/// A time in ms since the epoch in GMT, as an HTTP date without its weekday
/// (`02 Dec 2026 15:01:06`); `-` for none.
pub fn when(ms: Option<u64>) -> String {
    let Some(ms) = ms.filter(|&ms| ms > 0) else {
        return "-".into();
    };
    let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(ms));
    // "Wed, 02 Dec 2026 15:01:06 GMT": a fixed layout.
    match date.get(5..date.len().saturating_sub(4)) {
        Some(short) => short.to_string(),
        None => date,
    }
}

/// Money, `-` when unknown.
pub fn money(m: Option<Money>) -> String {
    m.map_or_else(|| "-".into(), |m| m.to_string())
}

/// A count with thousands separators.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds as `850 ms` or `2.4 s`.
pub fn millis(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_in_text_and_attributes() {
        assert_eq!(
            esc("<script>alert(\"x\" & 'y')</script>").to_string(),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(esc("plain é").to_string(), "plain é");
    }

    #[test]
    fn url_parts_keep_only_unreserved_characters() {
        assert_eq!(url("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(url("q-1a2b_3.x~"), "q-1a2b_3.x~");
    }

    #[test]
    fn times_counts_and_durations_read_well() {
        assert_eq!(when(Some(0)), "-");
        assert_eq!(when(Some(1_700_000_000_000)), "14 Nov 2023 22:13:20");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(millis(Some(850)), "850 ms");
        assert_eq!(millis(Some(2_400)), "2.4 s");
    }
}
