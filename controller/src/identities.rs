//! Identity persistence: the engine's allocations live in one cluster-scoped
//! `IdentityAllocation` object ([`OBJECT_NAME`]), read once at start and written (server-side
//! apply, this controller the field manager) whenever numbers were allocated, before any node
//! state using them is published. So a controller restart allocates every number to the same key
//! again and rewrites nothing on the nodes.
//!
//! One object bounds the allocation by the API server's object size limit (about 1.5 MB, some
//! ten thousand records); sharding it by kind is the way out when a cluster gets there.

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use septum_crd::identity_allocation::{IdentityAllocation, IdentityAllocationSpec, OBJECT_NAME};
use septum_policy::InMemoryAllocations;

use crate::context::Error;

/// The field manager of everything this controller writes.
pub const FIELD_MANAGER: &str = "septum-controller";

/// The persisted allocations (empty when the object does not exist yet). A record that does not
/// convert refuses the start: allocating afresh would renumber what agents enforce.
pub async fn load(client: &Client) -> Result<InMemoryAllocations, Error> {
    let api: Api<IdentityAllocation> = Api::all(client.clone());
    match api.get_opt(OBJECT_NAME).await? {
        None => Ok(InMemoryAllocations::new()),
        Some(o) => o
            .spec
            .to_entries()
            .map(InMemoryAllocations::from_entries)
            .map_err(Error::InvalidAllocation),
    }
}

/// Writes the allocations.
pub async fn persist(client: &Client, spec: IdentityAllocationSpec) -> Result<(), Error> {
    let api: Api<IdentityAllocation> = Api::all(client.clone());
    let object = IdentityAllocation::new(OBJECT_NAME, spec);
    api.patch(
        OBJECT_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await?;
    Ok(())
}
