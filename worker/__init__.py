"""The tetra worker: a RunPod serverless worker that installs dependencies and runs code."""
