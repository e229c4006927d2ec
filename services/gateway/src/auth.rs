//! Who is calling: a JWT whose `sub` is the user's UUID and whose `exp` is required, signed in
//! one of the ways the operator configured ([`AuthConfig`]): HS256 with `PARLEY_JWT_SECRET`, or
//! RS256, ES256 and EdDSA with the public keys of `PARLEY_JWT_PUBLIC_KEYS` (a PEM file) or of the
//! identity provider's JWKS (`PARLEY_JWKS_URL`, kept fresh by [`crate::jwks`]).
//!
//! Each algorithm is only ever checked against its own kind of key: HS256 against the secret and
//! nothing else, the others against public keys of their family. So `alg: none`, an algorithm
//! not configured, and the classic confusion (an HS256 token "signed" with a public key as its
//! secret) are all refused, whatever the header says. A JWKS's symmetric (`oct`) keys are never
//! used. There is no leeway: a token is refused from the second its `exp` passes and before its
//! `nbf` (jsonwebtoken's default would accept either for another minute), and a socket connected
//! with it is disconnected then (see `lifetimes`). `PARLEY_JWT_ISSUER` and `PARLEY_JWT_AUDIENCE`,
//! when set, make `iss` and `aud` required and checked.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use uuid::Uuid;

use crate::jwks::Jwks;
pub use crate::public_keys::{KeyFamily, PublicKey};

/// The authenticated user, as the token's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserId(pub(crate) Uuid);

/// A verified token: whose it is and until when it holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity {
    pub(crate) user: UserId,
    pub(crate) expires_at: SystemTime,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// How tokens are verified: `PARLEY_JWT_SECRET`, `PARLEY_JWT_PUBLIC_KEYS`, `PARLEY_JWKS_URL`
/// (at least one), and the optional `PARLEY_JWT_ISSUER` and `PARLEY_JWT_AUDIENCE`.
#[derive(Clone)]
pub struct AuthConfig {
    /// The HS256 secret.
    pub secret: Option<String>,
    /// The keys of the PEM file, read and checked at start.
    pub public_keys: Vec<PublicKey>,
    /// The identity provider's JWKS.
    pub jwks_url: Option<reqwest::Url>,
    /// How often the JWKS is fetched again on its own (default 5 minutes).
    pub jwks_refresh: Duration,
    /// The least time between two fetches a token with an unknown `kid` may cause (default 5 s).
    pub jwks_min_refetch: Duration,
    /// The `iss` every token must carry.
    pub issuer: Option<String>,
    /// The `aud` every token must carry (one of, when it is a list).
    pub audience: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_keys", &self.public_keys)
            .field("jwks_url", &self.jwks_url.as_ref().map(reqwest::Url::as_str))
            .field("jwks_refresh", &self.jwks_refresh)
            .field("jwks_min_refetch", &self.jwks_min_refetch)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl AuthConfig {
    /// How often the JWKS is fetched again on its own.
    pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
    /// The least time between two fetches caused by unknown `kid`s.
    pub const DEFAULT_JWKS_MIN_REFETCH: Duration = Duration::from_secs(5);

    /// HS256 tokens signed with `secret`, and nothing else.
    pub fn secret(secret: impl Into<String>) -> Self {
        Self {
            secret: Some(secret.into()),
            ..Self::none()
        }
    }

    /// Tokens of the identity provider whose JWKS is at `url`, and nothing else.
    pub fn jwks(url: reqwest::Url) -> Self {
        Self {
            jwks_url: Some(url),
            ..Self::none()
        }
    }

    /// No way of verifying at all: to fill in field by field.
    pub fn none() -> Self {
        Self {
            secret: None,
            public_keys: Vec::new(),
            jwks_url: None,
            jwks_refresh: Self::DEFAULT_JWKS_REFRESH,
            jwks_min_refetch: Self::DEFAULT_JWKS_MIN_REFETCH,
            issuer: None,
            audience: None,
        }
    }

    /// Whether at least one way of verifying a token is configured.
    pub fn can_verify(&self) -> bool {
        self.secret.is_some() || !self.public_keys.is_empty() || self.jwks_url.is_some()
    }
}

/// Verifies tokens with what [`AuthConfig`] gives.
pub(crate) struct Authenticator {
    secret: Option<DecodingKey>,
    public_keys: Vec<PublicKey>,
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Authenticator {
    /// The authenticator, and the JWKS it keeps fresh when one is configured (the caller fetches
    /// it first and runs its refresher).
    pub(crate) fn new(config: &AuthConfig) -> Self {
        Self {
            secret: config
                .secret
                .as_ref()
                .map(|secret| DecodingKey::from_secret(secret.as_bytes())),
            public_keys: config.public_keys.clone(),
            jwks: config
                .jwks_url
                .clone()
                .map(|url| Arc::new(Jwks::new(url, config.jwks_min_refetch))),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        }
    }

    /// The JWKS this authenticator reads, if any.
    pub(crate) fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        let mut required = vec!["exp", "sub"];
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 0;
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // No audience configured: a token's `aud` is not Parley's to judge.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Who a token names, or `None` when it is not a valid, current token signed in a
    /// configured way. A token naming a `kid` the JWKS does not hold makes the JWKS be fetched
    /// again first (at most once per `jwks_min_refetch`).
    pub(crate) async fn verify(&self, token: &str) -> Option<Identity> {
        let header = decode_header(token).ok()?;
        let claims = if header.alg == Algorithm::HS256 {
            let secret = self.secret.as_ref()?;
            decode::<Claims>(token, secret, &self.validation(Algorithm::HS256))
                .ok()?
                .claims
        } else {
            let family = KeyFamily::of(header.alg)?;
            let kid = header.kid.as_deref();
            match self.with_public_keys(token, family, kid, false) {
                Some(claims) => claims,
                None => {
                    let jwks = self.jwks.as_ref()?;
                    let unknown = kid.is_some_and(|kid| !jwks.keys().iter().any(|key| key.kid() == Some(kid)));
                    if !unknown {
                        return None;
                    }
                    jwks.refetch_for_unknown_kid().await;
                    self.with_public_keys(token, family, kid, true)?
                }
            }
        };
        let user = Uuid::parse_str(&claims.sub).ok().map(UserId)?;
        let expires_at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp))?;
        // jsonwebtoken accepts a token through the second of its `exp`; the token is over from
        // that second on, as RFC 7519 says and as the socket's disconnect at `exp` has it.
        if SystemTime::now() >= expires_at {
            return None;
        }
        Some(Identity { user, expires_at })
    }

    /// The claims of `token` verified by a public key of `family`: the PEM file's (unless
    /// `jwks_only`), then the JWKS's with the token's `kid` (any of the family without one).
    fn with_public_keys(&self, token: &str, family: KeyFamily, kid: Option<&str>, jwks_only: bool) -> Option<Claims> {
        let validation = self.validation(family.algorithm());
        let attempt = |key: &PublicKey| {
            (key.family() == family)
                .then(|| decode::<Claims>(token, key.decoding_key(), &validation).ok())
                .flatten()
                .map(|data| data.claims)
        };
        if !jwks_only && let Some(claims) = self.public_keys.iter().find_map(attempt) {
            return Some(claims);
        }
        let keys = self.jwks.as_ref()?.keys();
        keys.iter()
            .filter(|key| kid.is_none() || key.kid() == kid)
            .find_map(attempt)
    }

    /// The token of an `Authorization: Bearer <token>` header value.
    pub(crate) fn bearer(header: &str) -> Option<&str> {
        header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
    }
}
