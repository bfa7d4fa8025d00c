//! The command line of the bundled server: `serve`, `dev`, `send`, `handlers`, `inbox`.
//!
//! A binary is one line: `kinde_webhooks::cli::main(my_handlers::init)`, where `init` is
//! the user's start-up step that builds the application state handlers read.
//!
//! Exit codes: 0 success; 1 the work failed (the server stopped on an error, `send` got a
//! non-2xx answer, the store could not be read, `verify` refused the token); 2 the command line or the configuration
//! is wrong.
//!
//! - `run`: `serve` and `dev`.
//! - `send`: sign and POST events.
//! - `inbox`: list, show, replay and purge stored events.
//! - `verify`: explain a token's verdict step by step.

mod inbox;
mod run;
mod send;
mod verify;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::forward::Forwarders;
use crate::handler::{BoxError, State};
use crate::registry::Registry;
use crate::signing::SigningKey;

/// `println!` that ignores a closed stdout (`inbox list | head`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use out;

/// Where `dev` keeps its signing key unless told otherwise; git-ignored.
pub const DEFAULT_DEV_DIR: &str = ".kinde-dev";
const DEV_KEY_FILE: &str = "signing-key.pem";

/// Receive Kinde webhooks: verify each RS256-signed event and run the handlers registered
/// for its type.
#[derive(Debug, Parser)]
#[command(name = "kinde-webhooks", version, arg_required_else_help = true)]
pub struct Cli {
    /// The configuration file [default: ./config.toml if it exists, else built-in defaults].
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the receiver for a real Kinde tenant (set KINDE_ISSUER_URL).
    Serve,
    /// Run the receiver with a built-in local issuer: no Kinde account needed. Sends one
    /// sample event per bundled handler at start-up, then keeps serving.
    Dev {
        /// Where the dev signing key is kept (created on first run).
        #[arg(long, env = "KINDE_WEBHOOKS_DEV_DIR", hide_env_values = true, default_value = DEFAULT_DEV_DIR)]
        dir: PathBuf,
        /// Do not send the demo events at start-up.
        #[arg(long)]
        no_demo: bool,
    },
    /// Sign a Kinde-shaped event with the dev key and POST it to a receiver.
    Send(SendArgs),
    /// Print the handler table: pattern -> handler (module, or the config section that
    /// built it, e.g. `config: [[forward.nats]]`).
    Handlers,
    /// Validate the configuration and the handler registry, reach the JWKS once, and
    /// connect each forwarder (checking, or creating, its NATS stream as `serve` would).
    Check,
    /// Verify a token here, without sending it to any receiver, and explain the verdict step
    /// by step: header, alg, kid and where the keys came from, signature, payload, and which
    /// routes and handlers would take it. The command for "why does my webhook get 401".
    /// Keys come from the flags, else the config's issuer (fetched), else the dev key of
    /// this folder (`kinde-webhooks dev`'s, for tokens from `send --print`).
    Verify {
        /// The token; `-` or nothing reads it from stdin.
        token: Option<String>,
        /// Fetch the keys from this JWKS URL.
        #[arg(long, conflicts_with_all = ["jwks_file", "issuer"])]
        jwks_url: Option<String>,
        /// Read the keys from this JWKS file.
        #[arg(long, conflicts_with = "issuer")]
        jwks_file: Option<PathBuf>,
        /// Fetch the keys from `<issuer>/.well-known/jwks.json` [default: the config's issuer;
        /// with none, the dev key in .kinde-dev].
        #[arg(long)]
        issuer: Option<String>,
        /// Use the keys of the issuer this route of the config names (routes may each
        /// serve their own Kinde environment).
        #[arg(long, value_name = "PATH", conflicts_with_all = ["jwks_url", "jwks_file", "issuer"])]
        route: Option<String>,
    },
    /// Inspect and operate the durable inbox: list, show, replay, purge.
    #[command(subcommand)]
    Inbox(InboxCommand),
}

/// The arguments of `send`.
#[derive(Debug, Args)]
struct SendArgs {
    /// The event type, e.g. user.created; every known type has sample data. May be
    /// omitted when --payload holds a `type`.
    event_type: Option<String>,
    /// A JSON file (or - for stdin) holding the whole claims object; `event_id`,
    /// `timestamp` and `source` are filled in when missing.
    #[arg(long, value_name = "FILE")]
    payload: Option<String>,
    /// Where to POST [default: the first route of the config on its bind address].
    #[arg(long)]
    url: Option<String>,
    /// The webhook-id header [default: a fresh one per event].
    #[arg(long)]
    webhook_id: Option<String>,
    /// The event_id claim [default: the payload's, else a fresh one per event].
    #[arg(long)]
    event_id: Option<String>,
    /// Send this many events (fresh event_id and webhook-id each, unless given).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// How many requests are in flight at once with --repeat.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Print the signed tokens, one per line, instead of sending them (for load tools).
    /// Creates the dev key when there is none yet, as `dev` would.
    #[arg(long)]
    print: bool,
    /// Where the dev signing key is kept.
    #[arg(long, env = "KINDE_WEBHOOKS_DEV_DIR", hide_env_values = true, default_value = DEFAULT_DEV_DIR)]
    dir: PathBuf,
    /// Sign with this PKCS#8 PEM private key instead of the dev key.
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// The `kid` to put in the header [default: the key's colon-hex fingerprint].
    #[arg(long)]
    kid: Option<String>,
}

#[derive(Debug, Subcommand)]
enum InboxCommand {
    /// Stored events, newest first.
    List {
        /// Only events with this status: pending, failed, dead, done or skipped.
        #[arg(long)]
        status: Option<String>,
        /// Only events of this type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// JSON lines for scripts.
        #[arg(long)]
        json: bool,
    },
    /// One event: payload, per-handler status, attempts, errors and timings.
    Show {
        /// The event_id.
        event_id: String,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Make handlers run again: one event (all handlers that now match), every
    /// dead-lettered job, or every skipped event. A running server picks them up; without
    /// one, this command runs them itself.
    Replay {
        /// The event_id to replay.
        #[arg(required_unless_present_any = ["dead", "skipped"], conflicts_with_all = ["dead", "skipped"])]
        event_id: Option<String>,
        /// Every dead-lettered (event, handler).
        #[arg(long, conflicts_with = "skipped")]
        dead: bool,
        /// Every event stored as skipped (for handlers added since).
        #[arg(long)]
        skipped: bool,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Delete finished and skipped events received before a given age.
    Purge {
        /// The age, like 30d or 12h.
        #[arg(long, value_name = "DURATION")]
        older_than: String,
        /// Dead-lettered events too.
        #[arg(long)]
        dead: bool,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Parse the command line and run the command. `init` builds the application state once
/// at start-up (a database pool, an HTTP client) from the loaded configuration.
pub fn main<F>(init: F) -> ExitCode
where
    F: AsyncFn(&Config) -> Result<State, BoxError>,
{
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the async runtime: {e}")),
    };
    let config = cli.config;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => run::serve(config, init).await,
            Command::Dev { dir, no_demo } => run::dev(config, &dir, !no_demo, init).await,
            Command::Send(args) => send::send(config, args).await,
            Command::Handlers => handlers(config),
            Command::Inbox(command) => inbox::run(config, command, init).await,
            Command::Check => verify::check(config).await,
            Command::Verify {
                token,
                jwks_url,
                jwks_file,
                issuer,
                route,
            } => {
                let keys = match (jwks_url, jwks_file, issuer) {
                    (Some(url), _, _) => Some(verify::KeySource::Url(url)),
                    (_, Some(file), _) => Some(verify::KeySource::File(file)),
                    (_, _, Some(issuer)) => Some(verify::KeySource::Url(format!(
                        "{}/.well-known/jwks.json",
                        issuer.trim_end_matches('/')
                    ))),
                    _ => None,
                };
                verify::verify(config, token, keys, route).await
            }
        }
    })
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// The explicit path, else `./config.toml` when it exists, else none (defaults).
fn config_path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| Some(PathBuf::from("config.toml")).filter(|p| p.exists()))
}

fn load_config(explicit: Option<PathBuf>) -> Result<Config, String> {
    Config::read(config_path(explicit).as_deref()).map_err(|e| e.to_string())
}

/// The handlers registered through `inventory` plus those `config` builds (forwarders,
/// not started yet: see [`Forwarders::start`]).
fn build_registry(config: &Config) -> Result<(Registry, Forwarders), String> {
    let forwarders = Forwarders::from_config(config).map_err(|e| e.to_string())?;
    let registry = Registry::builder()
        .inventory()
        .configured(forwarders.handlers())
        .build()
        .map_err(|e| e.to_string())?;
    Ok((registry, forwarders))
}

/// The dev signing key in `dir`, generated and saved on first use.
fn dev_key(dir: &Path, create: bool) -> Result<SigningKey, String> {
    let path = dir.join(DEV_KEY_FILE);
    if path.exists() {
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return SigningKey::from_pem(&pem, None)
            .map_err(|e| format!("{}: {e}; delete it to make a new one", path.display()));
    }
    if !create {
        return Err(format!(
            "no dev signing key at {}: start `kinde-webhooks dev` first (from this folder), or point --dir \
             (env KINDE_WEBHOOKS_DEV_DIR) at the folder `dev` printed",
            path.display()
        ));
    }
    let key = SigningKey::generate().map_err(|e| e.to_string())?;
    let pem = key.to_pem().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Written whole to a private temporary file, then linked into place: two processes
    // starting together agree on one key (the loser reads the winner's).
    let temp = dir.join(format!("{DEV_KEY_FILE}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&temp)
        .and_then(|mut file| std::io::Write::write_all(&mut file, pem.as_bytes()))
        .and_then(|()| std::fs::hard_link(&temp, &path));
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return dev_key(dir, false),
        Err(e) => return Err(format!("cannot write {}: {e}", path.display())),
    }
    Ok(key)
}

/// `0.0.0.0:3000` is reachable as `127.0.0.1:3000`.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

fn handlers(config: Option<PathBuf>) -> ExitCode {
    let registry = match load_config(config).and_then(|c| build_registry(&c)) {
        Ok((r, _)) => r,
        Err(e) => return fail(2, e),
    };
    let table = registry.table();
    let width = table.keys().map(String::len).max().unwrap_or(7).max(7);
    out!("{:width$}  HANDLER (MODULE)", "PATTERN");
    for (pattern, names) in table {
        for name in names {
            let module = registry
                .entries()
                .iter()
                .find(|e| *e.name == *name)
                .map(|e| e.module.as_str())
                .unwrap_or("");
            out!("{pattern:width$}  {name} ({module})");
        }
    }
    ExitCode::SUCCESS
}
