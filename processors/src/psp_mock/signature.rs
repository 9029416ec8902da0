//! Callback signatures: `Keel-Psp-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{raw body}")>`
//! next to `Keel-Psp-Timestamp: <unix seconds>`. The timestamp is part of what is signed, so a
//! captured callback cannot be replayed later than the receiver's tolerance.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the unix time (seconds) the callback was signed at.
pub const TIMESTAMP_HEADER: &str = "Keel-Psp-Timestamp";
/// Header carrying `v1=<hex>`; several comma-separated signatures are accepted (key rotation).
pub const SIGNATURE_HEADER: &str = "Keel-Psp-Signature";

/// Why a callback's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("the timestamp header {0:?} is not unix seconds")]
    MalformedTimestamp(String),
    #[error("the signature header has no v1=<hex> signature")]
    MalformedSignature,
    #[error("the callback was signed {age_s} s ago, more than the tolerated {tolerance_s} s")]
    TooOld { age_s: i64, tolerance_s: u64 },
    #[error(
        "the callback is dated {ahead_s} s in the future, more than the tolerated {tolerance_s} s"
    )]
    InFuture { ahead_s: i64, tolerance_s: u64 },
    #[error("no signature matches the body")]
    Mismatch,
}

/// The MAC of `"{timestamp}.{body}"`, `timestamp` being the header's bytes exactly as sent.
fn mac(secret: &str, timestamp: &[u8], body: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(timestamp);
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Keel-Psp-Signature` value for `body` signed at `timestamp` (unix seconds): `v1=<hex>`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(
            mac(secret, timestamp.to_string().as_bytes(), body)
                .finalize()
                .into_bytes()
        )
    )
}

/// Check a callback: the timestamp must be within `tolerance_s` of `now` (unix seconds) in both
/// directions, and one of the `v1=` signatures must be the HMAC of `"{timestamp}.{raw_body}"`
/// (compared in constant time by the `hmac` crate). The timestamp header must be 1 to 19 ASCII
/// digits (no sign, spaces or other spellings of the same number) and is signed exactly as sent.
pub fn verify(
    secret: &str,
    header_ts: &str,
    header_sig: &str,
    raw_body: &[u8],
    now: i64,
    tolerance_s: u64,
) -> Result<(), SignatureError> {
    let malformed = || SignatureError::MalformedTimestamp(header_ts.to_owned());
    if !(1..=19).contains(&header_ts.len()) || !header_ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let timestamp: i64 = header_ts.parse().map_err(|_| malformed())?;
    let tolerance = i64::try_from(tolerance_s).unwrap_or(i64::MAX);
    let age = now.saturating_sub(timestamp);
    if age > tolerance {
        return Err(SignatureError::TooOld {
            age_s: age,
            tolerance_s,
        });
    }
    if -age > tolerance {
        return Err(SignatureError::InFuture {
            ahead_s: -age,
            tolerance_s,
        });
    }
    let candidates: Vec<Vec<u8>> = header_sig
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(|h| hex::decode(h).ok())
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::MalformedSignature);
    }
    let expected = mac(secret, header_ts.as_bytes(), raw_body);
    if candidates
        .iter()
        .any(|c| expected.clone().verify_slice(c).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}
