//! A client channel to one of the agent's APIs over its unix socket.
//!
//! The socket is connected by hand before gRPC starts, so that "the agent is not running" (no
//! socket, connection refused, no answer within the timeout) is a plain I/O error a caller can
//! act on, apart from a failed HTTP/2 handshake.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Why [`connect`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The socket could not be connected: the agent is not running (or not accepting).
    Unreachable(std::io::Error),
    /// The HTTP/2 connection could not be set up over the socket.
    Handshake(tonic::transport::Error),
}

/// A channel over the unix socket at `socket`; fails fast when nothing listens there.
pub async fn connect(socket: &Path, timeout: Duration) -> Result<Channel, ConnectError> {
    let stream = tokio::time::timeout(timeout, UnixStream::connect(socket))
        .await
        .map_err(|_| ConnectError::Unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(ConnectError::Unreachable)?;
    // The channel asks its connector for a transport; it gets the stream connected above, once.
    // A reconnect attempt (after the agent closed the connection) fails, which the call in
    // progress reports as transient.
    let stream = Arc::new(Mutex::new(Some(stream)));
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let taken = stream.lock().ok().and_then(|mut s| s.take());
        async move {
            taken.map(TokioIo::new).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the agent connection was closed",
                )
            })
        }
    });
    // The authority is never resolved: the connector ignores the URI.
    Endpoint::from_static("http://septum-agent")
        .connect_timeout(timeout)
        .connect_with_connector(connector)
        .await
        .map_err(ConnectError::Handshake)
}
