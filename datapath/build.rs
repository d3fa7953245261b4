//! Builds the eBPF object (`septum-tc`, from datapath-ebpf) with Debian's rustc, linked as the
//! rustup toolchain `debian` by scripts/setup.sh, and leaves it in OUT_DIR for include_bytes.
//!
//! `SEPTUM_SKIP_EBPF=1` skips it (an empty object is embedded and loading fails with a clear
//! error), so `cargo check`/clippy work on machines without the eBPF toolchain.

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SEPTUM_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow::anyhow!("OUT_DIR"))?);
    if env::var_os("SEPTUM_SKIP_EBPF").is_some_and(|v| v == "1") {
        println!("cargo:warning=SEPTUM_SKIP_EBPF=1: embedding an empty eBPF object");
        fs::write(out_dir.join("septum-tc"), [])?;
        return Ok(());
    }
    // aya-ebpf and septum-tc need one unstable feature (asm_experimental_arch: inline BPF
    // assembly). Naming the crates enables unstable features for them alone, and keeps aya-build
    // from asking for -Z build-std (Debian's libstd-rust-web-dev-bpf ships a prebuilt core for
    // the BPF targets).
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf,septum_tc") };
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest_dir}/../datapath-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "septum-datapath-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("debian"),
    )
}
