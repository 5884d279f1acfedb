"""The HTTP face of the service: ASGI app, endpoints, OpenAPI, and the uvicorn hooks.

``app`` builds the app (``create_app(settings)``, models loaded in its lifespan); ``admission`` is
the single entry of ``POST /predict`` (shed with 503 when overloaded, else served by ``predict`` in
plain ASGI); ``routes`` holds the other endpoints; ``responses`` renders every answer and every
error; ``schemas`` and ``openapi`` publish the API from pydantic models; ``uvicorn_hooks`` and
``httptools_protocol`` stamp arrivals and join header and body writes. Only this layer imports
uvicorn, Starlette or FastAPI.
"""
