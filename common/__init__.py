"""The bottom layer: what every other package shares and that needs none of them.

Atomic saves (:mod:`common.atomic`), resolving a local directory or a Hub repo id
(:mod:`common.hub`), loading user images (:mod:`common.images`), checking texts
(:mod:`common.texts`) and integer settings (:mod:`common.checks`), the default torch device
(:mod:`common.device`) and the lite towers that both the embedded encoder and the cross-encoder
run (:mod:`common.lite_model`). Nothing here imports ``retrieval``, ``hashing``, ``rerank`` or
``eval``, and importing the package loads nothing: each module is imported by name.
"""
