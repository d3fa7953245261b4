//! The committed CRD manifests must equal what the Rust types generate. Regenerate with
//! `SEPTUM_UPDATE_CRDS=1 cargo test -p septum-crd --test crd_yaml` (or `septum crd print`).

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds");
    let update = std::env::var_os("SEPTUM_UPDATE_CRDS").is_some();
    for (file, yaml) in septum_crd::generate::crds() {
        let path = dir.join(file);
        if update {
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            std::fs::write(&path, &yaml)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "read {}: {e} (run with SEPTUM_UPDATE_CRDS=1 to generate)",
                path.display()
            )
        });
        assert!(
            committed == yaml,
            "{} drifted from the Rust types; run `SEPTUM_UPDATE_CRDS=1 cargo test -p septum-crd --test crd_yaml`",
            path.display()
        );
    }
}

#[test]
fn schema_carries_the_cel_rules() {
    let yaml = septum_crd::generate::all_yaml();
    assert!(
        yaml.contains("x-kubernetes-validations"),
        "CEL rules missing from the CRD"
    );
    assert!(yaml.contains("set exactly one of service, podSelector, serviceAccount"));
    assert!(yaml.contains("group: septum.dev"));
    assert!(yaml.contains("v1alpha1"));
}
