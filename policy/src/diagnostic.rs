//! The one diagnostic type of every layer: a YAML document that does not parse, a field the
//! types refuse, a conversion into the model that fails, a check the API server would make, a
//! semantic problem of a compiled policy. Each is a [`Diagnostic`] naming (as far as the layer
//! knows) the file and document, the object, the field and what is wrong; a layer that knows
//! less leaves the rest for the caller to fill in ([`Diagnostic::of`], [`Diagnostic::at`],
//! [`Diagnostic::within`]). [`Diagnostics`] collects them for one object, so that one bad field
//! never hides the next.

use std::fmt;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is refused (or, for a semantic problem, not compiled as written).
    Error,
    /// Legal but probably unintended, or a reference that may resolve later.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warning => "warning",
        })
    }
}

/// Where a document came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Origin {
    /// File name as given.
    pub file: String,
    /// 1-based document number in the file (0: the file as a whole).
    pub document: usize,
}

impl Origin {
    /// A whole file.
    pub fn file(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            document: 0,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.document == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{} (document {})", self.file, self.document)
        }
    }
}

/// One problem with one field of one object.
///
/// Displayed as `severity: [origin: ][object: ]field: message`. The field order makes the
/// derived ordering sort by place first (file, document, object, field), then message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Diagnostic {
    /// File and document, when the layer that found it read one.
    pub origin: Option<Origin>,
    /// `Kind namespace/name` (as much as is known; empty when the layer does not know it, `-`
    /// when the document has no recognisable object).
    pub object: String,
    /// Field path such as `spec.ingress[0].ports[1].endPort` (`-`: the whole object).
    pub field: String,
    /// What is wrong, with the offending value.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl Diagnostic {
    /// An error at a field.
    pub fn error(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            origin: None,
            object: String::new(),
            field: field.into(),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    /// A warning at a field.
    pub fn warning(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(field, message)
        }
    }

    /// The same, about `object`.
    #[must_use]
    pub fn of(mut self, object: impl Into<String>) -> Self {
        self.object = object.into();
        self
    }

    /// The same, found in `origin`.
    #[must_use]
    pub fn at(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }

    /// The same, with the field path below `prefix` (an object nested in a `List`'s items).
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = match (prefix.is_empty(), self.field.as_str()) {
            (true, _) => self.field,
            (false, "-") => prefix.to_string(),
            (false, f) => format!("{prefix}.{f}"),
        };
        self
    }

    /// Only a warning.
    pub fn is_warning(&self) -> bool {
        self.severity == Severity::Warning
    }

    /// An error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity)?;
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if !self.object.is_empty() {
            write!(f, "{}: ", self.object)?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// Collects the diagnostics of one object.
#[derive(Debug, Default)]
pub struct Diagnostics {
    object: String,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// An empty collection whose diagnostics name no object (the caller adds it).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty collection for `object` (`Kind namespace/name`).
    pub fn for_object(object: impl Into<String>) -> Self {
        Self {
            object: object.into(),
            items: Vec::new(),
        }
    }

    /// Records a diagnostic (naming this collection's object when it names none).
    pub fn push(&mut self, mut d: Diagnostic) {
        if d.object.is_empty() {
            d.object.clone_from(&self.object);
        }
        self.items.push(d);
    }

    /// Records an error.
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Diagnostic::error(field, message));
    }

    /// Records a warning.
    pub fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Diagnostic::warning(field, message));
    }

    /// Records the error of a check, if it failed.
    pub fn check(&mut self, field: impl Into<String>, r: Result<(), String>) {
        if let Err(m) = r {
            self.error(field, m);
        }
    }

    /// The value, or `None` after recording the error.
    pub fn ok<T>(&mut self, r: Result<T, Diagnostic>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    /// Converts an optional value: `Some(None)` when absent, `Some(Some(v))` when it converts,
    /// `None` after recording the error.
    pub fn optional<T, U>(
        &mut self,
        v: Option<T>,
        convert: impl FnOnce(T) -> Result<U, Diagnostic>,
    ) -> Option<Option<U>> {
        match v {
            None => Some(None),
            Some(v) => self.ok(convert(v)).map(Some),
        }
    }

    /// Records every diagnostic of another layer.
    pub fn extend(&mut self, ds: impl IntoIterator<Item = Diagnostic>) {
        for d in ds {
            self.push(d);
        }
    }

    /// Whether an error was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    /// `v` when no error was recorded, else every diagnostic.
    pub fn finish<T>(self, v: T) -> Result<T, Vec<Diagnostic>> {
        if self.has_errors() {
            Err(self.items)
        } else {
            Ok(v)
        }
    }

    /// Everything recorded.
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_what_is_known() {
        let d = Diagnostic::error("spec.podSelector", "bad");
        assert_eq!(d.to_string(), "error: spec.podSelector: bad");
        let d = d.of("NetworkPolicy a/b").at(Origin {
            file: "f.yaml".into(),
            document: 2,
        });
        assert_eq!(
            d.to_string(),
            "error: f.yaml (document 2): NetworkPolicy a/b: spec.podSelector: bad"
        );
        let w = Diagnostic::warning("-", "empty").at(Origin::file("dir"));
        assert_eq!(w.to_string(), "warning: dir: -: empty");
    }

    #[test]
    fn within_prefixes_the_field() {
        assert_eq!(Diagnostic::error("kind", "x").within("").field, "kind");
        assert_eq!(
            Diagnostic::error("kind", "x").within("items[2]").field,
            "items[2].kind"
        );
        assert_eq!(
            Diagnostic::error("-", "x").within("items[2]").field,
            "items[2]"
        );
    }

    #[test]
    fn warnings_alone_do_not_fail_an_object() {
        let mut ds = Diagnostics::for_object("Pod a/p");
        ds.warn("metadata.namespace", "ignored");
        assert!(ds.finish(()).is_ok());
        let mut ds = Diagnostics::for_object("Pod a/p");
        ds.warn("metadata.namespace", "ignored");
        ds.check("metadata.name", Err("bad name".into()));
        let all = ds.finish(()).expect_err("an error fails the object");
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|d| d.object == "Pod a/p"));
    }

    #[test]
    fn order_is_by_place_then_message() {
        let mut v = [
            Diagnostic::warning("b", "1").of("X"),
            Diagnostic::error("a", "2").of("X"),
            Diagnostic::error("a", "1").of("W"),
        ];
        v.sort();
        let fields: Vec<_> = v
            .iter()
            .map(|d| format!("{}/{}/{}", d.object, d.field, d.message))
            .collect();
        assert_eq!(fields, ["W/a/1", "X/a/2", "X/b/1"]);
    }
}
