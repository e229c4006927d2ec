//! The public keys tokens may be verified with, whether from a PEM file or from the identity
//! provider's JWKS, each with the one algorithm Parley verifies its family with. Its own module
//! so that `auth` (which verifies) and `jwks` (which fetches) both stand on it, and neither on
//! the other's back.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The family of a public key, and the one algorithm Parley verifies with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// RSA: RS256.
    Rsa,
    /// EC P-256: ES256.
    P256,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyFamily {
    pub(crate) fn algorithm(self) -> Algorithm {
        match self {
            KeyFamily::Rsa => Algorithm::RS256,
            KeyFamily::P256 => Algorithm::ES256,
            KeyFamily::Ed25519 => Algorithm::EdDSA,
        }
    }

    pub(crate) fn of(algorithm: Algorithm) -> Option<Self> {
        match algorithm {
            Algorithm::RS256 => Some(KeyFamily::Rsa),
            Algorithm::ES256 => Some(KeyFamily::P256),
            Algorithm::EdDSA => Some(KeyFamily::Ed25519),
            _ => None,
        }
    }
}

/// One public key a token may be verified with.
#[derive(Clone)]
pub struct PublicKey {
    /// The JWKS `kid`; keys from a PEM file have none and are tried for any token of their family.
    kid: Option<String>,
    family: KeyFamily,
    key: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Every public key of a PEM text (`-----BEGIN PUBLIC KEY-----` blocks of RSA, EC P-256 or
    /// Ed25519 keys, or `RSA PUBLIC KEY`); an error saying which block cannot be used.
    pub fn parse_pem(text: &[u8]) -> Result<Vec<PublicKey>, String> {
        let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
        if blocks.is_empty() {
            return Err("holds no PEM block".into());
        }
        blocks
            .iter()
            .enumerate()
            .map(|(index, block)| {
                let n = index + 1;
                if !matches!(block.tag(), "PUBLIC KEY" | "RSA PUBLIC KEY") {
                    return Err(format!(
                        "block {n} is a {:?}, not a public key (give only public keys)",
                        block.tag()
                    ));
                }
                let one = pem::encode(block);
                let one = one.as_bytes();
                let (family, key) = DecodingKey::from_rsa_pem(one)
                    .map(|key| (KeyFamily::Rsa, key))
                    .or_else(|_| DecodingKey::from_ec_pem(one).map(|key| (KeyFamily::P256, key)))
                    .or_else(|_| DecodingKey::from_ed_pem(one).map(|key| (KeyFamily::Ed25519, key)))
                    .map_err(|_| format!("block {n} is not an RSA, EC P-256 or Ed25519 public key"))?;
                Ok(PublicKey { kid: None, family, key })
            })
            .collect()
    }

    /// The usable signing keys of a JWKS: RSA, EC P-256 and Ed25519 keys meant for signatures.
    /// Symmetric keys, other curves, encryption keys and keys whose `alg` is not the one Parley
    /// verifies their family with are left out.
    pub(crate) fn from_jwks(set: &JwkSet) -> Vec<PublicKey> {
        set.keys.iter().filter_map(Self::from_jwk).collect()
    }

    fn from_jwk(jwk: &Jwk) -> Option<PublicKey> {
        if matches!(jwk.common.public_key_use, Some(ref usage) if *usage != PublicKeyUse::Signature) {
            return None;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => KeyFamily::P256,
            AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => KeyFamily::Ed25519,
            _ => return None,
        };
        if let Some(alg) = jwk.common.key_algorithm
            && Algorithm::try_from(alg).ok() != Some(family.algorithm())
        {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(PublicKey {
            kid: jwk.common.key_id.clone(),
            family,
            key,
        })
    }

    pub(crate) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub(crate) fn family(&self) -> KeyFamily {
        self.family
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}
