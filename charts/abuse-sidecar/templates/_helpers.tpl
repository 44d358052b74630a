{{/*
Names, labels, the image reference, the sidecar container and the checks that refuse
contradictory values. Every template includes "abuse-sidecar.validate" through the labels,
so a bad combination fails `helm template`/`helm install` with an actionable message.
*/}}

{{- define "abuse-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "abuse-sidecar.fullname" -}}
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

{{- define "abuse-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The component of the pods: the sidecar on its own, or the Envoy gateway. */}}
{{- define "abuse-sidecar.component" -}}
{{- if eq .Values.mode "sidecar" }}gateway{{ else }}sidecar{{ end }}
{{- end }}

{{- define "abuse-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "abuse-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ include "abuse-sidecar.component" . }}
{{- end }}

{{- define "abuse-sidecar.labels" -}}
{{- include "abuse-sidecar.validate" . -}}
helm.sh/chart: {{ include "abuse-sidecar.chart" . }}
{{ include "abuse-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: abuse-sidecar
{{- end }}

{{- define "abuse-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "abuse-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "abuse-sidecar.image" -}}
{{- $repository := required "image.repository is required" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "abuse-sidecar.redisName" -}}
{{- printf "%s-redis" (include "abuse-sidecar.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret and key holding the Redis password, or nothing when Redis has no password. */}}
{{- define "abuse-sidecar.redisSecretName" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else if .Values.redis.enabled }}
{{- include "abuse-sidecar.redisName" . }}
{{- end }}
{{- end }}

{{/* The Redis URL without its password; the password is spliced in through $(REDIS_PASSWORD). */}}
{{- define "abuse-sidecar.redisUrl" -}}
{{- if .Values.redis.enabled -}}
redis://:$(REDIS_PASSWORD)@{{ include "abuse-sidecar.redisName" . }}.{{ .Release.Namespace }}.svc:6379/0
{{- else if and .Values.redis.url .Values.redis.existingSecret -}}
{{- $parts := regexSplit "://" .Values.redis.url 2 -}}
{{ index $parts 0 }}://:$(REDIS_PASSWORD)@{{ index $parts 1 }}
{{- else -}}
{{ .Values.redis.url }}
{{- end }}
{{- end }}

{{/* Where the sidecar's gRPC workers listen: localhost beside Envoy, all interfaces otherwise. */}}
{{- define "abuse-sidecar.grpcHost" -}}
{{- if eq .Values.mode "sidecar" }}127.0.0.1{{ else }}0.0.0.0{{ end }}
{{- end }}

{{/* Refuse contradictions with a message that says what to change. */}}
{{- define "abuse-sidecar.validate" -}}
{{- $v := .Values }}
{{- if and $v.redis.enabled $v.redis.url }}
{{- fail "redis.enabled (bundled Redis) and redis.url (an existing Redis) contradict each other: set one of them" }}
{{- end }}
{{- if and $v.redis.existingSecret (not (or $v.redis.enabled $v.redis.url)) }}
{{- fail "redis.existingSecret is set but no Redis is: set redis.url (existing Redis) or redis.enabled (bundled)" }}
{{- end }}
{{- if and $v.redis.url (regexMatch "^[a-z+]+://[^/]*@" $v.redis.url) }}
{{- fail "redis.url must not carry credentials: put the password in a Secret and name it in redis.existingSecret" }}
{{- end }}
{{- if and $v.geoip.files (not $v.geoip.volume) }}
{{- fail "geoip.files lists databases but geoip.volume is empty: give the volume that holds them" }}
{{- end }}
{{- if and $v.geoip.volume (not $v.geoip.files) }}
{{- fail "geoip.volume is set but geoip.files is empty: list the .mmdb files to load from it" }}
{{- end }}
{{- if and (eq $v.mode "sidecar") (not $v.envoy.upstream.host) }}
{{- fail "mode sidecar puts Envoy in front of your upstream: set envoy.upstream.host (and envoy.upstream.port)" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) is above autoscaling.maxReplicas (%v)" $v.autoscaling.minReplicas $v.autoscaling.maxReplicas) }}
{{- end }}
{{- if and $v.pdb.enabled (ne (toString $v.pdb.minAvailable) "") (not $v.autoscaling.enabled) }}
{{- if ge (int $v.pdb.minAvailable) (int $v.replicaCount) }}
{{- fail (printf "pdb.minAvailable (%v) must be below replicaCount (%v), or no node could ever be drained" $v.pdb.minAvailable $v.replicaCount) }}
{{- end }}
{{- end }}
{{- if and $v.smtp.from (not $v.smtp.existingSecret) }}
{{- fail "smtp.from is set but smtp.existingSecret (the Secret with the SMTP URL) is not" }}
{{- end }}
{{- if ne (len $v.watchNamespaces) (len (uniq $v.watchNamespaces)) }}
{{- fail "watchNamespaces lists a namespace twice" }}
{{- end }}
{{- end }}

{{/* The abuse-sidecar container: the same in both modes, only the gRPC bind address differs. */}}
{{- define "abuse-sidecar.container" -}}
- name: abuse-sidecar
  image: {{ include "abuse-sidecar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - serve
    - --kubernetes
    {{- range .Values.watchNamespaces }}
    - --namespace={{ . }}
    {{- end }}
    - --grpc-listen={{ include "abuse-sidecar.grpcHost" . }}:{{ .Values.grpcPort }}
    - --admin-listen=0.0.0.0:{{ .Values.adminPort }}
    - --workers={{ .Values.workers }}
    - --log-format={{ .Values.logFormat }}
    {{- with .Values.defaultPolicy }}
    - --default-policy={{ . }}
    {{- end }}
    {{- range .Values.geoip.files }}
    - --geoip={{ trimSuffix "/" $.Values.geoip.mountPath }}/{{ . }}
    {{- end }}
  env:
    # Leader election (status writes) names the Lease holder after the pod.
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- $redisSecret := include "abuse-sidecar.redisSecretName" . }}
    {{- if $redisSecret }}
    - name: REDIS_PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ $redisSecret }}
          key: {{ .Values.redis.existingSecretPasswordKey }}
    {{- end }}
    {{- if or .Values.redis.enabled .Values.redis.url }}
    - name: ABUSE_SIDECAR_REDIS_URL
      value: {{ include "abuse-sidecar.redisUrl" . | quote }}
    {{- end }}
    {{- with .Values.otlp.endpoint }}
    - name: ABUSE_SIDECAR_OTLP_ENDPOINT
      value: {{ . | quote }}
    {{- end }}
    {{- if .Values.smtp.existingSecret }}
    - name: ABUSE_SIDECAR_SMTP_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.smtp.existingSecret }}
          key: {{ .Values.smtp.existingSecretKey }}
    {{- end }}
    {{- with .Values.smtp.from }}
    - name: ABUSE_SIDECAR_SMTP_FROM
      value: {{ . | quote }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- range $i, $_ := until (int .Values.workers) }}
    - name: {{ if eq $i 0 }}grpc{{ else }}grpc-w{{ $i }}{{ end }}
      containerPort: {{ add $.Values.grpcPort $i }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ .Values.adminPort }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- include "abuse-sidecar.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if .Values.geoip.volume }}
    - name: geoip
      mountPath: {{ .Values.geoip.mountPath }}
      readOnly: true
    {{- end }}
{{- end }}

{{- define "abuse-sidecar.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "abuse-sidecar.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Scheduling and metadata shared by the pods of both modes. */}}
{{- define "abuse-sidecar.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "abuse-sidecar.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.geoip.volume }}
- name: geoip
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Read policies, Services and API-key Secrets; write AbusePolicy status only. */}}
{{- define "abuse-sidecar.watchRules" -}}
- apiGroups: ["abuse.sidecar.dev"]
  resources: ["abusepolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["abuse.sidecar.dev"]
  resources: ["abusepolicies/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["services", "secrets"]
  verbs: ["get", "list", "watch"]
{{- end }}
