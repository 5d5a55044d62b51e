{{/* The chart's name, or nameOverride. */}}
{{- define "smtp-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: fullnameOverride, else the release name when it
already holds the chart's name, else release-chart. Kept short enough for
the pods' names (name-N) and their DNS labels.
*/}}
{{- define "smtp-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels that select the exporter's pods. */}}
{{- define "smtp-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smtp-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "smtp-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "smtp-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ConfigMap of the configuration: the chart's or existingConfigMap. */}}
{{- define "smtp-exporter.configMapName" -}}
{{- if .Values.existingConfigMap }}
{{- .Values.existingConfigMap }}
{{- else }}
{{- include "smtp-exporter.fullname" . }}-config
{{- end }}
{{- end }}

{{/*
smtp_exporter.yml as text: config as a string or a map, else the shipped
configuration.
*/}}
{{- define "smtp-exporter.config" -}}
{{- if and .Values.config (kindIs "string" .Values.config) }}
{{- .Values.config }}
{{- else if .Values.config }}
{{- toYaml .Values.config }}
{{- else }}
{{- .Files.Get "files/smtp_exporter.yml" }}
{{- end }}
{{- end }}

{{/* The image, its tag defaulting to the chart's appVersion. */}}
{{- define "smtp-exporter.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
host:port of replica N through the headless Service; the Probes of shard N
send their scrapes there. Takes (list $ N).
*/}}
{{- define "smtp-exporter.replicaAddress" -}}
{{- $ := index . 0 }}
{{- $fullname := include "smtp-exporter.fullname" $ }}
{{- printf "%s-%d.%s.%s.svc:9465" $fullname (index . 1 | int) $fullname $.Release.Namespace }}
{{- end }}
