//! septum's TC programs. `from_pod` runs at TC ingress of a pod's host-side veth (packets leaving
//! the pod), `to_pod` at TC egress (packets entering the pod).
//!
//! On the host this builds to an empty binary so that `cargo build/clippy --workspace` work; the
//! real object is built for `bpfel-unknown-none` by `septum-datapath`'s build script.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Inline assembly for the one instruction core does not offer (an atomic add); see conntrack.rs.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// Map keys and values are passed by reference although aya-ebpf takes `impl Borrow<K>`: most
// live in the per-CPU scratch map, and passing them by value would copy them onto the 512-byte
// BPF stack, which cannot hold them beside the rest (see maps.rs, `Scratch`).
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by value would copy map keys onto the BPF stack"
)]

// One concern per module, as cilium's bpf/lib keeps one per header; program.rs holds the entry
// points and the flow through the others.
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod mem;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod program;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier proves no panic path is reachable; this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
