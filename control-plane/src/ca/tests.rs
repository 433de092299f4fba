use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::prelude::{GeneralName, parse_x509_certificate};

use super::token::TokenError;
use super::*;

fn id(account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", account).unwrap()
}

/// A CSR as a proxy makes it: a fresh key, its identity as the only SAN.
fn csr(sans: Vec<SanType>) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(id: &SpiffeId) -> SanType {
    SanType::URI(id.uri().try_into().unwrap())
}

fn der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents
}

#[test]
fn a_root_is_generated_once_and_signs_leaves_for_the_granted_identity_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path(), "cluster.local").unwrap();
    let again = Ca::load_or_create(dir.path(), "cluster.local").unwrap();
    assert_eq!(
        ca.bundle(),
        again.bundle(),
        "the root is kept, not regenerated"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let reviews = id("reviews");
    let signed = ca
        .sign(
            &csr(vec![uri(&reviews)]),
            &reviews,
            Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(signed.chain.len(), 1, "signed by the root itself");
    let leaf_der = der(&signed.chain[0]);
    let (_, leaf) = parse_x509_certificate(&leaf_der).unwrap();
    let root_der = der(&signed.bundle);
    let (_, root) = parse_x509_certificate(&root_der).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf.issuer(), root.subject());
    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        sans.value.general_names,
        [GeneralName::URI(
            "spiffe://cluster.local/ns/shop/sa/reviews"
        )]
    );
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(
        lifetime,
        3600 + 60,
        "the asked lifetime, backdated a minute"
    );
    assert!(
        leaf.subject().iter_attributes().next().is_none(),
        "URI SAN only"
    );

    // Another identity, extra names, garbage, too much.
    let ratings = id("ratings");
    assert_eq!(
        ca.sign(&csr(vec![uri(&ratings)]), &reviews, Duration::from_secs(60))
            .unwrap_err(),
        SignError::WrongIdentity {
            asked: "spiffe://cluster.local/ns/shop/sa/ratings".into(),
            granted: "spiffe://cluster.local/ns/shop/sa/reviews".into()
        }
    );
    let two = vec![
        uri(&reviews),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ];
    assert_eq!(
        ca.sign(&csr(two), &reviews, Duration::from_secs(60))
            .unwrap_err(),
        SignError::Names(2)
    );
    // A CSR that names nobody gets the granted identity, and only it.
    let bare = ca
        .sign(&csr(vec![]), &reviews, Duration::from_secs(60))
        .unwrap();
    let bare_der = der(&bare.chain[0]);
    let (_, bare_leaf) = parse_x509_certificate(&bare_der).unwrap();
    assert_eq!(
        bare_leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names,
        [GeneralName::URI(
            "spiffe://cluster.local/ns/shop/sa/reviews"
        )]
    );
    assert!(matches!(
        ca.sign(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &reviews,
            Duration::from_secs(60)
        ),
        Err(SignError::Malformed(_))
    ));
    assert!(matches!(
        ca.sign(&"x".repeat(20_000), &reviews, Duration::from_secs(60)),
        Err(SignError::TooLarge(20_000))
    ));
    // A lifetime beyond the maximum is cut to it.
    let long = ca
        .sign(
            &csr(vec![uri(&reviews)]),
            &reviews,
            Duration::from_secs(365 * 86_400),
        )
        .unwrap();
    let long_der = der(&long.chain[0]);
    let (_, leaf) = parse_x509_certificate(&long_der).unwrap();
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert_eq!(lifetime as u64, MAX_LIFETIME.as_secs() + 60);
}

#[test]
fn tokens_grant_one_identity_and_only_this_ca_issues_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path(), "cluster.local").unwrap();
    let token = ca.issue_token("web-1", &id("web"), Duration::from_secs(600));
    let (claims, granted) = ca.verify_token(&token).unwrap();
    assert_eq!(claims.node, "web-1");
    assert_eq!(granted, id("web"));
    assert_eq!(
        remora_proxy::identity::token_identity(&token).unwrap(),
        id("web"),
        "the proxy reads its identity from the token"
    );

    // Another identity spliced into the claims breaks the tag.
    let (_, claims_part, tag) = {
        let mut p = token.split('.');
        (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
    };
    let other = ca.issue_token("web-1", &id("admin"), Duration::from_secs(600));
    let other_claims = other.split('.').nth(1).unwrap();
    assert_ne!(claims_part, other_claims);
    let forged = format!("rmt1.{other_claims}.{tag}");
    assert_eq!(
        ca.verify_token(&forged).unwrap_err(),
        TokenError::BadSignature
    );
    // Another CA's token.
    let elsewhere =
        Ca::load_or_create(tempfile::tempdir().unwrap().path(), "cluster.local").unwrap();
    let foreign = elsewhere.issue_token("web-1", &id("web"), Duration::from_secs(600));
    assert_eq!(
        ca.verify_token(&foreign).unwrap_err(),
        TokenError::BadSignature
    );
    // Expired, malformed.
    let old = ca.issue_token("web-1", &id("web"), Duration::ZERO);
    assert_eq!(ca.verify_token(&old).unwrap_err(), TokenError::Expired);
    for bad in ["", "rmt1", "rmt1.x", "rmt2.a.b", "rmt1.!!.??"] {
        assert_eq!(
            ca.verify_token(bad).unwrap_err(),
            TokenError::Malformed,
            "{bad:?}"
        );
    }
}

/// An operator's root and intermediate, as files.
fn operator_files(dir: &Path) -> (PathBuf, PathBuf, String) {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(DnType::CommonName, "operator root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "operator intermediate");
    let intermediate = params.signed_by(&key, &root_issuer).unwrap();
    let cert = dir.join("intermediate-chain.pem");
    std::fs::write(&cert, format!("{}{}", intermediate.pem(), root.pem())).unwrap();
    let key_path = dir.join("intermediate.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert, key_path, root.pem())
}

#[test]
fn an_operators_intermediate_signs_and_its_chain_goes_with_the_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, root_pem) = operator_files(dir.path());
    let ca = Ca::from_files(&cert, &key).unwrap();
    let web = id("web");
    let signed = ca
        .sign(&csr(vec![uri(&web)]), &web, Duration::from_secs(60))
        .unwrap();
    assert_eq!(signed.chain.len(), 2, "leaf, intermediate");
    assert_eq!(der(&signed.bundle), der(&root_pem));
    let (leaf_der, intermediate_der) = (der(&signed.chain[0]), der(&signed.chain[1]));
    let (_, leaf) = parse_x509_certificate(&leaf_der).unwrap();
    let (_, intermediate) = parse_x509_certificate(&intermediate_der).unwrap();
    leaf.verify_signature(Some(intermediate.public_key()))
        .unwrap();

    // Bad files say what is wrong.
    let other_key = dir.path().join("other.key");
    std::fs::write(
        &other_key,
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    let e = Ca::from_files(&cert, &other_key).unwrap_err().to_string();
    assert!(
        e.contains("does not belong to the first certificate"),
        "{e}"
    );
    let alone = dir.path().join("alone.pem");
    let text = std::fs::read_to_string(&cert).unwrap();
    let first_end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    std::fs::write(&alone, &text[..first_end]).unwrap();
    let e = Ca::from_files(&alone, &key).unwrap_err().to_string();
    assert!(e.contains("the last certificate must be the root"), "{e}");
    let e = Ca::from_files(&dir.path().join("missing.pem"), &key)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--ca-cert "), "{e}");
}
