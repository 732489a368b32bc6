//! HMAC-SHA256 over the raw request body, compared in constant time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Why a signature header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed")]
    Malformed,
}

pub type Digest32 = [u8; 32];

/// Meta's `X-Hub-Signature-256: sha256=<64 hex digits, either case>`.
pub fn parse_meta_header(value: Option<&[u8]>) -> Result<Digest32, SignatureError> {
    let value = value.ok_or(SignatureError::Missing)?;
    let hex = value
        .strip_prefix(b"sha256=")
        .ok_or(SignatureError::Malformed)?;
    decode_hex32(hex)
}

/// Kapso's `X-Webhook-Signature`: bare hex, no prefix, no whitespace.
pub fn parse_kapso_header(value: Option<&[u8]>) -> Result<Digest32, SignatureError> {
    decode_hex32(value.ok_or(SignatureError::Missing)?)
}

fn decode_hex32(hex: &[u8]) -> Result<Digest32, SignatureError> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    hex::decode_to_slice(hex, &mut out).map_err(|_| SignatureError::Malformed)?;
    Ok(out)
}

/// True when `expected` is HMAC-SHA256(secret, body); constant time in the digest.
pub fn verify(secret: &[u8], body: &[u8], expected: &Digest32) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(expected).is_ok()
}

/// Lowercase hex HMAC-SHA256, as senders compute it.
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `X-Hub-Signature-256` header value for a body.
pub fn meta_header(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", sign_hex(secret, body))
}

/// Lowercase hex SHA-256 of a body: the dedup key of a Meta delivery.
pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Constant-time equality for short secrets such as verify tokens.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kapso_sdk_vector_with_crlf_and_emoji() {
        let body = "{ \"text\": \"Olá 🌎\", \"a\": 1 }\r\n".as_bytes();
        assert_eq!(
            sign_hex(b"webhook-secret", body),
            "f0988cf20f547de9fdaa8b5a31e0cbdb62162b73c52c0e90746ca691483fc026"
        );
        let d = parse_kapso_header(Some(
            b"F0988CF20F547DE9FDAA8B5A31E0CBDB62162B73C52C0E90746CA691483FC026",
        ))
        .unwrap();
        assert!(verify(b"webhook-secret", body, &d));
        assert!(!verify(b"webhook-secret", &body[..body.len() - 2], &d));
    }

    #[test]
    fn headers_are_strict() {
        let good = "a".repeat(64);
        assert_eq!(parse_meta_header(None), Err(SignatureError::Missing));
        assert_eq!(
            parse_meta_header(Some(good.as_bytes())),
            Err(SignatureError::Malformed)
        );
        assert!(parse_meta_header(Some(format!("sha256={good}").as_bytes())).is_ok());
        assert_eq!(
            parse_meta_header(Some(format!("sha1={good}").as_bytes())),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            parse_kapso_header(Some(format!("sha256={good}").as_bytes())),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            parse_kapso_header(Some(format!(" {good}").as_bytes())),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            parse_kapso_header(Some(&good.as_bytes()[..63])),
            Err(SignatureError::Malformed)
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
