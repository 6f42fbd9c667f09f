"""RunPod, and only RunPod: its serverless endpoint API and REST v2 management API, endpoints
and their provisioning, GPU names, quota, prices and keys. It knows no notebook: nothing here
imports IPython, the cell's options or targets, and it raises its own errors
(tests/test_import_graph.py holds it to that)."""
