use super::*;

fn compile(yaml: &str, http: bool) -> Result<Authorization, String> {
    let config: Vec<AuthorizationPolicyConfig> =
        crate::config::parse_yaml_as(yaml).map_err(|e| e.to_string())?;
    let mut errors = Vec::new();
    let compiled = Authorization::compile(
        &config,
        "l",
        http,
        "authorization",
        &Telemetry::new(),
        &mut errors,
    );
    if errors.is_empty() {
        Ok(compiled)
    } else {
        Err(errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

fn request<'a>(
    identity: Option<&'a str>,
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
) -> Subject<'a> {
    Subject {
        identity,
        port: Some(8080),
        request: Some((method, path, headers)),
    }
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const BATCH: &str = "spiffe://cluster.local/ns/jobs/sa/batch";

#[test]
fn deny_wins_then_allow_lists_make_the_rest_default_deny() {
    let authz = compile(
        "
- {name: no-admin, action: deny, paths: ['/admin/*']}
- {name: shop, action: allow, from: ['spiffe://cluster.local/ns/shop/*']}
- {name: batch-reads, action: allow, from: ['spiffe://cluster.local/ns/jobs/sa/batch'], methods: [GET]}
",
        true,
    )
    .unwrap();
    let headers = HeaderMap::new();
    let get = Method::GET;
    let post = Method::POST;
    let check = |id, method, path| authz.check(&request(id, method, path, &headers));
    assert_eq!(check(Some(WEB), &get, "/items"), Ok(()));
    assert_eq!(check(Some(WEB), &post, "/items?x=1"), Ok(()));
    assert_eq!(
        check(Some(WEB), &get, "/admin/users"),
        Err(Denied("no-admin"))
    );
    assert_eq!(check(Some(BATCH), &get, "/items"), Ok(()));
    assert_eq!(
        check(Some(BATCH), &post, "/items"),
        Err(Denied("default-deny"))
    );
    assert_eq!(
        check(None, &get, "/items"),
        Err(Denied("default-deny")),
        "plaintext has no identity"
    );
}

#[test]
fn without_allow_policies_what_no_deny_matches_is_allowed() {
    let authz = compile(
        "- {name: no-debug, action: deny, headers: [{name: x-debug, present: true}], ports: [8080]}",
        true,
    )
    .unwrap();
    let get = Method::GET;
    let mut headers = HeaderMap::new();
    assert_eq!(authz.check(&request(None, &get, "/", &headers)), Ok(()));
    headers.insert("x-debug", "1".parse().unwrap());
    assert_eq!(
        authz.check(&request(None, &get, "/", &headers)),
        Err(Denied("no-debug"))
    );
    let other_port = Subject {
        port: Some(9090),
        ..request(None, &get, "/", &headers)
    };
    assert_eq!(
        authz.check(&other_port),
        Ok(()),
        "the port condition does not hold"
    );
    assert!(compile("[]", true).unwrap().is_empty());
}

#[test]
fn tcp_connections_are_checked_on_identity_and_port() {
    let authz = compile(
        "- {name: web-only, action: allow, from: ['*'], ports: [5432]}",
        false,
    )
    .unwrap();
    let connection = |identity, port| Subject {
        identity,
        port: Some(port),
        request: None,
    };
    assert_eq!(authz.check(&connection(Some(WEB), 5432)), Ok(()));
    assert_eq!(
        authz.check(&connection(None, 5432)),
        Err(Denied("default-deny"))
    );
    assert_eq!(
        authz.check(&connection(Some(WEB), 5433)),
        Err(Denied("default-deny"))
    );
}

#[test]
fn bad_policies_name_the_field() {
    let errors = compile(
        "
- {name: a, action: allow, from: ['spiffe://cluster.local/shop/web', 'spiffe://Bad/ns/x/*'], methods: ['GE T'], headers: [{name: 'x y', exact: a}, {name: x, exact: a, present: true}], paths: [/x]}
- {name: a, action: deny}
- {name: default-deny, action: deny}
",
        false,
    )
    .unwrap_err();
    for expected in [
        "authorization[0].paths: a TCP listener knows no requests",
        "authorization[0].methods: a TCP listener knows no requests",
        "authorization[0].from[0]: \"spiffe://cluster.local/shop/web\" is not a workload identity",
        "authorization[0].from[1]: \"spiffe://Bad/ns/x/*\": a namespace is spiffe://DOMAIN/ns/NAMESPACE/*",
        "authorization[0].methods[0]: \"GE T\" is not an HTTP method",
        "authorization[0].headers[0].name: \"x y\" is not a header name",
        "authorization[0].headers[1]: exactly one of exact, regex, present",
        "authorization[1].name: duplicate policy name \"a\"",
        "authorization[2].name: a name is required (and default-deny is taken)",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
}
