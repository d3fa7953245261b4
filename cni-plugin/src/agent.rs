//! The client side of the agent's endpoint registry (`septum.agent.v1.EndpointRegistry`), over
//! the agent's unix socket.
//!
//! The socket is connected by hand before gRPC starts, so that "the agent is not running" (no
//! socket, connection refused) is a plain I/O error the commands can act on: ADD fails closed
//! with "try again later", DEL queues itself on disk, STATUS reports "not available". Every call
//! carries a deadline, both as the `grpc-timeout` header (the agent can give up in time) and as a
//! local timeout (a wedged agent cannot hang the runtime).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use septum_proto::agent::v1::{
    AddRequest, AddResponse, CheckRequest, CheckResponse, DelRequest, DelResponse, GcRequest,
    GcResponse, StatusRequest, StatusResponse, endpoint_registry_client::EndpointRegistryClient,
};
use tonic::{Code, transport::Channel};

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket could not be connected: the agent is not running (or not accepting).
    #[error("cannot connect to the septum agent at {socket:?}")]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/2 connection could not be set up over the socket.
    #[error("cannot speak gRPC to the septum agent at {socket:?}")]
    Handshake {
        /// The socket path.
        socket: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent did not answer in time.
    #[error("the septum agent did not answer {rpc} within {after:?}")]
    Timeout {
        /// The call.
        rpc: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The agent answered with an error status.
    #[error("the septum agent failed {rpc}")]
    Status {
        /// The call.
        rpc: &'static str,
        /// The agent's status.
        #[source]
        status: tonic::Status,
    },
}

impl AgentError {
    /// True when retrying later may succeed: the agent is down, restarting, busy or slow.
    /// False when the agent understood the request and refused it.
    pub fn is_transient(&self) -> bool {
        match self {
            AgentError::Unreachable { .. }
            | AgentError::Handshake { .. }
            | AgentError::Timeout { .. } => true,
            // Unknown is how tonic reports a connection that broke mid-call.
            AgentError::Status { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Unknown
            ),
        }
    }
}

/// A connection to the agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    client: EndpointRegistryClient<Channel>,
}

impl AgentClient {
    /// Connects to the agent's socket; fails fast when nothing listens there.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let channel = septum_proto::unix::connect(socket, timeout)
            .await
            .map_err(|e| match e {
                septum_proto::unix::ConnectError::Unreachable(source) => AgentError::Unreachable {
                    socket: socket.to_path_buf(),
                    source,
                },
                septum_proto::unix::ConnectError::Handshake(source) => AgentError::Handshake {
                    socket: socket.to_path_buf(),
                    source,
                },
            })?;
        Ok(Self {
            client: EndpointRegistryClient::new(channel),
        })
    }

    /// Add; waits until the agent has attached the endpoint or `timeout` passes.
    pub async fn add(
        &mut self,
        req: AddRequest,
        timeout: Duration,
    ) -> Result<AddResponse, AgentError> {
        let mut client = self.client.clone();
        call("Add", timeout, req, |r| async move { client.add(r).await }).await
    }

    /// Del.
    pub async fn del(
        &mut self,
        req: DelRequest,
        timeout: Duration,
    ) -> Result<DelResponse, AgentError> {
        let mut client = self.client.clone();
        call("Del", timeout, req, |r| async move { client.del(r).await }).await
    }

    /// Check.
    pub async fn check(
        &mut self,
        req: CheckRequest,
        timeout: Duration,
    ) -> Result<CheckResponse, AgentError> {
        let mut client = self.client.clone();
        call(
            "Check",
            timeout,
            req,
            |r| async move { client.check(r).await },
        )
        .await
    }

    /// Gc.
    pub async fn gc(
        &mut self,
        req: GcRequest,
        timeout: Duration,
    ) -> Result<GcResponse, AgentError> {
        let mut client = self.client.clone();
        call("Gc", timeout, req, |r| async move { client.gc(r).await }).await
    }

    /// Status.
    pub async fn status(&mut self, timeout: Duration) -> Result<StatusResponse, AgentError> {
        let mut client = self.client.clone();
        call("Status", timeout, StatusRequest {}, |r| async move {
            client.status(r).await
        })
        .await
    }
}

async fn call<Req, Resp, F, Fut>(
    rpc: &'static str,
    timeout: Duration,
    req: Req,
    f: F,
) -> Result<Resp, AgentError>
where
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut request = tonic::Request::new(req);
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, f(request)).await {
        Err(_) => Err(AgentError::Timeout {
            rpc,
            after: timeout,
        }),
        Ok(Err(status)) if status.code() == Code::DeadlineExceeded => Err(AgentError::Timeout {
            rpc,
            after: timeout,
        }),
        Ok(Err(status)) => Err(AgentError::Status { rpc, status }),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}
