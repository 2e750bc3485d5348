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
Image reference from {registry, repository, tag, digest}; the tag defaults to appVersion.
Usage: include "rolebridge.image" (dict "image" .Values.image "root" .)
*/}}
{{- define "rolebridge.image" -}}
{{- $img := .image -}}
{{- $tag := default .root.Chart.AppVersion $img.tag | toString -}}
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $img.repository }}{{ end -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $repo $tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
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
