"""Serving: an OpenAI-compatible HTTP API (chat with images, streaming, embeddings, audio transcriptions;
text chat with a decoder LM through its chat template; image generation with a text-to-image model)
and a web chat page.

`mmt serve MODEL_DIR` runs `serve`; `create_app` gives the FastAPI app (for tests or your own
server). fastapi and uvicorn are imported here only: `pip install "multimodaltransformer[serve]"`.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .media import MediaPolicy


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          allow_remote_media: list[str] | None = None, max_batch: int = 16, queue_size: int = 64,
          request_timeout_s: float = 120.0, device: str = "cpu", model: Any = None, drain_timeout_s: float = 30.0,
          cors_origins: list[str] | None = None, access_log: str | None = "-", dtype: str = "f32") -> None:
    """Load the model (or take `model`) and serve it until SIGTERM/SIGINT, then drain (serve/ops.py)."""
    import torch
    import uvicorn

    from .app import ServerConfig, create_app
    from .ops import DrainingServer, setup_access_log

    # torch runs with all its threads on the worker thread only: an OpenMP team of this (main) thread
    # too would leave libgomp more threads than CPUs, and it then puts the worker's team to sleep
    # between parallel regions (measured: decode steps ~1.4x slower on 2 cores)
    threads = torch.get_num_threads()
    if model is None:
        torch.set_num_threads(1)
        from ..hub import load_model, load_pretrained

        if _model_type(model_dir) == "mmt-t2i":  # text-to-image (models/t2i.py): no tokenizer to check
            auto = "cuda" if torch.cuda.is_available() else "cpu"
            model = load_pretrained(model_dir, map_location=auto if device == "auto" else device)
        else:
            model = load_model(str(model_dir), device, speech=True, chat=True, embed=True)
    from ..nn.lowp import lower_precision

    model = lower_precision(model, dtype)  # f32: as it is
    cfg = ServerConfig(model_name=Path(model_dir).name if model_dir else "model", api_key=api_key,
                       cors_origins=list(cors_origins or []),
                       model_dir=Path(model_dir) if model_dir else None,
                       max_batch=max_batch, queue_size=queue_size, request_timeout_s=request_timeout_s,
                       threads=threads,
                       media=MediaPolicy(allowed_hosts=frozenset(h.lower() for h in allow_remote_media or [])))
    app = create_app(model, cfg)
    setup_access_log(access_log)
    print(f"serving {cfg.model_name} at http://{host}:{port}/  (OpenAI API at http://{host}:{port}/v1)", flush=True)
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=5), app.state.lifecycle, drain_timeout_s)
    server.run()


def _model_type(model_dir: str | Path) -> str | None:
    try:
        return json.loads(Path(model_dir, "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def free_port(preferred: int = 8000, host: str = "127.0.0.1") -> int:
    """`preferred` if nothing listens there, else a free port the OS picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise OSError("no free port")


__all__ = ["MediaPolicy", "free_port", "serve"]
