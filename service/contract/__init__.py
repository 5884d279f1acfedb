"""The contract between the offline and the online halves.

What a model repository holds and what its model cards say (``model_card``), how a card's
``InputSpec`` turns an image into the model's tensor (``preprocess``, the reference that offline
evaluation and the service both run, so accuracy measured offline holds online), and the machine
description printed beside every figure (``machine``). ``export/`` imports only this package from
``service/``; nothing here imports any other part of the service.
"""
