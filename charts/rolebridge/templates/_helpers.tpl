{{/*
Chart name, overridable.
*/}}
{{- define "rolebridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: <release>-rolebridge, or the release name when it already contains the
chart name. Truncated so that the longest suffix the chart adds ("-selfsigned") still fits in 63.
*/}}
{{- define "rolebridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
chart label value: name-version.
*/}}
{{- define "rolebridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of the release (Deployment selectors are immutable).
*/}}
{{- define "rolebridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rolebridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{/*
Common labels (Helm best practice).
*/}}
{{- define "rolebridge.labels" -}}
helm.sh/chart: {{ include "rolebridge.chart" . }}
{{ include "rolebridge.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/part-of: rolebridge
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the webhook's ServiceAccount.
*/}}
{{- define "rolebridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rolebridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference from {registry, repository, tag, digest}: registry/repository:tag, with @digest
appended when set (the digest then decides what is pulled; the tag stays for readers).
Usage: include "rolebridge.imageRef" (dict "registry" r "repository" p "tag" t "digest" d)
*/}}
{{- define "rolebridge.imageRef" -}}
{{- $repo := .repository -}}
{{- if .registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .registry) .repository }}{{ end -}}
{{- if .digest -}}
{{- printf "%s:%s@%s" $repo .tag .digest -}}
{{- else -}}
{{- printf "%s:%s" $repo .tag -}}
{{- end -}}
{{- end }}

{{/*
Webhook image tag: image.tag, else appVersion.
*/}}
{{- define "rolebridge.webhookTag" -}}
{{- default .Chart.AppVersion .Values.image.tag | toString -}}
{{- end }}

{{/*
Agent image tag: agent.image.tag, else the webhook's tag (one setting moves both images).
*/}}
{{- define "rolebridge.agentTag" -}}
{{- default (include "rolebridge.webhookTag" .) .Values.agent.image.tag | toString -}}
{{- end }}

{{/*
The webhook image.
*/}}
{{- define "rolebridge.webhookImage" -}}
{{- $i := .Values.image -}}
{{- include "rolebridge.imageRef" (dict "registry" $i.registry "repository" $i.repository "tag" (include "rolebridge.webhookTag" .) "digest" $i.digest) -}}
{{- end }}

{{/*
The agent image the webhook injects: registry and tag default to the webhook's, the digest never
does (it names one image).
*/}}
{{- define "rolebridge.agentImage" -}}
{{- $a := .Values.agent.image -}}
{{- $registry := $a.registry | default .Values.image.registry -}}
{{- include "rolebridge.imageRef" (dict "registry" $registry "repository" $a.repository "tag" (include "rolebridge.agentTag" .) "digest" $a.digest) -}}
{{- end }}

{{/*
Name of the status-writer Lease.
*/}}
{{- define "rolebridge.leaseName" -}}
{{- default (printf "%s-webhook" (include "rolebridge.fullname" .)) .Values.leaderElection.leaseName -}}
{{- end }}

{{/*
Bytes of a size as the webhook's flags take it (bytes, or Ki/Mi/Gi with an optional B).
Usage: include "rolebridge.sizeBytes" (list "limits.bodyBudget" .Values.limits.bodyBudget)
*/}}
{{- define "rolebridge.sizeBytes" -}}
{{- $name := index . 0 -}}
{{- $text := index . 1 | toString | trim -}}
{{- $m := regexFindAll "^([0-9]+)(B|Ki|KiB|Mi|MiB|Gi|GiB)?$" $text 1 -}}
{{- if not $m }}{{ fail (printf "%s: %q is not a size (bytes, or a number with Ki, Mi, Gi)" $name $text) }}{{ end -}}
{{- $number := regexReplaceAll "[^0-9]" $text "" | int64 -}}
{{- $unit := regexReplaceAll "^[0-9]+" $text "" | trimSuffix "B" -}}
{{- $scale := get (dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824) $unit -}}
{{- mul $number $scale -}}
{{- end }}

{{/*
Milliseconds of a duration as the webhook's flags take it (Go notation with ms/s/m/h, or plain
seconds). Usage: include "rolebridge.durationMs" (list "limits.idleTimeout" .Values.limits.idleTimeout)
*/}}
{{- define "rolebridge.durationMs" -}}
{{- $name := index . 0 -}}
{{- $text := index . 1 | toString | trim -}}
{{- if regexMatch "^[0-9]+$" $text -}}
{{- mul ($text | int64) 1000 -}}
{{- else if regexMatch "^([0-9]+(ms|s|m|h))+$" $text -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" $text -1 -}}
{{- $n := regexReplaceAll "[^0-9]" . "" | int64 -}}
{{- $u := regexReplaceAll "^[0-9]+" . "" -}}
{{- $total = add $total (mul $n (get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000) $u)) -}}
{{- end -}}
{{- $total -}}
{{- else -}}
{{- fail (printf "%s: %q is not a duration (e.g. 500ms, 2s, 1m30s)" $name $text) -}}
{{- end -}}
{{- end }}

{{/*
Bytes of a Kubernetes memory quantity (128Mi, 1Gi, 500M, 134217728, 0.5Gi).
*/}}
{{- define "rolebridge.quantityBytes" -}}
{{- $text := . | toString | trim -}}
{{- if not (regexMatch `^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$` $text) -}}
{{- fail (printf "resources.limits.memory: cannot read %q for the memory check (use e.g. 128Mi, 1Gi; or set limits.memoryCheck=false)" $text) -}}
{{- end -}}
{{- $number := regexFind `^[0-9]+(\.[0-9]+)?` $text | float64 -}}
{{- $unit := regexReplaceAll `^[0-9]+(\.[0-9]+)?` $text "" -}}
{{- $scale := get (dict "" 1.0 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0) $unit -}}
{{- mulf $number $scale | int64 -}}
{{- end }}

{{/*
Fails the render when the admission port's limits contradict each other or cannot fit the memory
limit. The estimate (bytes): 24 MiB base + 192 KiB per connection + body budget + 0.4 KiB per
expected binding; measured figures are in the chart README.
*/}}
{{- define "rolebridge.validateLimits" -}}
{{- $l := .Values.limits -}}
{{- $body := include "rolebridge.sizeBytes" (list "limits.maxBodySize" $l.maxBodySize) | int64 -}}
{{- $budget := include "rolebridge.sizeBytes" (list "limits.bodyBudget" $l.bodyBudget) | int64 -}}
{{- if lt $budget $body -}}
{{- fail (printf "limits.bodyBudget (%s) must hold at least one body of limits.maxBodySize (%s)" ($l.bodyBudget | toString) ($l.maxBodySize | toString)) -}}
{{- end -}}
{{- $head := include "rolebridge.durationMs" (list "limits.headerReadTimeout" $l.headerReadTimeout) | int64 -}}
{{- $request := include "rolebridge.durationMs" (list "limits.requestReadTimeout" $l.requestReadTimeout) | int64 -}}
{{- if gt $head $request -}}
{{- fail "limits.headerReadTimeout must not exceed limits.requestReadTimeout: the head is part of the request" -}}
{{- end -}}
{{- range $k := list "idleTimeout" "tlsHandshakeTimeout" -}}
{{- if eq (include "rolebridge.durationMs" (list (printf "limits.%s" $k) (get $l $k)) | int64) 0 -}}
{{- fail (printf "limits.%s must be greater than zero" $k) -}}
{{- end -}}
{{- end -}}
{{- $memory := dig "limits" "memory" "" (.Values.resources | default dict) -}}
{{- if and $l.memoryCheck $memory -}}
{{- $limit := include "rolebridge.quantityBytes" $memory | int64 -}}
{{- $perConnection := mul (int64 $l.maxConnections) 196608 -}}
{{- $bindings := div (mul (int64 $l.expectedBindings) 2048) 5 -}}
{{- $estimate := add 25165824 $perConnection $budget $bindings -}}
{{- if gt $estimate $limit -}}
{{- fail (printf "resources.limits.memory (%s) is below the estimated worst case of the admission port's limits, %d MiB = 24 MiB + limits.maxConnections (%d) x 192 KiB + limits.bodyBudget (%s) + limits.expectedBindings (%d) x 0.4 KiB. Raise the memory limit, or lower limits.maxConnections or limits.bodyBudget (chart README: Memory and the admission port's limits)" ($memory | toString) (div (add $estimate 1048575) 1048576) (int64 $l.maxConnections) ($l.bodyBudget | toString) (int64 $l.expectedBindings)) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
Name of the Secret holding the serving certificate (tls.crt, tls.key).
*/}}
{{- define "rolebridge.tlsSecretName" -}}
{{- if eq .Values.certs.mode "secret" }}
{{- required "certs.secret.name is required when certs.mode=secret" .Values.certs.secret.name }}
{{- else }}
{{- printf "%s-tls" (include "rolebridge.fullname" .) }}
{{- end }}
{{- end }}

{{/*
DNS names the API server may use for the webhook Service.
*/}}
{{- define "rolebridge.serviceDNSNames" -}}
{{- $svc := include "rolebridge.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end }}

{{/*
Namespaces never intercepted: kube-system, kube-node-lease, the release namespace, and extras.
*/}}
{{- define "rolebridge.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-node-lease" .Release.Namespace -}}
{{- range .Values.webhook.excludedNamespaces }}{{ $ns = append $ns . }}{{ end -}}
{{- $ns | uniq | toJson -}}
{{- end }}
