#!/usr/bin/env python3
"""Render the rolebridge chart for every values file in tests/values and check the result.

Called by scripts/chart-check.sh (which installs helm and this script's Python packages). For each
tests/values/<case>.yaml it:

1. renders the chart twice with `helm template`; lines that differ between the two renders
   (generated certificates) are masked, and only the keys known to be random may differ;
2. compares the masked render with tests/rendered/<case>.yaml (or rewrites it with --update);
3. validates every manifest against the Kubernetes JSON schemas (kubernetes-validate, strict:
   unknown fields are errors) of the oldest supported and the newest Kubernetes release; kinds
   without an upstream schema (cert-manager, Prometheus Operator, Google Managed Prometheus) get
   a structural check of their own, and any other kind without a schema is an error;
4. checks what golden files cannot: admission partition of the webhooks, excluded namespaces,
   RBAC exactly as the webhook needs it (for the configuration rendered), restricted security
   context, certificate chain, nothing GKE Autopilot refuses;
5. starts the webhook binary with every rendered environment.

The webhook's flags, their defaults and the API access it needs are what the binary says of
itself (`rolebridge-webhook flags --json`, `rolebridge-webhook rbac --json`), never a scrape of
its sources: ROLEBRIDGE_WEBHOOK_BIN names the binary, else this builds one with cargo (and fails
if it cannot).

It also proves that the validator rejects broken manifests, and validates the AWSRoleBinding
example in NOTES.txt against the chart's CRD. Prints "N passed, M failed" at the end.
"""

from __future__ import annotations

import argparse
import base64
import copy
import difflib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

HERE = Path(__file__).resolve().parent
CHART = HERE.parent
RELEASE = "rolebridge"
NAMESPACE = "rolebridge-system"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version() + ".0"]
# Keys whose values are generated at render time (certs.mode=auto); nothing else may change.
RANDOM_KEYS = {"ca.crt", "tls.crt", "tls.key", "caBundle"}
MASK = "<generated at install; masked by tests/check_chart.py>"

# The chart may grant the webhook's service account these verbs beyond what its calls need
# (`rolebridge-webhook rbac --json`): `get` of bindings and their status, for single reads
# (templates/rbac.yaml). Nothing else.
CHART_EXTRA_VERBS = {
    ("rolebridge.io", "awsrolebindings"): {"get"},
    ("rolebridge.io", "awsrolebindings/status"): {"get"},
}

# The one non-resource URL the chart grants: the OIDC discovery document, which the webhook reads
# when `config.issuer` is empty (Kubernetes' default system:service-account-issuer-discovery
# binding allows it too, unless a hardened cluster removed it).
ISSUER_DISCOVERY = {"nonResourceURLs": ["/.well-known/openid-configuration"], "verbs": ["get"]}

# When the webhook makes the calls of an `onlyWith` rule (`rolebridge-webhook rbac --json`), from
# the rendered environment. A condition not listed here fails the check: add it.
ONLY_WITH = {
    "--sidecar-mode auto": lambda env: env["ROLEBRIDGE_SIDECAR_MODE"].get("value") == "auto",
}

REPO = CHART.parent.parent


def webhook_binary() -> str:
    """ROLEBRIDGE_WEBHOOK_BIN, else rolebridge-webhook built from this checkout with cargo."""
    binary = os.environ.get("ROLEBRIDGE_WEBHOOK_BIN", "")
    if binary:
        assert os.access(binary, os.X_OK), f"ROLEBRIDGE_WEBHOOK_BIN={binary} is not executable"
        return binary
    cargo = shutil.which("cargo")
    assert cargo, ("ROLEBRIDGE_WEBHOOK_BIN is not set and there is no cargo to build "
                   "rolebridge-webhook: the flag, RBAC and start-up checks need the binary")
    print("ROLEBRIDGE_WEBHOOK_BIN is not set: building rolebridge-webhook with cargo", flush=True)
    out = subprocess.run(
        [cargo, "build", "-p", "rolebridge-webhook", "--bin", "rolebridge-webhook",
         "--message-format=json-render-diagnostics"],
        cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
                and msg["target"]["name"] == "rolebridge-webhook"):
            return msg["executable"]
    raise AssertionError("cargo build printed no rolebridge-webhook executable")


class Webhook:
    """What the rolebridge-webhook binary says of itself: its flags and the API access it needs."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.flags = json.loads(self.run("flags", "--json"))
        self.rules = json.loads(self.run("rbac", "--json"))["rules"]

    def run(self, *args: str) -> str:
        return subprocess.run([self.binary, *args], check=True, capture_output=True,
                              text=True).stdout

    def env(self, subcommand: str, group: str | None = None) -> dict[str, str | None]:
        """Environment variable -> default of the flags of `subcommand` (those of the clap group
        `group` only, i.e. of one Rust `Args` struct, e.g. `Limits`)."""
        (cmd,) = [c for c in self.flags["subcommands"] if c["name"] == subcommand]
        ids = None if group is None else set(cmd["groups"][group])
        return {f["env"]: f["default"] for f in cmd["flags"]
                if f["env"] and (ids is None or f["id"] in ids)}

    def verbs(self, own_namespace: bool,
              env: dict[str, dict] | None = None) -> dict[tuple[str, str], set[str]]:
        """(API group, resource) -> the RBAC verbs the webhook's calls need, cluster-wide or in its
        own namespace; with the rendered `env`, only the calls that configuration makes (rules
        `onlyWith` a flag setting), else all of them."""
        def made(rule: dict) -> bool:
            condition = rule.get("onlyWith")
            if condition is None or env is None:
                return True
            assert condition in ONLY_WITH, (
                f"rbac --json has a rule only with {condition!r}, which check_chart.py cannot "
                f"evaluate: add it to ONLY_WITH")
            return ONLY_WITH[condition](env)
        needed: dict[tuple[str, str], set[str]] = {}
        for r in self.rules:
            if r["ownNamespace"] == own_namespace and made(r):
                needed.setdefault((r["apiGroup"], r["resource"]), set()).update(r["verbs"])
        return needed


# Chart value (under `limits`) -> the webhook's environment variable (its `Limits` flags).
LIMIT_VALUES = {
    "maxConnections": "ROLEBRIDGE_MAX_CONNECTIONS",
    "maxConnectionsPerClient": "ROLEBRIDGE_MAX_CONNECTIONS_PER_CLIENT",
    "maxBodySize": "ROLEBRIDGE_MAX_BODY_SIZE",
    "bodyBudget": "ROLEBRIDGE_BODY_BUDGET",
    "requestReadTimeout": "ROLEBRIDGE_REQUEST_READ_TIMEOUT",
    "headerReadTimeout": "ROLEBRIDGE_HEADER_READ_TIMEOUT",
    "idleTimeout": "ROLEBRIDGE_IDLE_TIMEOUT",
    "tlsHandshakeTimeout": "ROLEBRIDGE_TLS_HANDSHAKE_TIMEOUT",
}


def check_flags_match_binary(webhook: Webhook) -> None:
    """Every limit flag of `serve` is a chart value with the binary's default, every leader flag is
    set by the chart, and config.credentialsPort defaults to the binary's --credentials-port."""
    limits = webhook.env("serve", "Limits")
    assert set(limits) == set(LIMIT_VALUES.values()), (
        f"the binary's limit flags {sorted(limits)} differ from the chart's limits "
        f"{sorted(LIMIT_VALUES.values())}: add or rename the value")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, env in LIMIT_VALUES.items():
        assert str(values["limits"][key]) == limits[env], (
            f"limits.{key} defaults to {values['limits'][key]!r}, the binary's {env} to "
            f"{limits[env]!r}")
    lease = webhook.env("serve", "LeaderArgs")
    assert set(lease) == {"ROLEBRIDGE_LEADER_ELECTION", "ROLEBRIDGE_LEASE_NAME"}, lease
    port = webhook.env("serve")["ROLEBRIDGE_CREDENTIALS_PORT"]
    assert port and values["config"]["credentialsPort"] == int(port), (
        f"config.credentialsPort differs from the binary's --credentials-port default {port}")


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def check(self, name: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            self.failed.append(name)
            print(f"FAIL {name}: {e}")
            if os.environ.get("CHART_CHECK_DEBUG"):
                traceback.print_exc()
        else:
            self.passed += 1
            print(f"ok   {name}")


def helm_template(helm: str, values: Path) -> str:
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(values)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def mask_random(first: str, second: str) -> str:
    """Masks the values on lines that differ between two renders; fails on unexpected ones."""
    a, b = first.splitlines(), second.splitlines()
    if len(a) != len(b):
        raise AssertionError("two renders differ in line count: rendering is not deterministic")
    out = []
    for la, lb in zip(a, b):
        if la == lb:
            out.append(la)
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):\s", la)
        if not m or m.group(2) not in RANDOM_KEYS:
            raise AssertionError(f"non-deterministic line outside {sorted(RANDOM_KEYS)}: {la[:80]!r}")
        out.append(f"{m.group(1)}{m.group(2)}: {MASK}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Schema validation

def check_cert_manager(doc: dict) -> None:
    spec = doc["spec"]
    if doc["kind"] == "Issuer":
        kinds = [k for k in ("selfSigned", "ca", "acme", "vault", "venafi") if k in spec]
        assert len(kinds) == 1, f"Issuer needs exactly one issuer type, has {kinds}"
        if "ca" in spec:
            assert spec["ca"].get("secretName"), "CA Issuer without secretName"
    elif doc["kind"] == "Certificate":
        assert spec.get("secretName"), "Certificate without secretName"
        ref = spec.get("issuerRef") or {}
        assert ref.get("name"), "Certificate without issuerRef.name"
        assert spec.get("isCA") or spec.get("dnsNames"), "serving Certificate without dnsNames"
        for k in ("duration", "renewBefore"):
            if k in spec:
                assert re.fullmatch(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+", spec[k]), k
    else:
        raise AssertionError(f"unexpected cert-manager kind {doc['kind']}")


def check_monitor(doc: dict) -> None:
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"], "monitor without selector"
    for ep in spec["endpoints"]:
        assert ep["port"] and ep["path"] == "/metrics", ep
        assert set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}, ep


NO_UPSTREAM_SCHEMA = {
    ("cert-manager.io/v1", "Issuer"): check_cert_manager,
    ("cert-manager.io/v1", "Certificate"): check_cert_manager,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_monitor,
    ("monitoring.googleapis.com/v1", "PodMonitoring"): check_monitor,
}


def validate_doc(doc: dict) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert doc.get("metadata", {}).get("name"), f"{key} without metadata.name"
    if key in NO_UPSTREAM_SCHEMA:
        NO_UPSTREAM_SCHEMA[key](doc)
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            raise AssertionError(f"{key[1]}/{doc['metadata']['name']} invalid for Kubernetes "
                                 f"{version} at {path or '.'}: {e.message}") from None


def validator_rejects_broken() -> None:
    good = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}]}}},
    }
    validate_doc(good)
    broken = []
    b = copy.deepcopy(good); b["spec"]["replicas"] = "two"; broken.append(("wrong type", b))
    b = copy.deepcopy(good); b["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] = "x"
    broken.append(("unknown field", b))
    b = copy.deepcopy(good); del b["spec"]["selector"]; broken.append(("missing required field", b))
    b = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "x"}, "webhooks": [{"name": "a.b.c", "sideEffects": "None",
                                                  "clientConfig": {}, "failurePolicy": 7}]}
    broken.append(("webhook wrong type", b))
    for what, doc in broken:
        try:
            validate_doc(doc)
        except AssertionError:
            continue
        raise AssertionError(f"validator accepted a broken manifest ({what})")
    try:
        validate_doc({"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "x"}})
    except kubernetes_validate.utils.SchemaNotFoundError:
        pass
    else:
        raise AssertionError("validator accepted a kind it has no schema for")


# ---------------------------------------------------------------------------------------------
# Semantic checks

def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def selector_matches(selector: dict | None, labels: dict) -> bool:
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, key, vals = e["operator"], e["key"], e.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in vals):
            return False
        if op == "NotIn" and present and labels[key] in vals:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def check_webhook_config(docs: list[dict], values: dict) -> None:
    mwc = one(docs, "MutatingWebhookConfiguration")
    hooks = mwc["webhooks"]
    wv = values.get("webhook", {})
    extra_excluded = set(wv.get("excludedNamespaces", []))
    svc = one(docs, "Service")
    for h in hooks:
        n = h["name"]
        assert h["admissionReviewVersions"] == ["v1"], n
        assert h["sideEffects"] == "None", n
        assert h["reinvocationPolicy"] == wv.get("reinvocationPolicy", "IfNeeded"), n
        assert 1 <= h["timeoutSeconds"] <= 10, f"{n}: timeoutSeconds {h['timeoutSeconds']} is not short"
        assert h["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                               "resources": ["pods"], "scope": "Namespaced"}], n
        cc = h["clientConfig"]["service"]
        assert cc["name"] == svc["metadata"]["name"] and cc["namespace"] == NAMESPACE, n
        assert cc["path"] == "/mutate", n
        assert cc["port"] in [p["port"] for p in svc["spec"]["ports"] if p["name"] == "https"], n
        names = {"kube-system", "kube-node-lease", NAMESPACE} | extra_excluded
        for ns in names:
            assert not selector_matches(h["namespaceSelector"], {"kubernetes.io/metadata.name": ns}), \
                f"{n} intercepts namespace {ns}"
        conds = {c["name"] for c in h.get("matchConditions", [])}
        assert {"not-opted-out-by-annotation", "not-a-mirror-pod"} <= conds, n

    # Partition: every (namespace label, pod label) combination reaches at most one webhook;
    # opted-out ones reach none, all others exactly one; `required` ones fail closed.
    states = [None, "enabled", "disabled", "required", "other"]
    fail_closed = wv.get("failClosedForRequired", True)
    extra_ns = wv.get("namespaceSelectorExpressions") or []
    extra_pod = wv.get("objectSelectorExpressions") or []
    for ns_state, pod_state in itertools.product(states, states):
        ns_labels = {"kubernetes.io/metadata.name": "team-a"}
        pod_labels = {}
        if ns_state:
            ns_labels["rolebridge.io/inject"] = ns_state
        if pod_state:
            pod_labels["rolebridge.io/inject"] = pod_state
        hit = [h for h in hooks if selector_matches(h["namespaceSelector"], ns_labels)
               and selector_matches(h.get("objectSelector"), pod_labels)]
        where = f"namespace label {ns_state!r}, pod label {pod_state!r}"
        assert len(hit) <= 1, f"{where} reaches {len(hit)} webhooks"
        opted_out = "disabled" in (ns_state, pod_state)
        user_filtered = not (selector_matches({"matchExpressions": extra_ns}, ns_labels)
                             and selector_matches({"matchExpressions": extra_pod}, pod_labels))
        if opted_out or user_filtered:
            assert not hit, f"{where} must not be intercepted"
            continue
        assert len(hit) == 1, f"{where} is not intercepted"
        if fail_closed and "required" in (ns_state, pod_state):
            assert hit[0]["failurePolicy"] == "Fail", f"{where} must fail closed"
        else:
            assert hit[0]["failurePolicy"] == wv.get("failurePolicy", "Ignore"), where

    mode = values.get("certs", {}).get("mode", "auto")
    ann = mwc["metadata"].get("annotations") or {}
    if mode == "certManager":
        assert ann.get("cert-manager.io/inject-ca-from") == f"{NAMESPACE}/{svc['metadata']['name']}-tls"
        assert all("caBundle" not in h["clientConfig"] for h in hooks)
    else:
        assert "cert-manager.io/inject-ca-from" not in ann
        bundles = {h["clientConfig"]["caBundle"] for h in hooks}
        assert len(bundles) == 1, "webhooks have different caBundles"
        pem = base64.b64decode(bundles.pop(), validate=True)
        x509.load_pem_x509_certificates(pem)


def check_certificates(docs: list[dict], values: dict) -> None:
    mode = values.get("certs", {}).get("mode", "auto")
    dep = one(docs, "Deployment")
    secret_name = dep["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    svc = one(docs, "Service")["metadata"]["name"]
    dns = {f"{svc}.{NAMESPACE}.svc", f"{svc}.{NAMESPACE}.svc.cluster.local"}
    if mode == "auto":
        sec = one(docs, "Secret")
        assert sec["metadata"]["name"] == secret_name and sec["type"] == "kubernetes.io/tls"
        ca = x509.load_pem_x509_certificate(base64.b64decode(sec["data"]["ca.crt"]))
        crt = x509.load_pem_x509_certificate(base64.b64decode(sec["data"]["tls.crt"]))
        key = serialization.load_pem_private_key(base64.b64decode(sec["data"]["tls.key"]), None)
        crt.verify_directly_issued_by(ca)
        assert crt.public_key().public_numbers() == key.public_key().public_numbers(), "key mismatch"
        sans = set(crt.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                   .value.get_values_for_type(x509.DNSName))
        assert dns <= sans, f"serving cert SANs {sans} lack {dns - sans}"
        eku = crt.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in eku
        bundle = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]
        assert bundle == sec["data"]["ca.crt"], "caBundle is not the generated CA"
        assert not by_kind(docs, "Certificate")
    elif mode == "certManager":
        assert not by_kind(docs, "Secret"), "cert-manager mode must not render Secrets"
        serving = [c for c in by_kind(docs, "Certificate") if not c["spec"].get("isCA")]
        assert len(serving) == 1
        spec = serving[0]["spec"]
        assert spec["secretName"] == secret_name
        assert dns <= set(spec["dnsNames"])
        assert serving[0]["metadata"]["name"] == f"{svc}-tls"
        ref = spec["issuerRef"]
        if not values["certs"]["certManager"].get("issuerRef"):
            issuers = {i["metadata"]["name"]: i for i in by_kind(docs, "Issuer")}
            assert "ca" in issuers[ref["name"]]["spec"], "serving cert not issued by the CA Issuer"
            ca_cert = [c for c in by_kind(docs, "Certificate") if c["spec"].get("isCA")][0]
            assert issuers[ref["name"]]["spec"]["ca"]["secretName"] == ca_cert["spec"]["secretName"]
            assert "selfSigned" in issuers[ca_cert["spec"]["issuerRef"]["name"]]["spec"]
        else:
            assert ref == values["certs"]["certManager"]["issuerRef"]
            assert not by_kind(docs, "Issuer")
    else:
        assert not by_kind(docs, "Secret") and not by_kind(docs, "Certificate")
        assert secret_name == values["certs"]["secret"]["name"]


def check_rbac(docs: list[dict], values: dict, webhook: Webhook) -> None:
    dep = one(docs, "Deployment")
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = [b for b in by_kind(docs, "ClusterRoleBinding")
                if any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in b["subjects"])]
    assert len(bindings) == 1, "the webhook's service account needs exactly one ClusterRoleBinding"
    check_lease_rbac(docs, values, sa, webhook)
    role_name = bindings[0]["roleRef"]["name"]
    role = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == role_name][0]
    got: dict[tuple[str, str], set[str]] = {}
    non_resource = [rule for rule in role["rules"] if "nonResourceURLs" in rule]
    want_discovery = [] if values["config"].get("issuer") else [ISSUER_DISCOVERY]
    assert non_resource == want_discovery, (
        f"non-resource rules {non_resource}; the chart grants only {ISSUER_DISCOVERY}, and only "
        f"while config.issuer is empty (the webhook then reads it)")
    for rule in role["rules"]:
        if "nonResourceURLs" in rule:
            continue
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields {rule}"
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                got.setdefault((g, r), set()).update(rule["verbs"])
    needed = webhook.verbs(own_namespace=False, env=container_env(docs))
    missing = {k: v - got.get(k, set()) for k, v in needed.items() if v - got.get(k, set())}
    assert not missing, f"the ClusterRole lacks verbs the webhook calls (rbac --json): {missing}"
    extra = {k: v - needed.get(k, set()) - CHART_EXTRA_VERBS.get(k, set())
             for k, v in got.items()}
    extra = {k: v for k, v in extra.items() if v}
    assert not extra, f"the ClusterRole grants what the webhook does not call: {extra}"
    for r in by_kind(docs, "ClusterRole"):
        for rule in r["rules"]:
            flat = (rule.get("apiGroups", []) + rule.get("resources", [])
                    + rule.get("nonResourceURLs", []) + rule["verbs"])
            assert "*" not in flat, f"wildcard in {r['metadata']['name']}"
            assert "secrets" not in rule.get("resources", []), f"secrets in {r['metadata']['name']}"


def check_lease_rbac(docs: list[dict], values: dict, sa: str, webhook: Webhook) -> None:
    """Leader election works under the chart's own RBAC, with nothing more: one Role in the
    release namespace with exactly the verbs the webhook's Lease calls need (rbac --json),
    restricted to the Lease the Deployment names wherever RBAC can (`create` cannot be restricted
    by name)."""
    own = webhook.verbs(own_namespace=True)
    assert set(own) == {("coordination.k8s.io", "leases")}, (
        f"the webhook calls {sorted(own)} in its own namespace; this check knows only the Lease")
    env = container_env(docs)
    roles, role_bindings = by_kind(docs, "Role"), by_kind(docs, "RoleBinding")
    if not values["leaderElection"]["enabled"]:
        assert env["ROLEBRIDGE_LEADER_ELECTION"]["value"] == "false"
        assert not roles and not role_bindings, "a Role without leader election"
        return
    assert env["ROLEBRIDGE_LEADER_ELECTION"]["value"] == "true"
    lease = env["ROLEBRIDGE_LEASE_NAME"]["value"]
    # The Lease lives in the webhook's namespace, which it takes from the downward API.
    assert env["ROLEBRIDGE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["HOSTNAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert len(roles) == 1 and len(role_bindings) == 1, "leader election needs one Role and binding"
    role, rb = roles[0], role_bindings[0]
    for obj in (role, rb):
        assert obj["metadata"]["namespace"] == NAMESPACE, f"{obj['kind']} outside the release namespace"
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": role["metadata"]["name"]}
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    needed = own[("coordination.k8s.io", "leases")]
    granted: set[str] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        assert rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"], rule
        names = rule.get("resourceNames")
        if names is not None:
            assert names == [lease], f"Role names {names}, the webhook uses Lease {lease}"
        else:
            assert set(rule["verbs"]) == {"create"}, \
                f"only create may go without resourceNames, not {rule['verbs']}"
        granted |= set(rule["verbs"])
    assert granted == needed, f"Role grants {sorted(granted)} on leases, the webhook calls {sorted(needed)}"


def container_env(docs: list[dict]) -> dict[str, dict]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in c["env"]}


def split_image(ref: str) -> tuple[str, str, str]:
    """(name, tag, digest) of `name:tag[@digest]`."""
    name_tag, _, digest = ref.partition("@")
    name, _, tag = name_tag.rpartition(":")
    assert name and "/" not in tag, f"image {ref!r} has no tag"
    return name, tag, digest


def check_images(docs: list[dict], values: dict, app_version: str) -> None:
    """The agent image follows the webhook's registry and tag unless overridden; digests are
    per image."""
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = container_env(docs)
    img, agent_img = values["image"], values["agent"]["image"]
    w_name, w_tag, w_digest = split_image(c["image"])
    a_name, a_tag, a_digest = split_image(env["ROLEBRIDGE_AGENT_IMAGE"]["value"])
    assert w_tag == (img["tag"] or app_version), w_tag
    assert a_tag == (agent_img["tag"] or w_tag), f"agent tag {a_tag} does not default to the webhook's {w_tag}"
    registry = agent_img["registry"] or img["registry"]
    assert a_name == f"{registry.rstrip('/')}/{agent_img['repository']}", a_name
    assert w_name == f"{img['registry'].rstrip('/')}/{img['repository']}", w_name
    assert w_digest == img["digest"] and a_digest == agent_img["digest"], "digests are per image"
    assert a_name.endswith("/rolebridge-agent") or agent_img["repository"] != "rolebridge-agent"


def check_webhook_env(docs: list[dict], values: dict, webhook: Webhook) -> None:
    """Every ROLEBRIDGE_* variable the chart sets is a flag of the subcommand it runs, and every
    limit value reaches its flag."""
    env = container_env(docs)
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    known = webhook.env(c["args"][0])
    assert len(known) > 20, f"the binary lists only {len(known)} flags with a variable"
    unknown = sorted(n for n in env if n.startswith("ROLEBRIDGE_") and n not in known)
    assert not unknown, f"the chart sets {unknown}, which no flag of `{c['args'][0]}` reads"
    for key, name in LIMIT_VALUES.items():
        assert env[name]["value"] == str(values["limits"][key]), f"limits.{key} is not {name}"
    assert env["ROLEBRIDGE_CREDENTIALS_PORT"]["value"] == str(values["config"]["credentialsPort"])
    if values["config"]["clusterName"]:
        assert env["ROLEBRIDGE_CLUSTER_NAME"]["value"] == values["config"]["clusterName"]
    else:
        # The binary refuses an empty --cluster-name; unset means "ask the metadata server".
        assert "ROLEBRIDGE_CLUSTER_NAME" not in env
    if values["config"]["issuer"]:
        assert env["ROLEBRIDGE_ISSUER"]["value"] == values["config"]["issuer"]
    else:
        # Unset means "discover it from the API server"; an empty --issuer is not that.
        assert "ROLEBRIDGE_ISSUER" not in env
    assert (env["ROLEBRIDGE_KUBERNETES_TOKEN_EXPIRATION"]["value"]
            == str(values["config"]["kubernetesTokenExpiration"]))


def check_token_expiration_default(webhook: Webhook) -> None:
    """config.kubernetesTokenExpiration defaults to the binary's --kubernetes-token-expiration."""
    default = webhook.env("serve").get("ROLEBRIDGE_KUBERNETES_TOKEN_EXPIRATION")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert default is not None, "the binary has no --kubernetes-token-expiration flag"
    assert str(values["config"]["kubernetesTokenExpiration"]) == default, (
        f"config.kubernetesTokenExpiration defaults to "
        f"{values['config']['kubernetesTokenExpiration']!r}, the binary's flag to {default!r}")


def check_autopilot_admits(docs: list[dict]) -> None:
    """What GKE Autopilot's policy enforcement (GKE Warden) refuses is absent from every pod the
    chart renders: host namespaces, host ports, hostPath volumes, privileged containers and added
    capabilities; and containers state their requests (Autopilot would give each 0.5 vCPU and
    2 GiB). Chart README, "GKE Autopilot"."""
    for d in docs:
        spec = (d.get("spec") or {}).get("template", {}).get("spec")
        if spec is None:
            continue
        name = f"{d['kind']}/{d['metadata']['name']}"
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{name}: {key} (refused on Autopilot)"
        for v in spec.get("volumes", []):
            assert "hostPath" not in v, f"{name}: hostPath volume {v['name']} (refused on Autopilot)"
        for c in spec.get("initContainers", []) + spec["containers"]:
            for p in c.get("ports", []):
                assert not p.get("hostPort"), f"{name}: hostPort {p['hostPort']} (autogke-no-host-port)"
            sc = c.get("securityContext") or {}
            assert not sc.get("privileged"), f"{name}/{c['name']}: privileged"
            assert not (sc.get("capabilities") or {}).get("add"), f"{name}/{c['name']}: added capabilities"
            requests = (c.get("resources") or {}).get("requests") or {}
            assert {"cpu", "memory"} <= set(requests), \
                f"{name}/{c['name']}: no cpu/memory requests (Autopilot defaults to 0.5 vCPU, 2 GiB)"


def check_binary_accepts_env(docs: list[dict], webhook: Webhook) -> None:
    """The webhook binary parses the rendered environment and arguments and starts serving
    (bindings from an empty file instead of an API server; fieldRefs filled in)."""
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    with tempfile.TemporaryDirectory() as tmp:
        key, crt, bindings = (Path(tmp) / n for n in ("tls.key", "tls.crt", "bindings.yaml"))
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import datetime
        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chart-check")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(k.public_key()).serial_number(1).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1)).sign(k, hashes_sha256()))
        key.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        bindings.write_text("[]\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        refs = {"metadata.namespace": NAMESPACE, "metadata.name": "rolebridge-0"}
        for e in c["env"]:
            env[e["name"]] = e["value"] if "value" in e else refs[e["valueFrom"]["fieldRef"]["fieldPath"]]
        env.update(ROLEBRIDGE_TLS_CERT=str(crt), ROLEBRIDGE_TLS_KEY=str(key),
                   ROLEBRIDGE_BINDINGS_FILE=str(bindings), ROLEBRIDGE_LOG_FORMAT="plain",
                   ROLEBRIDGE_LISTEN="127.0.0.1:0", ROLEBRIDGE_ADMIN_LISTEN="127.0.0.1:0",
                   NO_COLOR="1")
        proc = subprocess.Popen([webhook.binary] + c["args"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert re.search(r"\bserving\b.*listen", out), \
            f"rolebridge-webhook did not start with the rendered env (exit {proc.returncode}):\n{out[-1500:]}"


def hashes_sha256():
    from cryptography.hazmat.primitives import hashes
    return hashes.SHA256()


def check_network_policy(docs: list[dict], values: dict) -> None:
    """Optional NetworkPolicy: selects the webhook pods, admits exactly the container ports
    (webhook port from the API-server sources, admin port from the metrics source only)."""
    nps = by_kind(docs, "NetworkPolicy")
    npv = values["networkPolicy"]
    if not npv["enabled"]:
        assert not nps, "NetworkPolicy rendered while networkPolicy.enabled=false"
        return
    (np,) = nps
    dep = one(docs, "Deployment")
    assert np["metadata"]["namespace"] == NAMESPACE
    assert np["spec"]["podSelector"] == dep["spec"]["selector"], "NetworkPolicy selects other pods"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}

    def port_of(rule: dict) -> int:
        (p,) = rule["ports"]
        assert p.get("protocol", "TCP") == "TCP" and "endPort" not in p, p
        return ports[p["port"]] if isinstance(p["port"], str) else p["port"]

    by_port = {port_of(r): r for r in np["spec"]["ingress"]}
    assert len(by_port) == len(np["spec"]["ingress"]), "two ingress rules for one port"
    assert set(by_port) <= set(ports.values()), \
        f"ingress on {sorted(by_port)}, container ports are {sorted(ports.values())}"
    hook = by_port[ports["https"]]
    api = npv["apiServer"]
    want = [{"ipBlock": {"cidr": c}} for c in api["cidrs"]] + list(api["extraPeers"])
    assert hook.get("from", []) == want, f"webhook port sources {hook.get('from')} != {want}"
    ms = npv["metricsSource"]
    peer = {k: ms[k] for k in ("namespaceSelector", "podSelector") if ms[k]}
    if peer:
        assert by_port[ports["admin"]]["from"] == [peer]
    else:
        assert ports["admin"] not in by_port, "admin port open while no metrics source is set"
    types = np["spec"]["policyTypes"]
    if npv["egress"]["restrict"]:
        assert types == ["Ingress", "Egress"]
        (rule,) = np["spec"]["egress"]
        assert rule["to"] == [{"ipBlock": {"cidr": c}} for c in npv["egress"]["apiServer"]["cidrs"]]
        assert [p["port"] for p in rule["ports"]] == npv["egress"]["apiServer"]["ports"]
    else:
        assert types == ["Ingress"] and "egress" not in np["spec"], "egress restricted unasked"


def check_deployment(docs: list[dict], values: dict) -> None:
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["args"][0] == "serve"
    env = {e["name"]: e for e in c["env"]}
    assert env["ROLEBRIDGE_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    for mount in c["volumeMounts"]:
        assert "subPath" not in mount and "subPathExpr" not in mount, "subPath breaks cert reload"
    tls = [m for m in c["volumeMounts"] if m["name"] == "tls"][0]["mountPath"]
    assert env["ROLEBRIDGE_TLS_CERT"]["value"] == f"{tls}/tls.crt"
    assert env["ROLEBRIDGE_TLS_KEY"]["value"] == f"{tls}/tls.key"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert env["ROLEBRIDGE_LISTEN"]["value"].endswith(f":{ports['https']}")
    assert env["ROLEBRIDGE_ADMIN_LISTEN"]["value"].endswith(f":{ports['admin']}")
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in ("admin", ports["admin"]), probe
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    delay = int(env["ROLEBRIDGE_SHUTDOWN_DELAY"]["value"])
    drain = int(env["ROLEBRIDGE_DRAIN_TIMEOUT"]["value"])
    timeout = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]["timeoutSeconds"]
    assert pod["terminationGracePeriodSeconds"] > delay + drain, "grace period shorter than drain"
    assert drain >= timeout, "drain shorter than the API server's webhook timeout"
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["memory"]
    assert "agent" in env["ROLEBRIDGE_AGENT_IMAGE"]["value"]
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if dep["spec"]["replicas"] > 1 and values.get("podDisruptionBudget", {}).get("enabled", True):
        assert len(pdbs) == 1
        assert pdbs[0]["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    else:
        assert not pdbs, "a PDB on a single replica would block node drains"
    svc = one(docs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    for d in docs:
        labels = d["metadata"].get("labels") or {}
        for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                  "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert k in labels, f"{d['kind']}/{d['metadata']['name']} lacks label {k}"


def check_notes_binding(helm: str, crd_path: Path) -> None:
    """The AWSRoleBinding example in NOTES.txt must be valid for the CRD."""
    out = subprocess.run([helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                          "--dry-run=client", "-f", str(HERE / "values" / "default.yaml")],
                         check=True, capture_output=True, text=True).stdout
    notes = out.split("NOTES:", 1)[1]
    m = re.search(r"<<'YAML'\n(.*?)\n\s*YAML\n", notes, re.S)
    assert m, "NOTES.txt has no AWSRoleBinding example"
    example = yaml.safe_load(re.sub(r"(?m)^  ", "", m.group(1)))
    crd = yaml.safe_load(crd_path.read_text())
    assert example["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
    assert example["kind"] == crd["spec"]["names"]["kind"]
    version = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"][0]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator(schema).validate({k: example[k] for k in ("spec",)} | {
        "apiVersion": example["apiVersion"], "kind": example["kind"]})


def install_notes(helm: str, *sets: str) -> tuple[str, list[dict]]:
    cmd = [helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    for kv in sets:
        cmd += ["--set", kv]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    manifest, notes = out.split("NOTES:", 1)
    return notes, load_docs(manifest.split("MANIFEST:", 1)[1])


def check_notes_agent_image(helm: str) -> None:
    """NOTES.txt names exactly the agent image the webhook injects, gives a pull check for it,
    and warns when the agent's tag differs from the webhook's or only the webhook is pinned."""
    digest = "sha256:" + "ab" * 32
    cases = [
        ((), False, False),
        (("image.tag=1.2.3",), False, False),          # both follow: no warning
        (("agent.image.tag=0.0.9",), True, False),
        (("image.registry=europe-docker.pkg.dev/p/r", f"image.digest={digest}"), False, True),
        ((f"image.digest={digest}", f"agent.image.digest={digest}"), False, False),
    ]
    for sets, skew, unpinned in cases:
        notes, docs = install_notes(helm, *sets)
        agent = container_env(docs)["ROLEBRIDGE_AGENT_IMAGE"]["value"]
        assert f"\n  {agent}\n" in notes, f"{sets}: NOTES do not name the agent image {agent}"
        assert re.search(r"kubectl .*run rolebridge-pull-check .*--image-pull-policy=Always \\\n"
                         r"(.* \\\n)*"
                         rf".*--image={re.escape(agent)} -- --version(\s|$)", notes), \
            f"{sets}: NOTES lack the pull check for {agent}"
        assert ("differs from the webhook's" in notes) == skew, f"{sets}: tag warning wrong"
        assert ("agent.image.digest is empty" in notes) == unpinned, f"{sets}: digest warning wrong"
        if "docker.pkg.dev" in agent:
            assert "roles/artifactregistry.reader" in notes, f"{sets}: no Artifact Registry hint"


# ---------------------------------------------------------------------------------------------
# certs.mode=auto across `helm upgrade`: `lookup` against a fake API server

class FakeAPI:
    """Just enough of a kube-apiserver (plain HTTP on loopback) for `helm template
    --dry-run=server`: version, discovery of the chart's kinds, and GET of one Secret."""

    CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                      "CustomResourceDefinition"}
    KINDS = {"v1": ["Secret", "Service", "ServiceAccount"], "apps/v1": ["Deployment"],
             "policy/v1": ["PodDisruptionBudget"],
             "rbac.authorization.k8s.io/v1": ["ClusterRole", "ClusterRoleBinding", "Role",
                                              "RoleBinding"],
             "networking.k8s.io/v1": ["NetworkPolicy"],
             "admissionregistration.k8s.io/v1": ["MutatingWebhookConfiguration"],
             "apiextensions.k8s.io/v1": ["CustomResourceDefinition"]}

    def __init__(self) -> None:
        self.secret: dict | None = None
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the check output clean
                pass

            def reply(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - http.server API
                path = self.path.split("?")[0].rstrip("/")
                api.requests.append(path)
                self.reply(*api.answer(path))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def resources(self, gv: str) -> dict:
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
            {"name": k.lower() + "s", "singularName": k.lower(), "kind": k,
             "namespaced": k not in self.CLUSTER_SCOPED, "verbs": ["get", "list", "create"]}
            for k in self.KINDS[gv]]}

    def answer(self, path: str) -> tuple[int, dict]:
        not_found = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "reason": "NotFound", "code": 404}
        if path == "/version":
            return 200, {"major": "1", "minor": "35", "gitVersion": "v1.35.0"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": "v1"}],
                 "preferredVersion": {"groupVersion": gv, "version": "v1"}}
                for gv in self.KINDS if "/" in gv]}
        if path == "/api/v1":
            return 200, self.resources("v1")
        if path.startswith("/apis/") and path.count("/") == 3 and path[6:] in self.KINDS:
            return 200, self.resources(path[6:])
        s = self.secret
        if s and path == f"/api/v1/namespaces/{s['metadata']['namespace']}/secrets/{s['metadata']['name']}":
            return 200, s
        return 404, not_found

    def __enter__(self) -> "FakeAPI":
        self.thread.start()
        self.dir = tempfile.TemporaryDirectory()
        self.kubeconfig = Path(self.dir.name) / "kubeconfig"
        host, port = self.server.server_address[:2]
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://{host}:{port}"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        self.kubeconfig.chmod(0o600)
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.dir.cleanup()


def render_against(helm: str, api: FakeAPI) -> list[dict]:
    env = dict(os.environ, KUBECONFIG=str(api.kubeconfig))
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
           "--dry-run=server", "--disable-openapi-validation"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return load_docs(out)


def tls_material(docs: list[dict]) -> tuple[dict, set[str]]:
    sec = one(docs, "Secret")
    bundles = {h["clientConfig"]["caBundle"]
               for h in one(docs, "MutatingWebhookConfiguration")["webhooks"]}
    return sec, bundles


def check_auto_certs_stable(helm: str) -> None:
    with FakeAPI() as api:
        # First install: no Secret yet, so a new CA and serving certificate are generated.
        first, bundles = tls_material(render_against(helm, api))
        name = first["metadata"]["name"]
        assert f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}" in api.requests, \
            "the chart did not look up its Secret"
        assert bundles == {first["data"]["ca.crt"]}
        # Upgrade: the Secret exists (owned by the release), so the same pair must be re-used.
        live = copy.deepcopy(first)
        live["metadata"]["annotations"] = {"meta.helm.sh/release-name": RELEASE,
                                           "meta.helm.sh/release-namespace": NAMESPACE}
        api.secret = live
        again, bundles = tls_material(render_against(helm, api))
        assert again["data"] == first["data"], "helm upgrade would replace the certificate"
        assert bundles == {first["data"]["ca.crt"]}, "caBundle is not the live Secret's CA"
        # A Secret missing a key is not re-used half: a complete new pair is generated.
        broken = copy.deepcopy(live)
        del broken["data"]["ca.crt"]
        api.secret = broken
        fresh, bundles = tls_material(render_against(helm, api))
        assert fresh["data"]["tls.crt"] != first["data"]["tls.crt"], "incomplete Secret re-used"
        assert bundles == {fresh["data"]["ca.crt"]}


def check_values_documented() -> None:
    """Every key of values.yaml that the schema knows has a comment right above it, and every
    top-level key of values.yaml is in the schema (whose additionalProperties=false catches the
    rest)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):(\s|$)", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        node = schema
        for k in path:
            props = node.get("properties")
            if props is None or k not in props:
                node = None
                break
            node = props[k]
        if node is None:
            assert len(path) > 1, f"top-level value {key} is not in values.schema.json"
            continue
        if i == 0 or not lines[i - 1].strip().startswith("#"):
            missing.append(".".join(path))
    assert not missing, f"undocumented values: {missing}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--helm", required=True)
    ap.add_argument("--update", action="store_true", help="rewrite tests/rendered")
    args = ap.parse_args()

    res = Results()
    res.check("validator rejects broken manifests", validator_rejects_broken)
    res.check("every value in values.yaml is documented and in the schema",
              check_values_documented)

    # The checks against the webhook need its binary; without one they fail, never skip.
    found: list[Webhook] = []
    res.check("rolebridge-webhook binary (ROLEBRIDGE_WEBHOOK_BIN, else built with cargo) "
              "answers flags --json and rbac --json",
              lambda: found.append(Webhook(webhook_binary())))
    webhook = found[0] if found else None

    def check_webhook(name: str, fn, *fn_args) -> None:
        if webhook is None:
            res.check(name, lambda: (_ for _ in ()).throw(
                AssertionError("needs the rolebridge-webhook binary (see above)")))
        else:
            res.check(name, fn, *fn_args, webhook)

    check_webhook("limits and leader flags of rolebridge-webhook match the chart's values",
                  check_flags_match_binary)
    check_webhook("config.kubernetesTokenExpiration defaults to the binary's "
                  "--kubernetes-token-expiration", check_token_expiration_default)
    app_version = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])

    cases = sorted((HERE / "values").glob("*.yaml"))
    assert cases, "no values files"
    rendered_dir = HERE / "rendered"
    rendered_dir.mkdir(exist_ok=True)
    expected_files = set()
    for values_file in cases:
        case = values_file.stem
        values = yaml.safe_load(values_file.read_text()) or {}
        # Effective values for the semantic checks: chart defaults overlaid by the case.
        merged = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)
        golden = rendered_dir / f"{case}.yaml"
        expected_files.add(golden.name)
        try:
            first = helm_template(args.helm, values_file)
            second = helm_template(args.helm, values_file)
        except subprocess.CalledProcessError as e:
            res.check(f"{case}: helm template", lambda: (_ for _ in ()).throw(
                AssertionError(e.stderr.strip())))
            continue
        masked_holder: list[str] = []
        res.check(f"{case}: deterministic apart from generated certificates",
                  lambda: masked_holder.append(mask_random(first, second)))
        if not masked_holder:
            continue
        masked = masked_holder[0]
        header = (f"# Rendered by scripts/chart-check.sh from tests/values/{case}.yaml "
                  f"(release {RELEASE}, namespace {NAMESPACE}). Do not edit;\n"
                  f"# regenerate with scripts/chart-check.sh --update.\n")
        masked = header + masked
        if args.update:
            golden.write_text(masked)

        def compare(golden=golden, masked=masked, case=case):
            if not golden.exists():
                raise AssertionError(f"{golden} missing: run scripts/chart-check.sh --update")
            want = golden.read_text()
            if want != masked:
                diff = "".join(itertools.islice(difflib.unified_diff(
                    want.splitlines(True), masked.splitlines(True),
                    f"committed {golden.name}", "rendered now"), 80))
                raise AssertionError(f"render drifted from {golden.name} "
                                     f"(scripts/chart-check.sh --update if intended):\n{diff}")
        res.check(f"{case}: matches tests/rendered/{case}.yaml", compare)

        docs = load_docs(first)
        for d in docs:
            res.check(f"{case}: schema {d.get('kind')}/{d.get('metadata', {}).get('name')}",
                      validate_doc, d)
        res.check(f"{case}: webhook configuration", check_webhook_config, docs, merged)
        res.check(f"{case}: certificates", check_certificates, docs, merged)
        check_webhook(f"{case}: rbac", check_rbac, docs, merged)
        res.check(f"{case}: deployment", check_deployment, docs, merged)
        res.check(f"{case}: images (agent follows the webhook's registry and tag)",
                  check_images, docs, merged, app_version)
        check_webhook(f"{case}: environment matches the webhook's flags", check_webhook_env,
                      docs, merged)
        res.check(f"{case}: network policy", check_network_policy, docs, merged)
        res.check(f"{case}: fit for GKE Autopilot (nothing refused, requests set)",
                  check_autopilot_admits, docs)
        check_webhook(f"{case}: rolebridge-webhook starts with the rendered env",
                      check_binary_accepts_env, docs)

    stale = {p.name for p in rendered_dir.glob("*.yaml")} - expected_files
    for name in sorted(stale):
        if args.update:
            (rendered_dir / name).unlink()
        else:
            res.check(f"no stale tests/rendered/{name}", lambda n=name: (_ for _ in ()).throw(
                AssertionError(f"{n} has no values file; remove it or run --update")))

    res.check("certs.mode=auto: generated on install, kept on upgrade (lookup)",
              check_auto_certs_stable, args.helm)

    crd = CHART / "crds" / "awsrolebinding.yaml"
    if crd.exists():
        res.check("CRD is a valid CustomResourceDefinition", lambda: [
            validate_doc(d) for d in load_docs(crd.read_text())])
        res.check("NOTES.txt AWSRoleBinding example is valid for the CRD",
                  check_notes_binding, args.helm, crd)
        res.check("NOTES.txt names the agent image, its pull check and version skew",
                  check_notes_agent_image, args.helm)
    else:
        res.check("chart CRD present", lambda: (_ for _ in ()).throw(
            AssertionError(f"{crd} missing")))

    print(f"chart: {res.passed} passed, {len(res.failed)} failed")
    return 1 if res.failed else 0


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
