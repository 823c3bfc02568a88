"""Builders of tiny, locally saved models and data for tests, the demo and users' own CI.

Nothing here downloads anything: every model is built from a config and written with
``save_pretrained`` so the real ``from_pretrained`` loading paths run offline.
"""
