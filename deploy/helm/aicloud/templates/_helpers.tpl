{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "aicloud.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<chart> unless the release already contains it. */}}
{{- define "aicloud.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of one service's objects. Context: dict "root" $ "name" <service key>. */}}
{{- define "aicloud.componentName" -}}
{{- printf "%s-%s" (include "aicloud.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aicloud.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels common to every object. */}}
{{- define "aicloud.labels" -}}
helm.sh/chart: {{ include "aicloud.chart" . }}
app.kubernetes.io/name: {{ include "aicloud.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aicloud
{{- end }}

{{/* Selector labels of one service. Context: dict "root" $ "name" <service key>. */}}
{{- define "aicloud.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aicloud.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* All labels of one service's objects. Context: dict "root" $ "name" <service key>. */}}
{{- define "aicloud.componentLabels" -}}
{{ include "aicloud.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "aicloud.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aicloud.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository@digest when a digest is set (it wins over the tag), else
repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "aicloud.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- if not (regexMatch "^sha256:[a-f0-9]{64}$" $image.digest) }}
{{- fail (printf "image.digest must be sha256:<64 lowercase hex digits>, got %q" $image.digest) }}
{{- end }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag | toString) }}
{{- end }}
{{- end }}

{{/* Environment prefix of one service: AICLOUD_<MODULE>_. Context: the service's values. */}}
{{- define "aicloud.envPrefix" -}}
{{- printf "AICLOUD_%s_" (upper .module) }}
{{- end }}

{{/*
The non-secret environment of one service, as ConfigMap data.
Context: dict "root" $ "name" <service key> "svc" <service values>.
*/}}
{{- define "aicloud.configData" -}}
{{- $root := .root }}
{{- $svc := .svc }}
{{- $prefix := include "aicloud.envPrefix" $svc -}}
{{ $prefix }}NATS_URL: {{ required "nats.url is required" $root.Values.nats.url | quote }}
{{ $prefix }}STREAM_REPLICAS: {{ $root.Values.nats.streamReplicas | default 3 | quote }}
{{ $prefix }}HTTP_HOST: "0.0.0.0"
{{ $prefix }}HTTP_PORT: {{ $svc.port | quote }}
{{ $prefix }}LOG_LEVEL: {{ $root.Values.logLevel | quote }}
{{- with $root.Values.otlpEndpoint }}
{{ $prefix }}OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- if eq $svc.module "provisioner" }}
{{ $prefix }}TEMPORAL_ADDRESS: {{ required "temporal.address is required" $root.Values.temporal.address | quote }}
{{ $prefix }}TEMPORAL_NAMESPACE: {{ $root.Values.temporal.namespace | quote }}
{{ $prefix }}TASK_QUEUE: {{ $root.Values.temporal.taskQueue | quote }}
{{ $prefix }}BACKEND: {{ $root.Values.engine.kind | quote }}
{{- if eq $root.Values.engine.kind "ray" }}
{{ $prefix }}RAY_ADDRESS: {{ required "engine.rayAddress is required with engine.kind ray" $root.Values.engine.rayAddress | quote }}
{{ $prefix }}PLACEMENT_TIMEOUT_S: {{ $root.Values.engine.placementTimeoutS | quote }}
{{- end }}
{{- end }}
{{- range $key, $value := $svc.env }}
{{ $prefix }}{{ upper $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
