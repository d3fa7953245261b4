//! Empty on purpose: the eBPF programs live in the `septum-tc` binary (src/main.rs). This library
//! exists so that `septum-datapath` can depend on this crate and be rebuilt when it changes.
#![no_std]
