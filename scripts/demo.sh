#!/usr/bin/env bash
# shellcheck disable=SC2154 # the agent_*, probe, app_* arrays are set by `load`, by name
# The whole rolebridge chain on one machine, no cloud account, no cluster:
#   examples/job.yaml + examples/binding.yaml
#     → rolebridge-webhook inject            (the exact mutation the webhook applies)
#     → GKE metadata emulator                (signs Google-style ID tokens)
#     → the injected agent container          (its exact command, as a local process)
#     → moto as AWS STS + S3                  (bucket "reports", object "latest.csv")
#     → the injected app container            (its exact command and environment: boto3)
# and prints the S3 object the app read and the role it assumed. Then the cross-account case
# (examples/cross-account-job.yaml + examples/cross-account-binding.yaml): the agent walks the
# role chain into account 222222222222 and serves 15-minute credentials on loopback, and an
# unmodified AWS CLI publishes into that account's bucket through the container credentials
# protocol. Everything it starts is stopped on exit, Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
SCRIPT_NAME="demo failed" # die's messages read "demo failed: ..."
root=$(pwd)

# Everything started is tracked (lib.sh): stopped on exit, Ctrl-C or failure.
work=$(mktemp -d)
if [ -z "${DEMO_KEEP:-}" ]; then
  remove_on_exit "$work"
  logs_note() { [ "$1" -eq 0 ] || echo "(logs were in $work, now removed; re-run with DEMO_KEEP=1 to keep them)" >&2; }
  on_exit logs_note
fi

PY=${ROLEBRIDGE_PYTHON:-python3}

# containers INJECTED TOKENS SUFFIX OUT: the injected Job's agent and app containers as the
# kubelet would run them: the token volume mapped to the local directory TOKENS, the downward
# API resolved for a pod named <job>-SUFFIX.
containers() {
  "$PY" - "$1" "$2" "$3" > "$4" <<'PY'
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
job = next(d for d in docs if d.get("kind") == "Job")
spec = job["spec"]["template"]["spec"]
mount = "/var/run/secrets/rolebridge.io"
def local(s): return s.replace(mount, sys.argv[2])
pod = {"metadata.name": job["metadata"]["name"] + "-" + sys.argv[3],
       "metadata.namespace": job["metadata"]["namespace"],
       "metadata.uid": "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e",
       "spec.serviceAccountName": spec["serviceAccountName"]}
def env_of(c):
    return {e["name"]: local(e["value"]) if "value" in e else pod[e["valueFrom"]["fieldRef"]["fieldPath"]]
            for e in c.get("env", [])}
agent = next(c for c in spec["initContainers"] if c["name"] == "rolebridge-agent")
app = spec["containers"][0]
json.dump({
    "agent_args": [local(a) for a in agent["args"]],
    "agent_env": env_of(agent),
    # The hook waits up to 120 s; the demo is less patient, so `check` reports its own reason.
    "probe": [local(a) for a in agent["lifecycle"]["postStart"]["exec"]["command"][1:-1]] + ["20s"],
    "app_cmd": app["command"] + app["args"],
    "app_env": env_of(app),
}, sys.stdout)
PY
}
# pod JOB BINDINGS NAME SUFFIX PREFIX: inject JOB with BINDINGS into $work/NAME.yaml and load its
# containers (tokens in $work/NAME-tokens) into the PREFIX arrays of `load`.
pod() {
  "$bin/rolebridge-webhook" inject -f "$1" --bindings "$2" --agent-image rolebridge-agent:demo \
    > "$work/$3.yaml"
  mkdir -p "$work/$3-tokens"
  containers "$work/$3.yaml" "$work/$3-tokens" "$4" "$work/$3.json"
  load "$work/$3.json" "$5"
}
# load JSON PREFIX: the arrays PREFIXagent_args, PREFIXagent_env, PREFIXprobe, PREFIXapp_cmd and
# PREFIXapp_env from what `containers` wrote (maps as NAME=VALUE items).
load() {
  local k
  for k in agent_args agent_env probe app_cmd app_env; do mapfile -t "$2$k" < <(field "$1" "$k"); done
}
field() { "$PY" -c "import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print('\n'.join(v) if isinstance(v, list) else '\n'.join(f'{k}={x}' for k, x in v.items()))" "$1" "$2"; }
# wait_ready PID LOG HOOK...: the kubelet holds the app back until the agent's postStart hook
# (`check --wait`) returns; so does the demo, a little less patiently.
wait_ready() {
  local pid=$1 log=$2 out
  shift 2
  if out=$("$bin/rolebridge-agent" "$@" 2>&1); then return 0; fi
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "the agent exited"; }
  cat "$log" >&2
  die "the agent's postStart hook never returned successfully: $out"
}

say "1/7 building rolebridge-webhook, rolebridge-agent and the GKE metadata emulator"
cargo build -q -p rolebridge-webhook -p rolebridge-agent -p rolebridge-e2e --bins
bin=$root/target/debug

say "2/7 installing the AWS peers if missing (moto, boto3)"
bash e2e/sdk/install-peers.sh >&2

say "3/7 injecting examples/job.yaml with examples/binding.yaml"
pod examples/job.yaml examples/binding.yaml injected x7k2p ""
tokens=$work/injected-tokens
grep -n "AWS_ROLE_ARN" -A1 "$work/injected.yaml" | sed 's/^/    /' >&2

# metadata_server PORT EMAIL LOG: the GKE metadata server as a pod sees it: ID tokens for the
# Google service account its Kubernetes service account names (the agent refuses any other).
metadata_server() {
  "$bin/gke-metadata-emulator" --listen "127.0.0.1:$1" --email "$2" --cluster-name demo-cluster > "$3" 2>&1 &
  track $!
  wait_http "http://127.0.0.1:$1/" 30 $! || die "the metadata emulator did not come up"
}

say "4/7 starting the GKE metadata emulator (the pod's Google service account: reports@my-project)"
md_port=$(free_port)
metadata_server "$md_port" reports@my-project.iam.gserviceaccount.com "$work/metadata.log"

say "5/7 starting moto as AWS STS + S3, with s3://reports/latest.csv"
moto_port=$(free_port)
"$PY" -m moto.server -H 127.0.0.1 -p "$moto_port" > "$work/moto.log" 2>&1 &
track $!
wait_http "http://127.0.0.1:$moto_port/moto-api/" 30 $! || die "moto did not come up"
AWS_ACCESS_KEY_ID=setup AWS_SECRET_ACCESS_KEY=setup AWS_DEFAULT_REGION=us-east-1 \
"$PY" - "http://127.0.0.1:$moto_port" <<'PY'
import boto3, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
s3.create_bucket(Bucket="reports")
s3.put_object(Bucket="reports", Key="latest.csv",
              Body=b"month,revenue\n2026-10,41230\n2026-11,45870\n")
PY

say "6/7 running the injected agent container: rolebridge-agent ${agent_args[*]}"
GCE_METADATA_HOST=127.0.0.1:$md_port "$bin/rolebridge-agent" "${agent_args[@]}" > "$work/agent.log" 2>&1 &
agent_pid=$!
track "$agent_pid"
wait_ready "$agent_pid" "$work/agent.log" "${probe[@]}"
# shellcheck disable=SC2012 # a listing for the reader, not parsed
ls -l "$tokens" | sed 's/^/    /' >&2

say "7/7 running the injected app container (unmodified boto3) with exactly its injected environment"
printf '    %s\n' "${app_env[@]}" >&2
# env -i: nothing but the injected variables (plus the local endpoint standing in for AWS),
# so no static key or profile on this machine can be what made it work.
app_home=$work/home; mkdir -p "$app_home" "$work/bin"
# The container's image has `python`; map it to this machine's interpreter.
ln -sf "$(command -v "$PY")" "$work/bin/python"
PATH="$work/bin:$PATH"
out=$(env -i PATH="$PATH" HOME="$app_home" "${app_env[@]}" \
  AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" \
  "${app_cmd[@]}" 2>"$work/app.err") || { cat "$work/app.err" >&2; die "the app could not read from S3"; }
arn=$(env -i PATH="$PATH" HOME="$app_home" "${app_env[@]}" \
  AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" \
  "$PY" -c 'import boto3; print(boto3.client("sts").get_caller_identity()["Arn"])')

echo
echo "The app read s3://reports/latest.csv:"
# shellcheck disable=SC2001 # indents every line
sed 's/^/    /' <<<"$out"
echo "as: $arn"
echo
echo "No AWS key was configured anywhere: the agent wrote a Google-style ID token to"
echo "$tokens, and boto3 exchanged it with STS AssumeRoleWithWebIdentity by itself."

# ---------------------------------------------------------------------------------------------
# Part 2: cross-account, through the credentials endpoint.
echo
say "cross-account 1/4 injecting examples/cross-account-job.yaml with examples/cross-account-binding.yaml"
# A free port for the endpoint, through the pod annotation that tunes it (a port in use here
# would otherwise stop the demo).
cred_port=$(free_port)
"$PY" - examples/cross-account-job.yaml "$cred_port" > "$work/xjob.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d.get("kind") == "Job":
        meta = d["spec"]["template"].setdefault("metadata", {})
        meta.setdefault("annotations", {})["rolebridge.io/credentials-port"] = sys.argv[2]
yaml.safe_dump_all(docs, sys.stdout)
PY
pod "$work/xjob.yaml" examples/cross-account-binding.yaml xinjected q8z4w x
xtokens=$work/xinjected-tokens
grep -n "AWS_CONTAINER_" -A1 "$work/xinjected.yaml" | sed 's/^/    /' >&2

say "cross-account 2/4 creating s3://docs-site in account 222222222222 (moto)"
AWS_ACCESS_KEY_ID=setup AWS_SECRET_ACCESS_KEY=setup AWS_DEFAULT_REGION=eu-west-1 \
"$PY" - "http://127.0.0.1:$moto_port" <<'PY'
import boto3, sys
c = boto3.client("sts", endpoint_url=sys.argv[1]).assume_role(
    RoleArn="arn:aws:iam::222222222222:role/docs-writer", RoleSessionName="setup")["Credentials"]
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id=c["AccessKeyId"],
                  aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
s3.create_bucket(Bucket="docs-site", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
PY

say "cross-account 3/4 running the injected agent: rolebridge-agent ${xagent_args[0]} --credentials … --credentials-port $cred_port"
# The agent container's environment: its downward-API pod identity (the session name and
# tags), the metadata server, and moto standing in for STS. The auth token goes to the shared
# volume, as in the pod.
xmd_port=$(free_port)
metadata_server "$xmd_port" docs-publisher@my-project.iam.gserviceaccount.com "$work/xmetadata.log"
env "${xagent_env[@]}" GCE_METADATA_HOST="127.0.0.1:$xmd_port" \
  AWS_ENDPOINT_URL_STS="http://127.0.0.1:$moto_port" \
  ROLEBRIDGE_AUTH_TOKEN_FILE="$xtokens/credentials.auth" \
  "$bin/rolebridge-agent" "${xagent_args[@]}" > "$work/xagent.log" 2>&1 &
xagent_pid=$!
track "$xagent_pid"
wait_ready "$xagent_pid" "$work/xagent.log" "${xprobe[@]}"
"$PY" - "http://127.0.0.1:$cred_port/v1/credentials/docs" "$xtokens/credentials.auth" <<'PY' >&2
import json, sys, urllib.error, urllib.request
url, token = sys.argv[1], open(sys.argv[2]).read()
try:
    urllib.request.urlopen(url, timeout=2)
    sys.exit("the endpoint answered without the authorization token")
except urllib.error.HTTPError as e:
    print(f"    without the authorization token: HTTP {e.code}")
creds = json.load(urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": token}), timeout=2))
print(f"    with it: credentials of account {creds['AccountId']}, expiring {creds['Expiration']} (the secret parts not shown)")
PY

say "cross-account 4/4 running the injected app container (unmodified AWS CLI) with exactly its injected environment"
printf '    %s\n' "${xapp_env[@]}" >&2
ln -sf "$("$PY" -c 'import os,sysconfig; print(os.path.join(sysconfig.get_path("scripts"), "aws"))')" "$work/bin/aws"
command -v aws >/dev/null 2>&1 && ln -sf "$(command -v aws)" "$work/bin/aws"
xout=$(cd "$work" && env -i PATH="$PATH" HOME="$app_home" "${xapp_env[@]}" \
  AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" \
  "${xapp_cmd[@]}" 2>"$work/xapp.err") || { cat "$work/xapp.err" "$work/xagent.log" >&2; die "the app could not publish to account 222222222222"; }
landed=$(AWS_ACCESS_KEY_ID=setup AWS_SECRET_ACCESS_KEY=setup AWS_DEFAULT_REGION=eu-west-1 \
"$PY" - "http://127.0.0.1:$moto_port" <<'PY'
import boto3, sys
c = boto3.client("sts", endpoint_url=sys.argv[1]).assume_role(
    RoleArn="arn:aws:iam::222222222222:role/docs-writer", RoleSessionName="check")["Credentials"]
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id=c["AccessKeyId"],
                  aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
print(s3.get_object(Bucket="docs-site", Key="index.html")["Body"].read().decode().strip())
PY
)

echo
echo "The agent's log:"
grep -E "cluster name|credentials obtained" "$work/xagent.log" | sed 's/^/    /'
echo "The CI job published s3://docs-site/index.html in account 222222222222 (it reads: $landed)"
echo "as: $(echo "$xout" | tail -n1)"
echo
echo "The agent assumed ci-identity (111111111111) with the pod's Google ID token, then"
echo "docs-writer (222222222222) with the external ID and the pod's session tags, and served"
echo "those 15-minute credentials on 127.0.0.1:$cred_port to the AWS CLI, which read them through"
echo "AWS_CONTAINER_CREDENTIALS_FULL_URI with the token in AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE."
