{{/* Shared pieces of every guardstream workload. Workload files stay explicit; these helpers
hold only what must be identical everywhere (labels, env, security, volumes). */}}

{{- define "guardstream.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* A component's own image when it sets one (the scorer's CUDA build), else the shared one:
(dict "root" $ "image" .Values.scorer.image) */}}
{{- define "guardstream.componentImage" -}}
{{- $own := .image | default dict -}}
{{- if $own.repository -}}
{{ $own.repository }}:{{ $own.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- else -}}
{{ include "guardstream.image" .root }}
{{- end }}
{{- end }}

{{- define "guardstream.labels" -}}
app.kubernetes.io/name: guardstream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "triage") */}}
{{- define "guardstream.selectorLabels" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "guardstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default .Release.Name }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* The consumer group a process joins (mirrors Settings.group_id). */}}
{{- define "guardstream.group" -}}
{{- if .root.Values.namespace -}}
{{ .root.Values.namespace }}.guardstream-{{ .process }}
{{- else -}}
guardstream-{{ .process }}
{{- end }}
{{- end }}

{{/* A physical topic name (mirrors core.topics.topic_name). */}}
{{- define "guardstream.topic" -}}
{{- if .root.Values.namespace -}}
{{ .root.Values.namespace }}.{{ .topic }}
{{- else -}}
{{ .topic }}
{{- end }}
{{- end }}

{{- define "guardstream.policyEnabled" -}}
{{- if or .Values.policy.packs .Values.policy.existingConfigMap }}true{{ end }}
{{- end }}

{{/* Environment every process gets. Secrets only by reference. */}}
{{- define "guardstream.env" -}}
- name: KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.saslMechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- with .Values.kafka.existingSecret }}
- name: KAFKA_SASL_USERNAME
  valueFrom: { secretKeyRef: { name: {{ . }}, key: username } }
- name: KAFKA_SASL_PASSWORD
  valueFrom: { secretKeyRef: { name: {{ . }}, key: password } }
{{- end }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.secretKey }}
- name: GUARDSTREAM_MODEL
  value: {{ .Values.model | quote }}
- name: GUARDSTREAM_NAMESPACE
  value: {{ .Values.namespace | quote }}
- name: GUARDSTREAM_TOPIC_REPLICATION
  value: {{ .Values.topicReplication | quote }}
- name: GUARDSTREAM_HEALTH_PORT
  value: {{ .Values.healthPort | quote }}
# Processes listen on 127.0.0.1 unless told otherwise: probes and scrapes come from outside.
- name: GUARDSTREAM_LISTEN_HOST
  value: "0.0.0.0"
{{- include "guardstream.retentionEnv" . }}
- name: GUARDSTREAM_DLQ_PAYLOAD_MAX_BYTES
  value: {{ .Values.dlq.payloadMaxBytes | quote }}
- name: GUARDSTREAM_DLQ_REDACT
  value: {{ .Values.dlq.redact | quote }}
- name: GUARDSTREAM_REVIEW_HOST
  value: "0.0.0.0"
- name: GUARDSTREAM_METRICS_PORT
  value: {{ .Values.metricsPort | quote }}
- name: GUARDSTREAM_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
# The root filesystem is read-only: libraries that write under $HOME write to the /tmp emptyDir.
- name: HOME
  value: /tmp
{{- if include "guardstream.policyEnabled" . }}
- name: GUARDSTREAM_POLICY_DIR
  value: {{ .Values.policy.mountPath | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "guardstream.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgresql.existingSecret }}
      key: {{ .Values.postgresql.secretKey }}
{{- end }}

{{- define "guardstream.probes" -}}
livenessProbe:
  httpGet: { path: /healthz, port: health }
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: { path: /readyz, port: health }
  periodSeconds: 5
  failureThreshold: 3
{{- end }}

{{- define "guardstream.ports" -}}
- { name: health, containerPort: {{ .Values.healthPort }} }
- { name: metrics, containerPort: {{ .Values.metricsPort }} }
{{- end }}

{{/* Pod-level fields shared by every workload: (dict "root" $ "v" .Values.triage) */}}
{{- define "guardstream.podCommon" -}}
serviceAccountName: {{ include "guardstream.serviceAccountName" .root }}
automountServiceAccountToken: false
securityContext: {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "guardstream.podAnnotations" -}}
{{- if include "guardstream.policyEnabled" .root }}
checksum/policy: {{ toYaml .root.Values.policy | sha256sum }}
{{- end }}
{{- with .v.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "guardstream.volumeMounts" -}}
- { name: tmp, mountPath: /tmp }
{{- if include "guardstream.policyEnabled" . }}
- { name: policy, mountPath: {{ .Values.policy.mountPath }}, readOnly: true }
{{- end }}
{{- end }}

{{- define "guardstream.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if include "guardstream.policyEnabled" . }}
- name: policy
  configMap:
    name: {{ .Values.policy.existingConfigMap | default (printf "%s-policy" .Release.Name) }}
{{- end }}
{{- end }}

{{/* Resources with the GPU count merged into requests and limits: (dict "resources" .. "gpus" n) */}}
{{- define "guardstream.gpuResources" -}}
{{- $r := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $r "requests" (merge (dict "nvidia.com/gpu" (int .gpus)) ($r.requests | default dict)) -}}
{{- $_ := set $r "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) ($r.limits | default dict)) -}}
{{- end -}}
{{ toYaml $r }}
{{- end }}

{{/* Shared ReadWriteMany storage: the LoRA adapter registry and the feedback archive. */}}
{{- define "guardstream.sharedClaim" -}}
{{ .Values.sharedStorage.existingClaim | default (printf "%s-shared" .Release.Name) }}
{{- end }}

{{/* Env naming the shared directories a process uses:
(dict "root" $ "adapters" true "archive" true) */}}
{{- define "guardstream.sharedEnv" -}}
{{- $s := .root.Values.sharedStorage -}}
{{- if $s.enabled -}}
{{- if eq $s.adapterDir $s.feedbackDir -}}
{{- fail "sharedStorage.adapterDir and sharedStorage.feedbackDir must be different directories" -}}
{{- end -}}
{{- if .adapters }}
- name: GUARDSTREAM_ADAPTER_DIR
  value: {{ printf "%s/%s" $s.mountPath $s.adapterDir | quote }}
{{- end }}
{{- if .archive }}
- name: GUARDSTREAM_FEEDBACK_DIR
  value: {{ printf "%s/%s" $s.mountPath $s.feedbackDir | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The shared claim's mount: (dict "root" $ "readOnly" true) for processes that only read. */}}
{{- define "guardstream.sharedMount" -}}
{{- if .root.Values.sharedStorage.enabled }}
- { name: shared, mountPath: {{ .root.Values.sharedStorage.mountPath }}{{ if .readOnly }}, readOnly: true{{ end }} }
{{- end }}
{{- end }}

{{- define "guardstream.sharedVolume" -}}
{{- if .Values.sharedStorage.enabled }}
- name: shared
  persistentVolumeClaim:
    claimName: {{ include "guardstream.sharedClaim" . }}
{{- end }}
{{- end }}

{{/* Retention by store (values `retention`), the same in every pod. */}}
{{- define "guardstream.retentionEnv" -}}
{{- $r := .Values.retention }}
- name: GUARDSTREAM_RETENTION_POST_TEXT_DAYS
  value: {{ $r.postTextDays | quote }}
- name: GUARDSTREAM_RETENTION_OUTBOX_DAYS
  value: {{ $r.outboxDays | quote }}
- name: GUARDSTREAM_RETENTION_AUDIT_DAYS
  value: {{ $r.auditDays | quote }}
- name: GUARDSTREAM_RETENTION_ARCHIVE_DAYS
  value: {{ $r.archiveDays | quote }}
- name: GUARDSTREAM_RETENTION_DLQ_DAYS
  value: {{ $r.dlqDays | quote }}
{{- with $r.topicDays }}
- name: GUARDSTREAM_RETENTION_TOPIC_DAYS
  value: {{ . | quote }}
{{- end }}
{{- with $r.receiptsDir }}
- name: GUARDSTREAM_ERASURE_RECEIPTS_DIR
  value: {{ . | quote }}
{{- end }}
{{- end }}
