//! The CNI operations: what ADD, DEL, CHECK, GC and STATUS ask of the kernel and the agent.
//!
//! - ADD needs `prevResult` (septum-cni is chained after the plugin that creates the interface),
//!   finds the host veth through the kernel, cross-checks it with `prevResult`, registers the
//!   endpoint, and prints `prevResult` unchanged once the agent has attached the programs. An
//!   unreachable or slow agent fails ADD with code 11: a pod is never started unenforced.
//! - DEL never needs the namespace, `prevResult` or a well-formed `CNI_ARGS`; when the agent
//!   cannot acknowledge it, it is queued on disk ([`crate::del_queue`]) and succeeds.
//! - CHECK repeats ADD's lookup and asks the agent to compare.
//! - GC forwards `cni.dev/valid-attachments`; STATUS forwards the agent's readiness (code 50).
//!
//! Every command that reaches the agent first replays queued DELs.

use std::{fmt::Display, path::Path, time::Duration};

use septum_proto::agent::v1 as pb;

use crate::{
    agent::AgentClient,
    config::{ConfigError, NetConf},
    del_queue::{self, DelQueue, QueuedDel, QueuedPod},
    env::{Attachment, Command, Invocation, PodArgs},
    error::Error,
    link::{self, HostVeth},
    prev_result::PrevResult,
};

/// The most queued DELs one invocation replays, so that a long backlog cannot stall an ADD.
const MAX_REPLAY: usize = 256;

/// Runs a command other than VERSION; returns what to print on stdout, if anything.
pub async fn dispatch(inv: &Invocation, conf: &NetConf<'_>) -> Result<Option<String>, Error> {
    match inv.command {
        Command::Add => add(inv, conf).await.map(Some),
        Command::Del => del(inv, conf).await.map(|()| None),
        Command::Check => check(inv, conf).await.map(|()| None),
        Command::Gc => gc(conf).await.map(|()| None),
        Command::Status => status(conf).await.map(|()| None),
        Command::Version => Err(Error::Internal("VERSION reached dispatch".into())),
    }
}

/// A line on stderr, where runtimes collect plugin logs.
fn note(msg: impl Display) {
    eprintln!("septum-cni: {msg}");
}

fn attachment(inv: &Invocation) -> Result<&Attachment, Error> {
    inv.attachment
        .as_ref()
        .ok_or_else(|| Error::Internal("validated environment lacks the attachment".into()))
}

fn netns(inv: &Invocation) -> Result<&str, Error> {
    inv.netns
        .as_deref()
        .ok_or_else(|| Error::Internal("validated environment lacks CNI_NETNS".into()))
}

fn pb_attachment(a: &Attachment) -> pb::Attachment {
    pb::Attachment {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
    }
}

fn pb_pod(pod: &PodArgs) -> pb::PodRef {
    pb::PodRef {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
    }
}

/// What ADD and CHECK both establish: prevResult's view and the kernel's, agreeing.
struct Observed<'a> {
    prev_result: &'a str,
    veth: HostVeth,
    ips: Vec<String>,
}

fn observe<'a>(
    inv: &Invocation,
    conf: &NetConf<'a>,
    command: &'static str,
) -> Result<Observed<'a>, Error> {
    let att = attachment(inv)?;
    let netns = netns(inv)?;
    let raw = conf.prev_result.ok_or(ConfigError::MissingField {
        field: "prevResult",
        why: match command {
            "ADD" => {
                "septum-cni is a chained plugin; list it after the plugin that creates the interface"
            }
            _ => "CHECK compares against the previous result",
        },
    })?;
    let prev = PrevResult::parse(raw)?;
    let ips = prev
        .container_ips(&att.ifname)?
        .into_iter()
        .map(|ip| ip.to_string())
        .collect();
    let veth = link::find_host_veth(Path::new(netns), &att.ifname)?;
    prev.cross_check(&veth, &att.ifname, netns)?;
    Ok(Observed {
        prev_result: raw.get(),
        veth,
        ips,
    })
}

async fn add(inv: &Invocation, conf: &NetConf<'_>) -> Result<String, Error> {
    let att = attachment(inv)?;
    let pod = PodArgs::parse(&inv.cni_args)?;
    let seen = observe(inv, conf, "ADD")?;
    let opts = &conf.options;
    let mut agent = AgentClient::connect(&opts.agent_socket, opts.add_timeout).await?;
    replay(
        &mut agent,
        &DelQueue::new(&opts.del_queue_dir),
        opts.agent_timeout,
    )
    .await;
    let request = pb::AddRequest {
        attachment: Some(pb_attachment(att)),
        network: conf.name.clone(),
        netns: netns(inv)?.to_string(),
        pod: Some(pb_pod(&pod)),
        host_interface: Some(pb::HostInterface {
            ifindex: seen.veth.host_ifindex,
            name: seen.veth.host_name.clone(),
        }),
        container_interface: Some(pb::ContainerInterface {
            ifindex: seen.veth.container_ifindex,
            mac: seen.veth.container_mac.clone(),
        }),
        ips: seen.ips,
        timeout_ms: u32::try_from(opts.add_timeout.as_millis()).unwrap_or(u32::MAX),
    };
    let reply = agent.add(request, opts.add_timeout).await?;
    let attached = matches!(
        pb::EndpointState::try_from(reply.state),
        Ok(pb::EndpointState::InitDeny | pb::EndpointState::Ready)
    );
    if reply.endpoint_id == 0 || !attached {
        return Err(Error::BadAddReply(format!(
            "endpoint id {}, state {}",
            reply.endpoint_id, reply.state
        )));
    }
    Ok(seen.prev_result.to_string())
}

async fn del(inv: &Invocation, conf: &NetConf<'_>) -> Result<(), Error> {
    let att = attachment(inv)?;
    // DEL must succeed with whatever it is given: a malformed CNI_ARGS only loses the pod name.
    let pod = PodArgs::parse(&inv.cni_args).unwrap_or_default();
    let request = pb::DelRequest {
        attachment: Some(pb_attachment(att)),
        network: conf.name.clone(),
        netns: inv.netns.clone().unwrap_or_default(),
        pod: (pod != PodArgs::default()).then(|| pb_pod(&pod)),
        queued_at_unix_ms: 0,
    };
    let opts = &conf.options;
    let queue = DelQueue::new(&opts.del_queue_dir);
    let failure = match AgentClient::connect(&opts.agent_socket, opts.agent_timeout).await {
        Err(e) => e,
        Ok(mut agent) => {
            replay(&mut agent, &queue, opts.agent_timeout).await;
            match agent.del(request.clone(), opts.agent_timeout).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let queued = QueuedDel {
        version: del_queue::FORMAT_VERSION,
        network: request.network,
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns: request.netns,
        pod: request.pod.map(|p| QueuedPod {
            namespace: p.namespace,
            name: p.name,
            uid: p.uid,
        }),
        queued_at_unix_ms: del_queue::now_unix_ms(),
    };
    match queue.enqueue(&queued) {
        Ok(path) => {
            note(format_args!(
                "{}; DEL queued in {} for replay",
                chain(&failure),
                path.display()
            ));
            Ok(())
        }
        Err(queue) => Err(Error::DelNotQueued {
            agent: failure,
            queue,
        }),
    }
}

async fn check(inv: &Invocation, conf: &NetConf<'_>) -> Result<(), Error> {
    let att = attachment(inv)?;
    let seen = observe(inv, conf, "CHECK")?;
    let opts = &conf.options;
    let mut agent = AgentClient::connect(&opts.agent_socket, opts.agent_timeout).await?;
    replay(
        &mut agent,
        &DelQueue::new(&opts.del_queue_dir),
        opts.agent_timeout,
    )
    .await;
    let reply = agent
        .check(
            pb::CheckRequest {
                attachment: Some(pb_attachment(att)),
                network: conf.name.clone(),
                host_interface: Some(pb::HostInterface {
                    ifindex: seen.veth.host_ifindex,
                    name: seen.veth.host_name,
                }),
                ips: seen.ips,
            },
            opts.agent_timeout,
        )
        .await?;
    if reply.ok {
        Ok(())
    } else {
        Err(Error::CheckFailed {
            reason: reply.reason,
        })
    }
}

async fn gc(conf: &NetConf<'_>) -> Result<(), Error> {
    let opts = &conf.options;
    let mut agent = AgentClient::connect(&opts.agent_socket, opts.agent_timeout).await?;
    replay(
        &mut agent,
        &DelQueue::new(&opts.del_queue_dir),
        opts.agent_timeout,
    )
    .await;
    let reply = agent
        .gc(
            pb::GcRequest {
                network: conf.name.clone(),
                valid_attachments: conf.valid_attachments.iter().map(pb_attachment).collect(),
            },
            opts.agent_timeout,
        )
        .await?;
    for removed in reply.removed {
        note(format_args!(
            "GC removed stale endpoint {}/{}",
            removed.container_id, removed.ifname
        ));
    }
    Ok(())
}

async fn status(conf: &NetConf<'_>) -> Result<(), Error> {
    let opts = &conf.options;
    let mut agent = AgentClient::connect(&opts.agent_socket, opts.agent_timeout)
        .await
        .map_err(Error::Unavailable)?;
    replay(
        &mut agent,
        &DelQueue::new(&opts.del_queue_dir),
        opts.agent_timeout,
    )
    .await;
    match agent.status(opts.agent_timeout).await {
        Ok(s) if s.ready => Ok(()),
        Ok(s) => Err(Error::NotReady { message: s.message }),
        Err(e) => Err(Error::Unavailable(e)),
    }
}

/// Sends queued DELs to the agent (see [`crate::del_queue`] for the rules). Best effort: a
/// failure here is logged and never fails the command that triggered it.
pub async fn replay(agent: &mut AgentClient, queue: &DelQueue, timeout: Duration) {
    let _lock = match queue.lock(timeout) {
        Ok(Some(lock)) => lock,
        Ok(None) => return,
        Err(e) => return note(chain(&e)),
    };
    let pending = match queue.pending(MAX_REPLAY) {
        Ok(p) => p,
        Err(e) => return note(chain(&e)),
    };
    for p in pending {
        let del = match &p.del {
            Err(e) => {
                note(format_args!(
                    "removing unreadable queued DEL {}: {e}",
                    p.path.display()
                ));
                if let Err(e) = queue.remove(&p) {
                    note(chain(&e));
                }
                continue;
            }
            // Written by a newer plugin: leave it to that plugin (or the agent).
            Ok(d) if d.version > del_queue::FORMAT_VERSION => continue,
            Ok(d) => d,
        };
        let request = pb::DelRequest {
            attachment: Some(pb::Attachment {
                container_id: del.container_id.clone(),
                ifname: del.ifname.clone(),
            }),
            network: del.network.clone(),
            netns: del.netns.clone(),
            pod: del.pod.as_ref().map(|p| pb::PodRef {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
            }),
            queued_at_unix_ms: del.queued_at_unix_ms.max(1),
        };
        match agent.del(request, timeout).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                note(format_args!("queued DEL replay stopped: {}", chain(&e)));
                return;
            }
            Err(e) => note(format_args!(
                "the agent refused queued DEL {}, dropping it: {}",
                p.path.display(),
                chain(&e)
            )),
        }
        if let Err(e) = queue.remove(&p) {
            note(chain(&e));
        }
    }
}

/// An error and its sources on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
