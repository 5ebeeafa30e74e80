"""ganserve: train GAN generators, export them to ONNX, serve them over gRPC.

Sub-packages (installed from the repository's top-level folders):

- ``ganserve.clients``  (``clients/``)  Python client library and CLI (base install)
- ``ganserve.server``   (``server/``)   gRPC server on ONNX Runtime (extra ``[server]``)
- ``ganserve.training`` (``training/``) training, evaluation, export (extra ``[train]``)
- ``ganserve.v1``       generated gRPC stubs of ``protos/ganserve/v1/generator.proto``
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
