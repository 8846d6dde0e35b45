//! The `trackedge` command: `serve`, `check-config`, `sign`, and the operator's
//! `completions` and `man`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use trackedge::config::{Config, LogFormat, Overrides};
use trackedge::token::{self, Claims, Kind};
use trackedge::{keys, server, shutdown};

#[derive(Parser)]
#[command(
    name = "trackedge",
    version,
    about = "A tracking edge for email opens, clicks, downloads and unsubscribes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ConfigArgs),
    /// Validate the configuration and exit (non-zero with the offending key).
    CheckConfig(ConfigArgs),
    /// Print a signed tracking URL.
    Sign(Box<SignArgs>),
    /// Print shell completions, e.g. `trackedge completions bash > /usr/share/bash-completion/completions/trackedge`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), or with --dir write one page per command there.
    Man {
        /// Write trackedge.1 and trackedge-<command>.1 into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// Config file [default: config/trackedge.toml, else the embedded default]
    #[arg(long, env = "TRACKEDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides public.addr
    #[arg(long, env = "TRACKEDGE_PUBLIC_ADDR")]
    public_addr: Option<String>,
    /// Overrides admin.addr
    #[arg(long, env = "TRACKEDGE_ADMIN_ADDR")]
    admin_addr: Option<String>,
    /// Overrides data_dir
    #[arg(long, env = "TRACKEDGE_DATA_DIR")]
    data_dir: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            public_addr: self.public_addr.clone(),
            admin_addr: self.admin_addr.clone(),
            data_dir: self.data_dir.clone(),
        };
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

#[derive(Args)]
struct SignArgs {
    /// open | click | download | unsubscribe | sender | trap (a link no person clicks)
    kind: String,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    campaign: String,
    /// The recipient-level message id.
    #[arg(long)]
    message: String,
    /// A stable recipient key (for suppression and erasure).
    #[arg(long)]
    recipient: Option<String>,
    #[arg(long, default_value_t = 0)]
    link: u32,
    /// Where a click or download redirects (http or https only).
    #[arg(long)]
    target: Option<String>,
    /// Overrides public.base_url.
    #[arg(long)]
    base_url: Option<String>,
    /// Lifetime of the URL, e.g. 3600, 90m, 12h, 30d. Default: no expiry.
    #[arg(long)]
    expires_in: Option<String>,
    /// Send time (unix seconds) to carry in the token.
    #[arg(long)]
    sent_at: Option<u64>,
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Once, in words: no backtrace (RUST_BACKTRACE is for panics) and no
            // Debug dump of the error chain.
            eprintln!("Error: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line; a cause whose text the message above it
/// already quotes is not repeated.
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args.load()?),
        Command::CheckConfig(args) => {
            let config = args.load()?;
            let checked = server::check(&config)?;
            let on_off = |on: bool| if on { "on" } else { "off" };
            println!(
                "config ok: public {} admin {} data_dir {} key file {} tls certificates {} geoip {} asn {}",
                config.public.addr,
                config.admin.addr,
                config.data_dir.display(),
                if checked.key_file_exists { "loaded" } else { "generated on first start" },
                checked.tls_certificates,
                on_off(checked.city_db),
                if checked.asn_db { "loaded" } else { "off" },
            );
            Ok(())
        }
        Command::Sign(args) => sign(*args),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "trackedge", &mut script);
            print_all(&script)
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print_all(&page)
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))
        }
    }
}

/// Writes `bytes` to stdout; a reader that stopped early (`| head`) is no error.
fn print_all(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(err).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let prometheus = trackedge::metrics::install()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("trackedge-worker");
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads.get());
    }
    let runtime = runtime.build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (trigger, signal) = shutdown::channel();
        tokio::spawn(async move {
            match shutdown::os_signal().await {
                Ok(name) => tracing::info!(signal = name, "stop requested"),
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for stop signals; stopping")
                }
            }
            trigger.fire();
        });
        server::run(config, prometheus, signal, |bound| {
            // One machine-readable line on stdout for scripts and tests; logs go to stderr.
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(
                stdout,
                "trackedge listening public={} admin={}",
                bound.public, bound.admin
            );
            let _ = stdout.flush();
        })
        .await
    })?;
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn sign(args: SignArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let Some(kind) = Kind::parse(&args.kind) else {
        bail!(
            "unknown kind {:?}: expected open, click, download, unsubscribe, sender or trap",
            args.kind
        );
    };
    let expires_at = match &args.expires_in {
        None => None,
        Some(text) => {
            let seconds = parse_duration_secs(text).with_context(|| {
                format!("--expires-in {text:?}: expected e.g. 3600, 90m, 12h, 30d")
            })?;
            Some(now_secs() + seconds)
        }
    };
    let ring = keys::load(&config.key_file(), config.key_file_is_generated())?;
    let claims = Claims {
        kind,
        tenant: args.tenant,
        campaign: args.campaign,
        message: args.message,
        recipient: args.recipient,
        link: args.link,
        target: args.target,
        expires_at,
        sent_at: args.sent_at,
    };
    let base_url = args.base_url.unwrap_or(config.public.base_url);
    token::check_target(&base_url).map_err(|e| anyhow::anyhow!("--base-url {base_url:?}: {e}"))?;
    println!("{}", token::mint_url(&base_url, &ring, &claims)?);
    Ok(())
}

fn parse_duration_secs(text: &str) -> Option<u64> {
    let (number, unit) = match text.char_indices().last()? {
        (at, 's') => (&text[..at], 1),
        (at, 'm') => (&text[..at], 60),
        (at, 'h') => (&text[..at], 3600),
        (at, 'd') => (&text[..at], 86_400),
        _ => (text, 1),
    };
    number.parse::<u64>().ok()?.checked_mul(unit)
}

fn now_secs() -> u64 {
    trackedge::event::now_ms() / 1000
}
