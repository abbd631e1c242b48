{{/* Name of every object: fullnameOverride or "<release>-kbs". */}}
{{- define "cocoon.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride -}}
{{- else -}}
{{- printf "%s-kbs" .Release.Name -}}
{{- end -}}
{{- end -}}

{{- define "cocoon.selectorLabels" -}}
app.kubernetes.io/name: cocoon
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: kbs
{{- end -}}

{{- define "cocoon.labels" -}}
{{ include "cocoon.selectorLabels" . }}
app.kubernetes.io/part-of: cocoon
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Secret with kbs-identity.jwk and seal.key, or empty. */}}
{{- define "cocoon.keysSecret" -}}
{{- if .Values.keys.existingSecret -}}
{{- .Values.keys.existingSecret -}}
{{- else if eq .Values.store.type "postgres" -}}
{{- printf "%s-keys" (include "cocoon.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "cocoon.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "cocoon.validate" -}}
{{- if and (ne .Values.store.type "sqlite") (ne .Values.store.type "postgres") -}}
{{- fail "store.type must be sqlite or postgres" -}}
{{- end -}}
{{- if and (eq .Values.store.type "sqlite") (ne (int .Values.replicas) 1) -}}
{{- fail "SQLite allows one replica only; use store.type=postgres for replicas > 1" -}}
{{- end -}}
{{- if eq .Values.store.type "postgres" -}}
{{- required "store.type=postgres needs store.postgres.existingSecret" .Values.store.postgres.existingSecret | trunc 0 -}}
{{- end -}}
{{- if .Values.sim.enabled -}}
{{- required "sim.enabled needs sim.rootPem" .Values.sim.rootPem | trunc 0 -}}
{{- end -}}
{{- end -}}

{{/* The pod template shared by the Deployment (postgres) and the StatefulSet (sqlite). */}}
{{- define "cocoon.podTemplate" -}}
{{- $keys := include "cocoon.keysSecret" . -}}
{{- $config := or .Values.owners .Values.sim.enabled -}}
metadata:
  labels:
    {{- include "cocoon.labels" . | nindent 4 }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "cocoon.fullname" . }}
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  {{- if $keys }}
  initContainers:
    - name: install-keys
      image: {{ include "cocoon.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - k8s
        - install-keys
        - --from
        - /etc/cocoon/kbs-keys
        - --to
        - /var/lib/cocoon/kbs
      resources:
        requests:
          cpu: 10m
          memory: 64Mi
        limits:
          memory: 128Mi
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop:
            - ALL
      volumeMounts:
        - name: keys
          mountPath: /etc/cocoon/kbs-keys
          readOnly: true
        - name: data
          mountPath: /var/lib/cocoon/kbs
  {{- end }}
  containers:
    - name: kbs
      image: {{ include "cocoon.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --listen
        - 0.0.0.0:8080
        - --data-dir
        - /var/lib/cocoon/kbs
        - --log-level
        - {{ .Values.logLevel }}
        {{- if eq .Values.store.type "postgres" }}
        - --postgres
        - $(COCOON_DATABASE_URL)
        {{- end }}
        {{- range $file, $jwk := .Values.owners }}
        - --owner
        - /etc/cocoon/kbs/owner-{{ $file }}
        {{- end }}
        {{- if .Values.sim.enabled }}
        - --allow-sim
        - --sim-root
        - /etc/cocoon/kbs/sim-root.pem
        {{- end }}
      {{- if eq .Values.store.type "postgres" }}
      env:
        - name: COCOON_DATABASE_URL
          valueFrom:
            secretKeyRef:
              name: {{ .Values.store.postgres.existingSecret }}
              key: {{ .Values.store.postgres.secretKey }}
      {{- end }}
      ports:
        - name: http
          containerPort: 8080
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 2
        failureThreshold: 30
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 3
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop:
            - ALL
      volumeMounts:
        - name: data
          mountPath: /var/lib/cocoon/kbs
        - name: tmp
          mountPath: /tmp
        {{- if $config }}
        - name: config
          mountPath: /etc/cocoon/kbs
          readOnly: true
        {{- end }}
  volumes:
    {{- if eq .Values.store.type "postgres" }}
    - name: data
      emptyDir:
        medium: Memory
        sizeLimit: 16Mi
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if $keys }}
    - name: keys
      secret:
        secretName: {{ $keys }}
        defaultMode: 288
        items:
          - key: kbs-identity.jwk
            path: kbs-identity.jwk
          - key: seal.key
            path: seal.key
    {{- end }}
    {{- if $config }}
    - name: config
      configMap:
        name: {{ include "cocoon.fullname" . }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if and (eq .Values.store.type "postgres") (gt (int .Values.replicas) 1) }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "cocoon.selectorLabels" . | nindent 10 }}
  {{- end }}
{{- end -}}
