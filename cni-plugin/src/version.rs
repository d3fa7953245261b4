//! The CNI spec versions this plugin speaks, and which commands each version has.
//!
//! septum-cni is a chained plugin: it needs `prevResult`, which exists from spec 0.3.0 on, so it
//! supports 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0 and refuses older versions with code 1
//! (incompatible version). CHECK needs 0.4.0 or later, GC and STATUS need 1.1.0, as in the spec.

use std::{fmt, str::FromStr};

use crate::env::Command;

/// A CNI spec version septum-cni supports. Ordered by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: rich result type, plugin chaining.
    V0_3_0,
    /// 0.3.1: typo fixes only.
    V0_3_1,
    /// 0.4.0: CHECK, prevResult on DEL.
    V0_4_0,
    /// 1.0.0: configuration lists only, no `version` in `ips`.
    V1_0_0,
    /// 1.1.0: GC and STATUS.
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first (the VERSION command's `supportedVersions`).
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The newest supported version: used in output when the input named none we support.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version as the spec spells it, e.g. `"1.0.0"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// The oldest version that has `command`.
    pub fn minimum_for(command: Command) -> CniVersion {
        match command {
            Command::Add | Command::Del | Command::Version => CniVersion::V0_3_0,
            Command::Check => CniVersion::V0_4_0,
            Command::Gc | Command::Status => CniVersion::V1_1_0,
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version string that is not one of [`CniVersion::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI version {0:?} is not supported")]
pub struct UnsupportedVersion(pub String);

impl FromStr for CniVersion {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CniVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_string()))
    }
}

/// The comma-separated list of supported versions, for error messages.
pub fn supported_list() -> String {
    CniVersion::ALL.map(CniVersion::as_str).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_nothing_else() {
        for v in CniVersion::ALL {
            assert_eq!(v.as_str().parse::<CniVersion>(), Ok(v));
        }
        for bad in ["", "0.2.0", "0.1.0", "1.0", "1.2.0", " 1.0.0", "v1.0.0"] {
            assert!(bad.parse::<CniVersion>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn commands_need_the_versions_the_spec_gives_them() {
        assert_eq!(CniVersion::minimum_for(Command::Check), CniVersion::V0_4_0);
        assert_eq!(CniVersion::minimum_for(Command::Gc), CniVersion::V1_1_0);
        assert_eq!(CniVersion::minimum_for(Command::Status), CniVersion::V1_1_0);
        assert!(CniVersion::V0_3_1 < CniVersion::V1_0_0);
    }
}
