"""Request body to model tensor: one pipeline, one entry per input form.

``body`` reads what a request asks for from its content type (multipart form, JSON ``image`` /
``images`` / ``tensor``, raw ``image/*``); ``images`` checks an image's header against the pixel
limit, then decodes it (``fastjpeg`` for common JPEGs, Pillow otherwise) to the card's colour and
size; ``tensors`` checks an already preprocessed tensor; ``pipeline`` runs these in order and hands
back the model batch. Every client mistake is found here, before anything is queued, and raised as
a 4xx ``ServiceError``. Nothing here knows about HTTP servers or ASGI.
"""
