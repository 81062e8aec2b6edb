{{/* Full name of the release's objects: at most 40 characters, so that every name built
from it (`-redis-url`, `-leader`, `-example-backend`, ...) stays within 63. */}}
{{- define "kubesbc.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Label value of the release (label values are at most 63 characters). */}}
{{- define "kubesbc.instance" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Namespace of the Redis URL Secret. */}}
{{- define "kubesbc.redisSecretNamespace" -}}
{{- default .Release.Namespace .Values.redis.urlSecretNamespace -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "kubesbc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ include "kubesbc.instance" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels selecting the operator pods. */}}
{{- define "kubesbc.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ include "kubesbc.instance" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Service account of the operator. */}}
{{- define "kubesbc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubesbc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
