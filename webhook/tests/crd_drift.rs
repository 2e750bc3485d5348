//! The committed CRD YAML must be exactly what the code generates.

use std::path::Path;

#[test]
fn committed_crd_matches_generated() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/awsrolebinding.yaml");
    let generated = rolebridge_webhook::crd::crd_yaml();
    if std::env::var_os("ROLEBRIDGE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "crds/awsrolebinding.yaml is stale: run `cargo run -p rolebridge-webhook -- crd > crds/awsrolebinding.yaml` \
         (or ROLEBRIDGE_UPDATE_GOLDEN=1 cargo test -p rolebridge-webhook --test crd_drift)"
    );
}

#[test]
fn schema_is_structural_and_omits_nulls() {
    let crd: serde_json::Value =
        serde_norway::from_str(&rolebridge_webhook::crd::crd_yaml()).unwrap();
    let version = &crd["spec"]["versions"][0];
    let schema = &version["schema"]["openAPIV3Schema"];
    let spec = &schema["properties"]["spec"];
    assert_eq!(
        spec["required"],
        serde_json::json!(["roleArn", "serviceAccountName"])
    );
    assert!(spec["properties"]["roleArn"]["pattern"].is_string());
    // Structural schemas reject `anyOf` without types and `$ref`, both easy to get from schemars.
    let text = serde_json::to_string(schema).unwrap();
    assert!(!text.contains("anyOf"), "{text}");
    assert!(!text.contains("$ref"), "{text}");
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["arb"])
    );
}
