//! Leader election against the scripted API server's Leases (compare-and-swap on
//! resourceVersion, 409 on a lost race): one replica leads, the other waits; when the leader
//! stops renewing, the other takes over after the Lease expires and the old leader, on its next
//! renewal, learns it lost and stops.

mod fake_api;

use std::time::{Duration, Instant};

use fake_api::FakeApi;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use septum_controller::leader::{self, LeaseSettings};

fn settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry: Duration::from_millis(100),
        ..LeaseSettings::new("septum-system", "septum-controller", identity)
    }
}

#[tokio::test]
async fn one_replica_leads_and_the_other_takes_over_when_it_stops_renewing() {
    let (api, client) = FakeApi::start(&[]);
    let leases: Api<Lease> = Api::namespaced(client, "septum-system");
    let (a, b) = (settings("replica-a"), settings("replica-b"));

    leader::acquire(&leases, &a).await;
    let lease = api
        .lease("septum-controller")
        .expect("the Lease was created");
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
    assert!(
        !leader::try_acquire_or_renew(&leases, &b)
            .await
            .expect("API"),
        "a live Lease is not taken"
    );
    // The leader renews: same holder, later renewTime, no transition.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        leader::try_acquire_or_renew(&leases, &a)
            .await
            .expect("API")
    );
    let renewed = api.lease("septum-controller").expect("lease");
    assert_eq!(renewed["spec"]["holderIdentity"], "replica-a");
    assert_ne!(renewed["spec"]["renewTime"], lease["spec"]["renewTime"]);
    assert_eq!(renewed["spec"]["acquireTime"], lease["spec"]["acquireTime"]);

    // A stops renewing (it hangs); B takes over once the Lease has expired, not before.
    let t = Instant::now();
    leader::acquire(&leases, &b).await;
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "taken over after {:?}, before the Lease expired",
        t.elapsed()
    );
    let taken = api.lease("septum-controller").expect("lease");
    assert_eq!(taken["spec"]["holderIdentity"], "replica-b");
    assert_eq!(taken["spec"]["leaseTransitions"], 1);

    // A wakes up: its hold ends at the first renewal, because B holds the Lease.
    tokio::time::timeout(Duration::from_secs(5), leader::hold(&leases, &a))
        .await
        .expect("the old leader learns it lost");
    assert_eq!(
        api.lease("septum-controller").expect("lease")["spec"]["holderIdentity"],
        "replica-b"
    );
}

#[tokio::test]
async fn two_replicas_racing_for_a_free_lease_get_exactly_one_leader() {
    for _ in 0..20 {
        let (api, client) = FakeApi::start(&[]);
        let leases: Api<Lease> = Api::namespaced(client, "septum-system");
        let (a, b) = (settings("replica-a"), settings("replica-b"));
        let (ra, rb) = tokio::join!(
            leader::try_acquire_or_renew(&leases, &a),
            leader::try_acquire_or_renew(&leases, &b)
        );
        let (ra, rb) = (ra.expect("API"), rb.expect("API"));
        assert!(ra ^ rb, "exactly one leader: {ra} {rb}");
        let holder =
            api.lease("septum-controller").expect("lease")["spec"]["holderIdentity"].clone();
        assert_eq!(holder, if ra { "replica-a" } else { "replica-b" });
    }
}
