//! The accept loop: hyper's HTTP/1 connections, each with a header read timeout that starts
//! when the connection is accepted (a socket that sends nothing, an h2c preface, or headers
//! trickled in slowly are all cut after `server.header_read_timeout_ms`, and so is a
//! keep-alive connection idle that long between requests); at most `server.max_connections`
//! open at once (past it a new connection is closed at once, so descriptors cannot run out);
//! each request given its peer address; and a graceful stop that lets requests in flight finish.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tower::Service;

use crate::metrics as m;

/// How a server's connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop` turns true; then waits (at most 30 s) for the
/// connections' requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of descriptors and the like: wait a moment rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    // At the cap: closed at once (the descriptor is freed now, not later).
                    metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
                    drop(stream);
                    continue;
                };
                metrics::gauge!(m::OPEN_CONNECTIONS).increment(1.0);
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    let mut app = app.clone();
                    async move {
                        let res: Result<_, Infallible> = app.call(req.map(axum::body::Body::new)).await;
                        res
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                    metrics::gauge!(m::OPEN_CONNECTIONS).decrement(1.0);
                });
            }
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    // Requests in flight finish; idle keep-alive connections close.
    let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
    Ok(())
}

/// Raises the process's soft limit on open descriptors to its hard limit (where allowed) and
/// returns the soft limit now in force, or `None` where it cannot be read.
pub fn raise_descriptor_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        Some(lim.rlim_cur as u64)
    }
}
