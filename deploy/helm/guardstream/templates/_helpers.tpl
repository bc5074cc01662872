{{- define "guardstream.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "guardstream.labels" -}}
app.kubernetes.io/name: guardstream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "guardstream.env" -}}
- name: KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: url
- name: GUARDSTREAM_MODEL
  value: {{ .Values.model | quote }}
- name: GUARDSTREAM_NAMESPACE
  value: {{ .Values.namespace | quote }}
- name: GUARDSTREAM_TOPIC_REPLICATION
  value: {{ .Values.topicReplication | quote }}
- name: GUARDSTREAM_HEALTH_PORT
  value: {{ .Values.healthPort | quote }}
{{- end }}

{{- define "guardstream.securityContext" -}}
runAsNonRoot: true
runAsUser: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{- define "guardstream.probes" -}}
livenessProbe:
  httpGet: { path: /healthz, port: health }
readinessProbe:
  httpGet: { path: /readyz, port: health }
{{- end }}
