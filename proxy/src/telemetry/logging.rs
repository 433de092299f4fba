//! Process logs through `tracing`, as text or JSON on stderr, with a filter
//! that the admin server can change at run time.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat};
use crate::sync::lock;

/// Changes the log filter of a running process.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogControl {
    /// Installs the global subscriber. Fails if the level does not parse or a
    /// subscriber is already installed.
    pub fn install(config: &LogConfig) -> Result<LogControl, String> {
        let filter = parse(&config.level)?;
        let (filter, handle) = reload::Layer::new(filter);
        let registry = tracing_subscriber::registry().with(filter);
        let installed = match config.format {
            LogFormat::Text => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(std::io::stderr().is_terminal())
                        .with_writer(std::io::stderr),
                )
                .try_init(),
            LogFormat::Json => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(false)
                        .with_writer(std::io::stderr),
                )
                .try_init(),
        };
        installed.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
        Ok(LogControl {
            handle,
            current: Mutex::new(config.level.clone()),
        })
    }

    /// Replaces the filter: `debug`, `warn`, or directives like `info,remora_proxy::http=trace`.
    pub(crate) fn set(&self, directives: &str) -> Result<(), String> {
        let filter = parse(directives)?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))?;
        *lock(&self.current) = directives.to_string();
        Ok(())
    }

    pub fn current(&self) -> String {
        lock(&self.current).clone()
    }
}

fn parse(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(directives).map_err(|e| format!("invalid log level {directives:?}: {e}"))
}
