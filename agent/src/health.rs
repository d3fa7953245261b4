//! The health endpoint: a minimal HTTP/1.1 server on a local TCP address. `GET /healthz` is 200
//! while the agent runs; `GET /readyz` is 200 once a good model is enforced (503 before);
//! `GET /status` is the status report as JSON; `GET /metrics` is Prometheus metrics
//! ([`crate::flows::metrics`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::agent::Agent;
use crate::flows::FlowHub;

/// Serves until the listener fails.
pub async fn serve(
    addr: SocketAddr,
    agent: Arc<Mutex<Agent>>,
    flows: Option<Arc<FlowHub>>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health endpoint listening");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let agent = agent.clone();
        let flows = flows.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (code, body) = match path {
                "/healthz" => (200, "ok\n".to_string()),
                "/readyz" => {
                    if agent.lock().await.synced() {
                        (200, "ready\n".to_string())
                    } else {
                        (503, "not synced\n".to_string())
                    }
                }
                "/status" => {
                    let st = agent.lock().await.status();
                    (200, serde_json::to_string_pretty(&st).unwrap_or_default())
                }
                "/metrics" => {
                    let m = agent.lock().await.metrics();
                    (200, crate::flows::metrics::render(flows.as_deref(), &m))
                }
                _ => (404, "not found\n".to_string()),
            };
            let reason = match code {
                200 => "OK",
                503 => "Service Unavailable",
                _ => "Not Found",
            };
            let ctype = match path {
                "/status" => "application/json",
                "/metrics" => "text/plain; version=0.0.4; charset=utf-8",
                _ => "text/plain; charset=utf-8",
            };
            let resp = format!(
                "HTTP/1.1 {code} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
