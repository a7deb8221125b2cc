"""Kopf operator for DataRecorder resources: renders and reconciles recorder Deployments."""
