//! Bootstrap tokens: what lets a proxy get certificates for one identity.
//! `remora-control-plane token --node-id web-1` issues one for the identity
//! the mesh file gives that node; the proxy sends it with each CSR
//! (`authorization: Bearer …`), and the CA signs only for the identity in
//! it.
//!
//! A token is `rmt1.<claims>.<tag>`: the claims (node id, SPIFFE ID, expiry)
//! as base64url JSON, and an HMAC-SHA256 tag under a key derived from the
//! CA's private key, so only who holds the CA key can issue tokens, and a
//! new CA key revokes every token. The claims are not secret (a proxy reads
//! its own identity from them); the token is a bearer secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use remora_api::identity::SpiffeId;
use serde::{Deserialize, Serialize};

use super::Ca;

pub(crate) const PREFIX: &str = "rmt1";

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The node id it was issued for.
    pub node: String,
    /// The SPIFFE ID the CA signs for.
    pub id: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a Remora bootstrap token (rmt1.CLAIMS.TAG)")]
    Malformed,
    #[error("the token was not issued by this CA")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("the token names no valid identity: {0}")]
    BadIdentity(String),
}

pub(super) fn key_from(ca_key_der: &[u8]) -> hmac::Key {
    let derive = hmac::Key::new(hmac::HMAC_SHA256, b"remora bootstrap token key v1");
    let derived = hmac::sign(&derive, ca_key_der);
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

impl Ca {
    /// A token for `node`, granting `identity`, valid for `valid_for`.
    pub fn issue_token(&self, node: &str, identity: &SpiffeId, valid_for: Duration) -> String {
        let exp = (SystemTime::now() + valid_for)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            node: node.to_string(),
            id: identity.uri(),
            exp,
        };
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signed = format!("{PREFIX}.{claims}");
        let tag = hmac::sign(self.token_key(), signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The identity a token grants, if this CA issued it and it has not expired.
    pub fn verify_token(&self, token: &str) -> Result<(Claims, SpiffeId), TokenError> {
        let token = token.trim();
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (prefix, claims) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(self.token_key(), signed.as_bytes(), &tag)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(claims)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        let id = claims.id.parse().map_err(TokenError::BadIdentity)?;
        Ok((claims, id))
    }
}
