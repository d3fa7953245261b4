//! Editing configurations as text: septum-cni's entry spliced into or out of a list with every
//! other byte kept, and a single-plugin file turned into a list.

use std::{fmt, path::Path};

use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, Visitor},
};
use serde_json::{Value, value::RawValue};

use super::{InstallError, Malformed, PLUGIN_TYPE, SeptumEntry};
use crate::{config, env::Command, version::CniVersion};

/// A JSON object's members in file order, each value borrowed from the text. Lookups take the
/// last of duplicate keys, as Go's encoding/json (and so libcni) does.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Members<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn string(&self, key: &str) -> Option<Result<String, serde_json::Error>> {
        self.get(key).map(|raw| serde_json::from_str(raw.get()))
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Ordered)
    }
}

/// Where `part`, a slice of `text`, starts in it.
fn offset(text: &str, part: &str) -> usize {
    part.as_ptr() as usize - text.as_ptr() as usize
}

/// An array's or object's items as byte ranges of the text: the brackets, and for each item its
/// start (an object member starts at its key) and end.
#[derive(Debug)]
struct Items {
    open: usize,
    close: usize,
    spans: Vec<(usize, usize)>,
}

/// The members of the object `obj` (a slice of `text` that is valid JSON).
fn object_items<'a>(text: &str, obj: &'a str) -> Option<(Items, Members<'a>)> {
    if !obj.starts_with('{') {
        return None;
    }
    let members: Members<'a> = serde_json::from_str(obj).ok()?;
    let open = offset(text, obj);
    let mut spans = Vec::with_capacity(members.0.len());
    let mut from = open + 1;
    for (_, value) in &members.0 {
        // Between the previous value and a key there is only whitespace and a comma.
        let key = from + text[from..].find('"')?;
        let end = offset(text, value.get()) + value.get().len();
        spans.push((key, end));
        from = end;
    }
    let items = Items {
        open,
        close: open + obj.len() - 1,
        spans,
    };
    Some((items, members))
}

/// The elements of the array `arr` (a slice of `text` that is valid JSON).
fn array_items<'a>(text: &str, arr: &'a str) -> Option<(Items, Vec<&'a RawValue>)> {
    if !arr.starts_with('[') {
        return None;
    }
    let elements: Vec<&'a RawValue> = serde_json::from_str(arr).ok()?;
    let open = offset(text, arr);
    let spans = elements
        .iter()
        .map(|e| {
            let start = offset(text, e.get());
            (start, start + e.get().len())
        })
        .collect();
    Some((
        Items {
            open,
            close: open + arr.len() - 1,
            spans,
        },
        elements,
    ))
}

/// `text` with the container `items` rewritten: the items `keep` selects, in order, then
/// `extra` (its text and, when it was an item before, its old index, whose separator it keeps).
/// Every kept byte is the original's: the whitespace after the opening bracket and before the
/// closing one, and each kept item's own separator; a new item gets the separator between the
/// first two items, or a comma and the first item's indentation.
fn respliced(
    text: &str,
    items: &Items,
    keep: impl Fn(usize) -> bool,
    extra: Option<(&str, Option<usize>)>,
) -> String {
    let spans = &items.spans;
    let sep = |i: usize| &text[spans[i - 1].1..spans[i].0];
    let (lead, trail) = match (spans.first(), spans.last()) {
        (Some(first), Some(last)) => (&text[items.open + 1..first.0], &text[last.1..items.close]),
        _ => ("", ""),
    };
    let default_sep = if spans.len() >= 2 {
        sep(1).to_string()
    } else {
        format!(",{lead}")
    };
    let mut inner = String::new();
    let mut any = false;
    for (i, &(start, end)) in spans.iter().enumerate() {
        if !keep(i) {
            continue;
        }
        if any {
            inner.push_str(if i > 0 { sep(i) } else { &default_sep });
        }
        inner.push_str(&text[start..end]);
        any = true;
    }
    if let Some((extra, from)) = extra {
        if any {
            inner.push_str(match from {
                Some(j) if j > 0 => sep(j),
                _ => &default_sep,
            });
        }
        inner.push_str(extra);
        any = true;
    }
    let mut out = String::with_capacity(text.len() + 80);
    out.push_str(&text[..=items.open]);
    if any {
        out.push_str(lead);
        out.push_str(&inner);
        out.push_str(trail);
    } else if spans.is_empty() {
        out.push_str(&text[items.open + 1..items.close]);
    }
    out.push_str(&text[items.close..]);
    out
}

/// A configuration list's plugins, located in its text.
struct Layout<'a> {
    members: Members<'a>,
    plugins: Items,
    /// Per plugin: is it septum-cni?
    septum: Vec<bool>,
}

/// Reads the list's structure; `Err` names what is missing or mistyped.
fn layout(text: &str) -> Result<Layout<'_>, LayoutError> {
    let top: &RawValue = serde_json::from_str(text).map_err(LayoutError::NotJson)?;
    let (_, members) =
        object_items(text, top.get()).ok_or(LayoutError::Malformed(Malformed::NotObject))?;
    let raw = members
        .get("plugins")
        .ok_or(LayoutError::Malformed(Malformed::NoPlugins))?;
    let (plugins, elements) =
        array_items(text, raw.get()).ok_or(LayoutError::Malformed(Malformed::PluginsType))?;
    if elements.is_empty() {
        return Err(LayoutError::Malformed(Malformed::EmptyPlugins));
    }
    let mut septum = Vec::with_capacity(elements.len());
    for (i, element) in elements.iter().enumerate() {
        let (_, plugin) = object_items(text, element.get())
            .ok_or(LayoutError::Malformed(Malformed::PluginNotObject(i)))?;
        match plugin.string("type") {
            Some(Ok(t)) if !t.is_empty() => septum.push(t == PLUGIN_TYPE),
            _ => return Err(LayoutError::Malformed(Malformed::PluginType(i))),
        }
    }
    Ok(Layout {
        members,
        plugins,
        septum,
    })
}

enum LayoutError {
    NotJson(serde_json::Error),
    Malformed(Malformed),
}

impl LayoutError {
    fn at(self, path: &Path) -> InstallError {
        match self {
            LayoutError::NotJson(source) => InstallError::NotJson {
                path: path.to_path_buf(),
                source,
            },
            LayoutError::Malformed(problem) => InstallError::Malformed {
                path: path.to_path_buf(),
                problem,
            },
        }
    }
}

/// The version the runtime will give the chain: `cniVersion`, or the newest of `cniVersions`
/// and `cniVersion` (newer libcni picks the newest it speaks, which may be the newest listed).
fn chain_version(
    path: &Path,
    members: &Members<'_>,
    with_list: bool,
) -> Result<CniVersion, InstallError> {
    let malformed = |problem| InstallError::Malformed {
        path: path.to_path_buf(),
        problem,
    };
    let mut found: Vec<String> = Vec::new();
    if let Some(v) = members.string("cniVersion") {
        found.push(v.map_err(|_| malformed(Malformed::VersionType))?);
    }
    if let Some(raw) = members.get("cniVersions").filter(|_| with_list) {
        let list: Vec<String> =
            serde_json::from_str(raw.get()).map_err(|_| malformed(Malformed::VersionsType))?;
        found.extend(list);
    }
    let unsupported = |v: &str| InstallError::Version {
        path: path.to_path_buf(),
        found: Some(v.to_string()),
    };
    let mut newest: Option<((u64, u64, u64), &str)> = None;
    for v in found.iter().filter(|v| !v.is_empty()) {
        let key = semver(v).ok_or_else(|| unsupported(v))?;
        if newest.is_none_or(|(k, _)| key > k) {
            newest = Some((key, v));
        }
    }
    let (_, newest) = newest.ok_or_else(|| InstallError::Version {
        path: path.to_path_buf(),
        found: None,
    })?;
    newest.parse().map_err(|_| unsupported(newest))
}

fn semver(v: &str) -> Option<(u64, u64, u64)> {
    let mut parts = v.split('.').map(|p| {
        if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            p.parse().ok()
        } else {
            None
        }
    });
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// Runs septum-cni's own parser on its entry as libcni will hand it over (with the list's `name`
/// and `cniVersion` injected).
fn check_entry(
    path: &Path,
    entry_text: &str,
    name: &str,
    version: CniVersion,
) -> Result<(), InstallError> {
    let mut conf: serde_json::Map<String, Value> =
        serde_json::from_str(entry_text).map_err(|source| InstallError::NotJson {
            path: path.to_path_buf(),
            source,
        })?;
    conf.insert("name".into(), Value::from(name));
    conf.insert("cniVersion".into(), Value::from(version.as_str()));
    let bytes = serde_json::to_vec(&conf).unwrap_or_default();
    config::parse(&bytes, Command::Add)
        .map(drop)
        .map_err(|source| InstallError::Refused {
            path: path.to_path_buf(),
            source,
        })
}

fn socket_json(entry: &SeptumEntry) -> Result<String, InstallError> {
    let socket = entry
        .agent_socket
        .to_str()
        .ok_or_else(|| InstallError::SocketNotUtf8 {
            socket: entry.agent_socket.clone(),
        })?;
    Ok(Value::from(socket).to_string())
}

/// A new entry, laid out like its neighbours: `column` is the indentation of the list's items,
/// `unit` one level more; `None` for a list written on one line.
fn render_entry(socket: &str, layout: Option<(&str, &str, &str)>) -> String {
    match layout {
        None => format!(r#"{{"type":"{PLUGIN_TYPE}","agentSocket":{socket}}}"#),
        Some((newline, column, unit)) => format!(
            "{{{newline}{column}{unit}\"type\": \"{PLUGIN_TYPE}\",{newline}{column}{unit}\"agentSocket\": {socket}{newline}{column}}}"
        ),
    }
}

/// The newline, item indentation and indentation unit of a list, read from its text.
fn list_style<'t>(text: &'t str, plugins: &Items) -> Option<(&'t str, &'t str, &'t str)> {
    let first = plugins.spans.first()?;
    let lead = &text[plugins.open + 1..first.0];
    let nl = lead.rfind('\n')?;
    let newline = if lead[..nl].ends_with('\r') {
        "\r\n"
    } else {
        "\n"
    };
    let column = &lead[nl + 1..];
    let item = &text[first.0..first.1];
    let unit = item
        .find('\n')
        .map(|i| {
            let rest = &item[i + 1..];
            &rest[..rest.find(|c| c != ' ' && c != '\t').unwrap_or(rest.len())]
        })
        .and_then(|inner| inner.strip_prefix(column))
        .filter(|u| !u.is_empty())
        .unwrap_or(if column.contains('\t') { "\t" } else { "  " });
    Some((newline, column, unit))
}

/// An existing septum-cni entry with `agentSocket` set to `socket`, every other byte kept.
fn updated_entry(entry: &str, socket: &str) -> String {
    let Some((items, members)) = object_items(entry, entry) else {
        return entry.to_string();
    };
    let position = members.0.iter().rposition(|(k, _)| k == "agentSocket");
    match position {
        Some(i) => {
            let raw = members.0[i].1.get();
            if serde_json::from_str::<String>(raw).ok() == serde_json::from_str(socket).ok() {
                return entry.to_string();
            }
            let start = offset(entry, raw);
            format!("{}{socket}{}", &entry[..start], &entry[start + raw.len()..])
        }
        None => {
            // The spacing around the colon of the first member: what follows its key's closing
            // quote (the last quote before the value) up to the value.
            let colon = match (items.spans.first(), members.0.first()) {
                (Some(&(key, _)), Some((_, value))) => {
                    let value_start = offset(entry, value.get());
                    let between = &entry[key..value_start];
                    between.rfind('"').map_or(": ", |q| &between[q + 1..])
                }
                _ => ": ",
            };
            let member = format!("\"agentSocket\"{colon}{socket}");
            respliced(entry, &items, |_| true, Some((&member, None)))
        }
    }
}

/// What install does to a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Edit {
    Unchanged,
    Added(String),
    Updated(String),
}

/// The list `text` (read from `path`) with septum-cni as its last plugin, exactly once.
pub(super) fn with_entry(
    path: &Path,
    text: &str,
    entry: &SeptumEntry,
) -> Result<Edit, InstallError> {
    let layout = layout(text).map_err(|e| e.at(path))?;
    let name = match layout.members.string("name") {
        Some(Ok(n)) => n,
        _ => {
            return Err(InstallError::Malformed {
                path: path.to_path_buf(),
                problem: Malformed::Name,
            });
        }
    };
    let version = chain_version(path, &layout.members, true)?;
    let socket = socket_json(entry)?;
    let spans = &layout.plugins.spans;
    let existing = layout.septum.iter().rposition(|&s| s);
    let entry_text = match existing {
        Some(j) => updated_entry(&text[spans[j].0..spans[j].1], &socket),
        None => render_entry(&socket, list_style(text, &layout.plugins)),
    };
    check_entry(path, &entry_text, &name, version)?;
    let last = spans.len() - 1;
    let only_last = layout.septum.iter().filter(|&&s| s).count() == 1 && layout.septum[last];
    if only_last && entry_text == text[spans[last].0..spans[last].1] {
        return Ok(Edit::Unchanged);
    }
    let new = respliced(
        text,
        &layout.plugins,
        |i| !layout.septum[i],
        Some((&entry_text, existing)),
    );
    Ok(match existing {
        Some(_) => Edit::Updated(new),
        None => Edit::Added(new),
    })
}

/// The list `text` without septum-cni's entries; `None` when it has none or is not a list.
pub(super) fn without_entries(text: &str) -> Option<String> {
    let layout = layout(text).ok()?;
    if !layout.septum.contains(&true) {
        return None;
    }
    Some(respliced(
        text,
        &layout.plugins,
        |i| !layout.septum[i],
        None,
    ))
}

pub(super) fn has_entry(text: &str) -> bool {
    layout(text).is_ok_and(|l| l.septum.contains(&true))
}

/// True when `list` is septum's conversion of the single-plugin `conf`: the same name and
/// version, and apart from septum-cni exactly that one plugin.
pub(super) fn is_conversion(list: &str, conf: &str) -> bool {
    let (Ok(list), Ok(conf)) = (
        serde_json::from_str::<Value>(list),
        serde_json::from_str::<Value>(conf),
    ) else {
        return false;
    };
    let Some(plugins) = list.get("plugins").and_then(Value::as_array) else {
        return false;
    };
    let others: Vec<&Value> = plugins
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE))
        .collect();
    others.len() < plugins.len()
        && others == [&conf]
        && list.get("name") == conf.get("name")
        && list.get("cniVersion") == conf.get("cniVersion")
}

/// The single-plugin `text` (read from `path`) as a list ending with septum-cni: the object
/// verbatim (re-indented one level), `cniVersion` and `name` lifted as libcni lifts them.
pub(super) fn converted(
    path: &Path,
    text: &str,
    entry: &SeptumEntry,
) -> Result<String, InstallError> {
    let malformed = |problem| InstallError::Malformed {
        path: path.to_path_buf(),
        problem,
    };
    let top: &RawValue = serde_json::from_str(text).map_err(|source| InstallError::NotJson {
        path: path.to_path_buf(),
        source,
    })?;
    let obj = top.get();
    let (_, members) = object_items(obj, obj).ok_or_else(|| malformed(Malformed::NotObject))?;
    match members.string("type") {
        Some(Ok(t)) if !t.is_empty() => {}
        _ => return Err(malformed(Malformed::NoType)),
    }
    let name = match members.string("name") {
        Some(Ok(n)) => n,
        _ => return Err(malformed(Malformed::Name)),
    };
    let version = chain_version(path, &members, false)?;
    let socket = socket_json(entry)?;
    // The file's own indentation unit: the whitespace opening its second line.
    let unit = obj
        .find('\n')
        .map(|i| {
            let rest = &obj[i + 1..];
            &rest[..rest.find(|c| c != ' ' && c != '\t').unwrap_or(rest.len())]
        })
        .filter(|u| !u.is_empty())
        .unwrap_or("  ");
    let column = unit.repeat(2);
    let septum = render_entry(&socket, Some(("\n", &column, unit)));
    check_entry(path, &septum, &name, version)?;
    // JSON strings hold no raw newline: every newline in the object is whitespace.
    let plugin = obj.replace('\n', &format!("\n{column}"));
    Ok(format!(
        "{{\n{unit}\"cniVersion\": {},\n{unit}\"name\": {},\n{unit}\"plugins\": [\n{column}{plugin},\n{column}{septum}\n{unit}]\n}}\n",
        Value::from(version.as_str()),
        Value::from(name),
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn entry(socket: &str) -> SeptumEntry {
        SeptumEntry {
            agent_socket: PathBuf::from(socket),
        }
    }

    fn add(text: &str, socket: &str) -> Edit {
        with_entry(Path::new("t.conflist"), text, &entry(socket)).expect("valid list")
    }

    #[test]
    fn one_line_lists_stay_one_line() {
        let text = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#;
        let Edit::Added(new) = add(text, "/s") else {
            panic!("expected an addition")
        };
        assert_eq!(
            new,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"septum-cni","agentSocket":"/s"}]}"#
        );
        assert_eq!(add(&new, "/s"), Edit::Unchanged);
        assert_eq!(without_entries(&new).as_deref(), Some(text));
    }

    #[test]
    fn tabs_and_a_moved_entry_keep_their_separators() {
        let text = "{\n\t\"cniVersion\": \"0.4.0\",\n\t\"name\": \"n\",\n\t\"plugins\": [\n\t\t{\n\t\t\t\"type\": \"septum-cni\", \"addTimeout\": \"3s\"\n\t\t},\n\t\t{ \"type\": \"bridge\" }\n\t]\n}";
        let Edit::Updated(new) = add(text, "/run/a.sock") else {
            panic!("expected an update")
        };
        assert_eq!(
            new,
            "{\n\t\"cniVersion\": \"0.4.0\",\n\t\"name\": \"n\",\n\t\"plugins\": [\n\t\t{ \"type\": \"bridge\" },\n\t\t{\n\t\t\t\"type\": \"septum-cni\", \"addTimeout\": \"3s\", \"agentSocket\": \"/run/a.sock\"\n\t\t}\n\t]\n}"
        );
        assert_eq!(add(&new, "/run/a.sock"), Edit::Unchanged);
        let Edit::Added(fresh) = add(&without_entries(&new).unwrap(), "/s") else {
            panic!("expected an addition")
        };
        assert!(
            fresh.contains("},\n\t\t{\n\t\t\t\"type\": \"septum-cni\",\n\t\t\t\"agentSocket\": \"/s\"\n\t\t}\n\t]"),
            "{fresh}"
        );
    }

    #[test]
    fn versions_follow_libcni() {
        let members = |t: &'static str| serde_json::from_str::<Members<'static>>(t).unwrap();
        let p = Path::new("x");
        let v = |t| chain_version(p, &members(t), true);
        assert_eq!(v(r#"{"cniVersion":"0.3.1"}"#).unwrap(), CniVersion::V0_3_1);
        assert_eq!(
            v(r#"{"cniVersion":"0.4.0","cniVersions":["1.0.0","0.3.0"]}"#).unwrap(),
            CniVersion::V1_0_0
        );
        assert!(
            matches!(v(r#"{"cniVersion":"0.2.0"}"#), Err(InstallError::Version { found: Some(f), .. }) if f == "0.2.0")
        );
        assert!(matches!(
            v(r#"{"cniVersions":["1.0.0","1.2.0"]}"#),
            Err(InstallError::Version { found: Some(f), .. }) if f == "1.2.0"
        ));
        assert!(matches!(
            v(r#"{}"#),
            Err(InstallError::Version { found: None, .. })
        ));
        assert!(matches!(
            v(r#"{"cniVersion":1}"#),
            Err(InstallError::Malformed {
                problem: Malformed::VersionType,
                ..
            })
        ));
    }
}
