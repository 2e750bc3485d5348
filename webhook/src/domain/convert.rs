//! An `AWSRoleBinding` becomes a [`Binding`]: from a typed object, from JSON as a watch or a
//! live read delivers it, or from the YAML of a bindings file. Every path validates the spec
//! ([`validate_spec`]), so a binding the webhook does not trust never reaches a pod.
//!
//! Looking bindings up is the store's job ([`crate::bindings::store::Store::bindings_for`]).

use crate::domain::binding::{Binding, Hop};
use crate::domain::crd::{AWSRoleBinding, AWSRoleBindingSpec, SpecError, validate_spec};
use crate::domain::status::GSA_ANNOTATION;

/// Why an object could not be turned into a [`Binding`].
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("AWSRoleBinding {namespace}/{name}: {source}")]
    Spec {
        namespace: String,
        name: String,
        #[source]
        source: SpecError,
    },
    #[error("AWSRoleBinding {namespace}/{name}: spec does not parse: {source}")]
    Malformed {
        namespace: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("AWSRoleBinding without a name or namespace")]
    Unnamed,
    #[error("YAML document {document}: {message}")]
    Yaml { document: usize, message: String },
}

/// The objects of `kind` in a multi-document YAML stream (those inside a `List` included), as
/// JSON, each with the number of its document.
fn objects_of_kind(
    text: &str,
    kind: &str,
) -> Result<Vec<(usize, serde_json::Value)>, BindingError> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| BindingError::Yaml {
            document: i + 1,
            message: e.to_string(),
        })?;
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some("List") => value["items"].as_array().cloned().unwrap_or_default(),
            Some(k) if k == kind => vec![value],
            _ => continue,
        };
        out.extend(
            items
                .into_iter()
                .filter(|item| item.get("kind").and_then(|k| k.as_str()) == Some(kind))
                .map(|item| (i + 1, item)),
        );
    }
    Ok(out)
}

/// Reads the `AWSRoleBinding`s of a multi-document YAML file (as given to `kubectl apply -f`);
/// other kinds are skipped so a whole manifest directory can serve as the bindings file.
/// Objects without a namespace land in `default_namespace`, as kubectl would put them.
pub fn bindings_from_yaml(
    text: &str,
    default_namespace: &str,
) -> Result<Vec<(String, Binding)>, BindingError> {
    let mut out = Vec::new();
    for (document, item) in objects_of_kind(text, "AWSRoleBinding")? {
        let mut obj: AWSRoleBinding =
            serde_json::from_value(item).map_err(|e| BindingError::Yaml {
                document,
                message: e.to_string(),
            })?;
        obj.metadata
            .namespace
            .get_or_insert_with(|| default_namespace.to_owned());
        out.push(binding_from_resource(&obj)?);
    }
    Ok(out)
}

/// A `ServiceAccount` of a manifest: where it is and the Google service account its
/// `iam.gke.io/gcp-service-account` annotation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDoc {
    pub namespace: String,
    pub name: String,
    pub google_service_account: Option<String>,
}

/// Reads the `ServiceAccount`s of a multi-document YAML file, as [`bindings_from_yaml`] reads
/// bindings: what `inject` and `serve --bindings-file` pin Google-source pods to.
pub fn service_accounts_from_yaml(
    text: &str,
    default_namespace: &str,
) -> Result<Vec<AccountDoc>, BindingError> {
    let mut out = Vec::new();
    for (document, item) in objects_of_kind(text, "ServiceAccount")? {
        let meta = &item["metadata"];
        let Some(name) = meta["name"].as_str() else {
            return Err(BindingError::Yaml {
                document,
                message: "a ServiceAccount without metadata.name".into(),
            });
        };
        out.push(AccountDoc {
            namespace: meta["namespace"]
                .as_str()
                .unwrap_or(default_namespace)
                .to_owned(),
            name: name.to_owned(),
            google_service_account: meta["annotations"][GSA_ANNOTATION]
                .as_str()
                .map(str::to_owned),
        });
    }
    Ok(out)
}

/// Converts a validated spec; `namespace` and `name` come from the object's metadata.
pub(crate) fn binding_from_spec(
    namespace: &str,
    name: &str,
    spec: &AWSRoleBindingSpec,
) -> Result<Binding, BindingError> {
    validate_spec(spec).map_err(|source| BindingError::Spec {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    Ok(Binding {
        name: name.to_owned(),
        service_account: spec.service_account_name.clone(),
        role_arn: spec.role_arn.clone(),
        audience: spec.audience.clone(),
        region: spec.region.clone(),
        containers: spec
            .containers
            .as_ref()
            .map(|cs| cs.iter().map(|c| c.0.clone()).collect()),
        chain: spec
            .chain
            .iter()
            .map(|h| Hop {
                role_arn: h.role_arn.clone(),
                external_id: h.external_id.clone(),
            })
            .collect(),
        duration_seconds: spec
            .duration_seconds
            .map(|d| u32::try_from(d).expect("validate_spec bounds durationSeconds")),
        // The CRD's default: tags are on when there are AssumeRole hops to carry them.
        session_tags: spec.session_tags.unwrap_or(!spec.chain.is_empty()),
        // The CRD's default: an object stored before the field existed reads as Google.
        token_source: spec.token_source.unwrap_or_default(),
    })
}

/// Converts a typed object (from a file or the API) into its namespace and binding.
pub fn binding_from_resource(obj: &AWSRoleBinding) -> Result<(String, Binding), BindingError> {
    let (Some(ns), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name) else {
        return Err(BindingError::Unnamed);
    };
    Ok((ns.clone(), binding_from_spec(ns, name, &obj.spec)?))
}

/// Converts an untyped object field by field, so that one object with a malformed spec is
/// reported on its own instead of failing a whole list or watch.
pub(crate) fn binding_from_json(
    namespace: &str,
    name: &str,
    spec: &serde_json::Value,
) -> Result<Binding, BindingError> {
    let spec: AWSRoleBindingSpec =
        serde_json::from_value(spec.clone()).map_err(|source| BindingError::Malformed {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?;
    binding_from_spec(namespace, name, &spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_files() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n\
            apiVersion: rolebridge.io/v1alpha1\nkind: AWSRoleBinding\nmetadata: {name: b}\n\
            spec: {serviceAccountName: app, roleArn: 'arn:aws:iam::123456789012:role/r'}\n";
        let got = bindings_from_yaml(text, "team").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "team");
        assert_eq!(got[0].1.service_account, "app");
        let bad = "kind: AWSRoleBinding\nmetadata: {name: b}\nspec: {serviceAccountName: app, roleArn: nope}\n";
        assert!(matches!(
            bindings_from_yaml(bad, "d"),
            Err(BindingError::Spec { .. })
        ));
        assert!(matches!(
            bindings_from_yaml("kind: [", "d"),
            Err(BindingError::Yaml { .. })
        ));
    }

    #[test]
    fn service_accounts_from_files() {
        let text = "kind: ServiceAccount\nmetadata: {name: a, annotations: {iam.gke.io/gcp-service-account: a@p.iam.gserviceaccount.com}}\n---\n\
            kind: List\nitems: [{kind: ServiceAccount, metadata: {name: b, namespace: other}}, {kind: ConfigMap}]\n---\n\
            kind: AWSRoleBinding\nmetadata: {name: x}\nspec: {serviceAccountName: a, roleArn: 'arn:aws:iam::123456789012:role/r'}\n";
        let got = service_accounts_from_yaml(text, "team").unwrap();
        assert_eq!(
            got,
            [
                AccountDoc {
                    namespace: "team".into(),
                    name: "a".into(),
                    google_service_account: Some("a@p.iam.gserviceaccount.com".into()),
                },
                AccountDoc {
                    namespace: "other".into(),
                    name: "b".into(),
                    google_service_account: None,
                },
            ]
        );
        assert_eq!(bindings_from_yaml(text, "team").unwrap().len(), 1);
        assert!(service_accounts_from_yaml("kind: ServiceAccount\nmetadata: {}\n", "d").is_err());
    }

    /// The binding `b` of a minimal spec plus `extra`.
    fn with(extra: serde_json::Value) -> Result<Binding, BindingError> {
        let mut s = serde_json::json!({"serviceAccountName": "sa",
            "roleArn": "arn:aws:iam::111111111111:role/id"});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        binding_from_json("ns", "b", &s)
    }

    #[test]
    fn chain_duration_and_the_session_tags_default() {
        let spec = |extra: serde_json::Value| with(extra).unwrap();
        let hop = serde_json::json!([{"roleArn": "arn:aws:iam::222222222222:role/t", "externalId": "ext-1"}]);
        let chained = spec(serde_json::json!({"chain": hop, "durationSeconds": 900}));
        assert_eq!(
            chained.chain,
            [Hop {
                role_arn: "arn:aws:iam::222222222222:role/t".into(),
                external_id: Some("ext-1".into())
            }]
        );
        assert_eq!(chained.duration_seconds, Some(900));
        assert!(chained.session_tags, "on by default with a chain");
        let untagged = spec(serde_json::json!({"chain": hop, "sessionTags": false}));
        assert!(!untagged.session_tags);
        let timed = spec(serde_json::json!({"durationSeconds": 43200}));
        assert!(timed.chain.is_empty() && !timed.session_tags);
        let err = binding_from_json(
            "ns",
            "b",
            &serde_json::json!({"serviceAccountName": "sa", "roleArn": "arn:aws:iam::111111111111:role/id",
                "chain": hop, "durationSeconds": 7200}),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("at most 3600 when chain is set"),
            "{err}"
        );
    }

    #[test]
    fn token_source_defaults_to_google_and_an_unknown_one_is_malformed() {
        use crate::domain::binding::TokenSource;
        let spec = with;
        let absent = spec(serde_json::json!({})).unwrap();
        assert_eq!(absent.token_source, TokenSource::Google);
        let k8s = spec(serde_json::json!({"tokenSource": "Kubernetes"})).unwrap();
        assert_eq!(k8s.token_source, TokenSource::Kubernetes);
        // A cluster whose CRD does not validate could hold anything: never trusted.
        assert!(matches!(
            spec(serde_json::json!({"tokenSource": "Nope"})),
            Err(BindingError::Malformed { .. })
        ));
    }

    #[test]
    fn malformed_json_spec_is_its_own_error() {
        let err = binding_from_json("ns", "bad", &serde_json::json!({"roleArn": 5})).unwrap_err();
        assert!(matches!(err, BindingError::Malformed { .. }), "{err}");
        let err = binding_from_json(
            "ns",
            "bad",
            &serde_json::json!({"serviceAccountName": "sa", "roleArn": "arn:aws:iam::1:role/x"}),
        )
        .unwrap_err();
        assert!(matches!(err, BindingError::Spec { .. }), "{err}");
    }
}
