//! Hostile and broken invocations of the built `septum-cni` binary: each one gets a CNI error
//! result on stdout with the spec's code, a non-zero exit, and no panic. Also VERSION's output
//! and the agent-less paths (STATUS code 50, ADD failing closed, DEL queueing) that need no
//! network namespace.

mod common;

use std::os::unix::ffi::OsStrExt;

use common::{PLUGIN, Run, plugin};

const ADD_ENV: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c0ffee"),
    ("CNI_NETNS", "/nonexistent/septum-test-netns"),
    ("CNI_IFNAME", "eth0"),
];

fn env_with(command: &str) -> Vec<(&str, &str)> {
    let mut env = ADD_ENV.to_vec();
    env[0] = ("CNI_COMMAND", command);
    env
}

const PREV: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.9.0.2/24","interface":0}]}"#;

#[test]
fn bad_environments_are_code_4() {
    let stdin = br#"{"cniVersion":"1.0.0","name":"n"}"#;
    // (what, environment, the variable the message must name)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("no CNI_COMMAND", vec![], "CNI_COMMAND"),
        ("unknown command", vec![("CNI_COMMAND", "FROB")], "FROB"),
        ("lower-case command", vec![("CNI_COMMAND", "add")], "add"),
        (
            "ADD without anything",
            vec![("CNI_COMMAND", "ADD")],
            "CNI_CONTAINERID",
        ),
        (
            "ADD without netns",
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_NETNS",
        ),
        (
            "DEL without ifname",
            vec![("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1")],
            "CNI_IFNAME",
        ),
        (
            "CHECK with empty container id",
            vec![
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", ""),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_CONTAINERID",
        ),
        (
            "container id with a slash",
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "../../etc"),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_CONTAINERID",
        ),
        (
            "ifname too long",
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0123456789abc"),
            ],
            "CNI_IFNAME",
        ),
        (
            "ifname with a slash",
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "a/b"),
            ],
            "CNI_IFNAME",
        ),
    ];
    for (what, env, named) in cases {
        let run = plugin(&env, stdin);
        let msg = run.error(4);
        assert!(
            msg.contains(named),
            "{what}: msg {msg:?} should name {named}"
        );
    }
}

#[test]
fn non_utf8_environment_is_code_4() {
    let out = std::process::Command::new(PLUGIN)
        .env_clear()
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", std::ffi::OsStr::from_bytes(b"c\xff"))
        .env("CNI_IFNAME", "eth0")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the plugin");
    let run = Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(run.error(4).contains("CNI_CONTAINERID"));
}

#[test]
fn malformed_cni_args_fail_add_but_not_del() {
    let mut env = ADD_ENV.to_vec();
    env.push(("CNI_ARGS", "K8S_POD_NAME"));
    let stdin = format!(r#"{{"cniVersion":"1.0.0","name":"n","prevResult":{PREV}}}"#);
    assert!(plugin(&env, stdin.as_bytes()).error(4).contains("CNI_ARGS"));

    let queue = tempfile::tempdir().expect("tempdir");
    let stdin = serde_json::json!({
        "cniVersion": "1.0.0", "name": "n",
        "agentSocket": queue.path().join("absent.sock"),
        "delQueueDir": queue.path().join("q"),
    })
    .to_string();
    let mut env = env_with("DEL");
    env.push(("CNI_ARGS", "K8S_POD_NAME"));
    plugin(&env, stdin.as_bytes()).ok();
}

#[test]
fn bad_configurations_get_the_right_codes() {
    let huge = {
        let mut v = br#"{"cniVersion":"1.0.0","name":"n","pad":""#.to_vec();
        v.resize(2 << 20, b'a');
        v.extend_from_slice(b"\"}");
        v
    };
    let nest = |inner: &str| format!("{}{inner}{}", "[".repeat(10_000), "]".repeat(10_000));
    // 10,000 levels, far past any recursion limit: refused where a type is expected, skipped
    // where nothing is decoded, and a crash (stack overflow) nowhere.
    let deep_decoded = format!(
        r#"{{"cniVersion":"1.0.0","name":"n","prevResult":{{"ips":{}}}}}"#,
        nest("")
    );
    let deep_skipped = format!(r#"{{"cniVersion":"1.0.0","name":"n","x":{}}}"#, nest("1"));
    let add_cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("empty stdin", b"".to_vec(), 6),
        ("not JSON", b"hello".to_vec(), 6),
        ("truncated JSON", br#"{"cniVersion":"1.0.0","#.to_vec(), 6),
        ("a JSON array", b"[1,2,3]".to_vec(), 6),
        ("a JSON string", br#""cniVersion""#.to_vec(), 6),
        ("not UTF-8", b"{\"cniVersion\":\"1.0.0\",\"name\":\"\xff\"}".to_vec(), 6),
        ("over 1 MiB", huge, 6),
        ("nested 10000 deep in prevResult.ips", deep_decoded.into_bytes(), 6),
        ("nested 10000 deep in an unknown key", deep_skipped.into_bytes(), 7),
        ("prevResult 10000 arrays deep", format!(r#"{{"cniVersion":"1.0.0","name":"n","prevResult":{}}}"#, nest("")).into_bytes(), 7),
        ("cniVersion missing", br#"{"name":"n"}"#.to_vec(), 1),
        ("cniVersion unknown", br#"{"cniVersion":"9.9.9","name":"n"}"#.to_vec(), 1),
        ("cniVersion without chaining", br#"{"cniVersion":"0.2.0","name":"n"}"#.to_vec(), 1),
        ("cniVersion a number", br#"{"cniVersion":1.0,"name":"n"}"#.to_vec(), 6),
        ("name missing", br#"{"cniVersion":"1.0.0"}"#.to_vec(), 7),
        ("name empty", br#"{"cniVersion":"1.0.0","name":""}"#.to_vec(), 7),
        ("name with a slash", br#"{"cniVersion":"1.0.0","name":"a/b"}"#.to_vec(), 7),
        ("name an object", br#"{"cniVersion":"1.0.0","name":{}}"#.to_vec(), 6),
        ("type a number", br#"{"cniVersion":"1.0.0","name":"n","type":3}"#.to_vec(), 6),
        ("agentSocket a number", br#"{"cniVersion":"1.0.0","name":"n","agentSocket":5}"#.to_vec(), 6),
        ("agentSocket relative", br#"{"cniVersion":"1.0.0","name":"n","agentSocket":"a.sock"}"#.to_vec(), 7),
        ("addTimeout nonsense", br#"{"cniVersion":"1.0.0","name":"n","addTimeout":"soon"}"#.to_vec(), 7),
        ("addTimeout zero", br#"{"cniVersion":"1.0.0","name":"n","addTimeout":"0s"}"#.to_vec(), 7),
        ("addTimeout an hour", br#"{"cniVersion":"1.0.0","name":"n","addTimeout":"60m"}"#.to_vec(), 7),
        ("prevResult missing", br#"{"cniVersion":"1.0.0","name":"n"}"#.to_vec(), 7),
        ("prevResult null", br#"{"cniVersion":"1.0.0","name":"n","prevResult":null}"#.to_vec(), 7),
        ("prevResult a string", br#"{"cniVersion":"1.0.0","name":"n","prevResult":"x"}"#.to_vec(), 7),
        ("prevResult.interfaces a string", br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"interfaces":"eth0"}}"#.to_vec(), 6),
        ("prevResult ip not an address", br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"ten/8"}]}}"#.to_vec(), 7),
        ("prevResult ip interface out of range", br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"interfaces":[],"ips":[{"address":"10.0.0.1/8","interface":4}]}}"#.to_vec(), 7),
        ("prevResult ip interface negative", br#"{"cniVersion":"1.0.0","name":"n","prevResult":{"ips":[{"address":"10.0.0.1/8","interface":-1}]}}"#.to_vec(), 6),
    ];
    for (what, stdin, code) in add_cases {
        let run = plugin(ADD_ENV, &stdin);
        assert!(
            !run.success && run.json()["code"].as_u64() == Some(code),
            "{what}: want code {code}, got {run:?}"
        );
        run.error(code);
    }

    let other_cases: Vec<(&str, &str, &str, u64)> = vec![
        (
            "CHECK before 0.4.0",
            "CHECK",
            r#"{"cniVersion":"0.3.1","name":"n"}"#,
            1,
        ),
        (
            "GC before 1.1.0",
            "GC",
            r#"{"cniVersion":"1.0.0","name":"n","cni.dev/valid-attachments":[]}"#,
            1,
        ),
        (
            "STATUS before 1.1.0",
            "STATUS",
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
            1,
        ),
        (
            "GC without valid attachments",
            "GC",
            r#"{"cniVersion":"1.1.0","name":"n"}"#,
            7,
        ),
        (
            "GC with attachments of the wrong type",
            "GC",
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":{"a":1}}"#,
            6,
        ),
        (
            "GC with a bad container id",
            "GC",
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"../x","ifname":"eth0"}]}"#,
            7,
        ),
        (
            "CHECK without prevResult",
            "CHECK",
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
            7,
        ),
        (
            "DEL with an unknown version",
            "DEL",
            r#"{"cniVersion":"2.0.0","name":"n"}"#,
            1,
        ),
        ("DEL with a non-object", "DEL", "42", 6),
    ];
    for (what, command, stdin, code) in other_cases {
        let run = plugin(&env_with(command), stdin.as_bytes());
        assert!(
            !run.success && run.json()["code"].as_u64() == Some(code),
            "{what}: want code {code}, got {run:?}"
        );
        run.error(code);
    }
}

#[test]
fn errors_answer_in_the_input_version() {
    let run = plugin(ADD_ENV, br#"{"cniVersion":"0.4.0","name":"n"}"#);
    run.error(7);
    assert_eq!(run.json()["cniVersion"], "0.4.0");
    let run = plugin(ADD_ENV, b"garbage");
    assert_eq!(run.json()["cniVersion"], "1.1.0");
}

#[test]
fn add_on_a_missing_netns_is_an_environment_error() {
    let stdin = format!(r#"{{"cniVersion":"1.0.0","name":"n","prevResult":{PREV}}}"#);
    let msg = plugin(ADD_ENV, stdin.as_bytes()).error(4);
    assert!(msg.contains("CNI_NETNS"), "{msg}");
}

#[test]
fn add_on_a_file_that_is_not_a_netns_is_an_environment_error() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let path = file.path().to_str().expect("utf-8 path");
    let mut env = ADD_ENV.to_vec();
    env[2] = ("CNI_NETNS", path);
    let prev = PREV.replace("/x", path);
    let stdin = format!(r#"{{"cniVersion":"1.0.0","name":"n","prevResult":{prev}}}"#);
    let msg = plugin(&env, stdin.as_bytes()).error(4);
    assert!(msg.contains("CNI_NETNS"), "{msg}");
}

#[test]
fn version_lists_every_supported_version() {
    for (stdin, want) in [
        (&br#"{"cniVersion":"1.0.0"}"#[..], "1.0.0"),
        (br#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
        (b"", "1.1.0"),
        (b"not json", "1.1.0"),
    ] {
        let run = plugin(&[("CNI_COMMAND", "VERSION")], stdin).ok();
        let v = run.json();
        assert_eq!(v["cniVersion"], want, "{run:?}");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}

#[test]
fn agent_absent_status_is_50_gc_is_11_del_is_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let queue = dir.path().join("queue");
    let conf = |version: &str, extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "cniVersion": version, "name": "n", "type": "septum-cni",
            "agentSocket": socket, "delQueueDir": queue,
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v.to_string()
    };

    let status = plugin(
        &[("CNI_COMMAND", "STATUS")],
        conf("1.1.0", serde_json::json!({})).as_bytes(),
    );
    assert!(status.error(50).contains("not available"));

    let gc = plugin(
        &[("CNI_COMMAND", "GC")],
        conf(
            "1.1.0",
            serde_json::json!({"cni.dev/valid-attachments": []}),
        )
        .as_bytes(),
    );
    gc.error(11);

    // A DEL with no netns and no prevResult, the agent down: success, and queued.
    let mut env = env_with("DEL");
    env[2] = ("CNI_NETNS", "");
    env.push((
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
    ));
    let run = plugin(&env, conf("1.0.0", serde_json::json!({})).as_bytes()).ok();
    assert!(run.stdout.is_empty(), "DEL prints nothing: {run:?}");
    let file = queue.join("n@c0ffee@eth0.json");
    let queued: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("queued DEL file")).expect("JSON");
    assert_eq!(queued["version"], 1);
    assert_eq!(queued["containerId"], "c0ffee");
    assert_eq!(queued["ifname"], "eth0");
    assert_eq!(queued["netns"], "");
    assert_eq!(queued["pod"]["namespace"], "shop");
    assert_eq!(queued["pod"]["name"], "web-0");
    assert!(queued["queuedAtUnixMs"].as_u64().is_some_and(|t| t > 0));

    // A second DEL of the same attachment replaces the file rather than adding one.
    plugin(&env, conf("1.0.0", serde_json::json!({})).as_bytes()).ok();
    let files: Vec<_> = std::fs::read_dir(&queue)
        .expect("queue dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(files, vec!["n@c0ffee@eth0.json".to_string()]);

    // A DEL that can neither reach the agent nor queue fails with "try again later".
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"").expect("write a file");
    let stdin = serde_json::json!({
        "cniVersion": "1.0.0", "name": "n", "agentSocket": socket, "delQueueDir": blocked,
    })
    .to_string();
    plugin(&env, stdin.as_bytes()).error(11);
}
