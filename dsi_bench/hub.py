"""Hugging Face datasets: export a shard folder as a dataset repository and upload it.

Reading a published set back is the ``hub`` source (:mod:`dsi_bench.sources.hub`).

Export layout (what ``--dry-run OUT`` writes and what is uploaded)::

    README.md                                 dataset card: YAML configs (one per shift) + settings
    manifest.json                             the build's manifest, unchanged
    data/{shift}/{shift}-{k:06d}.tar          WebDataset shards as built   (--format webdataset)
    data/{shift}/{shift}-{k:06d}.parquet      image, label, key, metadata  (--format parquet)

Both load with ``datasets.load_dataset(OUT_OR_REPO, name=shift, split="test")`` (and with
``streaming=True``); the card declares the features, with labels as a ``ClassLabel`` of the label
space's names (a repeated name gets its index: ``missile (657)``).
WebDataset columns are named by the members (``png``/``jpg``, ``cls``, ``json``, ``__key__``);
Parquet columns are ``image``, ``label``, ``key``, ``metadata`` (JSON text).

Uploads go through ``huggingface_hub``: ``create_repo``, then ``upload_folder`` (with ``hf_xet``,
huggingface_hub >= 2 batches large folders and a rerun resumes, uploaded data being
deduplicated; older versions use the resumable ``upload_large_folder`` above 1 GiB). The token
comes from ``HF_TOKEN`` or the login cache and is never printed or written.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from .compat import reject_unknown, renamed
from .errors import OfflineError, ShardError, SpecError
from .layout import DATASET_FORMATS
from .sources.hub import SPLIT, HubSet  # the reader lives with its source plugin

__all__ = ["FORMATS", "HubSet", "export_dataset", "publish"]

logger = logging.getLogger(__name__)

FORMATS = DATASET_FORMATS
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_LARGE = 1 << 30  # above this, upload_large_folder (resumable, parallel)
CITATION = """@article{vendrow2023dataset,
  title   = {Dataset Interfaces: Diagnosing Model Failures Using Controllable Counterfactual Generation},
  author  = {Vendrow, Joshua and Jain, Saachi and Engstrom, Logan and Madry, Aleksander},
  journal = {arXiv preprint arXiv:2302.07865},
  year    = {2023}
}"""


def check_repo_id(repo: str) -> str:
    """``USER/NAME`` with Hub-valid characters.

    Raises:
        SpecError: naming the value and the expected form.
    """
    if not isinstance(repo, str) or not _REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo \
            or repo.endswith((".git", ".")):
        raise SpecError(f"repository id {repo!r} is not of the form USER/NAME (letters, digits, '-', '_', '.'; "
                        "e.g. my-lab/imagenet-star-snow)")
    return repo


# ---------------------------------------------------------------------- export
def _license(plan: dict) -> str:
    if plan.get("kind") == "imagenet-star":
        return "mit"
    return "openrail++" if "stable-diffusion-2" in str(plan.get("model", "")) else "other"


def _features(class_names: list[str], image_ext: str, fmt: str, metas: list[dict]):
    import datasets

    if fmt == "parquet":
        return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names),
                                  "key": datasets.Value("string"), "metadata": datasets.Value("string")})
    meta_feature = datasets.Dataset.from_list([{"json": m} for m in metas]).features["json"]
    return datasets.Features({"__key__": datasets.Value("string"), "__url__": datasets.Value("string"),
                              image_ext: datasets.Image(), "cls": datasets.ClassLabel(names=class_names),
                              "json": meta_feature})


def _card(manifest: dict, fmt: str, repo: str | None, infos: dict, license_id: str) -> str:
    import yaml

    plan = manifest.get("plan", {})
    ext = "tar" if fmt == "webdataset" else "parquet"
    header = {
        "license": license_id,
        "pretty_name": f"dsi-bench shifted test sets ({plan.get('kind', 'shards')})",
        "task_categories": ["image-classification"],
        "tags": ["dsi-bench", "distribution-shift", "robustness", "imagenet"],
        "configs": [{"config_name": s, "data_files": [{"split": SPLIT, "path": f"data/{s}/*.{ext}"}]}
                    for s in infos],
        "dataset_info": [{"config_name": s, "features": info["features"]._to_yaml_list(),
                          "splits": [{"name": SPLIT, "num_bytes": info["bytes"], "num_examples": info["n"]}]}
                         for s, info in infos.items()],
    }
    settings = _settings_rows(plan)
    counts = "\n".join(f"| {s} | {info['n']} |" for s, info in infos.items())
    name = repo or "PATH_OR_REPO"
    first = next(iter(infos))
    columns = ("`png`/`jpg` (image), `cls` (label), `json` (metadata), `__key__`" if fmt == "webdataset"
               else "`image`, `label`, `key`, `metadata` (JSON)")
    body = f"""
# dsi-bench shifted test sets

Labelled test sets under controlled distribution shifts, made with
[dsi-bench](https://pypi.org/project/dsi-bench/) (package {manifest.get('package_version')}). One configuration
per shift; every sample has a stable key `{{shift}}/{{class:04d}}/{{index:02d}}`, and the same (class, index)
in two shifts shares its seed, so shifted samples pair with their unshifted twins in `base`.

```python
from datasets import load_dataset
ds = load_dataset("{name}", name="{first}", split="{SPLIT}")   # columns: {columns}
```

or, with dsi-bench: `ShiftedImageNet("{first}", source="hub", root="{name}")`.

## How it was made

| setting | value |
|---|---|
{settings}

The full plan and a sha256 per shard are in `manifest.json`.

## Samples per shift

| shift | samples |
|---|---|
{counts}

## Citation

```bibtex
{CITATION}
```
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n" + body


def _settings_rows(plan: dict) -> str:
    if plan.get("kind") == "imagenet-star":
        rows = [("source", "the ImageNet* release (madrylab/imagenet-star), original JPEG bytes"),
                ("mask source sha256", plan.get("masks_sha256") or "none (no masks applied)"),
                ("missing files", json.dumps(plan.get("missing") or {})),
                ("classes", f"{len(plan.get('classes', []))}")]
    else:
        px = plan.get("pixel_settings", {})
        rows = [("model", f"{plan.get('model')} (revision {plan.get('revision') or 'default'})"),
                ("model fingerprint", plan.get("model_fingerprint")),
                ("token bank fingerprint", plan.get("tokens") or "none (class names in prompts)"),
                ("sampler", f"{px.get('sampler')} ({px.get('scheduler')}), {px.get('steps')} steps"),
                ("guidance scale", px.get("guidance_scale")),
                ("sizes", f"generated at {px.get('gen_size')} px, stored at "
                          f"{px.get('out_size') or px.get('gen_size')} px"),
                ("seed", f"{plan.get('seed')} (per sample: sha256 of seed, class, index)"),
                ("per class", plan.get("per_class")),
                ("classes", f"{len(plan.get('classes', []))}"),
                ("image format", f"{plan.get('image_format')}" + (f", quality {plan.get('quality')}"
                                                                 if plan.get("quality") else "")),
                ("mask source", "none")]
    rows.append(("shifts", ", ".join(f"{s['id']}" + (f" (\"{s['template']}\")" if s.get("template") else "")
                                     for s in plan.get("shifts", []))))
    return "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` (a hard link where possible), atomically; never removes a file first.

    When ``dst`` already is ``src`` (an export folder that holds the shard folder itself) nothing is done:
    replacing it would remove the source.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def export_dataset(shards_dir, out, *, dataset_format: str = "webdataset", repo: str | None = None,
                   license_id: str | None = None, class_list=None, **deprecated_names) -> dict:
    """Lay out a dataset repository in ``out`` (see the module docs); nothing is uploaded.

    Args:
        shards_dir: a local shard folder (``dsi-bench build`` / ``convert`` output).
        out: the folder to lay the repository out in.
        dataset_format: ``"webdataset"`` (the tars as built) or ``"parquet"``.
        repo: the repository id the card's examples name.
        license_id: the card's license (default: by the data's origin).
        class_list: the label space, for the label feature (default: the one the manifest records,
            from a build with a custom token bank, else ImageNet-1k).

    Returns:
        ``{"out", "format", "shifts": {shift: n}, "plan_hash"}``.

    Raises:
        ShardError: no manifest, or shards that ``verify`` refuses (named: missing, damaged, images that
            do not decode or are not the format their name says); a shift with no samples.
        SpecError: an unknown format.
    """
    from .files import atomic_write, contained_path, ensure_writable_dir
    from .shards import ShardSet, verify_shards

    fmt = renamed(deprecated_names, "fmt", "dataset_format", dataset_format, default="webdataset",
                  where="export_dataset: ")
    reject_unknown(deprecated_names, "export_dataset")
    if fmt not in FORMATS:
        raise SpecError(f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    shards = ShardSet(shards_dir)
    if shards.root.local is None:
        raise SpecError(f"export reads a local shard folder; {shards.root.url!r} is a URL")
    report = verify_shards(shards_dir)  # what `verify` refuses is never published (images decoded too)
    if not report.ok:
        name, why = sorted(report.problems.items())[0]
        raise ShardError(f"refusing to publish: shard {name} fails `dsi-bench verify` ({why})"
                         + (f" and {len(report.problems) - 1} more" if len(report.problems) > 1 else "")
                         + "; run `dsi-bench verify` and rebuild")
    empty = [s for s, v in shards.manifest.get("shifts", {}).items() if not v.get("samples")]
    if empty or not shards.records:
        raise ShardError(f"refusing to publish: shift(s) {', '.join(empty) or 'all'} have no samples")
    from .classes import choose_class_list

    # ClassLabel keys labels by name: repeated names (ImageNet's two 'missile's) get their index appended
    class_names = choose_class_list(class_list, shards.class_list, repr(str(shards_dir))).unique_names
    out = ensure_writable_dir(out, "export folder")
    infos = {}
    for shift in shards.shifts:
        entries = shards.entries(shift)
        metas = [shards.load_metadata(e) for e in entries]
        ext = entries[0].image_ext
        for record in shards.shards(shift):
            rel = Path(record["path"])  # checked to stay inside the shard folder when the manifest was read
            dst = contained_path(out, f"data/{rel.as_posix()}", "export")
            if fmt == "webdataset":
                _link_or_copy(shards.root.local / rel, dst)
            else:
                _write_parquet(shards, record, dst.with_suffix(".parquet"), class_names)
        written = sum(p.stat().st_size for p in (out / "data" / shift).glob("*") if p.is_file())
        infos[shift] = {"n": len(entries), "bytes": written, "features": _features(class_names, ext, fmt, metas)}
    atomic_write(out / "manifest.json", json.dumps(shards.manifest, indent=1, sort_keys=True).encode() + b"\n")
    card = _card(shards.manifest, fmt, repo, infos, license_id or _license(shards.plan))
    atomic_write(out / "README.md", card.encode())
    return {"out": out, "format": fmt, "shifts": {s: i["n"] for s, i in infos.items()},
            "plan_hash": shards.manifest.get("plan_hash")}


def _write_parquet(shards, record: dict, path: Path, class_names: list[str]) -> None:
    import datasets

    from .files import atomic_write

    rows = {"image": [], "label": [], "key": [], "metadata": []}
    for e in shards.index(record):
        data = shards.read_member(e.shard, e.image_offset, e.image_size)
        rows["image"].append({"bytes": data, "path": f"{e.key.replace('/', '_')}.{e.image_ext}"})
        rows["label"].append(e.label)
        rows["key"].append(e.key)
        rows["metadata"].append(json.dumps(shards.load_metadata(e), sort_keys=True))
    features = _features(class_names, "", "parquet", [])
    buf = io.BytesIO()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(buf)
    atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------------- upload
def _is_network_error(e: BaseException) -> bool:
    seen = 0
    while e is not None and seen < 6:
        name = type(e).__name__
        if any(w in name for w in ("Connect", "Timeout", "Network", "OfflineMode", "ProxyError")):
            return True
        if isinstance(e, OSError) and "HTTPError" not in name and "NotFound" not in name:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _hub_error(e: Exception, repo: str) -> Exception:
    """A one-line error for a Hub failure, never echoing a token."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = re.sub(r"hf_[A-Za-z0-9]{6,}", "hf_***", text)
    if _is_network_error(e):
        return OfflineError(f"cannot reach the Hugging Face Hub to publish {repo} ({type(e).__name__}: {text[:160]}); "
                            "check the network, or write the repository locally with --dry-run OUT_DIR")
    return SpecError(f"the Hub refused publishing {repo}: {text[:200]}")


def _probe(api) -> None:
    """Fail fast (no retries) when the Hub cannot be reached at all."""
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        raise OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
    get_session().head(api.endpoint, timeout=10)


def publish(shards_dir, repo: str, *, dataset_format: str = "webdataset", private: bool = False, dry_run=None,
            force: bool = False, token: str | None = None, endpoint: str | None = None,
            license_id: str | None = None, progress: bool = True, **deprecated_names) -> dict:
    """Export a shard folder and upload it as a dataset repository (or only export, with ``dry_run``).

    Args:
        repo: ``USER/NAME``.
        dataset_format: ``"webdataset"`` (the tars as built) or ``"parquet"``.
        dry_run: a folder: write exactly what would be uploaded there, upload nothing.
        force: publish over an existing repository whose manifest has another plan.
        token: a Hub token (default: ``HF_TOKEN`` or the login cache); never logged.
        endpoint: another Hub endpoint (mirrors, enterprise Hubs).

    Raises:
        SpecError, ShardError: bad repo id, shards that disagree with their manifest, an existing
            repository of another plan (without ``force``).
        OfflineError: the Hub cannot be reached (the message suggests ``--dry-run``).
    """
    fmt = renamed(deprecated_names, "fmt", "dataset_format", dataset_format, default="webdataset",
                  where="publish: ")
    reject_unknown(deprecated_names, "publish")
    check_repo_id(repo)
    if dry_run is not None:
        from .files import check_writable

        check_writable(dry_run, "dry-run folder", folder=True)  # before the shards are verified (minutes)
        result = export_dataset(shards_dir, dry_run, dataset_format=fmt, repo=repo, license_id=license_id)
        return {**result, "uploaded": False}
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        _probe(api)  # before staging anything: offline is the common failure
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, repo) from e
    # Stage beside the shards (same file system): the tars are hard-linked, not copied.
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=str(Path(shards_dir).expanduser())))
    try:
        result = export_dataset(shards_dir, staging, dataset_format=fmt, repo=repo, license_id=license_id)
        try:
            remote = _remote_plan_hash(api, repo)
            if remote is not None and remote != result["plan_hash"] and not force:
                raise ShardError(f"{repo} already holds a dataset of another plan (manifest plan_hash "
                                 f"{remote[:12]} vs {result['plan_hash'][:12]}); publish to another repository, or "
                                 "pass force=True (--force) to replace it")
            api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            size = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
            large = getattr(api, "upload_large_folder", None)  # huggingface_hub < 2: the resumable uploader
            if size > _LARGE and large is not None:
                large(repo_id=repo, folder_path=staging, repo_type="dataset", print_report=progress)
            else:  # huggingface_hub >= 2 (hf_xet): batched, and a rerun resumes (uploaded data is deduplicated)
                api.upload_folder(repo_id=repo, folder_path=staging, repo_type="dataset",
                                  commit_message=f"dsi-bench: {', '.join(result['shifts'])}")
        except (ShardError, SpecError):
            raise
        except Exception as e:  # noqa: BLE001 - network and Hub errors become one line
            raise _hub_error(e, repo) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**result, "uploaded": True, "url": f"{(endpoint or 'https://huggingface.co').rstrip('/')}/datasets/{repo}"}


def _remote_plan_hash(api, repo: str) -> str | None:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        path = api.hf_hub_download(repo, "manifest.json", repo_type="dataset")
    except (RepositoryNotFoundError, EntryNotFoundError):
        return None
    try:
        return json.loads(Path(path).read_text()).get("plan_hash")
    except (OSError, ValueError):
        return None
