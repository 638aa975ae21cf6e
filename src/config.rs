//! Settings from three sources (flag > `DRAINPROXY_*` env > TOML file > default), merged into one validated [`Config`].

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{error::ErrorKind, CommandFactory, Parser, Subcommand};
use serde::{de, Deserialize, Deserializer};

pub use crate::{supervisor::AppSpec, tls::TlsFiles};

/// The raw command line. Every setting is an `Option` so that a flag or its
/// environment variable wins over the file only when it was actually given.
#[derive(Debug, Parser)]
#[command(name = "drainproxy", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: RawSettings,
    /// TOML file with the same settings (keys as in the README's table).
    #[arg(long, env = "DRAINPROXY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Supervisor mode: after `--`, the app to start as a child; it is stopped only after the drain.
    #[arg(last = true, value_name = "APP")]
    pub app: Vec<std::ffi::OsString>,
}

/// Subcommands that talk to an already running drainproxy.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask a running drainproxy (via its admin port) to drain, e.g. from a preStop hook.
    Drain {
        /// The admin address of the running drainproxy.
        #[arg(long, env = "DRAINPROXY_ADMIN", default_value = "127.0.0.1:9901", value_parser = parse_listen)]
        admin: ListenAddr,
        /// Return only once that drainproxy has no client connection left.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (exit 1).
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Exit 0 if the drainproxy on the admin address is alive (a container healthcheck without curl).
    Health {
        /// The admin address of the running drainproxy.
        #[arg(long, env = "DRAINPROXY_ADMIN", default_value = "127.0.0.1:9901", value_parser = parse_listen)]
        admin: ListenAddr,
    },
}

/// What this invocation of the binary is asked to do.
pub enum Invocation {
    /// Run the proxy.
    Serve(Box<Config>),
    /// A subcommand that talks to a running proxy.
    Client(Command),
}

/// One set of settings, as both the command line and the TOML file spell them.
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Client-facing address: `:8080`, `127.0.0.1:8080`, `[::1]:8080` [default: :8080]
    #[arg(long, env = "DRAINPROXY_LISTEN", value_name = "ADDR", value_parser = parse_listen)]
    #[serde(default, deserialize_with = "from_str")]
    pub listen: Option<ListenAddr>,
    /// The app: `:3000`, `host:port`, `http://host:port`, `unix:/path` (required)
    #[arg(long, env = "DRAINPROXY_UPSTREAM", value_name = "ADDR", value_parser = parse_upstream)]
    #[serde(default, deserialize_with = "from_str")]
    pub upstream: Option<UpstreamAddr>,
    /// How long in-flight work may take after the listener closes [default: 5s]
    #[arg(long, env = "DRAINPROXY_GRACE", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub grace: Option<Duration>,
    /// How long to keep accepting (with `Connection: close`) after the drain starts [default: 0s]
    #[arg(long, env = "DRAINPROXY_DRAIN_DELAY", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub drain_delay: Option<Duration>,
    /// During a drain, close an idle HTTP/1 connection once idle this long (0 = at once) [default: 1s]
    #[arg(long, env = "DRAINPROXY_IDLE_GRACE", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub idle_grace: Option<Duration>,
    /// Admin address (health, readiness, metrics, drain) or `off` [default: 127.0.0.1:9901]
    #[arg(long, env = "DRAINPROXY_ADMIN", value_name = "ADDR|off", value_parser = parse_admin)]
    #[serde(default, deserialize_with = "from_str")]
    pub admin: Option<AdminAddr>,
    /// Give up connecting to the upstream after this long (502) [default: 5s]
    #[arg(long, env = "DRAINPROXY_UPSTREAM_CONNECT_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub upstream_connect_timeout: Option<Duration>,
    /// Largest request head accepted from a client, in bytes; larger gets 431 [default: 65536]
    #[arg(long, env = "DRAINPROXY_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Close a client connection whose request head is not complete this long after its first byte (slowloris) [default: 10s]
    #[arg(long, env = "DRAINPROXY_HEADER_READ_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub header_read_timeout: Option<Duration>,
    /// Close a client keep-alive connection idle this long (keep it above your load balancer's idle timeout) [default: 75s]
    #[arg(long, env = "DRAINPROXY_KEEPALIVE_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub keepalive_timeout: Option<Duration>,
    /// Fail a request (408) whose body stalls this long between reads [default: 60s]
    #[arg(long, env = "DRAINPROXY_BODY_READ_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub body_read_timeout: Option<Duration>,
    /// Answer 504 when the app has not sent a response head within this long (`0` = off) [default: off]
    #[arg(long, env = "DRAINPROXY_UPSTREAM_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub upstream_timeout: Option<Duration>,
    /// Most client connections served at once; further ones wait in the listen backlog [default: 16384]
    #[arg(long, env = "DRAINPROXY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// PEM certificate chain: terminate TLS on the listener (needs --tls-key)
    #[arg(long, env = "DRAINPROXY_TLS_CERT", value_name = "PEM")]
    #[serde(skip)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for --tls-cert
    #[arg(long, env = "DRAINPROXY_TLS_KEY", value_name = "PEM")]
    #[serde(skip)]
    pub tls_key: Option<PathBuf>,
    /// `[tls]` in the TOML file: `cert` and `key`.
    #[arg(skip)]
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Drop a TLS client that has not finished its handshake within this long [default: 10s]
    #[arg(long, env = "DRAINPROXY_TLS_HANDSHAKE_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub tls_handshake_timeout: Option<Duration>,
    /// The pod's terminationGracePeriodSeconds: warn at start if drain-delay + grace + 2s exceeds it
    #[arg(long, env = "DRAINPROXY_TERMINATION_GRACE_PERIOD", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub termination_grace_period: Option<Duration>,
    /// Log format on stderr: `text` or `json` [default: text]
    #[arg(long, env = "DRAINPROXY_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log level or filter (`info`, `debug`, `drainproxy=debug`); without it RUST_LOG is used [default: info]
    #[arg(long, env = "DRAINPROXY_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Supervisor mode: the app is ready only once this path answers 2xx (not just once its port accepts)
    #[arg(long, env = "DRAINPROXY_UPSTREAM_READY_PATH", value_name = "PATH")]
    pub upstream_ready_path: Option<String>,
    /// Supervisor mode: how long a request that arrives before the app is ready waits for it (then 503) [default: 10s]
    #[arg(long, env = "DRAINPROXY_UPSTREAM_WAIT", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub upstream_wait: Option<Duration>,
    /// Supervisor mode: the signal that stops the app once the drain is over [default: SIGTERM]
    #[arg(long, env = "DRAINPROXY_APP_STOP_SIGNAL", value_name = "SIGNAL", value_parser = crate::supervisor::parse_signal)]
    #[serde(default, deserialize_with = "signal")]
    pub app_stop_signal: Option<nix::sys::signal::Signal>,
    /// Supervisor mode: how long the app may take to exit after its stop signal, then SIGKILL [default: 10s]
    #[arg(long, env = "DRAINPROXY_APP_GRACE", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    pub app_grace: Option<Duration>,
}

/// The `[tls]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where a listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

/// Where the app is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// `host:port`; the host is resolved at connect time.
    Tcp { host: String, port: u16 },
    /// A Unix domain socket.
    Unix(PathBuf),
}

/// The admin listener, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAddr {
    On(ListenAddr),
    Off,
}

/// The validated settings the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: UpstreamAddr,
    pub grace: Duration,
    pub drain_delay: Duration,
    pub idle_grace: Duration,
    pub admin: Option<SocketAddr>,
    pub upstream_connect_timeout: Duration,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_read_timeout: Duration,
    /// `None`: wait for the app as long as the client does.
    pub upstream_timeout: Option<Duration>,
    pub max_connections: usize,
    pub tls: Option<TlsFiles>,
    pub tls_handshake_timeout: Duration,
    pub termination_grace_period: Option<Duration>,
    pub log_format: LogFormat,
    /// `None`: fall back to RUST_LOG, then `info`.
    pub log_level: Option<String>,
    /// Supervisor mode: the app to run.
    pub app: Option<AppSpec>,
    pub upstream_ready_path: Option<String>,
    pub upstream_wait: Duration,
    app_stop_signal: nix::sys::signal::Signal,
    app_grace: Duration,
}

impl Config {
    /// Turns on supervisor mode with the app's command line.
    pub fn set_app(&mut self, program: std::ffi::OsString, args: Vec<std::ffi::OsString>) {
        self.app = Some(AppSpec { program, args, stop_signal: self.app_stop_signal, grace: self.app_grace });
    }

    /// The warning to log at start when the platform would SIGKILL the drain.
    pub fn grace_period_warning(&self) -> Option<String> {
        let period = self.termination_grace_period?;
        let needed = self.drain_delay + self.grace + Duration::from_secs(2);
        (needed > period).then(|| {
            format!(
                "drain-delay ({:?}) + grace ({:?}) + 2s = {:?} exceeds the termination grace period ({:?}): the drain would be SIGKILLed",
                self.drain_delay, self.grace, needed, period
            )
        })
    }

    /// A config with every default, for the given addresses (used by tests and `run` callers).
    pub fn new(listen: SocketAddr, upstream: UpstreamAddr) -> Self {
        Self::merge(RawSettings {
            listen: Some(ListenAddr(listen)),
            upstream: Some(upstream),
            ..RawSettings::default()
        })
        .expect("listen and upstream given")
    }

    /// Applies defaults; the only setting without one is `upstream`.
    fn merge(raw: RawSettings) -> Result<Self, String> {
        let upstream = raw.upstream.ok_or_else(|| {
            "no upstream: give --upstream, DRAINPROXY_UPSTREAM or `upstream` in the config file".to_string()
        })?;
        let file_tls = raw.tls.unwrap_or_default();
        let tls = match (raw.tls_cert.or(file_tls.cert), raw.tls_key.or(file_tls.key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err("--tls-cert needs --tls-key (or `key` under [tls])".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert (or `cert` under [tls])".into()),
        };
        for (name, value) in [
            ("header-read-timeout", raw.header_read_timeout),
            ("keepalive-timeout", raw.keepalive_timeout),
            ("body-read-timeout", raw.body_read_timeout),
            ("tls-handshake-timeout", raw.tls_handshake_timeout),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        if raw.max_connections == Some(0) {
            return Err("max-connections must be at least 1".into());
        }
        let upstream_ready_path = raw.upstream_ready_path;
        if upstream_ready_path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            return Err("upstream-ready-path must start with '/'".into());
        }
        let max_header_bytes = raw.max_header_bytes.unwrap_or(64 * 1024);
        // hyper's HTTP/1 parser needs room for at least one read buffer.
        if max_header_bytes < 8192 {
            return Err(format!("max-header-bytes must be at least 8192, got {max_header_bytes}"));
        }
        Ok(Config {
            listen: raw.listen.unwrap_or(ListenAddr(([0, 0, 0, 0], 8080).into())).0,
            upstream,
            grace: raw.grace.unwrap_or(Duration::from_secs(5)),
            drain_delay: raw.drain_delay.unwrap_or(Duration::ZERO),
            idle_grace: raw.idle_grace.unwrap_or(Duration::from_secs(1)),
            admin: match raw.admin.unwrap_or(AdminAddr::On(ListenAddr(([127, 0, 0, 1], 9901).into()))) {
                AdminAddr::On(a) => Some(a.0),
                AdminAddr::Off => None,
            },
            upstream_connect_timeout: raw.upstream_connect_timeout.unwrap_or(Duration::from_secs(5)),
            max_header_bytes,
            header_read_timeout: raw.header_read_timeout.unwrap_or(Duration::from_secs(10)),
            keepalive_timeout: raw.keepalive_timeout.unwrap_or(Duration::from_secs(75)),
            body_read_timeout: raw.body_read_timeout.unwrap_or(Duration::from_secs(60)),
            upstream_timeout: raw.upstream_timeout.filter(|d| !d.is_zero()),
            max_connections: raw.max_connections.unwrap_or(16384),
            tls,
            tls_handshake_timeout: raw.tls_handshake_timeout.unwrap_or(Duration::from_secs(10)),
            termination_grace_period: raw.termination_grace_period,
            log_format: raw.log_format.unwrap_or(LogFormat::Text),
            log_level: raw.log_level,
            app: None,
            upstream_ready_path,
            upstream_wait: raw.upstream_wait.unwrap_or(Duration::from_secs(10)),
            app_stop_signal: raw.app_stop_signal.unwrap_or(nix::sys::signal::Signal::SIGTERM),
            app_grace: raw.app_grace.unwrap_or(Duration::from_secs(10)),
        })
    }
}

impl RawSettings {
    /// Fills every setting not given here from `lower`.
    fn or(self, lower: RawSettings) -> RawSettings {
        RawSettings {
            listen: self.listen.or(lower.listen),
            upstream: self.upstream.or(lower.upstream),
            grace: self.grace.or(lower.grace),
            drain_delay: self.drain_delay.or(lower.drain_delay),
            idle_grace: self.idle_grace.or(lower.idle_grace),
            admin: self.admin.or(lower.admin),
            upstream_connect_timeout: self.upstream_connect_timeout.or(lower.upstream_connect_timeout),
            max_header_bytes: self.max_header_bytes.or(lower.max_header_bytes),
            header_read_timeout: self.header_read_timeout.or(lower.header_read_timeout),
            keepalive_timeout: self.keepalive_timeout.or(lower.keepalive_timeout),
            body_read_timeout: self.body_read_timeout.or(lower.body_read_timeout),
            upstream_timeout: self.upstream_timeout.or(lower.upstream_timeout),
            max_connections: self.max_connections.or(lower.max_connections),
            // Flags and env name files one by one; the file's [tls] table is the lowest source.
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls: self.tls.or(lower.tls),
            tls_handshake_timeout: self.tls_handshake_timeout.or(lower.tls_handshake_timeout),
            termination_grace_period: self.termination_grace_period.or(lower.termination_grace_period),
            log_format: self.log_format.or(lower.log_format),
            log_level: self.log_level.or(lower.log_level),
            upstream_ready_path: self.upstream_ready_path.or(lower.upstream_ready_path),
            upstream_wait: self.upstream_wait.or(lower.upstream_wait),
            app_stop_signal: self.app_stop_signal.or(lower.app_stop_signal),
            app_grace: self.app_grace.or(lower.app_grace),
        }
    }
}

/// Reads a TOML config file; the error names the file and, for syntax and
/// value errors, the line.
pub fn load_file(path: &std::path::Path) -> Result<RawSettings, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse_file(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

fn parse_file(text: &str) -> Result<RawSettings, String> {
    toml::from_str(text).map_err(|e| {
        // toml's messages can span lines; an error is one line on stderr.
        let msg = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        match e.span() {
            Some(span) => {
                let line = text[..span.start].matches('\n').count() + 1;
                format!("line {line}: {msg}")
            }
            None => msg,
        }
    })
}

/// Parses the command line, environment and config file; on any error prints
/// one line and exits 2, before anything is bound.
pub fn from_args() -> Invocation {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return Invocation::Client(command);
    }
    let file = match &cli.config {
        Some(path) => load_file(path).unwrap_or_else(|msg| fail(msg)),
        None => RawSettings::default(),
    };
    let mut config = Config::merge(cli.settings.or(file)).unwrap_or_else(|msg| fail(msg));
    let mut app = cli.app.into_iter();
    if let Some(program) = app.next() {
        config.set_app(program, app.collect());
    }
    Invocation::Serve(Box::new(config))
}

fn fail(msg: String) -> ! {
    Cli::command().error(ErrorKind::ValueValidation, msg).exit()
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
        full.parse::<SocketAddr>()
            .map(ListenAddr)
            .map_err(|_| format!("invalid address {s:?}: expected :PORT, IP:PORT or [IPv6]:PORT"))
    }
}

impl FromStr for AdminAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            Ok(AdminAddr::Off)
        } else {
            s.parse().map(AdminAddr::On)
        }
    }
}

impl FromStr for UpstreamAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("invalid upstream {s:?}: empty socket path"));
            }
            return Ok(UpstreamAddr::Unix(PathBuf::from(path)));
        }
        let bad = || format!("invalid upstream {s:?}: expected :PORT, HOST:PORT, http://HOST:PORT or unix:/PATH");
        let rest = match s.split_once("://") {
            Some(("http", rest)) => rest.strip_suffix('/').unwrap_or(rest),
            Some((scheme, _)) => {
                return Err(format!("invalid upstream {s:?}: scheme {scheme:?} is not supported, use http://"))
            }
            None => s,
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = match host {
            "" => "127.0.0.1",
            h => h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h),
        };
        if host.contains(['/', ' ']) || port == 0 {
            return Err(bad());
        }
        Ok(UpstreamAddr::Tcp { host: host.to_string(), port })
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            UpstreamAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            UpstreamAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    s.parse()
}
fn parse_upstream(s: &str) -> Result<UpstreamAddr, String> {
    s.parse()
}
fn parse_admin(s: &str) -> Result<AdminAddr, String> {
    s.parse()
}

/// `5s`, `500ms`, `1m30s`; a bare `0` means zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e}): expected e.g. 5s, 500ms, 1m30s"))
}

fn from_str<'de, D: Deserializer<'de>, T: FromStr<Err = String>>(d: D) -> Result<Option<T>, D::Error> {
    String::deserialize(d)?.parse().map(Some).map_err(de::Error::custom)
}

fn signal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<nix::sys::signal::Signal>, D::Error> {
    crate::supervisor::parse_signal(&String::deserialize(d)?).map(Some).map_err(de::Error::custom)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parse_duration(&String::deserialize(d)?).map(Some).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_file_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let raw = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
                Config::merge(raw).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no example config in {dir}");
    }

    #[test]
    fn addresses() {
        assert_eq!(":8080".parse::<ListenAddr>().unwrap().0, "0.0.0.0:8080".parse().unwrap());
        assert_eq!("[::1]:80".parse::<ListenAddr>().unwrap().0, "[::1]:80".parse().unwrap());
        assert!("8080".parse::<ListenAddr>().is_err());
        let tcp = |h: &str, p| UpstreamAddr::Tcp { host: h.into(), port: p };
        assert_eq!(":3000".parse::<UpstreamAddr>().unwrap(), tcp("127.0.0.1", 3000));
        assert_eq!("app:3000".parse::<UpstreamAddr>().unwrap(), tcp("app", 3000));
        assert_eq!("http://app:3000/".parse::<UpstreamAddr>().unwrap(), tcp("app", 3000));
        assert_eq!("[::1]:3000".parse::<UpstreamAddr>().unwrap(), tcp("::1", 3000));
        assert_eq!("unix:/run/app.sock".parse::<UpstreamAddr>().unwrap(), UpstreamAddr::Unix("/run/app.sock".into()));
        assert!("https://app:3000".parse::<UpstreamAddr>().is_err());
        assert!("app".parse::<UpstreamAddr>().is_err());
        assert_eq!("off".parse::<AdminAddr>().unwrap(), AdminAddr::Off);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn file_errors_name_the_line() {
        let err = parse_file("upstream = \":3000\"\n\ngrace = \"soon\"\n").unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        let err = parse_file("upstream = \":3000\"\nlisten_port = 1\n").unwrap_err();
        assert!(err.starts_with("line 2:") && err.contains("listen_port"), "{err}");
    }

    #[test]
    fn defaults() {
        let c = Config::new("127.0.0.1:1".parse().unwrap(), ":3000".parse().unwrap());
        let raw = Config::merge(RawSettings { upstream: c.upstream.clone().into(), ..Default::default() }).unwrap();
        assert_eq!(raw.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(raw.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(
            (raw.grace, raw.drain_delay, raw.idle_grace),
            (Duration::from_secs(5), Duration::ZERO, Duration::from_secs(1))
        );
        assert_eq!(raw.log_format, LogFormat::Text);
        assert!(raw.tls.is_none() && raw.grace_period_warning().is_none());
    }

    #[test]
    fn tls_table_and_flags() {
        let file = parse_file("upstream = \":1\"\n[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n").unwrap();
        let c = Config::merge(RawSettings::default().or(file)).unwrap();
        assert_eq!(c.tls, Some(TlsFiles { cert: "/c.pem".into(), key: "/k.pem".into() }));
        let half = RawSettings { tls_cert: Some("/c".into()), upstream: ":1".parse().ok(), ..Default::default() };
        assert!(Config::merge(half).unwrap_err().contains("--tls-key"));
    }

    #[test]
    fn termination_grace_period_warning() {
        let mut c = Config::new("127.0.0.1:1".parse().unwrap(), ":3000".parse().unwrap());
        c.termination_grace_period = Some(Duration::from_secs(7));
        assert!(c.grace_period_warning().is_none(), "5s + 0s + 2s fits in 7s");
        c.drain_delay = Duration::from_secs(1);
        assert!(c.grace_period_warning().unwrap().contains("SIGKILL"));
    }

    #[test]
    fn flags_beat_file() {
        let file = parse_file("upstream = \":1\"\ngrace = \"9s\"\nidle_grace = \"2s\"\n").unwrap();
        let flags = RawSettings { grace: Some(Duration::from_secs(1)), ..Default::default() };
        let c = Config::merge(flags.or(file)).unwrap();
        assert_eq!(c.grace, Duration::from_secs(1));
        assert_eq!(c.idle_grace, Duration::from_secs(2));
        assert_eq!(c.drain_delay, Duration::ZERO);
    }
}
