{{/* Names, labels and the pieces every Bastion pod shares. */}}

{{- define "bastion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-bastion, cut so that "-verifier" and a StatefulSet ordinal still fit 63 chars. */}}
{{- define "bastion.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bastion.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "bastion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bastion
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "bastion.selector" (list $ "proxy"). */}}
{{- define "bastion.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "bastion.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "bastion.componentLabels" -}}
{{ include "bastion.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "bastion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "bastion.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "bastion.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "bastion.secretName" -}}
{{- default (printf "%s-secrets" (include "bastion.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* In-cluster address of one component's port: include "bastion.addr" (list $ "policy" 50051). */}}
{{- define "bastion.addr" -}}
{{- $ := index . 0 -}}
{{- printf "%s-%s:%v" (include "bastion.fullname" $) (index . 1) (index . 2) -}}
{{- end -}}

{{/* Values that must be set; fails naming the value. Rendered once, from the Secret template. */}}
{{- define "bastion.validate" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- if not .Values.secrets.serviceToken -}}
{{- fail "secrets.serviceToken is required (or name an existing Secret in secrets.existingSecret): the shared service-to-service token. Generate one: --set secrets.serviceToken=$(openssl rand -base64 32)" -}}
{{- end -}}
{{- if not .Values.secrets.jwtSigningKey -}}
{{- fail "secrets.jwtSigningKey is required (or name an existing Secret in secrets.existingSecret): the Ed25519 PEM key of agent/operator JWTs. Generate one: --set-file secrets.jwtSigningKey=<(openssl genpkey -algorithm ed25519)" -}}
{{- end -}}
{{- if and .Values.redis.enabled (not .Values.redis.url) -}}
{{- fail "redis.url is required when redis.enabled is true (redis://host:6379/0), or put redis-url in secrets.existingSecret" -}}
{{- end -}}
{{- if and .Values.verifier.ownToken (not .Values.secrets.verifierToken) -}}
{{- fail "secrets.verifierToken is required when verifier.ownToken is true (at least 16 characters, not the service token), or put verifier-token in secrets.existingSecret. Generate one: --set secrets.verifierToken=$(openssl rand -base64 32)" -}}
{{- end -}}
{{- if and .Values.verifier.ownToken (eq .Values.secrets.verifierToken .Values.secrets.serviceToken) -}}
{{- fail "secrets.verifierToken must differ from secrets.serviceToken: equal, it keeps nothing from the verifier" -}}
{{- end -}}
{{- if and (eq .Values.graph.store "neo4j") (not .Values.graph.neo4j.url) -}}
{{- fail "graph.neo4j.url is required when graph.store is neo4j (neo4j://user:password@host:7687), or put graph-url in secrets.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and (or .Values.proxy.autoscaling.enabled (gt (int .Values.proxy.replicas) 1)) (not .Values.redis.enabled) -}}
{{- fail "redis.enabled is required with more than one proxy replica (proxy.replicas > 1 or proxy.autoscaling.enabled): without Redis every replica counts rate limits and budgets alone" -}}
{{- end -}}
{{- if and .Values.proxy.autoscaling.enabled (lt (int .Values.proxy.autoscaling.maxReplicas) (int .Values.proxy.autoscaling.minReplicas)) -}}
{{- fail "proxy.autoscaling.maxReplicas must be >= proxy.autoscaling.minReplicas" -}}
{{- end -}}
{{- if and (eq .Values.policy.engine "opa") (not .Values.policy.opaUrl) -}}
{{- fail "policy.opaUrl is required when policy.engine is opa" -}}
{{- end -}}
{{- end -}}

{{/* Environment the proxy, policy and graph share. */}}
{{- define "bastion.commonEnv" -}}
{{ include "bastion.baseEnv" . }}
{{ include "bastion.serviceTokenEnv" . }}
{{- end -}}

{{/* What every service gets. The verifier gets only this and a token: it needs none of the
     Secret's files (the JWT key, upstream credentials). */}}
{{- define "bastion.baseEnv" -}}
- name: BASTION_HOME
  value: /var/lib/bastion
- name: BASTION_CONFIG
  value: /etc/bastion/config/bastion.yaml
- name: BASTION_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- if .Values.grpcTls.secretName }}
- name: BASTION_GRPC_TLS_CERT
  value: /etc/bastion/grpc-tls/tls.crt
- name: BASTION_GRPC_TLS_KEY
  value: /etc/bastion/grpc-tls/tls.key
- name: BASTION_GRPC_TLS_CA
  value: /etc/bastion/grpc-tls/ca.crt
{{- end }}
{{- end -}}

{{- define "bastion.serviceTokenEnv" -}}
- name: BASTION_SERVICE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "bastion.secretName" . }}
      key: service-token
{{- /* A second token the services accept, while the first is rotated: unset without `service-second-token`. */}}
- name: BASTION_SERVICE_SECOND_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "bastion.secretName" . }}
      key: service-second-token
      optional: true
{{- end -}}

{{/* BASTION_VERIFIER_TOKEN (verifier.ownToken): what the proxy sends the verifier, and all it accepts. */}}
{{- define "bastion.verifierTokenEnv" -}}
- name: BASTION_VERIFIER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "bastion.secretName" . }}
      key: verifier-token
{{- end -}}

{{/* A second token the verifier accepts, while its token is rotated: unset while the Secret holds no `verifier-second-token`. */}}
{{- define "bastion.verifierSecondTokenEnv" -}}
- name: BASTION_VERIFIER_SECOND_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "bastion.secretName" . }}
      key: verifier-second-token
      optional: true
{{- end -}}

{{- define "bastion.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Volume mounts of a Bastion container: list $ withUpstreamSecrets withJwtKey.
     Only the proxy sends the upstreams' credentials, so only it mounts the Secret's files
     (/etc/bastion/secrets, what bastion.yaml's `${file:…}` names); the other services leave
     them unread (bastion._appconfig.load_app_config). The verifier holds no JWT key. */}}
{{- define "bastion.volumeMounts" -}}
- name: home
  mountPath: /var/lib/bastion
- name: tmp
  mountPath: /tmp
- name: config
  mountPath: /etc/bastion/config
  readOnly: true
- name: policies
  mountPath: /etc/bastion/policies
  readOnly: true
{{- if index . 1 }}
- name: secrets
  mountPath: /etc/bastion/secrets
  readOnly: true
{{- end }}
{{- if index . 2 }}
{{- /* The JWT key where `bastion token issue` and the token verifier look for it; the proxy, policy and graph pods hold the same one. */}}
- name: secrets
  mountPath: /var/lib/bastion/keys/dev-ed25519.pem
  subPath: jwt-signing-key
  readOnly: true
{{- end }}
{{- if (index . 0).Values.grpcTls.secretName }}
- name: grpc-tls
  mountPath: /etc/bastion/grpc-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes of a Bastion pod except `home` (a PVC or emptyDir, chosen per service):
     list $ secretKeys, where secretKeys is "all" (the proxy), "jwt" (policy and graph: the
     kubelet writes only the JWT key to their node) or "none" (the verifier). */}}
{{- define "bastion.volumes" -}}
{{- $ := index . 0 -}}
{{- $keys := index . 1 -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
- name: config
  configMap:
    name: {{ include "bastion.fullname" $ }}-config
- name: policies
  configMap:
    name: {{ include "bastion.fullname" $ }}-policies
{{- if ne $keys "none" }}
- name: secrets
  secret:
    secretName: {{ include "bastion.secretName" $ }}
    defaultMode: 0440
    {{- if eq $keys "jwt" }}
    items:
      - {key: jwt-signing-key, path: jwt-signing-key}
    {{- end }}
{{- end }}
{{- with $.Values.grpcTls.secretName }}
- name: grpc-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- end -}}

{{/* The pod spec lines every service shares. */}}
{{- define "bastion.podCommon" -}}
serviceAccountName: {{ include "bastion.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "bastion.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "bastion.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- /* Variables from the Secret are read at start: a changed token must restart its pods. */}}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A NetworkPolicy peer matching one component's pods: include "bastion.peer" (list $ "proxy"). */}}
{{- define "bastion.peer" -}}
- podSelector:
    matchLabels:
      {{- include "bastion.selector" . | nindent 6 }}
{{- end -}}

{{/* How the kubelet checks a gRPC port: include "bastion.grpcProbe" (list $ port). Its gRPC
     probe speaks plaintext without a client certificate, which a port under grpcTls refuses
     in the handshake: then a TCP check (listening), and the HTTP probes keep the rest. */}}
{{- define "bastion.grpcProbe" -}}
{{- if (index . 0).Values.grpcTls.secretName -}}
tcpSocket: {port: {{ index . 1 }}}
{{- else -}}
grpc: {port: {{ index . 1 }}}
{{- end -}}
{{- end -}}
