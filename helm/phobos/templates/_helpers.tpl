{{/* Names, labels and the environment every Phobos container shares. */}}

{{- define "phobos.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "phobos.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "phobos.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "phobos.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels; call with (dict "ctx" $ "component" "api"). */}}
{{- define "phobos.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "phobos.selectorLabels" . }}
{{- end -}}

{{- define "phobos.selectorLabels" -}}
app.kubernetes.io/name: {{ include "phobos.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "phobos.image" -}}
{{- $img := index .ctx.Values.images .which -}}
{{- printf "%s:%s" $img.repository (default .ctx.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{- define "phobos.secretName" -}}
{{- include "phobos.fullname" . }}
{{- end -}}

{{- define "phobos.apiURL" -}}
{{- printf "http://%s-api.%s.svc:%v" (include "phobos.fullname" .) .Release.Namespace .Values.api.service.port -}}
{{- end -}}

{{- define "phobos.kafkaBrokers" -}}
{{- join "," .Values.kafka.brokers -}}
{{- end -}}

{{/* The tracer's sink: explicit, else Kafka when brokers are given, else the API. */}}
{{- define "phobos.tracerSink" -}}
{{- if .Values.tracer.sink -}}
{{- .Values.tracer.sink -}}
{{- else if .Values.kafka.brokers -}}
{{- printf "kafka://%s/%s" (include "phobos.kafkaBrokers" .) .Values.kafka.topic -}}
{{- else -}}
{{- include "phobos.apiURL" . -}}
{{- end -}}
{{- end -}}

{{/* Secret and key that hold the ClickHouse password. */}}
{{- define "phobos.clickhouseSecret" -}}
{{- if .Values.clickhouse.existingSecret -}}
{{- .Values.clickhouse.existingSecret -}}
{{- else -}}
{{- include "phobos.secretName" . -}}
{{- end -}}
{{- end -}}

{{- define "phobos.clickhouseSecretKey" -}}
{{- if .Values.clickhouse.existingSecret -}}
{{- .Values.clickhouse.existingSecretKey -}}
{{- else -}}
{{- print "clickhouse-password" -}}
{{- end -}}
{{- end -}}

{{/*
PHOBOS_STORE for pods that use the store. For ClickHouse the password comes
from a Secret into PHOBOS_CLICKHOUSE_PASSWORD and Kubernetes substitutes it
into the URL, so the URL itself holds no secret. Call with (dict "ctx" $
"secret" NAME) to read the password from another Secret (the migration hook).
*/}}
{{- define "phobos.storeEnv" -}}
{{- $ := .ctx -}}
{{- $v := $.Values -}}
# The root filesystem is read-only: anything that writes under $HOME writes to /tmp.
- name: HOME
  value: /tmp
{{- if eq $v.store.type "chdb" }}
- name: PHOBOS_STORE
  value: chdb:///var/lib/phobos/data
{{- else }}
- name: PHOBOS_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "phobos.clickhouseSecret" $) .secret }}
      key: {{ include "phobos.clickhouseSecretKey" $ }}
- name: PHOBOS_STORE
  value: {{ printf "clickhouse://%s:$(PHOBOS_CLICKHOUSE_PASSWORD)@%s:%d/%s%s" (urlquery $v.clickhouse.user) $v.clickhouse.host (int64 $v.clickhouse.port) $v.clickhouse.database (ternary "?secure=1" "" $v.clickhouse.secure) | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.store.ttlDays) }}
- name: PHOBOS_TTL_DAYS
  value: {{ $v.store.ttlDays | int64 | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.store.spanTtlHours) }}
- name: PHOBOS_SPAN_TTL_HOURS
  value: {{ $v.store.spanTtlHours | int64 | quote }}
{{- end }}
{{- end -}}

{{/* librdkafka settings (PHOBOS_KAFKA_* -> security.protocol, sasl.*, ssl.*). */}}
{{- define "phobos.kafkaEnv" -}}
{{- $k := .Values.kafka -}}
{{- if or $k.tls.enabled $k.sasl.enabled }}
- name: PHOBOS_KAFKA_SECURITY_PROTOCOL
  value: {{ if and $k.tls.enabled $k.sasl.enabled }}SASL_SSL{{ else if $k.tls.enabled }}SSL{{ else }}SASL_PLAINTEXT{{ end }}
{{- end }}
{{- if $k.tls.enabled }}
- name: PHOBOS_KAFKA_SSL_CA_LOCATION
  value: /etc/phobos/kafka-tls/{{ $k.tls.caKey }}
{{- if $k.tls.certKey }}
- name: PHOBOS_KAFKA_SSL_CERTIFICATE_LOCATION
  value: /etc/phobos/kafka-tls/{{ $k.tls.certKey }}
- name: PHOBOS_KAFKA_SSL_KEY_LOCATION
  value: /etc/phobos/kafka-tls/{{ $k.tls.keyKey }}
{{- end }}
{{- end }}
{{- if $k.sasl.enabled }}
- name: PHOBOS_KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism }}
- name: PHOBOS_KAFKA_SASL_USERNAME
  value: {{ $k.sasl.username | quote }}
- name: PHOBOS_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "phobos.secretName" .) $k.sasl.existingSecret }}
      key: {{ ternary $k.sasl.existingSecretKey "kafka-sasl-password" (ne $k.sasl.existingSecret "") }}
{{- end }}
{{- end -}}

{{- define "phobos.kafkaVolumeMount" -}}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  mountPath: /etc/phobos/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "phobos.kafkaVolume" -}}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "phobos.tokenSecret" -}}
{{- default (include "phobos.secretName" .) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "phobos.tokenKey" -}}
{{- ternary .Values.auth.existingSecretKey "token" (ne .Values.auth.existingSecret "") -}}
{{- end -}}

{{- define "phobos.catalogConfigMap" -}}
{{- default (printf "%s-catalog" (include "phobos.fullname" .)) .Values.catalog.existingConfigMap -}}
{{- end -}}

{{- define "phobos.hasCatalog" -}}
{{- if or .Values.catalog.content .Values.catalog.existingConfigMap }}true{{ end -}}
{{- end -}}

{{/* Security context of the API-image pods (API, ingest, jobs). */}}
{{- define "phobos.apiPodSecurity" -}}
securityContext:
  {{- toYaml .Values.api.podSecurityContext | nindent 2 }}
{{- end -}}
