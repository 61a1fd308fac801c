"""Model control of a running server, with its admin key (``tce release``, ``tce calibrate publish``).

``ModelControl`` asks the server first whether it accepts model control with this key
(before anything is written), then loads and unloads models; a load that fails or does not
make the model ready is one ``UsageError`` line. Use it as a context manager: the client is
closed on the way out.
"""
from __future__ import annotations

import time
from typing import Any

from tce.serving.security import http_headers
from tce_backends.errors import UsageError


class ModelControl:
    def __init__(self, url: str, admin_key: str | None, timeout_s: float = 120.0) -> None:
        import tritonclient.http as httpclient

        from tce_client.endpoints import host_port

        self.url = url
        self.headers = http_headers(admin_key)
        self.client: Any = httpclient.InferenceServerClient(host_port(url, "http"), network_timeout=timeout_s,
                                                            connection_timeout=min(timeout_s, 10.0))
        try:
            self._probe()
        except BaseException:
            self.close()
            raise

    def _probe(self) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            # Unloading a model that does not exist changes nothing, yet needs explicit model control and the key.
            self.client.unload_model("__tce_model_control_probe__", headers=self.headers)
        except InferenceServerException as error:
            message = error.message() or str(error)
            if "restricted" in message:
                raise UsageError(f"the server at {self.url} refused the admin key ({message}); pass the key it was "
                                 "started with (--admin-key-file or $TCE_ADMIN_KEY)") from None
            if "polling is enabled" in message or "not allowed" in message:
                raise UsageError(f"the server at {self.url} does not allow model control: start it with "
                                 "--model-control-mode explicit --load-model '*'") from None
            raise UsageError(f"the server at {self.url} cannot load models: {message}") from None
        except Exception as error:  # noqa: BLE001 - connection failures differ by library version
            raise UsageError(f"no Triton server answers at {self.url} ({error})") from None

    def load(self, model: str, versions: tuple[int, ...] = ()) -> float:
        """Load (or reload) ``model``; seconds it took. Raises ``UsageError`` when it fails or
        any of ``versions`` is not ready afterwards."""
        from tritonclient.utils import InferenceServerException

        started = time.perf_counter()
        try:
            self.client.load_model(model, headers=self.headers)
        except InferenceServerException as error:
            raise UsageError(f"the server did not load {model}: {error.message() or error}") from None
        for version in versions or ("",):
            if not self.client.is_model_ready(model, str(version)):
                which = f" version {version}" if version else ""
                raise UsageError(f"the server loaded {model} but{which} is not ready")
        return time.perf_counter() - started

    def unload(self, model: str) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            self.client.unload_model(model, headers=self.headers)
        except InferenceServerException as error:
            raise UsageError(f"the server did not unload {model}: {error.message() or error}") from None

    def ready(self, model: str, version: int | str = "") -> bool:
        try:
            return bool(self.client.is_model_ready(model, str(version)))
        except Exception:  # noqa: BLE001
            return False

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "ModelControl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
