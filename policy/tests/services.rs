//! Property tests of Service resolution on generated Service worlds (`common::service_world`):
//! Services with several ports per number (53/TCP beside 53/UDP), 63-character port names, and
//! named targetPorts that resolve on only some selected pods.
//!
//! - explain to a Service port chosen by (number, protocol) or by name reaches exactly that
//!   port's endpoints as the naive EndpointSlice resolver computes them (`naive::
//!   service_endpoints`), at the port the targetPort resolves to, with that port's protocol; a
//!   (number, protocol) the Service lacks is refused, never answered with the other protocol;
//! - a pod on which a named targetPort does not resolve is not an endpoint, and does not make
//!   explain fail; with no endpoint left the answer says the flow has no destination;
//! - every explained backend's verdicts and cookies equal the naive evaluator's;
//! - FlowPolicies by Service subject and Service peer compile to entries that agree with the
//!   naive evaluator on every flow.

mod common;

use proptest::prelude::*;
use septum_policy::allocation::InMemoryAllocations;
use septum_policy::compile::Engine;
use septum_policy::explain::{ExplainError, ExplainQuery, FlowEnd, FlowExplanation, explain};
use septum_policy::model::{Cluster, ObjectKey, PortRef, Protocol, Service, ServicePort};
use septum_policy::state::action_name;

use common::naive::{self, End};
use common::service_world::{CHECK_PORTS, service_world};

type Engine0 = Engine<InMemoryAllocations>;

/// Whether `result` says the flow has no destination: the Service selects no pod
/// (`NoBackends`), or its pods give this port no endpoint (`NoEndpoints`).
fn says_no_destination(
    result: &Result<Vec<FlowExplanation>, ExplainError>,
    selects_pods: bool,
    svc: &ObjectKey,
) -> bool {
    match result {
        Err(ExplainError::NoBackends(k)) => !selects_pods && k == svc,
        Err(ExplainError::NoEndpoints { service, .. }) => selects_pods && service == svc,
        _ => false,
    }
}

/// Checks explain from `src` to one port of `svc`, addressed as `port`, against the naive
/// resolver and evaluator.
fn check_service_port(
    engine: &Engine0,
    src: &ObjectKey,
    svc: &Service,
    sp: &ServicePort,
    port: PortRef,
) -> Result<(), TestCaseError> {
    let c = engine.cluster();
    let query = ExplainQuery {
        from: FlowEnd::Pod(src.clone()),
        to: FlowEnd::Service(svc.key()),
        port: port.clone(),
        protocol: sp.protocol,
    };
    let want = naive::service_endpoints(c, svc, sp);
    let result = explain(engine, &query);
    let what = format!(
        "explain {src} -> service/{} port {port} {}",
        svc.key(),
        sp.protocol
    );
    if want.is_empty() {
        let selects_pods = !naive::service_backends(c, svc).is_empty();
        prop_assert!(
            says_no_destination(&result, selects_pods, &svc.key()),
            "{what}: no endpoint (the Service selects {}), so the flow has no destination; got \
             {result:?}",
            if selects_pods {
                "pods, on none of which the targetPort resolves"
            } else {
                "no pod"
            }
        );
        return Ok(());
    }
    let got = match result {
        Ok(got) => got,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "{what}: endpoints {want:?}, but explain failed: {e}"
            )));
        }
    };
    let mut reached: Vec<(String, u16)> = got.iter().map(|e| (e.to.clone(), e.port)).collect();
    reached.sort();
    let expected: Vec<(String, u16)> = want.iter().map(|(k, p)| (format!("pod/{k}"), *p)).collect();
    prop_assert_eq!(
        &reached,
        &expected,
        "{}: backends (pod, port after DNAT) differ from the EndpointSlice endpoints",
        what
    );
    for e in &got {
        prop_assert_eq!(
            e.protocol,
            sp.protocol,
            "{}: explained with another protocol than the Service port's",
            &what
        );
        prop_assert_eq!(e.service.clone(), Some(format!("service/{}", svc.key())));
        let dst = want
            .iter()
            .find(|(k, _)| format!("pod/{k}") == e.to)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| TestCaseError::fail(format!("{what}: unexpected backend {}", e.to)))?;
        let (eg, ing) = naive::flow(
            c,
            &End::Pod(src.clone(), e.src_ip),
            &End::Pod(dst.clone(), e.dst_ip),
            e.protocol.number(),
            e.port,
        );
        let naive_side = |v: Option<naive::Verdict>| {
            v.map(|v| {
                (
                    action_name(v.0).to_string(),
                    naive::cookie_of(engine.store(), &v),
                )
            })
        };
        let explained = |s: &septum_policy::explain::SideReport| {
            s.subject
                .as_ref()
                .map(|_| (s.action.clone(), s.cookie.get()))
        };
        prop_assert_eq!(
            explained(&e.egress),
            naive_side(eg),
            "{}: egress of {} -> {} {}/{} differs from the naive evaluator",
            &what,
            src,
            dst,
            e.protocol,
            e.port
        );
        prop_assert_eq!(
            explained(&e.ingress),
            naive_side(ing),
            "{}: ingress of {} -> {} {}/{} differs from the naive evaluator",
            &what,
            src,
            dst,
            e.protocol,
            e.port
        );
        for s in [&e.egress, &e.ingress] {
            prop_assert_eq!(
                (s.action.as_str(), s.cookie),
                (s.datapath.0.as_str(), s.datapath.1),
                "{}: {} side: explain and the datapath reading disagree",
                &what,
                &s.direction
            );
        }
    }
    Ok(())
}

/// Every Service port of `c`, by number and protocol and by name, from every pod; and every
/// (number, protocol) a Service lacks next to a number it has.
fn check_services(c: &Cluster) -> Result<(), TestCaseError> {
    let engine = Engine::new(c.clone(), InMemoryAllocations::new());
    for svc in c.services.values() {
        for src in c.pods.keys() {
            for sp in &svc.ports {
                check_service_port(&engine, src, svc, sp, PortRef::Number(sp.port))?;
                if let Some(name) = &sp.name {
                    check_service_port(&engine, src, svc, sp, PortRef::Name(name.clone()))?;
                }
                for protocol in Protocol::ALL {
                    if !naive::service_ports(svc, &PortRef::Number(sp.port), Some(protocol))
                        .is_empty()
                    {
                        continue;
                    }
                    let query = ExplainQuery {
                        from: FlowEnd::Pod(src.clone()),
                        to: FlowEnd::Service(svc.key()),
                        port: PortRef::Number(sp.port),
                        protocol,
                    };
                    let result = explain(&engine, &query);
                    prop_assert!(
                        matches!(result, Err(ExplainError::UnknownServicePort { .. })),
                        "explain {src} -> service/{} port {} {protocol}: the Service has no such \
                         port ({} is {}), yet explain answered {result:?}",
                        svc.key(),
                        sp.port,
                        sp.port,
                        sp.protocol
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    // 256 worlds per run; `PROPTEST_CASES=N` runs more.
    #![proptest_config(ProptestConfig::with_cases(common::proptest_cases()))]

    #[test]
    fn explain_reaches_exactly_the_endpoints_of_the_service_port(c in service_world()) {
        check_services(&c)?;
    }

    #[test]
    fn flow_policies_by_service_agree_with_the_naive_evaluator(c in service_world()) {
        let engine = Engine::new(c.clone(), InMemoryAllocations::new());
        if let Err(e) = common::check_world_on_ports(&c, engine.state(), engine.store(), &CHECK_PORTS) {
            prop_assert!(false, "{e}\nstate:\n{}", engine.state());
        }
    }
}
