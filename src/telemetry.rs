//! Logging set-up: JSON lines by default, pretty for a terminal, filter from config or
//! `RUST_LOG`. Phone numbers are masked in every line, whoever logged it: fields use
//! [`mask_phone`], and the writer scrubs any phone-like digit run that slipped through.

use std::io::{self, Write};

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(|| MaskingWriter(io::stderr()));
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.with_ansi(false).try_init(),
    };
}

/// `4915112345678` → `49*******5678`: the country-code prefix and the last 4 digits stay.
pub fn mask_phone(phone: &str) -> String {
    let digits = phone.chars().filter(char::is_ascii_digit).count();
    if digits <= 6 {
        return "*".repeat(phone.len());
    }
    let mut seen = 0;
    phone
        .chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen <= 2 || seen > digits - 4 {
                    c
                } else {
                    '*'
                }
            } else {
                c
            }
        })
        .collect()
}

/// Masks every standalone run of 11 to 15 digits (E.164 numbers with their country code;
/// Unix timestamps have 10) in a log line.
pub fn scrub(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_digit() && (i == 0 || !line[i - 1].is_ascii_alphanumeric()) {
            let start = i;
            while i < line.len() && line[i].is_ascii_digit() {
                i += 1;
            }
            let run = &line[start..i];
            let bounded = i == line.len() || !line[i].is_ascii_alphanumeric();
            if bounded && (11..=15).contains(&run.len()) {
                let n = run.len();
                out.extend(
                    run.iter()
                        .enumerate()
                        .map(|(k, d)| if k < 2 || k >= n - 4 { *d } else { b'*' }),
                );
            } else {
                out.extend_from_slice(run);
            }
        } else {
            out.push(line[i]);
            i += 1;
        }
    }
    out
}

/// Scrubs each formatted event (one `write_all` per event) before it reaches stderr.
pub struct MaskingWriter<W: Write>(pub W);

impl<W: Write> Write for MaskingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&scrub(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_keep_prefix_and_last_four() {
        assert_eq!(mask_phone("4915112345678"), "49*******5678");
        assert_eq!(mask_phone("+1 650 555 1234"), "+1 6** *** 1234");
        assert_eq!(mask_phone("12345"), "*****");
        let line = br#"{"msg":"from 4915112345678 at 1767225600","wamid":"wamid.HBgNNDkxNTExMjM0NTY3OBUC","id":"a16505551234"}"#;
        let scrubbed = String::from_utf8(scrub(line)).unwrap();
        assert!(
            scrubbed.contains("from 49*******5678 at 1767225600"),
            "{scrubbed}"
        );
        assert!(scrubbed.contains("wamid.HBgNNDkxNTExMjM0NTY3OBUC"));
        assert!(
            scrubbed.contains("a16505551234"),
            "inside a word: left alone"
        );
    }
}
