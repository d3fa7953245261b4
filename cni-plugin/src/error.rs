//! Failures of a plugin invocation, their CNI error codes, and the error result printed on
//! stdout.
//!
//! Codes 1-99 are the spec's; septum-cni's own start at 100:
//!
//! | code | meaning |
//! |------|---------|
//! | 1    | incompatible CNI version (unsupported, missing, or too old for the command) |
//! | 4    | invalid environment variable (named in `msg`); also a `CNI_NETNS` that cannot be entered or is the plugin's own namespace |
//! | 5    | I/O failure reading stdin |
//! | 6    | stdin is not a JSON object, or a field has the wrong JSON type |
//! | 7    | invalid network configuration: a required field is missing (e.g. `prevResult` on ADD) or a value is out of range |
//! | 11   | try again later: the agent cannot be reached or did not answer in time (ADD fails closed), or a DEL could neither reach the agent nor be queued |
//! | 50   | STATUS: the agent is not ready or not reachable |
//! | 100  | the host-side interface cannot be found from `CNI_IFNAME` (not a veth, no peer, netlink failure) |
//! | 101  | `prevResult` disagrees with the kernel (interface names, sandbox, MAC) |
//! | 102  | the agent refused the request |
//! | 103  | CHECK: the agent reports the attachment is not as expected |
//! | 999  | internal error (a bug: a panic is reported this way) |
//!
//! Code 2 (unsupported field) is never produced: unknown keys are ignored, see [`crate::config`].

use std::{error::Error as StdError, fmt::Write as _};

use serde::Serialize;

use crate::{
    agent::AgentError, config::ConfigError, del_queue::QueueError, env::EnvError, link::LinkError,
    prev_result::Mismatch, version::CniVersion,
};

/// A CNI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion,
    /// 4: invalid necessary environment variables.
    InvalidEnv,
    /// 5: I/O failure.
    Io,
    /// 6: failed to decode content.
    Decode,
    /// 7: invalid network configuration.
    InvalidConfig,
    /// 11: try again later.
    TryAgainLater,
    /// 50: the plugin is not available (cannot service ADD).
    NotAvailable,
    /// 100: the host-side interface cannot be found.
    HostInterface,
    /// 101: prevResult disagrees with the kernel.
    PrevResultMismatch,
    /// 102: the agent refused the request.
    AgentRefused,
    /// 103: CHECK found the attachment not as expected.
    CheckFailed,
    /// 999: internal error.
    Internal,
}

impl ErrorCode {
    /// The number printed in the error result.
    pub fn number(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::InvalidEnv => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decode => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::HostInterface => 100,
            ErrorCode::PrevResultMismatch => 101,
            ErrorCode::AgentRefused => 102,
            ErrorCode::CheckFailed => 103,
            ErrorCode::Internal => 999,
        }
    }
}

/// Everything that can make an invocation fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad environment variable.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// Stdin could not be read.
    #[error("cannot read the network configuration from stdin")]
    Stdin(#[source] std::io::Error),
    /// A bad network configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The host-side interface could not be found.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// prevResult disagrees with the kernel.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// The agent could not be reached or refused.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A DEL could neither reach the agent nor be queued.
    #[error("the agent is unreachable and the DEL could not be queued")]
    DelNotQueued {
        /// Why the agent could not be reached.
        agent: AgentError,
        /// Why queueing failed.
        #[source]
        queue: QueueError,
    },
    /// The agent answered ADD with an unusable endpoint.
    #[error("the agent answered ADD without attaching the endpoint: {0}")]
    BadAddReply(String),
    /// CHECK: the agent says no.
    #[error("the agent reports the attachment is not as expected: {reason}")]
    CheckFailed {
        /// The agent's reason.
        reason: String,
    },
    /// STATUS: the agent is not ready.
    #[error("the septum agent is not ready: {message}")]
    NotReady {
        /// The agent's message.
        message: String,
    },
    /// STATUS: the agent cannot be reached.
    #[error("the septum agent is not available")]
    Unavailable(#[source] AgentError),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The CNI error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Env(_) => ErrorCode::InvalidEnv,
            Error::Stdin(_) => ErrorCode::Io,
            Error::Config(e) => match e {
                ConfigError::MissingVersion
                | ConfigError::UnsupportedVersion(_)
                | ConfigError::CommandTooNew { .. } => ErrorCode::IncompatibleVersion,
                ConfigError::TooLarge { .. }
                | ConfigError::NotJson(_)
                | ConfigError::FieldType { .. } => ErrorCode::Decode,
                ConfigError::MissingField { .. } | ConfigError::InvalidField { .. } => {
                    ErrorCode::InvalidConfig
                }
            },
            Error::Link(e) => {
                if e.is_bad_netns() {
                    ErrorCode::InvalidEnv
                } else {
                    ErrorCode::HostInterface
                }
            }
            Error::Mismatch(_) => ErrorCode::PrevResultMismatch,
            Error::Agent(e) => {
                if e.is_transient() {
                    ErrorCode::TryAgainLater
                } else {
                    ErrorCode::AgentRefused
                }
            }
            Error::DelNotQueued { .. } => ErrorCode::TryAgainLater,
            Error::BadAddReply(_) => ErrorCode::AgentRefused,
            Error::CheckFailed { .. } => ErrorCode::CheckFailed,
            Error::NotReady { .. } | Error::Unavailable(_) => ErrorCode::NotAvailable,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// The spec's error result object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorResult {
    /// The protocol version in use.
    #[serde(rename = "cniVersion")]
    pub cni_version: &'static str,
    /// The error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// The chain of causes, outermost first; empty when there is none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ErrorResult {
    /// The result for `err`, in `version` (the input's when it named a supported one).
    pub fn new(version: Option<CniVersion>, err: &Error) -> Self {
        let mut details = String::new();
        let mut source = err.source();
        while let Some(s) = source {
            if !details.is_empty() {
                details.push_str(": ");
            }
            let _ = write!(details, "{s}");
            source = s.source();
        }
        ErrorResult {
            cni_version: version.unwrap_or(CniVersion::LATEST).as_str(),
            code: err.code().number(),
            msg: err.to_string(),
            details,
        }
    }

    /// The JSON text printed on stdout.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and integers cannot fail; the fallback keeps that
        // claim out of the panic path anyway.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"{}","code":999,"msg":"cannot encode the error result"}}"#,
                self.cni_version
            )
        })
    }
}
