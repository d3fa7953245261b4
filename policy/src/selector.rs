//! Kubernetes label selectors: `matchLabels` plus `matchExpressions` (`In`, `NotIn`, `Exists`,
//! `DoesNotExist`), with the API server's semantics (the requirements are ANDed; an empty
//! selector selects everything).

use std::collections::BTreeMap;

/// A set of labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// Operator of a [`Requirement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// The label exists and its value is one of the values.
    In,
    /// The label is missing, or its value is none of the values.
    NotIn,
    /// The label exists (any value).
    Exists,
    /// The label is missing.
    DoesNotExist,
}

impl Operator {
    /// The operator's name as written in Kubernetes objects.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        }
    }
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the label is tested.
    pub operator: Operator,
    /// Values for `In` and `NotIn`; must be empty for `Exists` and `DoesNotExist`.
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    /// Whether the requirement is well formed (what the API server would accept), with the
    /// reason when it is not.
    pub fn validate(&self) -> Result<(), String> {
        match self.operator {
            Operator::In | Operator::NotIn if self.values.is_empty() => Err(format!(
                "operator {} on key {:?} needs at least one value",
                self.operator.as_str(),
                self.key
            )),
            Operator::Exists | Operator::DoesNotExist if !self.values.is_empty() => Err(format!(
                "operator {} on key {:?} takes no values (got {:?})",
                self.operator.as_str(),
                self.key,
                self.values
            )),
            _ if self.key.is_empty() => Err("label key must not be empty".to_string()),
            _ => Ok(()),
        }
    }
}

/// A label selector. The empty selector (no labels, no expressions) selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    /// Exact key/value pairs.
    pub match_labels: Labels,
    /// Set-based requirements.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that selects everything (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector of exact labels.
    pub fn from_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether this is the empty selector, which selects everything.
    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` are selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Every problem with the selector's expressions.
    pub fn validate(&self) -> Vec<String> {
        self.match_expressions
            .iter()
            .filter_map(|r| r.validate().err())
            .collect()
    }

    /// Label keys this selector reads.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.match_labels
            .keys()
            .map(String::as_str)
            .chain(self.match_expressions.iter().map(|r| r.key.as_str()))
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_everything() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: key.to_string(),
                operator,
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        assert!(LabelSelector::everything().matches(&Labels::new()));
        assert!(LabelSelector::everything().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators_follow_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(req("app", Operator::In, &["web", "db"]).matches(&l));
        assert!(!req("app", Operator::In, &["db"]).matches(&l));
        assert!(!req("missing", Operator::In, &["x"]).matches(&l));
        assert!(req("app", Operator::NotIn, &["db"]).matches(&l));
        assert!(!req("app", Operator::NotIn, &["web"]).matches(&l));
        assert!(
            req("missing", Operator::NotIn, &["x"]).matches(&l),
            "NotIn matches a missing key"
        );
        assert!(req("tier", Operator::Exists, &[]).matches(&l));
        assert!(!req("missing", Operator::Exists, &[]).matches(&l));
        assert!(req("missing", Operator::DoesNotExist, &[]).matches(&l));
        assert!(!req("app", Operator::DoesNotExist, &[]).matches(&l));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let mut s = LabelSelector::from_labels([("app", "web")]);
        s.match_expressions = req("tier", Operator::In, &["back"]).match_expressions;
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "back")])));
    }

    #[test]
    fn malformed_requirements_are_reported() {
        assert!(!req("a", Operator::In, &[]).validate().is_empty());
        assert!(!req("a", Operator::Exists, &["x"]).validate().is_empty());
        assert!(req("a", Operator::Exists, &[]).validate().is_empty());
    }
}
