//! `bastion serve`: start-up posture checks, logging and traces, reload on
//! change and on SIGHUP (TLS certificates included), graceful shutdown on
//! SIGINT/SIGTERM (the spans still queued sent to the collector last).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bastion_core::config::{Config, TracingConfig};
use bastion_gateway::auth::ApiKeyAuthenticator;
use bastion_gateway::gateway::{Authentication, Gateway};
use bastion_gateway::telemetry::Pipeline;
use bastion_gateway::tls::Tls;
use clap::Args;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ServeArgs {
    /// Override the config's `listen` address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve without authentication. Refused on a non-loopback address.
    #[arg(long)]
    insecure_no_auth: bool,
    /// This replica's name when several serve as one gateway: it starts
    /// every session id (`NAME.…`), so that the load balancer sends a
    /// session's requests to the replica that holds it (see
    /// deploy/nginx/bastion.conf). Letters, digits, '-' and '_', at most
    /// 32.
    #[arg(long, env = "BASTION_REPLICA", value_parser = parse_replica)]
    replica: Option<String>,
}

fn parse_replica(name: &str) -> Result<String, String> {
    let ok =
        !name.is_empty() && name.len() <= 32 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok { Ok(name.to_string()) } else { Err("letters, digits, '-' and '_', at most 32 characters".into()) }
}

/// The log, and with a `tracing` section the traces beside it (the
/// pipeline returned is flushed at exit). Without one, the log alone: no
/// layer is added to what every request passes through.
fn init_logging(
    format: Option<&str>,
    level: Option<&str>,
    tracing: Option<&TracingConfig>,
) -> anyhow::Result<Option<Pipeline>> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BASTION_LOG").unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    use std::io::IsTerminal;
    if let Some(config) = tracing {
        let pipeline = bastion_gateway::telemetry::logs::install(
            config,
            filter,
            format == Some("json"),
            std::io::stderr().is_terminal(),
        )
        .map_err(anyhow::Error::msg)?;
        tracing::info!(
            collector = config.otlp.as_deref().map(bastion_core::redact::url).as_deref().unwrap_or("none"),
            sample_ratio = config.sample_ratio,
            "tracing on"
        );
        return Ok(Some(pipeline));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == Some("json") {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
    Ok(None)
}

pub async fn serve(config_path: &Path, log_format: Option<&str>, args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(config_path)?;
    let traces = init_logging(
        log_format.or(config.log.format.as_deref()),
        config.log.level.as_deref(),
        config.tracing.as_ref(),
    )?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if args.insecure_no_auth && !config.listen.ip().is_loopback() {
        bail!(
            "refusing to serve without authentication on {}: --insecure-no-auth is allowed on loopback addresses only",
            config.listen
        );
    }
    // Certificates are read before anything else starts: a bad file stops
    // the start-up with a message naming it.
    let tls = Tls::from_config(&config, config_path)?.map(Arc::new);
    match bastion_gateway::descriptors::raise_limit() {
        Ok((soft, hard)) => tracing::info!(
            soft,
            hard,
            headroom = config.http.descriptor_headroom,
            "open-file limit; client connections are refused with 503 when fewer than the headroom remain"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    let data_dir = config.data_dir(config_path);
    let pepper = bastion_gateway::auth::load_pepper(&config, config_path)?;
    // Pending migrations are applied here, as `bastion migrate` would.
    if let Some(w) = crate::migrate::password_warning(&config) {
        tracing::warn!("{w}");
    }
    let store_settings = crate::migrate::settings(&config, config_path)?;
    let store = bastion_store::Store::open(&store_settings)
        .await
        .with_context(|| format!("opening the store at {store_settings}"))?;
    let authentication = if args.insecure_no_auth {
        tracing::warn!(
            "AUTHENTICATION IS DISABLED (--insecure-no-auth): anyone who can reach {} can use every server",
            config.listen
        );
        Authentication::Disabled
    } else {
        Authentication::ApiKeys(ApiKeyAuthenticator::new(store.clone(), pepper, config.auth.key_cache_ttl))
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    // `/metrics` on a listener of its own, when configured (and on).
    let metrics_listener = match config.metrics.listen.filter(|_| config.metrics.enabled) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics.listen)"))?,
        ),
        None => None,
    };
    let metrics_at = match &metrics_listener {
        Some(l) => Some(format!("http://{}/metrics", l.local_addr()?)),
        None if config.metrics.enabled => {
            Some(format!("{}://{local}/metrics", if tls.is_some() { "https" } else { "http" }))
        }
        None => None,
    };
    let keys_exist = !store.list_keys(None).await?.is_empty();
    let shutdown = CancellationToken::new();
    let gw = Gateway::start(config.clone(), config_path, store, authentication, shutdown.clone())?;
    if let Some(replica) = &args.replica {
        gw.sessions.set_replica(replica);
    }
    // Calls are refused until the lockdown state is known: read it before
    // saying ready (its follower keeps trying if this fails).
    if let Err(e) = gw.limits.refresh_lockdown(&gw.store).await {
        tracing::warn!(error = %e, "cannot read the lockdown state yet; calls are refused until it can be");
    }
    tracing::info!(
        listen = %local,
        tls = tls.is_some(),
        client_certificates = tls.as_ref().is_some_and(|t| t.asks_for_client_certificates()),
        servers = config.enabled_servers().count(),
        data_dir = %data_dir.display(),
        store = %store_settings,
        metrics = %metrics_at.as_deref().unwrap_or("off"),
        "bastion ready"
    );
    print_connect_help(local, &config, args.insecure_no_auth, keys_exist, config_path);

    tokio::spawn(watch_config(gw.clone(), tls.clone(), config_path.to_path_buf(), shutdown.clone()));
    let signal = shutdown.clone();
    let stopping = gw.clone();
    tokio::spawn(async move {
        wait_for_stop().await;
        tracing::info!("shutting down");
        signal.cancel();
        // A second signal: no more waiting for the calls in flight.
        wait_for_stop().await;
        tracing::warn!("second stop signal: calls in flight are ended now");
        stopping.drain.expire();
    });
    if let Some(l) = metrics_listener {
        let (gw, stop) = (gw.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = bastion_gateway::server::run_metrics(l, gw, async move { stop.cancelled().await }).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let stop = shutdown.clone();
    let audit = gw.audit.clone();
    let (limits, store) = (gw.limits.clone(), gw.store.clone());
    bastion_gateway::server::run(listener, gw, tls, async move { stop.cancelled().await }).await?;
    // Quota counts not yet in the store are added now.
    if tokio::time::timeout(Duration::from_secs(5), limits.flush(&store)).await.is_err() {
        tracing::error!("quota counts could not be saved at exit");
    }
    // What was audited reaches the store (or the spool) before the exit.
    if let Some(audit) = audit
        && tokio::time::timeout(std::time::Duration::from_secs(10), audit.flush()).await.is_err()
    {
        tracing::error!(waiting = audit.depth(), "audit records still waiting at exit; they were not written");
    }
    // Last: the spans of everything above.
    if let Some(traces) = traces {
        traces.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Reloads on SIGHUP and when the file changes. A file that does not
/// validate is reported and the running configuration is kept. TLS
/// certificates, key and client CA are read again with every reload; files
/// that cannot be used are reported and the running ones kept.
async fn watch_config(gw: Arc<Gateway>, tls: Option<Arc<Tls>>, path: PathBuf, shutdown: CancellationToken) {
    use notify::{RecursiveMode, Watcher};
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(8);
    // The config file and the policy files it names, followed as the
    // config changes.
    let names: Arc<std::sync::Mutex<Vec<std::ffi::OsString>>> = Default::default();
    let watch_tx = tx.clone();
    let seen = names.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev.kind.is_access() {
                return;
            }
            let names = seen.lock().unwrap_or_else(|p| p.into_inner());
            if ev.paths.iter().any(|p| p.file_name().is_some_and(|f| names.iter().any(|n| n == f))) {
                let _ = watch_tx.try_send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
            None
        }
    };
    let mut dirs = std::collections::BTreeSet::new();
    let mut follow = |config: &Config| {
        let files: Vec<PathBuf> = std::iter::once(path.clone())
            .chain(config.policy.files.iter().map(|f| config.resolve_path(&path, f)))
            .collect();
        *names.lock().unwrap_or_else(|p| p.into_inner()) =
            files.iter().filter_map(|f| f.file_name().map(|n| n.to_os_string())).collect();
        for f in &files {
            let dir = f.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
            if let Some(w) = watcher.as_mut()
                && !dirs.contains(&dir)
            {
                match w.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        dirs.insert(dir);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch for changes; reload with SIGHUP")
                    }
                }
            }
        }
    };
    follow(&gw.runtime().config);
    let mut hup = signal(SignalKind::hangup()).expect("signal handler");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => tracing::info!("SIGHUP: reloading configuration"),
            Some(()) = rx.recv() => {
                // Editors write in several steps: let them finish.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                tracing::info!("configuration file changed: reloading");
            }
        }
        match Config::load(&path) {
            Ok(new) => {
                if new.listen != gw.runtime().config.listen {
                    tracing::warn!("`listen` changed: it takes effect on restart");
                }
                if new.tracing != gw.runtime().config.tracing {
                    tracing::warn!("`tracing` changed: it takes effect on restart");
                }
                reload_tls(tls.as_deref(), &new, &path);
                follow(&new);
                gw.apply_config(new).await;
            }
            Err(e) => tracing::error!(error = %e, "configuration not reloaded; the running one is kept"),
        }
    }
}

/// New connections get the certificates as they are now in their files.
fn reload_tls(tls: Option<&Tls>, new: &Config, path: &Path) {
    match (tls, &new.tls) {
        (Some(tls), Some(_)) => match tls.reload(new, path) {
            Ok(()) => tracing::info!("TLS certificates reloaded: new connections use them"),
            Err(e) => tracing::error!(error = %e, "TLS certificates not reloaded; the running ones are kept"),
        },
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            tracing::warn!("`tls` turned on or off: it takes effect on restart");
        }
    }
}

fn print_connect_help(local: SocketAddr, config: &Config, no_auth: bool, keys_exist: bool, config_path: &Path) {
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local}/mcp");
    let auth = if no_auth {
        String::new()
    } else {
        ",\n        \"headers\": { \"Authorization\": \"Bearer <YOUR_KEY>\" }".into()
    };
    eprintln!("\nBastion is serving {} server(s) at {url}", config.enabled_servers().count());
    if !no_auth && !keys_exist {
        eprintln!(
            "No API key exists yet. Give yourself a role, then create a key (printed once):\n    bastion --config {0} users add $USER --role admin\n    bastion --config {0} keys create --user $USER",
            config_path.display()
        );
    }
    if !no_auth && config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
        eprintln!("Clients may authenticate with a certificate issued by `tls.client_ca` instead of a key.");
    }
    eprintln!(
        "Client configuration (Cursor, Claude Code, VS Code):\n{{\n  \"mcpServers\": {{\n    \"bastion\": {{\n        \"type\": \"http\",\n        \"url\": \"{url}\"{auth}\n    }}\n  }}\n}}\n"
    );
}
