//! The committed CRD YAML must be exactly what the code generates, and the webhook's Rust
//! validators must accept exactly what the API server accepts under that CRD: its patterns,
//! lengths, ranges and its CEL rule (evaluated here with a CEL interpreter).

use std::path::Path;

/// The top-level copy and the chart's copy (a chart check also compares them).
const COPIES: [&str; 2] = [
    "../crds/awsrolebinding.yaml",
    "../charts/rolebridge/crds/awsrolebinding.yaml",
];

#[test]
fn committed_crd_matches_generated() {
    let generated = rolebridge_webhook::domain::crd::crd_yaml();
    for copy in COPIES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(copy);
        if std::env::var_os("ROLEBRIDGE_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{copy} is stale: run `cargo run -p rolebridge-webhook -- crd > crds/awsrolebinding.yaml` and copy it to charts/rolebridge/crds/ \
             (or ROLEBRIDGE_UPDATE_GOLDEN=1 cargo test -p rolebridge-webhook --test crd_drift)"
        );
    }
}

#[test]
fn schema_is_structural_and_omits_nulls() {
    let crd: serde_json::Value =
        serde_norway::from_str(&rolebridge_webhook::domain::crd::crd_yaml()).unwrap();
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
    use rolebridge_webhook::domain::crd::{
        REGION_PATTERN, ROLE_ARN_PATTERN, validate_region, validate_role_arn,
    };

    fn schema_pattern(field: &str) -> String {
        let crd: serde_json::Value =
            serde_norway::from_str(&rolebridge_webhook::domain::crd::crd_yaml()).unwrap();
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

/// The spec schema as the API server applies it, for the cases below.
///
/// A deliberately small validator for the subset of OpenAPI v3 the CRD uses, with the API
/// server's meanings: unknown fields and `null`s in non-nullable fields are pruned before
/// validation, `maxLength` counts characters, a `set` list must not repeat items, and every
/// `x-kubernetes-validations` rule is evaluated as CEL with `self` bound to the (pruned) object.
/// A keyword it does not know fails the test, so the schema cannot grow a rule this proof skips.
mod apiserver {
    use std::collections::HashMap;

    use serde_json::Value;

    const KNOWN: &[&str] = &[
        "type",
        "description",
        "title",
        "format",
        "properties",
        "required",
        "items",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "nullable",
        "enum",
        "default",
        "x-kubernetes-list-type",
        "x-kubernetes-validations",
    ];

    pub fn spec_schema() -> &'static Value {
        static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(|| {
            let crd: Value =
                serde_norway::from_str(&rolebridge_webhook::domain::crd::crd_yaml()).unwrap();
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
        })
    }

    /// Drops what the API server prunes: unknown fields, and `null` where not nullable; then
    /// fills in the schema's `default` of a property that is absent, as the API server does.
    pub fn prune(schema: &Value, v: &Value) -> Value {
        match (v, &schema["properties"], &schema["items"]) {
            (Value::Object(o), Value::Object(props), _) => {
                let mut kept: serde_json::Map<String, Value> = o
                    .iter()
                    .filter(|(k, x)| {
                        props.contains_key(*k)
                            && (!x.is_null() || props[*k]["nullable"] == Value::Bool(true))
                    })
                    .map(|(k, x)| (k.clone(), prune(&props[k], x)))
                    .collect();
                for (k, p) in props {
                    if let Some(d) = p.get("default") {
                        kept.entry(k.clone()).or_insert_with(|| d.clone());
                    }
                }
                Value::Object(kept)
            }
            (Value::Array(a), _, items) if items.is_object() => {
                Value::Array(a.iter().map(|x| prune(items, x)).collect())
            }
            _ => v.clone(),
        }
    }

    fn to_cel(v: &Value) -> cel::Value {
        match v {
            Value::Null => cel::Value::Null,
            Value::Bool(b) => cel::Value::Bool(*b),
            Value::Number(n) => n
                .as_i64()
                .map(cel::Value::Int)
                .unwrap_or_else(|| cel::Value::Float(n.as_f64().unwrap())),
            Value::String(s) => cel::Value::String(s.clone().into()),
            Value::Array(a) => a.iter().map(to_cel).collect::<Vec<_>>().into(),
            Value::Object(o) => o
                .iter()
                .map(|(k, x)| (k.clone(), to_cel(x)))
                .collect::<HashMap<String, cel::Value>>()
                .into(),
        }
    }

    thread_local! {
        // Compiling is the slow part; the rules and patterns are few.
        static PROGRAMS: std::cell::RefCell<HashMap<String, std::rc::Rc<cel::Program>>> = Default::default();
        static PATTERNS: std::cell::RefCell<HashMap<String, regex::Regex>> = Default::default();
    }

    fn matches(pattern: &str, s: &str) -> bool {
        PATTERNS.with_borrow_mut(|m| {
            m.entry(pattern.to_owned())
                .or_insert_with(|| regex::Regex::new(pattern).unwrap())
                .is_match(s)
        })
    }

    fn cel_rule(rule: &str, this: &Value) -> bool {
        let program = PROGRAMS.with_borrow_mut(|m| {
            m.entry(rule.to_owned())
                .or_insert_with(|| {
                    std::rc::Rc::new(
                        cel::Program::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e}")),
                    )
                })
                .clone()
        });
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("self", to_cel(this));
        match program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => b,
            other => panic!("CEL rule {rule:?} on {this}: {other:?}"),
        }
    }

    /// The API server's verdict on an already pruned value: `Err` lists what it rejects.
    pub fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
        let obj = schema.as_object().expect("a schema is an object");
        for key in obj.keys() {
            assert!(
                KNOWN.contains(&key.as_str()),
                "unknown schema keyword {key} at {path}"
            );
        }
        let mut err = |what: String| errors.push(format!("{path}: {what}"));
        let want = schema["type"].as_str().unwrap_or_default();
        let type_ok = match want {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            other => panic!("unknown type {other:?} at {path}"),
        };
        if v.is_null() && schema["nullable"] == Value::Bool(true) {
            return;
        }
        if !type_ok {
            return err(format!("must be of type {want}"));
        }
        let num = |k: &str| schema[k].as_f64();
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(v)
        {
            err(format!("not one of the enum values {}", schema["enum"]));
        }
        if let Some(s) = v.as_str() {
            let n = s.chars().count();
            if num("minLength").is_some_and(|m| (n as f64) < m) {
                err(format!("shorter than minLength {}", schema["minLength"]));
            }
            if num("maxLength").is_some_and(|m| (n as f64) > m) {
                err(format!("longer than maxLength {}", schema["maxLength"]));
            }
            if let Some(p) = schema["pattern"].as_str()
                && !matches(p, s)
            {
                err(format!("does not match {p}"));
            }
        }
        if let Some(i) = v.as_f64().filter(|_| want == "integer") {
            if num("minimum").is_some_and(|m| i < m) {
                err(format!("less than minimum {}", schema["minimum"]));
            }
            if num("maximum").is_some_and(|m| i > m) {
                err(format!("greater than maximum {}", schema["maximum"]));
            }
        }
        if let Some(a) = v.as_array() {
            if num("minItems").is_some_and(|m| (a.len() as f64) < m) {
                err(format!("fewer than minItems {}", schema["minItems"]));
            }
            if num("maxItems").is_some_and(|m| (a.len() as f64) > m) {
                err(format!("more than maxItems {}", schema["maxItems"]));
            }
            if schema["x-kubernetes-list-type"] == "set"
                && a.iter().enumerate().any(|(i, x)| a[..i].contains(x))
            {
                err("duplicate entries in a set".into());
            }
            for (i, x) in a.iter().enumerate() {
                validate(&schema["items"], x, &format!("{path}[{i}]"), errors);
            }
        }
        if let Some(o) = v.as_object() {
            for r in schema["required"].as_array().into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap()) {
                    errors.push(format!("{path}.{}: required", r.as_str().unwrap()));
                }
            }
            for (k, x) in o {
                validate(&schema["properties"][k], x, &format!("{path}.{k}"), errors);
            }
        }
        for rule in schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if !cel_rule(rule["rule"].as_str().unwrap(), v) {
                errors.push(format!("{path}: {}", rule["message"].as_str().unwrap()));
            }
        }
    }

    /// What the API server says about a spec as a user wrote it.
    pub fn verdict(spec: &Value) -> Result<(), Vec<String>> {
        let schema = spec_schema();
        let pruned = prune(schema, spec);
        let mut errors = Vec::new();
        validate(schema, &pruned, "spec", &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// What the webhook says about the same spec (after the API server stored it).
fn webhook_verdict(spec: &serde_json::Value) -> Result<(), String> {
    let stored = apiserver::prune(apiserver::spec_schema(), spec);
    let typed: rolebridge_webhook::domain::crd::AWSRoleBindingSpec =
        serde_json::from_value(stored).map_err(|e| format!("does not deserialise: {e}"))?;
    rolebridge_webhook::domain::crd::validate_spec(&typed).map_err(|e| e.to_string())
}

mod new_fields {
    use rolebridge_webhook::domain::crd::{
        CHAINED_DURATION_MESSAGE, CHAINED_DURATION_RULE, DURATION_SECONDS, EXTERNAL_ID_LENGTH,
        EXTERNAL_ID_PATTERN, MAX_CHAIN, ROLE_ARN_PATTERN, TokenSource, valid_external_id,
    };
    use serde_json::{Value, json};

    use super::{apiserver, webhook_verdict};

    const ID: &str = "arn:aws:iam::111111111111:role/ci-identity";
    const TARGET: &str = "arn:aws:iam::222222222222:role/docs-writer";

    fn spec(extra: Value) -> Value {
        let mut s = json!({"serviceAccountName": "publisher", "roleArn": ID});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    }

    #[test]
    fn schema_uses_the_documented_constants() {
        let schema = apiserver::spec_schema();
        let p = &schema["properties"];
        assert_eq!(p["chain"]["maxItems"], json!(MAX_CHAIN));
        let hop = &p["chain"]["items"]["properties"];
        assert_eq!(hop["roleArn"]["pattern"], json!(ROLE_ARN_PATTERN));
        assert_eq!(hop["externalId"]["pattern"], json!(EXTERNAL_ID_PATTERN));
        assert_eq!(
            hop["externalId"]["minLength"],
            json!(EXTERNAL_ID_LENGTH.start())
        );
        assert_eq!(
            hop["externalId"]["maxLength"],
            json!(EXTERNAL_ID_LENGTH.end())
        );
        assert_eq!(
            p["durationSeconds"]["minimum"].as_f64(),
            Some(*DURATION_SECONDS.start() as f64)
        );
        assert_eq!(
            p["durationSeconds"]["maximum"].as_f64(),
            Some(*DURATION_SECONDS.end() as f64)
        );
        assert_eq!(
            schema["x-kubernetes-validations"],
            json!([{"rule": CHAINED_DURATION_RULE, "message": CHAINED_DURATION_MESSAGE}])
        );
        // Exactly the Rust enum's variants, defaulted to Google, so an object stored without the
        // field and one created today read the same.
        assert_eq!(
            p["tokenSource"]["enum"],
            json!([
                TokenSource::Google.as_str(),
                TokenSource::Kubernetes.as_str()
            ])
        );
        assert_eq!(
            p["tokenSource"]["default"],
            json!(TokenSource::default().as_str())
        );
        // Not nullable: an explicit null is pruned, so the CEL rule never sees one.
        for field in [
            &p["durationSeconds"],
            &p["sessionTags"],
            &hop["externalId"],
            &p["tokenSource"],
        ] {
            assert!(field.get("nullable").is_none(), "{field}");
        }
    }

    /// Accepted and rejected specs, each checked against the API server's rules and the
    /// webhook's, which must agree (and give the reason where it matters).
    #[test]
    fn crd_validation_accepts_and_rejects() {
        let hop = |arn: &str| json!({"roleArn": arn});
        let hops = |n: usize| Value::Array(vec![hop(TARGET); n]);
        let accepted = [
            // The example.
            json!({"chain": [{"roleArn": TARGET, "externalId": "docs-ext-4711"}],
                   "durationSeconds": 900, "sessionTags": true}),
            json!({"chain": hops(MAX_CHAIN)}),
            json!({"chain": hops(1), "durationSeconds": 3600}),
            json!({"durationSeconds": 43200}),
            json!({"durationSeconds": 900}),
            json!({"chain": [], "durationSeconds": 43200}),
            json!({"chain": null, "durationSeconds": null, "sessionTags": null}),
            json!({"chain": [{"roleArn": TARGET, "externalId": null}]}),
            json!({"chain": [{"roleArn": TARGET, "externalId": "a:/b=c,d.e@f+g_h-i"}]}),
            json!({"chain": [{"roleArn": TARGET, "externalId": "x".repeat(1224)}]}),
            json!({"sessionTags": false, "chain": hops(2)}),
            json!({"containers": ["app", "side"], "futureField": 1}),
            json!({"tokenSource": "Kubernetes"}),
            json!({"tokenSource": "Google", "chain": hops(1)}),
            json!({"tokenSource": null}),
        ];
        let rejected: [(Value, &str); 15] = [
            (json!({"chain": hops(MAX_CHAIN + 1)}), "maxItems"),
            (
                json!({"chain": hops(1), "durationSeconds": 3601}),
                CHAINED_DURATION_MESSAGE,
            ),
            (
                json!({"chain": hops(5), "durationSeconds": 43200}),
                CHAINED_DURATION_MESSAGE,
            ),
            (json!({"durationSeconds": 899}), "minimum"),
            (json!({"durationSeconds": 43201}), "maximum"),
            (json!({"durationSeconds": 0}), "minimum"),
            (
                json!({"chain": [hop("arn:aws:iam::1:role/x")]}),
                "does not match",
            ),
            (json!({"chain": [{"externalId": "abc"}]}), "required"),
            (
                json!({"chain": [{"roleArn": TARGET, "externalId": "a"}]}),
                "minLength",
            ),
            (
                json!({"chain": [{"roleArn": TARGET, "externalId": "has space"}]}),
                "does not match",
            ),
            (
                json!({"chain": [{"roleArn": TARGET, "externalId": "x".repeat(1225)}]}),
                "maxLength",
            ),
            (
                json!({"chain": [{"roleArn": TARGET, "externalId": "é-accent"}]}),
                "does not match",
            ),
            (json!({"containers": ["app", "app"]}), "duplicate"),
            (json!({"tokenSource": "Nope"}), "enum"),
            (json!({"tokenSource": "kubernetes"}), "enum"),
        ];
        for extra in accepted {
            let s = spec(extra);
            assert_eq!(
                apiserver::verdict(&s),
                Ok(()),
                "API server should accept {s}"
            );
            assert_eq!(webhook_verdict(&s), Ok(()), "webhook should accept {s}");
        }
        for (extra, why) in rejected {
            let s = spec(extra);
            let errors =
                apiserver::verdict(&s).expect_err(&format!("API server should reject {s}"));
            assert!(
                errors.iter().any(|e| e.contains(why)),
                "{s}: {errors:?} lacks {why:?}"
            );
            assert!(webhook_verdict(&s).is_err(), "webhook should reject {s}");
        }
        // The webhook's message for the cross-field rule is the API server's.
        let chained = spec(json!({"chain": hops(1), "durationSeconds": 7200}));
        assert!(
            webhook_verdict(&chained)
                .unwrap_err()
                .contains(CHAINED_DURATION_MESSAGE)
        );
    }

    /// The harness must reject when the CEL rule does, or the agreement below proves nothing.
    #[test]
    fn the_cel_rule_is_really_evaluated() {
        let s = spec(json!({"chain": [{"roleArn": TARGET}], "durationSeconds": 3601}));
        let errors = apiserver::verdict(&s).unwrap_err();
        assert_eq!(errors, [format!("spec: {CHAINED_DURATION_MESSAGE}")]);
    }

    fn arn() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            12 => Just(TARGET.to_owned()),
            1 => Just("arn:aws:iam::123:role/short-account".to_owned()),
            1 => Just("arn:aws-cn:iam::333333333333:role/path/x".to_owned()),
            1 => Just("arn:aws:iam::444444444444:role/a b".to_owned()),
        ]
    }

    fn external_id() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            3 => Just(Value::Null),
            3 => "[A-Za-z0-9_+=,.@:/-]{2,8}".prop_map(Value::String),
            2 => "[A-Za-z0-9_+=,.@:/ é-]{0,8}".prop_map(Value::String),
            1 => (1200usize..1230).prop_map(|n| Value::String("e".repeat(n))),
        ]
    }

    fn hop() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        (arn(), external_id(), prop::bool::weighted(0.3)).prop_map(|(arn, id, with_id)| {
            let mut h = json!({"roleArn": arn});
            if with_id {
                h["externalId"] = id;
            }
            h
        })
    }

    fn any_spec() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let chain = prop_oneof![
            2 => Just(None),
            1 => Just(Some(Value::Null)),
            5 => prop::collection::vec(hop(), 0..=6).prop_map(|h| Some(Value::Array(h))),
        ];
        let duration = prop_oneof![
            2 => Just(None),
            1 => Just(Some(Value::Null)),
            5 => prop::sample::select(vec![-1i64, 0, 899, 900, 901, 3599, 3600, 3601, 7200, 43200, 43201])
                .prop_map(|d| Some(json!(d))),
        ];
        let tags = prop::option::of(prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool)
        ]);
        let containers = prop::option::weighted(
            0.3,
            prop::collection::vec(
                prop_oneof![
                    6 => prop::sample::select(vec!["app", "side", "w", "a-1"]),
                    1 => prop::sample::select(vec!["App", "x-", "a.b"]),
                ],
                0..4,
            ),
        );
        let sa = prop_oneof![
            12 => Just("publisher".to_owned()),
            1 => prop::sample::select(vec!["a.b-c", "", "Bad", "-x", "x."]).prop_map(str::to_owned),
            1 => Just("y".repeat(253)),
            1 => Just("y".repeat(254)),
        ];
        let audience = prop::option::weighted(
            0.3,
            prop_oneof![
                Just(String::new()),
                "[a-z:/.]{1,12}",
                Just("é".repeat(512)),
                Just("a".repeat(513)),
            ],
        );
        let source = prop::option::weighted(
            0.3,
            prop::sample::select(vec![
                Value::Null,
                json!("Google"),
                json!("Kubernetes"),
                json!("kubernetes"),
                json!(""),
            ]),
        );
        (chain, duration, tags, containers, sa, (audience, source)).prop_map(
            |(chain, duration, tags, containers, sa, (audience, source))| {
                let mut s = json!({"serviceAccountName": sa, "roleArn": ID});
                let o = s.as_object_mut().unwrap();
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        o.insert(k.into(), v);
                    }
                };
                put("chain", chain);
                put("durationSeconds", duration);
                put("sessionTags", tags);
                put("containers", containers.map(|c| json!(c)));
                put("audience", audience.map(Value::String));
                put("tokenSource", source);
                s
            },
        )
    }

    /// The generator must reach acceptance, rejection by the schema and by the CEL rule, or the
    /// agreement below is vacuous.
    #[test]
    fn spec_generator_reaches_every_verdict() {
        use proptest::strategy::{Strategy, ValueTree};
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::from_seed(RngAlgorithm::ChaCha, &[9; 32]),
        );
        let (mut ok, mut cel, mut schema) = (0, 0, 0);
        for _ in 0..400 {
            let s = any_spec().new_tree(&mut runner).unwrap().current();
            match apiserver::verdict(&s) {
                Ok(()) => ok += 1,
                Err(e) if e.iter().any(|e| e.contains(CHAINED_DURATION_MESSAGE)) => cel += 1,
                Err(_) => schema += 1,
            }
        }
        assert!(
            ok >= 40 && cel >= 10 && schema >= 40,
            "accepted {ok}, CEL {cel}, schema {schema}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn external_id_validators_agree(s in "[A-Za-z0-9_+=,.@:/ é\\\\-]{0,6}|[a-z]{1220,1230}") {
            let pattern = regex::Regex::new(EXTERNAL_ID_PATTERN).unwrap();
            let schema = pattern.is_match(&s) && EXTERNAL_ID_LENGTH.contains(&s.chars().count());
            proptest::prop_assert_eq!(schema, valid_external_id(&s), "{:?}", s);
        }

        /// Whatever a user writes, the API server stores it exactly when the webhook trusts it.
        #[test]
        fn api_server_and_webhook_agree_on_every_spec(s in any_spec()) {
            let server = apiserver::verdict(&s);
            let webhook = webhook_verdict(&s);
            proptest::prop_assert_eq!(server.is_ok(), webhook.is_ok(), "{}: server {:?}, webhook {:?}", s, server, webhook);
        }
    }
}

/// Every binding in examples/ is accepted by the API server's rules and by the webhook.
#[test]
fn examples_are_valid_bindings() {
    use serde::Deserialize as _;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc).unwrap();
            if v["kind"] != "AWSRoleBinding" {
                continue;
            }
            seen += 1;
            let shown = path.display();
            assert_eq!(apiserver::verdict(&v["spec"]), Ok(()), "{shown}");
            assert_eq!(webhook_verdict(&v["spec"]), Ok(()), "{shown}");
        }
    }
    assert!(
        seen >= 2,
        "only {seen} example bindings found in {}",
        dir.display()
    );
}
