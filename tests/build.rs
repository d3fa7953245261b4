//! Generates the CRI client from `proto/runtime/v1/api.proto`: kubernetes/cri-api's
//! `pkg/apis/runtime/v1/api.proto` at tag v0.36.3, with only the `debug_redact` field options
//! removed (Debian 12's protoc 3.21 predates them; the note at the file's top says so).
//! containerd 1.6 (Debian 12) serves this `runtime.v1` API; later fields it does not know are
//! ignored on the wire. Needs `protoc` (Debian's `protobuf-compiler`, or `PROTOC=/path`).

use std::path::Path;

fn main() {
    let root = Path::new("proto");
    let file = root.join("runtime/v1/api.proto");
    tonic_prost_build::configure()
        // Only the client: the tests are containerd's callers, never a runtime.
        .build_server(false)
        // The client brings its own unix-socket connector, so tonic's codegen feature suffices.
        .build_transport(false)
        // The proto's comments are Go-flavoured prose with indented blocks that rustdoc would
        // compile as doctests; the vendored file is the documentation.
        .disable_comments(["."])
        .compile_protos(&[file.as_path()], &[root])
        .unwrap_or_else(|e| {
            panic!(
                "generating the CRI client from {} failed (is protoc installed? \
                 `bash scripts/setup.sh` installs protobuf-compiler): {e}",
                file.display()
            )
        });
}
