{{/* Common labels of every object of the release. */}}
{{- define "baton.labels" -}}
app.kubernetes.io/name: baton
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Name prefix of the release's objects. */}}
{{- define "baton.fullname" -}}
{{- if contains "baton" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-baton" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "baton.operatorName" -}}{{ include "baton.fullname" . }}-operator{{- end -}}
{{- define "baton.agentName" -}}{{ include "baton.fullname" . }}-agent{{- end -}}

{{/* repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "baton.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository (toString $tag) -}}
{{- end -}}

{{/*
Placement and security of an operator pod, shared by the Deployment and the
uninstall hook Job (which must run wherever the operator can run and reach
the API server the same way). Indented for a pod spec.
*/}}
{{- define "baton.operatorPodSpec" -}}
{{- $op := .Values.operator -}}
serviceAccountName: {{ include "baton.operatorName" . }}
{{- with $op.nodeName }}
nodeName: {{ . }}
{{- end }}
{{- if $op.hostNetwork }}
hostNetwork: true
# Cluster DNS still resolves names on the host network.
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with $op.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $op.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $op.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* The operator container's env beyond its own: API server address, then operator.env. */}}
{{- define "baton.operatorExtraEnv" -}}
{{- $op := .Values.operator -}}
{{- if $op.apiServer.host }}
# Set explicitly, they override the kubelet's service env, which points at a
# ClusterIP that nothing may route (no kube-proxy).
- name: KUBERNETES_SERVICE_HOST
  value: {{ $op.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $op.apiServer.port | quote }}
{{- end }}
{{- with $op.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The operator container's security context. */}}
{{- define "baton.operatorContainerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}
