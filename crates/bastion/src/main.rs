//! `bastion`: the gateway and its administration commands.
#![forbid(unsafe_code)]

mod admin;
mod audit;
mod keys;
mod lockdown;
mod migrate;
mod policy;
mod secrets;
mod serve;
mod supply_chain;
mod tools;
mod users;

use std::ffi::OsString;
use std::path::PathBuf;

use bastion_gateway::upstream::guard;
use clap::{Parser, Subcommand};

/// The allocator. The C library's takes a lock when one thread frees what
/// another allocated, which a gateway does for every request (a response
/// built on one worker and written on another, an audit record built on
/// the request path and freed by the writer); mimalloc frees into the
/// owning thread's heap without one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "bastion", version, about = "A secure gateway for the Model Context Protocol")]
struct Cli {
    /// Configuration file (YAML or JSON).
    #[arg(long, global = true, env = "BASTION_CONFIG", default_value = "bastion.yaml")]
    config: PathBuf,
    /// Log format: text or json (default: the config's `log.format`, else text).
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Runtime worker threads (default: half the CPUs available to the
    /// process, at least one). The gateway shares its machine with the
    /// stdio servers it runs and with the kernel's network work, and each
    /// extra worker adds cross-thread wake-ups to every proxied call; one
    /// worker proxies well over 10,000 calls/s.
    #[arg(long, global = true, env = "BASTION_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Manage users kept in the store: role and groups.
    #[command(subcommand)]
    Users(users::UsersCommand),
    /// Local administrator accounts (password and second factor).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Secrets for servers' `env` and `headers`, sealed in the vault.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Apply the store's pending schema migrations, or with --check only
    /// report them (serve applies them at start too).
    Migrate(migrate::MigrateArgs),
    /// The audit trail: verify its hash chains, export, search and tail it.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Pinned tools and prompts: list, diff, approve, reject, forget; and
    /// the poisoning scan of the configured servers.
    #[command(subcommand)]
    Tools(tools::ToolsCommand),
    /// Refuse calls to every server, or to one, until lifted; and show
    /// the lockdowns in force.
    #[command(subcommand)]
    Lockdown(lockdown::LockdownCommand),
    /// Check the access policies and try decisions.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The process a stdio server runs under (started by the gateway itself).
    #[command(name = guard::SUBCOMMAND, hide = true, disable_help_flag = true)]
    ChildGuard {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<OsString>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file without serving, and report stdio
    /// servers whose launcher (npx, uvx, pipx run, docker run…) fetches
    /// what it runs without an exact version, and executables that do not
    /// match their sha256 pin.
    Check {
        /// The file to check (default: --config).
        file: Option<PathBuf>,
        /// Unpinned launchers, and sha256 pins that cannot be checked
        /// here, are errors rather than warnings (as with
        /// `supply_chain: strict` in the file).
        #[arg(long)]
        strict: bool,
    },
}

/// Half the CPUs this process may use (cgroup quotas included), at least one.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1)
}

fn main() -> std::process::ExitCode {
    // A stdio server's guard: before anything else, so that no option is
    // read from the server's environment and no thread exists.
    let mut raw = std::env::args_os();
    if raw.nth(1).is_some_and(|a| a == guard::SUBCOMMAND) {
        return guard::main(&raw.collect::<Vec<_>>());
    }
    let cli = Cli::parse();
    if let Command::ChildGuard { args } = &cli.command {
        return guard::main(args);
    }
    match std::env::current_exe() {
        Ok(exe) => guard::use_guard(exe),
        Err(e) => eprintln!("warning: cannot find this program's path ({e}); stdio servers run without a guard"),
    }
    // A panic that ends the process takes the stdio servers along. A panic
    // in a runtime worker ends only its task, so the servers are left alone.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        if cfg!(panic = "abort") || std::thread::current().name() == Some("main") {
            guard::kill_all_children();
        }
    }));
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(cli.worker_threads.unwrap_or_else(default_worker_threads).max(1));
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    guard::kill_all_children();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<policy::Denied>() || e.is::<audit::Broken>() || e.is::<tools::Poisoned>() => {
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<policy::Usage>() { std::process::ExitCode::from(2) } else { std::process::ExitCode::FAILURE }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::serve(&cli.config, cli.log_format.as_deref(), args).await,
        Command::Keys(cmd) => keys::run(&cli.config, cmd).await,
        Command::Users(cmd) => users::run(&cli.config, cmd).await,
        Command::Admin(cmd) => admin::run(&cli.config, cmd).await,
        Command::Secrets(cmd) => secrets::run(&cli.config, cmd).await,
        Command::Migrate(args) => migrate::run(&cli.config, args).await,
        Command::Audit(cmd) => audit::run(&cli.config, cmd).await,
        Command::Policy(cmd) => policy::run(&cli.config, cmd).await,
        Command::Tools(cmd) => tools::run(&cli.config, cmd).await,
        Command::Lockdown(cmd) => lockdown::run(&cli.config, cmd).await,
        Command::Config(ConfigCommand::Check { file, strict }) => {
            let path = file.unwrap_or(cli.config);
            let config = bastion_core::config::Config::load(&path)?;
            // The policy files it names are part of it.
            bastion_gateway::access::load_engine(&config, &path)?;
            // The store URL must be one the driver takes (nothing is opened).
            let store = bastion_store::StoreSettings::from_config(&config, &path)?;
            if let Some(w) = migrate::password_warning(&config) {
                eprintln!("warning: {w}");
            }
            let found = supply_chain::check(&config, &path, strict);
            for w in &found.warnings {
                eprintln!("warning: {w}");
            }
            for e in &found.errors {
                eprintln!("error: {e}");
            }
            if !found.errors.is_empty() {
                let n = found.errors.len();
                anyhow::bail!(
                    "{}: {n} supply-chain problem{} (see above)",
                    path.display(),
                    if n == 1 { "" } else { "s" }
                );
            }
            let servers = config.enabled_servers().count();
            eprintln!(
                "{}: valid ({} server{}, {} group{}, listen {}, store {})",
                path.display(),
                servers,
                if servers == 1 { "" } else { "s" },
                config.groups.len(),
                if config.groups.len() == 1 { "" } else { "s" },
                config.listen,
                store
            );
            Ok(())
        }
        // Run by `main` before the runtime is built.
        Command::ChildGuard { .. } => Ok(()),
    }
}
