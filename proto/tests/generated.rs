//! The committed generated code in `src/gen/` equals what prost and tonic generate now from the
//! `.proto` files. Regenerate with
//! `SEPTUM_UPDATE_PROTO=1 cargo test -p septum-proto --test generated` and review the diff.
//! Needs `protoc` (Debian's `protobuf-compiler`, or `PROTOC=/path/to/protoc`).

use std::{fs, path::Path};

use septum_proto::{PROTO_FILES, PROTO_ROOT};

/// Generates every package into `out_dir`.
fn generate(crate_dir: &Path, out_dir: &Path) {
    let root = crate_dir.join(PROTO_ROOT);
    let files: Vec<_> = PROTO_FILES.iter().map(|f| root.join(f)).collect();
    tonic_prost_build::configure()
        // Consumers bring their own transport (the plugin: a unix-socket channel; the agent: a
        // unix-socket server), so the generated code needs only tonic's codegen feature.
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(out_dir)
        .compile_protos(&files, std::slice::from_ref(&root))
        .unwrap_or_else(|e| {
            panic!("protoc/tonic-prost-build failed (is protobuf-compiler installed?): {e}")
        });
}

#[test]
fn generated_code_matches_proto_files() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed_dir = crate_dir.join("src/gen");
    let tmp = tempfile::tempdir().expect("create a temporary directory");
    generate(crate_dir, tmp.path());

    let mut fresh: Vec<_> = fs::read_dir(tmp.path())
        .expect("read the generated directory")
        .map(|e| e.expect("read a directory entry").file_name())
        .collect();
    fresh.sort();
    assert!(!fresh.is_empty(), "code generation produced no files");

    if std::env::var_os("SEPTUM_UPDATE_PROTO").is_some() {
        fs::create_dir_all(&committed_dir).expect("create src/gen");
        for name in &fresh {
            fs::copy(tmp.path().join(name), committed_dir.join(name))
                .unwrap_or_else(|e| panic!("copy {name:?} into src/gen: {e}"));
        }
    }

    let mut committed: Vec<_> = fs::read_dir(&committed_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", committed_dir.display()))
        .map(|e| e.expect("read a directory entry").file_name())
        .collect();
    committed.sort();
    assert_eq!(
        committed, fresh,
        "src/gen holds other files than code generation produces; regenerate with \
         SEPTUM_UPDATE_PROTO=1 and remove stale files"
    );
    for name in &fresh {
        let want = fs::read_to_string(tmp.path().join(name)).expect("read generated file");
        let have = fs::read_to_string(committed_dir.join(name)).expect("read committed file");
        assert!(
            want == have,
            "src/gen/{} drifted from the .proto files; run \
             `SEPTUM_UPDATE_PROTO=1 cargo test -p septum-proto --test generated` and commit",
            name.to_string_lossy()
        );
    }
}
