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

/// The API server enforces the schema's patterns; the webhook re-checks bindings with
/// hand-written validators. The two must accept exactly the same strings, or a binding could be
/// stored yet ignored (or trusted by the webhook but never storable).
mod pattern_twins {
    use proptest::prelude::*;
    use regex::Regex;
    use rolebridge_webhook::crd::{
        REGION_PATTERN, ROLE_ARN_PATTERN, validate_region, validate_role_arn,
    };

    fn schema_pattern(field: &str) -> String {
        let crd: serde_json::Value =
            serde_norway::from_str(&rolebridge_webhook::crd::crd_yaml()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            [field]["pattern"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn schema_uses_the_documented_constants() {
        assert_eq!(schema_pattern("roleArn"), ROLE_ARN_PATTERN);
        assert_eq!(schema_pattern("region"), REGION_PATTERN);
    }

    #[test]
    fn fixed_examples_agree() {
        let arn = Regex::new(ROLE_ARN_PATTERN).unwrap();
        for s in [
            "arn:aws:iam::123456789012:role/x",
            "arn:aws-cn:iam::123456789012:role/a/b/c",
            "arn:aws-us-gov:iam::123456789012:role/p!~/n+=,.@_-",
            "arn:aws:iam::123456789012:role//x",
            "arn:aws:iam::123456789012:role/x/",
            "arn:aws:iam::123456789012:role/",
            "arn:aws-iso:iam::123456789012:role/x",
            "arn:aws:iam::12345678901:role/x",
            "arn:aws:iam::123456789012:role/a b",
            "xarn:aws:iam::123456789012:role/x",
        ] {
            assert_eq!(arn.is_match(s), validate_role_arn(s).is_ok(), "{s:?}");
        }
    }

    fn arn_like() -> impl Strategy<Value = String> {
        let partition =
            prop::sample::select(vec!["aws", "aws-cn", "aws-us-gov", "aws-iso", "AWS", ""]);
        let account = "[0-9a]{11,13}";
        let kind = prop::sample::select(vec!["role", "user", "role/", ""]);
        let path = prop::collection::vec("[a-z!~/ .]{0,4}", 0..3).prop_map(|v| v.join("/"));
        let name = "[A-Za-z0-9+=,.@_ /:-]{0,70}";
        (partition, account, kind, path, name).prop_map(|(p, a, k, path, n)| {
            let sep = if path.is_empty() { "" } else { "/" };
            format!("arn:{p}:iam::{a}:{k}/{path}{sep}{n}")
        })
    }

    proptest! {
        #[test]
        fn role_arn_validators_agree(s in arn_like()) {
            let arn = Regex::new(ROLE_ARN_PATTERN).unwrap();
            prop_assert_eq!(arn.is_match(&s), validate_role_arn(&s).is_ok(), "{:?}", s);
        }

        #[test]
        fn region_validators_agree(s in "[a-zA-Z]{0,3}(-[a-z0-9]{0,5}){0,4}") {
            let region = Regex::new(REGION_PATTERN).unwrap();
            prop_assert_eq!(region.is_match(&s), validate_region(&s).is_ok(), "{:?}", s);
        }
    }
}
