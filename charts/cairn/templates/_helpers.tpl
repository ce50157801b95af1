{{/* Names. */}}
{{- define "cairn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cairn.fullname" -}}
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

{{/* The operator's Deployment (and its RBAC objects). */}}
{{- define "cairn.operator" -}}
{{- printf "%s-operator" (include "cairn.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cairn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; "cairn.labels" adds the operator component. */}}
{{- define "cairn.baseLabels" -}}
helm.sh/chart: {{ include "cairn.chart" . }}
app.kubernetes.io/name: {{ include "cairn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cairn
{{- end }}

{{- define "cairn.labels" -}}
{{ include "cairn.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "cairn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cairn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "cairn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cairn.operator" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cairn.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the operator's database URL, and its key. */}}
{{- define "cairn.databaseSecret" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecret }}{{ else }}{{ include "cairn.fullname" . }}-database{{ end }}
{{- end }}
{{- define "cairn.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}

{{/* The same for the runner's URL; empty when flow pods use the operator's URL. */}}
{{- define "cairn.runnerSecret" -}}
{{- if .Values.database.runner.existingSecret }}{{ .Values.database.runner.existingSecret }}{{ else if .Values.database.runner.url }}{{ include "cairn.fullname" . }}-database{{ end }}
{{- end }}
{{- define "cairn.runnerSecretKey" -}}
{{- if .Values.database.runner.existingSecret }}{{ .Values.database.runner.existingSecretKey }}{{ else }}runner-database-url{{ end }}
{{- end }}

{{/* The volume holding the database URLs as files (database-url, and runner-database-url when
     flow pods use another URL), readable by the pods' group only. */}}
{{- define "cairn.databaseVolume" -}}
- name: database
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "cairn.databaseSecret" . }}
          items:
            - key: {{ include "cairn.databaseSecretKey" . }}
              path: database-url
      {{- with include "cairn.runnerSecret" . }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ include "cairn.runnerSecretKey" $ }}
              path: runner-database-url
      {{- end }}
      {{- with .Values.database.caSecret }}
      - secret:
          name: {{ . }}
          items:
            - key: {{ $.Values.database.caSecretKey }}
              path: ca.crt
      {{- end }}
{{- end }}

{{/* Fails with a clear message when the database settings are missing or contradictory
     (the schema checks types and names; this checks the combination). */}}
{{- define "cairn.validate" -}}
{{- $db := .Values.database }}
{{- if and (not $db.url) (not $db.existingSecret) }}
{{- fail "\n\nCairn needs a database: set database.url (postgres://user:password@host:5432/db; stored in a Secret) or database.existingSecret (a Secret in the release namespace with the URL under database.existingSecretKey)." }}
{{- end }}
{{- if and $db.caSecret $db.url (not (contains "sslrootcert=/etc/cairn/database/ca.crt" $db.url)) }}
{{- fail "\n\ndatabase.caSecret is mounted at /etc/cairn/database/ca.crt, and database.url does not name it: add sslrootcert=/etc/cairn/database/ca.crt (and sslmode=verify-full) to the URL's parameters." }}
{{- end }}
{{- if and $db.url $db.existingSecret }}
{{- fail "\n\nSet only one of database.url and database.existingSecret." }}
{{- end }}
{{- if and $db.runner.url $db.runner.existingSecret }}
{{- fail "\n\nSet only one of database.runner.url and database.runner.existingSecret." }}
{{- end }}
{{- if and (eq (.Values.migrations).mode "job") (not $db.existingSecret) }}
{{- fail "\n\nmigrations.mode=job needs database.existingSecret: the migration Job runs before the chart's own resources (its Secret) exist." }}
{{- end }}
{{- /* readApi is absent after `helm upgrade --reuse-values` from a chart without it: then off. */}}
{{- $api := .Values.readApi | default dict }}
{{- if and $api.enabled ($api.tls).secretName (not ($api.tls).caBundle) }}
{{- fail "\n\nreadApi.tls.secretName needs readApi.tls.caBundle: the base64 PEM of the CA that signed its certificate, which the API server uses to verify the operator." }}
{{- end }}
{{- if and ($api.tls).caBundle (not ($api.tls).secretName) }}
{{- fail "\n\nreadApi.tls.caBundle is only used with readApi.tls.secretName (a certificate of your own); without it the chart generates the certificate and its CA." }}
{{- end }}
{{- if and $api.enabled (eq (int $api.port) (int .Values.service.port)) }}
{{- fail "\n\nreadApi.port and service.port must differ: they are two listeners (TLS read API, plain /metrics)." }}
{{- end }}
{{- $np := .Values.networkPolicy }}
{{- if and ($np.flowPods).enabled (or (not .Values.watchNamespaces) (not $np.flowPods.database.to)) }}
{{- fail "\n\nnetworkPolicy.flowPods.enabled needs watchNamespaces (the policy goes into each) and networkPolicy.flowPods.database.to (where flow pods reach Postgres): without them flow pods could reach nothing." }}
{{- end }}
{{- if and $np.enabled (or (not $np.database.to) (not $np.apiServer.cidrs)) }}
{{- fail "\n\nnetworkPolicy.enabled needs networkPolicy.database.to (where Postgres is) and networkPolicy.apiServer.cidrs (the API server's addresses): without them the operator could reach neither." }}
{{- end }}
{{- if and (.Values.artifacts | default dict).url (or $np.enabled ($np.flowPods).enabled) (not ($np.artifactStore | default dict).to) }}
{{- fail "\n\nartifacts.url with networkPolicy.enabled or networkPolicy.flowPods.enabled needs networkPolicy.artifactStore.to (the store's addresses, and .ports): without it neither the operator nor flow pods could reach the store." }}
{{- end }}
{{- if and (.Values.traces | default dict).endpoint (or $np.enabled ($np.flowPods).enabled) (not ($np.traces | default dict).to) }}
{{- fail "\n\ntraces.endpoint with networkPolicy.enabled or networkPolicy.flowPods.enabled needs networkPolicy.traces.to (the collector's addresses, and .ports): without it neither the operator nor flow pods could send spans." }}
{{- end }}
{{- end }}

{{/* The read API's TLS Secret: the user's (readApi.tls.secretName) or the one the chart generates. */}}
{{- define "cairn.apiTlsSecret" -}}
{{- .Values.readApi.tls.secretName | default (printf "%s-api-tls" (include "cairn.fullname" .)) }}
{{- end }}

{{/* The namespaces the operator manages ("" = all), comma-separated. */}}
{{- define "cairn.watchNamespaces" -}}
{{- join "," (uniq .Values.watchNamespaces) }}
{{- end }}

{{/* The egress rules to Postgres (networkPolicy.database) and, if on, cluster DNS: the operator's
     and the migration Job's NetworkPolicies. */}}
{{- define "cairn.databaseEgress" -}}
{{- $np := .Values.networkPolicy }}
{{- if $np.database.to }}
- to:
    {{- toYaml $np.database.to | nindent 4 }}
  ports:
    {{- range $np.database.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- if $np.dns.enabled }}
- to:
    {{- toYaml $np.dns.to | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}
{{- end }}

{{/* Egress to the artifact store (artifacts.url), for the operator's and flow pods' policies
(cairn.validate requires its peers). `artifacts` and `artifactStore` are absent after
`helm upgrade --reuse-values` from a chart without them. */}}
{{/* An egress rule to a peer the chart is told of (`on`: it is configured; `peer`: its
networkPolicy value, {to, ports}; `port`: the port when none is given). */}}
{{- define "cairn.peerEgress" -}}
{{- if and .on .peer.to }}
- to:
    {{- toYaml .peer.to | nindent 4 }}
  ports:
    {{- range .peer.ports | default (list .port) }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end }}

{{- define "cairn.artifactStoreEgress" -}}
{{- include "cairn.peerEgress" (dict "on" (.Values.artifacts | default dict).url "peer" (.Values.networkPolicy.artifactStore | default dict) "port" 443) }}
{{- end }}

{{- define "cairn.tracesEgress" -}}
{{- include "cairn.peerEgress" (dict "on" (.Values.traces | default dict).endpoint "peer" (.Values.networkPolicy.traces | default dict) "port" 4318) }}
{{- end }}
