//! AdmissionReview v1 in and out, around the pure mutation.
//!
//! The review is read with borrowed, partial serde structs: the pod stays a `RawValue` until
//! [`PodView`] picks out the few fields the mutation needs. The response is written as JSON
//! text into one buffer (see [`crate::admission::json`]), the patch base64-encoded straight
//! into it, as the `[]byte` field of the Kubernetes API requires.
//!
//! Nothing here returns an HTTP error for bad input: a body that is not a readable review gets
//! an AdmissionReview whose response is `allowed: false` with a 400 status (an `invalid`
//! response), so the API server reports a clear message instead of "webhook returned 500".

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::admission::json::Json;
use crate::admission::mutate::{
    self, Binding, Config, Denial, Mutation, Outcome, Patch, ServiceAccountState, Skip,
};
use crate::domain::pod::{PodView, Str};
use crate::metrics::AdmissionOutcome;

const V1: &str = "admission.k8s.io/v1";
const V1BETA1: &str = "admission.k8s.io/v1beta1";

/// `O` is what `request.object` is read as: the pod view itself on the fast path (one pass over
/// the body), or a `RawValue` on the fallback path for objects that are not pod-shaped.
#[derive(Deserialize)]
struct ReviewIn<'a, O> {
    #[serde(borrow, rename = "apiVersion")]
    api_version: Option<Str<'a>>,
    #[serde(borrow)]
    kind: Option<Str<'a>>,
    request: Option<RequestIn<'a, O>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a, O> {
    #[serde(borrow)]
    uid: Str<'a>,
    #[serde(borrow, default)]
    resource: Option<ResourceIn<'a>>,
    #[serde(borrow, default)]
    sub_resource: Option<Str<'a>>,
    #[serde(borrow, default)]
    namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    operation: Option<Str<'a>>,
    #[serde(default = "none")]
    object: Option<O>,
    #[serde(default)]
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
struct ResourceIn<'a> {
    #[serde(borrow, default)]
    group: Str<'a>,
    #[serde(borrow, default)]
    resource: Str<'a>,
}

/// A review that asks about a pod being created: the only kind the webhook changes.
pub struct PodReview<'a> {
    api_version: &'static str,
    pub uid: Str<'a>,
    pub namespace: String,
    pub dry_run: bool,
    pub pod: PodView<'a>,
}

/// What [`parse`] found.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and moved once: boxing the large variant would only add \
              an allocation to the hot path"
)]
pub enum Parsed<'a> {
    /// A pod CREATE: look up its bindings, then call [`PodReview::respond`].
    Pod(PodReview<'a>),
    /// Anything else is answered at once (allowed unchanged, or `invalid`); the body is ready.
    Done {
        body: Vec<u8>,
        outcome: AdmissionOutcome,
        /// The request's uid, where the body had one.
        uid: Str<'a>,
        /// Why the review is invalid (`outcome` is `Error`), for the log.
        invalid: Option<String>,
    },
}

/// What the admission of a pod decided, for the metrics and the log.
#[derive(Debug)]
pub enum Decision {
    /// Patched with these operations.
    Applied(Patch),
    /// Allowed unchanged.
    Skipped(Skip),
    /// Denied.
    Denied(Denial),
}

impl Decision {
    /// The metric label.
    pub fn outcome(&self) -> AdmissionOutcome {
        match self {
            Decision::Applied(_) => AdmissionOutcome::Mutated,
            Decision::Skipped(_) => AdmissionOutcome::Skipped,
            Decision::Denied(_) => AdmissionOutcome::Denied,
        }
    }

    /// The decision in a word, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Applied(_) => "applied",
            Decision::Skipped(_) => "skipped",
            Decision::Denied(_) => "denied",
        }
    }
}

/// What a response says (keys written in this order, as serde wrote them).
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    /// The patch's JSON text, base64-encoded into the response.
    patch: Option<&'a [u8]>,
    status: Option<StatusOut<'a>>,
    warnings: &'a [String],
}

struct StatusOut<'a> {
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: &'a str,
}

fn write(api_version: &'static str, response: ResponseOut<'_>) -> Vec<u8> {
    let ResponseOut {
        uid,
        allowed,
        patch,
        status,
        warnings,
    } = response;
    // The envelope and the base64 text are all there is: one allocation, never grown.
    let encoded = patch.map_or(0, |p| p.len().div_ceil(3) * 4);
    let text: usize = warnings.iter().map(|w| w.len() + 3).sum();
    let message = status.as_ref().map_or(0, |s| s.message.len() + 64);
    let mut out = Json::with_capacity(160 + uid.len() + encoded + text + message);
    out.object(|o| {
        o.fixed("apiVersion", api_version)
            .fixed("kind", "AdmissionReview")
            .field("response", |out| {
                out.object(|o| {
                    o.str("uid", uid).bool("allowed", allowed);
                    if let Some(patch) = patch {
                        o.fixed("patchType", "JSONPatch").field("patch", |out| {
                            let buf = out.bytes();
                            buf.push(b'"');
                            base64_simd::STANDARD.encode_append(patch, buf);
                            buf.push(b'"');
                        });
                    }
                    if let Some(s) = status {
                        o.field("status", |out| {
                            out.object(|o| {
                                o.fixed("status", s.status)
                                    .int("code", s.code)
                                    .fixed("reason", s.reason)
                                    .str("message", s.message);
                            });
                        });
                    }
                    if !warnings.is_empty() {
                        o.field("warnings", |out| {
                            out.strings(warnings);
                        });
                    }
                });
            });
    });
    out.into_bytes()
}

fn allowed(api_version: &'static str, uid: &str) -> Vec<u8> {
    write(
        api_version,
        ResponseOut {
            uid,
            allowed: true,
            patch: None,
            status: None,
            warnings: &[],
        },
    )
}

/// The `invalid` response: the request could not be understood.
pub fn invalid(uid: &str, message: &str) -> Vec<u8> {
    write(
        V1,
        ResponseOut {
            uid,
            allowed: false,
            patch: None,
            status: Some(StatusOut {
                status: "Failure",
                code: 400,
                reason: "BadRequest",
                message,
            }),
            warnings: &[],
        },
    )
}

fn none<O>() -> Option<O> {
    None
}

/// Reads a review body. Never fails: unreadable input yields a ready `invalid` body.
pub fn parse(body: &[u8]) -> Parsed<'_> {
    // Fast path: the pod view is read in the same pass as the review. JSON is UTF-8: checked
    // once over the whole body (SIMD, a fraction of an instruction per byte), the strings
    // serde_json reads then need no check of their own (one call each, most of them short
    // keys). A body that is not UTF-8 is read as bytes, as it always was: only the strings the
    // view reads are checked, so bytes in a skipped field do not make the review invalid.
    let fast = match simdutf8::basic::from_utf8(body) {
        Ok(text) => serde_json::from_str::<ReviewIn<'_, PodView<'_>>>(text),
        Err(_) => serde_json::from_slice::<ReviewIn<'_, PodView<'_>>>(body),
    };
    if let Ok(review) = fast {
        return finish(review, Ok);
    }
    // Anything else (not JSON, not a review, an object that is not pod-shaped) takes the
    // slower path, which tells those cases apart and reports them precisely.
    match serde_json::from_slice::<ReviewIn<'_, &RawValue>>(body) {
        Ok(review) => finish(review, |raw| PodView::from_json(raw.get())),
        Err(e) => error(
            Str::default(),
            format!("request body is not an AdmissionReview: {e}"),
        ),
    }
}

fn error(uid: Str<'_>, message: String) -> Parsed<'_> {
    let message = format!("rolebridge: {message}");
    Parsed::Done {
        body: invalid(uid.as_str(), &message),
        outcome: AdmissionOutcome::Error,
        uid,
        invalid: Some(message),
    }
}

fn finish<'a, O>(
    review: ReviewIn<'a, O>,
    to_pod: impl FnOnce(O) -> Result<PodView<'a>, serde_json::Error>,
) -> Parsed<'a> {
    let api_version = match review.api_version.as_ref().map(Str::as_str) {
        Some(V1) => V1,
        Some(V1BETA1) => V1BETA1,
        other => {
            return error(
                Str::default(),
                format!("unsupported AdmissionReview apiVersion {other:?}; want {V1:?}"),
            );
        }
    };
    if review.kind.as_ref().map(Str::as_str) != Some("AdmissionReview") {
        return error(Str::default(), "body kind is not AdmissionReview".into());
    }
    let Some(req) = review.request else {
        return error(Str::default(), "AdmissionReview has no request".into());
    };
    let is_pod = req
        .resource
        .as_ref()
        .is_some_and(|r| r.group.as_str().is_empty() && r.resource.as_str() == "pods");
    let is_create = req.operation.as_ref().map(Str::as_str) == Some("CREATE");
    let sub = req
        .sub_resource
        .as_ref()
        .is_some_and(|s| !s.as_str().is_empty());
    if !is_pod || !is_create || sub {
        return Parsed::Done {
            body: allowed(api_version, req.uid.as_str()),
            outcome: AdmissionOutcome::Skipped,
            uid: req.uid,
            invalid: None,
        };
    }
    let Some(object) = req.object else {
        return error(req.uid, "pod CREATE review carries no object".into());
    };
    let pod = match to_pod(object) {
        Ok(p) => p,
        Err(e) => return error(req.uid, format!("pod object does not parse: {e}")),
    };
    let namespace = req
        .namespace
        .as_ref()
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .or(pod.metadata.namespace.as_ref().map(Str::as_str))
        .unwrap_or("default")
        .to_owned();
    Parsed::Pod(PodReview {
        api_version,
        uid: req.uid,
        namespace,
        dry_run: req.dry_run.unwrap_or(false),
        pod,
    })
}

impl PodReview<'_> {
    pub fn service_account(&self) -> &str {
        self.pod.service_account()
    }

    /// The pod's name, else its `generateName` (most pods have only that at admission).
    pub fn pod_name(&self) -> &str {
        let meta = &self.pod.metadata;
        meta.name
            .as_ref()
            .or(meta.generate_name.as_ref())
            .map_or("", Str::as_str)
    }

    /// Runs the mutation and writes the response body. `account` is what is known of the pod's
    /// service account (see [`mutate::mutate`]).
    pub fn respond(
        &self,
        bindings: &[Binding],
        account: &ServiceAccountState,
        cfg: &Config,
    ) -> (Vec<u8>, Decision) {
        let uid = self.uid.as_str();
        match mutate::mutate(&self.pod, &self.namespace, bindings, account, cfg) {
            Ok(Mutation {
                outcome,
                patch,
                warnings,
            }) => {
                let mutated = outcome == Outcome::Mutated;
                let body = write(
                    self.api_version,
                    ResponseOut {
                        uid,
                        allowed: true,
                        patch: mutated.then(|| patch.as_bytes()),
                        status: None,
                        warnings: &warnings,
                    },
                );
                let decision = match outcome {
                    Outcome::Mutated => Decision::Applied(patch),
                    Outcome::Skipped(why) => Decision::Skipped(why),
                };
                (body, decision)
            }
            Err(denial) => {
                let body = write(
                    self.api_version,
                    ResponseOut {
                        uid,
                        allowed: false,
                        patch: None,
                        status: Some(StatusOut {
                            status: "Failure",
                            code: 403,
                            reason: "Forbidden",
                            message: &denial.message,
                        }),
                        warnings: &[],
                    },
                );
                (body, Decision::Denied(denial))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn done(p: Parsed<'_>) -> (Value, AdmissionOutcome) {
        match p {
            Parsed::Done { body, outcome, .. } => (serde_json::from_slice(&body).unwrap(), outcome),
            Parsed::Pod(_) => panic!("expected a finished response"),
        }
    }

    #[test]
    fn garbage_is_invalid_not_an_error() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            br#"{"kind":"AdmissionReview"}"#,
        ] {
            let (v, o) = done(parse(body));
            assert_eq!(o, AdmissionOutcome::Error);
            assert_eq!(v["response"]["allowed"], false);
            assert_eq!(v["response"]["status"]["code"], 400);
            assert_eq!(v["kind"], "AdmissionReview");
        }
    }

    #[test]
    fn non_pod_create_is_allowed_unchanged() {
        let review = |op: &str, resource: &str, sub: &str| {
            json!({"apiVersion": V1, "kind": "AdmissionReview", "request": {
                "uid": "u1", "operation": op, "subResource": sub,
                "resource": {"group": "", "version": "v1", "resource": resource},
                "object": {"spec": {}}}})
            .to_string()
        };
        for body in [
            review("UPDATE", "pods", ""),
            review("CREATE", "configmaps", ""),
            review("CREATE", "pods", "binding"),
        ] {
            let (v, o) = done(parse(body.as_bytes()));
            assert_eq!(o, AdmissionOutcome::Skipped);
            assert_eq!(v["response"], json!({"uid": "u1", "allowed": true}));
        }
    }

    #[test]
    fn non_pod_objects_that_are_not_pod_shaped_are_still_allowed() {
        let body = json!({"apiVersion": V1, "kind": "AdmissionReview", "request": {
            "uid": "u3", "operation": "CREATE",
            "resource": {"group": "example.com", "version": "v1", "resource": "widgets"},
            "object": {"metadata": {"annotations": ["not", "a", "map"]}, "spec": {"containers": 7}}}})
        .to_string();
        let (v, o) = done(parse(body.as_bytes()));
        assert_eq!(o, AdmissionOutcome::Skipped);
        assert_eq!(v["response"], json!({"uid": "u3", "allowed": true}));
    }

    #[test]
    fn unparseable_pod_keeps_uid() {
        let body = json!({"apiVersion": V1, "kind": "AdmissionReview", "request": {
            "uid": "u2", "operation": "CREATE",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": {"spec": {"containers": "nope"}}}})
        .to_string();
        let (v, o) = done(parse(body.as_bytes()));
        assert_eq!(o, AdmissionOutcome::Error);
        assert_eq!(v["response"]["uid"], "u2");
        assert_eq!(v["response"]["allowed"], false);
    }
}
