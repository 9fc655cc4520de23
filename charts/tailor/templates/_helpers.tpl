{{/* Names and labels shared by the templates. */}}

{{- define "tailor.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tailor.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tailor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tailor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tailor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include with (list . "agent"). */}}
{{- define "tailor.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tailor.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tailor.agentName" -}}
{{- printf "%s-agent" (include "tailor.fullname" .) -}}
{{- end -}}

{{- define "tailor.operatorName" -}}
{{- printf "%s-operator" (include "tailor.fullname" .) -}}
{{- end -}}

{{/* The agent pods' selector labels as k=v,k=v (tailor operator --agent-selector). */}}
{{- define "tailor.agentSelector" -}}
{{- $labels := include "tailor.selectorLabels" (list . "agent") | fromYaml -}}
{{- $parts := list -}}
{{- range $k, $v := $labels }}{{ $parts = append $parts (printf "%s=%s" $k $v) }}{{ end -}}
{{- join "," $parts -}}
{{- end }}
