//! `remora.ca.v1.CertificateService/Sign`, served beside ADS: a proxy sends
//! its CSR with its bootstrap token, or in Kubernetes its projected
//! service-account token (`authorization: Bearer TOKEN`), and gets a leaf
//! for the token's identity, or a status that says what is wrong.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use remora_xds_proto::ca::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use remora_xds_proto::ca::{SignRequest, SignResponse};
use tonic::{Request, Response, Status};

use super::{Ca, SignError};

/// Signing outcomes, for `/metrics`.
#[derive(Debug, Default)]
pub struct SignCounts {
    pub signed: AtomicU64,
    /// No, bad or expired token.
    pub unauthenticated: AtomicU64,
    /// A CSR for another identity than the token's.
    pub denied: AtomicU64,
    /// A CSR that cannot be read.
    pub invalid: AtomicU64,
}

pub struct Signer {
    ca: Arc<Ca>,
    default_lifetime: Duration,
    counts: Arc<SignCounts>,
    /// Service-account tokens (a Kubernetes source): checked with a
    /// TokenReview. Bootstrap tokens are taken as well.
    reviewer: Option<super::kubernetes::TokenReviewer>,
}

impl Signer {
    pub fn new(
        ca: Arc<Ca>,
        default_lifetime: Duration,
        counts: Arc<SignCounts>,
        reviewer: Option<super::kubernetes::TokenReviewer>,
    ) -> CertificateServiceServer<Signer> {
        CertificateServiceServer::new(Signer {
            ca,
            default_lifetime,
            counts,
            reviewer,
        })
    }
}

#[tonic::async_trait]
impl CertificateService for Signer {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let Some(token) = token else {
            self.counts.unauthenticated.fetch_add(1, Ordering::Relaxed);
            return Err(Status::unauthenticated(
                "no bootstrap token: send `authorization: Bearer TOKEN` (remora-control-plane token --node-id ID)",
            ));
        };
        let verified = match &self.reviewer {
            Some(reviewer) if !token.starts_with(super::token::PREFIX) => reviewer
                .review(token.trim())
                .await
                .map_err(|e| format!("service-account token refused: {e}")),
            _ => self
                .ca
                .verify_token(&token)
                .map(|(claims, identity)| (claims.node, identity))
                .map_err(|e| format!("bootstrap token refused: {e}")),
        };
        let (node, identity) = verified.map_err(|message| {
            self.counts.unauthenticated.fetch_add(1, Ordering::Relaxed);
            Status::unauthenticated(message)
        })?;
        let request = request.into_inner();
        let lifetime = match request.validity_seconds {
            0 => self.default_lifetime,
            seconds => Duration::from_secs(seconds).min(self.default_lifetime),
        };
        match self.ca.sign(&request.csr_pem, &identity, lifetime) {
            Ok(signed) => {
                self.counts.signed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%node, %identity, "signed a certificate");
                Ok(Response::new(SignResponse {
                    cert_chain_pem: signed.chain,
                    trust_bundle_pem: signed.bundle,
                }))
            }
            Err(error @ (SignError::WrongIdentity { .. } | SignError::Names(_))) => {
                self.counts.denied.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%node, %error, "CSR refused");
                Err(Status::permission_denied(error.to_string()))
            }
            Err(error @ SignError::Internal(_)) => Err(Status::internal(error.to_string())),
            Err(error) => {
                self.counts.invalid.fetch_add(1, Ordering::Relaxed);
                Err(Status::invalid_argument(error.to_string()))
            }
        }
    }
}
