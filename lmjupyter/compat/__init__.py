"""Layers that let users of other model servers move over without rewriting their code."""
