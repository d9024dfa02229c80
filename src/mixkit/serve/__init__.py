"""An OpenAI-compatible HTTP API over Mixture-of-Agents: point any OpenAI client at it.

    from mixkit.serve import Mixtures, ServeSettings, create_app
    app = create_app(Mixtures([my_config]), ServeSettings(max_concurrent=64))
    # uvicorn.run(app), or from the shell: mixkit serve --config my-moa.toml

The `model` of a request names a mixture: a built-in preset or a config's name.
"""

from mixkit.serve.app import RUN_ID_HEADER, create_app
from mixkit.serve.errors import APIError
from mixkit.serve.mixtures import Mixtures
from mixkit.serve.settings import ServeSettings

__all__ = ["RUN_ID_HEADER", "APIError", "Mixtures", "ServeSettings", "create_app"]
