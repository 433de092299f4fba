//! Listener → `ListenerConfig`: one filter chain whose last filter is the
//! HTTP connection manager (routes inline or by RDS) or the TCP proxy.

use std::time::Duration;

use remora_xds_proto::filters::{
    adaptive_concurrency, http_connection_manager as hcm, http_rbac, local_ratelimit, network_rbac,
    router, tcp_proxy,
};
use remora_xds_proto::listener::{self, Filter, FilterChain, Listener, filter};
use remora_xds_proto::{core, protobuf};

use super::{
    ListenerPart, Rejection, Result, RouteDefaults, Routes, ads_source, duration_or_none,
    local_rate_limit, opt_duration, route_configuration, socket_address, u32v, unpack_typed,
};
use crate::config::{
    Direction, Http2Config, Http2KeepaliveConfig, ListenerConfig, ListenerProtocol, MtlsMode,
};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub(super) const LOCAL_RATE_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// Envoy's default `stream_idle_timeout`.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

pub(crate) fn listener(l: &Listener) -> Result<ListenerPart> {
    if l.name.is_empty() {
        return Err(Rejection::new("name", "required"));
    }
    let address = socket_address(&l.address, "address")?;
    if !l.additional_addresses.is_empty() {
        return Err(Rejection::unsupported(
            "additional_addresses",
            "more than one address",
        ));
    }
    let capture = l.use_original_dst.as_ref().is_some_and(|v| v.value);
    if l.transparent.as_ref().is_some_and(|v| v.value) {
        return Err(Rejection::unsupported(
            "transparent",
            "a transparent listener",
        ));
    }
    let bind = l.bind_to_port.as_ref().is_none_or(|v| v.value);
    let direction = match core::TrafficDirection::try_from(l.traffic_direction) {
        Ok(core::TrafficDirection::Unspecified) => None,
        Ok(core::TrafficDirection::Inbound) => Some(Direction::Inbound),
        Ok(core::TrafficDirection::Outbound) => Some(Direction::Outbound),
        Err(_) => {
            return Err(Rejection::new(
                "traffic_direction",
                format!("unknown direction {}", l.traffic_direction),
            ));
        }
    };
    if l.api_listener.is_some() || l.udp_listener_config.is_some() {
        return Err(Rejection::unsupported(
            "api_listener",
            "an API or UDP listener",
        ));
    }
    // Remora detects TLS by itself (`sniff.rs`): Envoy's TLS inspector,
    // which permissive mTLS needs, has nothing to add.
    if let Some((i, f)) = l
        .listener_filters
        .iter()
        .enumerate()
        .find(|(_, f)| f.name != TLS_INSPECTOR)
    {
        return Err(Rejection::unsupported(
            format!("listener_filters[{i}]"),
            &format!("the listener filter {:?}", f.name),
        ));
    }
    if l.filter_chain_matcher.is_some() {
        return Err(Rejection::unsupported(
            "filter_chain_matcher",
            "filter chain matching",
        ));
    }
    let (chain, at, mtls) = match (l.filter_chains.as_slice(), &l.default_filter_chain) {
        ([chain], None) => (chain, "filter_chains[0]", None),
        ([], Some(chain)) => (chain, "default_filter_chain", None),
        // Permissive mTLS, as Istio writes it: a chain for TLS requiring
        // client certificates and the same filters for plaintext.
        ([a, b], None) if permissive_pair(a, b) => {
            permissive_tls(a, "filter_chains[0]")?;
            (b, "filter_chains[1]", Some(MtlsMode::Permissive))
        }
        ([a, b], None) if permissive_pair(b, a) => {
            permissive_tls(b, "filter_chains[1]")?;
            (a, "filter_chains[0]", Some(MtlsMode::Permissive))
        }
        // A capture listener without a chain closes what no listener claims.
        ([], None) if capture => {
            let mut config = base(&l.name, address);
            config.original_destination = true;
            config.direction = direction;
            return Ok(ListenerPart {
                config,
                routes: Routes::None,
                defaults: RouteDefaults::default(),
                unmatched_cluster: None,
                tracing: None,
            });
        }
        ([], None) => {
            return Err(Rejection::new(
                "filter_chains",
                "one filter chain is required",
            ));
        }
        _ => {
            return Err(Rejection::unsupported(
                "filter_chains",
                "more than one filter chain (filter chain matching), except a TLS and a raw_buffer chain with the same filters (permissive mTLS)",
            ));
        }
    };
    if mtls.is_none()
        && chain
            .filter_chain_match
            .as_ref()
            .is_some_and(|m| *m != Default::default())
    {
        return Err(Rejection::unsupported(
            format!("{at}.filter_chain_match"),
            "filter chain matching",
        ));
    }
    let mtls = match (&chain.transport_socket, mtls) {
        (_, Some(permissive)) => Some(permissive),
        (Some(socket), None) => Some(super::tls::downstream(
            socket,
            &format!("{at}.transport_socket"),
        )?),
        (None, None) => None,
    };
    #[allow(deprecated)]
    if chain.use_proxy_proto.as_ref().is_some_and(|v| v.value) {
        return Err(Rejection::unsupported(
            format!("{at}.use_proxy_proto"),
            "the PROXY protocol",
        ));
    }
    let (terminal, before) = match chain.filters.split_last() {
        Some(split) => split,
        None => {
            return Err(Rejection::new(
                format!("{at}.filters"),
                "a terminal filter is required",
            ));
        }
    };
    // Network RBAC filters may come before the terminal filter.
    let mut authorization = Vec::new();
    let mut allow_seen = false;
    for (i, f) in before.iter().enumerate() {
        let filter_at = format!("{at}.filters[{i}]");
        let any = typed_config(f, &filter_at)?;
        if any.type_url != NETWORK_RBAC {
            return Err(Rejection::unsupported(
                format!("{filter_at}.typed_config"),
                &format!(
                    "the network filter {:?} before the terminal filter (only RBAC)",
                    f.name
                ),
            ));
        }
        let rbac: network_rbac::Rbac = unpack_typed(any, &format!("{filter_at}.typed_config"))?;
        network_rbac_filter(&rbac, &mut allow_seen, &mut authorization)
            .map_err(|e| e.at(&format!("{filter_at}.typed_config")))?;
    }
    let filter_at = format!("{at}.filters[{}]", chain.filters.len() - 1);
    let mut config = base(&l.name, address);
    config.authorization = authorization;
    config.bind = bind;
    config.direction = direction;
    config.mtls = mtls;
    let any = typed_config(terminal, &filter_at)?;
    let mut tracing = None;
    let (routes, defaults) = match any.type_url.as_str() {
        HCM if capture => {
            return Err(Rejection::unsupported(
                format!("{filter_at}.typed_config"),
                "HTTP on a use_original_dst listener (its chain takes what no listener claims: a TCP proxy to an ORIGINAL_DST cluster)",
            ));
        }
        HCM => {
            let manager: hcm::HttpConnectionManager =
                unpack_typed(any, &format!("{filter_at}.typed_config"))?;
            tracing = manager
                .tracing
                .as_ref()
                .map(tracing_of)
                .transpose()
                .map_err(|e| e.at(&format!("{filter_at}.typed_config.tracing")))?;
            http(&manager, &mut config, &mut allow_seen)
                .map_err(|e| e.at(&format!("{filter_at}.typed_config")))?
        }
        TCP_PROXY => {
            let proxy: tcp_proxy::TcpProxy =
                unpack_typed(any, &format!("{filter_at}.typed_config"))?;
            tcp(&proxy, &mut config).map_err(|e| e.at(&format!("{filter_at}.typed_config")))?;
            (Routes::None, RouteDefaults::default())
        }
        other => {
            return Err(Rejection::unsupported(
                format!("{filter_at}.typed_config"),
                &format!("the network filter {other}"),
            ));
        }
    };
    // A capture listener: its TCP proxy's cluster says what happens to
    // connections no listener claims (resolved with the clusters, `xds/state.rs`).
    let unmatched_cluster = if capture {
        config.original_destination = true;
        config.protocol = None;
        config.cluster.take()
    } else {
        None
    };
    Ok(ListenerPart {
        config,
        routes,
        defaults,
        unmatched_cluster,
        tracing,
    })
}

const OPENTELEMETRY: &str = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";

/// `HttpConnectionManager.tracing`: only the OpenTelemetry tracer (a
/// tracer remora-proxy cannot honour is refused, not ignored).
fn tracing_of(t: &hcm::http_connection_manager::Tracing) -> Result<super::XdsTracing> {
    use remora_xds_proto::core::grpc_service::TargetSpecifier;
    use remora_xds_proto::trace_config::OpenTelemetryConfig;
    let provider = t
        .provider
        .as_ref()
        .ok_or_else(|| Rejection::unsupported("provider", "tracing without a provider"))?;
    let any = match &provider.config_type {
        Some(remora_xds_proto::trace_config::tracing::http::ConfigType::TypedConfig(any))
            if any.type_url == OPENTELEMETRY =>
        {
            any
        }
        _ => {
            return Err(Rejection::unsupported(
                "provider",
                &format!(
                    "the tracer {:?} (only envoy.tracers.opentelemetry)",
                    provider.name
                ),
            ));
        }
    };
    let otel: OpenTelemetryConfig = unpack_typed(any, "provider.typed_config")?;
    let collector = match (&otel.grpc_service, &otel.http_service) {
        (Some(grpc), _) => match &grpc.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(envoy)) => {
                super::Collector::Cluster(envoy.cluster_name.clone())
            }
            Some(TargetSpecifier::GoogleGrpc(google)) => {
                super::Collector::Grpc(google.target_uri.clone())
            }
            None => {
                return Err(Rejection::new(
                    "provider.typed_config.grpc_service",
                    "no target",
                ));
            }
        },
        (None, Some(http)) => {
            super::Collector::Http(http.http_uri.as_ref().map(|u| u.uri.clone()).ok_or_else(
                || Rejection::new("provider.typed_config.http_service.http_uri", "required"),
            )?)
        }
        (None, None) => {
            return Err(Rejection::new(
                "provider.typed_config",
                "neither grpc_service nor http_service",
            ));
        }
    };
    let sampling = t
        .random_sampling
        .as_ref()
        .map_or(1.0, |p| (p.value / 100.0).clamp(0.0, 1.0));
    Ok(super::XdsTracing {
        collector,
        sampling,
        service_name: otel.service_name,
    })
}

const ADAPTIVE_CONCURRENCY: &str =
    "type.googleapis.com/envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency";

/// Envoy's adaptive concurrency filter (the gradient controller) as the
/// listener's `adaptive_concurrency`; none when the filter is disabled.
fn adaptive(
    f: &adaptive_concurrency::AdaptiveConcurrency,
) -> Result<Option<crate::config::AdaptiveConcurrencyConfig>> {
    use adaptive_concurrency::adaptive_concurrency::ConcurrencyControllerConfig;
    if f.enabled
        .as_ref()
        .is_some_and(|flag| flag.default_value.as_ref().is_some_and(|v| !v.value))
    {
        return Ok(None);
    }
    if let Some(status) = &f.concurrency_limit_exceeded_status
        && status.code != 503
    {
        return Err(Rejection::unsupported(
            "concurrency_limit_exceeded_status",
            &format!("answering {} (remora-proxy answers 503)", status.code),
        ));
    }
    let Some(ConcurrencyControllerConfig::GradientControllerConfig(g)) =
        &f.concurrency_controller_config
    else {
        return Err(Rejection::new("gradient_controller_config", "required"));
    };
    let mut config: crate::config::AdaptiveConcurrencyConfig =
        super::defaults!(crate::config::AdaptiveConcurrencyConfig, "{}");
    if let Some(p) = &g.sample_aggregate_percentile {
        config.percentile = p.value;
    }
    let limits = g.concurrency_limit_params.as_ref().ok_or_else(|| {
        Rejection::new(
            "gradient_controller_config.concurrency_limit_params",
            "required",
        )
    })?;
    if let Some(max) = u32v(&limits.max_concurrency_limit) {
        config.max_concurrency = max;
    }
    config.sample_interval = opt_duration(
        &limits.concurrency_update_interval,
        "gradient_controller_config.concurrency_limit_params.concurrency_update_interval",
    )?
    .ok_or_else(|| {
        Rejection::new(
            "gradient_controller_config.concurrency_limit_params.concurrency_update_interval",
            "required",
        )
    })?;
    let floor = u32v(&limits.min_concurrency_limit);
    let rtt = g.min_rtt_calc_params.as_ref().ok_or_else(|| {
        Rejection::new("gradient_controller_config.min_rtt_calc_params", "required")
    })?;
    let at = "gradient_controller_config.min_rtt_calc_params";
    if let Some(interval) = opt_duration(&rtt.interval, &format!("{at}.interval"))? {
        config.min_rtt_interval = interval;
    }
    config.fixed_min_rtt = opt_duration(&rtt.fixed_value, &format!("{at}.fixed_value"))?;
    if rtt.interval.is_none() && config.fixed_min_rtt.is_none() {
        return Err(Rejection::new(
            format!("{at}.interval"),
            "interval or fixed_value is required",
        ));
    }
    if let Some(count) = u32v(&rtt.request_count) {
        config.min_rtt_requests = count;
    }
    if let Some(jitter) = &rtt.jitter {
        config.min_rtt_jitter = jitter.value;
    }
    if let Some(min) = u32v(&rtt.min_concurrency) {
        config.min_concurrency = min;
    }
    if let Some(buffer) = &rtt.buffer {
        config.buffer = buffer.value;
    }
    if let Some(floor) = floor
        && floor != config.min_concurrency
    {
        return Err(Rejection::unsupported(
            "gradient_controller_config.concurrency_limit_params.min_concurrency_limit",
            "a floor other than min_rtt_calc_params.min_concurrency (one value serves both)",
        ));
    }
    let mut errors = Vec::new();
    config.check("", &mut errors);
    if let Some(e) = errors.first() {
        return Err(Rejection::new(
            e.path.trim_start_matches('.'),
            e.message.clone(),
        ));
    }
    Ok(Some(config))
}

const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The network RBAC filter: its rules as authorization policies.
fn network_rbac_filter(
    rbac: &network_rbac::Rbac,
    allow_seen: &mut bool,
    out: &mut Vec<crate::config::AuthorizationPolicyConfig>,
) -> Result<()> {
    if rbac.delay_deny.is_some() {
        return Err(Rejection::unsupported("delay_deny", "a delayed deny"));
    }
    // ONE_TIME_ON_FIRST_BYTE or CONTINUOUS: a connection's identity and
    // port do not change, so checking once at its start is both.
    rbac_rules(
        rbac.rules.as_ref(),
        rbac.matcher.is_some() || rbac.shadow_rules.is_some() || rbac.shadow_matcher.is_some(),
        allow_seen,
        out,
    )
}

/// The HTTP RBAC filter: its rules as authorization policies.
fn http_rbac_filter(
    rbac: &http_rbac::Rbac,
    allow_seen: &mut bool,
    out: &mut Vec<crate::config::AuthorizationPolicyConfig>,
) -> Result<()> {
    rbac_rules(
        rbac.rules.as_ref(),
        rbac.matcher.is_some() || rbac.shadow_rules.is_some() || rbac.shadow_matcher.is_some(),
        allow_seen,
        out,
    )
}

fn rbac_rules(
    rules: Option<&remora_xds_proto::rbac::Rbac>,
    matchers: bool,
    allow_seen: &mut bool,
    out: &mut Vec<crate::config::AuthorizationPolicyConfig>,
) -> Result<()> {
    if matchers {
        return Err(Rejection::unsupported(
            "matcher",
            "RBAC matchers and shadow rules",
        ));
    }
    super::rbac::rules(rules, allow_seen, out)
}

/// Envoy's TLS inspector listener filter.
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// Whether `tls` and `plain` are permissive mTLS: `tls` matches the TLS
/// transport and requires client certificates (strict mTLS), `plain`
/// matches `raw_buffer` (or anything) with no TLS, and both run the same
/// filters.
fn permissive_pair(tls: &FilterChain, plain: &FilterChain) -> bool {
    let transport = |c: &FilterChain| {
        c.filter_chain_match.as_ref().map_or(String::new(), |m| {
            let only_transport = listener::FilterChainMatch {
                transport_protocol: m.transport_protocol.clone(),
                ..Default::default()
            };
            if *m == only_transport {
                m.transport_protocol.clone()
            } else {
                "other".into()
            }
        })
    };
    transport(tls) == "tls"
        && matches!(transport(plain).as_str(), "raw_buffer" | "")
        && plain.transport_socket.is_none()
        && tls.filters == plain.filters
}

/// The TLS chain of a permissive pair must be mesh mTLS.
fn permissive_tls(tls: &FilterChain, at: &str) -> Result<()> {
    match &tls.transport_socket {
        Some(socket) => {
            super::tls::downstream(socket, &format!("{at}.transport_socket")).map(|_| ())
        }
        None => Err(Rejection::new(
            format!("{at}.transport_socket"),
            "a chain matching transport_protocol tls needs a DownstreamTlsContext",
        )),
    }
}

fn typed_config<'a>(f: &'a Filter, at: &str) -> Result<&'a protobuf::Any> {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => Ok(any),
        Some(filter::ConfigType::ConfigDiscovery(_)) => Err(Rejection::unsupported(
            format!("{at}.config_discovery"),
            "filter config discovery (ECDS)",
        )),
        None => Err(Rejection::new(format!("{at}.typed_config"), "required")),
    }
}

fn base(name: &str, address: std::net::SocketAddr) -> ListenerConfig {
    // The YAML defaults, so a listener from xDS behaves as one from the file.
    let mut config = super::defaults!(ListenerConfig, "{name: x, address: '127.0.0.1:0'}");
    config.name = name.to_string();
    config.address = address;
    config
}

fn http(
    m: &hcm::HttpConnectionManager,
    config: &mut ListenerConfig,
    allow_seen: &mut bool,
) -> Result<(Routes, RouteDefaults)> {
    use hcm::http_connection_manager::{CodecType, RouteSpecifier};
    config.protocol = Some(ListenerProtocol::Http);
    if m.codec_type == CodecType::Http3 as i32 {
        return Err(Rejection::unsupported("codec_type", "HTTP/3"));
    }
    if m.normalize_path.as_ref().is_some_and(|v| v.value) {
        return Err(Rejection::unsupported(
            "normalize_path",
            "path normalization",
        ));
    }
    if m.merge_slashes {
        return Err(Rejection::unsupported("merge_slashes", "merging slashes"));
    }
    for (i, upgrade) in m.upgrade_configs.iter().enumerate() {
        if !upgrade.upgrade_type.eq_ignore_ascii_case("websocket") {
            return Err(Rejection::unsupported(
                format!("upgrade_configs[{i}].upgrade_type"),
                &format!("the upgrade {:?} (only websocket)", upgrade.upgrade_type),
            ));
        }
    }
    if let Some(timeout) = opt_duration(&m.request_headers_timeout, "request_headers_timeout")?
        && !timeout.is_zero()
    {
        config.request_headers_timeout = timeout;
    }
    if let Some(kb) = u32v(&m.max_request_headers_kb) {
        config.max_request_headers_kb = kb;
    }
    if let Some(generate) = &m.generate_request_id {
        config.generate_request_id = generate.value;
    }
    if let Some(common) = &m.common_http_protocol_options {
        if let Some(idle) = opt_duration(
            &common.idle_timeout,
            "common_http_protocol_options.idle_timeout",
        )? {
            config.idle_timeout = idle;
        }
        config.max_connection_age = opt_duration(
            &common.max_connection_duration,
            "common_http_protocol_options.max_connection_duration",
        )?
        .and_then(duration_or_none);
    }
    if let Some(h2) = &m.http2_protocol_options {
        let (http2, keepalive) = http2_options(h2).map_err(|e| e.at("http2_protocol_options"))?;
        config.http2 = http2;
        config.keepalive.http2 = keepalive;
    }
    let stream_idle_timeout = match opt_duration(&m.stream_idle_timeout, "stream_idle_timeout")? {
        None => Some(STREAM_IDLE_TIMEOUT),
        Some(d) => duration_or_none(d),
    };

    let mut local_rate_limit_filter = false;
    let mut router_seen = false;
    for (i, f) in m.http_filters.iter().enumerate() {
        let at = format!("http_filters[{i}]");
        if f.disabled {
            continue;
        }
        if router_seen {
            return Err(Rejection::new(at, "no filter may follow the router"));
        }
        let any = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(any)) => any,
            _ if f.is_optional => continue,
            _ => {
                return Err(Rejection::unsupported(
                    at,
                    &format!("the HTTP filter {:?} without a typed_config", f.name),
                ));
            }
        };
        match any.type_url.as_str() {
            ROUTER => {
                let _: router::Router = unpack_typed(any, &format!("{at}.typed_config"))?;
                router_seen = true;
            }
            ADAPTIVE_CONCURRENCY => {
                let filter: adaptive_concurrency::AdaptiveConcurrency =
                    unpack_typed(any, &format!("{at}.typed_config"))?;
                config.adaptive_concurrency =
                    adaptive(&filter).map_err(|e| e.at(&format!("{at}.typed_config")))?;
            }
            HTTP_RBAC => {
                let rbac: http_rbac::Rbac = unpack_typed(any, &format!("{at}.typed_config"))?;
                http_rbac_filter(&rbac, allow_seen, &mut config.authorization)
                    .map_err(|e| e.at(&format!("{at}.typed_config")))?;
            }
            LOCAL_RATE_LIMIT => {
                let limit: local_ratelimit::LocalRateLimit =
                    unpack_typed(any, &format!("{at}.typed_config"))?;
                config.rate_limit = local_rate_limit(&limit, &format!("{at}.typed_config"))?;
                local_rate_limit_filter = true;
            }
            _ if f.is_optional => {}
            other => {
                return Err(Rejection::unsupported(
                    format!("{at}.typed_config"),
                    &format!("the HTTP filter {:?} ({other})", f.name),
                ));
            }
        }
    }
    if !router_seen {
        return Err(Rejection::new(
            "http_filters",
            "the router filter is required (last)",
        ));
    }
    let routes = match &m.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            ads_source(&rds.config_source, "rds.config_source")?;
            if rds.route_config_name.is_empty() {
                return Err(Rejection::new("rds.route_config_name", "required"));
            }
            Routes::Rds(rds.route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(inline)) => {
            Routes::Inline(route_configuration(inline).map_err(|e| e.at("route_config"))?)
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(Rejection::unsupported("scoped_routes", "scoped routes"));
        }
        None => return Err(Rejection::new("rds", "route_config or rds is required")),
    };
    Ok((
        routes,
        RouteDefaults {
            stream_idle_timeout,
            local_rate_limit: local_rate_limit_filter,
        },
    ))
}

fn tcp(p: &tcp_proxy::TcpProxy, config: &mut ListenerConfig) -> Result<()> {
    use tcp_proxy::tcp_proxy::ClusterSpecifier;
    config.protocol = Some(ListenerProtocol::Tcp);
    match &p.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => {
            config.cluster = Some(name.clone())
        }
        Some(ClusterSpecifier::WeightedClusters(_)) => {
            return Err(Rejection::unsupported(
                "weighted_clusters",
                "weighted TCP clusters",
            ));
        }
        _ => return Err(Rejection::new("cluster", "required")),
    }
    if p.tunneling_config.is_some() {
        return Err(Rejection::unsupported("tunneling_config", "tunneling"));
    }
    if p.metadata_match.is_some() {
        return Err(Rejection::unsupported(
            "metadata_match",
            "subset load balancing",
        ));
    }
    // Envoy's default is one hour, as the proxy's; zero means none.
    if let Some(idle) = opt_duration(&p.idle_timeout, "idle_timeout")? {
        config.idle_timeout = idle;
    }
    Ok(())
}

/// HTTP/2 settings and PING keepalive (downstream or upstream).
pub(super) fn http2_options(
    h2: &core::Http2ProtocolOptions,
) -> Result<(Http2Config, Option<Http2KeepaliveConfig>)> {
    let http2 = Http2Config {
        max_concurrent_streams: u32v(&h2.max_concurrent_streams),
        initial_stream_window_size: u32v(&h2.initial_stream_window_size),
        initial_connection_window_size: u32v(&h2.initial_connection_window_size),
    };
    let keepalive = match &h2.connection_keepalive {
        None => None,
        Some(k) => {
            let interval = opt_duration(&k.interval, "connection_keepalive.interval")?;
            let timeout = opt_duration(&k.timeout, "connection_keepalive.timeout")?;
            match interval {
                Some(interval) if !interval.is_zero() => Some(Http2KeepaliveConfig {
                    interval,
                    timeout: timeout.unwrap_or(Duration::from_secs(20)),
                }),
                _ => None,
            }
        }
    };
    Ok((http2, keepalive))
}
