"""Reliability and security tests (docs/RELIABILITY.md): real servers, hostile inputs, crashes."""
import os
import sys

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "jupyter"))  # jupyterproc: a real Jupyter server
