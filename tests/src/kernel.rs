//! The running kernel's version, for tests that need a kernel feature (as aya's integration tests
//! gate on `KernelVersion::current()`): a test whose feature the kernel lacks skips with a printed
//! reason instead of failing. Gate only on what the kernel truly lacks; CI runs everything.

use std::fs;

/// The running kernel's `(major, minor)`, from `/proc/sys/kernel/osrelease` (`6.18.0-1-amd64`).
pub fn version() -> Option<(u32, u32)> {
    parse_release(&fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// True when the running kernel is at least `major.minor`; otherwise prints that the test skips
/// because `feature` needs that kernel, and returns false. Use as
/// `if !kernel::at_least(6, 6, "TCX links") { return; }`.
///
/// A kernel whose version cannot be read counts as new enough: the test then runs and fails
/// loudly if the feature is really missing, rather than skipping silently.
pub fn at_least(major: u32, minor: u32, feature: &str) -> bool {
    match version() {
        Some(running) if running < (major, minor) => {
            eprintln!(
                "skipping: {feature} needs kernel >= {major}.{minor}, this one is {}.{}",
                running.0, running.1
            );
            false
        }
        Some(_) => true,
        None => {
            eprintln!("kernel version unreadable; running the test that needs {feature} anyway");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_release;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(parse_release("6.18.0-1-amd64\n"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-28-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_release("6.6-rc1"), Some((6, 6)));
        assert_eq!(parse_release("6.1.0+"), Some((6, 1)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn this_kernel_has_a_version() {
        assert!(super::version().is_some());
    }
}
