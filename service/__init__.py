"""The scoring service: a FastAPI app that loads registered detectors and scores records.

``service.app.create_app`` assembles it; ``anomaly serve`` runs it under uvicorn. Settings come
from the environment (prefix ``ANOMALY_``), a YAML file, or command-line flags.
"""
