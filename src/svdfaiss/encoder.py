"""The neural models' fold-in, run with numpy: a small feed-forward encoder of user rows.

A neural bundle (svdfaiss.neural trains it with PyTorch) stores its encoder as plain `.npy`
arrays, so that serving folds in a user, a basket or a live row without PyTorch. The query
vector of a weighted row x is

    h_0 = x / ||x||_2          (when normalize_input; Mult-VAE's input layer)
    h_l = act_l(h_{l-1} W_l + b_l)
    q   = [h_L, 1]             (when append_one: the items carry their bias as the last
                                coordinate, so q . [w_j, b_j] = h_L . w_j + b_j)

and item j scores q . v_j, exactly the model's logit, so FAISS ranks it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from svdfaiss.errors import InvalidBundle

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda h: h,
    "tanh": np.tanh,
}


@dataclass(frozen=True)
class Layer:
    """One dense layer: h -> activation(h @ weight + bias); weight is (inputs x outputs)."""

    weight: np.ndarray
    bias: np.ndarray
    activation: str = "identity"


@dataclass(frozen=True)
class Encoder:
    """A feed-forward encoder of weighted rows into the model's query space."""

    layers: tuple[Layer, ...]
    normalize_input: bool = False
    append_one: bool = False

    @property
    def n_items(self) -> int:
        return int(self.layers[0].weight.shape[0])

    @property
    def dim(self) -> int:
        """The length of a query vector (with the appended 1)."""
        return int(self.layers[-1].weight.shape[1]) + int(self.append_one)

    def encode(self, rows: sp.csr_matrix | np.ndarray) -> np.ndarray:
        """Query vectors of weighted rows (sparse or dense, one per row), float32.

        A row with no entries encodes as the encoder's response to an empty input (its
        biases): it carries no evidence, and the recommenders answer it with popular items.
        """
        first = self.layers[0].weight
        if sp.issparse(rows):
            x = sp.csr_matrix(rows)
            data = np.asarray(x.data, dtype=np.float32)
            if self.normalize_input:
                owner = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
                norms = np.sqrt(np.bincount(owner, weights=data * data, minlength=x.shape[0]))
                data = (data / np.where(norms > 0, norms, 1.0)[owner]).astype(np.float32)
            if x.shape[0] == 1:  # one user or basket (the service's case): a gather
                h = (data @ first[x.indices])[None, :]
            else:
                h = np.asarray(sp.csr_matrix((data, x.indices, x.indptr), shape=x.shape)
                               @ first, dtype=np.float32)
        else:
            dense = np.asarray(rows, dtype=np.float32)
            if self.normalize_input:
                norms = np.linalg.norm(dense, axis=1, keepdims=True)
                dense = (dense / np.where(norms > 0, norms, 1.0)).astype(np.float32)
            h = dense @ first
        h = ACTIVATIONS[self.layers[0].activation](h + self.layers[0].bias)
        for layer in self.layers[1:]:
            h = ACTIVATIONS[layer.activation](h @ layer.weight + layer.bias)
        if self.append_one:
            h = np.hstack([h, np.ones((h.shape[0], 1), dtype=h.dtype)])
        return np.ascontiguousarray(h, dtype=np.float32)

    # ------------------------------------------------------------------ bundle files

    def files(self) -> dict[str, np.ndarray]:
        """The arrays a bundle stores, by file name."""
        out: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            out[f"encoder_{i}_weight.npy"] = np.ascontiguousarray(layer.weight, np.float32)
            out[f"encoder_{i}_bias.npy"] = np.ascontiguousarray(layer.bias, np.float32)
        return out

    def spec(self) -> dict[str, Any]:
        """The manifest's description of the encoder (which files, in which order)."""
        return {
            "normalize_input": self.normalize_input,
            "append_one": self.append_one,
            "layers": [{"weight": f"encoder_{i}_weight.npy", "bias": f"encoder_{i}_bias.npy",
                        "inputs": int(layer.weight.shape[0]),
                        "outputs": int(layer.weight.shape[1]),
                        "activation": layer.activation}
                       for i, layer in enumerate(self.layers)],
            "query": "[h, 1]" if self.append_one else "h",
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any],
                  load: Callable[[str], np.ndarray], n_items: int) -> Encoder:
        """The encoder a manifest describes, its arrays read by `load(file name)`; refuses
        shapes that do not chain or do not start at the model's items."""
        layers = []
        inputs = n_items
        for entry in spec["layers"]:
            activation = entry["activation"]
            if activation not in ACTIVATIONS:
                raise InvalidBundle(f"encoder activation {activation!r} is not one of "
                                    f"{sorted(ACTIVATIONS)}")
            weight, bias = load(entry["weight"]), load(entry["bias"])
            if weight.ndim != 2 or weight.shape[0] != inputs or bias.shape != (weight.shape[1],):
                raise InvalidBundle(f"{entry['weight']}: shape {weight.shape} (bias "
                                    f"{bias.shape}) does not take {inputs} inputs")
            layers.append(Layer(weight, bias, activation))
            inputs = int(weight.shape[1])
        if not layers:
            raise InvalidBundle("the manifest's encoder has no layers")
        return cls(tuple(layers), bool(spec["normalize_input"]), bool(spec["append_one"]))
