"""The HTTP side of the server: uvicorn on the gRPC server's event loop (``server.py``),
ganserve's REST API for people (``rest.py``, ``params.py``, ``pictures.py``) and its
OpenAPI document (``openapi.py``). ``server/http_app.py`` assembles the app."""
