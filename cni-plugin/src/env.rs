//! The invocation's environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and
//! `CNI_ARGS`, validated for the command at hand the way the reference `skel` package does
//! (missing or malformed variables are error code 4, naming the variable).
//!
//! `CNI_PATH` is not read: septum-cni delegates to no other plugin.

use std::ffi::OsString;

/// The CNI operation requested by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Register a new attachment with the agent.
    Add,
    /// Forget an attachment (idempotent).
    Del,
    /// Ask the agent whether an attachment is as expected.
    Check,
    /// Tell the agent which attachments are still valid.
    Gc,
    /// Ask whether the agent can serve ADD.
    Status,
    /// Report supported spec versions.
    Version,
}

impl Command {
    /// The spelling in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// A malformed or missing environment variable (CNI error code 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// Variables the command needs are unset or empty.
    #[error("required environment variables missing: {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    /// A variable is not valid UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUnicode(&'static str),
    /// `CNI_COMMAND` names no CNI operation.
    #[error("unknown CNI_COMMAND {0:?}")]
    UnknownCommand(String),
    /// `CNI_CONTAINERID` breaks the spec's character rules.
    #[error(
        "invalid CNI_CONTAINERID {0:?}: must start with a letter or digit, then letters, digits, '_', '.' or '-'"
    )]
    ContainerId(String),
    /// `CNI_IFNAME` is not a valid Linux interface name.
    #[error("invalid CNI_IFNAME {value:?}: {reason}")]
    Ifname {
        /// The value given.
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// `CNI_ARGS` is not a list of `KEY=VALUE` pairs separated by `;`.
    #[error("invalid CNI_ARGS: pair {0:?} is not KEY=VALUE")]
    Args(String),
}

/// The pod an attachment belongs to, from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_UID`); empty strings when the runtime passed none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
    /// `K8S_POD_UID`.
    pub uid: String,
}

impl PodArgs {
    /// Parses `CNI_ARGS` (`IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;...`). Keys other
    /// than the three pod keys are ignored: other plugins in the chain own them. Empty pairs (a
    /// trailing `;`) are tolerated.
    pub fn parse(args: &str) -> Result<Self, EnvError> {
        let mut pod = PodArgs::default();
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.contains('=') => (k, v),
                _ => return Err(EnvError::Args(pair.to_string())),
            };
            match key {
                "K8S_POD_NAMESPACE" => pod.namespace = value.to_string(),
                "K8S_POD_NAME" => pod.name = value.to_string(),
                "K8S_POD_UID" => pod.uid = value.to_string(),
                _ => {}
            }
        }
        Ok(pod)
    }
}

/// One attachment as the environment names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`, validated.
    pub container_id: String,
    /// `CNI_IFNAME`, validated.
    pub ifname: String,
}

/// The validated environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` and `CNI_IFNAME`: present for ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
    /// `CNI_NETNS`: required for ADD and CHECK; `None` when unset or empty (DEL may get either).
    pub netns: Option<String>,
    /// `CNI_ARGS` as given (empty when unset). Parsed by the commands that use it, so that DEL can
    /// tolerate a malformed value.
    pub cni_args: String,
}

impl Invocation {
    /// Reads and validates the environment through `get` (`std::env::var_os` in the binary).
    pub fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Result<Self, EnvError> {
        let var = |name: &'static str| -> Result<Option<String>, EnvError> {
            match get(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(Some)
                    .map_err(|_| EnvError::NotUnicode(name)),
            }
        };
        let Some(command) = var("CNI_COMMAND")? else {
            return Err(EnvError::Missing(vec!["CNI_COMMAND"]));
        };
        let command = Command::parse(&command).ok_or(EnvError::UnknownCommand(command))?;
        let (needs_attachment, needs_netns) = match command {
            Command::Add | Command::Check => (true, true),
            Command::Del => (true, false),
            Command::Gc | Command::Status | Command::Version => (false, false),
        };
        let container_id = var("CNI_CONTAINERID")?;
        let netns = var("CNI_NETNS")?;
        let ifname = var("CNI_IFNAME")?;
        let cni_args = var("CNI_ARGS")?.unwrap_or_default();

        let mut missing = Vec::new();
        if needs_attachment && container_id.is_none() {
            missing.push("CNI_CONTAINERID");
        }
        if needs_netns && netns.is_none() {
            missing.push("CNI_NETNS");
        }
        if needs_attachment && ifname.is_none() {
            missing.push("CNI_IFNAME");
        }
        if !missing.is_empty() {
            return Err(EnvError::Missing(missing));
        }
        let attachment = match (needs_attachment, container_id, ifname) {
            (true, Some(container_id), Some(ifname)) => {
                validate_container_id(&container_id)?;
                validate_ifname(&ifname)?;
                Some(Attachment {
                    container_id,
                    ifname,
                })
            }
            _ => None,
        };
        Ok(Invocation {
            command,
            attachment,
            netns,
            cni_args,
        })
    }
}

/// Checks the spec's rule for container ids (and network names): an ASCII letter or digit, then
/// letters, digits, `_`, `.` or `-`. The DEL queue relies on this: such an id is a safe file name
/// part and never contains `@`.
pub fn is_valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Validates `CNI_CONTAINERID`.
pub fn validate_container_id(id: &str) -> Result<(), EnvError> {
    if is_valid_name(id) {
        Ok(())
    } else {
        Err(EnvError::ContainerId(id.to_string()))
    }
}

/// Validates an interface name by the kernel's rules (as the spec restates them).
pub fn validate_ifname(name: &str) -> Result<(), EnvError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 15 {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "\".\" or \"..\""
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "contains '/', ':' or whitespace"
    } else {
        return Ok(());
    };
    Err(EnvError::Ifname {
        value: name.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let err = Invocation::from_env(env(&[("CNI_COMMAND", "ADD")])).unwrap_err();
        assert_eq!(
            err,
            EnvError::Missing(vec!["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
        );
        let ok = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/proc/1/ns/net"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect("valid ADD environment");
        assert_eq!(ok.netns.as_deref(), Some("/proc/1/ns/net"));
    }

    #[test]
    fn del_tolerates_an_empty_netns() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect("DEL without netns");
        assert_eq!(inv.netns, None);
    }

    #[test]
    fn rejects_bad_ids_and_names() {
        for id in ["-abc", ".x", "a/b", "a b", "a@b", ""] {
            assert!(!is_valid_name(id), "{id:?} accepted");
        }
        for name in ["", ".", "..", "a/b", "a:b", "a b", "0123456789abcdef"] {
            assert!(validate_ifname(name).is_err(), "{name:?} accepted");
        }
        assert!(validate_ifname("0123456789abcde").is_ok());
    }

    #[test]
    fn parses_pod_args_and_ignores_other_keys() {
        let pod = PodArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=u-1;",
        )
        .expect("valid CNI_ARGS");
        assert_eq!(
            pod,
            PodArgs {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: "u-1".into()
            }
        );
        assert_eq!(PodArgs::parse(""), Ok(PodArgs::default()));
        assert!(PodArgs::parse("novalue").is_err());
        assert!(PodArgs::parse("=v").is_err());
        assert!(PodArgs::parse("a=b=c").is_err());
    }
}
