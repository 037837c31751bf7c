"""The non-learned floor: interpolate the observed pixels, no training at all.

Both learned models must beat this to be worth anything. The observed pixels sit at their pixel centres in the
continuous frame [0, 1]² (models.data.pixel_coords), so the same code fills in the missing pixels at the
training resolution and upsamples to any denser grid (zero-shot super-resolution):

  nearest — value of the closest observed pixel (a Voronoi mosaic).
  linear  — barycentric interpolation on the Delaunay triangulation of the observed pixels
            (scipy.interpolate.griddata), with the nearest value outside their convex hull.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.interpolate import griddata

from models.common import ConfigError
from models.data import pixel_coords

INTERP_METHODS = ("nearest", "linear")


def interpolate(input_coords, input_values, query_coords, method: str = "linear") -> np.ndarray:
    """Scattered (Nin, 2) coords with (Nin, C) values → values at (Nq, 2) query coords, (Nq, C) float32."""
    if method not in INTERP_METHODS:
        raise ConfigError(f"unknown interpolation {method!r}; choose one of {', '.join(INTERP_METHODS)}")
    pts = np.asarray(input_coords, dtype=np.float64)
    vals = np.asarray(input_values, dtype=np.float64)
    q = np.asarray(query_coords, dtype=np.float64)
    nearest = griddata(pts, vals, q, method="nearest")
    if method == "nearest" or len(pts) < 3:  # a triangulation needs 3 points
        return nearest.astype(np.float32)
    try:
        out = griddata(pts, vals, q, method="linear")  # NaN outside the convex hull
    except Exception:  # QhullError: all points collinear (tiny inputs)
        return nearest.astype(np.float32)
    holes = np.isnan(out)
    out[holes] = nearest[holes]
    return out.astype(np.float32)


def interpolate_image(image_lr: torch.Tensor, observed: torch.Tensor, out_res: int, method="linear"):
    """Observed pixels (flat indices) of a (C, r, r) image → the full (C, R, R) image at out_res."""
    C, r, _ = image_lr.shape
    values = image_lr.flatten(1).t()[observed]  # (Nin, C)
    coords = pixel_coords(r)[observed]  # (Nin, 2)
    out = interpolate(coords.numpy(), values.numpy(), pixel_coords(out_res).numpy(), method)  # (R², C)
    return torch.from_numpy(out).t().reshape(C, out_res, out_res)
