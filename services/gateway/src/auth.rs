//! Who is calling: an HS256 JWT whose `sub` is the user's UUID and whose `exp` is required. The
//! algorithm is pinned, so `alg: none` or an RS/ES token is refused whatever its header says.
//! There is no leeway: a token is refused from the second its `exp` passes, and before its `nbf`
//! (jsonwebtoken's default would accept either for another minute), and a socket connected with
//! it is disconnected then (see `lifetimes`).

use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;
use uuid::Uuid;

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
        validation.validate_nbf = true;
        validation.leeway = 0;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Who a token names, or `None` when it is not a valid, current HS256 token.
    pub(crate) fn verify(&self, token: &str) -> Option<Identity> {
        let data = decode::<Claims>(token, &self.key, &self.validation).ok()?;
        let user = Uuid::parse_str(&data.claims.sub).ok().map(UserId)?;
        let expires_at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(data.claims.exp))?;
        // jsonwebtoken accepts a token through the second of its `exp`; the token is over from
        // that second on, as RFC 7519 says and as the socket's disconnect at `exp` has it.
        if SystemTime::now() >= expires_at {
            return None;
        }
        Some(Identity { user, expires_at })
    }

    /// The token of an `Authorization: Bearer <token>` header value.
    pub(crate) fn bearer(header: &str) -> Option<&str> {
        header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
    }
}
