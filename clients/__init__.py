"""ganserve client library: talk to a ganserve server from Python (base install).

    from ganserve.clients import GanClient

    with GanClient("localhost:50051") as client:
        print([m.name for m in client.list_models()])
        sevens = client.sample("mnist-cdcgan", count=16, label=7, seed=1, truncation=0.8)
        sevens.save_grid("sevens.png", scale=4)          # sevens.images: (16, 28, 28) float32
        morph = client.interpolate("mnist-cdcgan", [1, 2], labels=[3, 8], steps=32)
        morph.save_gif("morph.gif")

``AsyncGanClient`` has the same methods as coroutines. Failures raise the
typed exceptions below (all ``GanServeError``). ``latent_from_seed`` is the
server's seed rule, so results can be reproduced without a server call.
"""

from ganserve.clients.aio import AsyncGanClient
from ganserve.clients.errors import (
    Cancelled,
    DeadlineExceeded,
    GanServeError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unauthenticated,
    Unavailable,
)
from ganserve.clients.images import save_gif, save_grid, to_pil
from ganserve.clients.results import (
    ArithmeticResult,
    InterpolateResult,
    ModelInfo,
    SampleResult,
    ServerLimits,
)
from ganserve.clients.sync import GanClient
from ganserve.seeds import latent_from_seed, latents_from_seeds

__all__ = [
    "ArithmeticResult",
    "AsyncGanClient",
    "Cancelled",
    "DeadlineExceeded",
    "GanClient",
    "GanServeError",
    "InterpolateResult",
    "InvalidRequest",
    "ModelInfo",
    "ModelNotFound",
    "Overloaded",
    "SampleResult",
    "ServerLimits",
    "Unauthenticated",
    "Unavailable",
    "latent_from_seed",
    "latents_from_seeds",
    "save_gif",
    "save_grid",
    "to_pil",
]
