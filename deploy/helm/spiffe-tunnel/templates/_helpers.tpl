{{/* Chart name, overridable. */}}
{{- define "spiffe-tunnel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name, at most 63 characters (a DNS label). */}}
{{- define "spiffe-tunnel.fullname" -}}
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

{{/* The workload's name: workload.name in sidecar mode, else the full name. */}}
{{- define "spiffe-tunnel.workloadName" -}}
{{- if and (eq .Values.mode "sidecar") .Values.workload.name -}}
{{- .Values.workload.name -}}
{{- else -}}
{{- include "spiffe-tunnel.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "spiffe-tunnel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spiffe-tunnel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "spiffe-tunnel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "spiffe-tunnel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "spiffe-tunnel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "spiffe-tunnel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Checks what the schema cannot: the config is YAML, its admin address is what the probes use,
every published port is a tunnel's listen port, and the mode has what it needs. Renders nothing.
*/}}
{{- define "spiffe-tunnel.validate" -}}
{{- if not .Values.config -}}
{{- fail "config is required: the spiffe-tunnel configuration file as text (config: |, see docs/configuration.md)" -}}
{{- end -}}
{{- $cfg := fromYaml .Values.config -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "config is not valid YAML: %s" $cfg.Error) -}}
{{- end -}}
{{- $admin := toString (dig "admin" "listen" "" $cfg) -}}
{{- if ne $admin (printf "0.0.0.0:%v" .Values.adminPort) -}}
{{- fail (printf "config admin.listen is %q; it must be 0.0.0.0:%v (adminPort): the kubelet probes the pod IP" $admin .Values.adminPort) -}}
{{- end -}}
{{- $listens := list -}}
{{- range (get $cfg "tunnels" | default list) -}}
{{- $listens = append $listens (toString (get . "listen")) -}}
{{- end -}}
{{- range .Values.ports -}}
{{- $suffix := printf ":%v" .port -}}
{{- $found := false -}}
{{- range $listens -}}
{{- if hasSuffix $suffix . -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "ports: %s (%v) is not the listen port of any tunnel in config" .name .port) -}}
{{- end -}}
{{- if eq (int .port) (int $.Values.adminPort) -}}
{{- fail (printf "ports: %s uses the admin port %v" .name .port) -}}
{{- end -}}
{{- end -}}
{{- $wapi := toString (dig "identity" "workload_api" "" $cfg) -}}
{{- if and $wapi (not (hasPrefix (printf "unix://%s/" .Values.workloadAPI.mountPath) $wapi)) (hasPrefix "unix:" $wapi) -}}
{{- fail (printf "config identity.workload_api %q is not under workloadAPI.mountPath %s" $wapi .Values.workloadAPI.mountPath) -}}
{{- end -}}
{{- if eq .Values.mode "sidecar" -}}
{{- if not .Values.workload.containers -}}
{{- fail "mode sidecar: workload.containers is required (your workload's containers)" -}}
{{- end -}}
{{- range .Values.workload.containers -}}
{{- if eq .name $.Values.container.name -}}
{{- fail (printf "workload.containers: the name %q is the sidecar's (container.name)" .name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.workload.volumeClaimTemplates (ne .Values.workload.kind "StatefulSet") -}}
{{- fail "workload.volumeClaimTemplates needs workload.kind StatefulSet" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The spiffe-tunnel container; "sidecar" adds restartPolicy: Always (a native sidecar). */}}
{{- define "spiffe-tunnel.container" -}}
{{- $v := .root.Values -}}
- name: {{ $v.container.name }}
  image: {{ printf "%s:%s" $v.image.repository (default $v.image.tag .root.Chart.AppVersion | toString) | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .sidecar }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - -c
    - /etc/spiffe-tunnel/config.yaml
    {{- with $v.container.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    - name: SPIFFE_ENDPOINT_SOCKET
      value: {{ printf "unix://%s/%s" $v.workloadAPI.mountPath $v.workloadAPI.socketName | quote }}
    {{- with $v.container.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- range $v.ports }}
    - name: {{ .name }}
      containerPort: {{ .port }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ $v.adminPort }}
      protocol: TCP
  startupProbe:
    httpGet: { path: /readyz, port: admin }
    {{- toYaml $v.container.startupProbe | nindent 4 }}
  readinessProbe:
    httpGet: { path: /readyz, port: admin }
    {{- toYaml $v.container.readinessProbe | nindent 4 }}
  livenessProbe:
    httpGet: { path: /healthz, port: admin }
    {{- toYaml $v.container.livenessProbe | nindent 4 }}
  resources:
    {{- toYaml $v.container.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.container.securityContext | nindent 4 }}
  volumeMounts:
    - name: spiffe-workload-api
      mountPath: {{ $v.workloadAPI.mountPath }}
      readOnly: true
    - name: spiffe-tunnel-config
      mountPath: /etc/spiffe-tunnel
      readOnly: true
{{- end -}}

{{/*
The pod template shared by every kind. In sidecar mode: your init containers after the native
sidecar, your containers and volumes; in gateway mode: the tunnel as the only container.
*/}}
{{- define "spiffe-tunnel.podTemplate" -}}
{{- $v := .Values -}}
{{- $sidecar := eq $v.mode "sidecar" -}}
metadata:
  labels:
    {{- include "spiffe-tunnel.selectorLabels" . | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or $v.podAnnotations (eq $v.configReload "restart") }}
  annotations:
    {{- if eq $v.configReload "restart" }}
    checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  serviceAccountName: {{ include "spiffe-tunnel.serviceAccountName" . }}
  automountServiceAccountToken: {{ $v.automountServiceAccountToken }}
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  {{- if $sidecar }}
  initContainers:
    {{- include "spiffe-tunnel.container" (dict "root" . "sidecar" true) | nindent 4 }}
    {{- with $v.workload.initContainers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  containers:
    {{- toYaml $v.workload.containers | nindent 4 }}
  {{- else }}
  containers:
    {{- include "spiffe-tunnel.container" (dict "root" . "sidecar" false) | nindent 4 }}
  {{- end }}
  volumes:
    - name: spiffe-workload-api
      {{- if eq $v.workloadAPI.source "csi" }}
      csi:
        driver: {{ $v.workloadAPI.csiDriver }}
        readOnly: true
      {{- else }}
      hostPath:
        path: {{ $v.workloadAPI.hostPath }}
        type: Directory
      {{- end }}
    - name: spiffe-tunnel-config
      configMap:
        name: {{ include "spiffe-tunnel.fullname" . }}
    {{- if $sidecar }}
    {{- with $v.workload.volumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
