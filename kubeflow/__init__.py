"""Kubeflow Pipelines: compile the ctseg pipeline into a KFP v2 spec (`runner`) and submit it (`submit`)."""
