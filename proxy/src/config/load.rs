//! Reading a config: YAML text to [`Config`] with field-path errors, and the
//! `REMORA_*` environment variables that override the file.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;

use super::{Config, ConfigErrors, parse_yaml_as, scalar};

/// Parses YAML into a [`Config`]. An error names the field path and the
/// line and column, e.g. `listeners[0].routes[0].bogus: unknown field ...`.
pub fn parse_yaml(text: &str) -> Result<Config, ConfigErrors> {
    parse_yaml_as(text)
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors::one(
            "",
            format!("cannot read config file {}: {error}", path.display()),
        )
    })?;
    parse_yaml(&text)
}

/// `REMORA_ADMIN_ADDRESS`, `REMORA_LOG_LEVEL`, `REMORA_WORKERS`,
/// `REMORA_DRAIN_TIMEOUT` and `REMORA_APP_PROBES`, read once at start and applied over every version
/// of the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvOverrides {
    pub admin_address: Option<SocketAddr>,
    pub log_level: Option<String>,
    pub workers: Option<NonZeroUsize>,
    /// `REMORA_DRAIN_TIMEOUT`, e.g. `5s` (the injector fits it into the
    /// pod's termination grace period).
    pub drain_timeout: Option<std::time::Duration>,
    /// `REMORA_APP_PROBES`: the application's probes, as JSON (what the
    /// sidecar injector writes).
    pub app_probes: Option<std::collections::BTreeMap<String, super::AppProbeConfig>>,
}

impl EnvOverrides {
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup`; an empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut errors = Vec::new();
        let mut overrides = EnvOverrides::default();
        if let Some(value) = get("REMORA_ADMIN_ADDRESS") {
            match scalar::parse_socket_addr(&value) {
                Ok(address) => overrides.admin_address = Some(address),
                Err(message) => {
                    errors.push(super::ConfigError::new("REMORA_ADMIN_ADDRESS", message))
                }
            }
        }
        if let Some(value) = get("REMORA_APP_PROBES") {
            match serde_json::from_str(&value) {
                Ok(probes) => overrides.app_probes = Some(probes),
                Err(error) => errors.push(super::ConfigError::new(
                    "REMORA_APP_PROBES",
                    format!("not a JSON map of probes ({{\"/app-health/web/readyz\": {{\"httpGet\": {{\"port\": 8080}}}}}}): {error}"),
                )),
            }
        }
        if let Some(value) = get("REMORA_LOG_LEVEL") {
            match tracing_subscriber::EnvFilter::try_new(&value) {
                Ok(_) => overrides.log_level = Some(value),
                Err(error) => errors.push(super::ConfigError::new(
                    "REMORA_LOG_LEVEL",
                    format!("invalid log level {value:?}: {error}"),
                )),
            }
        }
        if let Some(value) = get("REMORA_WORKERS") {
            match value.trim().parse::<NonZeroUsize>() {
                Ok(workers) => overrides.workers = Some(workers),
                Err(_) => errors.push(super::ConfigError::new(
                    "REMORA_WORKERS",
                    format!(
                        "invalid worker count {value:?}: expected a whole number of at least 1"
                    ),
                )),
            }
        }
        if let Some(value) = get("REMORA_DRAIN_TIMEOUT") {
            match scalar::parse_duration(value.trim()) {
                Ok(timeout) => overrides.drain_timeout = Some(timeout),
                Err(message) => {
                    errors.push(super::ConfigError::new("REMORA_DRAIN_TIMEOUT", message))
                }
            }
        }
        if errors.is_empty() {
            Ok(overrides)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    pub fn apply(&self, config: &mut Config) {
        if let Some(address) = self.admin_address {
            config.admin.address = address;
        }
        if let Some(level) = &self.log_level {
            config.log.level.clone_from(level);
        }
        if let Some(probes) = &self.app_probes {
            config.app_probes = probes.clone();
        }
        if let Some(workers) = self.workers {
            config.workers = Some(workers);
        }
        if let Some(timeout) = self.drain_timeout {
            config.drain_timeout = timeout;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(yaml: &str) -> String {
        parse_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn the_documented_example_parses() {
        let config = parse_yaml(include_str!("../../../examples/proxy.yaml")).unwrap();
        assert_eq!(config.listeners.len(), 2);
        assert_eq!(config.listeners[0].routes[0].backends[1].weight, 10);
        assert_eq!(config.clusters[0].endpoints[1].weight.get(), 3);
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        let config = parse_yaml("").unwrap();
        assert!(config.listeners.is_empty());
        assert_eq!(config.admin.address.port(), 15000);
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let err = error_of(
            "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    routes:\n      - name: r\n        match: {path_prefx: /}\n",
        );
        assert!(
            err.starts_with("listeners[0].routes[0].match.path_prefx: unknown field `path_prefx`"),
            "{err}"
        );
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn bad_scalars_are_named_with_their_path() {
        let err = error_of("listeners:\n  - {name: a, address: 'localhost:80'}\n");
        assert!(
            err.starts_with("listeners[0].address: invalid address \"localhost:80\""),
            "{err}"
        );
        let err = error_of("clusters:\n  - {name: c, connect_timeout: 5}\n");
        assert!(err.starts_with("clusters[0].connect_timeout: invalid duration \"5\": a unit is required, such as 5s or 5ms"), "{err}");
        let err =
            error_of("clusters:\n  - {name: c, endpoints: [{address: 127.0.0.1:1, weight: 0}]}\n");
        assert!(err.starts_with("clusters[0].endpoints[0].weight:"), "{err}");
        let err = error_of("clusters:\n  - {name: c, endpoints: [127.0.0.1]}\n");
        assert!(
            err.starts_with("clusters[0].endpoints[0]: invalid address \"127.0.0.1\""),
            "{err}"
        );
        let err = error_of("clusters:\n  - {name: c, load_balancer: {policy: fastest}}\n");
        assert!(
            err.starts_with("clusters[0].load_balancer.policy: unknown variant `fastest`"),
            "{err}"
        );
        let err = error_of("listeners:\n  - {name: a, address: 127.0.0.1:1, protocol: udp}\n");
        assert!(
            err.starts_with(
                "listeners[0].protocol: unknown variant `udp`, expected one of http, tcp, auto"
            ),
            "{err}"
        );
    }

    #[test]
    fn endpoints_take_a_string_or_a_map() {
        let config = parse_yaml("clusters:\n  - name: c\n    endpoints: [127.0.0.1:1, {address: '[::1]:2', weight: 5}]\n").unwrap();
        assert_eq!(config.clusters[0].endpoints[0].weight.get(), 1);
        assert_eq!(config.clusters[0].endpoints[1].address.port(), 2);
        let err = error_of(
            "clusters:\n  - name: c\n    endpoints: [{address: 127.0.0.1:1, wieght: 5}]\n",
        );
        assert!(
            err.starts_with("clusters[0].endpoints[0].wieght: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn broken_yaml_says_where() {
        let err = error_of("listeners: [\n");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file_and_names_bad_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let overrides = EnvOverrides::from_lookup(env(&[
            ("REMORA_ADMIN_ADDRESS", "127.0.0.1:9901"),
            ("REMORA_LOG_LEVEL", "debug"),
            ("REMORA_WORKERS", "3"),
            ("REMORA_DRAIN_TIMEOUT", "5s"),
        ]))
        .unwrap();
        let mut config = parse_yaml("workers: 1\n").unwrap();
        overrides.apply(&mut config);
        assert_eq!(config.admin.address.port(), 9901);
        assert_eq!(config.drain_timeout, std::time::Duration::from_secs(5));
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.workers.unwrap().get(), 3);

        let err = EnvOverrides::from_lookup(env(&[
            ("REMORA_WORKERS", "0"),
            ("REMORA_ADMIN_ADDRESS", "nope"),
            ("REMORA_DRAIN_TIMEOUT", "soon"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("REMORA_WORKERS: invalid worker count \"0\""),
            "{err}"
        );
        assert!(
            err.contains("REMORA_ADMIN_ADDRESS: invalid address \"nope\""),
            "{err}"
        );
        assert!(err.contains("REMORA_DRAIN_TIMEOUT: "), "{err}");
        let err = EnvOverrides::from_lookup(env(&[("REMORA_LOG_LEVEL", "info,[")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("REMORA_LOG_LEVEL: invalid log level"),
            "{err}"
        );

        // What the sidecar injector writes: the pod's probes as JSON.
        let overrides = EnvOverrides::from_lookup(env(&[(
            "REMORA_APP_PROBES",
            r#"{"/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "timeoutSeconds": 3}}"#,
        )]))
        .unwrap();
        let mut config = parse_yaml("").unwrap();
        overrides.apply(&mut config);
        let probe = &config.app_probes["/app-health/web/readyz"];
        assert_eq!(
            (probe.http_get.as_ref().unwrap().port, probe.timeout_seconds),
            (8080, 3)
        );
        let err = EnvOverrides::from_lookup(env(&[(
            "REMORA_APP_PROBES",
            r#"{"/app-health/web/readyz": {"exec": {}}}"#,
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("REMORA_APP_PROBES: not a JSON map of probes"),
            "{err}"
        );
    }
}
