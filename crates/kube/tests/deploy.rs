//! `deploy/kubernetes/` against the code: the CRD there is what `cutover crd` prints, and every
//! example Rollout is accepted by the controller's own spec mapping (the schema check of the
//! same examples against the CRD is `scripts/validate-kubernetes`, run by `scripts/test`).

use std::path::PathBuf;

use cutover_kube::crd::{crd_yaml, Rollout};
use serde::Deserialize;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

#[test]
fn crd_yaml_is_what_cutover_crd_prints() {
    let on_disk = std::fs::read_to_string(deploy().join("crd.yaml")).unwrap();
    assert!(
        on_disk == crd_yaml(),
        "deploy/kubernetes/crd.yaml is stale: regenerate it with `cutover crd > deploy/kubernetes/crd.yaml`"
    );
}

#[test]
fn every_example_rollout_is_accepted_by_the_controller() {
    let mut seen = 0;
    for entry in std::fs::read_dir(deploy().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc).unwrap();
            if v["kind"] != "Rollout" {
                continue;
            }
            let ro: Rollout = serde_json::from_value(v).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            ro.spec
                .to_core()
                .unwrap_or_else(|e| panic!("{path:?}: Rollout {:?}: {e}", ro.metadata.name));
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "the HTTPRoute and the VirtualService examples");
}
