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

{{/* One service's ServiceAccount: named like its Deployment. Context: dict "root" $ "name" <key>. */}}
{{- define "aicloud.serviceAccountName" -}}
{{- include "aicloud.componentName" . }}
{{- end }}

{{/*
Whether one service calls the Kubernetes API and so gets a token and a Role: only the
provisioner, under engine.kind kubernetes. Context: dict "root" $ "name" <key>. Prints "true" or "".
*/}}
{{- define "aicloud.callsKubernetes" -}}
{{- if and (eq .name "provisioner") (eq .root.Values.engine.kind "kubernetes") }}true{{ end }}
{{- end }}

{{/*
How the services reach each other and Temporal: the URL settings the chart hands each one (to the
callee's Service) and whether it uses Temporal. The NetworkPolicies open exactly these edges.
*/}}
{{- define "aicloud.wiring" -}}
catalog:
  calls: {PROVISIONER_URL: provisioner, LEDGER_URL: cost-ledger}
provisioner:
  temporal: true
  calls: {CATALOG_URL: catalog}
agent-runtime:
  temporal: true
  calls: {CATALOG_URL: catalog, ROUTER_URL: inference-router}
observability-collector:
  calls: {ROUTER_URL: inference-router}
{{- end }}

{{/* One service's wiring (calls, temporal); empty when it has none. Context: dict "root" $ "name" <key>. */}}
{{- define "aicloud.serviceWiring" -}}
{{- $wiring := include "aicloud.wiring" .root | fromYaml }}
{{- toYaml (get $wiring .name | default dict) }}
{{- end }}

{{/* Labels selecting every pod of the release. */}}
{{- define "aicloud.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "aicloud.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
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
{{- $wiring := include "aicloud.serviceWiring" . | fromYaml }}
{{- if $wiring.temporal }}
{{ $prefix }}TEMPORAL_ADDRESS: {{ required "temporal.address is required" $root.Values.temporal.address | quote }}
{{ $prefix }}TEMPORAL_NAMESPACE: {{ $root.Values.temporal.namespace | quote }}
{{- end }}
{{- range $var, $callee := $wiring.calls }}
{{- $target := get $root.Values.services $callee }}
{{- if and $target $target.enabled }}
{{ $prefix }}{{ $var }}: {{ printf "http://%s:%v" (include "aicloud.componentName" (dict "root" $root "name" $callee)) $target.port | quote }}
{{- end }}
{{- end }}
{{- if eq .name "provisioner" }}
{{ $prefix }}TASK_QUEUE: {{ $root.Values.temporal.taskQueue | quote }}
{{ $prefix }}BACKEND: {{ $root.Values.engine.kind | quote }}
{{- if eq $root.Values.engine.kind "ray" }}
{{ $prefix }}RAY_ADDRESS: {{ required "engine.rayAddress is required with engine.kind ray" $root.Values.engine.rayAddress | quote }}
{{ $prefix }}PLACEMENT_TIMEOUT_S: {{ $root.Values.engine.placementTimeoutS | quote }}
{{- end }}
{{- if $root.Values.notebookProxy.enabled }}
{{ $prefix }}NOTEBOOK_PROXY_HOST: "0.0.0.0"
{{ $prefix }}NOTEBOOK_PROXY_PORT: {{ $root.Values.notebookProxy.port | quote }}
{{- end }}
{{- end }}
{{- range $key, $value := $svc.env }}
{{ $prefix }}{{ upper $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/*
checkov skips on one service's Deployment, each with its reason (values.yaml lists them too).
Context: dict "root" $ "name" <service key>.
*/}}
{{- define "aicloud.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_35=settings are read from AICLOUD_<SERVICE>_* variables; secret ones come from Secrets by secretKeyRef
{{- if include "aicloud.callsKubernetes" . }}
checkov.io/skip2: CKV_K8S_38=the provisioner creates its jobs through the API server, with a Role in the jobs namespace only
{{- end }}
{{- end }}

{{/*
The header and pod selector of one allow policy: one service's pods when "name" is set, else
every pod of the release. Context: dict "root" $ "policy" <name suffix> ["name" <service key>].
*/}}
{{- define "aicloud.policyHead" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ printf "%s-%s" (include "aicloud.fullname" .root) .policy }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- if .name }}
    {{- include "aicloud.componentLabels" . | nindent 4 }}
    {{- else }}
    {{- include "aicloud.labels" .root | nindent 4 }}
    {{- end }}
spec:
  podSelector:
    matchLabels:
      {{- if .name }}
      {{- include "aicloud.selectorLabels" . | nindent 6 }}
      {{- else }}
      {{- include "aicloud.releaseSelectorLabels" .root | nindent 6 }}
      {{- end }}
{{- end }}

{{/* An egress policy: context as policyHead plus "rules" (a list of NetworkPolicyEgressRule). */}}
{{- define "aicloud.egressRules" -}}
{{- range .rules }}
{{- if not .to }}
{{- fail (printf "networkPolicy: every egress rule of %s needs a non-empty `to` (an empty one allows every destination)" $.policy) }}
{{- end }}
{{- end }}
---
{{ include "aicloud.policyHead" . }}
  policyTypes: [Egress]
  egress:
    {{- toYaml .rules | nindent 4 }}
{{- end }}

{{/* An egress policy to one dependency: context as policyHead plus "dep" ({to, ports}). */}}
{{- define "aicloud.egressPolicy" -}}
{{- include "aicloud.egressRules" (merge (dict "rules" (list (dict "to" .dep.to "ports" .dep.ports))) .) }}
{{- end }}

{{/* An ingress policy: context as policyHead plus "from" (peers) and "ports". */}}
{{- define "aicloud.ingressPolicy" -}}
{{- if not .from }}
{{- fail (printf "networkPolicy: %s needs a non-empty `from` (an empty one admits everyone)" .policy) }}
{{- end }}
---
{{ include "aicloud.policyHead" . }}
  policyTypes: [Ingress]
  ingress:
    - from:
        {{- toYaml .from | nindent 8 }}
      ports:
        {{- toYaml .ports | nindent 8 }}
{{- end }}
