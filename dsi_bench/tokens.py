"""Class-token banks: one learned text-embedding row per class, in and out of every format.

A :class:`TokenBank` is saved as one safetensors file: ``{token string: embedding}`` plus a
JSON metadata entry (``dsi_bench``) with, per class, its index, name, WordNet id and token,
the bank's base model and embedding width, and the **class list** of the dataset the tokens
belong to (``class_list``: names and ids of every class of its label space). Every consumer
(datasets, ``generate``, ``build``, ``eval``, ``score``, ``publish``) takes labels and class names
from that list when it is not ImageNet-1k's. Banks written before the class list was recorded
load as before (``class_list`` is ``None``: the consumer's own label space applies).

Importers read the ImageNet* release (``tokens/{i}.bin`` as a folder or as ``tokens.zip``)
and diffusers textual-inversion files (``learned_embeds.safetensors`` / ``.bin``, or a
folder of them). Pickled files are only ever read with ``torch.load(weights_only=True)``.
Injection into a pipeline goes through diffusers' own ``load_textual_inversion``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from .classes import ClassInfo, ClassList, imagenet_classes
from .compat import reject_unknown, renamed
from .embedded import resolve_world
from .errors import ClassSpecError, OfflineError, TokenBankError
from .files import atomic_write
from .memo import Memo
from .validate import is_int

__all__ = ["IMAGENET_STAR_TOKENS_REPO", "TokenBank", "bank_class_list", "fetch_imagenet_star_tokens", "load_tokens",
           "token_classes", "tokens_class_list"]

logger = logging.getLogger(__name__)

#: Hugging Face Hub dataset holding the ImageNet* release's 1000 SD2 tokens (``tokens.zip``).
IMAGENET_STAR_TOKENS_REPO = "madrylab/imagenet-star-tokens"
#: Base model the ImageNet* tokens were learned on.
IMAGENET_STAR_BASE_MODEL = "stabilityai/stable-diffusion-2"

_FORMAT = "dsi-bench/token-bank"
_FORMAT_VERSION = 1
_META_KEY = "dsi_bench"
_TOKEN_NAME = re.compile(r"^<(.+)-(\d+)>$")


def release_token_name(name: str, index: int) -> str:
    """The ImageNet* naming convention for class tokens: ``<{name}-{index}>``."""
    return f"<{name}-{index}>"


def _safe_torch_load(data: bytes, where: str):
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a plain tensor file"
        raise TokenBankError(
            f"{where} is not a plain tensor file that can be loaded safely ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); re-save it with safetensors"
        ) from e


def _as_row(t, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TokenBankError(f"{where} holds a {type(t).__name__}, not a tensor; expected one embedding row")
    t = t.detach().to("cpu", torch.float32)
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1:
        raise TokenBankError(
            f"{where} holds a tensor of shape {tuple(t.shape)}; expected one embedding row (multi-vector "
            "tokens are not supported)"
        )
    return t.contiguous()


class TokenBank:
    """Class tokens for a dataset: class index -> (token string, embedding row).

    Args:
        embeddings: ``(N, D)`` tensor, row ``i`` for ``classes[i]``.
        classes: the :class:`ClassInfo` of each row (indices need not be contiguous).
        tokens: the token string of each row; defaults to ``<{name}-{index}>``.
        base_model: the model whose text-embedding space the rows live in.
        extra: free-form JSON-serialisable metadata kept with the bank (training progress, ...).
        class_list: the label space the classes belong to (all classes of the dataset, also
            those without a token here); saved with the bank. ``None``: not recorded.
        source: where the rows were read from (a file), named in every error.

    Raises:
        TokenBankError: shapes, names or indices that do not fit, non-finite (NaN/inf) rows, or
            classes that disagree with ``class_list``.
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        classes: Sequence[ClassInfo],
        tokens: Sequence[str] | None = None,
        *,
        base_model: str | None = None,
        extra: dict | None = None,
        class_list: ClassList | None = None,
        source: str | os.PathLike | None = None,
    ):
        def error(message: str) -> TokenBankError:
            return TokenBankError(message if source is None else f"{os.fspath(source)!r}: {message}")

        embeddings = torch.as_tensor(embeddings).detach().to("cpu", torch.float32)
        classes = list(classes)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(classes):
            raise error(
                f"embeddings of shape {tuple(embeddings.shape)} do not match {len(classes)} classes; "
                "expected (num_classes, dim)"
            )
        if not classes:
            raise error("a token bank needs at least one class")
        tokens = list(tokens) if tokens is not None else [release_token_name(c.name, c.index) for c in classes]
        if len(tokens) != len(classes):
            raise error(f"got {len(tokens)} tokens for {len(classes)} classes")
        if len(set(tokens)) != len(tokens):
            dup = sorted({t for t in tokens if tokens.count(t) > 1})
            raise error(f"token names must be unique; repeated: {dup[:5]}")
        indices = [c.index for c in classes]
        if len(set(indices)) != len(indices):
            raise error("each class index may appear only once in a token bank")
        bad = (~torch.isfinite(embeddings).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            named = ", ".join(f"{classes[r].index} ({tokens[r]})" for r in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise error(f"the embeddings of {len(bad)} of {len(classes)} classes hold NaN or inf values (classes "
                        f"{named}); such tokens make black or noise images: re-export or re-learn those classes")
        if class_list is not None:
            if not isinstance(class_list, ClassList):
                raise error(f"class_list must be a ClassList, not {type(class_list).__name__}")
            wrong = [c for c in classes if c.index >= len(class_list) or class_list[c.index].name != c.name]
            if wrong:
                c = wrong[0]
                have = class_list[c.index].name if c.index < len(class_list) else "nothing"
                raise error(f"class {c.index} ({c.name!r}) does not match its class list {class_list.name!r} "
                            f"({len(class_list)} classes; index {c.index} is {have!r}); build the bank from "
                            "the class list's own ClassInfo entries")
        embeddings = embeddings.contiguous()
        embeddings.requires_grad_(False)
        init = object.__setattr__
        init(self, "embeddings", embeddings)
        init(self, "class_infos", tuple(classes))
        init(self, "tokens", tuple(tokens))
        init(self, "base_model", base_model)
        init(self, "class_list", class_list)
        init(self, "extra", json.loads(json.dumps(extra or {})))  # a private copy, JSON-clean
        init(self, "_row", {c.index: i for i, c in enumerate(classes)})
        # Computed now, not on first use: the fingerprint keys the pipeline and sample caches.
        init(self, "fingerprint", self._compute_fingerprint())

    def __setattr__(self, name, value):
        raise AttributeError(f"TokenBank is immutable; make a changed copy with bank.replace({name}=...)")

    def replace(self, *, base_model: str | None = None, extra: dict | None = None) -> TokenBank:
        """A copy with another base model or extra metadata (tokens and embeddings are the same)."""
        return TokenBank(self.embeddings, self.class_infos, self.tokens,
                         base_model=self.base_model if base_model is None else base_model,
                         extra=self.extra if extra is None else extra, class_list=self.class_list)

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        """Deprecated name of :attr:`class_infos`."""
        from .compat import deprecated

        deprecated("TokenBank.classes is now TokenBank.class_infos")
        return self.class_infos

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.class_infos)

    def __contains__(self, class_index: object) -> bool:
        return class_index in self._row

    def __repr__(self) -> str:
        return (
            f"TokenBank({len(self)} classes, dim={self.dim}, base_model={self.base_model!r}, "
            f"fingerprint={self.fingerprint[:12]})"
        )

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def custom_class_list(self) -> ClassList | None:
        """The bank's recorded class list when it is not ImageNet-1k's (``None`` otherwise, or when
        not recorded): the label space consumers take from the bank."""
        cl = self.class_list
        return None if cl is None or cl.is_imagenet else cl

    @property
    def class_indices(self) -> list[int]:
        return [c.index for c in self.class_infos]

    def _row_of(self, class_index: int) -> int:
        try:
            return self._row[class_index]
        except KeyError as cause:
            lo, hi = min(self._row), max(self._row)
            raise TokenBankError(
                f"token bank has no token for class {class_index} (it covers {len(self)} classes, "
                f"indices {lo}..{hi}); use a bank that covers it or drop the class from `classes`"
            ) from cause

    def require(self, class_indices: Iterable[int]) -> None:
        """Check that the bank has a token for every class.

        Raises:
            TokenBankError: naming the first missing class, how many are missing, and the fix.
        """
        missing = [i for i in class_indices if i not in self._row]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            covered = _index_spec(sorted(self._row))
            raise TokenBankError(
                f"token bank has no token for class {missing[0]}{more}; it covers {len(self)} classes "
                f"({covered}). Select classes within the bank (classes= / --classes {covered}) or use a bank "
                "that covers them"
            )

    def token_for(self, class_index: int) -> str:
        """The token string of a class (raises :class:`TokenBankError` if absent)."""
        return self.tokens[self._row_of(class_index)]

    def embedding(self, class_index: int) -> torch.Tensor:
        """The embedding row of a class."""
        return self.embeddings[self._row_of(class_index)]

    def class_fingerprint(self, class_index: int) -> str:
        """sha256 of one class's token string and embedding bytes: what its pixels depend on."""
        row = self._row_of(class_index)
        h = hashlib.sha256(self.tokens[row].encode("utf-8"))
        h.update(self.embeddings[row].numpy().tobytes())
        return h.hexdigest()

    def _compute_fingerprint(self) -> str:
        """sha256 over all tokens and embeddings (order-independent): the bank's :attr:`fingerprint`."""
        h = hashlib.sha256()
        for i in sorted(self._row):
            h.update(self.class_fingerprint(i).encode())
        return h.hexdigest()

    def subset(self, class_indices: Iterable[int]) -> TokenBank:
        rows = [self._row_of(i) for i in class_indices]
        return TokenBank(
            self.embeddings[rows],
            [self.class_infos[r] for r in rows],
            [self.tokens[r] for r in rows],
            base_model=self.base_model,
            extra=self.extra,
            class_list=self.class_list,
        )

    @classmethod
    def from_embeddings(
        cls, embeddings: torch.Tensor, classes: Sequence[ClassInfo], *, base_model: str | None = None,
        class_list: ClassList | None = None,
    ) -> TokenBank:
        """A bank with release-style token names ``<{name}-{index}>`` (``class_list``: as in :class:`TokenBank`;
        default: ``classes`` itself when it is a :class:`~dsi_bench.classes.ClassList`)."""
        if class_list is None and isinstance(classes, ClassList):
            class_list = classes
        return cls(embeddings, classes, base_model=base_model, class_list=class_list)

    # ------------------------------------------------------------------ our format
    def metadata(self) -> dict:
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "base_model": self.base_model,
            "dim": self.dim,
            "classes": [{**c.to_dict(), "token": t} for c, t in zip(self.class_infos, self.tokens)],
            "class_list": None if self.class_list is None else self.class_list.to_dict(),
            "extra": self.extra,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank to one safetensors file, atomically.

        Returns:
            The path written.
        """
        from safetensors.torch import save

        path = Path(path)
        if path.suffix != ".safetensors":
            raise TokenBankError(f"token bank path {str(path)!r} must end in .safetensors")
        tensors = {t: self.embeddings[i].clone() for i, t in enumerate(self.tokens)}
        data = save(tensors, metadata={_META_KEY: json.dumps(self.metadata())})
        atomic_write(path, data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenBank:
        """Read a bank saved by :meth:`save` (or any format :func:`load_tokens` knows)."""
        path = Path(path)
        if path.is_file() and path.suffix == ".safetensors" and _read_safetensors_meta(path) is not None:
            return _load_bank_file(path)
        return load_tokens(path)

    # ------------------------------------------------------------------ importers
    @classmethod
    def from_release(
        cls,
        path: str | os.PathLike,
        *,
        class_list: Sequence[ClassInfo] | None = None,
        base_model: str = IMAGENET_STAR_BASE_MODEL,
        **deprecated_names,
    ) -> TokenBank:
        """Import the ImageNet* release layout: ``{i}.bin`` files in a folder or in ``tokens.zip``.

        Each file is a ``torch.save``d tensor of one embedding row, read with
        ``torch.load(weights_only=True)``. Class names come from ``class_list`` (default the
        ImageNet-1k list) and token names follow the release's ``<{name}-{index}>``.
        """
        classes = renamed(deprecated_names, "classes", "class_list", class_list, where="TokenBank.from_release: ")
        reject_unknown(deprecated_names, "TokenBank.from_release")
        path = Path(path)
        rows: dict[int, torch.Tensor] = {}
        recorded = classes if isinstance(classes, ClassList) else imagenet_classes() if classes is None else None
        classes = list(classes) if classes is not None else list(imagenet_classes())
        by_index = {c.index: c for c in classes}
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for index, info in _release_zip_members(zf, path, by_index):
                    where = f"{path}:{info.filename}"
                    rows[index] = _as_row(_safe_torch_load(_token_file_bytes(zf, info, where), where), where)
        elif path.is_dir():
            folder = path / "tokens" if (path / "tokens").is_dir() else path
            for f in folder.glob("*.bin"):
                if f.stem.isdigit():
                    rows[int(f.stem)] = _as_row(_safe_torch_load(f.read_bytes(), str(f)), str(f))
        else:
            raise TokenBankError(
                f"ImageNet* tokens {str(path)!r} not found; pass the release's tokens.zip or its unzipped folder"
            )
        if not rows:
            raise TokenBankError(f"{str(path)!r} holds no tokens/{{i}}.bin files; is it the ImageNet* tokens.zip?")
        unknown = sorted(set(rows) - set(by_index))
        if unknown:
            raise TokenBankError(f"{str(path)!r} has tokens for class indices {unknown[:5]} beyond the class list")
        order = sorted(rows)
        dims = {rows[i].numel() for i in order}
        if len(dims) != 1:
            raise TokenBankError(f"{str(path)!r} mixes embedding widths {sorted(dims)}; every token must have one")
        if len(order) != len(by_index):
            logger.warning("%s holds %d of %d class tokens", path, len(order), len(by_index))
        return cls(torch.stack([rows[i] for i in order]), [by_index[i] for i in order], base_model=base_model,
                   class_list=recorded, source=path)

    @classmethod
    def from_diffusers(
        cls,
        path: str | os.PathLike,
        *,
        class_list: Sequence[ClassInfo] | None = None,
        base_model: str | None = None,
        **deprecated_names,
    ) -> TokenBank:
        """Import diffusers textual-inversion files (``{token: tensor}``) or a folder of them.

        The class of each token is read from a ``<name-index>`` token, else from a numeric
        file or folder name, else from the sorted file order; with ``class_list``, classes
        come from it by index.
        """
        classes = renamed(deprecated_names, "classes", "class_list", class_list, where="TokenBank.from_diffusers: ")
        reject_unknown(deprecated_names, "TokenBank.from_diffusers")
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise TokenBankError(f"textual-inversion path {str(path)!r} does not exist")
        if not files:
            raise TokenBankError(f"{str(path)!r} holds no .safetensors or .bin textual-inversion files")
        entries: list[tuple[str, torch.Tensor, Path]] = []
        for f in files:
            for token, tensor in _read_state_dict(f).items():
                entries.append((token, _as_row(tensor, f"{f} [{token}]"), f))
        by_index = {c.index: c for c in classes} if classes is not None else None
        infos, tokens, embs = [], [], []
        for position, (token, emb, f) in enumerate(entries):
            m = _TOKEN_NAME.match(token)
            numeric = next((p for p in (f.stem, f.parent.name) if p.isdigit()), None)
            if m:
                name, index = m.group(1), int(m.group(2))
            else:
                name, index = token.strip("<>"), int(numeric) if numeric is not None else position
            if by_index is not None:
                if index not in by_index:
                    raise TokenBankError(f"token {token!r} in {f} maps to class {index}, not in the class list")
                info = by_index[index]
            else:
                info = ClassInfo(index, name)
            infos.append(info)
            tokens.append(token)
            embs.append(emb)
        dims = {e.numel() for e in embs}
        if len(dims) != 1:
            raise TokenBankError(f"{str(path)!r} mixes embedding widths {sorted(dims)}; every token must have one")
        order = sorted(range(len(infos)), key=lambda i: infos[i].index)
        return cls(
            torch.stack([embs[i] for i in order]),
            [infos[i] for i in order],
            [tokens[i] for i in order],
            base_model=base_model,
            class_list=classes if isinstance(classes, ClassList) else None,
            source=path,
        )

    # ------------------------------------------------------------------ exporters
    def to_diffusers(self, folder: str | os.PathLike) -> Path:
        """Export one diffusers textual-inversion folder per class.

        Writes ``folder/{index:04d}/learned_embeds.safetensors`` holding ``{token: (1, dim)}``,
        the layout ``pipe.load_textual_inversion(folder/0207)`` reads.
        """
        from safetensors.torch import save

        folder = Path(folder)
        for i, (c, token) in enumerate(zip(self.class_infos, self.tokens)):
            data = save({token: self.embeddings[i : i + 1].clone()})
            atomic_write(folder / f"{c.index:04d}" / "learned_embeds.safetensors", data)
        return folder

    # ------------------------------------------------------------------ pipelines
    def inject(self, pipe, class_indices: Iterable[int] | None = None, *, model_name: str | None = None) -> None:
        """Add class tokens to a pipeline's tokenizer and text encoder.

        All tokens go in with one ``pipe.load_textual_inversion`` call; tokens already
        present with the same embedding are skipped. Afterwards every token must encode
        to exactly one token id.

        Raises:
            TokenBankError: the embedding width does not match the text encoder, a token
                name is taken by a different embedding, or a token splits into several ids.
        """
        bank = self if class_indices is None else self.subset(class_indices)
        text_encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
        table = text_encoder.get_input_embeddings().weight
        expected = int(table.shape[-1])
        model_name = model_name or getattr(getattr(pipe, "config", None), "_name_or_path", None) or "this pipeline"
        if expected != bank.dim:
            raise TokenBankError(dim_mismatch_message(bank, expected, model_name))
        vocab = tokenizer.get_vocab()
        new_tokens, new_rows = [], []
        for i, token in enumerate(bank.tokens):
            if token in vocab:
                current = table[vocab[token]].detach().float().cpu()
                if not torch.allclose(current, bank.embeddings[i], atol=1e-3, rtol=1e-3):
                    raise TokenBankError(
                        f"token {token!r} already exists in the tokenizer of {model_name} with a different "
                        "embedding; load this bank into a fresh pipeline or rename its tokens"
                    )
                continue
            new_tokens.append(token)
            new_rows.append(bank.embeddings[i])
        if new_tokens:
            pipe.load_textual_inversion(new_rows, token=new_tokens, tokenizer=tokenizer, text_encoder=text_encoder)
        ids = tokenizer(list(bank.tokens), add_special_tokens=False).input_ids
        bad = [t for t, i in zip(bank.tokens, ids) if len(i) != 1]
        if bad:
            raise TokenBankError(
                f"{len(bad)} class tokens do not encode to a single token id (e.g. {bad[0]!r}); the tokenizer "
                "normalises them away: rename the tokens (e.g. lower-case, no spaces)"
            )


# ---------------------------------------------------------------------- helpers
#: The largest ``{i}.bin`` read from a release ``tokens.zip``, as declared in the zip (and by the tensor
#: file inside), checked before reading: one row of up to 4096 float64 values is ~34 KB as ``torch.save`` writes it.
MAX_TOKEN_FILE_BYTES = 64 << 10


def _release_zip_members(zf: zipfile.ZipFile, path: Path, by_index: dict) -> list[tuple[int, zipfile.ZipInfo]]:
    """``(class index, member)`` of a release ``tokens.zip``'s ``{i}.bin`` files, checked from the zip's directory
    before anything is read: each at most :data:`MAX_TOKEN_FILE_BYTES`, one per class of the class list.

    Raises:
        TokenBankError: naming the member that is too large, repeated, or of a class beyond the class list.
    """
    out, seen = [], {}
    for info in zf.infolist():
        m = re.fullmatch(r"(?:.*/)?(\d+)\.bin", info.filename)
        if not m or info.is_dir() or "__MACOSX" in info.filename:
            continue
        index, where = int(m.group(1)), f"{path}:{info.filename}"
        if info.file_size > MAX_TOKEN_FILE_BYTES:
            raise TokenBankError(f"{where} is {info.file_size} bytes, more than the {MAX_TOKEN_FILE_BYTES} bytes of "
                                 "one embedding row; this is not the ImageNet* tokens.zip")
        if index in seen:
            raise TokenBankError(f"{str(path)!r} holds class {index} twice ({seen[index]!r} and {info.filename!r}); "
                                 "which one is meant is ambiguous: download tokens.zip again")
        if index not in by_index:
            raise TokenBankError(f"{str(path)!r} has tokens for class indices {[index]} beyond the class list")
        seen[index] = info.filename
        out.append((index, info))
    return out


def _token_file_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    """A member's bytes; a ``torch.save`` file (itself a zip) may not declare more than one row's bytes inside."""
    try:
        data = zf.read(info)
    except (zipfile.BadZipFile, OSError) as e:
        raise TokenBankError(f"{where} cannot be read ({e}); download tokens.zip again") from e
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            declared = sum(i.file_size for i in inner.infolist())
    except zipfile.BadZipFile:
        declared = 0  # not a zip: torch's legacy format holds its tensor bytes in the file itself
    if declared > MAX_TOKEN_FILE_BYTES:
        raise TokenBankError(f"{where} declares {declared} bytes of tensor data, more than the "
                             f"{MAX_TOKEN_FILE_BYTES} bytes of one embedding row; this is not the ImageNet* tokens.zip")
    return data


def dim_mismatch_message(bank: TokenBank, expected: int, model_name: str) -> str:
    return (
        f"tokens are {bank.dim}-d but the text encoder of {model_name} expects {expected}; use a token "
        f"bank learned for this model (this bank's base model: {bank.base_model or 'unknown'})"
    )


def _read_safetensors_meta(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise TokenBankError(f"{str(path)!r} is not a readable safetensors file ({e})") from e
    if _META_KEY not in meta:
        return None
    try:
        data = json.loads(meta[_META_KEY])
    except json.JSONDecodeError as cause:
        raise _damaged(path, "not JSON") from cause
    if not isinstance(data, dict):
        raise _damaged(path, f"a JSON {type(data).__name__}, not an object")
    if data.get("format") != _FORMAT:
        return None
    return data


def _damaged(path, what: str) -> TokenBankError:
    """The error for a bank file whose dsi-bench metadata was edited or broken."""
    return TokenBankError(f"{str(path)!r} has damaged dsi-bench metadata ({what}); re-export the bank from its source")


def _checked_meta_rows(meta: dict, path: Path, tensors: dict) -> list[dict]:
    """The ``classes`` entries of a bank's metadata, checked against each other and the file's tensors.

    Raises:
        TokenBankError: a malformed entry, a token without a tensor or a tensor without a token, a
            ``dim`` or ``format_version`` that disagrees with the file.
    """
    version = meta.get("format_version", 0)
    if not is_int(version):
        raise _damaged(path, f"format_version {version!r} is not an integer")
    if version > _FORMAT_VERSION:
        raise TokenBankError(f"{str(path)!r} uses token-bank format {version}; upgrade dsi-bench to read it")
    rows = meta.get("classes")
    if not isinstance(rows, list) or not rows:
        raise _damaged(path, "'classes' is not a non-empty list")
    for r in rows:
        if not (isinstance(r, dict) and is_int(r.get("index")) and r["index"] >= 0 and isinstance(r.get("name"), str)
                and isinstance(r.get("token"), str) and isinstance(r.get("wnid"), (str, type(None)))):
            raise _damaged(path, f"class entry {json.dumps(r)[:100]} needs an integer 'index' >= 0, a 'name' and a "
                                 "'token'")
    for key, kinds in (("base_model", (str, type(None))), ("extra", (dict, type(None)))):
        if not isinstance(meta.get(key), kinds):
            raise _damaged(path, f"{key!r} is a {type(meta.get(key)).__name__}")
    listed = {r["token"] for r in rows}
    missing = [r["token"] for r in rows if r["token"] not in tensors]
    if missing:
        raise TokenBankError(f"{str(path)!r} lists tokens without embeddings: {missing[:5]}; the file is damaged")
    unlisted = sorted(set(tensors) - listed)
    if unlisted:
        raise _damaged(path, f"the file holds {len(tensors)} embeddings but lists {len(listed)} classes; "
                             f"not listed: {unlisted[:3]}")
    dim, widths = meta.get("dim"), sorted({tensors[t].numel() for t in listed})
    if dim is not None and widths != [dim]:
        raise _damaged(path, f"'dim' is {dim!r} but the embeddings are {'/'.join(map(str, widths))}-d")
    return rows


def _load_bank_file(path: Path) -> TokenBank:
    meta = _read_safetensors_meta(path)
    tensors = _load_safetensors(path)
    rows = _checked_meta_rows(meta, path, tensors)
    emb = torch.stack([_as_row(tensors[r["token"]], f"{path} [{r['token']}]") for r in rows])
    return TokenBank(
        emb,
        [ClassInfo(r["index"], r["name"], r.get("wnid")) for r in rows],
        [r["token"] for r in rows],
        base_model=meta.get("base_model"),
        extra=meta.get("extra") or {},
        class_list=_recorded_class_list(meta, path),
        source=path,
    )


def _load_safetensors(path: Path) -> dict:
    """All tensors of a safetensors file.

    Raises:
        TokenBankError: the file cannot be read as safetensors.
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise TokenBankError(f"{str(path)!r} is not a readable safetensors file ({e})") from e


def _recorded_class_list(meta: dict, path) -> ClassList | None:
    """The class list a bank file records (``None`` in banks written before it was recorded)."""
    data = meta.get("class_list")
    if data is None:
        return None
    try:
        return ClassList.from_dict(data)
    except (ClassSpecError, TypeError) as e:  # TypeError: ids that are not a list
        raise _damaged(path, f"its class list: {e}") from e


def tokens_class_list(tokens, class_list: ClassList | None = None) -> ClassList:
    """The label space for generating with ``tokens``: ``class_list`` if given, else the class list a
    bank learned on another dataset records (:func:`bank_class_list`), else ImageNet-1k.

    Raises:
        ClassSpecError: ``class_list`` contradicts the bank's recorded class list.
    """
    from .classes import choose_class_list

    return choose_class_list(class_list, bank_class_list(tokens), "the token bank")


def bank_class_list(tokens) -> ClassList | None:
    """The non-ImageNet class list a token source records, without fetching or loading embeddings.

    Args:
        tokens: anything :func:`load_tokens` takes, or ``None``.

    Returns:
        The recorded :class:`~dsi_bench.classes.ClassList` of a :class:`TokenBank` or of a dsi-bench
        ``.safetensors`` bank file when it is not ImageNet-1k's; ``None`` for ImageNet banks, banks
        that record none (older files), the release's tokens, diffusers files and ``None``.
    """
    if tokens is None:
        return None
    if isinstance(tokens, TokenBank):
        return tokens.custom_class_list
    if isinstance(tokens, str) and tokens in ("imagenet-star", IMAGENET_STAR_TOKENS_REPO):
        return None
    path = Path(resolve_world(tokens, "tokens")).expanduser()
    if not (path.is_file() and path.suffix == ".safetensors"):
        return None
    meta = _read_safetensors_meta(path)
    recorded = None if meta is None else _recorded_class_list(meta, path)
    return None if recorded is None or recorded.is_imagenet else recorded


def token_classes(tokens, class_list: ClassList, classes=None, generator=None) -> list[int]:
    """The classes to generate: ``classes`` resolved in ``class_list``; when not given, every class of the
    label space the tokens cover (all of it for the release's 1000, the world's ten for ``"world"``), and
    with class words (``tokens=None``) on the world's generator, the world's ten classes."""
    from .embedded import is_world, world_class_indices

    if classes is None and tokens is None and is_world(generator) and class_list.is_imagenet:
        return world_class_indices()
    if classes is not None or tokens is None or (isinstance(tokens, str) and tokens in (
            "imagenet-star", IMAGENET_STAR_TOKENS_REPO)):  # the release covers every ImageNet class: no fetch
        return class_list.resolve(classes)
    covered = set(load_tokens(tokens, class_list=class_list).class_indices)
    return [c for c in range(len(class_list)) if c in covered] or class_list.resolve(None)


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        sd = _load_safetensors(path)
    else:
        sd = _safe_torch_load(path.read_bytes(), str(path))
    if isinstance(sd, torch.Tensor):
        raise TokenBankError(f"{str(path)!r} holds a bare tensor; diffusers files map a token to its embedding")
    if not isinstance(sd, dict):
        raise TokenBankError(f"{str(path)!r} is not a {{token: tensor}} textual-inversion file")
    if "string_to_param" in sd:  # Automatic1111 layout
        sd = {str(sd.get("name", path.stem)): sd["string_to_param"]["*"]}
    return sd


def fetch_imagenet_star_tokens(*, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Download the ImageNet* ``tokens.zip`` from the Hub (cached by huggingface_hub).

    Raises:
        OfflineError: the Hub cannot be reached and the file is not cached.
    """
    from huggingface_hub import hf_hub_download

    from .online import hub_unreachable

    offline = hub_unreachable()  # offline: the cached copy or one line at once, not retries for half a minute
    try:
        return Path(
            hf_hub_download(
                IMAGENET_STAR_TOKENS_REPO, "tokens.zip", repo_type="dataset", revision=revision, cache_dir=cache_dir,
                local_files_only=offline is not None,
            )
        )
    except Exception as e:  # noqa: BLE001 - offline, DNS, HTTP and cache-miss errors all mean the same here
        raise OfflineError(
            f"could not download tokens.zip from the Hub dataset {IMAGENET_STAR_TOKENS_REPO} "
            f"({offline or type(e).__name__}); download it where you are online and pass its local path "
            "(tokens='path/to/tokens.zip' or --tokens path/to/tokens.zip)"
        ) from e


def load_tokens(source, *, class_list: Sequence[ClassInfo] | None = None, **deprecated_names) -> TokenBank:
    """Load a token bank from any supported source (read once per process and file version).

    Args:
        source: a :class:`TokenBank`; ``"world"``: the embedded world's learned tokens;
            ``"imagenet-star"`` (or the Hub repo id) to fetch the
            release's tokens; a dsi-bench ``.safetensors`` bank; the release's ``tokens.zip``
            or ``tokens/`` folder; a diffusers ``learned_embeds`` file or a folder of them.
        class_list: the classes of release/diffusers imports (default: ImageNet-1k).

    Raises:
        TokenBankError: the path does not exist or has an unknown layout.
        OfflineError: the Hub tokens were asked for and the Hub is unreachable.
    """
    classes = renamed(deprecated_names, "classes", "class_list", class_list, where="load_tokens: ")
    reject_unknown(deprecated_names, "load_tokens")
    if isinstance(source, TokenBank):
        return source
    if isinstance(source, str) and source in ("imagenet-star", IMAGENET_STAR_TOKENS_REPO):
        source = fetch_imagenet_star_tokens()
    source = resolve_world(source, "tokens")
    path = Path(source).expanduser()
    if path.exists():
        # Datasets for many shifts usually share one bank file: read it once per process.
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, None if classes is None else tuple(classes))
        return _LOADED.get_or_create(key, lambda: _load_tokens_uncached(path, classes))
    return _load_tokens_uncached(path, classes)


#: Banks read in this process (immutable, so sharing them is safe).
_LOADED = Memo("token banks", 16)


def _load_tokens_uncached(path: Path, classes) -> TokenBank:
    source = path
    if not path.exists():
        raise TokenBankError(
            f"token source {str(source)!r} does not exist; pass a .safetensors bank, the ImageNet* tokens.zip "
            "or folder, a diffusers learned_embeds file/folder, or 'imagenet-star' to download the release's"
        )
    if path.is_file():
        if path.suffix == ".safetensors":
            if _read_safetensors_meta(path) is not None:
                return _load_bank_file(path)
            return TokenBank.from_diffusers(path, class_list=classes)
        if _is_torch_save_zip(path):  # torch.save's zip layout: a diffusers learned_embeds.bin, not tokens.zip
            return TokenBank.from_diffusers(path, class_list=classes)
        if zipfile.is_zipfile(path):
            return TokenBank.from_release(path, class_list=classes)
        if path.suffix in (".bin", ".pt", ".pth"):
            return TokenBank.from_diffusers(path, class_list=classes)
        raise TokenBankError(f"unknown token file type {str(path)!r}; expected .safetensors, .zip, .bin or .pt")
    folder = path / "tokens" if (path / "tokens").is_dir() else path
    if any(f.stem.isdigit() for f in folder.glob("*.bin")):
        return TokenBank.from_release(path, class_list=classes)
    return TokenBank.from_diffusers(path, class_list=classes)


def _is_torch_save_zip(path: Path) -> bool:
    """Whether a file is a ``torch.save`` archive (a zip with ``<name>/data.pkl``, e.g. diffusers'
    ``learned_embeds.bin``) rather than a plain zip such as the release's ``tokens.zip``."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(re.fullmatch(r"[^/]+/data\.pkl", name) for name in zf.namelist())
    except zipfile.BadZipFile as e:
        raise TokenBankError(f"{str(path)!r} is a damaged zip file ({e}); download or export it again") from e


def _index_spec(indices: list[int], limit: int = 8) -> str:
    """Sorted class indices as a class spec, ``"0-1,7,9-12"`` (the first ``limit`` runs, then ``...``)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    return ",".join(parts[:limit]) + (",..." if len(parts) > limit else "")
