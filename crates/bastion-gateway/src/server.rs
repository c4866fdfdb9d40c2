//! Serving: takes an already-bound listener and a shutdown signal, so tests
//! run the real server on `127.0.0.1:0`.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::http::{HostPolicy, router};

/// Serves until `shutdown` resolves, then stops accepting, lets requests
/// in flight finish, and stops the upstream servers.
pub async fn run(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let (hosts, origins) = {
        let rt = gw.runtime();
        (rt.config.http.allowed_hosts.clone(), rt.config.http.allowed_origins.clone())
    };
    let app = router(gw.clone(), HostPolicy::new(local, &hosts, &origins));
    // Streams are written frame by frame: without TCP_NODELAY, Nagle's
    // algorithm and delayed ACKs would hold each one back ~40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // Long-lived streams (GET, legacy SSE, subscriptions) would hold a
    // graceful shutdown open forever: ending the sessions ends them.
    let closing = gw.clone();
    let shutdown = async move {
        shutdown.await;
        closing.sessions.close_all();
    };
    let result = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await;
    gw.shutdown().await;
    result
}
