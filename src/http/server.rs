//! Running the service: bind, serve, stop on a signal.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::facilitator::{BuildError, Facilitator};
use crate::merchant::{Dial, DialStartError};
use crate::telemetry::Metrics;

/// A running x402d: its address and a handle to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The admin listener's address, when `server.admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub facilitator: Arc<Facilitator>,
    /// Dial, when `[dial]` is configured.
    pub dial: Option<Arc<Dial>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    admin_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    sampler: tokio::task::JoinHandle<()>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// Serves `app` on `listener` until `stop` turns true.
fn spawn_serve(
    listener: TcpListener,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        // The peer address feeds the per-IP rate limits.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Dial(#[from] DialStartError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl RunningServer {
    /// Builds the service from `config` and starts serving on `config.server.listen` (port 0 picks one).
    pub async fn start(config: &Config) -> Result<RunningServer, ServeError> {
        // The app's one registry: created here, passed to every room that records into it.
        let metrics = Arc::new(Metrics::new());
        let facilitator = Arc::new(Facilitator::start_with(config, metrics.clone()).await?);
        let dial = match &config.dial {
            Some(d) => Some(
                Dial::start(
                    config,
                    d,
                    Some(facilitator.clone()),
                    Some(metrics.registry()),
                )
                .await?,
            ),
            None => None,
        };
        let local = dial
            .as_ref()
            .map(|d| d.discovery_items())
            .unwrap_or_default();
        let mut app = crate::http::router(
            facilitator.clone(),
            crate::http::RouterOptions {
                body_limit: config.server.body_limit_bytes,
                local_discovery: local,
                ip_limit_per_minute: config.server.rate_limit_per_minute,
                limits: crate::limits::Limits::new(
                    config.server.redis_url.as_deref(),
                    &config.server.redis_namespace,
                ),
                max_concurrent_settles: config.server.max_concurrent_settles,
                settle_deadline: std::time::Duration::from_secs(
                    config.settlement.settle_timeout_seconds + 30,
                ),
                ops_routes: config.server.admin_listen.is_none(),
                dial: dial.clone(),
            },
        );
        if let Some(dial) = &dial {
            app = app.merge(dial.router());
        }
        // Request ids, spans and request metrics for every route, Dial's included.
        let app = crate::http::ops::observed(app, metrics.clone());
        let (listener, addr) = bind(config.server.listen).await?;
        let (shutdown, stop) = tokio::sync::watch::channel(false);
        let (admin_addr, admin_task) = match config.server.admin_listen {
            None => (None, None),
            Some(admin) => {
                let (l, a) = bind(admin).await?;
                let app = crate::http::ops::observed(
                    crate::http::admin_router(facilitator.clone(), dial.clone()),
                    metrics.clone(),
                );
                (Some(a), Some(spawn_serve(l, app, stop.clone())))
            }
        };
        let task = spawn_serve(listener, app, stop);
        let sampler = Metrics::spawn_sampler(&metrics);
        Ok(RunningServer {
            addr,
            admin_addr,
            facilitator,
            dial,
            shutdown,
            task,
            admin_task,
            sampler,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin listener's URL, when there is one.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_addr.map(|a| format!("http://{a}"))
    }

    /// Stops accepting, finishes in-flight requests, and returns.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
        if let Some(t) = self.admin_task.as_mut() {
            let _ = t.await;
        }
        self.sampler.abort();
    }

    /// Serves until `signal` resolves, then stops gracefully.
    pub async fn serve_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        tokio::select! {
            r = &mut self.task => return r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            _ = signal => {}
        }
        self.stop().await;
        Ok(())
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
