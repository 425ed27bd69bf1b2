{{/* The release's base name: "llm-weaver" for a release called that (or containing it), else "<release>-llm-weaver". */}}
{{- define "weaver.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "weaver.operator" -}}{{ include "weaver.fullname" . }}-operator{{- end -}}
{{- define "weaver.gateway" -}}{{ include "weaver.fullname" . }}-gateway{{- end -}}

{{- define "weaver.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: llm-weaver
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-weaver
{{- end -}}

{{/* Selector labels of one component ("operator" or "gateway"): .root is the chart context. */}}
{{- define "weaver.selector" -}}
app.kubernetes.io/name: llm-weaver
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "weaver.componentLabels" -}}
{{ include "weaver.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "weaver.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{/* The operator's TLS Secret (CA and serving certificate). */}}
{{- define "weaver.tlsSecret" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "weaver.operator" .)) -}}
{{- end -}}

{{/* Names the serving certificate covers: the Service first (replicas verify the leader by it). */}}
{{- define "weaver.tlsSans" -}}
{{- $svc := include "weaver.operator" . -}}
{{- list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) "localhost" "127.0.0.1" | join "," -}}
{{- end -}}

{{- define "weaver.operatorUrl" -}}
https://{{ include "weaver.operator" . }}.{{ .Release.Namespace }}.svc:{{ .Values.operator.service.port }}
{{- end -}}

{{/* Postgres: the Secret and key holding the usage store's URL, when there is one. */}}
{{- define "weaver.storeSecret" -}}
{{- if eq .Values.store.type "postgres" -}}
{{- if .Values.store.postgres.cloudNativePG.enabled -}}
{{ include "weaver.fullname" . }}-db-app
{{- else -}}
{{ .Values.store.postgres.existingSecret.name }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "weaver.storeSecretKey" -}}
{{- if .Values.store.postgres.cloudNativePG.enabled -}}uri{{- else -}}{{ .Values.store.postgres.existingSecret.key }}{{- end -}}
{{- end -}}

{{/* Security context of every container: non-root, read-only root, no capabilities. */}}
{{- define "weaver.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "weaver.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The gateway's cluster-mode settings, shared by the Deployment and the
injected sidecar (.root: the chart context; .ca: where the operator's CA is). */}}
{{- define "weaver.gatewayEnv" -}}
- name: WEAVER_OPERATOR_URL
  value: {{ include "weaver.operatorUrl" .root | quote }}
- name: WEAVER_OPERATOR_CA
  value: {{ .ca }}
- name: WEAVER_TOKEN_FILE
  value: /var/run/secrets/llmweaver.io/token
- name: WEAVER_SHUTDOWN_GRACE
  value: {{ printf "%ds" (int .root.Values.gateway.shutdownGraceSeconds) | quote }}
- name: WEAVER_LOG_FORMAT
  value: json
- name: WEAVER_METRICS_PER_KEY
  value: {{ .root.Values.gateway.metricsPerKey | quote }}
{{- end -}}

{{/* Volumes every gateway (Deployment or sidecar) has: its projected token of
audience llm-weaver, only ca.crt of the operator's TLS Secret, and the snapshot cache. */}}
{{- define "weaver.gatewayVolumes" -}}
- name: token
  projected:
    sources:
      - serviceAccountToken:
          audience: llm-weaver
          expirationSeconds: 3600
          path: token
- name: operator-ca
  secret:
    secretName: {{ include "weaver.tlsSecret" . }}
    items:
      - key: ca.crt
        path: ca.crt
- name: cache
  emptyDir: {}
{{- end -}}

{{- define "weaver.dnsEgress" -}}
# DNS, wherever the cluster runs it.
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}

{{- define "weaver.cidrPeers" -}}
{{- range . }}
- ipBlock:
    cidr: {{ . }}
{{- end }}
{{- end -}}

{{- define "weaver.operatorWatchRules" -}}
- apiGroups: ["llmweaver.io"]
  resources: ["channels", "apikeys", "routingpolicies", "namespacepolicies"]
  verbs: ["list", "watch"]
- apiGroups: ["llmweaver.io"]
  resources: ["channels/status", "apikeys/status", "routingpolicies/status", "namespacepolicies/status"]
  verbs: ["patch"]
# The UI's disable/enable, for users whom RBAC lets patch the ApiKey (ui.rs).
- apiGroups: ["llmweaver.io"]
  resources: ["apikeys"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch", "create", "update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
