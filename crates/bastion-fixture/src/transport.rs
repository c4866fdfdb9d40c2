//! Serving a handler over stdio or Streamable HTTP.
//!
//! Over stdio, everything the server writes to stdout passes through one pump
//! task that writes whole lines, so fault-injection output (a deliberately
//! malformed line) can be interleaved with protocol traffic without ever
//! splitting a JSON-RPC message.
//!
//! Over HTTP, the rmcp Streamable HTTP service is mounted at `/mcp` on a
//! loopback listener; the bound address is printed on stdout as one line,
//! `listening on http://HOST:PORT/mcp`, for harnesses that pass port 0.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rmcp::ServerHandler;
use rmcp::ServiceExt as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Serves `handler` on stdin/stdout until the client closes stdin.
pub async fn serve_stdio<H: ServerHandler>(handler: H) -> anyhow::Result<()> {
    let (_tx, rx) = mpsc::unbounded_channel();
    serve_stdio_with_garbage(handler, rx).await
}

/// Serves `handler` on stdin/stdout; each string received on `extra` is
/// written to stdout as one raw line between protocol messages.
pub async fn serve_stdio_with_garbage<H: ServerHandler>(
    handler: H,
    mut extra: mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<()> {
    let (server_side, pump_side) = tokio::io::duplex(64 * 1024);
    let pump = tokio::spawn(async move {
        let mut lines = BufReader::new(pump_side).lines();
        let mut stdout = stdout_writer();
        let mut extra_open = true;
        loop {
            let line = tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => line,
                    _ => break,
                },
                raw = extra.recv(), if extra_open => match raw {
                    Some(raw) => raw,
                    None => {
                        extra_open = false;
                        continue;
                    }
                },
            };
            let mut buf = line.into_bytes();
            buf.push(b'\n');
            if stdout.write_all(&buf).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let service = handler.serve((stdin_reader(), server_side)).await.context("stdio handshake")?;
    service.waiting().await.context("stdio service")?;
    pump.abort();
    Ok(())
}

/// Stdin read by the runtime itself, without a blocking thread, when it is
/// a pipe or a socket (as when a gateway starts the server: Rust and Python
/// give their children pipes, Node socket pairs); otherwise (a terminal, a
/// file) through tokio's stdin, which reads on a blocking thread.
fn stdin_reader() -> Box<Reader> {
    let pipe = |f| tokio::net::unix::pipe::Receiver::from_file(f).ok().map(|p| Box::new(p) as Box<Reader>);
    runtime_stream(std::io::stdin().as_fd(), pipe, |s| Box::new(s)).unwrap_or_else(|| Box::new(tokio::io::stdin()))
}

/// Stdout likewise.
fn stdout_writer() -> Box<Writer> {
    let pipe = |f| tokio::net::unix::pipe::Sender::from_file(f).ok().map(|p| Box::new(p) as Box<Writer>);
    runtime_stream(std::io::stdout().as_fd(), pipe, |s| Box::new(s)).unwrap_or_else(|| Box::new(tokio::io::stdout()))
}

type Reader = dyn tokio::io::AsyncRead + Send + Unpin;
type Writer = dyn tokio::io::AsyncWrite + Send + Unpin;

/// A standard stream as `pipe` or `socket` make it, when it is one of those.
fn runtime_stream<T: ?Sized>(
    fd: std::os::fd::BorrowedFd<'_>,
    pipe: impl FnOnce(std::fs::File) -> Option<Box<T>>,
    socket: impl FnOnce(tokio::net::UnixStream) -> Box<T>,
) -> Option<Box<T>> {
    match std_stream(fd)? {
        (file, Kind::Pipe) => pipe(file),
        (file, Kind::Socket) => unix_stream(file).map(socket),
    }
}

enum Kind {
    Pipe,
    Socket,
}

/// A duplicate of a standard stream's descriptor, when it is a pipe or a socket.
fn std_stream(fd: std::os::fd::BorrowedFd<'_>) -> Option<(std::fs::File, Kind)> {
    use std::os::unix::fs::FileTypeExt as _;
    let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let t = file.metadata().ok()?.file_type();
    let kind = if t.is_fifo() {
        Kind::Pipe
    } else if t.is_socket() {
        Kind::Socket
    } else {
        return None;
    };
    Some((file, kind))
}

fn unix_stream(file: std::fs::File) -> Option<tokio::net::UnixStream> {
    let sock = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(file));
    sock.set_nonblocking(true).ok()?;
    tokio::net::UnixStream::from_std(sock).ok()
}

/// Serves handlers made by `factory` over Streamable HTTP at `http://addr/mcp`.
pub async fn serve_http<H, F>(addr: SocketAddr, factory: F) -> anyhow::Result<()>
where
    H: ServerHandler,
    F: Fn() -> H + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let ct = CancellationToken::new();
    let config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_sse_retry(Some(Duration::from_millis(500)))
        .with_cancellation_token(ct.clone());
    let service = StreamableHttpService::new(move || Ok(factory()), Arc::new(LocalSessionManager::default()), config);
    let router = axum::Router::new().route_service("/mcp", service);

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{local}/mcp")?;
    stdout.flush()?;
    drop(stdout);

    // Answers are written in several pieces (SSE): without TCP_NODELAY,
    // Nagle's algorithm and delayed ACKs add ~40 ms to each.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            ct.cancel();
        })
        .await
        .context("http server")
}
