//! The pooled hyper-util client: a TCP connector that counts connections,
//! rustls with webpki roots (plus an optional extra root), HTTP/1.1 keep-alive
//! and HTTP/2 over ALPN.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::error::LlmError;
use super::metrics::Metrics;

/// Connection pool and transport settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Idle connections kept per host.
    pub max_idle_per_host: usize,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Disable Nagle: requests are small and latency-bound.
    pub tcp_nodelay: bool,
    /// TCP keep-alive probe interval; `None` disables it.
    pub tcp_keepalive: Option<Duration>,
    /// Deadline for one attempt: headers and the whole body.
    pub request_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
    /// Offer HTTP/2 via ALPN on https (HTTP/1.1 is always offered).
    pub http2: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_host: 64,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            tcp_nodelay: true,
            tcp_keepalive: Some(Duration::from_secs(60)),
            // Reasoning models may think for minutes before answering.
            request_timeout: Duration::from_secs(600),
            max_response_bytes: 16 << 20,
            http2: true,
        }
    }
}

/// The hyper-util client type used by `LlmClient`.
pub(crate) type HttpClient = Client<HttpsConnector<CountingConnector>, Full<Bytes>>;

/// Wraps `HttpConnector` to count TCP connections actually opened.
#[derive(Clone, Debug)]
pub struct CountingConnector {
    inner: HttpConnector,
    metrics: Arc<Metrics>,
}

type ConnectFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    <HttpConnector as tower_service::Service<Uri>>::Response,
                    <HttpConnector as tower_service::Service<Uri>>::Error,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<Uri> for CountingConnector {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let conn = fut.await?;
            metrics.connections_opened.fetch_add(1, Relaxed);
            Ok(conn)
        })
    }
}

/// rustls client config: webpki roots plus every certificate in `extra_pem`.
pub fn tls_config(extra_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, LlmError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| LlmError::Config(format!("extra root CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| LlmError::Config(format!("extra root CA rejected: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(LlmError::Config(
                "extra root CA PEM holds no certificate".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LlmError::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds the pooled client.
pub(crate) fn build(
    cfg: &PoolConfig,
    extra_root_pem: Option<&[u8]>,
    metrics: Arc<Metrics>,
) -> Result<HttpClient, LlmError> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(cfg.tcp_nodelay);
    tcp.set_keepalive(cfg.tcp_keepalive);
    tcp.set_connect_timeout(Some(cfg.connect_timeout));
    let counting = CountingConnector {
        inner: tcp,
        metrics,
    };
    let tls = tls_config(extra_root_pem)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let connector = if cfg.http2 {
        https.enable_http2().wrap_connector(counting)
    } else {
        https.wrap_connector(counting)
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(cfg.max_idle_per_host)
        // The idle timeout only works with a pool timer.
        .pool_idle_timeout(cfg.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}
