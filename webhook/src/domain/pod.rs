//! A read-only, borrowed view of the few pod fields the mutation looks at.
//!
//! The pod is never deserialised into `k8s_openapi::api::core::v1::Pod`: that would cost a
//! full parse and allocation of every field (managedFields alone are kilobytes), and anything
//! newer than our k8s-openapi could be lost if it were ever re-serialised. Instead serde reads
//! just these fields, borrowing strings from the request body where JSON escaping allows, and
//! skips everything else. The patch is then built as targeted `add` operations against the raw
//! document, so fields this view does not know survive untouched.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The prefix of every annotation rolebridge reads or writes.
pub(crate) const ANNOTATION_PREFIX: &str = "rolebridge.io/";

/// A string borrowed from the input where possible (serde only borrows `Cow` directly inside
/// a field marked `borrow`, not inside collections, hence this wrapper).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The parts of a Pod the mutation needs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodView<'a> {
    #[serde(borrow)]
    pub metadata: MetaView<'a>,
    #[serde(borrow)]
    pub spec: SpecView<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MetaView<'a> {
    /// The object has a `metadata` map (false only when the key is missing): a patch must then
    /// add the whole map rather than a member of it.
    #[serde(skip_deserializing, default = "present")]
    pub present: bool,
    #[serde(borrow)]
    pub name: Option<Str<'a>>,
    #[serde(borrow)]
    pub generate_name: Option<Str<'a>>,
    #[serde(borrow)]
    pub namespace: Option<Str<'a>>,
    /// `None` when the pod has no (or a null) annotations map: the patch must then add the
    /// whole map rather than a member of it.
    #[serde(borrow)]
    pub annotations: Option<Annotations<'a>>,
    #[serde(borrow)]
    pub owner_references: Option<Vec<OwnerRefView<'a>>>,
}

fn present() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OwnerRefView<'a> {
    #[serde(borrow)]
    pub kind: Str<'a>,
}

/// Which entries of a map of strings a view keeps; the others are skipped unparsed.
pub trait Keep {
    /// What the map is, for serde's errors.
    const WHAT: &'static str;
    fn keep(key: &str) -> bool;
}

/// The entries of a map of strings that `K` keeps, borrowed where JSON escaping allows.
pub struct Kept<'a, K> {
    pub entries: Vec<(Str<'a>, Str<'a>)>,
    keep: PhantomData<K>,
}

impl<K> Default for Kept<'_, K> {
    fn default() -> Self {
        Kept {
            entries: Vec::new(),
            keep: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Kept<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K> Kept<'_, K> {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.as_str())
    }
}

impl<'de: 'a, 'a, K: Keep> Deserialize<'de> for Kept<'a, K> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K>(PhantomData<K>);
        impl<'de, K: Keep> Visitor<'de> for V<K> {
            type Value = Kept<'de, K>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(K::WHAT)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    if K::keep(key.as_str()) {
                        entries.push((key, map.next_value::<Str<'de>>()?));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Kept {
                    entries,
                    keep: PhantomData,
                })
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The `rolebridge.io/` annotations.
pub struct Ours;

impl Keep for Ours {
    const WHAT: &'static str = "a map of annotations";
    fn keep(key: &str) -> bool {
        key.starts_with(ANNOTATION_PREFIX)
    }
}

/// Only the `rolebridge.io/` annotations, which is all the mutation reads; the rest (often
/// large, like `kubectl.kubernetes.io/last-applied-configuration`) is skipped unparsed.
pub type Annotations<'a> = Kept<'a, Ours>;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SpecView<'a> {
    #[serde(borrow)]
    pub service_account_name: Option<Str<'a>>,
    /// Deprecated alias of `serviceAccountName`, still honoured by the API server.
    #[serde(borrow)]
    pub service_account: Option<Str<'a>>,
    #[serde(borrow)]
    pub containers: Option<Vec<ContainerView<'a>>>,
    #[serde(borrow)]
    pub init_containers: Option<Vec<ContainerView<'a>>>,
    #[serde(borrow)]
    pub volumes: Option<Vec<NamedView<'a>>>,
    #[serde(borrow)]
    pub os: Option<OsView<'a>>,
    pub host_network: Option<bool>,
    /// Only its `kubernetes.io/os` entry (the rest is skipped unparsed).
    #[serde(borrow)]
    pub node_selector: Option<NodeSelectorView<'a>>,
    /// Kept as raw text, borrowed: read ([`PodView::is_windows`]) only for a pod with bindings.
    #[serde(borrow)]
    pub affinity: Option<&'a RawValue>,
}

/// The label nodes carry with their operating system.
pub(crate) const OS_LABEL: &str = "kubernetes.io/os";

/// The [`OS_LABEL`] entry of a node selector.
pub struct OsLabel;

impl Keep for OsLabel {
    const WHAT: &'static str = "a node selector map";
    fn keep(key: &str) -> bool {
        key == OS_LABEL
    }
}

/// `spec.nodeSelector`, reduced to the [`OS_LABEL`] entry.
pub type NodeSelectorView<'a> = Kept<'a, OsLabel>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OsView<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NamedView<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    /// A projected volume's definition as raw text, borrowed: rolebridge reads its own only.
    #[serde(borrow)]
    pub projected: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerView<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    /// Raw text, borrowed: only an agent already in the pod has its arguments read
    /// ([`ContainerView::args`]); an app's are skipped unparsed.
    #[serde(borrow)]
    pub args: Option<&'a RawValue>,
    #[serde(borrow)]
    pub env: Option<Vec<EnvView<'a>>>,
    #[serde(borrow)]
    pub volume_mounts: Option<Vec<MountView<'a>>>,
    #[serde(borrow)]
    pub ports: Option<Vec<PortView<'a>>>,
    /// `Always` on an init container makes it a native sidecar.
    #[serde(borrow)]
    pub restart_policy: Option<Str<'a>>,
    /// Raw text, borrowed: read for the mesh proxy and rolebridge's own agent only.
    #[serde(borrow)]
    pub security_context: Option<&'a RawValue>,
}

/// A declared container port (`ports[]`): the API server has decoded the pod before any webhook
/// sees it, so these are well-typed.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PortView<'a> {
    pub container_port: Option<i64>,
    #[serde(borrow)]
    pub protocol: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct EnvView<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub value: Option<Str<'a>>,
    pub value_from: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MountView<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub mount_path: Str<'a>,
}

impl<'a> PodView<'a> {
    /// Reads the view from a pod's raw JSON.
    pub fn from_json(json: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The service account the pod runs as; the API server's ServiceAccount admission plugin
    /// has normally filled it in before webhooks run, but an empty one means `default`.
    pub fn service_account(&self) -> &str {
        [&self.spec.service_account_name, &self.spec.service_account]
            .into_iter()
            .flatten()
            .map(Str::as_str)
            .find(|s| !s.is_empty())
            .unwrap_or("default")
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(key)
    }
}

/// What the operating system checks read of `spec.affinity`: the required node affinity's
/// terms and their match expressions.
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct AffinityView<'a> {
    #[serde(borrow)]
    node_affinity: Option<NodeAffinityView<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct NodeAffinityView<'a> {
    #[serde(borrow)]
    required_during_scheduling_ignored_during_execution: Option<TermsView<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct TermsView<'a> {
    #[serde(borrow)]
    node_selector_terms: Option<Vec<TermView<'a>>>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct TermView<'a> {
    #[serde(borrow)]
    match_expressions: Option<Vec<ExpressionView<'a>>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct ExpressionView<'a> {
    #[serde(borrow)]
    key: Str<'a>,
    #[serde(borrow)]
    operator: Str<'a>,
    #[serde(borrow)]
    values: Option<Vec<Str<'a>>>,
}

impl TermView<'_> {
    /// The term only matches Windows nodes: one of its expressions is `kubernetes.io/os In`
    /// with Windows as its only value.
    fn windows_only(&self) -> bool {
        self.match_expressions.iter().flatten().any(|e| {
            e.key.as_str() == OS_LABEL
                && e.operator.as_str() == "In"
                && e.values
                    .as_deref()
                    .is_some_and(|v| !v.is_empty() && v.iter().all(|x| x.as_str() == WINDOWS))
        })
    }
}

const WINDOWS: &str = "windows";

impl PodView<'_> {
    /// The pod can only run on Windows nodes: `spec.os.name`, a `kubernetes.io/os` node
    /// selector, or a required node affinity whose every term asks for Windows only.
    pub fn is_windows(&self) -> bool {
        let spec = &self.spec;
        if spec
            .os
            .as_ref()
            .is_some_and(|os| os.name.as_str() == WINDOWS)
            || spec
                .node_selector
                .as_ref()
                .and_then(|n| n.get(OS_LABEL))
                .is_some_and(|os| os == WINDOWS)
        {
            return true;
        }
        let Some(raw) = spec.affinity else {
            return false;
        };
        // Most pods with an affinity (zones, pod anti-affinity) do not mention the OS label, and
        // one that could would have it in the text as it is, or escaped: such text is read, any
        // other is not Windows-only, and reading it is skipped.
        let text = raw.get().as_bytes();
        if memchr::memmem::find(text, OS_LABEL.as_bytes()).is_none()
            && memchr::memchr(b'\\', text).is_none()
        {
            return false;
        }
        // The API server has validated it; anything unreadable is not a Windows requirement.
        let Ok(affinity) = serde_json::from_str::<AffinityView<'_>>(raw.get()) else {
            return false;
        };
        let terms = affinity
            .node_affinity
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .and_then(|r| r.node_selector_terms)
            .unwrap_or_default();
        !terms.is_empty() && terms.iter().all(TermView::windows_only)
    }
}

impl<'a> ContainerView<'a> {
    /// The container declares `port` for TCP (the protocol when none is given).
    pub(crate) fn declares_tcp_port(&self, port: u16) -> bool {
        self.ports.as_deref().unwrap_or_default().iter().any(|p| {
            p.container_port == Some(i64::from(port))
                && p.protocol.as_ref().is_none_or(|x| x.as_str() == "TCP")
        })
    }

    /// The container's arguments. The API server has validated them: text that is not a list
    /// of strings reads as none.
    pub(crate) fn args(&self) -> Vec<Str<'a>> {
        self.args
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default()
    }

    pub(crate) fn env_var(&self, name: &str) -> Option<&EnvView<'_>> {
        self.env
            .as_deref()?
            .iter()
            .find(|e| e.name.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_plain_strings_and_unescapes_others() {
        let json = r#"{"metadata":{"name":"a\u0062c","annotations":{"x/y":{"nested":1},"rolebridge.io/role":"r"}},
            "spec":{"containers":[{"name":"app","env":[{"name":"A","valueFrom":{"fieldRef":{}}}]}],"futureField":[1,2]}}"#;
        let pod = PodView::from_json(json).unwrap();
        assert_eq!(pod.metadata.name.as_ref().unwrap().as_str(), "abc");
        assert!(matches!(
            pod.metadata.name.as_ref().unwrap().0,
            Cow::Owned(_)
        ));
        let c = &pod.spec.containers.as_ref().unwrap()[0];
        assert!(matches!(c.name.0, Cow::Borrowed(_)));
        assert!(c.env_var("A").unwrap().value_from.is_some());
        assert_eq!(pod.annotation("rolebridge.io/role"), Some("r"));
        assert_eq!(pod.service_account(), "default");
    }

    #[test]
    fn nulls_read_as_absent() {
        let pod = PodView::from_json(
            r#"{"metadata":{"annotations":null},"spec":{"initContainers":null,"volumes":null,"serviceAccountName":""}}"#,
        )
        .unwrap();
        assert!(pod.metadata.annotations.is_none());
        assert!(pod.spec.init_containers.is_none());
        assert!(pod.spec.volumes.is_none());
    }

    #[test]
    fn a_missing_metadata_map_is_told_from_an_empty_one() {
        assert!(
            !PodView::from_json(r#"{"spec":{}}"#)
                .unwrap()
                .metadata
                .present
        );
        assert!(
            PodView::from_json(r#"{"metadata":{}}"#)
                .unwrap()
                .metadata
                .present
        );
        let pod = PodView::from_json(r#"{"metadata":{"name":"p"}}"#).unwrap();
        assert!(pod.metadata.present && pod.metadata.annotations.is_none());
    }

    #[test]
    fn windows_by_os_name_node_selector_or_required_affinity() {
        let windows = |spec: &str| {
            let json = format!(r#"{{"spec":{spec}}}"#);
            PodView::from_json(&json).unwrap().is_windows()
        };
        let term = |values: &str| {
            format!(
                r#"{{"matchExpressions":[{{"key":"kubernetes.io/os","operator":"In","values":{values}}}]}}"#
            )
        };
        let required = |terms: &[String]| {
            format!(
                r#"{{"affinity":{{"nodeAffinity":{{"requiredDuringSchedulingIgnoredDuringExecution":{{"nodeSelectorTerms":[{}]}}}}}}}}"#,
                terms.join(",")
            )
        };
        assert!(windows(r#"{"os":{"name":"windows"}}"#));
        assert!(windows(
            r#"{"nodeSelector":{"pool":"a","kubernetes.io/os":"windows"}}"#
        ));
        assert!(!windows(r#"{"nodeSelector":{"kubernetes.io/os":"linux"}}"#));
        assert!(windows(&required(&[term(r#"["windows"]"#)])));
        assert!(windows(&required(&[
            term(r#"["windows"]"#),
            term(r#"["windows"]"#)
        ])));
        // Another term could pick a Linux node, or the values allow Linux: not Windows-only.
        assert!(!windows(&required(&[
            term(r#"["windows"]"#),
            term(r#"["linux"]"#)
        ])));
        assert!(!windows(&required(&[term(r#"["windows","linux"]"#)])));
        assert!(!windows(&required(&[term("[]")])));
        assert!(!windows(&required(&[])));
        let preferred = r#"{"affinity":{"nodeAffinity":{"preferredDuringSchedulingIgnoredDuringExecution":[{"weight":1,"preference":{"matchExpressions":[{"key":"kubernetes.io/os","operator":"In","values":["windows"]}]}}]}}}"#;
        assert!(!windows(preferred));
        assert!(!windows(r#"{"affinity":{"podAffinity":{}}}"#));
        assert!(!windows("{}"));
    }

    #[test]
    fn deprecated_service_account_field() {
        let pod = PodView::from_json(r#"{"spec":{"serviceAccount":"legacy"}}"#).unwrap();
        assert_eq!(pod.service_account(), "legacy");
    }
}
