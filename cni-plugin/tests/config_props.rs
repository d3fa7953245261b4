//! Property tests: the configuration parser, the prevResult reader and a whole ADD invocation
//! never panic, whatever arrives on stdin (arbitrary bytes, arbitrary JSON, and plausible
//! configurations with arbitrary values in the places the plugin reads).

use std::ffi::OsString;

use proptest::prelude::*;
use septum_cni::{config, env::Command, error::ErrorResult, prev_result::PrevResult, run};
use serde_json::{Map, Value};

const COMMANDS: [Command; 5] = [
    Command::Add,
    Command::Del,
    Command::Check,
    Command::Gc,
    Command::Status,
];

/// Keys the plugin reads, mixed with arbitrary ones, so objects hit the interesting paths.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "cniVersion",
            "name",
            "type",
            "prevResult",
            "interfaces",
            "ips",
            "address",
            "interface",
            "sandbox",
            "mac",
            "agentSocket",
            "addTimeout",
            "agentTimeout",
            "delQueueDir",
            "cni.dev/valid-attachments",
            "containerID",
            "ifname",
        ])
        .prop_map(str::to_string),
        ".{0,6}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "1.0.0",
            "1.1.0",
            "0.4.0",
            "0.3.1",
            "0.2.0",
            "eth0",
            "net",
            "/tmp/x",
            "10s",
            "0s",
            "10.0.0.1/24",
            "fd00::1/64",
            "aa:bb:cc:dd:ee:ff",
            "",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A configuration that passes the first checks, with arbitrary values where the plugin looks.
fn plausible_config() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
        json(),
        json(),
        prop::collection::vec((key(), json()), 0..4),
    )
        .prop_map(|(version, prev, attachments, extra)| {
            let mut m = Map::new();
            m.insert("cniVersion".into(), version.into());
            m.insert("name".into(), "net".into());
            m.insert("prevResult".into(), prev);
            m.insert("cni.dev/valid-attachments".into(), attachments);
            for (k, v) in extra {
                m.insert(k, v);
            }
            Value::Object(m)
        })
}

fn exercise(bytes: &[u8]) {
    for command in COMMANDS {
        if let Ok(conf) = config::parse(bytes, command)
            && let Some(raw) = conf.prev_result
            && let Ok(prev) = PrevResult::parse(raw)
        {
            let _ = prev.container_ips("eth0");
        }
    }
    let _ = config::peek_version(bytes);
}

/// A whole ADD through `run`; CNI_NETNS does not exist, so it can never reach the agent.
fn add(bytes: &[u8]) {
    let env = |k: &str| -> Option<OsString> {
        match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("prop".into()),
            "CNI_NETNS" => Some("/nonexistent/septum-proptest".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            _ => None,
        }
    };
    let outcome = run(env, Ok(bytes.to_vec()));
    assert!(!outcome.success, "ADD cannot succeed without a netns");
    let v: Value = serde_json::from_str(&outcome.stdout).expect("error result is JSON");
    assert!(v["code"].as_u64().is_some_and(|c| c != 999), "{v}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
        add(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json()) {
        let bytes = serde_json::to_vec(&v).expect("encode");
        exercise(&bytes);
        add(&bytes);
    }

    #[test]
    fn plausible_configs_never_panic(v in plausible_config()) {
        let bytes = serde_json::to_vec(&v).expect("encode");
        exercise(&bytes);
        add(&bytes);
    }
}

#[test]
fn error_results_are_always_json() {
    let err = septum_cni::error::Error::Internal("quote \" and \u{0} and \u{ffff}".into());
    let text = ErrorResult::new(None, &err).to_json();
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["code"], 999);
}
