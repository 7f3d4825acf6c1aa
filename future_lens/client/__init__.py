"""Future Lens from a notebook: `lens(text, ...)` returns a `Grid` you can inspect, tabulate, draw and export.

    from future_lens.client import lens
    grid = lens("Marty McFly from", method="future", n_future=4, layers="::3")            # in-process
    grid = lens("Marty McFly from", server="http://127.0.0.1:8000")                      # a running server
    grid                    # in Jupyter: the grid with hover popovers (self-contained, like the HTML export)
    grid.predicted(15, 2)   # the N tokens layer 15's state at token 2 anticipates
    grid.prediction_depth   # per token: the first layer from which the lens keeps reading the model's next token
    grid.to_pandas()        # long format: one row per predicted token and per top-k alternative (needs pandas)
    grid.to_svg()           # the vector figure; grid.to_html(): the offline HTML file
    grid = lens("Marty McFly from", track=[4236])   # + each tracked token's probability and rank in every cell
    grid.track_svg(4236, position=2)                # its trajectory as a chart
    print(grid.code(15, 2))                         # a transformers + nnsight script that recomputes a cell

Two backends, one result:

- `server=URL`: the JSON API of a running `future-lens serve` (`POST /lens`, standard library only). Figures,
  HTML, trajectories and code come from the server's own export routes (`/g/{id}.svg`, ...), so they are exactly
  what the page offers and the notebook needs no model.
- `server=None`: in-process on a local model (`model=` a catalog id or a local HF directory; default: the embedded
  SmolLM2), through the same request checks as the server (`service`), loaded once per (model, device, dtype,
  prompt folder) and kept. The lens library is imported only then: remote use needs no torch.

`Grid` holds the `future-lens.grid` JSON document (`grid.data`, see docs/grid-format.md). Bad requests raise
`LensRequestError` naming the field, in both modes.
"""

from future_lens.client.grid import Grid, LensRequestError
from future_lens.client.session import lens

__all__ = ["Grid", "LensRequestError", "lens"]
