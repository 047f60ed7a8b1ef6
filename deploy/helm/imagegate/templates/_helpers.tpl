{{/* Names and labels. */}}
{{- define "imagegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "imagegate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "imagegate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "imagegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one role: (dict "root" $ "role" "security"). */}}
{{- define "imagegate.selector" -}}
app.kubernetes.io/name: {{ include "imagegate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/* Pod labels of one role: the selector and the release's. */}}
{{- define "imagegate.podLabels" -}}
{{ include "imagegate.selector" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "imagegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "imagegate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "imagegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secrets the services read: the given ones, or the dev ones the chart makes. */}}
{{- define "imagegate.pgSecret" -}}
{{- if .Values.devDependencies.enabled -}}{{ include "imagegate.fullname" . }}-dev{{- else -}}{{ required "postgresql.existingSecret is required (a Secret with the database URL)" .Values.postgresql.existingSecret }}{{- end -}}
{{- end -}}
{{- define "imagegate.s3Secret" -}}
{{- if .Values.devDependencies.enabled -}}{{ include "imagegate.fullname" . }}-dev{{- else -}}{{ required "s3.existingSecret is required (a Secret with the S3 keys)" .Values.s3.existingSecret }}{{- end -}}
{{- end -}}
{{- define "imagegate.s3Endpoint" -}}
{{- if .Values.devDependencies.enabled -}}http://{{ include "imagegate.fullname" . }}-minio:9000{{- else -}}{{ required "s3.endpoint is required" .Values.s3.endpoint }}{{- end -}}
{{- end -}}
{{- define "imagegate.kafkaBootstrap" -}}
{{- if .Values.devDependencies.enabled -}}{{ include "imagegate.fullname" . }}-kafka:9092{{- else -}}{{ required "kafka.bootstrap is required with kafka.enabled" .Values.kafka.bootstrap }}{{- end -}}
{{- end -}}
{{- define "imagegate.keySecret" -}}
{{- if .Values.signingKey.existingSecret -}}{{ .Values.signingKey.existingSecret }}{{- else if .Values.signingKey.generate -}}{{ include "imagegate.fullname" . }}-signing-key{{- else -}}{{ fail "signingKey.existingSecret is required when signingKey.generate is false" }}{{- end -}}
{{- end -}}

{{/* The S3 endpoint's scheme: http or https. */}}
{{- define "imagegate.s3Scheme" -}}
{{- $u := urlParse (include "imagegate.s3Endpoint" .) -}}
{{- if not (has $u.scheme (list "http" "https")) -}}{{ fail (printf "s3.endpoint must be http:// or https:// (got %q)" (include "imagegate.s3Endpoint" .)) }}{{- end -}}
{{- $u.scheme -}}
{{- end -}}

{{/* The S3 endpoint as the gateway's upstream: host:port. */}}
{{- define "imagegate.s3HostPort" -}}
{{- $u := urlParse (include "imagegate.s3Endpoint" .) -}}
{{- $default := ternary "443" "80" (eq (include "imagegate.s3Scheme" .) "https") -}}
{{- if contains ":" $u.host -}}{{ $u.host }}{{- else -}}{{ $u.host }}:{{ $default }}{{- end -}}
{{- end -}}

{{/* The Host header the gateway sends to S3: the one botocore signs the presigned URLs for,
which leaves out the scheme's default port (http://minio:80 is signed for "minio"). */}}
{{- define "imagegate.s3Host" -}}
{{- $default := ternary ":443" ":80" (eq (include "imagegate.s3Scheme" .) "https") -}}
{{- include "imagegate.s3HostPort" . | trimSuffix $default -}}
{{- end -}}

{{/* The name the gateway expects in S3's certificate (and sends as SNI). */}}
{{- define "imagegate.s3TlsName" -}}
{{- (urlParse (include "imagegate.s3Endpoint" .)).host | splitList ":" | first -}}
{{- end -}}

{{/* Trusted proxies in front of the gateway: the values, or the private ranges behind an
Ingress. */}}
{{- define "imagegate.trustedProxies" -}}
{{- $p := .Values.gateway.trustedProxies -}}
{{- if and (not $p) .Values.ingress.enabled -}}{{- $p = list "10.0.0.0/8" "172.16.0.0/12" "192.168.0.0/16" "fc00::/7" -}}{{- end -}}
{{- join " " $p -}}
{{- end -}}

{{/* Each of .items formatted with .format, space-separated (NGINX directives from a list). */}}
{{- define "imagegate.each" -}}
{{- $f := .format -}}
{{- $out := list -}}
{{- range .items }}{{ $out = append $out (printf $f .) }}{{ end -}}
{{- join " " $out -}}
{{- end -}}

{{/* The S3 port the NetworkPolicies allow: the pods' port after a Service's translation
(s3.podPort, a MinIO Tenant's 9000), or the endpoint's own port when s3.podPort is empty. */}}
{{- define "imagegate.s3Port" -}}
{{- if .Values.s3.podPort -}}{{ .Values.s3.podPort }}{{- else -}}{{- (include "imagegate.s3HostPort" .) | splitList ":" | last -}}{{- end -}}
{{- end -}}

{{/* The data dir: a folder the process creates (and chmods 0700) inside the "data" emptyDir
mounted at /data. Never the mount itself: the kubelet creates that root-owned, and
imagegate's chmod of it fails (EPERM) as uid 10001. */}}
{{- define "imagegate.dataDir" -}}/data/imagegate{{- end -}}

{{/* Env of every imagegate container. (dict "root" $ "role" "security"). */}}
{{- define "imagegate.env" -}}
{{- $v := .root.Values -}}
- name: IMAGEGATE_DATA_DIR
  value: {{ include "imagegate.dataDir" .root }}
- name: IMAGEGATE_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ include "imagegate.pgSecret" .root }}, key: {{ $v.postgresql.urlKey }}}
- name: IMAGEGATE_DATABASE_POOL_SIZE
  value: {{ $v.postgresql.poolSize | quote }}
- name: IMAGEGATE_STORAGE
  value: s3
- name: IMAGEGATE_S3_ENDPOINT
  value: {{ include "imagegate.s3Endpoint" .root | quote }}
- name: IMAGEGATE_S3_BUCKET
  value: {{ $v.s3.bucket | quote }}
- name: IMAGEGATE_S3_REGION
  value: {{ $v.s3.region | quote }}
- name: IMAGEGATE_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "imagegate.s3Secret" .root }}, key: {{ $v.s3.accessKeyKey }}}
- name: IMAGEGATE_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "imagegate.s3Secret" .root }}, key: {{ $v.s3.secretKeyKey }}}
{{- if $v.s3.caSecret }}
- name: AWS_CA_BUNDLE  # botocore's CA bundle for an https S3 with a private CA
  value: /etc/imagegate/s3-ca/ca.crt
{{- end }}
- name: IMAGEGATE_MIGRATE_ON_START
  value: "false"
- name: IMAGEGATE_TRUSTED_PROXIES
  value: {{ $v.config.trustedProxies | quote }}
- name: IMAGEGATE_ACCEL_REDIRECT_PREFIX
  value: /_storage
- name: IMAGEGATE_SHUTDOWN_GRACE_SECONDS
  value: {{ $v.config.shutdownGraceSeconds | quote }}
- name: IMAGEGATE_UPLOAD_MAX_BYTES
  value: {{ $v.config.uploadMaxBytes | int64 | quote }}
- name: IMAGEGATE_LOG_LEVEL
  value: {{ $v.config.logLevel | quote }}
{{- if $v.kafka.enabled }}
- name: IMAGEGATE_EVENTS
  value: kafka
- name: IMAGEGATE_KAFKA_BOOTSTRAP
  value: {{ include "imagegate.kafkaBootstrap" .root | quote }}
- name: IMAGEGATE_KAFKA_SECURITY_PROTOCOL
  value: {{ $v.kafka.securityProtocol | quote }}
- name: IMAGEGATE_KAFKA_SASL_MECHANISM
  value: {{ $v.kafka.saslMechanism | quote }}
- name: IMAGEGATE_KAFKA_TOPIC_PREFIX
  value: {{ $v.kafka.topicPrefix | quote }}
- name: IMAGEGATE_KAFKA_CONSUMER_GROUP
  value: {{ $v.kafka.consumerGroup | quote }}
{{- if $v.kafka.caSecret }}
- name: IMAGEGATE_KAFKA_CA_FILE
  value: /etc/imagegate/kafka-ca/ca.crt
{{- end }}
{{- $user := "" -}}
{{- if has .role (list "security" "uploader") }}{{ $user = $v.kafka.users.reader }}{{ end -}}
{{- if eq .role "relay" }}{{ $user = $v.kafka.users.relay }}{{ end -}}
{{- if eq .role "worker" }}{{ $user = $v.kafka.users.worker }}{{ end -}}
{{- if and $user (ne $v.kafka.securityProtocol "PLAINTEXT") (ne $v.kafka.securityProtocol "SSL") }}
- name: IMAGEGATE_KAFKA_USERNAME
  value: {{ $user.username | quote }}
- name: IMAGEGATE_KAFKA_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "kafka.users.*.existingSecret is required for %s" .role) $user.existingSecret }}
      key: {{ $user.passwordKey }}
{{- end }}
{{- else }}
- name: IMAGEGATE_EVENTS
  value: inline
{{- end }}
{{- if eq .role "security" }}
- name: IMAGEGATE_JWT_PRIVATE_KEY_FILE
  value: /etc/imagegate/keys/jwt-signing-key.pem
{{- end }}
{{- if and (has .role (list "security" "uploader")) $v.signingKey.existingSecret }}
- name: IMAGEGATE_JWT_PUBLIC_KEY_FILE
  value: /etc/imagegate/keys/jwt-public.pem
{{- else if eq .role "uploader" }}
- name: IMAGEGATE_JWT_PUBLIC_KEY_FILE
  value: /etc/imagegate/derived/jwt-public.pem
{{- end }}
{{- if eq .role "uploader" }}
- name: IMAGEGATE_CODEC_WORKERS
  value: {{ $v.uploader.codecWorkers | quote }}
- name: IMAGEGATE_CODEC_QUEUE
  value: {{ $v.uploader.codecQueue | quote }}
- name: IMAGEGATE_CODEC_MEMORY_MIB
  value: {{ $v.uploader.codecMemoryMib | quote }}
{{- end }}
{{- if and (eq .role "uploader") $v.variants.signingKeys.existingSecret }}
- name: IMAGEGATE_VARIANT_SIGNING_KEYS
  valueFrom:
    secretKeyRef: {name: {{ $v.variants.signingKeys.existingSecret }}, key: {{ $v.variants.signingKeys.key }}}
{{- end }}
{{- if has .role (list "uploader" "worker") }}
# Variant processes: the worker's make every upload's presets; the uploader's, missing ones on
# demand. Their memory ceiling is the codec workers' (IMAGEGATE_CODEC_MEMORY_MIB).
- name: IMAGEGATE_VARIANT_WORKERS
  value: {{ (index $v .role).variantWorkers | quote }}
{{- if eq .role "worker" }}
- name: IMAGEGATE_CODEC_MEMORY_MIB
  value: {{ $v.uploader.codecMemoryMib | quote }}
{{- end }}
{{- end }}
{{- range $name, $value := $v.config.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* The data dir's size. Uploader: two files (received, processed) per upload in progress,
and a copy of the original per variant made on demand (16 at once at most, see
variants/maker.py ON_DEMAND_MAX) plus each variant worker's outputs. Worker: per variant
worker, the original's copy and its outputs. (dict "root" $ "role" ROLE) */}}
{{- define "imagegate.dataSize" -}}
{{- $v := .root.Values -}}
{{- $max := $v.config.uploadMaxBytes -}}
{{- $bytes := 0 -}}
{{- if eq .role "uploader" -}}
{{- $uploads := add $v.uploader.codecWorkers $v.uploader.codecQueue -}}
{{- $bytes = add (mul 2 $max $uploads) (mul $max (add 16 $v.uploader.variantWorkers)) -}}
{{- else if eq .role "worker" -}}
{{- $bytes = mul 2 $max $v.worker.variantWorkers -}}
{{- end -}}
{{- printf "%dMi" (add (div $bytes 1048576) 256) -}}
{{- end -}}

{{- define "imagegate.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
{{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ $key }}
    whenUnsatisfiable: {{ $.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "imagegate.selector" $ | nindent 8 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The S3 CA (s3.caSecret) for the services and jobs: a volume mount and its volume. */}}
{{- define "imagegate.s3CaMount" -}}
{{- if .Values.s3.caSecret -}}
- {name: s3-ca, mountPath: /etc/imagegate/s3-ca, readOnly: true}
{{- end -}}
{{- end -}}
{{- define "imagegate.s3CaVolume" -}}
{{- if .Values.s3.caSecret -}}
- name: s3-ca
  secret:
    secretName: {{ .Values.s3.caSecret }}
    items:
      - {key: {{ .Values.s3.caKey }}, path: ca.crt}
{{- end -}}
{{- end -}}
