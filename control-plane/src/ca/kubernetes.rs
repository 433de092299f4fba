//! The CA in Kubernetes: its root kept in a Secret every replica shares
//! (the first replica to start generates it), and proxies authenticated by
//! their projected service-account tokens, checked with a `TokenReview`
//! (the injector mounts one with the CA's audience in every sidecar).

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use remora_api::identity::SpiffeId;

use super::Ca;

/// The root in Secret `namespace/name` (`ca.crt`, `ca.key`), generated and
/// stored when the Secret does not exist; replicas that race agree on the
/// one written first.
pub async fn shared_root(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> anyhow::Result<Ca> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let label = format!("Secret {namespace}/{name}");
    for _ in 0..5 {
        if let Some(secret) = api
            .get_opt(name)
            .await
            .map_err(|e| anyhow::anyhow!("{label}: {e}"))?
        {
            let data = secret.data.unwrap_or_default();
            let get = |key: &str| {
                data.get(key)
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
                    .ok_or_else(|| anyhow::anyhow!("{label}: no {key}"))
            };
            return Ca::from_pem(
                &get("ca.crt")?,
                &get("ca.key")?,
                &format!("{label} ca.crt"),
                &format!("{label} ca.key"),
            );
        }
        let (cert, key) = super::generate_root(trust_domain)?;
        let secret = managed_secret(
            namespace,
            name,
            "Opaque",
            [("ca.crt", cert.as_str()), ("ca.key", key.as_str())],
        );
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %label, "generated the mesh's root CA");
                continue;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(error) => anyhow::bail!("{label}: {error}"),
        }
    }
    anyhow::bail!("{label}: kept changing under us")
}

/// A Secret the control plane writes (and labels as its own), of
/// `type_`, holding `data` (PEM texts).
pub fn managed_secret<'a>(
    namespace: &str,
    name: &str,
    type_: &str,
    data: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "remora-control-plane".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Checks service-account tokens with the API server.
#[derive(Clone)]
pub struct TokenReviewer {
    pub client: kube::Client,
    /// The audience the token must carry (the injector's `token_audience`).
    pub audience: String,
    pub trust_domain: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenReviewer(audience {})", self.audience)
    }
}

impl TokenReviewer {
    /// The node id (`POD.NAMESPACE`) and identity the token proves, or why
    /// it proves nothing.
    pub async fn review(&self, token: &str) -> Result<(String, SpiffeId), String> {
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            status: None,
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview failed: {e}"))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(match status.error {
                Some(error) if !error.is_empty() => format!("not authenticated: {error}"),
                _ => "not authenticated".into(),
            });
        }
        if let Some(audiences) = &status.audiences
            && !audiences.contains(&self.audience)
        {
            return Err(format!("the token is not for audience {:?}", self.audience));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
            return Err(format!("{username:?} is not a service account"));
        };
        let Some((namespace, account)) = rest.split_once(':') else {
            return Err(format!("{username:?} is not a service account"));
        };
        // A projected token is bound to its pod: the node id is the pod's.
        let pod = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get("authentication.kubernetes.io/pod-name"))
            .and_then(|names| names.first())
            .ok_or("the token is not bound to a pod (use a projected service-account token)")?;
        let identity = SpiffeId::new(&self.trust_domain, namespace, account)?;
        Ok((format!("{pod}.{namespace}"), identity))
    }
}
