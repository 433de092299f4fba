{{/* The release's name for its objects: "remora", or RELEASE-remora. */}}
{{- define "remora.fullname" -}}
{{- if contains "remora" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-remora" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "remora.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: remora
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The control plane's pods: the injector never injects these. */}}
{{- define "remora.selector" -}}
app.kubernetes.io/name: remora-control-plane
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "remora.image" -}}
{{- $root := index . 0 -}}{{- $name := index . 1 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry $name ($root.Values.image.tag | default $root.Chart.AppVersion) -}}
{{- end -}}

{{/* The control plane's Service: xDS and the CA at PORT 15010. */}}
{{- define "remora.xdsAddress" -}}
{{- printf "%s.%s.svc:15010" (include "remora.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "remora.webhookService" -}}
{{- printf "%s-webhook" (include "remora.fullname" .) -}}
{{- end -}}

{{- define "remora.webhookConfiguration" -}}
{{- printf "%s-sidecar-injector" (include "remora.fullname" .) -}}
{{- end -}}
