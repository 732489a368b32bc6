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
/// Log lines a flood may not multiply: at most [`LogSampler::PER_SECOND`] lines per second and
/// key (a rejection reason, say); the rest are counted and the next line let through says how
/// many were left out. The metrics keep the exact counts; the log keeps its examples without
/// letting 10,000 bad requests a second write 10,000 lines.
#[derive(Default)]
pub struct LogSampler {
    windows: std::sync::Mutex<std::collections::HashMap<&'static str, (u64, u32, u64)>>,
}

impl LogSampler {
    pub const PER_SECOND: u32 = 10;

    /// `Some(lines left out before this one)` when a line for `key` may be written now.
    pub fn admit(&self, key: &'static str) -> Option<u64> {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.admit_at(key, second)
    }

    fn admit_at(&self, key: &'static str, second: u64) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (window, lines, skipped) = windows.entry(key).or_insert((second, 0, 0));
        if *window != second {
            *window = second;
            *lines = 0;
        }
        if *lines < Self::PER_SECOND {
            *lines += 1;
            Some(std::mem::take(skipped))
        } else {
            *skipped += 1;
            None
        }
    }
}

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
    fn a_flood_is_sampled_per_key_and_the_next_line_says_how_many_were_left_out() {
        let sampler = LogSampler::default();
        for _ in 0..LogSampler::PER_SECOND {
            assert_eq!(sampler.admit_at("bad_signature", 100), Some(0));
        }
        for _ in 0..990 {
            assert_eq!(sampler.admit_at("bad_signature", 100), None);
        }
        // Another reason has its own allowance.
        assert_eq!(sampler.admit_at("payload_not_json", 100), Some(0));
        assert_eq!(sampler.admit_at("bad_signature", 101), Some(990));
        assert_eq!(sampler.admit_at("bad_signature", 101), Some(0));
    }

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
