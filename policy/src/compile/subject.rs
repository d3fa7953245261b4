//! Per-subject compilation: for one subject identity and direction, which peers get entries of
//! their own (pod identities and policy prefixes some rule names, pod-in-prefix pairs, pods whose
//! named ports an any-peer egress rule names), evaluated and encoded layer by layer.

use std::collections::BTreeSet;

use septum_datapath_common::{
    Cookie, ENDPOINT_F_EGRESS_POLICY, ENDPOINT_F_INGRESS_POLICY, Identity, PolicyEntry,
};

use super::encode::{emit, host_entry};
use super::evaluate::SubjectCtx;
use super::index::Index;
use super::{Decision, IdentityInfo, Peer};
use crate::cidr::Cidr;
use crate::ports::Segmented;
use crate::rules::{Direction, PortItem, PortMatch};
use crate::state::{PRECEDENCE_ANY_PEER, PRECEDENCE_PEER, PRECEDENCE_POD_IN_CIDR, PolicyKey};

/// What compiling one subject in one direction needs besides the peer.
struct DirCompile<'a> {
    ctx: SubjectCtx<'a>,
    /// The decision toward peers nothing more specific names.
    generic: Segmented<Decision>,
    /// Policy prefixes some rule names as a peer.
    classes: BTreeSet<Cidr>,
    /// Named ports of egress rules toward any peer (every pod with such a port is special).
    named_any: BTreeSet<&'a str>,
}

impl DirCompile<'_> {
    /// Whether a pod identity gets entries of its own (the decision toward it may differ from
    /// the generic one).
    fn is_special(&self, id: Identity, info: &IdentityInfo) -> bool {
        self.ctx.rules.iter().any(|d| d.peer_ids.contains(&id))
            || (!self.named_any.is_empty()
                && info
                    .key
                    .named_ports
                    .iter()
                    .any(|(n, _, _)| self.named_any.contains(n.as_str())))
    }
}

impl Index {
    /// The compile context of a subject in a direction; `None` when nothing applies to it.
    fn dir_compile<'a>(
        &'a self,
        info: &'a IdentityInfo,
        direction: Direction,
    ) -> Option<DirCompile<'a>> {
        let ctx = self.subject_ctx(info, direction);
        if ctx.rules.is_empty() && ctx.isolation.any == Cookie::NONE {
            return None;
        }
        let generic = self.evaluate(&ctx, &Peer::Outside);
        let mut classes = BTreeSet::new();
        let mut named_any = BTreeSet::new();
        for d in &ctx.rules {
            classes.extend(d.peer_classes.iter().copied());
            if direction == Direction::Egress
                && d.any
                && let PortMatch::Items(items) = &d.rule.ports
            {
                for i in items {
                    if let PortItem::Named { name, .. } = i {
                        named_any.insert(name.as_str());
                    }
                }
            }
        }
        Some(DirCompile {
            ctx,
            generic,
            classes,
            named_any,
        })
    }

    /// Entries keyed by pod identity `id` and by its pod-in-CIDR identities.
    fn emit_peer(
        &self,
        dc: &DirCompile<'_>,
        id: Identity,
        out: &mut Vec<(PolicyKey, PolicyEntry)>,
    ) {
        let Some(pinfo) = self.identities.get(&id) else {
            return;
        };
        let s = dc.ctx.subject.number;
        let direction = dc.ctx.direction;
        let special = dc.is_special(id, pinfo);
        let pod_layer = special.then(|| {
            let f = self.evaluate(
                &dc.ctx,
                &Peer::Pod {
                    identity: pinfo,
                    class: None,
                },
            );
            emit(out, s, direction, id, PRECEDENCE_PEER, &f, &dc.generic);
            f
        });
        for (class, pair) in self.pairs_of(id) {
            if !special && !dc.classes.contains(&class) {
                continue;
            }
            let f = self.evaluate(
                &dc.ctx,
                &Peer::Pod {
                    identity: pinfo,
                    class: Some(class),
                },
            );
            let fallback = pod_layer.as_ref().unwrap_or(&dc.generic);
            emit(
                out,
                s,
                direction,
                pair,
                PRECEDENCE_POD_IN_CIDR,
                &f,
                fallback,
            );
        }
    }

    /// Every entry of one subject identity, sorted, and its endpoint flags.
    pub(super) fn compile_subject(&self, s: Identity) -> (Vec<(PolicyKey, PolicyEntry)>, u8) {
        let mut out = Vec::new();
        let mut flags = 0u8;
        let Some(info) = self.identities.get(&s) else {
            return (out, flags);
        };
        for direction in Direction::BOTH {
            let start = out.len();
            let Some(dc) = self.dir_compile(info, direction) else {
                continue;
            };
            emit(
                &mut out,
                s,
                direction,
                Identity::ANY,
                PRECEDENCE_ANY_PEER,
                &dc.generic,
                &Segmented::constant(Decision::UNPOLICED),
            );
            // Identities with entries of their own, or with pairs in a named prefix.
            let mut ids: BTreeSet<Identity> = BTreeSet::new();
            for d in &dc.ctx.rules {
                ids.extend(d.peer_ids.iter().copied());
            }
            if !dc.named_any.is_empty() {
                ids.extend(
                    self.identities
                        .iter()
                        .filter(|(id, inf)| dc.is_special(**id, inf))
                        .map(|(id, _)| *id),
                );
            }
            for c in &dc.classes {
                ids.extend(self.pairs_by_class.get(c).into_iter().flatten().copied());
            }
            for id in ids {
                self.emit_peer(&dc, id, &mut out);
            }
            for c in &dc.classes {
                let f = self.evaluate(&dc.ctx, &Peer::Class(*c));
                emit(
                    &mut out,
                    s,
                    direction,
                    self.class_ids[c],
                    PRECEDENCE_PEER,
                    &f,
                    &dc.generic,
                );
            }
            if out.len() > start {
                if direction == Direction::Ingress {
                    // A policed ingress still lets the node reach its pod (kubelet probes).
                    out.push(host_entry(s));
                    flags |= ENDPOINT_F_INGRESS_POLICY;
                } else {
                    flags |= ENDPOINT_F_EGRESS_POLICY;
                }
            }
        }
        out.sort_by_key(|a| a.0);
        (out, flags)
    }

    /// The entries of subject `s` keyed by peer identity `peer` and its pod-in-CIDR identities
    /// (none if `peer` is gone), or `None` if entries toward one peer can decide whether the
    /// subject is policed at all in a direction (then only a whole-subject compile is exact).
    pub(super) fn compile_subject_peer(
        &self,
        s: Identity,
        peer: Option<Identity>,
    ) -> Option<Vec<(PolicyKey, PolicyEntry)>> {
        let info = self.identities.get(&s)?;
        let mut out = Vec::new();
        for direction in Direction::BOTH {
            let Some(dc) = self.dir_compile(info, direction) else {
                continue;
            };
            if dc.generic == Segmented::constant(Decision::UNPOLICED) {
                return None;
            }
            if let Some(id) = peer {
                self.emit_peer(&dc, id, &mut out);
            }
        }
        Some(out)
    }
}
