//! The installer (`septum_cni::install`) on real configurations, in temporary conf and bin dirs.
//!
//! Fixtures in `tests/fixtures/install/`, each the bytes a node ends up with:
//! - `10-flannel.conflist`: flannel-io/flannel `Documentation/kube-flannel.yml` (cdf7605), the
//!   `cni-conf.json` ConfigMap key that Flannel's `install-cni` init container copies to
//!   `/etc/cni/net.d/10-flannel.conflist` (flannel + portmap).
//! - `10-calico.conflist`: projectcalico/calico `manifests/calico.yaml` as of 774e583515^ (the
//!   last manifest that chained bandwidth), `cni_network_config` with the placeholders filled as
//!   Calico's `install-cni` fills them and without the `policy` section: the calico plugin reads
//!   only `policy.type == "k8s"` (there is no "none"), so Calico with its policy off is the same
//!   list without that section. Calico writes it mode 0600 and without a final newline.
//! - `10-containerd-net.conflist`: containerd/containerd `script/setup/install-cni` (08f59d6):
//!   bridge with host-local IPAM, then portmap.
//! - `10-mynet.conf`: the bridge plugin's example configuration (containernetworking/cni.dev
//!   `content/plugins/current/main/bridge.md`), a single-plugin file with host-local IPAM.
//! - `10-mynet-0.2.0.conf`: the CNI README's `10-mynet.conf` (cniVersion 0.2.0, tabs), which
//!   septum-cni cannot chain after.
//!
//! The last test runs an installed chain through Debian's plugins and the built septum-cni in
//! private network namespaces, with the agent test double; it needs root, as the chain tests do.

mod common;

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use common::{AgentDouble, NetNs, PLUGIN, exec, unique_tag};
use septum_cni::{
    config,
    env::Command,
    install::{
        self, Change, ConversionConflict, InstallError, Malformed, NodeDirs, Report, SeptumEntry,
    },
};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/install");
const SOCKET: &str = "/run/septum/agent.sock";

fn fixture(name: &str) -> String {
    fs::read_to_string(Path::new(FIXTURES).join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A node's CNI directories in a temporary directory.
struct Node {
    dirs: NodeDirs,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = NodeDirs {
            conf_dir: dir.path().join("net.d"),
            bin_dir: dir.path().join("bin"),
        };
        fs::create_dir(&dirs.conf_dir).expect("conf dir");
        fs::create_dir(&dirs.bin_dir).expect("bin dir");
        Node { dirs, _dir: dir }
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.dirs.conf_dir.join(name)
    }

    fn binary(&self) -> PathBuf {
        self.dirs.bin_dir.join(install::BINARY_NAME)
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.conf(name);
        fs::write(&path, text).expect("write config");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn install(&self, socket: &str) -> Result<Report, InstallError> {
        install::install(
            &self.dirs,
            Path::new(PLUGIN),
            &SeptumEntry {
                agent_socket: PathBuf::from(socket),
            },
        )
    }

    fn uninstall(&self) -> Report {
        install::uninstall(&self.dirs).expect("uninstall")
    }

    /// Every name in the conf dir, sorted (temporary files included, so leftovers show).
    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.dirs.conf_dir)
            .expect("read conf dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// What must not change when nothing changes: the inode, the modification time and the bytes.
fn stamp(path: &Path) -> (u64, i64, i64, Vec<u8>) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        fs::read(path).expect("read"),
    )
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").mode() & 0o7777
}

fn septum_entry(socket: &str) -> Value {
    json!({"type": "septum-cni", "agentSocket": socket})
}

/// The plugin configurations libcni builds from a list: each plugin with the list's `name` and
/// `cniVersion` injected (libcni's `buildOneConfig`, before `prevResult`).
fn libcni_plugins(list_text: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(list_text).expect("the list is JSON");
    list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p["name"] = list["name"].clone();
            p["cniVersion"] = list["cniVersion"].clone();
            p
        })
        .collect()
}

/// The end of the last plugin in a list's text: just before the whitespace ahead of `]`.
fn end_of_last_plugin(text: &str) -> usize {
    let close = text.rfind(']').expect("a closing bracket");
    text[..close].trim_end().len()
}

#[test]
fn each_upstream_list_gets_septum_last_and_back_out_byte_for_byte() {
    for (name, file_mode) in [
        ("10-flannel.conflist", 0o644),
        ("10-calico.conflist", 0o600),
        ("10-containerd-net.conflist", 0o644),
    ] {
        let node = Node::new();
        let original = fixture(name);
        let path = node.write(name, &original, file_mode);

        let report = node.install(SOCKET).expect("install");
        assert_eq!(
            report.changes,
            [
                Change::BinaryInstalled(node.binary()),
                Change::EntryAdded(path.clone())
            ],
            "{name}"
        );
        let installed = fs::read_to_string(&path).expect("read");

        // One insertion right after the last plugin, laid out like its neighbours; every other
        // byte (key order, spacing, a missing final newline) is the original's.
        let at = end_of_last_plugin(&original);
        assert!(
            installed.starts_with(&original[..at]),
            "{name}:\n{installed}"
        );
        assert!(installed.ends_with(&original[at..]), "{name}:\n{installed}");
        let inserted = &installed[at..installed.len() - (original.len() - at)];
        assert_eq!(
            inserted,
            ",\n    {\n      \"type\": \"septum-cni\",\n      \"agentSocket\": \"/run/septum/agent.sock\"\n    }",
            "{name}"
        );
        let before: Value = serde_json::from_str(&original).unwrap();
        let after: Value = serde_json::from_str(&installed).unwrap();
        let plugins = after["plugins"].as_array().unwrap();
        assert_eq!(plugins.last(), Some(&septum_entry(SOCKET)), "{name}");
        assert_eq!(
            plugins[..plugins.len() - 1],
            before["plugins"].as_array().unwrap()[..],
            "{name}"
        );
        assert_eq!(mode(&path), file_mode, "{name} keeps its mode");
        assert_eq!(mode(&node.binary()), 0o755);
        assert_eq!(
            fs::read(node.binary()).unwrap(),
            fs::read(PLUGIN).unwrap(),
            "the binary is the built plugin"
        );
        assert_eq!(node.listing(), [name], "no temporary file is left");

        // The contract: libcni hands septum-cni its entry with the list's name and version, and
        // the plugin's own parser takes it.
        let confs = libcni_plugins(&installed);
        let septum = serde_json::to_vec(confs.last().unwrap()).unwrap();
        let parsed = config::parse(&septum, Command::Add).expect("septum-cni accepts its entry");
        assert_eq!(parsed.options.agent_socket, Path::new(SOCKET));
        assert_eq!(parsed.name, before["name"].as_str().unwrap());

        // Again: nothing is written, so a runtime watching the directory sees no event.
        let conf_before = stamp(&path);
        let bin_before = stamp(&node.binary());
        let report = node.install(SOCKET).expect("second install");
        assert_eq!(
            report.changes,
            [
                Change::BinaryUnchanged(node.binary()),
                Change::EntryUnchanged(path.clone())
            ]
        );
        assert!(!report.changed());
        assert_eq!(stamp(&path), conf_before, "{name} untouched");
        assert_eq!(stamp(&node.binary()), bin_before, "binary untouched");

        let report = node.uninstall();
        assert_eq!(
            report.changes,
            [
                Change::EntryRemoved(path.clone()),
                Change::BinaryRemoved(node.binary())
            ]
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), original, "{name}");
        assert_eq!(mode(&path), file_mode);
        assert!(!node.binary().exists());
        assert_eq!(node.listing(), [name]);

        let before = stamp(&path);
        assert_eq!(
            node.uninstall(),
            Report::default(),
            "uninstall is idempotent"
        );
        assert_eq!(stamp(&path), before);
    }
}

#[test]
fn a_single_plugin_conf_becomes_a_list_and_comes_back() {
    let node = Node::new();
    let original = fixture("10-mynet.conf");
    let conf = node.write("10-mynet.conf", &original, 0o640);
    let conflist = node.conf("10-mynet.conflist");
    let backup = node.conf("10-mynet.conf.septum-backup");

    let report = node.install(SOCKET).expect("install");
    assert_eq!(
        report.changes,
        [
            Change::BinaryInstalled(node.binary()),
            Change::Converted {
                conf: conf.clone(),
                conflist: conflist.clone(),
                backup: backup.clone()
            }
        ]
    );
    assert_eq!(
        node.listing(),
        ["10-mynet.conf.septum-backup", "10-mynet.conflist"]
    );
    assert_eq!(
        install::config_files(&node.dirs.conf_dir).unwrap(),
        std::slice::from_ref(&conflist),
        "the list is the only configuration a runtime reads"
    );
    assert_eq!(fs::read_to_string(&backup).unwrap(), original);
    assert_eq!(mode(&backup), 0o640);
    assert_eq!(mode(&conflist), 0o640);

    let text = fs::read_to_string(&conflist).unwrap();
    let list: Value = serde_json::from_str(&text).unwrap();
    let plugin: Value = serde_json::from_str(&original).unwrap();
    assert_eq!(
        list,
        json!({"cniVersion": "0.3.1", "name": "mynet", "plugins": [plugin, septum_entry(SOCKET)]})
    );
    // The original object verbatim, one level deeper, in the file's own four-space indentation.
    let nested = original.trim_end().replace('\n', "\n        ");
    assert!(
        text.starts_with(&format!(
            "{{\n    \"cniVersion\": \"0.3.1\",\n    \"name\": \"mynet\",\n    \"plugins\": [\n        {nested},\n        {{\n            \"type\": \"septum-cni\","
        )),
        "{text}"
    );
    let confs = libcni_plugins(&text);
    config::parse(&serde_json::to_vec(&confs[1]).unwrap(), Command::Add)
        .expect("septum-cni accepts its entry");

    let before = (stamp(&conflist), stamp(&backup));
    let report = node.install(SOCKET).expect("second install");
    assert_eq!(
        report.changes,
        [
            Change::BinaryUnchanged(node.binary()),
            Change::EntryUnchanged(conflist.clone())
        ]
    );
    assert_eq!((stamp(&conflist), stamp(&backup)), before);

    let report = node.uninstall();
    assert_eq!(
        report.changes,
        [
            Change::Restored {
                backup: backup.clone(),
                conf: conf.clone()
            },
            Change::ConversionRemoved(conflist.clone()),
            Change::BinaryRemoved(node.binary())
        ]
    );
    assert_eq!(node.listing(), ["10-mynet.conf"]);
    assert_eq!(fs::read_to_string(&conf).unwrap(), original);
    assert_eq!(mode(&conf), 0o640);
    assert_eq!(node.uninstall(), Report::default());
}

#[test]
fn a_conversion_survives_a_crash_and_a_rewritten_conf() {
    let node = Node::new();
    let original = fixture("10-mynet.conf");
    let conf = node.write("10-mynet.conf", &original, 0o644);
    let conflist = node.conf("10-mynet.conflist");
    let backup = node.conf("10-mynet.conf.septum-backup");
    node.install(SOCKET).expect("install");
    let converted = stamp(&conflist);

    // A crash after the list was written but before the original was renamed leaves both.
    fs::rename(&backup, &conf).unwrap();
    let report = node.install(SOCKET).expect("install after a crash");
    assert!(report.changes.contains(&Change::Converted {
        conf: conf.clone(),
        conflist: conflist.clone(),
        backup: backup.clone()
    }));
    assert_eq!(
        node.listing(),
        ["10-mynet.conf.septum-backup", "10-mynet.conflist"]
    );
    assert_eq!(stamp(&conflist), converted, "the list was already right");

    // A tool rewrites its .conf (it sorts first again): the new one is converted and kept.
    let rewritten = original.replace("10.10.0.0/16", "10.11.0.0/16");
    node.write("10-mynet.conf", &rewritten, 0o644);
    node.install(SOCKET).expect("install after a rewrite");
    assert_eq!(fs::read_to_string(&backup).unwrap(), rewritten);
    let list: Value = serde_json::from_str(&fs::read_to_string(&conflist).unwrap()).unwrap();
    assert_eq!(list["plugins"][0]["ipam"]["subnet"], "10.11.0.0/16");
    assert_eq!(list["plugins"].as_array().unwrap().len(), 2);

    // Uninstall interrupted after the restore: the leftover list is still found and removed.
    fs::rename(&backup, &conf).unwrap();
    let report = node.uninstall();
    assert_eq!(
        report.changes,
        [
            Change::ConversionRemoved(conflist.clone()),
            Change::BinaryRemoved(node.binary())
        ]
    );
    assert_eq!(node.listing(), ["10-mynet.conf"]);
    assert_eq!(fs::read_to_string(&conf).unwrap(), rewritten);
}

#[test]
fn an_existing_entry_is_updated_not_duplicated() {
    let node = Node::new();
    // Two septum-cni entries, neither last: the last one is kept (updated, moved last).
    let text = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "septum-cni",
      "agentSocket": "/old/agent.sock"
    },
    {
      "type": "flannel",
      "delegate": {"hairpinMode": true}
    },
    {
      "type": "septum-cni",
      "addTimeout": "30s",
      "agentSocket": "/old/agent.sock"
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
"#;
    let path = node.write("10-flannel.conflist", text, 0o644);
    let report = node.install(SOCKET).expect("install");
    assert_eq!(report.changes[1], Change::EntryUpdated(path.clone()));
    let updated = fs::read_to_string(&path).unwrap();
    assert_eq!(
        updated,
        r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {"hairpinMode": true}
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    },
    {
      "type": "septum-cni",
      "addTimeout": "30s",
      "agentSocket": "/run/septum/agent.sock"
    }
  ]
}
"#
    );

    // A new socket changes exactly the socket's bytes.
    let report = node.install("/run/other/agent.sock").expect("install");
    assert_eq!(report.changes[1], Change::EntryUpdated(path.clone()));
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        updated.replace("/run/septum/agent.sock", "/run/other/agent.sock")
    );

    // An entry without agentSocket gets one, in the entry's own spacing; then it is stable.
    let path = node.write(
        "10-flannel.conflist",
        r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type" : "septum-cni"}]}"#,
        0o644,
    );
    node.install(SOCKET).expect("install");
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        r#"{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel"},{"type" : "septum-cni","agentSocket" : "/run/septum/agent.sock"}]}"#
    );
    let before = stamp(&path);
    let report = node.install(SOCKET).expect("install");
    assert_eq!(report.changes[1], Change::EntryUnchanged(path.clone()));
    assert_eq!(stamp(&path), before);
}

/// One bad input: the files in the conf dir, and what install must say.
struct Bad<'a> {
    files: Vec<(&'a str, &'a str)>,
    check: fn(&InstallError) -> bool,
    socket: &'a str,
}

#[test]
fn bad_configurations_are_refused_naming_the_file_and_nothing_is_written() {
    let readme_conf = fixture("10-mynet-0.2.0.conf");
    let readme_conf = readme_conf.as_str();
    let flannel = fixture("10-flannel.conflist");
    let flannel = flannel.as_str();
    let mynet = fixture("10-mynet.conf");
    let mynet = mynet.as_str();
    let cases: Vec<(&str, Bad)> = vec![
        (
            "an empty conf dir",
            Bad {
                files: vec![("README", "not a configuration")],
                check: |e| matches!(e, InstallError::NoConfig { .. }),
                socket: SOCKET,
            },
        ),
        (
            "not JSON",
            Bad {
                files: vec![("10-x.conflist", "{ \"name\": ")],
                check: |e| matches!(e, InstallError::NotJson { .. }),
                socket: SOCKET,
            },
        ),
        (
            "not an object",
            Bad {
                files: vec![("10-x.conflist", "[1, 2]")],
                check: |e| {
                    matches!(
                        e,
                        InstallError::Malformed {
                            problem: Malformed::NotObject,
                            ..
                        }
                    )
                },
                socket: SOCKET,
            },
        ),
        (
            "no plugins",
            Bad {
                files: vec![("10-x.conflist", r#"{"cniVersion": "1.0.0", "name": "x"}"#)],
                check: |e| {
                    matches!(
                        e,
                        InstallError::Malformed {
                            problem: Malformed::NoPlugins,
                            ..
                        }
                    )
                },
                socket: SOCKET,
            },
        ),
        (
            "empty plugins",
            Bad {
                files: vec![(
                    "10-x.conflist",
                    r#"{"cniVersion": "1.0.0", "name": "x", "plugins": []}"#,
                )],
                check: |e| {
                    matches!(
                        e,
                        InstallError::Malformed {
                            problem: Malformed::EmptyPlugins,
                            ..
                        }
                    )
                },
                socket: SOCKET,
            },
        ),
        (
            "plugins not a list",
            Bad {
                files: vec![(
                    "10-x.conflist",
                    r#"{"cniVersion": "1.0.0", "name": "x", "plugins": {"type": "bridge"}}"#,
                )],
                check: |e| {
                    matches!(
                        e,
                        InstallError::Malformed {
                            problem: Malformed::PluginsType,
                            ..
                        }
                    )
                },
                socket: SOCKET,
            },
        ),
        (
            "a plugin without type",
            Bad {
                files: vec![(
                    "10-x.conflist",
                    r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}, {"ipam": {}}]}"#,
                )],
                check: |e| {
                    matches!(
                        e,
                        InstallError::Malformed {
                            problem: Malformed::PluginType(1),
                            ..
                        }
                    )
                },
                socket: SOCKET,
            },
        ),
        (
            "no name",
            Bad {
                files: vec![(
                    "10-x.conflist",
                    r#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}"#,
                )],
                check: |e| {
                    matches!(
                        e,
                        InstallError::Malformed {
                            problem: Malformed::Name,
                            ..
                        }
                    )
                },
                socket: SOCKET,
            },
        ),
        (
            "cniVersion 0.2.0 in a list",
            Bad {
                files: vec![(
                    "10-x.conflist",
                    r#"{"cniVersion": "0.2.0", "name": "x", "plugins": [{"type": "bridge"}]}"#,
                )],
                check: |e| matches!(e, InstallError::Version { found: Some(v), .. } if v == "0.2.0"),
                socket: SOCKET,
            },
        ),
        (
            "no cniVersion",
            Bad {
                files: vec![(
                    "10-x.conflist",
                    r#"{"name": "x", "plugins": [{"type": "bridge"}]}"#,
                )],
                check: |e| matches!(e, InstallError::Version { found: None, .. }),
                socket: SOCKET,
            },
        ),
        (
            "a newer version listed in cniVersions",
            Bad {
                files: vec![(
                    "10-x.conflist",
                    r#"{"cniVersions": ["1.0.0", "2.0.0"], "name": "x", "plugins": [{"type": "bridge"}]}"#,
                )],
                check: |e| matches!(e, InstallError::Version { found: Some(v), .. } if v == "2.0.0"),
                socket: SOCKET,
            },
        ),
        (
            "the CNI README's 0.2.0 conf",
            Bad {
                files: vec![("10-mynet.conf", readme_conf)],
                check: |e| matches!(e, InstallError::Version { found: Some(v), .. } if v == "0.2.0"),
                socket: SOCKET,
            },
        ),
        (
            "a list in a .conf file",
            Bad {
                files: vec![("10-flannel.conf", flannel)],
                check: |e| {
                    matches!(
                        e,
                        InstallError::Malformed {
                            problem: Malformed::NoType,
                            ..
                        }
                    )
                },
                socket: SOCKET,
            },
        ),
        (
            "a network name septum-cni refuses",
            Bad {
                files: vec![(
                    "10-x.conflist",
                    r#"{"cniVersion": "1.0.0", "name": "my net", "plugins": [{"type": "bridge"}]}"#,
                )],
                check: |e| matches!(e, InstallError::Refused { .. }),
                socket: SOCKET,
            },
        ),
        (
            "a relative agent socket",
            Bad {
                files: vec![("10-flannel.conflist", flannel)],
                check: |e| matches!(e, InstallError::Refused { .. }),
                socket: "run/agent.sock",
            },
        ),
        (
            "a foreign list under the conversion's name",
            Bad {
                files: vec![("10-mynet.conf", mynet), ("10-mynet.conflist", flannel)],
                check: |e| {
                    matches!(
                        e,
                        InstallError::Conversion {
                            conflict: ConversionConflict::Exists { .. },
                            ..
                        }
                    )
                },
                socket: SOCKET,
            },
        ),
        (
            "a file between the conf and its conversion",
            Bad {
                files: vec![("10-mynet.conf", mynet), ("10-mynet.conf.d.json", mynet)],
                check: |e| matches!(e, InstallError::Conversion { conflict: ConversionConflict::WouldReorder { earlier, .. }, .. } if earlier.ends_with("10-mynet.conf.d.json")),
                socket: SOCKET,
            },
        ),
    ];
    for (what, bad) in cases {
        let node = Node::new();
        for (name, text) in &bad.files {
            node.write(name, text, 0o644);
        }
        let before: Vec<_> = node
            .listing()
            .iter()
            .map(|n| (n.clone(), fs::read(node.conf(n)).unwrap()))
            .collect();
        let err = node.install(bad.socket).expect_err(what);
        assert!((bad.check)(&err), "{what}: {err:?}");
        // The message names the file (or, with no configuration, the directory).
        let named = match &err {
            InstallError::NoConfig { .. } => node.dirs.conf_dir.clone(),
            _ => node.conf(bad.files[0].0),
        };
        let message = err.to_string();
        assert!(
            message.contains(&named.display().to_string()),
            "{what}: {message:?} does not name {}",
            named.display()
        );
        let after: Vec<_> = node
            .listing()
            .iter()
            .map(|n| (n.clone(), fs::read(node.conf(n)).unwrap()))
            .collect();
        assert_eq!(after, before, "{what}: the conf dir was touched");
        assert!(!node.binary().exists(), "{what}: the binary was installed");
    }

    // A missing conf dir reads as empty, as for libcni.
    let node = Node::new();
    fs::remove_dir(&node.dirs.conf_dir).unwrap();
    let err = node.install(SOCKET).unwrap_err();
    assert!(matches!(err, InstallError::NoConfig { .. }), "{err:?}");

    // A symlinked configuration is not replaced by a file.
    let node = Node::new();
    let target = node._dir.path().join("managed.conflist");
    fs::write(&target, flannel).unwrap();
    std::os::unix::fs::symlink(&target, node.conf("10-flannel.conflist")).unwrap();
    let err = node.install(SOCKET).unwrap_err();
    assert!(matches!(err, InstallError::Symlink { .. }), "{err:?}");
    assert!(err.to_string().contains("10-flannel.conflist"), "{err}");
}

#[test]
fn the_node_network_is_the_file_containerd_picks() {
    let node = Node::new();
    for name in [
        "99-loopback.conf",
        "10-b.conflist",
        "05-a.json",
        "5-late.conf",
        "README",
        "00-notes.txt",
        ".hidden.conflist",
        "01-old.conf.septum-backup",
        ".00-x.conflist.septum-tmp",
    ] {
        node.write(name, "{}", 0o644);
    }
    fs::create_dir(node.conf("00-dir.conflist")).unwrap();
    let names: Vec<String> = install::config_files(&node.dirs.conf_dir)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // Go's filepath.Ext counts a dotfile's whole name; the sort is by bytes ('.' < '0' < '5').
    assert_eq!(
        names,
        [
            ".hidden.conflist",
            "05-a.json",
            "10-b.conflist",
            "5-late.conf",
            "99-loopback.conf"
        ]
    );
}

/// Installs into a bridge list (containerd's, with a private bridge, subnets and IPAM state),
/// then runs the installed chain the way libcni does, with the installed septum-cni binary
/// talking to the agent test double over the installed `agentSocket`: ADD through bridge,
/// portmap and septum-cni; DEL in reverse. Then uninstall gives back the original bytes.
#[test]
fn the_installed_bridge_chain_runs_through_the_real_plugins() {
    const CNI_PATH: &str = "/usr/lib/cni";
    assert!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").expect("stat")) == 0,
        "this test needs root (network namespaces, veth pairs)"
    );
    assert!(
        Path::new(CNI_PATH).join("bridge").exists(),
        "{CNI_PATH}/bridge is missing: install Debian's containernetworking-plugins"
    );
    let tag = unique_tag();
    let node_ns = NetNs::new(&format!("sin-{tag}"));
    let pod_ns = NetNs::new(&format!("sip-{tag}"));
    let node = Node::new();
    let ipam_dir = node._dir.path().join("ipam");
    let socket = node._dir.path().join("agent.sock");
    let bridge = format!("sib{tag}");
    let original = fixture("10-containerd-net.conflist")
        .replace("\"cni0\"", &format!("\"{bridge}\""))
        .replace("10.88.0.0/16", "10.252.9.0/24")
        .replace("2001:4860:4860::/64", "fd00:252:9::/64")
        .replace(
            "\"type\": \"host-local\",",
            &format!(
                "\"type\": \"host-local\",\n        \"dataDir\": \"{}\",",
                ipam_dir.display()
            ),
        );
    let path = node.write("10-containerd-net.conflist", &original, 0o644);
    node.install(socket.to_str().unwrap()).expect("install");
    let installed = fs::read_to_string(&path).unwrap();
    let plugins = libcni_plugins(&installed);
    assert_eq!(
        plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["bridge", "portmap", "septum-cni"]
    );

    let agent = AgentDouble::start(&socket);
    let container_id = format!("ctr{tag}");
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-{tag};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID=uid-{tag}"
    );
    let search = format!("{}:{CNI_PATH}", node.dirs.bin_dir.display());
    let netns = pod_ns.path();
    let program = |ty: &str| {
        [node.dirs.bin_dir.as_path(), Path::new(CNI_PATH)]
            .iter()
            .map(|d| d.join(ty))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no plugin {ty}"))
    };
    let run = |command: &str, conf: &Value| {
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id.as_str()),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args.as_str()),
            ("CNI_PATH", search.as_str()),
        ];
        let ty = conf["type"].as_str().unwrap();
        let bin = program(ty);
        let run = exec(
            Some(&node_ns.name),
            bin.to_str().unwrap(),
            &env,
            &serde_json::to_vec(conf).unwrap(),
        );
        assert!(run.success, "{command} {ty}: {run:?}");
        run
    };

    // ADD: each plugin gets the previous one's result, as libcni's AddNetworkList does.
    let mut prev: Option<Value> = None;
    let mut bridge_result = None;
    for plugin in &plugins {
        let mut conf = plugin.clone();
        if let Some(p) = &prev {
            conf["prevResult"] = p.clone();
        }
        let result = run("ADD", &conf).json();
        bridge_result.get_or_insert_with(|| result.clone());
        prev = Some(result);
    }
    let result = prev.expect("a result");
    assert_eq!(
        Some(&result),
        bridge_result.as_ref(),
        "portmap and septum-cni pass the bridge result through"
    );
    let rec = agent.recorded();
    assert_eq!(rec.adds.len(), 1, "{rec:?}");
    let add = &rec.adds[0];
    assert_eq!(add.network, "containerd-net");
    assert_eq!(add.netns, netns);
    assert_eq!(
        add.attachment.as_ref().map(|a| a.container_id.as_str()),
        Some(container_id.as_str())
    );
    let host = add.host_interface.as_ref().expect("host interface");
    assert!(
        result["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == host.name.as_str()),
        "the agent was told the bridge's host veth {}: {result}",
        host.name
    );

    // DEL in reverse order, each with the cached result.
    for plugin in plugins.iter().rev() {
        let mut conf = plugin.clone();
        conf["prevResult"] = result.clone();
        run("DEL", &conf);
    }
    let rec = agent.recorded();
    assert_eq!(
        rec.dels
            .last()
            .and_then(|d| d.attachment.as_ref())
            .map(|a| a.container_id.as_str()),
        Some(container_id.as_str())
    );
    drop(agent);

    node.uninstall();
    assert_eq!(fs::read_to_string(&path).unwrap(), original);
    assert!(!node.binary().exists());
}
