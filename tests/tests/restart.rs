//! Restart: the loader process exits and a new one starts, while probes run. Enforcement must
//! hold throughout (no allowed connection fails, no denied one succeeds) and the new loader
//! must adopt the pinned maps and swap its programs into the existing links.
//!
//! The loader processes are this test binary re-executed with `SEPTUM_RESTART_CHILD` set: the
//! child loads the pinned datapath in the node namespace, writes the same maps, attaches, prints
//! whether it adopted the pins, and exits.

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use septum_datapath::AttachMode;
use septum_datapath_common::{ACTION_ALLOW, DIRECTION_INGRESS, ENDPOINT_F_INGRESS_POLICY, proto};
use septum_tests::{
    fixture::{PinRoot, enforce, topology_maps},
    netns::Topology,
    reference::MapContents,
    traffic::{Outcome, tcp_echo_server, tcp_probe},
    world::{Build as _, Rule},
};

const CHILD_ENV: &str = "SEPTUM_RESTART_CHILD";

fn maps_for(topo: &Topology) -> MapContents {
    let mut maps = topology_maps(
        topo,
        &[3000, 3001, 3002],
        &[0, ENDPOINT_F_INGRESS_POLICY, 0],
    );
    maps.isolate(3001, DIRECTION_INGRESS, 1);
    maps.add_rule(&Rule {
        subject: 3001,
        direction: DIRECTION_INGRESS,
        peer: 3000,
        protocol: Some(proto::TCP),
        ports: Some((8080, 8080)),
        action: ACTION_ALLOW,
        precedence: 100,
        cookie: 5,
    });
    maps
}

/// The child: adopt the pins named in the environment and exit.
#[test]
#[ignore = "the loader child process of the restart tests, run by them"]
fn restart_child() {
    let spec =
        std::env::var(CHILD_ENV).expect("run by the restart tests, with SEPTUM_RESTART_CHILD");
    let mut parts = spec.split(';');
    let (node, pin_root, mode) = (
        parts.next().expect("node"),
        parts.next().expect("pins"),
        parts.next().expect("mode"),
    );
    let topo =
        Topology::adopt(node, parts.map(|p| p.to_string()).collect()).expect("adopt topology");
    let maps = maps_for(&topo);
    let pins = PinRoot(pin_root.into());
    let dp = enforce(&topo, &maps, mode.parse().expect("mode"), &pins).expect("enforce");
    println!("SEPTUM-CHILD adopted={}", dp.adopted());
    // Keep the pins: the next loader adopts them.
    std::mem::forget(pins);
    std::mem::forget(topo);
}

fn run_child(topo: &Topology, pins: &PinRoot, mode: &str) -> bool {
    let pods: Vec<String> = topo.pods.iter().map(|p| p.ns.name.clone()).collect();
    let spec = format!(
        "{};{};{};{}",
        topo.node.name,
        pins.0.display(),
        mode,
        pods.join(";")
    );
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "restart_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .output()
        .expect("run the child loader");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child loader failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.contains("SEPTUM-CHILD adopted=true")
}

fn restart_keeps_enforcing(mode: &str) {
    let topo = Topology::new(3).expect("topology");
    let pins = PinRoot::new(&topo.tag);
    let _srv = tcp_echo_server(&topo.pods[1].ns, 8080);
    assert!(
        !run_child(&topo, &pins, mode),
        "the first loader creates the pins"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([
        AtomicU32::new(0),
        AtomicU32::new(0),
        AtomicU32::new(0),
        AtomicU32::new(0),
    ]);
    std::thread::scope(|s| {
        for (client, expect) in [(0usize, Outcome::Ok), (2usize, Outcome::Timeout)] {
            let (stop, counts, topo) = (stop.clone(), counts.clone(), &topo);
            s.spawn(move || {
                let dst = topo.pods[1].ip(false);
                while !stop.load(Ordering::Relaxed) {
                    let got =
                        tcp_probe(&topo.pods[client].ns, dst, 8080, Duration::from_millis(400));
                    let slot = if client == 0 { 0 } else { 2 };
                    counts[slot + usize::from(got != expect)].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_millis(600));
        let adopted = run_child(&topo, &pins, mode);
        std::thread::sleep(Duration::from_millis(400));
        let adopted_again = run_child(&topo, &pins, mode);
        std::thread::sleep(Duration::from_millis(600));
        stop.store(true, Ordering::Relaxed);
        assert!(
            adopted && adopted_again,
            "later loaders adopt the pinned maps"
        );
    });
    let [ok, allowed_failed, denied, denied_passed] =
        [0, 1, 2, 3].map(|i| counts[i].load(Ordering::Relaxed));
    assert!(ok >= 5, "the allowed probe ran throughout ({ok} successes)");
    assert!(
        denied >= 2,
        "the denied probe ran throughout ({denied} timeouts)"
    );
    assert_eq!(
        allowed_failed, 0,
        "an allowed connection failed across the restart"
    );
    assert_eq!(
        denied_passed, 0,
        "a denied connection got through across the restart"
    );
    // With no loader running at all, enforcement still holds.
    assert_eq!(
        tcp_probe(
            &topo.pods[2].ns,
            topo.pods[1].ip(false),
            8080,
            Duration::from_millis(400)
        ),
        Outcome::Timeout
    );
    assert_eq!(
        tcp_probe(
            &topo.pods[0].ns,
            topo.pods[1].ip(false),
            8080,
            Duration::from_millis(400)
        ),
        Outcome::Ok
    );
}

#[test]
fn enforcement_holds_across_a_loader_restart_tcx() {
    if !septum_tests::kernel::at_least(6, 6, "TCX links") {
        return;
    }
    restart_keeps_enforcing("tcx");
}

#[test]
fn enforcement_holds_across_a_loader_restart_clsact() {
    restart_keeps_enforcing("netlink");
}

/// A fresh pin root with this layout's directory created in it, and the object's maps loaded
/// (not pinned), to pin one there the way an older loader would have left it.
fn pin_dir_and_maps() -> (PinRoot, PathBuf, aya::Ebpf) {
    let tag = septum_tests::netns::unique_tag();
    let pins = PinRoot::new(&tag);
    let dir = pins
        .0
        .join(format!("v{}", septum_datapath_common::LAYOUT_VERSION));
    std::fs::create_dir_all(&dir).expect("pin dir");
    let ebpf = aya::EbpfLoader::new()
        .map_max_entries(septum_datapath_common::map_names::CONNTRACK, 1024)
        .load(septum_datapath::OBJECT)
        .expect("load the object's maps");
    (pins, dir, ebpf)
}

#[test]
fn a_pinned_map_with_another_layout_is_refused_not_reused() {
    let (pins, dir, mut ebpf) = pin_dir_and_maps();
    // A stale "policy" map: a map of another shape (the endpoints hash) pinned under the
    // policy map's name, as an older layout would have left it.
    let stale = ebpf
        .take_map(septum_datapath_common::map_names::ENDPOINTS)
        .expect("endpoints map");
    stale
        .pin(dir.join(septum_datapath_common::map_names::POLICY))
        .expect("pin the stale map");
    drop(ebpf);
    let err = septum_datapath::Datapath::load(&septum_datapath::DatapathOptions {
        pin_root: Some(pins.0.clone()),
        attach_mode: AttachMode::Tcx,
        ..Default::default()
    })
    .expect_err("a stale pin must not be reused");
    assert!(err.to_string().contains("refusing to reuse"), "{err}");
    let dp = septum_datapath::Datapath::load(&septum_datapath::DatapathOptions {
        pin_root: Some(pins.0.clone()),
        attach_mode: AttachMode::Tcx,
        migrate: true,
        ..Default::default()
    })
    .expect("migrate replaces the stale pin");
    drop(dp);
}

/// The conntrack map of layout 1 (`septum_ct_v1`: its entries have the same size as version
/// 2's but another meaning, node-local flows keyed at both points) left pinned by an older
/// loader: refused with a clear error, removed when migrating, never adopted.
#[test]
fn a_retired_conntrack_pin_is_refused_then_migrated() {
    let (pins, dir, mut ebpf) = pin_dir_and_maps();
    let old = ebpf
        .take_map(septum_datapath_common::map_names::CONNTRACK)
        .expect("conntrack map");
    let retired = dir.join(septum_datapath_common::map_names::RETIRED[0]);
    old.pin(&retired).expect("pin the old conntrack map");
    drop(ebpf);
    let opts = septum_datapath::DatapathOptions {
        pin_root: Some(pins.0.clone()),
        attach_mode: AttachMode::Tcx,
        ..Default::default()
    };
    let err = septum_datapath::Datapath::load(&opts).expect_err("a retired pin must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("refusing to reuse") && msg.contains("septum_ct_v1"),
        "{msg}"
    );
    let dp = septum_datapath::Datapath::load(&septum_datapath::DatapathOptions {
        migrate: true,
        ..opts
    })
    .expect("migrate removes the retired pin");
    assert!(!retired.exists());
    assert!(
        dir.join(septum_datapath_common::map_names::CONNTRACK)
            .exists()
    );
    drop(dp);
}
