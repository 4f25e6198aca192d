"""Neural recommenders trained with PyTorch on the CPU, exported as inner products.

Two published models whose user-item score is exactly an inner product, so the bundle's
FAISS indexes rank them exactly and every route serves them unchanged:

- `multvae`: Mult-VAE (Liang et al. 2018). A row x is L2-normalised, dropped out (training
  only) and encoded by tanh(x W1 + b1) W2 + b2 into the mean z of the latent Gaussian; the
  decoder is one linear layer, so item j's logit is z . w_j + b_j: the user exports as
  [z, 1] and the item as [w_j, b_j]. Trained by the multinomial log-likelihood plus a KL
  term whose weight rises to `beta_max` (KL annealing).
- `elsa`: ELSA (Vancura et al. 2022), a shallow linear autoencoder x -> x A A^T - x with
  unit-norm rows of A, trained by the normalised squared error. The user is x A and the
  item A_j (the -x term only touches seen items, which recommendations exclude).

Training is seeded (same seed, same threads: the same weights), reports an epoch line to
`progress`, keeps the weights of the epoch with the best validation NDCG@10 on a split
carved from the rows it is given (autotune.validation_split: 20% of up to 2,000 users'
interactions), stops after `patience` epochs without improvement or when `time_budget`
seconds are spent, and exports numpy arrays (svdfaiss.encoder): serving needs no PyTorch.
PyTorch itself is the optional extra `svdfaiss[neural]`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp

from svdfaiss.encoder import Encoder, Layer
from svdfaiss.errors import InvalidInput

if TYPE_CHECKING:
    import torch

NeuralAlgorithm = Literal["multvae", "elsa"]
NEURAL_ALGORITHMS: tuple[str, ...] = ("multvae", "elsa")
ALGORITHMS: tuple[str, ...] = ("svd", *NEURAL_ALGORITHMS)
DEFAULT_DIMS = {"multvae": 200, "elsa": 256}
VALIDATION_SEED = 17  # the early-stopping split's seed, offset by --seed


@dataclass(frozen=True)
class NeuralParams:
    """What a neural model is and how it is trained; recorded in the manifest."""

    algorithm: NeuralAlgorithm = "multvae"
    dim: int = 200  # latent size (multvae) or columns of A (elsa)
    hidden: int = 600  # multvae's encoder hidden layer
    dropout: float = 0.5  # multvae's input dropout
    beta_max: float = 0.2  # multvae's KL weight, reached after anneal_steps updates
    anneal_steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    time_budget: float = 600.0  # seconds of training (validation included), at most
    seed: int = 0
    threads: int = 1  # torch intra-op threads: on the shared 2-core VM 2 ran 2.5x slower

    def check(self) -> None:
        """Refuse bad values before anything is read."""
        if self.algorithm not in NEURAL_ALGORITHMS:
            raise InvalidInput(f"--algorithm {self.algorithm!r}: choose one of "
                               f"{', '.join(ALGORITHMS)}")
        for name in ("dim", "hidden", "batch_size", "max_epochs", "patience", "threads"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"--{name.replace('_', '-')} must be at least 1, got "
                                   f"{getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise InvalidInput(f"--dropout must be in [0, 1), got {self.dropout}")
        if not (self.time_budget > 0 and self.lr > 0 and self.beta_max >= 0
                and self.weight_decay >= 0 and self.anneal_steps >= 1):
            raise InvalidInput("--time-budget and the learning rate must be above 0; "
                               "beta_max, weight_decay must be >= 0; anneal_steps >= 1")

    def architecture(self, n_items: int) -> dict[str, Any]:
        """The layer shapes, for the manifest."""
        if self.algorithm == "multvae":
            return {"name": "Mult-VAE", "encoder": [n_items, self.hidden, self.dim],
                    "activation": "tanh", "decoder": [self.dim, n_items],
                    "user_vector": "[z, 1], z the encoder's mean",
                    "item_vector": "[w_j, b_j], the decoder's row and bias",
                    "reference": "Liang et al. 2018, Variational Autoencoders for "
                                 "Collaborative Filtering"}
        return {"name": "ELSA", "encoder": [n_items, self.dim], "decoder": [self.dim, n_items],
                "user_vector": "x A", "item_vector": "A_j (unit norm)",
                "reference": "Vancura et al. 2022, Scalable Linear Shallow Autoencoder for "
                             "Collaborative Filtering"}


@dataclass
class NeuralModel:
    """A trained model as numpy arrays: the encoder and the item vectors it scores."""

    params: NeuralParams
    encoder: Encoder
    item_vectors: np.ndarray  # items x encoder.dim: q . item_vectors[j] is item j's score
    similarity_vectors: np.ndarray  # items x d: cosine of these ranks similar items
    training: dict[str, Any] = field(default_factory=dict)
    network: Any = None  # the torch module, kept only when train(keep_network=True)

    def linear_fold(self) -> np.ndarray | None:
        """The fold-in basis when the encoder is one linear map x -> x A (ELSA): the bundle
        then stores A as its fold-in factors, like the SVD's; None for a deeper encoder."""
        layers = self.encoder.layers
        if (len(layers) == 1 and layers[0].activation == "identity"
                and not np.any(layers[0].bias) and not self.encoder.normalize_input
                and not self.encoder.append_one):
            return layers[0].weight
        return None

    def scores(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores of every item for binary rows, as the bundle serves them."""
        return np.asarray(self.encoder.encode(rows) @ self.item_vectors.T)

    def record(self) -> dict[str, Any]:
        """The manifest's `neural` section: architecture, parameters, training figures."""
        return {"algorithm": self.params.algorithm,
                "architecture": self.params.architecture(self.encoder.n_items),
                "parameters": asdict(self.params),
                # None: rows fold in linearly through item_factors.npy (ELSA's x A)
                "encoder": None if self.linear_fold() is not None else self.encoder.spec(),
                "training": self.training,
                "score": "q . v: the model's logit for the item, exactly (FAISS ranks it)",
                "torch_version": self.training.get("torch_version")}


def require_torch() -> Any:
    """PyTorch, or a clear error naming the extra that installs it."""
    try:
        import torch
    except ImportError:
        raise InvalidInput("the neural models need PyTorch: pip install 'svdfaiss[neural]' "
                           "(a CPU build, torch==2.13.0)") from None
    return torch


def binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The rows as 0/1 interactions (what both models read)."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.data[:] = 1.0
    return out


# --------------------------------------------------------------------------- networks
# A batch is a sparse 0/1 tensor (a user holds ~1-2% of the items): the first layer is a
# sparse product and the losses gather the logits of the items a row holds, so an epoch of
# ml-latest-small costs ~0.2 s instead of the 5.5 s a dense input layer took (measured).
# That product reads its dense factor stored items x outputs (contiguous): Mult-VAE's input
# layer through nn.Linear's transposed weight took 3.3x as long, forward and backward (93
# against 28 ms a batch of ml-latest-small, one thread, measured 2026-12-05).


def _batch(torch: Any, rows: sp.csr_matrix) -> Any:
    """Binary CSR rows as a torch sparse COO tensor."""
    coo = rows.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data.astype(np.float32)),
                                   rows.shape, check_invariants=False).coalesce()


def _networks(torch: Any, params: NeuralParams, n_items: int) -> Any:
    nn = torch.nn
    module: Any = nn.Module

    class MultVAE(module):  # type: ignore[misc]
        """Encoder to (mu, logvar), linear decoder; the forward pass gives logits."""

        def __init__(self) -> None:
            super().__init__()
            first = nn.Linear(n_items, params.hidden)  # its initialisation, stored
            self.hidden_weight = nn.Parameter(first.weight.detach().T.contiguous())
            self.hidden_bias = nn.Parameter(first.bias.detach().clone())
            self.latent = nn.Linear(params.hidden, 2 * params.dim)
            self.decoder = nn.Linear(params.dim, n_items)

        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rows, values = x.indices()[0], x.values()
            norms = torch.zeros(x.shape[0]).index_add_(0, rows, values * values).sqrt()
            values = values / norms.clamp_min(1e-12)[rows]  # L2-normalised rows
            if self.training and params.dropout > 0:  # input dropout
                keep = (torch.rand_like(values) >= params.dropout).float()
                values = values * keep / (1 - params.dropout)
            h = torch.sparse_coo_tensor(x.indices(), values, x.shape, check_invariants=False)
            h = torch.tanh(torch.sparse.mm(h, self.hidden_weight) + self.hidden_bias)
            out = self.latent(h)
            return out[:, : params.dim], out[:, params.dim :]

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                    torch.Tensor]:
            mu, logvar = self.encode(x)
            z = mu
            if self.training:
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return self.decoder(z), mu, logvar

    class Elsa(module):  # type: ignore[misc]
        """x -> x A A^T - x with the rows of A normalised."""

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, params.dim)))

        def normalized(self) -> torch.Tensor:
            return nn.functional.normalize(self.a, dim=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """x A A^T (the -x term is applied where it matters: the loss)."""
            a = self.normalized()
            return torch.sparse.mm(x, a) @ a.T

    return MultVAE() if params.algorithm == "multvae" else Elsa()


def _loss(torch: Any, params: NeuralParams, net: Any, x: Any, step: int) -> Any:
    rows, cols = x.indices()
    if params.algorithm == "multvae":
        logits, mu, logvar = net(x)
        # -sum_j x_j log softmax(logits)_j, gathered over the items each row holds
        nll = -torch.log_softmax(logits, dim=1)[rows, cols].sum() / x.shape[0]
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
        beta = params.beta_max * min(1.0, step / params.anneal_steps)
        return nll + beta * kl
    # ELSA's normalised squared error ||p/|p| - x/|x| ||^2 = 2 - 2 cos(p, x), p = xAA^T - x
    predicted = net(x)
    counts = torch.zeros(x.shape[0]).index_add_(0, rows, torch.ones_like(rows, dtype=torch.float))
    predicted = predicted.index_put((rows, cols), -torch.ones(rows.numel()), accumulate=True)
    dot = torch.zeros(x.shape[0]).index_add_(0, rows, predicted[rows, cols])
    cosine = dot / (predicted.norm(dim=1).clamp_min(1e-12) * counts.sqrt().clamp_min(1e-12))
    return (2 - 2 * cosine).mean()


def export(torch: Any, params: NeuralParams, net: Any) -> tuple[Encoder, np.ndarray,
                                                                  np.ndarray]:
    """The trained network as numpy: (encoder, recommendation item vectors, similarity
    item vectors)."""
    with torch.no_grad():
        if params.algorithm == "multvae":
            latent_w = net.latent.weight[: params.dim].T
            encoder = Encoder(
                (Layer(_np(net.hidden_weight), _np(net.hidden_bias), "tanh"),
                 Layer(_np(latent_w), _np(net.latent.bias[: params.dim]), "identity")),
                normalize_input=True, append_one=True)
            w = _np(net.decoder.weight)  # items x dim
            items = np.hstack([w, _np(net.decoder.bias)[:, None]])
            return encoder, np.ascontiguousarray(items), w
        a = _np(net.normalized())
        zero = np.zeros(params.dim, dtype=np.float32)
        return Encoder((Layer(a, zero, "identity"),)), a, a


def _np(t: Any) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


def torch_scores(torch: Any, params: NeuralParams, net: Any, rows: sp.csr_matrix) -> np.ndarray:
    """The network's own scores (eval mode) for binary rows: what the export must equal."""
    net.eval()
    with torch.no_grad():
        out = net(_batch(torch, binary(rows)))
        # ELSA: x A A^T; its -x term only changes seen items, which are never recommended
        return _np(out[0] if params.algorithm == "multvae" else out)


# --------------------------------------------------------------------------- training


class ValidationNdcg:
    """Mean NDCG@k of score rows against held-out items, the rows' training items
    excluded: evaluation.ranking_metrics' figure on top_n_from_scores' lists (ties within
    the top k to the lower item index), vectorised, as every epoch computes it. For
    ml-latest-small's 610 validation users those two functions took 90 ms, a third of the
    time of an ELSA epoch's updates; this takes 15 ms (a test holds the two equal)."""

    def __init__(self, seen: sp.csr_matrix, relevant: list[np.ndarray], k: int = 10) -> None:
        seen = sp.csr_matrix(seen)
        self.k, self.n_items = k, int(seen.shape[1])
        self.seen = seen.nonzero()
        counts = np.array([len(r) for r in relevant], dtype=np.int64)
        self.counted = counts > 0
        self.keys = np.sort(np.concatenate(
            [np.zeros(0, np.int64)] + [u * self.n_items + np.asarray(r, dtype=np.int64)
                                       for u, r in enumerate(relevant)]))
        self.discounts = 1.0 / np.log2(np.arange(2, k + 2))
        self.ideal = np.cumsum(self.discounts)[np.clip(counts, 1, k) - 1]

    def __call__(self, scores: np.ndarray) -> float:
        """NDCG@k of `scores` (users x items, float32; masked in place)."""
        import torch

        if not self.counted.any():
            return 0.0
        scores[self.seen] = -np.inf
        k = min(self.k, self.n_items)
        found = torch.topk(torch.from_numpy(scores), k, dim=1)
        values, top = found.values.numpy(), found.indices.numpy()
        order = np.lexsort((top, -values), axis=1)  # ties to the lower item index
        values = np.take_along_axis(values, order, axis=1)
        top = np.take_along_axis(top, order, axis=1)
        query = np.arange(len(top))[:, None] * self.n_items + top
        where = np.minimum(np.searchsorted(self.keys, query), max(self.keys.size - 1, 0))
        hits = (self.keys[where] == query) & np.isfinite(values)
        gains = hits @ self.discounts[:k]
        return float(np.mean(gains[self.counted] / self.ideal[self.counted]))


def _min_row(params: NeuralParams) -> int:
    """The fewest items a training row needs to teach the model anything.

    Empty rows teach nothing. Nor, for ELSA, does a row of one item j: its prediction at j
    is |A_j|^2 - 1 = 0 whatever A is (unit rows), so its loss is 2 and its gradient 0. On
    the Amazon sample 44,944 of 47,141 users have one item: skipping them leaves the loss
    to minimise as it was (less a constant) and an epoch costs 1/20th (0.15 s against 3.5 s,
    one thread). An epoch is then fewer Adam steps (9 against 185 at batch 256), each on 256
    rows that move it instead of about 12.
    """
    return 2 if params.algorithm == "elsa" else 1


def train(matrix: sp.csr_matrix, params: NeuralParams,
          progress: Callable[[str], None] | None = None,
          validation: tuple[sp.csr_matrix, np.ndarray, list[np.ndarray]] | None = None,
          keep_network: bool = False,
          epochs_on_all_rows: int | None = None) -> NeuralModel:
    """Train on `matrix` (users x items; values are read as 0/1) and export the best epoch.

    Early stopping watches NDCG@10 on `validation` = (train rows, users, held-out items):
    by default carved from `matrix` (autotune.validation_split), training then on its train
    rows. `keep_network` keeps the torch module in `network` (tests compare it with the
    export). `epochs_on_all_rows` instead trains on all of `matrix` for that many epochs
    (within the time budget), with no validation, and exports the last: a refit once early
    stopping has found the number of epochs (scripts/eval_neural.py --refit).
    """
    params.check()
    torch = require_torch()
    start = time.perf_counter()
    carved = validation is None
    refit = epochs_on_all_rows is not None
    if epochs_on_all_rows is not None:
        if epochs_on_all_rows < 1:
            raise InvalidInput(f"a refit needs at least 1 epoch, got {epochs_on_all_rows}")
        validation = (matrix, np.zeros(0, dtype=np.int64), [])
    elif validation is None:
        from svdfaiss.autotune import validation_split

        try:
            split = validation_split(matrix, VALIDATION_SEED + params.seed)
        except InvalidInput:
            split = None
        if split is None or split.test_users.size == 0:
            raise InvalidInput("the neural models stop early on a validation split: no user "
                               "has 5 or more interactions to hold some out")
        validation = (split.train, split.test_users, split.test_items)
    train_rows, val_users, val_items = validation
    x_train = binary(train_rows)
    val_seen = x_train[val_users]
    validation_ndcg = None if refit else ValidationNdcg(val_seen, val_items)
    torch.manual_seed(params.seed)
    torch.set_num_threads(params.threads)
    rng = np.random.default_rng(params.seed)
    n_items = x_train.shape[1]
    active = np.flatnonzero(np.diff(x_train.indptr) >= _min_row(params))
    net = _networks(torch, params, n_items)
    # fused: one kernel per tensor instead of a dozen passes; an Adam step of Mult-VAE's 8M
    # parameters took 9 ms against 48 ms (one thread, measured 2026-12-05)
    optimizer = torch.optim.Adam(net.parameters(), lr=params.lr,
                                 weight_decay=params.weight_decay, fused=True)
    best_ndcg, best_epoch, best_state = -1.0, 0, None
    history: list[dict[str, float]] = []
    step, stopped, stopped_by = 0, "max_epochs", "max_epochs"
    if epochs_on_all_rows is not None:
        stopped = stopped_by = "fixed_epochs"
    for epoch in range(1, (epochs_on_all_rows or params.max_epochs) + 1):
        net.train()
        order = rng.permutation(active)
        total = 0.0
        begin = 0
        for begin in range(0, order.size, params.batch_size):
            rows = order[begin : begin + params.batch_size]
            x = _batch(torch, x_train[rows])
            loss = _loss(torch, params, net, x, step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            total += float(loss.detach()) * rows.size
            if time.perf_counter() - start >= params.time_budget:
                break  # the budget holds inside a long epoch too: validate what was learnt
        ndcg = -1.0  # a refit's epochs are not validated
        if validation_ndcg is not None:
            ndcg = validation_ndcg(torch_scores(torch, params, net, val_seen))
        elapsed = time.perf_counter() - start
        seen = min(order.size, (begin // params.batch_size + 1) * params.batch_size)
        total /= max(seen, 1)
        history.append({"epoch": epoch, "loss": round(total, 5),
                        "validation_ndcg@10": round(ndcg, 5), "seconds": round(elapsed, 2)})
        if refit:
            best_epoch = epoch  # the last epoch is the one exported
        elif ndcg > best_ndcg:
            best_ndcg, best_epoch = ndcg, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if progress is not None:
            progress(f"epoch {epoch}: loss {total:.4f}, validation "
                     f"ndcg@10 {ndcg:.4f} (best {best_ndcg:.4f} at {best_epoch}), "
                     f"{elapsed:.1f} s")
        if not math.isfinite(total):
            stopped, stopped_by = "the loss is not finite", "not_finite"
            break
        if not refit and epoch - best_epoch >= params.patience:
            stopped = f"no better validation ndcg@10 for {params.patience} epochs"
            stopped_by = "patience"
            break
        if elapsed >= params.time_budget:
            stopped = f"time budget of {params.time_budget:g} s spent"
            stopped_by = "time_budget"
            break
    if best_state is not None and not refit:
        net.load_state_dict(best_state)
    net.eval()
    encoder, items, similarity = export(torch, params, net)
    training: dict[str, Any] = {
        "epochs": len(history), "best_epoch": best_epoch,
        "best_validation_ndcg@10": round(best_ndcg, 5), "stopped": stopped,
        "stopped_by": stopped_by,  # patience, time_budget, max_epochs or not_finite
        "seconds": round(time.perf_counter() - start, 2),
        "updates": step, "parameters": int(sum(p.numel() for p in net.parameters())),
        "validation": {"users": int(val_users.size), "split": (
            "random holdout per user (20% of up to 2,000 users with 5+ interactions), "
            "carved from the build's rows; the model trains on the rest" if carved
            else "none: a fixed number of epochs on all rows" if refit
            else "given by the caller")},
        "history": history, "torch_version": str(torch.__version__),
        "threads": params.threads,
    }
    return NeuralModel(params, encoder, items, similarity, training,
                       net if keep_network else None)
