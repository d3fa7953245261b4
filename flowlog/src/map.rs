//! The service map as a picture: [`render`] draws service-map [`Edge`]s as Graphviz DOT,
//! Mermaid or a self-contained SVG (no Graphviz needed). Allowed edges are solid green,
//! refused ones dashed red, edges with both outcomes orange, audit-only ones dotted grey; ends
//! are grouped by namespace, and ends outside the cluster are drawn apart.
//!
//! Names come from the flow log (pod, workload and Service names, addresses) and are escaped
//! for each format, so a hostile name is text, never markup.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::str::FromStr;

use crate::store::Edge;
use crate::wire::protocol_name;

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Graphviz DOT (`dot -Tsvg`, `dot -Tpng`).
    Dot,
    /// Mermaid `flowchart` (renders in GitHub, GitLab and most wikis).
    Mermaid,
    /// A self-rendered SVG.
    Svg,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "dot" => Ok(Self::Dot),
            "mermaid" => Ok(Self::Mermaid),
            "svg" => Ok(Self::Svg),
            _ => Err(format!(
                "unknown graph format {s:?} (expected dot, mermaid or svg)"
            )),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dot => "dot",
            Self::Mermaid => "mermaid",
            Self::Svg => "svg",
        })
    }
}

/// How an edge's flows went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every flow was forwarded.
    Allowed,
    /// Every flow was refused.
    Refused,
    /// Some of each.
    Mixed,
    /// Only audited flows (would have been refused by an enforcing policy).
    Audit,
}

impl Outcome {
    /// The outcome of an edge.
    pub fn of(e: &Edge) -> Self {
        match (e.forwarded > 0, e.dropped > 0) {
            (true, true) => Self::Mixed,
            (false, true) => Self::Refused,
            (true, false) => Self::Allowed,
            (false, false) => Self::Audit,
        }
    }

    /// Its colour.
    pub const fn colour(self) -> &'static str {
        match self {
            Self::Allowed => "#2e7d32",
            Self::Refused => "#c62828",
            Self::Mixed => "#ef6c00",
            Self::Audit => "#757575",
        }
    }

    const fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Mixed => "allowed and refused",
            Self::Audit => "audit",
        }
    }
}

/// The namespace of an end (`ns/Kind/name`, `ns/service`), `None` outside the cluster (an
/// address, `/node/...`, `world`).
fn namespace(end: &str) -> Option<&str> {
    let (ns, rest) = end.split_once('/')?;
    (!ns.is_empty() && !rest.is_empty() && end.parse::<std::net::IpAddr>().is_err()).then_some(ns)
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `tcp/80 · 12 ok · 3 refused · 1.2 KiB`.
pub fn edge_label(e: &Edge) -> String {
    let mut parts = vec![format!("{}/{}", protocol_name(e.protocol), e.port)];
    if e.forwarded > 0 {
        parts.push(format!("{} ok", e.forwarded));
    }
    if e.dropped > 0 {
        parts.push(format!("{} refused", e.dropped));
    }
    if e.audit > 0 {
        parts.push(format!("{} audit", e.audit));
    }
    parts.push(human_bytes(e.bytes));
    parts.join(" · ")
}

/// The graph's ends (sorted, each once) and edges (sorted), independent of input order.
struct Graph<'a> {
    nodes: Vec<&'a str>,
    edges: Vec<&'a Edge>,
}

impl<'a> Graph<'a> {
    fn new(edges: &'a [Edge]) -> Self {
        let nodes: BTreeSet<&str> = edges
            .iter()
            .flat_map(|e| [e.from.as_str(), e.to.as_str()])
            .collect();
        let mut edges: Vec<&Edge> = edges.iter().collect();
        edges.sort_by(|a, b| {
            (&a.from, &a.to, a.protocol, a.port, a.forwarded, a.dropped).cmp(&(
                &b.from,
                &b.to,
                b.protocol,
                b.port,
                b.forwarded,
                b.dropped,
            ))
        });
        Self {
            nodes: nodes.into_iter().collect(),
            edges,
        }
    }

    fn id(&self, name: &str) -> usize {
        self.nodes.binary_search(&name).unwrap_or(0)
    }

    /// Namespace -> node indexes, and the nodes outside any namespace.
    fn groups(&self) -> (BTreeMap<&'a str, Vec<usize>>, Vec<usize>) {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut outside = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match namespace(n) {
                Some(ns) => groups.entry(ns).or_default().push(i),
                None => outside.push(i),
            }
        }
        (groups, outside)
    }
}

/// The picture of `edges` in `format`.
pub fn render(edges: &[Edge], format: Format) -> String {
    let g = Graph::new(edges);
    match format {
        Format::Dot => dot(&g),
        Format::Mermaid => mermaid(&g),
        Format::Svg => svg(&g),
    }
}

fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' | '\r' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn dot(g: &Graph<'_>) -> String {
    let mut s = String::from(
        "digraph septum {\n  rankdir=LR;\n  node [shape=box style=\"rounded,filled\" fillcolor=\"#f5f5f5\" fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\" fontsize=10];\n",
    );
    if g.nodes.is_empty() {
        s.push_str("  empty [label=\"no flows\" shape=plaintext style=\"\"];\n}\n");
        return s;
    }
    let (groups, outside) = g.groups();
    for (c, (ns, members)) in groups.iter().enumerate() {
        let _ = writeln!(
            s,
            "  subgraph cluster_{c} {{\n    label=\"namespace {}\";\n    style=rounded; color=\"#90a4ae\";",
            dot_escape(ns)
        );
        for i in members {
            let _ = writeln!(s, "    n{i} [label=\"{}\"];", dot_escape(g.nodes[*i]));
        }
        s.push_str("  }\n");
    }
    for i in outside {
        let _ = writeln!(
            s,
            "  n{i} [label=\"{}\\n(outside the cluster)\" style=\"dashed\"];",
            dot_escape(g.nodes[i])
        );
    }
    for e in &g.edges {
        let o = Outcome::of(e);
        let style = match o {
            Outcome::Allowed | Outcome::Mixed => "solid",
            Outcome::Refused => "dashed",
            Outcome::Audit => "dotted",
        };
        let _ = writeln!(
            s,
            "  n{} -> n{} [label=\"{}\" color=\"{}\" fontcolor=\"{}\" style={style} tooltip=\"{}\"];",
            g.id(&e.from),
            g.id(&e.to),
            dot_escape(&edge_label(e)),
            o.colour(),
            o.colour(),
            o.label()
        );
    }
    s.push_str("}\n");
    s
}

fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '#' => out.push_str("#35;"),
            '|' => out.push_str("#124;"),
            '`' => out.push_str("#96;"),
            '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn mermaid(g: &Graph<'_>) -> String {
    let mut s = String::from("flowchart LR\n");
    if g.nodes.is_empty() {
        s.push_str("  empty[\"no flows\"]\n");
        return s;
    }
    let (groups, outside) = g.groups();
    for (c, (ns, members)) in groups.iter().enumerate() {
        let _ = writeln!(s, "  subgraph ns{c}[\"namespace {}\"]", mermaid_escape(ns));
        for i in members {
            let _ = writeln!(s, "    n{i}[\"{}\"]", mermaid_escape(g.nodes[*i]));
        }
        s.push_str("  end\n");
    }
    for i in outside {
        let _ = writeln!(
            s,
            "  n{i}[/\"{} (outside the cluster)\"/]",
            mermaid_escape(g.nodes[i])
        );
    }
    for e in &g.edges {
        let arrow = match Outcome::of(e) {
            Outcome::Allowed | Outcome::Mixed => "-->",
            Outcome::Refused | Outcome::Audit => "-.->",
        };
        let _ = writeln!(
            s,
            "  n{} {arrow}|\"{}\"| n{}",
            g.id(&e.from),
            mermaid_escape(&edge_label(e)),
            g.id(&e.to)
        );
    }
    for (i, e) in g.edges.iter().enumerate() {
        let o = Outcome::of(e);
        let dash = if matches!(o, Outcome::Refused | Outcome::Audit) {
            ",stroke-dasharray:5 4"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  linkStyle {i} stroke:{},stroke-width:2px{dash}",
            o.colour()
        );
    }
    s
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

const BOX_W: f64 = 220.0;
const BOX_H: f64 = 36.0;
const COL_GAP: f64 = 150.0;
const ROW_GAP: f64 = 30.0;
const MARGIN: f64 = 30.0;
const LEGEND_H: f64 = 40.0;

/// Columns by longest path from the sources, bounded by the node count so cycles end.
fn layers(g: &Graph<'_>) -> Vec<usize> {
    let n = g.nodes.len();
    let mut layer = vec![0usize; n];
    let links: Vec<(usize, usize)> = g
        .edges
        .iter()
        .map(|e| (g.id(&e.from), g.id(&e.to)))
        .filter(|(a, b)| a != b)
        .collect();
    // Bellman-Ford style relaxation: at most n rounds, so a cycle cannot run forever.
    for _ in 0..n {
        let mut changed = false;
        for &(a, b) in &links {
            if layer[b] < layer[a] + 1 && layer[a] + 1 < n {
                layer[b] = layer[a] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    layer
}

fn svg(g: &Graph<'_>) -> String {
    let layer = layers(g);
    let columns = layer.iter().max().map_or(1, |m| m + 1);
    let mut rows = vec![0usize; columns];
    let mut pos = vec![(0.0, 0.0); g.nodes.len()];
    // Within a column, keep namespaces together (nodes are sorted by name).
    for (i, l) in layer.iter().enumerate() {
        let x = MARGIN + (*l as f64) * (BOX_W + COL_GAP);
        let y = MARGIN + LEGEND_H + (rows[*l] as f64) * (BOX_H + ROW_GAP);
        rows[*l] += 1;
        pos[i] = (x, y);
    }
    let max_rows = rows.iter().copied().max().unwrap_or(0).max(1);
    let width = MARGIN * 2.0 + (columns as f64) * BOX_W + (columns as f64 - 1.0) * COL_GAP;
    let height = MARGIN * 2.0 + LEGEND_H + (max_rows as f64) * (BOX_H + ROW_GAP);
    let width = width.max(520.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n<title>septum service map</title>\n<defs>\n"
    );
    for o in [
        Outcome::Allowed,
        Outcome::Refused,
        Outcome::Mixed,
        Outcome::Audit,
    ] {
        let _ = writeln!(
            s,
            "<marker id=\"arrow-{}\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"{}\"/></marker>",
            marker(o),
            o.colour()
        );
    }
    s.push_str("</defs>\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n");
    // Legend.
    let mut lx = MARGIN;
    for o in [
        Outcome::Allowed,
        Outcome::Refused,
        Outcome::Mixed,
        Outcome::Audit,
    ] {
        let _ = writeln!(
            s,
            "<g class=\"legend\"><line x1=\"{lx:.0}\" y1=\"{y:.0}\" x2=\"{x2:.0}\" y2=\"{y:.0}\" stroke=\"{c}\" stroke-width=\"2\"{dash}/><text x=\"{tx:.0}\" y=\"{ty:.0}\">{label}</text></g>",
            y = MARGIN,
            x2 = lx + 30.0,
            c = o.colour(),
            dash = dash(o),
            tx = lx + 36.0,
            ty = MARGIN + 4.0,
            label = o.label()
        );
        lx += 36.0 + 8.0 * o.label().len() as f64 + 20.0;
    }
    if g.nodes.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{MARGIN:.0}\" y=\"{:.0}\">no flows</text>",
            MARGIN + LEGEND_H + 20.0
        );
    }
    for e in &g.edges {
        let o = Outcome::of(e);
        let (a, b) = (g.id(&e.from), g.id(&e.to));
        let (ax, ay) = pos[a];
        let (bx, by) = pos[b];
        let label = xml_escape(&edge_label(e));
        let title = format!(
            "{} -> {}: {}",
            xml_escape(&e.from),
            xml_escape(&e.to),
            label
        );
        let (d, mx, my) = if a == b {
            // A loop over the box's top.
            let (x, y) = (ax + BOX_W / 2.0, ay);
            (
                format!(
                    "M {:.1} {y:.1} C {:.1} {:.1}, {:.1} {:.1}, {:.1} {y:.1}",
                    x - 20.0,
                    x - 40.0,
                    y - 40.0,
                    x + 40.0,
                    y - 40.0,
                    x + 20.0
                ),
                x,
                y - 34.0,
            )
        } else {
            let (sx, sy, tx, ty) = if bx > ax {
                (ax + BOX_W, ay + BOX_H / 2.0, bx, by + BOX_H / 2.0)
            } else {
                // Backwards or same column: leave from the bottom, arrive at the bottom.
                (
                    ax + BOX_W / 2.0,
                    ay + BOX_H,
                    bx + BOX_W / 2.0 + 10.0,
                    by + BOX_H,
                )
            };
            let bend = if bx > ax { (tx - sx) / 2.0 } else { 0.0 };
            let drop = if bx > ax { 0.0 } else { 50.0 };
            (
                format!(
                    "M {sx:.1} {sy:.1} C {:.1} {:.1}, {:.1} {:.1}, {tx:.1} {ty:.1}",
                    sx + bend,
                    sy + drop,
                    tx - bend,
                    ty + drop
                ),
                (sx + tx) / 2.0,
                (sy + ty) / 2.0 + drop * 0.75 - 4.0,
            )
        };
        let _ = writeln!(
            s,
            "<g class=\"edge {cls}\"><title>{title}</title><path d=\"{d}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"{dash} marker-end=\"url(#arrow-{m})\"/><text x=\"{mx:.1}\" y=\"{my:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"{c}\">{label}</text></g>",
            cls = marker(o),
            c = o.colour(),
            dash = dash(o),
            m = marker(o),
        );
    }
    for (i, name) in g.nodes.iter().enumerate() {
        let (x, y) = pos[i];
        let inside = namespace(name).is_some();
        let _ = writeln!(
            s,
            "<g class=\"node\"><title>{t}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{BOX_W:.0}\" height=\"{BOX_H:.0}\" rx=\"8\" fill=\"{fill}\" stroke=\"#607d8b\"{dash}/><text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{t}</text></g>",
            t = xml_escape(&shorten(name)),
            fill = if inside { "#eceff1" } else { "#ffffff" },
            dash = if inside {
                ""
            } else {
                " stroke-dasharray=\"4 3\""
            },
            tx = x + BOX_W / 2.0,
            ty = y + BOX_H / 2.0 + 4.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Names longer than a box holds keep their end (the distinguishing part).
fn shorten(name: &str) -> String {
    const MAX: usize = 34;
    let n = name.chars().count();
    if n <= MAX {
        name.to_string()
    } else {
        let tail: String = name.chars().skip(n - (MAX - 1)).collect();
        format!("…{tail}")
    }
}

const fn marker(o: Outcome) -> &'static str {
    match o {
        Outcome::Allowed => "allowed",
        Outcome::Refused => "refused",
        Outcome::Mixed => "mixed",
        Outcome::Audit => "audit",
    }
}

const fn dash(o: Outcome) -> &'static str {
    match o {
        Outcome::Refused => " stroke-dasharray=\"6 4\"",
        Outcome::Audit => " stroke-dasharray=\"2 3\"",
        Outcome::Allowed | Outcome::Mixed => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str, port: u16, forwarded: u64, dropped: u64) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            port,
            protocol: 6,
            forwarded,
            dropped,
            audit: 0,
            bytes: 1500,
        }
    }

    fn shop() -> Vec<Edge> {
        vec![
            edge("shop/Deployment/web", "shop/api", 80, 12, 0),
            edge("outside/Pod/outsider", "shop/Deployment/db", 5432, 0, 3),
            edge("shop/Deployment/api", "shop/Deployment/db", 5432, 4, 1),
            edge("10.0.0.9", "shop/Deployment/web", 443, 2, 0),
        ]
    }

    /// Every tag opened is closed in order (a small well-formedness check of our own output).
    fn well_formed(svg: &str) -> bool {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let Some(end) = rest.find('>') else {
                return false;
            };
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop().as_deref() != Some(name.trim()) {
                    return false;
                }
            } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
                let name = tag.split_whitespace().next().unwrap_or("");
                stack.push(name.to_string());
            }
        }
        stack.is_empty()
    }

    #[test]
    fn allowed_and_refused_edges_look_different_in_every_format() {
        let edges = shop();
        let dot = render(&edges, Format::Dot);
        assert!(dot.starts_with("digraph septum {"));
        assert!(dot.contains("color=\"#2e7d32\" fontcolor=\"#2e7d32\" style=solid"));
        assert!(dot.contains("color=\"#c62828\" fontcolor=\"#c62828\" style=dashed"));
        assert!(dot.contains("#ef6c00"), "mixed edge");
        assert!(dot.contains("subgraph cluster_"));
        assert!(dot.contains("10.0.0.9\\n(outside the cluster)"));
        assert!(dot.contains("tcp/5432 · 3 refused · 1.5 KiB"));

        let mermaid = render(&edges, Format::Mermaid);
        assert!(mermaid.starts_with("flowchart LR"));
        assert!(mermaid.contains("-.->"));
        assert!(mermaid.contains("-->|"));
        assert!(mermaid.contains("stroke:#c62828,stroke-width:2px,stroke-dasharray"));
        assert!(mermaid.contains("stroke:#2e7d32"));

        let svg = render(&edges, Format::Svg);
        assert!(well_formed(&svg), "{svg}");
        assert_eq!(svg.matches("<g class=\"edge ").count(), 4);
        assert_eq!(svg.matches("<g class=\"node\">").count(), 6);
        assert!(svg.contains("class=\"edge refused\""));
        assert!(svg.contains("class=\"edge allowed\""));
        assert!(svg.contains("marker-end=\"url(#arrow-refused)\""));
    }

    #[test]
    fn hostile_names_are_text_in_every_format() {
        let evil = "ns/<script>alert(\"x\")</script>\\\n'&|#`";
        let edges = vec![edge(evil, "shop/api", 80, 1, 0)];
        let dot = render(&edges, Format::Dot);
        assert!(dot.contains("\\\"x\\\""));
        assert!(dot.contains("\\\\"));
        assert!(!dot.contains("\"x\""), "{dot}");
        let mermaid = render(&edges, Format::Mermaid);
        assert!(!mermaid.contains("<script>"));
        assert!(mermaid.contains("#quot;x#quot;"));
        assert!(
            mermaid
                .lines()
                .all(|l| !l.contains('\\') || l.contains("n0")),
            "{mermaid}"
        );
        let svg = render(&edges, Format::Svg);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        assert!(svg.contains("&amp;"));
        assert!(well_formed(&svg), "{svg}");
    }

    #[test]
    fn output_does_not_depend_on_input_order() {
        let mut edges = shop();
        let a = [Format::Dot, Format::Mermaid, Format::Svg].map(|f| render(&edges, f));
        edges.reverse();
        edges.swap(0, 2);
        let b = [Format::Dot, Format::Mermaid, Format::Svg].map(|f| render(&edges, f));
        assert_eq!(a, b);
    }

    #[test]
    fn cycles_loops_and_nothing_render() {
        let edges = vec![
            edge("shop/a", "shop/b", 80, 1, 0),
            edge("shop/b", "shop/a", 80, 1, 0),
            edge("shop/c", "shop/c", 80, 0, 1),
        ];
        for f in [Format::Dot, Format::Mermaid, Format::Svg] {
            let out = render(&edges, f);
            assert!(out.contains("shop/a") && out.contains("shop/c"), "{f}");
        }
        assert!(well_formed(&render(&edges, Format::Svg)));
        for f in [Format::Dot, Format::Mermaid, Format::Svg] {
            assert!(render(&[], f).contains("no flows"), "{f}");
        }
        assert!(well_formed(&render(&[], Format::Svg)));
        assert_eq!("SVG".parse::<Format>(), Ok(Format::Svg));
        assert!(
            "png"
                .parse::<Format>()
                .unwrap_err()
                .contains("dot, mermaid or svg")
        );
    }
}
