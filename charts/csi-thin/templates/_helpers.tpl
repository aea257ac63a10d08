{{/* The CSI driver name is part of every PV: it never changes. */}}
{{- define "csi-thin.driverName" -}}csi-thin.io{{- end -}}

{{- define "csi-thin.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "csi-thin.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "csi-thin.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Where the node plugin's CSI socket lives on the hosts. */}}
{{- define "csi-thin.pluginDir" -}}
{{ .Values.node.kubeletDir }}/plugins/{{ include "csi-thin.driverName" . }}
{{- end -}}

{{/*
The controller-side pods (controller, snapshot-controller) need no
privilege: they talk to the API server and, within the pod, over the CSI
socket in an emptyDir. One non-root uid for every container of a pod, so
that the sidecars can reach the 0600 socket the driver creates, and
fsGroup so that the emptyDir is writable by that uid.
*/}}
{{- define "csi-thin.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.controller.runAsUser }}
runAsGroup: {{ .Values.controller.runAsUser }}
fsGroup: {{ .Values.controller.runAsUser }}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "csi-thin.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}
