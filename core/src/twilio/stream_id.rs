//! The signed, expiring `{callId}` of the Media Stream URL (design.md "Many instances").
//!
//! The webhook and the stream of one call may land on different instances, so the webhook
//! cannot leave state behind for the stream. Instead it mints the path segment of
//! `wss://HOST/api/twilio/media-stream/{callId}` from the CallSid and an expiry, signed with
//! HMAC-SHA256 under `STREAM_SECRET` (shared by all instances); any instance can verify it.
//!
//! ```text
//! CA00000000000000000000000000000001.1767000000.Q2xhdWRlIHdhcyBoZXJlIQ
//! └──────────── CallSid ───────────┘ └expiry──┘ └── tag: 16 bytes, base64url, no padding
//! ```
//!
//! Only `[A-Za-z0-9_.-]` appear, so the id is safe in a URL path without encoding (Twilio's
//! `<Stream url>` allows no query string, protocol.md 2.1). A second, shorter HMAC of the id,
//! the start token, travels as `<Parameter name="token">` and comes back in the stream's `start`
//! message (protocol.md 3.2: defence in depth next to the upgrade's signature).
//!
//! The two MACs use different keys derived from the secret, so neither value can stand in for
//! the other. Time is an argument (unix seconds); nothing here reads the clock.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256, used for both the id tag and the start token.
type HmacSha256 = Hmac<Sha256>;

/// Bytes of the id's tag: 128 bits is far beyond guessing within an id's lifetime, and keeps
/// the id short (22 base64url characters).
pub const TAG_LEN: usize = 16;

/// Bytes of the start token: 96 bits (16 base64url characters). It is only checked after the
/// id itself verified, as a second factor, and must stay short for `<Parameter>` (Twilio limits
/// a parameter's name and value together to under 500 characters).
pub const START_TOKEN_LEN: usize = 12;

/// Longest accepted CallSid. Twilio's are 34 characters (`CA` + 32 hex); 64 leaves room for a
/// format change without letting arbitrary long ids through.
pub const MAX_CALL_SID_LEN: usize = 64;

/// Shortest accepted `STREAM_SECRET`: 16 bytes (128 bits). Shorter secrets are brute-forceable
/// from one observed id.
pub const MIN_SECRET_LEN: usize = 16;

/// Bytes of the secret [`StreamKey::random`] draws.
const RANDOM_SECRET_LEN: usize = 32;

/// Most digits of a `u64` expiry.
const MAX_EXPIRY_DIGITS: usize = 20;

/// Characters of the base64url form of a [`TAG_LEN`]-byte tag.
const TAG_CHARS: usize = (TAG_LEN * 4).div_ceil(3);

/// Length of a start token as text: base64url of [`START_TOKEN_LEN`] bytes.
pub const START_TOKEN_CHARS: usize = (START_TOKEN_LEN * 4).div_ceil(3);

/// Longest well-formed id; longer input is rejected before any work.
const MAX_CALL_ID_LEN: usize = MAX_CALL_SID_LEN + 1 + MAX_EXPIRY_DIGITS + 1 + TAG_CHARS;

/// Label of the key that signs ids (key derivation: HMAC(secret, label)).
const ID_KEY_LABEL: &[u8] = b"callbridge/stream-id/v1";

/// Label of the key that makes start tokens.
const START_TOKEN_KEY_LABEL: &[u8] = b"callbridge/start-token/v1";

/// Why a `{callId}` was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamIdError {
    /// Not of the form `CallSid.expiry.tag` (or, for [`StreamKey::mint`], a CallSid that is not
    /// 1 to 64 ASCII letters and digits).
    #[error("malformed stream id")]
    Malformed,
    /// Well-formed, but not signed by our secret (forged, tampered, or another deployment's).
    #[error("stream id signature mismatch")]
    BadSignature,
    /// Genuine, but its expiry has passed.
    #[error("stream id expired")]
    Expired,
}

/// Why a [`StreamKey`] could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamKeyError {
    /// The secret is shorter than [`MIN_SECRET_LEN`].
    #[error("stream secret shorter than {MIN_SECRET_LEN} bytes")]
    SecretTooShort,
    /// The operating system gave no random bytes.
    #[error("no system randomness: {0}")]
    Random(getrandom::Error),
}

/// A `{callId}` that verified: signed by us and not expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedStream {
    /// The CallSid the webhook minted the id for.
    pub call_sid: String,
    /// Unix seconds after which the id is refused.
    pub expires_at_unix: u64,
}

/// The keys that mint and verify stream ids and start tokens, derived from `STREAM_SECRET`.
#[derive(Clone)]
pub struct StreamKey {
    /// HMAC state keyed for id tags (cloned per use, so the key schedule runs once).
    id_mac: HmacSha256,
    /// HMAC state keyed for start tokens.
    start_token_mac: HmacSha256,
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamKey(..)") // never print key material
    }
}

impl StreamKey {
    /// The keys for a shared secret (`STREAM_SECRET`, at least [`MIN_SECRET_LEN`] bytes). Every
    /// instance behind the load balancer must use the same secret.
    pub fn from_secret(secret: &[u8]) -> Result<StreamKey, StreamKeyError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(StreamKeyError::SecretTooShort);
        }
        let derive = |label: &[u8]| {
            let mut mac = keyed(secret);
            mac.update(label);
            keyed(&mac.finalize().into_bytes())
        };
        Ok(StreamKey {
            id_mac: derive(ID_KEY_LABEL),
            start_token_mac: derive(START_TOKEN_KEY_LABEL),
        })
    }

    /// Keys from a fresh random secret: for a single instance, or tests. Ids minted with it do
    /// not verify on other instances or after a restart.
    pub fn random() -> Result<StreamKey, StreamKeyError> {
        let mut secret = [0u8; RANDOM_SECRET_LEN];
        getrandom::getrandom(&mut secret).map_err(StreamKeyError::Random)?;
        StreamKey::from_secret(&secret)
    }

    /// The `{callId}` for `call_sid`, valid until `expires_at_unix` (inclusive).
    ///
    /// `call_sid` must be 1 to [`MAX_CALL_SID_LEN`] ASCII letters and digits (Twilio's are
    /// `CA` and 32 hex digits); anything else is refused with [`StreamIdError::Malformed`]
    /// rather than put in a URL path.
    pub fn mint(&self, call_sid: &str, expires_at_unix: u64) -> Result<String, StreamIdError> {
        if !is_call_sid(call_sid) {
            return Err(StreamIdError::Malformed);
        }
        let mut id = format!("{call_sid}.{expires_at_unix}");
        let tag = self.id_tag(&id);
        id.push('.');
        URL_SAFE_NO_PAD.encode_string(&tag.into_bytes()[..TAG_LEN], &mut id);
        Ok(id)
    }

    /// Checks a `{callId}` from a stream URL: its shape, its tag (constant-time), then its
    /// expiry against `now_unix`. It is valid through the second `expires_at_unix`.
    pub fn verify(&self, call_id: &str, now_unix: u64) -> Result<VerifiedStream, StreamIdError> {
        let (signed, tag) = split_id(call_id).ok_or(StreamIdError::Malformed)?;
        let (call_sid, expiry) = signed.split_once('.').ok_or(StreamIdError::Malformed)?;
        if !is_call_sid(call_sid) {
            return Err(StreamIdError::Malformed);
        }
        let expires_at_unix = parse_expiry(expiry).ok_or(StreamIdError::Malformed)?;
        let tag = decode_fixed::<TAG_LEN>(tag).ok_or(StreamIdError::Malformed)?;
        let mut mac = self.id_mac.clone();
        mac.update(signed.as_bytes());
        if mac.verify_truncated_left(&tag).is_err() {
            return Err(StreamIdError::BadSignature);
        }
        if now_unix > expires_at_unix {
            return Err(StreamIdError::Expired);
        }
        Ok(VerifiedStream {
            call_sid: call_sid.to_owned(),
            expires_at_unix,
        })
    }

    /// The start token for `call_id`: sent as `<Parameter name="token">` in the TwiML and
    /// expected back in the stream's `start.customParameters`.
    pub fn start_token(&self, call_id: &str) -> String {
        let mut mac = self.start_token_mac.clone();
        mac.update(call_id.as_bytes());
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..START_TOKEN_LEN])
    }

    /// True when `token` is the start token of `call_id` (constant-time comparison).
    pub fn check_start_token(&self, call_id: &str, token: &str) -> bool {
        let Some(token) = decode_fixed::<START_TOKEN_LEN>(token) else {
            return false;
        };
        let mut mac = self.start_token_mac.clone();
        mac.update(call_id.as_bytes());
        mac.verify_truncated_left(&token).is_ok()
    }

    /// The full HMAC of the signed part `CallSid.expiry`.
    fn id_tag(&self, signed: &str) -> hmac::digest::CtOutput<HmacSha256> {
        let mut mac = self.id_mac.clone();
        mac.update(signed.as_bytes());
        mac.finalize()
    }
}

/// What the `start` message of one stream must carry: the start token of its `callId`, checked
/// in constant time ([`StreamKey::check_start_token`]).
#[derive(Clone)]
pub struct StartTokenCheck {
    key: std::sync::Arc<StreamKey>,
    call_id: String,
}

impl std::fmt::Debug for StartTokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StartTokenCheck({})", self.call_id)
    }
}

impl StartTokenCheck {
    /// The check for the stream `call_id`, under `key`.
    pub fn new(key: std::sync::Arc<StreamKey>, call_id: &str) -> StartTokenCheck {
        StartTokenCheck {
            key,
            call_id: call_id.to_owned(),
        }
    }

    /// Whether `token` is the start token of this stream.
    pub fn accepts(&self, token: &str) -> bool {
        self.key.check_start_token(&self.call_id, token)
    }
}

/// An HMAC-SHA256 keyed with `key`.
fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (RFC 2104), so this never fails.
    HmacSha256::new_from_slice(key).expect("hmac accepts any key length")
}

/// 1 to [`MAX_CALL_SID_LEN`] ASCII letters and digits.
fn is_call_sid(s: &str) -> bool {
    (1..=MAX_CALL_SID_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Splits `CallSid.expiry.tag` into the signed part and the tag, after a length check.
fn split_id(call_id: &str) -> Option<(&str, &str)> {
    if call_id.len() > MAX_CALL_ID_LEN {
        return None;
    }
    call_id.rsplit_once('.')
}

/// Canonical decimal unix seconds: digits only, no leading zero, fits in `u64`.
fn parse_expiry(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.len() <= MAX_EXPIRY_DIGITS && (s == "0" || !s.starts_with('0'));
    if !canonical || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Decodes canonical unpadded base64url of exactly `N` bytes.
fn decode_fixed<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != (N * 4).div_ceil(3) {
        return None;
    }
    // The decoder wants room for a whole final group, so decode into a slightly larger buffer.
    let mut buf = [0u8; 64];
    let len = URL_SAFE_NO_PAD.decode_slice(text, &mut buf).ok()?;
    (len == N).then(|| {
        let mut out = [0u8; N];
        out.copy_from_slice(&buf[..N]);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SID: &str = "CA00000000000000000000000000000001";
    const EXPIRY: u64 = 1_767_000_000;

    fn key() -> StreamKey {
        StreamKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn a_minted_id_verifies_until_it_expires() {
        let key = key();
        let id = key.mint(SID, EXPIRY).unwrap();
        assert!(id.starts_with("CA00000000000000000000000000000001.1767000000."));
        assert_eq!(id.len(), 34 + 1 + 10 + 1 + TAG_CHARS);
        let want = VerifiedStream {
            call_sid: SID.to_owned(),
            expires_at_unix: EXPIRY,
        };
        assert_eq!(key.verify(&id, EXPIRY - 60), Ok(want.clone()));
        assert_eq!(key.verify(&id, EXPIRY), Ok(want));
        assert_eq!(key.verify(&id, EXPIRY + 1), Err(StreamIdError::Expired));
    }

    #[test]
    fn minting_is_deterministic_for_a_secret() {
        assert_eq!(key().mint(SID, EXPIRY), key().mint(SID, EXPIRY));
    }

    #[test]
    fn tampered_sid_expiry_or_tag_is_a_bad_signature() {
        let key = key();
        let id = key.mint(SID, EXPIRY).unwrap();
        let other_sid = id.replacen("CA0000", "CA0001", 1);
        let later = id.replacen(".1767000000.", ".1767000001.", 1);
        let mut tag_flipped = id.clone().into_bytes();
        let last = tag_flipped.len() - 2;
        tag_flipped[last] = if tag_flipped[last] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let tag_flipped = String::from_utf8(tag_flipped).unwrap();
        for bad in [other_sid, later, tag_flipped] {
            assert_ne!(bad, id);
            assert_eq!(
                key.verify(&bad, EXPIRY - 1),
                Err(StreamIdError::BadSignature),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_id_from_another_secret_is_a_bad_signature() {
        let other = StreamKey::from_secret(b"another secret, 32 bytes long!!!").unwrap();
        let id = other.mint(SID, EXPIRY).unwrap();
        assert_eq!(key().verify(&id, 0), Err(StreamIdError::BadSignature));
        let random = StreamKey::random().unwrap();
        assert_eq!(
            key().verify(&random.mint(SID, EXPIRY).unwrap(), 0),
            Err(StreamIdError::BadSignature)
        );
        assert!(random.verify(&random.mint(SID, EXPIRY).unwrap(), 0).is_ok());
    }

    #[test]
    fn an_expired_forgery_is_a_bad_signature_not_expired() {
        let forged = format!("{SID}.1.AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(
            key().verify(&forged, EXPIRY),
            Err(StreamIdError::BadSignature)
        );
    }

    #[test]
    fn malformed_shapes_are_rejected() {
        let key = key();
        let good = key.mint(SID, EXPIRY).unwrap();
        let tag = good.rsplit_once('.').unwrap().1;
        let long_sid = "C".repeat(MAX_CALL_SID_LEN + 1);
        let cases = [
            String::new(),
            SID.to_owned(),
            format!("{SID}.{EXPIRY}"),
            format!("{SID}..{tag}"),
            format!(".{EXPIRY}.{tag}"),
            format!("{SID}.{EXPIRY}.{tag}.x"),
            format!("CA-1.{EXPIRY}.{tag}"),
            format!("CA 1.{EXPIRY}.{tag}"),
            format!("山田.{EXPIRY}.{tag}"),
            format!("{SID}.0{EXPIRY}.{tag}"),
            format!("{SID}.+{EXPIRY}.{tag}"),
            format!("{SID}.-1.{tag}"),
            format!("{SID}.18446744073709551616.{tag}"),
            format!("{SID}.{EXPIRY}.{}", &tag[1..]),
            format!("{SID}.{EXPIRY}.{tag}A"),
            format!("{SID}.{EXPIRY}.{}=", &tag[..21]),
            format!("{SID}.{EXPIRY}.{}+", &tag[..21]),
            format!("{long_sid}.{EXPIRY}.{tag}"),
            format!("{good}{}", "A".repeat(200)),
        ];
        for bad in cases {
            assert_eq!(key.verify(&bad, 0), Err(StreamIdError::Malformed), "{bad}");
        }
    }

    #[test]
    fn mint_refuses_call_sids_that_are_not_path_safe() {
        let key = key();
        for bad in [
            "",
            "CA/../x",
            "CA.1",
            "CA 1",
            "CA%2F",
            &"C".repeat(MAX_CALL_SID_LEN + 1),
        ] {
            assert_eq!(
                key.mint(bad, EXPIRY),
                Err(StreamIdError::Malformed),
                "{bad}"
            );
        }
        assert!(key.mint(&"C".repeat(MAX_CALL_SID_LEN), EXPIRY).is_ok());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            StreamKey::from_secret(&[7u8; MIN_SECRET_LEN - 1]).err(),
            Some(StreamKeyError::SecretTooShort)
        );
        assert!(StreamKey::from_secret(&[7u8; MIN_SECRET_LEN]).is_ok());
    }

    #[test]
    fn start_tokens_are_short_and_bound_to_the_id_and_the_key() {
        let key = key();
        let id = key.mint(SID, EXPIRY).unwrap();
        let token = key.start_token(&id);
        assert_eq!(token.len(), START_TOKEN_CHARS);
        assert!(key.check_start_token(&id, &token));
        let other_id = key.mint(SID, EXPIRY + 1).unwrap();
        assert!(!key.check_start_token(&other_id, &token));
        let other_key = StreamKey::random().unwrap();
        assert!(!other_key.check_start_token(&id, &token));
        // The start token is not a truncation of the id's tag (separate derived keys).
        assert!(!id.rsplit_once('.').unwrap().1.starts_with(&token));
        for bad in [
            "",
            &token[1..],
            &format!("{token}A"),
            "!!!!!!!!!!!!!!!!",
            &token.to_uppercase(),
        ] {
            if bad != token {
                assert!(!key.check_start_token(&id, bad), "{bad}");
            }
        }
    }

    proptest! {
        #[test]
        fn ids_are_path_safe_and_round_trip(
            sid in "[A-Za-z0-9]{1,64}",
            expiry in any::<u64>(),
        ) {
            let key = key();
            let id = key.mint(&sid, expiry).unwrap();
            prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)), "{}", id);
            prop_assert!(id.len() <= MAX_CALL_ID_LEN);
            let verified = key.verify(&id, expiry).unwrap();
            prop_assert_eq!(verified.call_sid, sid);
            prop_assert_eq!(verified.expires_at_unix, expiry);
        }

        #[test]
        fn verify_never_panics_and_rejects_random_text(text in "\\PC{0,120}|[A-Za-z0-9._-]{0,120}") {
            prop_assert!(key().verify(&text, 0).is_err());
            prop_assert!(!key().check_start_token(&text, &text));
        }
    }
}
