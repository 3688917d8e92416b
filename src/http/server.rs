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
    pub facilitator: Arc<Facilitator>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    sampler: tokio::task::JoinHandle<()>,
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
            Some(d) => Some(Dial::start(config, d, Some(facilitator.clone())).await?),
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
                max_concurrent_settles: config.server.max_concurrent_settles,
                settle_deadline: std::time::Duration::from_secs(
                    config.settlement.settle_timeout_seconds + 30,
                ),
            },
        );
        if let Some(dial) = &dial {
            app = app.merge(dial.router());
        }
        // Request ids, spans and request metrics for every route, Dial's included.
        let app = crate::http::ops::observed(app, metrics.clone());
        let listen = config.server.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // The peer address feeds Dial's per-IP rate limit.
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
        });
        let sampler = Metrics::spawn_sampler(&metrics);
        Ok(RunningServer {
            addr,
            facilitator,
            shutdown: Some(tx),
            task,
            sampler,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes in-flight requests, and returns.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
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
