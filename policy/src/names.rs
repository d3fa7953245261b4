//! The API server's rules for names: DNS-1123 labels and subdomains, DNS-1035 labels, label keys
//! and values, port names. One home for each rule; the manifest checks (`septum-crd`'s lint) and
//! the semantic validation of policy ports both call these. Each returns the message a user
//! sees, naming the value and the rule.

fn dns_label_chars(s: &str, first_letter: bool) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    !b.is_empty()
        && b.iter().all(inner)
        && (b[0].is_ascii_lowercase() || (!first_letter && b[0].is_ascii_digit()))
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 label (namespaces): at most 63 lowercase letters, digits and `-`, starting and
/// ending with a letter or digit.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    if !dns_label_chars(s, false) {
        return Err(format!(
            "{s:?} is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A DNS-1035 label (Service names): a DNS label that starts with a letter.
pub fn dns1035_label(s: &str) -> Result<(), String> {
    dns_label(s)?;
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err(format!("{s:?} must start with a lowercase letter"));
    }
    Ok(())
}

/// A DNS-1123 subdomain (most object names): at most 253 characters, DNS labels joined by `.`.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "{:?}... is longer than 253 characters",
            s.chars().take(20).collect::<String>()
        ));
    }
    if !s.split('.').all(|l| dns_label_chars(l, false)) {
        return Err(format!(
            "{s:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` and `.`, starting and ending with an alphanumeric.
pub fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        dns_subdomain(p).map_err(|m| format!("label key {k:?}: prefix {m}"))?;
    }
    if !qualified_name_part(name) {
        return Err(format!(
            "label key {k:?} is invalid: the name part must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit{}",
            if name.contains('/') {
                " (at most one '/')"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_` and `.`, starting and ending with
/// an alphanumeric.
pub fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || qualified_name_part(v) {
        Ok(())
    } else {
        Err(format!(
            "label value {v:?} is invalid: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// A port name (IANA service name): 1-15 lowercase letters, digits and `-`, at least one letter,
/// no `-` at either end and no `--`.
pub fn port_name(n: &str) -> Result<(), String> {
    let b = n.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !n.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "port name {n:?} is invalid: 1-15 lowercase letters, digits and '-', with at least one letter, no '-' at either end and no '--'"
        ))
    }
}

/// A Service port name: a DNS-1123 label (up to 63 characters; the 15-character IANA rule of
/// [`port_name`] applies to container ports and named targetPorts only).
pub fn service_port_name(n: &str) -> Result<(), String> {
    dns_label(n).map_err(|m| format!("Service port name {m}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_label("shop-1").is_ok());
        assert!(dns_label("Shop").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label("a.b").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(dns_subdomain("a.b-c.d").is_ok());
        assert!(dns_subdomain("a..b").is_err());
        assert!(dns_subdomain("bad_name").is_err());
        assert!(dns1035_label("1abc").is_err());
        assert!(dns1035_label("abc1").is_ok());
    }

    #[test]
    fn labels_and_ports() {
        assert!(service_port_name(&format!("service-port-tcp-{}", "8".repeat(40))).is_ok());
        assert!(service_port_name(&"a".repeat(64)).is_err());
        assert!(service_port_name("Bad").is_err());
        assert!(label_key("app").is_ok());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("a/b/c").is_err());
        assert!(label_key("-bad").is_err());
        assert!(label_key("/x").is_err());
        assert!(label_key("Bad_Prefix/x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3-x").is_ok());
        assert!(label_value("no spaces").is_err());
        assert!(label_value(&"a".repeat(64)).is_err());
        assert!(port_name("http").is_ok());
        assert!(port_name("serve-80-tcp").is_ok());
        assert!(port_name("80").is_err());
        assert!(port_name("a--b").is_err());
        assert!(port_name("HTTP").is_err());
        assert!(port_name("waytoolongportname").is_err());
    }
}
