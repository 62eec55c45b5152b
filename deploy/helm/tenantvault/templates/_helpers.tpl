{{/* Chart name, at most 63 characters. */}}
{{- define "tenantvault.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Release-qualified name. The drill CronJob is named <fullname>-drill; the
drill alerts select names containing "tenantvault-drill", which this keeps
unless fullnameOverride drops "tenantvault".
*/}}
{{- define "tenantvault.fullname" -}}
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

{{- define "tenantvault.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tenantvault.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component (agent, drill, restore). */}}
{{- define "tenantvault.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tenantvault.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tenantvault.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "tenantvault.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tenantvault.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The repository URL of a one-off command: its own, or the agent's. */}}
{{- define "tenantvault.repository" -}}
{{- $repo := .repo | default .ctx.Values.agent.config.repository }}
{{- required "a repository URL is needed (agent.config.repository)" $repo }}
{{- end }}

{{/* S3 credentials from an existing Secret. */}}
{{- define "tenantvault.s3Env" -}}
{{- $secret := .secret | default .ctx.Values.secrets.s3.existingSecret }}
{{- if $secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .ctx.Values.secrets.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .ctx.Values.secrets.s3.secretAccessKeyKey }}
{{- end }}
{{- end }}
