{{/* The chart's name, and the release's full name (63 characters at most). */}}
{{- define "etbridge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "etbridge.fullname" -}}
{{- if eq .Release.Name .Chart.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "etbridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "etbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "etbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "etbridge.secretName" -}}
{{- .Values.secrets.name | default (include "etbridge.fullname" .) -}}
{{- end -}}

{{- define "etbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "etbridge.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "etbridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The ConfigMap's data: the operator's settings plus the ones the chart owns. */}}
{{- define "etbridge.configData" -}}
ETBRIDGE_HEALTH_PORT: {{ .Values.healthPort | toString | quote }}
ETBRIDGE_METRICS_PORT: {{ .Values.metricsPort | toString | quote }}
ETBRIDGE_SHUTDOWN_GRACE: {{ .Values.shutdownGrace | toString | quote }}
{{- range $key, $value := .Values.config }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* What worker and beat containers share: settings, secret files, writable /tmp. */}}
{{- define "etbridge.containerCommon" -}}
image: {{ include "etbridge.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "etbridge.fullname" . }}
env:
  {{- range .Values.secrets.keys }}
  - name: {{ printf "%s_FILE" . }}
    value: {{ printf "%s/%s" $.Values.secrets.secretMountPath . | quote }}
  {{- end }}
volumeMounts:
  - name: secrets
    mountPath: {{ .Values.secrets.secretMountPath }}
    readOnly: true
  # Beat's schedule file and the metrics' multiprocess directory: the root is read-only.
  - name: tmp
    mountPath: /tmp
livenessProbe:
  httpGet: {path: /healthz, port: health}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: health}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
startupProbe:
  httpGet: {path: /healthz, port: health}
  periodSeconds: 2
  failureThreshold: 60
{{- end -}}

{{- define "etbridge.podCommon" -}}
serviceAccountName: {{ include "etbridge.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: secrets
    secret:
      secretName: {{ include "etbridge.secretName" . }}
      defaultMode: 0440
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
{{- end -}}
