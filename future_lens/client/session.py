"""`lens(...)`: a grid from a running server (HTTP, standard library) or from a model loaded in this process."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

from future_lens import defaults
from future_lens.client.grid import Grid, LensRequestError

DEFAULT_TIMEOUT_S = 300.0


class RemoteBackend:
    """A `future-lens serve` at `server`: `POST /lens`, then the stored grid's export routes."""

    def __init__(self, server: str, timeout: float = DEFAULT_TIMEOUT_S):
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http:// or https:// URL, not {server!r}")
        self.server = server.rstrip("/")
        self.timeout = timeout

    def request(self, path: str, body: dict[str, Any] | None = None, query: dict[str, Any] | None = None) -> bytes:
        """GET (or POST `body` as JSON) `path`; a refused request raises `LensRequestError` with the server's words."""
        url = self.server + path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=self.timeout) as answer:
                return answer.read()
        except urllib.error.HTTPError as error:
            raise _refusal(error) from None

    def grid(self, fields: dict[str, Any]) -> Grid:
        return Grid(json.loads(self.request("/lens", body=fields)), self)

    def _stored(self, grid: Grid, suffix: str, query: dict[str, Any] | None = None) -> str:
        return self.request(f"/g/{grid.id}{suffix}", query=query).decode()

    def svg(self, grid: Grid) -> str:
        return self._stored(grid, ".svg")

    def html(self, grid: Grid) -> str:
        return self._stored(grid, ".html")

    def track_svg(self, grid: Grid, token_id: int, position: int) -> str:
        return self._stored(grid, "/track.svg", {"token": token_id, "position": position})

    def code(self, grid: Grid, layer: int, position: int) -> str:
        return self._stored(grid, "/code.py", {"layer": layer, "position": position})


def _refusal(error: urllib.error.HTTPError) -> LensRequestError:
    """The server's JSON error body (`field`, `message`) as an exception; any other body as its status line."""
    try:
        body = json.loads(error.read())
        return LensRequestError(body.get("field"), body.get("message") or body.get("detail", ""), error.code)
    except (ValueError, AttributeError):
        return LensRequestError(None, f"the server answered {error.code} {error.reason}", error.code)


@cache
def _service(model: str | None, device: str, dtype: str, prompt_dir: str | None):
    """One loaded model per (model, device, dtype, prompt folder), kept for the process's lifetime."""
    from future_lens.lens.models import DEFAULT_MODEL
    from future_lens.service import LensService

    folder = Path(prompt_dir) if prompt_dir else None
    return LensService.load(model or DEFAULT_MODEL, device=device, dtype=dtype, prompt_dir=folder)


class LocalBackend:
    """The grid was computed in this process: figures and code come from the same export code as the server's."""

    def __init__(self, service: Any, planned: Any):
        self.service = service
        self.planned = planned

    @classmethod
    def compute(cls, service: Any, fields: dict[str, Any]) -> Grid:
        from future_lens.service import InvalidRequestError, parse_request

        try:
            planned = service.plan(parse_request(**fields))
            data = planned.compute().model_dump(mode="json", by_alias=True)
            if planned.request.track:
                data["track"] = service.track(planned, planned.request.track).model_dump(mode="json")
        except InvalidRequestError as error:
            raise LensRequestError(error.field, error.message) from None
        return Grid(data, cls(service, planned))

    @staticmethod
    def _typed(grid: Grid):
        from future_lens.lens.grid import Grid as TypedGrid

        return TypedGrid.model_validate(grid.data)

    def svg(self, grid: Grid) -> str:
        from future_lens.export.svg import grid_svg

        return grid_svg(self._typed(grid))

    def html(self, grid: Grid) -> str:
        from future_lens.export.html import grid_html

        return grid_html(self._typed(grid))

    def track_svg(self, grid: Grid, token_id: int, position: int) -> str:
        from future_lens.export.trajectory import trajectory_svg
        from future_lens.lens.track import Track

        tracked = grid.track and any(token["id"] == token_id for token in grid.track["tokens"])
        track = Track.model_validate(grid.track) if tracked else self._track([token_id])
        return trajectory_svg(self._typed(grid), track, token_id, position)

    def _track(self, token_ids: list[int]):
        from future_lens.lens.track import check_token_ids

        problem = check_token_ids(self.service.model, token_ids)
        if problem:
            raise LensRequestError("token", problem)
        return self.service.track(self.planned, token_ids)

    def code(self, grid: Grid, layer: int, position: int) -> str:
        from future_lens.export.snippet import SnippetError, cell_snippet, model_recipe

        try:
            return cell_snippet(
                self._typed(grid), self.planned.request.text, layer, position, model_recipe(self.service.model)
            )
        except SnippetError as error:
            raise LensRequestError(error.field, error.message) from None


def lens(
    text: str,
    method: str = defaults.METHOD,
    *,
    n_future: int = defaults.N_FUTURE,
    layers: str | list[int] | None = None,
    top_k: int = defaults.TOP_K,
    prompt: str | None = None,
    track: list[int] | None = None,
    server: str | None = None,
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    prompt_dir: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Grid:
    """The grid of `text`: `method` future, logit or fixed (`prompt`: the fixed prompt), `n_future` tokens per
    cell, `layers` (`"all"`, `"::3"`, `"0-10"`, `[0, 15, 29]`; None: all), `top_k` alternatives, and with `track`
    (token ids) each one's probability and rank in every cell.

    `server`: the URL of a running server (`model`, if given, must be the one it serves); None: compute in this
    process on `model` (catalog id or local HF directory; default the embedded model) on `device` with `dtype`,
    using the trained prompts in `prompt_dir` (default: the model's, see `lens.prompts.default_prompt_dir`).
    `timeout`: seconds per HTTP call."""
    fields = {
        "text": text,
        "method": method,
        "n_future": n_future,
        "layers": layers,
        "top_k": top_k,
        "prompt": prompt,
        "track": track,
    }
    fields = {name: value for name, value in fields.items() if value is not None}
    if server is not None:
        return RemoteBackend(server, timeout).grid({**fields, **({"model": model} if model else {})})
    folder = str(prompt_dir) if prompt_dir is not None else None
    return LocalBackend.compute(_service(model, device, dtype, folder), fields)
