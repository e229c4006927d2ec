//! Who is calling: an HS256 JWT whose `sub` is the user's UUID and whose `exp` is required. The
//! algorithm is pinned, so `alg: none` or an RS/ES token is refused whatever its header says.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;
use uuid::Uuid;

/// The authenticated user, as the token's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserId(pub Uuid);

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Verifies tokens with the configured secret.
#[derive(Clone)]
pub(crate) struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub(crate) fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.leeway = 0;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The user a token names, or `None` when it is not a valid, unexpired HS256 token.
    pub(crate) fn verify(&self, token: &str) -> Option<UserId> {
        let data = decode::<Claims>(token, &self.key, &self.validation).ok()?;
        Uuid::parse_str(&data.claims.sub).ok().map(UserId)
    }

    /// The user of an `Authorization: Bearer <token>` header value.
    pub(crate) fn verify_bearer(&self, header: &str) -> Option<UserId> {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))?;
        self.verify(token.trim())
    }
}
