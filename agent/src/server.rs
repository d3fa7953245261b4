//! The endpoint registry's gRPC service (`septum.agent.v1.EndpointRegistry`) over the agent's
//! unix socket, which only root can open (directory 0700, socket 0600).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use septum_proto::agent::v1::{self as pb, endpoint_registry_server::EndpointRegistry};

use crate::agent::Agent;

/// The service, sharing the agent with the datastore watcher.
#[derive(Debug, Clone)]
pub struct RegistryService {
    agent: Arc<Mutex<Agent>>,
}

impl RegistryService {
    /// A service over `agent`.
    pub fn new(agent: Arc<Mutex<Agent>>) -> Self {
        Self { agent }
    }
}

#[tonic::async_trait]
impl EndpointRegistry for RegistryService {
    async fn add(&self, req: Request<pb::AddRequest>) -> Result<Response<pb::AddResponse>, Status> {
        let mut a = self.agent.lock().await;
        a.add(req.into_inner()).map(Response::new)
    }

    async fn del(&self, req: Request<pb::DelRequest>) -> Result<Response<pb::DelResponse>, Status> {
        let mut a = self.agent.lock().await;
        a.del(req.into_inner()).map(Response::new)
    }

    async fn check(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let a = self.agent.lock().await;
        a.check(req.into_inner()).map(Response::new)
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcResponse>, Status> {
        let mut a = self.agent.lock().await;
        a.gc(req.into_inner()).map(Response::new)
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let a = self.agent.lock().await;
        let st = a.status();
        Ok(Response::new(pb::StatusResponse {
            ready: a.ready(),
            message: if st.synced {
                format!("enforcing, generation {}", st.generation)
            } else {
                "no good model yet: new pods stay in init-deny".to_string()
            },
        }))
    }
}

/// Binds the socket: creates its directory (0700), removes a stale socket, binds, and restricts
/// the socket to root (0600).
pub fn bind_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}
