{{/* Names */}}
{{- define "mlflow-stack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlflow-stack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The MLflow Service (internal) and its host:port, the proxy's upstream. */}}
{{- define "mlflow-stack.mlflowName" -}}{{ include "mlflow-stack.fullname" . }}-mlflow{{- end -}}

{{- define "mlflow-stack.secretName" -}}
{{- default (printf "%s-credentials" (include "mlflow-stack.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "mlflow-stack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlflow-stack.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels; pass (dict "ctx" $ "component" "proxy") */}}
{{- define "mlflow-stack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlflow-stack.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mlflow-stack.labels" -}}
{{ include "mlflow-stack.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: mlflow-stack
{{- end -}}

{{- define "mlflow-stack.image" -}}
{{- if .digest -}}{{ .repository }}@{{ .digest }}{{- else -}}{{ .repository }}:{{ .tag }}{{- end -}}
{{- end -}}

{{/* Host names MLflow and the proxy accept: the ingress/gateway hosts, the Service names. */}}
{{- define "mlflow-stack.allowedHosts" -}}
{{- $hosts := list -}}
{{- if .Values.ingress.enabled -}}{{- $hosts = append $hosts .Values.ingress.host -}}{{- end -}}
{{- if .Values.gateway.enabled -}}{{- $hosts = concat $hosts .Values.gateway.hostnames -}}{{- end -}}
{{- range list (include "mlflow-stack.fullname" .) (include "mlflow-stack.mlflowName" .) -}}
{{- $hosts = concat $hosts (list . (printf "%s.%s" . $.Release.Namespace) (printf "%s.%s.svc" . $.Release.Namespace) (printf "%s.%s.svc.%s" . $.Release.Namespace $.Values.clusterDomain)) -}}
{{- end -}}
{{- $out := list -}}
{{- range (concat (uniq $hosts) .Values.allowedHostsExtra) -}}
{{- $out = append $out . -}}
{{- if not (contains ":" .) -}}{{- $out = append $out (printf "%s:*" .) -}}{{- end -}}
{{- end -}}
{{- join "," (uniq $out) -}}
{{- end -}}

{{/* S3 settings shared by the proxy, MLflow and the jobs (credentials from the Secret). */}}
{{- define "mlflow-stack.s3Env" -}}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ required "s3.MLFLOW_S3_ENDPOINT_URL is required (e.g. https://s3.example.com)" .Values.s3.MLFLOW_S3_ENDPOINT_URL | quote }}
- name: MLFLOW_ARTIFACTS_DESTINATION
  value: {{ .Values.s3.MLFLOW_ARTIFACTS_DESTINATION | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.AWS_DEFAULT_REGION | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.secretName" . }}
      key: {{ .Values.secrets.keys.awsAccessKeyId }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.secretName" . }}
      key: {{ .Values.secrets.keys.awsSecretAccessKey }}
{{- if .Values.s3.caBundleConfigMap }}
- name: AWS_CA_BUNDLE
  value: /etc/ssl/s3/ca.crt
- name: SSL_CERT_FILE
  value: /etc/ssl/s3/ca.crt
{{- end }}
{{- end -}}

{{- define "mlflow-stack.mlflowEnv" -}}
{{ include "mlflow-stack.s3Env" . }}
- name: BACKEND_STORE_URI
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.secretName" . }}
      key: {{ .Values.secrets.keys.backendStoreUri }}
- name: MLFLOW_SQLALCHEMYSTORE_POOL_SIZE
  value: {{ .Values.mlflow.MLFLOW_SQLALCHEMYSTORE_POOL_SIZE | quote }}
- name: MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW
  value: {{ .Values.mlflow.MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW | quote }}
- name: MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE
  value: {{ .Values.mlflow.MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE | quote }}
- name: MLFLOW_ENABLE_WORKSPACES
  value: {{ .Values.mlflow.MLFLOW_ENABLE_WORKSPACES | quote }}
- name: MLFLOW_ARTIFACTS_PRESIGNED_ONLY
  value: {{ .Values.mlflow.MLFLOW_ARTIFACTS_PRESIGNED_ONLY | quote }}
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
- name: DO_NOT_TRACK
  value: "true"
- name: HOME
  value: /home/mlflow
- name: TMPDIR
  value: /tmp
{{- end -}}

{{/*
MLflow's auth app (auth.enabled): the one switch, MLFLOW_AUTH, for MLflow (mlflow-image/entrypoint.sh
adds `--app-name basic-auth`) and the proxy (which then checks from the first request); with it on,
MLflow's settings and secrets.
*/}}
{{- define "mlflow-stack.authEnv" -}}
- name: MLFLOW_AUTH
  value: {{ .Values.auth.enabled | toString | quote }}
{{- if .Values.auth.enabled }}
- name: MLFLOW_AUTH_ADMIN_USERNAME
  value: {{ .Values.auth.MLFLOW_AUTH_ADMIN_USERNAME | quote }}
- name: MLFLOW_AUTH_DEFAULT_PERMISSION
  value: {{ .Values.auth.MLFLOW_AUTH_DEFAULT_PERMISSION | quote }}
- name: MLFLOW_AUTH_CACHE_TTL_SECONDS
  value: {{ .Values.auth.MLFLOW_AUTH_CACHE_TTL_SECONDS | toString | quote }}
{{- range $name, $key := dict "MLFLOW_AUTH_DATABASE_URI" .Values.secrets.keys.authDatabaseUri "MLFLOW_AUTH_ADMIN_PASSWORD" .Values.secrets.keys.authAdminPassword "MLFLOW_FLASK_SERVER_SECRET_KEY" .Values.secrets.keys.flaskSecretKey }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "mlflow-stack.secretName" $ }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "mlflow-stack.caVolume" -}}
{{- if .Values.s3.caBundleConfigMap }}
- name: s3-ca
  configMap:
    name: {{ .Values.s3.caBundleConfigMap }}
{{- end }}
{{- end -}}

{{- define "mlflow-stack.caMount" -}}
{{- if .Values.s3.caBundleConfigMap }}
- name: s3-ca
  mountPath: /etc/ssl/s3
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Guards: the render fails instead of producing a Deployment that loses transfers on every
rollout or a database that refuses connections.
*/}}
{{- define "mlflow-stack.guards" -}}
{{- $p := .Values.proxy -}}
{{- $need := add $p.preStopSleepSeconds $p.env.PROXY_SHUTDOWN_GRACE_SECS 5 -}}
{{- if lt (int $p.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "proxy.terminationGracePeriodSeconds=%v is too short: it must be >= preStopSleepSeconds (%v) + PROXY_SHUTDOWN_GRACE_SECS (%v) + 5 = %v, or transfers in flight are killed at every rollout" $p.terminationGracePeriodSeconds $p.preStopSleepSeconds $p.env.PROXY_SHUTDOWN_GRACE_SECS $need) -}}
{{- end -}}
{{- if lt (int .Values.mlflow.terminationGracePeriodSeconds) (int (add .Values.mlflow.preStopSleepSeconds 5)) -}}
{{- fail (printf "mlflow.terminationGracePeriodSeconds=%v must be >= mlflow.preStopSleepSeconds + 5" .Values.mlflow.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- $db := include "mlflow-stack.dbConnections" . | fromJson -}}
{{- if gt (int $db.total) (int .Values.database.maxConnections) -}}
{{- fail (printf "MLflow could open %v database connections (%s), more than database.maxConnections=%v: lower mlflow.replicas, mlflow.workers or the pool settings, or raise the server's max_connections" $db.total $db.formula .Values.database.maxConnections) -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (not (and .Values.secrets.create.backendStoreUri .Values.secrets.create.awsAccessKeyId .Values.secrets.create.awsSecretAccessKey .Values.secrets.create.signingKey)) -}}
{{- fail "set secrets.existingSecret (recommended) or all of secrets.create.backendStoreUri, .awsAccessKeyId, .awsSecretAccessKey and .signingKey" -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (lt (len .Values.secrets.create.signingKey) 32) -}}
{{- fail "secrets.create.signingKey must be at least 32 characters (e.g. openssl rand -hex 32)" -}}
{{- end -}}
{{- if and .Values.secrets.create.backendStoreUri (hasPrefix "sqlite" .Values.secrets.create.backendStoreUri) -}}
{{- fail "a sqlite backend store cannot be shared by replicas: use MySQL" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.secrets.existingSecret) -}}
{{- fail "auth.enabled needs secrets.existingSecret with the keys secrets.keys.authDatabaseUri, .authAdminPassword and .flaskSecretKey" -}}
{{- end -}}
{{- if and .Values.auth.enabled (has .Values.proxy.env.PROXY_MLFLOW_AUTH (list "auto" "off")) -}}
{{- fail (printf "auth.enabled with proxy.env.PROXY_MLFLOW_AUTH=%s: artifact requests could be served unchecked; leave it empty (or on)" .Values.proxy.env.PROXY_MLFLOW_AUTH) -}}
{{- end -}}
{{- if and .Values.proxy.autoscaling.enabled (gt (int .Values.proxy.autoscaling.minReplicas) (int .Values.proxy.autoscaling.maxReplicas)) -}}
{{- fail "proxy.autoscaling.minReplicas must be <= maxReplicas" -}}
{{- end -}}
{{- end -}}

{{/*
Database connections MLflow can hold at most, as JSON {total, formula}: every serving process
keeps one SQLAlchemy engine per backend URI (two with a read replica), each with
pool_size + max_overflow connections; the periodic-tasks replica runs one worker; the migration
Job and the gc CronJob hold one engine each while they run.
*/}}
{{- define "mlflow-stack.dbConnections" -}}
{{- $m := .Values.mlflow -}}
{{- $perEngine := add $m.MLFLOW_SQLALCHEMYSTORE_POOL_SIZE $m.MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW -}}
{{- $engines := ternary 2 1 .Values.database.readReplica -}}
{{- $serving := mul $m.replicas $m.workers $engines $perEngine -}}
{{- $tasks := ternary (mul $engines $perEngine) 0 $m.periodicTasks.enabled -}}
{{- $jobs := add $perEngine (ternary $perEngine 0 .Values.gc.enabled) -}}
{{- $total := add $serving $tasks $jobs .Values.database.reservedConnections -}}
{{- $formula := printf "%v replicas x %v workers x %v engines x (%v pool + %v overflow) = %v, + %v periodic-tasks replica, + %v jobs, + %v reserved" $m.replicas $m.workers $engines $m.MLFLOW_SQLALCHEMYSTORE_POOL_SIZE $m.MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW $serving $tasks $jobs .Values.database.reservedConnections -}}
{{- dict "total" $total "formula" $formula | toJson -}}
{{- end -}}

{{- define "mlflow-stack.topologySpread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "mlflow-stack.selectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "mlflow-stack.selectorLabels" . | nindent 8 }}
{{- end -}}

{{/* The gc CronJob's `mlflow gc` container (mlflow-image/gc.py, through the proxy). */}}
{{/*
The gc jobs ask MLflow and delete through the proxy as MLflow's admin when auth.enabled (with
auth on, anything less is refused: the jobs would stop without freeing anything).
*/}}
{{- define "mlflow-stack.gcCredentials" -}}
{{- if .Values.auth.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  value: {{ .Values.auth.MLFLOW_AUTH_ADMIN_USERNAME | quote }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.keys.authAdminPassword }}
{{- end }}
{{- end -}}

{{- define "mlflow-stack.gcContainer" -}}
- name: gc
  image: {{ include "mlflow-stack.image" .Values.images.mlflow | quote }}
  imagePullPolicy: {{ .Values.images.mlflow.pullPolicy }}
  command: ["python3", "/usr/local/bin/mlflow-gc.py"]
  env:
    - name: GC_OLDER_THAN
      value: {{ .Values.gc.olderThan | quote }}
    - name: MLFLOW_TRACKING_URI
      value: "http://{{ include "mlflow-stack.fullname" . }}:5000"
    {{- include "mlflow-stack.gcCredentials" . | nindent 4 }}
    {{- include "mlflow-stack.mlflowEnv" . | nindent 4 }}
  resources:
    {{- toYaml .Values.gc.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: home
      mountPath: /home/mlflow
    {{- include "mlflow-stack.caMount" . | nindent 4 }}
{{- end -}}
