//! Regression tests for objects the Kubernetes API server accepts and septum once refused or
//! misread (issue 7): Service port names as DNS-1123 labels, `policyTypes: []`, Service ports
//! identified by number *and* protocol, named targetPorts that resolve on some backends only,
//! the API server's defaulting of empty protocols and targetPorts, and a closed stdout pipe.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

const FILE: &str = "tests/data/api_fidelity.yaml";

fn explain(from: &str, to: &str, port: &str, protocol: Option<&str>) -> serde_json::Value {
    let mut args = vec![
        "explain",
        "--manifests",
        FILE,
        "--from",
        from,
        "--to",
        to,
        "--port",
        port,
        "--output",
        "json",
    ];
    if let Some(p) = protocol {
        args.extend(["--protocol", p]);
    }
    let r = common::run(&args);
    assert_eq!(r.code, 0, "septum {args:?} failed: {}", r.err);
    serde_json::from_str(&r.out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.out))
}

/// The per-backend explanations of a Service flow (one object when there is one backend).
fn backends(v: &serde_json::Value) -> Vec<serde_json::Value> {
    match v["backends"].as_array() {
        Some(list) => list.clone(),
        None => vec![v.clone()],
    }
}

#[test]
fn every_object_the_api_server_accepts_loads_without_error() {
    let r = common::run(&["policy", "check", FILE]);
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.out, r.err);
    assert!(!r.err.contains("error"), "{}", r.err);
}

#[test]
fn a_service_port_is_chosen_by_number_and_protocol() {
    for (protocol, target) in [("UDP", 5354), ("TCP", 5353)] {
        let v = explain("web/client", "service/dns/resolver", "53", Some(protocol));
        let list = backends(&v);
        assert_eq!(list.len(), 2, "{v:#}");
        for b in list {
            assert_eq!(b["protocol"], protocol, "{b:#}");
            assert_eq!(
                b["port"], target,
                "53/{protocol} forwards to {target}: {b:#}"
            );
        }
    }
}

#[test]
fn a_long_service_port_name_selects_its_port_and_protocol() {
    let v = explain(
        "web/client",
        "service/dns/resolver",
        "service-port-udp-53",
        None,
    );
    for b in backends(&v) {
        assert_eq!(b["protocol"], "UDP", "{b:#}");
        assert_eq!(b["port"], 5354, "{b:#}");
        assert_eq!(b["verdict"], "allow", "udp-dns-only allows dns-udp: {b:#}");
    }
    // The FlowPolicy names the TCP port by its long name: allowed from the web namespace.
    let v = explain(
        "web/client",
        "service/dns/resolver",
        "service-port-tcp-53",
        None,
    );
    for b in backends(&v) {
        assert_eq!(b["protocol"], "TCP", "{b:#}");
        assert_eq!(b["port"], 5353, "{b:#}");
        assert_eq!(b["verdict"], "allow", "{b:#}");
    }
    // A name with a protocol it does not have is no port of the Service.
    let r = common::run(&[
        "explain",
        "--manifests",
        FILE,
        "--from",
        "web/client",
        "--to",
        "service/dns/resolver",
        "--port",
        "service-port-udp-53",
        "--protocol",
        "TCP",
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.err.contains("has no port service-port-udp-53/TCP"),
        "{}",
        r.err
    );
}

#[test]
fn a_pod_without_the_named_target_port_is_not_an_endpoint() {
    let v = explain("web/client", "service/dns/resolver", "metrics", None);
    let list = backends(&v);
    assert_eq!(list.len(), 1, "only resolver-1 has a `metrics` port: {v:#}");
    assert_eq!(list[0]["to"], "pod/dns/resolver-1", "{v:#}");
    assert_eq!(list[0]["port"], 9153, "{v:#}");
}

#[test]
fn a_service_port_without_endpoints_says_the_flow_has_no_destination() {
    let r = common::run(&[
        "explain",
        "--manifests",
        FILE,
        "--from",
        "web/client",
        "--to",
        "service/dns/resolver",
        "--port",
        "admin",
    ]);
    assert_ne!(r.code, 0, "{}", r.out);
    assert!(r.err.contains("has no endpoints"), "{}", r.err);
    assert!(r.err.contains("no destination"), "{}", r.err);
    assert!(!r.err.contains("panicked"), "{}", r.err);
}

#[test]
fn empty_policy_types_is_a_default_deny_for_ingress() {
    let v = explain("web/client", "dns/other", "80", Some("TCP"));
    assert_eq!(v["verdict"], "deny", "{v:#}");
    assert_eq!(v["ingress"]["policed"], true, "{v:#}");
    assert_eq!(
        v["egress"]["policed"], false,
        "no egress rules, so no egress type: {v:#}"
    );
}

#[test]
fn a_defaulted_target_port_forwards_to_the_service_port() {
    let v = explain("web/client", "service/dns/resolver", "8080", Some("TCP"));
    for b in backends(&v) {
        assert_eq!(b["port"], 8080, "targetPort 0 means port: {b:#}");
    }
}

#[test]
fn objects_the_api_server_refuses_are_refused() {
    let dir = std::env::temp_dir().join(format!("septum-api-fidelity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (name, yaml, needle) in [
        (
            "lowercase-protocol",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80, protocol: tcp}]}]\n",
            "unknown protocol \"tcp\"",
        ),
        (
            "numeric-string-port",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: \"80\"}]}]\n",
            "port name \"80\" is invalid",
        ),
        (
            "three-policy-types",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress, Ingress]\n",
            "more than two policyTypes",
        ),
        (
            "long-container-port-name",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec:\n  containers: [{name: c, image: i, ports: [{name: service-port-tcp-80, containerPort: 80}]}]\n",
            "port name \"service-port-tcp-80\" is invalid",
        ),
    ] {
        let f = dir.join(format!("{name}.yaml"));
        std::fs::write(&f, yaml).expect("write");
        let r = common::run(&["policy", "check", f.to_str().expect("utf8 path")]);
        assert_ne!(r.code, 0, "{name} must be refused: {}", r.out);
        assert!(
            r.err.contains(needle),
            "{name}: missing {needle:?} in:\n{}",
            r.err
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_closed_stdout_pipe_ends_explain_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_septum"))
        .args([
            "explain",
            "--manifests",
            FILE,
            "--from",
            "web/client",
            "--to",
            "service/dns/resolver",
            "--port",
            "53",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn septum");
    // Close the reading end before septum writes (it loads the manifests first), as `| head`
    // does once it has read enough.
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "nothing on stderr for a closed pipe: {err}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}"
    );
}
