//! The proxy's workload identity: its SPIFFE ID and (when `identity:` is
//! configured) the certificate the mesh's CA signs for it.

mod renew;

pub use remora_api::identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};
pub use renew::{Credentials, IdentityState, IdentityView, check, key_and_csr, spawn};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The identity a bootstrap token grants (`rmt1.CLAIMS.TAG`, issued by
/// `remora-control-plane token`), read without verifying it: the CA does
/// that when it signs.
pub fn token_identity(token: &str) -> Result<SpiffeId, String> {
    let mut parts = token.trim().split('.');
    let (Some("rmt1"), Some(claims), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("not a Remora bootstrap token (rmt1.CLAIMS.TAG)".into());
    };
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("the token's claims cannot be read")?;
    claims["id"]
        .as_str()
        .ok_or("the token names no identity")?
        .parse()
}
