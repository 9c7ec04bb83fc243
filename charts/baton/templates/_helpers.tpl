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
