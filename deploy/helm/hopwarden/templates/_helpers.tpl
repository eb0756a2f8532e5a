{{/* The chart name, or nameOverride. */}}
{{- define "hopwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource names: <release>-<chart> (or the release alone when it already holds the chart name). */}}
{{- define "hopwarden.fullname" -}}
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

{{- define "hopwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hopwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hopwarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hopwarden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hopwarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hopwarden.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ConfigMap the policy directory is mounted from. */}}
{{- define "hopwarden.policiesConfigMap" -}}
{{- if .Values.policies.existingConfigMap }}
{{- .Values.policies.existingConfigMap }}
{{- else }}
{{- printf "%s-policies" (include "hopwarden.fullname" .) }}
{{- end }}
{{- end }}

{{/* config.drain_timeout in seconds ("10s" -> 10); the schema allows only whole seconds. */}}
{{- define "hopwarden.drainSeconds" -}}
{{- .Values.config.drain_timeout | trimSuffix "s" | atoi }}
{{- end }}

{{/*
hopwarden.yaml. The chart owns the listeners and the policy path (probes, Service
ports, NetworkPolicy and mounts depend on them); config.extra may add any other key.
Paths stay relative: hopwarden resolves them against the config's directory,
/etc/hopwarden, so `policies` is the mounted /etc/hopwarden/policies and a key file
mounted at /etc/hopwarden/keys is `keys/jwks.json`.
*/}}
{{- define "hopwarden.config" -}}
{{- $c := .Values.config }}
{{- range $key := list "listen" "http_listen" "admin" "policies" "drain_timeout" }}
{{- if hasKey $c.extra $key }}
{{- fail (printf "config.extra.%s is set by the chart (ports, httpService.enabled, the policy mount, config.drain_timeout): remove it" $key) }}
{{- end }}
{{- end }}
{{- if and (kindIs "map" $c.extra.listeners) (hasKey ($c.extra.listeners | default dict) "tls") }}
{{- fail "config.extra.listeners.tls is set by the chart from the tls values (tls.enabled, tls.secretName, ...): remove it" }}
{{- end }}
{{- if and .Values.tls.enabled .Values.tls.admin .Values.serviceMonitor.enabled }}
{{- fail "tls.admin with serviceMonitor.enabled: the ServiceMonitor scrapes plain HTTP, which the admin port would refuse; turn one of them off" }}
{{- end }}
{{- $services := dict }}
{{- with $c.services.by_spiffe }}{{ $_ := set $services "by_spiffe" . }}{{ end }}
{{- with $c.services.by_host }}{{ $_ := set $services "by_host" . }}{{ end }}
{{- with $c.services.by_spiffe_pattern }}{{ $_ := set $services "by_spiffe_pattern" . }}{{ end }}
{{- with $c.services.gateways }}{{ $_ := set $services "gateways" . }}{{ end }}
{{- $out := dict
  "listen" (printf "0.0.0.0:%d" (int .Values.ports.grpc))
  "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)))
  "policies" "policies"
  "drain_timeout" $c.drain_timeout
  "dynamic_metadata" $c.dynamic_metadata
  "cache" $c.cache
  "log" $c.log
  "decision_log" $c.decision_log
}}
{{- if .Values.httpService.enabled }}
{{- $_ := set $out "http_listen" (printf "0.0.0.0:%d" (int .Values.ports.http)) }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- /* The Secret's directory mount (deployment.yaml), relative to /etc/hopwarden. */}}
{{- $tls := dict
  "cert" "tls/tls.crt"
  "key" "tls/tls.key"
  "client_ca" "tls/ca.crt"
  "allowed_spiffe_ids" .Values.tls.allowedSpiffeIds
  "allowed_dns_names" .Values.tls.allowedDnsNames
  "reload_interval" .Values.tls.reloadInterval
}}
{{- $_ := set $out "listeners" (dict "tls" $tls) }}
{{- $_ := set $out.admin "tls" .Values.tls.admin }}
{{- end }}
{{- if $services }}{{ $_ := set $out "services" $services }}{{ end }}
{{- with $c.issuers }}{{ $_ := set $out "issuers" . }}{{ end }}
{{- if not (kindIs "invalid" $c.worker_threads) }}{{ $_ := set $out "worker_threads" $c.worker_threads }}{{ end }}
{{- $out = mergeOverwrite (deepCopy $out) (deepCopy $c.extra) }}
{{- toYaml $out }}
{{- end }}

{{/* Policy files from values: a string is written as it is, a map as YAML. */}}
{{- define "hopwarden.inlinePolicies" -}}
{{- range $file, $policy := .Values.policies.inline }}
{{ $file }}: |
{{- if kindIs "string" $policy }}
{{ $policy | indent 2 }}
{{- else }}
{{ toYaml $policy | indent 2 }}
{{- end }}
{{- end }}
{{- end }}
