//! The network configuration on stdin: the spec's fields (`cniVersion`, `name`, `prevResult`,
//! `cni.dev/valid-attachments`) and septum-cni's own options, parsed without trusting any of it.
//!
//! Plugin options (all optional):
//!
//! | key            | type   | default                          | meaning                                   |
//! |----------------|--------|----------------------------------|-------------------------------------------|
//! | `agentSocket`  | string | `/run/septum/agent.sock`         | the agent's endpoint-registry unix socket |
//! | `addTimeout`   | string | `10s`                            | how long ADD waits for the agent to attach |
//! | `agentTimeout` | string | `5s`                             | the budget of DEL, CHECK, GC, STATUS and each queued-DEL replay |
//! | `delQueueDir`  | string | `/var/lib/septum/cni-del-queue`  | where DELs wait while the agent is down   |
//!
//! Durations are written like `500ms`, `10s` or `2m` (at most 10 minutes). Paths must be absolute.
//!
//! Unknown keys are ignored: the runtime passes other plugins' conventional keys (`ipam`, `dns`,
//! `args`, `runtimeConfig`) through to every plugin in the chain, so septum-cni cannot tell a typo
//! from someone else's option. Error codes: input that is not a JSON object, or a field of the
//! wrong JSON type, is 6 (decode failure); a missing or unsupported `cniVersion` is 1; a missing
//! required field or a value out of range is 7 (invalid network configuration).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::value::RawValue;

use crate::{
    env::{self, Attachment, Command},
    version::{CniVersion, UnsupportedVersion, supported_list},
};

/// The largest configuration read from stdin. Real configurations are a few KiB; the cap keeps a
/// hostile or broken runtime from making the plugin allocate without bound.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Default for `agentSocket`.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/septum/agent.sock";
/// Default for `delQueueDir`.
pub const DEFAULT_DEL_QUEUE_DIR: &str = "/var/lib/septum/cni-del-queue";
/// Default for `addTimeout`.
pub const DEFAULT_ADD_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `agentTimeout`.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// The key under which GC receives the still-valid attachments.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// More than [`MAX_CONFIG_BYTES`] on stdin.
    #[error("network configuration is larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// Not UTF-8, not JSON, or not a JSON object.
    #[error("network configuration is not a JSON object")]
    NotJson(#[source] serde_json::Error),
    /// No `cniVersion` (the reference library reads that as 0.1.0, which has no chaining).
    #[error(
        "cniVersion is missing (read as 0.1.0); septum-cni supports {}",
        supported_list()
    )]
    MissingVersion,
    /// A `cniVersion` this plugin does not speak.
    #[error("incompatible CNI version; septum-cni supports {}", supported_list())]
    UnsupportedVersion(#[source] UnsupportedVersion),
    /// A command the configuration's version does not have (e.g. GC before 1.1.0).
    #[error("CNI version {version} has no {command} command (needs {minimum} or later)")]
    CommandTooNew {
        /// The configuration's version.
        version: CniVersion,
        /// `CNI_COMMAND`.
        command: &'static str,
        /// The first version with the command.
        minimum: CniVersion,
    },
    /// A field has the wrong JSON type or shape.
    #[error("field `{field}` cannot be decoded")]
    FieldType {
        /// The field, with a path inside it when nested (`prevResult.ips[0].address`).
        field: String,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A required field is absent (or null).
    #[error("field `{field}` is required: {why}")]
    MissingField {
        /// The field.
        field: &'static str,
        /// Why this command needs it.
        why: &'static str,
    },
    /// A field's value is out of range or malformed.
    #[error("field `{field}` has invalid value {value}: {reason}")]
    InvalidField {
        /// The field.
        field: String,
        /// The offending value, as JSON or as text.
        value: String,
        /// The rule it breaks.
        reason: String,
    },
}

/// septum-cni's own options, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginOptions {
    /// `agentSocket`.
    pub agent_socket: PathBuf,
    /// `addTimeout`.
    pub add_timeout: Duration,
    /// `agentTimeout`.
    pub agent_timeout: Duration,
    /// `delQueueDir`.
    pub del_queue_dir: PathBuf,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            agent_socket: PathBuf::from(DEFAULT_AGENT_SOCKET),
            add_timeout: DEFAULT_ADD_TIMEOUT,
            agent_timeout: DEFAULT_AGENT_TIMEOUT,
            del_queue_dir: PathBuf::from(DEFAULT_DEL_QUEUE_DIR),
        }
    }
}

/// A parsed network configuration, borrowing `prevResult` from the input so that ADD can print it
/// back byte for byte.
#[derive(Debug, Clone)]
pub struct NetConf<'a> {
    /// `cniVersion`.
    pub cni_version: CniVersion,
    /// `name`: the network name, validated like a container id.
    pub name: String,
    /// `prevResult` exactly as given; `None` when absent or null.
    pub prev_result: Option<&'a RawValue>,
    /// septum-cni's options.
    pub options: PluginOptions,
    /// `cni.dev/valid-attachments`: present (possibly empty) for GC, empty otherwise.
    pub valid_attachments: Vec<Attachment>,
}

/// The `cniVersion` of a configuration, if it names one this plugin supports; for the version of
/// error output, which should match the input when it can.
pub fn peek_version(stdin: &[u8]) -> Option<CniVersion> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(rename = "cniVersion", borrow)]
        cni_version: Option<&'a str>,
    }
    let peek: Peek<'_> = serde_json::from_slice(stdin).ok()?;
    peek.cni_version?.parse().ok()
}

/// Parses and validates the configuration for `command` (not VERSION, which reads no
/// configuration it could refuse).
pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf<'_>, ConfigError> {
    if stdin.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            limit: MAX_CONFIG_BYTES,
        });
    }
    // Duplicate keys keep the last value, as Go's encoding/json (and so libcni) does.
    let fields: BTreeMap<String, &RawValue> =
        serde_json::from_slice(stdin).map_err(ConfigError::NotJson)?;

    let cni_version = match field::<String>(&fields, "cniVersion")? {
        None => return Err(ConfigError::MissingVersion),
        Some(v) => v
            .parse::<CniVersion>()
            .map_err(ConfigError::UnsupportedVersion)?,
    };
    let minimum = CniVersion::minimum_for(command);
    if cni_version < minimum {
        return Err(ConfigError::CommandTooNew {
            version: cni_version,
            command: command.as_str(),
            minimum,
        });
    }

    let name = field::<String>(&fields, "name")?.ok_or(ConfigError::MissingField {
        field: "name",
        why: "every network configuration has a name",
    })?;
    if !env::is_valid_name(&name) {
        return Err(ConfigError::InvalidField {
            field: "name".into(),
            value: format!("{name:?}"),
            reason: "must start with a letter or digit, then letters, digits, '_', '.' or '-'"
                .into(),
        });
    }
    // Only the type of `type` is checked: the runtime found this binary by it.
    field::<String>(&fields, "type")?;

    let prev_result = match fields.get("prevResult") {
        Some(raw) if raw.get() != "null" => Some(*raw),
        _ => None,
    };

    let mut options = PluginOptions::default();
    if let Some(p) = field::<String>(&fields, "agentSocket")? {
        options.agent_socket = absolute_path("agentSocket", p)?;
    }
    if let Some(p) = field::<String>(&fields, "delQueueDir")? {
        options.del_queue_dir = absolute_path("delQueueDir", p)?;
    }
    if let Some(d) = field::<String>(&fields, "addTimeout")? {
        options.add_timeout = duration("addTimeout", &d)?;
    }
    if let Some(d) = field::<String>(&fields, "agentTimeout")? {
        options.agent_timeout = duration("agentTimeout", &d)?;
    }

    let valid_attachments = if command == Command::Gc {
        valid_attachments(&fields)?
    } else {
        Vec::new()
    };

    Ok(NetConf {
        cni_version,
        name,
        prev_result,
        options,
        valid_attachments,
    })
}

/// Decodes one top-level field; `None` when absent or null.
fn field<T: DeserializeOwned>(
    fields: &BTreeMap<String, &RawValue>,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    match fields.get(key) {
        None => Ok(None),
        Some(raw) => {
            serde_json::from_str::<Option<T>>(raw.get()).map_err(|source| ConfigError::FieldType {
                field: key.to_string(),
                source,
            })
        }
    }
}

/// Decodes a nested value, naming the path of a wrong-typed part (`prevResult.ips[2].address`).
pub(crate) fn decode_nested<'de, T: Deserialize<'de>>(
    field: &str,
    raw: &'de RawValue,
) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::FieldType {
            field: if path == "." {
                field.to_string()
            } else {
                format!("{field}.{path}")
            },
            source: e.into_inner(),
        }
    })
}

fn absolute_path(field: &str, value: String) -> Result<PathBuf, ConfigError> {
    if Path::new(&value).is_absolute() && !value.contains('\0') {
        Ok(PathBuf::from(value))
    } else {
        Err(ConfigError::InvalidField {
            field: field.to_string(),
            value: format!("{value:?}"),
            reason: "must be an absolute path".into(),
        })
    }
}

/// Parses `500ms`, `10s` or `2m`: a positive whole number and a unit.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

fn duration(field: &str, value: &str) -> Result<Duration, ConfigError> {
    match parse_duration(value) {
        Some(d) if d <= MAX_TIMEOUT => Ok(d),
        _ => Err(ConfigError::InvalidField {
            field: field.to_string(),
            value: format!("{value:?}"),
            reason: "must be a positive duration like \"500ms\", \"10s\" or \"2m\", at most 10m"
                .into(),
        }),
    }
}

fn valid_attachments(fields: &BTreeMap<String, &RawValue>) -> Result<Vec<Attachment>, ConfigError> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
    }
    // An absent list is refused rather than read as empty: empty means "nothing is valid" and
    // would make the agent drop every endpoint of the network.
    let raw = match fields.get(VALID_ATTACHMENTS_KEY) {
        Some(raw) if raw.get() != "null" => *raw,
        _ => {
            return Err(ConfigError::MissingField {
                field: VALID_ATTACHMENTS_KEY,
                why: "GC must be told which attachments are still valid",
            });
        }
    };
    let wire: Vec<Wire> = decode_nested(VALID_ATTACHMENTS_KEY, raw)?;
    wire.into_iter()
        .enumerate()
        .map(|(i, w)| {
            let invalid = |what: &str, value: &str, reason: String| ConfigError::InvalidField {
                field: format!("{VALID_ATTACHMENTS_KEY}[{i}].{what}"),
                value: format!("{value:?}"),
                reason,
            };
            env::validate_container_id(&w.container_id)
                .map_err(|e| invalid("containerID", &w.container_id, e.to_string()))?;
            env::validate_ifname(&w.ifname)
                .map_err(|e| invalid("ifname", &w.ifname, e.to_string()))?;
            Ok(Attachment {
                container_id: w.container_id,
                ifname: w.ifname,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        for bad in [
            "",
            "0s",
            "s",
            "10",
            "1h",
            "-1s",
            "1.5s",
            "99999999999s",
            " 1s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_options() {
        let conf = parse(
            br#"{"cniVersion":"1.0.0","name":"net","type":"septum-cni","agentSocket":"/tmp/a.sock","addTimeout":"250ms"}"#,
            Command::Del,
        )
        .expect("valid configuration");
        assert_eq!(conf.options.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(conf.options.add_timeout, Duration::from_millis(250));
        assert_eq!(conf.options.agent_timeout, DEFAULT_AGENT_TIMEOUT);
        assert!(conf.prev_result.is_none());
    }

    #[test]
    fn prev_result_is_borrowed_verbatim() {
        let input = br#"{"cniVersion":"1.0.0","name":"n","prevResult":{ "z":1, "a" : [ 2 ] }}"#;
        let conf = parse(input, Command::Add).expect("valid configuration");
        assert_eq!(
            conf.prev_result.map(RawValue::get),
            Some(r#"{ "z":1, "a" : [ 2 ] }"#)
        );
    }

    #[test]
    fn gc_needs_the_valid_attachments_key() {
        let err = parse(br#"{"cniVersion":"1.1.0","name":"n"}"#, Command::Gc).unwrap_err();
        assert!(matches!(err, ConfigError::MissingField { .. }), "{err:?}");
        let conf = parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
            Command::Gc,
        )
        .expect("valid GC configuration");
        assert_eq!(conf.valid_attachments.len(), 1);
        let err = parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":5,"ifname":"eth0"}]}"#,
            Command::Gc,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::FieldType { field, .. } if field.contains("containerID")),
            "{err:?}"
        );
    }
}
