//! Checkpoint keys: `PARLEY_TRANSCRIPT_KEY` (base64 of a 32-byte Ed25519 seed) signs,
//! `PARLEY_TRANSCRIPT_RETIRED_KEYS` (base64 public keys) stay listed so that checkpoints signed
//! before a rotation still verify. A key is named by its id, the first 16 hex digits of SHA-256
//! of its raw public key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::{FORMAT, Hash, hex};

/// Why a configured key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("must be base64 (standard, padded) of a 32-byte Ed25519 seed")]
    BadSeed,
    #[error("{0:?} is not base64 (standard, padded) of a 32-byte Ed25519 public key")]
    BadPublicKey(String),
}

/// The signing key and the public keys verifiers may meet.
#[derive(Clone)]
pub struct TranscriptKeys {
    signing: SigningKey,
    retired: Vec<VerifyingKey>,
}

impl std::fmt::Debug for TranscriptKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscriptKeys")
            .field("current", &key_id(&self.signing.verifying_key()))
            .field("retired", &self.retired.iter().map(key_id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One listed key, as `GET /v1/transcript-keys` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedKey {
    /// The first 16 hex digits of SHA-256 of the raw public key.
    #[schema(pattern = "^[0-9a-f]{16}$")]
    pub key_id: String,
    /// Always `ed25519`.
    #[schema(example = "ed25519")]
    pub algorithm: String,
    /// Base64 (standard, padded) of the raw 32-byte public key.
    pub public_key: String,
    pub current: bool,
}

/// A signed statement that the transcript's first `size` entries end in `head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub conversation_id: Uuid,
    #[schema(minimum = 0)]
    pub size: i64,
    /// `hash(size-1)`, 64 lowercase hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub head: String,
    /// RFC 3339 UTC.
    #[schema(format = DateTime)]
    pub signed_at: String,
    #[schema(pattern = "^[0-9a-f]{16}$")]
    pub key_id: String,
    /// Base64 of the Ed25519 signature over `parley-transcript/1\n<conversationId>\n<size>\n<head>\n<signedAt>\n`.
    pub signature: String,
}

/// The UTF-8 text a checkpoint's signature covers.
pub fn signed_text(conversation_id: &str, size: i64, head: &str, signed_at: &str) -> String {
    format!("{FORMAT}\n{conversation_id}\n{size}\n{head}\n{signed_at}\n")
}

/// The first 16 hex digits of SHA-256 of the raw public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest: Hash = Sha256::digest(key.as_bytes()).into();
    hex(&digest)[..16].to_owned()
}

/// A public key from base64 (standard, padded) of its raw 32 bytes.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let bad = || KeyError::BadPublicKey(text.to_owned());
    let bytes: [u8; 32] = STANDARD
        .decode(text.trim())
        .map_err(|_| bad())?
        .try_into()
        .map_err(|_| bad())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// Base64 of the raw 32 bytes.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// A new random seed (base64) and its public key (base64): what `parley keys generate` prints.
pub fn generate() -> Result<(String, String), getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)?;
    let signing = SigningKey::from_bytes(&seed);
    Ok((STANDARD.encode(seed), encode_public_key(&signing.verifying_key())))
}

impl TranscriptKeys {
    /// From `PARLEY_TRANSCRIPT_KEY`'s and `PARLEY_TRANSCRIPT_RETIRED_KEYS`' values.
    pub fn parse(seed: &str, retired: Option<&str>) -> Result<Self, KeyError> {
        let seed: [u8; 32] = STANDARD
            .decode(seed.trim())
            .map_err(|_| KeyError::BadSeed)?
            .try_into()
            .map_err(|_| KeyError::BadSeed)?;
        let retired = retired
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(parse_public_key)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            signing: SigningKey::from_bytes(&seed),
            retired,
        })
    }

    pub fn current(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The current key first, then the retired ones.
    pub fn listed(&self) -> Vec<ListedKey> {
        std::iter::once((self.current(), true))
            .chain(self.retired.iter().map(|key| (*key, false)))
            .map(|(key, current)| ListedKey {
                key_id: key_id(&key),
                algorithm: "ed25519".into(),
                public_key: encode_public_key(&key),
                current,
            })
            .collect()
    }

    /// Every public key a verifier may meet: the current one and the retired ones.
    pub fn public_keys(&self) -> Vec<VerifyingKey> {
        std::iter::once(self.current())
            .chain(self.retired.iter().copied())
            .collect()
    }

    /// Signs "the first `size` entries end in `head`", now.
    pub fn sign(&self, conversation_id: Uuid, size: i64, head: &Hash) -> Checkpoint {
        self.sign_at(conversation_id, size, head, Utc::now())
    }

    pub fn sign_at(&self, conversation_id: Uuid, size: i64, head: &Hash, at: DateTime<Utc>) -> Checkpoint {
        let head = hex(head);
        let signed_at = crate::time(&at);
        let text = signed_text(&conversation_id.hyphenated().to_string(), size, &head, &signed_at);
        let signature = self.signing.sign(text.as_bytes());
        Checkpoint {
            conversation_id,
            size,
            head,
            signed_at,
            key_id: key_id(&self.current()),
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_must_be_32_bytes_of_padded_base64_and_retired_keys_valid_points() {
        let seed = STANDARD.encode([7u8; 32]);
        let keys = TranscriptKeys::parse(&seed, None).unwrap();
        assert_eq!(keys.listed().len(), 1);
        assert_eq!(
            TranscriptKeys::parse(&STANDARD.encode([7u8; 31]), None).unwrap_err(),
            KeyError::BadSeed
        );
        assert_eq!(
            TranscriptKeys::parse("not base64!", None).unwrap_err(),
            KeyError::BadSeed
        );
        let other = encode_public_key(&SigningKey::from_bytes(&[9u8; 32]).verifying_key());
        let keys = TranscriptKeys::parse(&seed, Some(&format!("{other}, "))).unwrap();
        let listed = keys.listed();
        assert_eq!(listed.iter().map(|k| k.current).collect::<Vec<_>>(), [true, false]);
        assert_eq!(listed[1].public_key, other);
        assert!(matches!(
            TranscriptKeys::parse(&seed, Some("AAAA")),
            Err(KeyError::BadPublicKey(_))
        ));
    }

    #[test]
    fn a_checkpoint_signs_the_contract_text_under_the_key_id() {
        use ed25519_dalek::Verifier as _;
        let keys = TranscriptKeys::parse(&STANDARD.encode([1u8; 32]), None).unwrap();
        let conversation = Uuid::from_u128(0xABCD);
        let at = DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let checkpoint = keys.sign_at(conversation, 3, &[0x11; 32], at);
        assert_eq!(checkpoint.signed_at, "2026-11-25T10:00:00.000Z");
        assert_eq!(checkpoint.key_id.len(), 16);
        let text = format!(
            "parley-transcript/1\n00000000-0000-0000-0000-00000000abcd\n3\n{}\n2026-11-25T10:00:00.000Z\n",
            "11".repeat(32)
        );
        let signature: [u8; 64] = STANDARD.decode(&checkpoint.signature).unwrap().try_into().unwrap();
        keys.current()
            .verify(text.as_bytes(), &ed25519_dalek::Signature::from_bytes(&signature))
            .unwrap();
    }
}
