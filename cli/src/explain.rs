//! `septum explain`: the verdict of a flow over manifests, with the deciding rules on the egress
//! and ingress sides, tier by tier; a Service destination is explained per backend after DNAT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use septum_policy::explain::{ExplainQuery, FlowEnd, FlowExplanation, SideReport, explain};
use septum_policy::model::{ObjectKey, PortRef, Protocol};
use septum_policy::{Engine, InMemoryAllocations};

use crate::manifest_files;

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// Human-readable.
    Text,
    /// JSON.
    Json,
}

/// Arguments of `septum explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Manifest files or directories.
    #[arg(long, required = true, num_args = 1..)]
    manifests: Vec<PathBuf>,
    /// Source: NS/POD or an IP.
    #[arg(long)]
    from: String,
    /// Destination: NS/POD, service/NS/NAME or an IP.
    #[arg(long)]
    to: String,
    /// Destination port: a number or a port name (of the pod, or of the Service).
    #[arg(long)]
    port: String,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

fn parse_end(s: &str, destination: bool) -> Result<FlowEnd> {
    if let Ok(ip) = s.parse() {
        return Ok(FlowEnd::Ip(ip));
    }
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        ["service", ns, name] | ["svc", ns, name] if destination => {
            Ok(FlowEnd::Service(ObjectKey::new(*ns, *name)))
        }
        ["service", ..] | ["svc", ..] if !destination => {
            bail!("a Service can only be a destination: {s:?}")
        }
        [ns, name] if !ns.is_empty() && !name.is_empty() => {
            Ok(FlowEnd::Pod(ObjectKey::new(*ns, *name)))
        }
        _ => bail!("{s:?} is not NS/POD, service/NS/NAME or an IP address"),
    }
}

/// Runs `septum explain`.
pub fn run(a: ExplainArgs) -> Result<ExitCode> {
    let protocol = Protocol::parse(&a.protocol)
        .with_context(|| format!("unknown protocol {:?} (TCP, UDP, SCTP)", a.protocol))?;
    let port = match a.port.parse::<u16>() {
        Ok(0) => bail!("port 0 is not a valid port"),
        Ok(n) => PortRef::Number(n),
        Err(_) if !a.port.is_empty() && !a.port.starts_with('-') => PortRef::Name(a.port.clone()),
        Err(_) => bail!("invalid port {:?}", a.port),
    };
    let query = ExplainQuery {
        from: parse_end(&a.from, false)?,
        to: parse_end(&a.to, true)?,
        port,
        protocol,
    };
    let m = manifest_files::load(&a.manifests)?;
    let errors: Vec<_> = m.errors.iter().filter(|e| !e.warning).collect();
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        bail!(
            "{} error(s) in the manifests; fix them first (see `septum policy check`)",
            errors.len()
        );
    }
    let engine = Engine::new(m.cluster, InMemoryAllocations::new());
    let flows = explain(&engine, &query).context("cannot explain this flow")?;
    match a.output {
        Output::Json => {
            let v = if flows.len() == 1 {
                flow_json(&flows[0])
            } else {
                let verdict = if flows.iter().all(|f| f.verdict == "allow") {
                    "allow"
                } else {
                    "deny"
                };
                let first = &flows[0];
                json!({
                    "verdict": verdict,
                    "service": first.service,
                    "egress": side_json(&first.egress),
                    "ingress": side_json(&first.ingress),
                    "backends": flows.iter().map(flow_json).collect::<Vec<_>>(),
                })
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            for f in &flows {
                print_text(f);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn side_json(s: &SideReport) -> Value {
    json!({
        "subject": s.subject,
        "identity": s.identity,
        "policed": s.policed,
        "action": s.action,
        "cookie": s.cookie,
        "decisiveRule": s.decisive_rule,
        "datapath": {"action": s.datapath.0, "cookie": s.datapath.1},
        "tiers": s.tiers.iter().map(|t| json!({
            "tier": t.tier,
            "outcome": t.outcome,
            "rules": t.rules.iter().map(|r| json!({
                "cookie": r.cookie,
                "action": r.action,
                "rule": r.description,
                "decisive": r.decisive,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn flow_json(f: &FlowExplanation) -> Value {
    json!({
        "verdict": f.verdict,
        "audit": f.audit,
        "from": f.from,
        "to": f.to,
        "service": f.service,
        "srcIP": f.src_ip.to_string(),
        "dstIP": f.dst_ip.to_string(),
        "port": f.port,
        "protocol": f.protocol.as_str(),
        "egress": side_json(&f.egress),
        "ingress": side_json(&f.ingress),
    })
}

fn print_side(s: &SideReport) {
    let who = s.subject.as_deref().unwrap_or("(not a pod endpoint)");
    println!("  {} ({who}): {}", s.direction, s.action.to_uppercase());
    if !s.policed {
        println!("    not policed");
        return;
    }
    for t in &s.tiers {
        println!("    {:<10} {}", t.tier, t.outcome);
        for r in &t.rules {
            let mark = if r.decisive { "*" } else { " " };
            println!(
                "      {mark} [{}] {} ({})",
                r.cookie, r.description, r.action
            );
        }
    }
    if let Some(d) = &s.decisive_rule {
        println!("    decided by: {d}");
    }
}

fn print_text(f: &FlowExplanation) {
    let via = f
        .service
        .as_deref()
        .map(|s| format!(" via {s}"))
        .unwrap_or_default();
    let audit = if f.audit {
        " (audit: an Audit-mode FlowPolicy would deny it)"
    } else {
        ""
    };
    println!(
        "{} ({}) -> {} ({}){via} {}/{}: {}{audit}",
        f.from,
        f.src_ip,
        f.to,
        f.dst_ip,
        f.protocol,
        f.port,
        f.verdict.to_uppercase()
    );
    print_side(&f.egress);
    print_side(&f.ingress);
}
