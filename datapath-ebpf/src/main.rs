//! septum's TC programs. `from_pod` runs at TC ingress of a pod's host-side veth (packets leaving
//! the pod), `to_pod` at TC egress (packets entering the pod).
//!
//! On the host this builds to an empty binary so that `cargo build/clippy --workspace` work; the
//! real object is built for `bpfel-unknown-none` by `septum-datapath`'s build script.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Inline assembly for the one instruction core does not offer (an atomic add); see program.rs.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

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
