//! Hostile input for `septum policy check` and `septum explain`: broken YAML, odd bytes, odd
//! paths, huge and deeply nested documents, invalid names and labels, typos, bad arguments.
//! Each case is a regression test of a defect: the command must exit 1 (or 0 with warnings)
//! with a message naming file, object and field, keep reporting everything else, and never
//! panic.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Run;

fn septum(args: &[&str]) -> Run {
    let run = common::run(args);
    assert!(
        run.code == 0 || run.code == 1,
        "septum {args:?} exited with {} (a panic is 101, a signal -1):\n{}",
        run.code,
        run.err
    );
    assert!(!run.err.contains("panicked"), "{args:?}: {}", run.err);
    run
}

/// A fresh directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("septum-robustness-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p.to_str().expect("utf8 path").to_string()
}

fn check(paths: &[&str]) -> Run {
    let mut args = vec!["policy", "check"];
    args.extend_from_slice(paths);
    septum(&args)
}

fn assert_has(run: &Run, needles: &[&str]) {
    for n in needles {
        assert!(run.err.contains(n), "missing {n:?} in:\n{}", run.err);
    }
}

const NAMESPACE_OK: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: fine}\n";

#[test]
fn a_syntax_error_does_not_hide_the_following_documents() {
    let d = scratch("resync");
    let f = write(
        &d,
        "resync.yaml",
        format!(
            "{NAMESPACE_OK}---\nfoo: [\n---\napiVersion: v1\nkind: Pod\n\tmetadata: {{name: x}}\n---\napiVersion: v1\nkind: Gadget\nmetadata: {{name: z}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: last}}\n"
        ),
    );
    let r = check(&[&f]);
    assert_eq!(r.code, 1);
    assert_has(
        &r,
        &[
            "resync.yaml (document 2): -: -: invalid YAML: did not find expected node content at line 6",
            "resync.yaml (document 3): -: -: invalid YAML: found a tab character that violates indentation at line 9",
            "resync.yaml (document 4): Gadget default/z: kind: unknown kind \"Gadget\"",
            "in 2 valid object(s)",
        ],
    );
}

#[test]
fn bytes_that_are_not_utf8_are_located_and_the_rest_still_checked() {
    let d = scratch("utf8");
    let mut bytes = format!(
        "{NAMESPACE_OK}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: x, labels: {{a: \""
    )
    .into_bytes();
    bytes.extend_from_slice(
        b"\xff\xfe\"}}\n---\napiVersion: v1\nkind: Gadget\nmetadata: {name: g}\n",
    );
    let f = write(&d, "latin1.yaml", bytes);
    let other = write(&d, "other.yaml", "apiVersion: v1\nkind: Widget\n");
    let r = check(&[&f, &other]);
    assert_eq!(r.code, 1);
    assert_has(
        &r,
        &[
            "latin1.yaml (document 2): -: -: not UTF-8 text: invalid byte 0xff at line 7 column 34",
            "latin1.yaml (document 3): Gadget default/g: kind: unknown kind",
            "other.yaml (document 1): Widget default/<unnamed>: kind: unknown kind",
        ],
    );
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let d = scratch("bom");
    let f = write(&d, "bom.yaml", format!("\u{feff}{NAMESPACE_OK}"));
    let r = check(&[&f]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.starts_with("ok: 1 object(s)"), "{}", r.out);
}

#[test]
fn unreadable_paths_are_reported_and_the_others_still_checked() {
    let d = scratch("paths");
    let sub = d.join("sub");
    std::fs::create_dir_all(sub.join("deeper")).expect("dir");
    write(
        &sub,
        "a.yaml",
        "apiVersion: v1\nkind: Gadget\nmetadata: {name: a}\n",
    );
    write(&sub.join("deeper"), "b.yml", NAMESPACE_OK);
    write(&sub, "notes.txt", "not yaml, skipped inside directories");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&sub, sub.join("deeper").join("loop")).expect("symlink");
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let r = check(&[
        "/nonexistent/septum.yaml",
        sub.to_str().expect("utf8"),
        empty.to_str().expect("utf8"),
        "/dev/zero",
    ]);
    assert_eq!(r.code, 1);
    assert_has(
        &r,
        &[
            "/nonexistent/septum.yaml: -: -: cannot read: No such file or directory",
            "a.yaml (document 1): Gadget default/a: kind: unknown kind",
            "empty: -: -: no .yaml or .yml files in this directory",
            "/dev/zero: -: -: cannot read: not a regular file, a pipe or a directory",
            "in 1 valid object(s)",
        ],
    );
}

#[test]
fn empty_files_are_a_warning_only() {
    let d = scratch("empty");
    let a = write(&d, "empty.yaml", "");
    let b = write(&d, "comments.yaml", "# nothing\n---\n---\n");
    let r = check(&[&a, &b]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_has(
        &r,
        &[
            "warning: ",
            "empty.yaml: -: -: no Kubernetes objects in this file",
            "comments.yaml: -: -: no Kubernetes objects in this file",
        ],
    );
}

#[test]
fn deep_nesting_and_alias_bombs_are_refused_quickly() {
    let d = scratch("bombs");
    let n = 10_000;
    let deep = write(
        &d,
        "deep.yaml",
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: x, labels: {}{}}}\n",
            "[".repeat(n),
            "]".repeat(n)
        ),
    );
    let block: String = (0..3000)
        .map(|i| format!("{}-\n", "  ".repeat(i)))
        .collect();
    let deep_block = write(&d, "deep-block.yaml", block);
    let mut lol = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, c) in ('a'..='h').zip('b'..='i') {
        lol.push_str(&format!(
            "{c}: &{c} [{}]\n",
            vec![format!("*{prev}"); 9].join(", ")
        ));
    }
    let bomb = write(&d, "bomb.yaml", lol);
    let start = Instant::now();
    let r = check(&[&deep, &deep_block, &bomb]);
    assert!(start.elapsed() < Duration::from_secs(30), "too slow");
    assert_eq!(r.code, 1);
    assert_has(
        &r,
        &[
            "deep.yaml (document 1): -: -: invalid YAML: recursion limit exceeded",
            "deep-block.yaml (document 1): -: -: invalid YAML: recursion limit exceeded",
            "bomb.yaml (document 1): -: -: invalid YAML: repetition limit exceeded",
        ],
    );
}

#[test]
fn many_pods_load() {
    let d = scratch("many");
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: big}\n");
    for i in 0..20_000u32 {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: big, labels: {{app: a{}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIP: 10.{}.{}.{}}}\n",
            i % 50,
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let f = write(&d, "big.yaml", y);
    let r = check(&[&f]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.starts_with("ok: 20001 object(s)"), "{}", r.out);
}

#[test]
fn documents_that_are_not_objects_are_named() {
    let d = scratch("shapes");
    let f = write(
        &d,
        "shapes.yaml",
        "42\n---\n- a\n- b\n---\nmetadata: {name: x}\n---\nkind: 5\n---\nkind: Pod\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: 123}\n---\napiVersion: v1\nkind: Pod\nmetadata: 5\n---\napiVersion: apps/v1\nkind: Pod\nmetadata: {name: y}\n---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\n",
    );
    let r = check(&[&f]);
    assert_eq!(r.code, 1);
    assert_has(
        &r,
        &[
            "(document 1): -: -: a document must be a mapping (a Kubernetes object), got a number",
            "(document 2): -: -: a document must be a mapping (a Kubernetes object), got a list",
            "(document 3): x: kind: missing",
            "(document 4): <unnamed>: kind: must be a string, got a number",
            "(document 5): Pod default/x: apiVersion: missing (Pod is v1)",
            "(document 6): Pod default/<unnamed>: metadata.name: must be a string, got a number",
            "(document 7): Pod default/<unnamed>: metadata: must be a mapping, got a number",
            "(document 8): Pod default/y: apiVersion: Pod must be v1, got \"apps/v1\"",
            "(document 9): AdminNetworkPolicy default/anp: kind: unknown kind \"AdminNetworkPolicy\"",
            "replaced upstream by ClusterNetworkPolicy",
        ],
    );
}

#[test]
fn names_labels_ports_typos_and_references_are_checked() {
    let r = check(&["tests/data/hostile.yaml"]);
    assert_eq!(r.code, 1);
    assert_has(
        &r,
        &[
            // Names and labels.
            "(document 1): Pod UPPER/Bad_Name!: metadata.name: \"Bad_Name!\" is not a DNS subdomain",
            "Pod UPPER/Bad_Name!: metadata.namespace: \"UPPER\" is not a DNS label",
            "Pod UPPER/Bad_Name!: metadata.labels: label key \"bad key!\" is invalid",
            "Pod UPPER/Bad_Name!: metadata.labels: label key \"a/b/c\" is invalid",
            "Pod UPPER/Bad_Name!: metadata.labels.bad key!: label value \"v v\" is invalid",
            "Pod UPPER/Bad_Name!: spec.containers[0].ports[0].name: port name \"Not_A_Name\" is invalid",
            // Services.
            "Service a/web: spec.selector.app: label value \"web web\" is invalid",
            "Service a/web: spec.ports[0].targetPort: port name \"Bad_Target\" is invalid",
            "Service a/web: spec.ports[1].name: duplicate port name \"http\"",
            "Service a/web: spec.ports[2].name: required when the Service has more than one port",
            "Service a/web: spec.ports[3].port: duplicate port 80/TCP",
            // Typos in policies are errors.
            "error: tests/data/hostile.yaml (document 3): NetworkPolicy a/typos: spec.podSelectr: unknown field",
            "NetworkPolicy a/typos: spec.ingres: unknown field",
            "NetworkPolicy a/typos: spec.egress[0].prots: unknown field",
            "error: tests/data/hostile.yaml (document 6): FlowPolicy a/typo: spec.ingres: unknown field",
            // Host bits are a warning.
            "warning: tests/data/hostile.yaml (document 3): NetworkPolicy a/typos: spec.egress[0].to[0].ipBlock.cidr: \"10.1.2.3/8\" has host bits set: it means 10.0.0.0/8",
            "FlowPolicy a/refs: spec.egress[0].to[2].cidr.cidr: \"10.0.0.1/8\" has host bits set",
            // Selectors.
            "NetworkPolicy a/selectors: spec.podSelector.matchLabels: label key \"-bad\" is invalid",
            "NetworkPolicy a/selectors: spec.podSelector.matchLabels.-bad: label value \"also bad!\" is invalid",
            "NetworkPolicy a/selectors: spec.podSelector.matchExpressions[0].key: label key \"a/b/c\" is invalid",
            "NetworkPolicy a/selectors: spec.podSelector.matchExpressions[0].values[0]: label value \"no spaces\" is invalid",
            "NetworkPolicy a/selectors: spec.ingress[0].ports[0].port: port name \"bad name\" is invalid",
            // FlowPolicy references.
            "FlowPolicy a/refs: spec.egress[0].to[0].service.name: must not be empty",
            "FlowPolicy a/refs: spec.egress[0].to[1].service.namespace: \"Bad\" is not a DNS label",
            // ClusterNetworkPolicies.
            "ClusterNetworkPolicy first: metadata.namespace: this kind is cluster-scoped",
            "ClusterNetworkPolicy second: spec.egress[0].protocols[0].destinationNamedPort: port name \"Bad Port\" is invalid",
            "ClusterNetworkPolicy second: spec.priority: same tier and priority (5) as ClusterNetworkPolicy first",
            // Cross-object.
            "Pod a/p2: status.podIPs: address 10.0.0.1 is also the address of pod a/p1",
            // Lists.
            "(document 11): List: items[1]: a document must be a mapping (a Kubernetes object), got a number",
            "(document 12): List: items: must be a list of objects, got a number",
        ],
    );
    // Each problem once: the loader's error is not repeated by validation.
    assert_eq!(
        r.err
            .matches("FlowPolicy a/refs: spec.subject.serviceAccount: must not be empty")
            .count(),
        1,
        "{}",
        r.err
    );
    assert!(!r.err.contains("Service a/ does not exist"), "{}", r.err);
}

#[test]
fn merge_keys_and_empty_namespaces_are_read_like_kubectl() {
    let d = scratch("merge");
    let f = write(
        &d,
        "merge.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n  namespace: \"\"\n  labels:\n    <<: {app: web}\n    tier: t\n",
    );
    let r = check(&[&f]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.err.is_empty(), "{}", r.err);
}

fn explain(extra: &[&str]) -> Run {
    let mut args = vec!["explain", "--manifests", "tests/data/shop.yaml"];
    args.extend_from_slice(extra);
    septum(&args)
}

#[test]
fn explain_arguments_are_checked_with_a_clear_message() {
    let d = scratch("explain-args");
    let _ = d;
    for (args, want) in [
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "shop/backend-1",
                "--port",
                "70000",
            ][..],
            "--port 70000: a port number must be 1-65535",
        ),
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "shop/backend-1",
                "--port",
                "-1",
            ],
            "--port -1: a port number must be 1-65535",
        ),
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "shop/backend-1",
                "--port",
                "0",
            ],
            "--port 0: a port number must be 1-65535",
        ),
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "shop/backend-1",
                "--port",
                "80-90",
            ],
            "a port range cannot be explained",
        ),
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "shop/backend-1",
                "--port",
                "bad name",
            ],
            "port name \"bad name\" is invalid",
        ),
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "shop/backend-1",
                "--port",
                "",
            ],
            "port name \"\" is invalid",
        ),
        (
            &["--from", "shop/", "--to", "shop/backend-1", "--port", "80"],
            "--from \"shop/\": pod name: must not be empty",
        ),
        (
            &["--from", "/", "--to", "shop/backend-1", "--port", "80"],
            "--from \"/\": namespace: must not be empty",
        ),
        (
            &["--from", "SHOP/x", "--to", "shop/backend-1", "--port", "80"],
            "--from \"SHOP/x\": namespace: \"SHOP\" is not a DNS label",
        ),
        (
            &["--from", "a/b/c", "--to", "shop/backend-1", "--port", "80"],
            "--from \"a/b/c\" is not NAMESPACE/POD or an IP address",
        ),
        (
            &[
                "--from",
                "10.0.0.1/24",
                "--to",
                "shop/backend-1",
                "--port",
                "80",
            ],
            "a prefix is not a flow end",
        ),
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "service/shop",
                "--port",
                "80",
            ],
            "--to: pod service/shop is not in the manifests (a Service is service/NAMESPACE/NAME)",
        ),
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "service/shop/",
                "--port",
                "80",
            ],
            "Service name: must not be empty",
        ),
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "service/a/b/c",
                "--port",
                "80",
            ],
            "a Service is service/NAMESPACE/NAME",
        ),
        (
            &[
                "--from",
                "svc/shop/backend",
                "--to",
                "shop/backend-1",
                "--port",
                "80",
            ],
            "a Service can only be a destination (--to)",
        ),
        (
            &[
                "--from",
                "shop/frontend-1",
                "--to",
                "shop/backend-1",
                "--port",
                "80",
                "--protocol",
                "",
            ],
            "unknown protocol \"\"",
        ),
    ] {
        let r = explain(args);
        assert_eq!(r.code, 1, "{args:?}");
        assert!(r.err.starts_with("error: "), "{args:?}: {}", r.err);
        assert!(r.err.contains(want), "{args:?}: want {want:?} in {}", r.err);
    }
}

#[test]
fn explain_names_what_is_missing_in_the_manifests() {
    let d = scratch("explain-missing");
    let extra = write(
        &d,
        "extra.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: noip, namespace: shop, labels: {app: other}}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: shop}\nspec: {selector: {app: nothing}, ports: [{name: http, port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: external, namespace: shop}\nspec: {ports: [{name: http, port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: legacy, namespace: shop}\nspec: {ports: [{name: http, port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: legacy-1, namespace: shop, labels: {kubernetes.io/service-name: legacy}}\naddressType: IPv4\nendpoints: [{addresses: [203.0.113.7]}]\nports: [{name: http, port: 8443}]\n",
    );
    // Explains from frontend-1 to `to` at `port`, with the extra manifests.
    let from_frontend = |to: &str, port: &str, more: &[&str]| {
        let mut args = vec![
            &*extra,
            "--from",
            "shop/frontend-1",
            "--to",
            to,
            "--port",
            port,
        ];
        args.extend_from_slice(more);
        explain(&args)
    };
    for (to, want) in [
        ("shop/noip", "pod shop/noip has no IP in status.podIP(s)"),
        (
            "service/shop/empty",
            "service shop/empty has no backends (no selected pod, no EndpointSlice naming an endpoint)",
        ),
        (
            "service/shop/external",
            "service shop/external has no backends (no selected pod, no EndpointSlice naming an endpoint), so septum does not know its endpoints; explain to a backend pod or IP instead",
        ),
    ] {
        let r = from_frontend(to, "80", &[]);
        assert_eq!(r.code, 1, "{to}");
        assert!(r.err.contains(want), "{to}: want {want:?} in {}", r.err);
    }
    // A Service without a selector whose EndpointSlice names its backend: explained to it,
    // at the slice's port.
    let r = from_frontend("service/shop/legacy", "http", &["--output", "json"]);
    assert_eq!(r.code, 0, "{}", r.err);
    let v: serde_json::Value = serde_json::from_str(&r.out).expect("json");
    assert_eq!(v["dstIP"], "203.0.113.7", "{v}");
    assert_eq!(v["port"], 8443, "{v}");
    assert_eq!(v["service"], "service/shop/legacy", "{v}");
}

#[test]
fn explain_refuses_manifests_that_fail_validation() {
    let d = scratch("explain-invalid");
    let bad = write(
        &d,
        "bad.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: contradictory, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]\n",
    );
    let r = septum(&[
        "explain",
        "--manifests",
        "tests/data/shop.yaml",
        &bad,
        "--from",
        "shop/frontend-1",
        "--to",
        "shop/backend-1",
        "--port",
        "90",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.err.contains("NetworkPolicy shop/contradictory: spec.ingress[0].ports[0].endPort: endPort 80 is lower than port 90"),
        "{}",
        r.err
    );
    assert!(r.err.contains("1 error(s) in the manifests"), "{}", r.err);
}

#[test]
fn every_conversion_error_of_an_object_is_reported() {
    let d = scratch("multi");
    let f = write(
        &d,
        "multi.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web3, namespace: a}\nspec:\n  selector: {app: web}\n  clusterIP: 10.0.0.300\n  ports: [{name: http, port: 80, targetPort: -1}, {name: b, port: 70000, protocol: ICMP}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: multi, namespace: a}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: Maybe}, {key: b, operator: In}, {key: c, operator: Exists, values: [x]}]}\n  policyTypes: [Sideways]\n  ingress: [{ports: [{port: 0, protocol: ICMP}], from: [{ipBlock: {cidr: bad, except: [worse]}}]}]\n---\napiVersion: septum.dev/v1alpha1\nkind: FlowPolicy\nmetadata: {name: fp, namespace: a}\nspec:\n  subject: {service: web, serviceAccount: web}\n  egress: [{to: [], ports: [{port: http, endPort: 90}, {port: 100, endPort: 90}, {port: 70000}]}]\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: cnp}\nspec: {tier: Middle, priority: -1, subject: {}, ingress: [{action: Allow, from: []}]}\n",
    );
    let r = check(&[&f]);
    assert_eq!(r.code, 1);
    assert_has(
        &r,
        &[
            // targetPort 0 is defaulted to `port` by the API server; -1 is refused.
            "Service a/web3: spec.ports[0].targetPort: port -1 is outside 1-65535",
            "Service a/web3: spec.ports[1].port: port 70000 is outside 1-65535",
            "Service a/web3: spec.ports[1].protocol: unknown protocol \"ICMP\"",
            "Service a/web3: spec.clusterIP: \"10.0.0.300\" is not an IP address",
            "NetworkPolicy a/multi: spec.policyTypes[0]: unknown policy type \"Sideways\"",
            "NetworkPolicy a/multi: spec.podSelector.matchExpressions[0].operator: unknown operator \"Maybe\"",
            "NetworkPolicy a/multi: spec.podSelector.matchExpressions[1]: operator In on key \"b\" needs at least one value",
            "NetworkPolicy a/multi: spec.podSelector.matchExpressions[2]: operator Exists on key \"c\" takes no values",
            "NetworkPolicy a/multi: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR \"bad\"",
            "NetworkPolicy a/multi: spec.ingress[0].from[0].ipBlock.except[0]: invalid CIDR \"worse\"",
            "NetworkPolicy a/multi: spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\"",
            "NetworkPolicy a/multi: spec.ingress[0].ports[0].port: port 0 is outside 1-65535",
            "FlowPolicy a/fp: spec.subject: set exactly one of service, podSelector, serviceAccount (found 2)",
            "FlowPolicy a/fp: spec.egress[0].to: must name at least one peer",
            "FlowPolicy a/fp: spec.egress[0].ports[0].endPort: endPort 90 needs a numeric port",
            "FlowPolicy a/fp: spec.egress[0].ports[1].endPort: endPort 90 is lower than port 100",
            "FlowPolicy a/fp: spec.egress[0].ports[2].port: port 70000 is outside 1-65535",
            "ClusterNetworkPolicy cnp: spec.tier: unknown tier \"Middle\"",
            "ClusterNetworkPolicy cnp: spec.priority: priority -1 is outside 0-1000",
            "ClusterNetworkPolicy cnp: spec.subject: set exactly one of namespaces, pods (found 0)",
            "ClusterNetworkPolicy cnp: spec.ingress[0].from: must name at least one peer",
            "ClusterNetworkPolicy cnp: spec.ingress[0].action: unknown action \"Allow\"",
            "in 0 valid object(s)",
        ],
    );
}

#[test]
fn a_file_named_twice_is_read_once() {
    let r = check(&[
        "tests/data/shop.yaml",
        "tests/data/../data/shop.yaml",
        "./tests/data/shop.yaml",
    ]);
    assert_eq!(r.code, 0, "{}", r.err);
    assert!(r.out.starts_with("ok: 13 object(s)"), "{}", r.out);
}

#[test]
fn a_missing_required_field_is_named_itself() {
    let d = scratch("missing-field");
    let f = write(
        &d,
        "missing.yaml",
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: nopriority}\nspec:\n  tier: Admin\n  subject: {namespaces: {}}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: typo}\nspec: {tier: Admin, priority: 6, subject: {namespaces: {}}, egres: []}\n---\napiVersion: septum.dev/v1alpha1\nkind: FlowPolicy\nmetadata: {name: nospec, namespace: a}\n",
    );
    let r = check(&[&f]);
    assert_eq!(r.code, 1);
    assert_has(
        &r,
        &[
            "ClusterNetworkPolicy nopriority: spec.priority: missing field `priority`",
            "ClusterNetworkPolicy typo: spec.egres: unknown field `egres`",
            "FlowPolicy a/nospec: spec: missing field `spec`",
        ],
    );
}

#[test]
fn explain_reads_addresses_by_family() {
    // An IPv4-mapped IPv6 address is the IPv4 address: here frontend-1's.
    let mapped = explain(&[
        "--from",
        "::ffff:10.244.1.10",
        "--to",
        "shop/backend-1",
        "--port",
        "9000",
        "--output",
        "json",
    ]);
    assert_eq!(mapped.code, 0, "{}", mapped.err);
    let v: serde_json::Value = serde_json::from_str(&mapped.out).expect("json");
    assert_eq!(v["srcIP"], "10.244.1.10", "{v:#}");
    assert_eq!(v["verdict"], "allow", "{v:#}");
    for (args, want) in [
        (
            &[
                "--from",
                "fd00::1",
                "--to",
                "shop/backend-1",
                "--port",
                "9000",
            ][..],
            "pod shop/backend-1 has no address of the same IP family as fd00::1",
        ),
        (
            &["--from", "fd00::1", "--to", "10.0.0.1", "--port", "80"],
            "fd00::1 and 10.0.0.1 are of different IP families",
        ),
    ] {
        let r = explain(args);
        assert_eq!(r.code, 1, "{args:?}");
        assert!(r.err.contains(want), "{args:?}: want {want:?} in {}", r.err);
    }
}
