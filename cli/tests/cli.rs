//! End-to-end tests of the `septum` binary over the manifests in tests/data.

mod common;

fn septum(args: &[&str]) -> (i32, String, String) {
    let r = common::run(args);
    (r.code, r.out, r.err)
}

fn json(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = septum(args);
    assert_eq!(code, 0, "septum {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn check_accepts_valid_manifests() {
    let (code, out, err) = septum(&["policy", "check", "tests/data/shop.yaml"]);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.starts_with("ok:"), "{out}");
}

#[test]
fn check_names_file_object_and_field_of_every_problem() {
    let (code, _, err) = septum(&["policy", "check", "tests/data/bad.yaml"]);
    assert_ne!(code, 0);
    for needle in [
        "bad.yaml (document 1): Pod a/p: spec.containers[0].ports[0].containerPort: invalid type",
        "unknown kind \"Gadget\"",
        "NetworkPolicy a/contradictory: spec.ingress[0].ports[0].endPort: endPort 80 is lower than port 90",
        "FlowPolicy a/two-subjects: spec.subject: set exactly one of service, podSelector, serviceAccount",
        "document 5): -: -: a document must be a mapping",
        "NetworkPolicy a/badblock: spec.egress[0].to[0].ipBlock.cidr: invalid CIDR \"10.0.0.0/33\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn check_reports_unreadable_yaml_without_panicking() {
    let dir = std::env::temp_dir().join(format!("septum-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join("broken.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n",
    )
    .expect("write");
    let (code, _, err) = septum(&["policy", "check", f.to_str().expect("utf8 path")]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid YAML"), "{err}");
    let (code, _, err) = septum(&["policy", "check", "/nonexistent/septum.yaml"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn explain_service_reports_every_backend() {
    let v = json(&[
        "explain",
        "--manifests",
        "tests/data/shop.yaml",
        "--from",
        "shop/frontend-1",
        "--to",
        "service/shop/backend",
        "--port",
        "http",
        "--protocol",
        "TCP",
        "--output",
        "json",
    ]);
    assert_eq!(v["verdict"], "allow", "{v:#}");
    let backends = v["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2, "{v:#}");
    for b in backends {
        assert_eq!(
            b["port"], 9000,
            "targetPort api resolved on the backend: {b:#}"
        );
        assert_eq!(b["ingress"]["action"], "allow");
        assert_eq!(b["ingress"]["datapath"]["action"], "allow");
        assert!(
            b["ingress"]["decisiveRule"]
                .as_str()
                .is_some_and(|r| r.contains("FlowPolicy shop/frontend-to-backend")),
            "{b:#}"
        );
    }
}

#[test]
fn explain_denied_flow_names_the_isolating_policy() {
    let v = json(&[
        "explain",
        "--manifests",
        "tests/data/shop.yaml",
        "--from",
        "shop/frontend-1",
        "--to",
        "shop/backend-1",
        "--port",
        "metrics",
        "--output",
        "json",
    ]);
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["ingress"]["action"], "deny");
    assert_eq!(v["ingress"]["datapath"]["action"], "deny");
    assert_eq!(v["egress"]["action"], "allow");
    let v = json(&[
        "explain",
        "--manifests",
        "tests/data/shop.yaml",
        "--from",
        "monitoring/prometheus",
        "--to",
        "shop/backend-2",
        "--port",
        "9090",
        "--output",
        "json",
    ]);
    assert_eq!(v["verdict"], "allow", "{v:#}");
}

#[test]
fn explain_admin_deny_to_a_network() {
    let v = json(&[
        "explain",
        "--manifests",
        "tests/data/shop.yaml",
        "--from",
        "shop/frontend-1",
        "--to",
        "169.254.169.254",
        "--port",
        "80",
        "--output",
        "json",
    ]);
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["egress"]["tiers"][0]["tier"], "admin");
    assert!(
        v["egress"]["decisiveRule"]
            .as_str()
            .is_some_and(|r| r.contains("no-cloud-metadata")),
        "{v:#}"
    );
}

#[test]
fn explain_rejects_bad_arguments_cleanly() {
    for args in [
        &[
            "explain",
            "--manifests",
            "tests/data/shop.yaml",
            "--from",
            "shop/nope",
            "--to",
            "shop/backend-1",
            "--port",
            "80",
        ][..],
        &[
            "explain",
            "--manifests",
            "tests/data/shop.yaml",
            "--from",
            "shop/frontend-1",
            "--to",
            "shop/backend-1",
            "--port",
            "80",
            "--protocol",
            "ICMP",
        ][..],
        &[
            "explain",
            "--manifests",
            "tests/data/shop.yaml",
            "--from",
            "shop/frontend-1",
            "--to",
            "service/shop/backend",
            "--port",
            "nope",
        ][..],
        &[
            "explain",
            "--manifests",
            "tests/data/shop.yaml",
            "--from",
            "service/shop/backend",
            "--to",
            "shop/backend-1",
            "--port",
            "80",
        ][..],
        &[
            "explain",
            "--manifests",
            "tests/data/bad.yaml",
            "--from",
            "a/p",
            "--to",
            "a/p",
            "--port",
            "80",
        ][..],
    ] {
        let (code, _, err) = septum(args);
        assert_ne!(code, 0, "{args:?} should fail");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn crd_print_matches_the_committed_manifest() {
    let (code, out, _) = septum(&["crd", "print"]);
    assert_eq!(code, 0);
    // Every committed CRD file, in name order, as one multi-document stream: a CRD printed but
    // not committed, or committed but no longer printed, fails here.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("manifests/crds")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected the FlowPolicy and IdentityAllocation CRDs"
    );
    let committed = files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("committed CRD"))
        .collect::<Vec<_>>()
        .join("---\n");
    assert_eq!(out, committed);
}
