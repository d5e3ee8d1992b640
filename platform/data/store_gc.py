"""`palm data gc STORE`: remove the shards no manifest lists (what an edited input leaves).

A shard is named by a hash of its input unit and the unit's files' fingerprints, so an edited
input file gives new shard names and the old shards stay in the store, listed nowhere. Found
from one listing of the store against its manifest:

    listing: SOURCE/SHARD.json, SOURCE/SHARD/...   manifest: every source's shard names
    orphans = listed shards - the manifest's

Never a shard a running prepare may be writing: a prepare writes its manifest, listing every
shard it will write, before it writes any (prepare.py). So gc refuses a store whose manifest
is not complete (a prepare may be running), and reads the manifest again after listing: if
it changed, a prepare started meanwhile and nothing is removed.
"""

from __future__ import annotations

from dataclasses import dataclass

from palm_platform.data import store


@dataclass(frozen=True)
class Orphans:
    root: str
    shards: list[str]  # SOURCE/SHARD, sorted
    files: int
    bytes: int


def find_orphans(root: str) -> tuple[Orphans, store.Manifest]:
    """The shards under `root` that its (complete) manifest does not list."""
    manifest = store.read_manifest(root)
    if manifest is None:
        raise store.StoreError(f"{root}: no token store here ({store.MANIFEST} missing). Fix: "
                               "give the store's folder or gs:// prefix")
    if not manifest.complete:
        raise store.StoreError(f"{root}: the store is still being prepared (its manifest is not "
                               "complete), and gc never removes a shard a prepare may be "
                               "writing. Fix: let `palm data prepare` finish, then run gc again")
    listed = store.list_sizes(root)
    kept = {f"{source}/{entry.name}" for source in manifest.sources
            for entry in manifest.shards(source)}
    shards: dict[str, list[int]] = {}
    for path, size in listed.items():
        if path == store.MANIFEST or "/" not in path:
            continue
        source, _, rest = path.partition("/")
        shard = rest.split("/", 1)[0].removesuffix(".json")
        if f"{source}/{shard}" not in kept:
            shards.setdefault(f"{source}/{shard}", []).append(size)
    found = Orphans(root, sorted(shards), sum(len(s) for s in shards.values()),
                    sum(sum(s) for s in shards.values()))
    return found, manifest


def remove_orphans(root: str) -> Orphans:
    """Remove every orphaned shard (its sidecar first, so a torn removal is never a
    committed shard); StoreError and nothing removed if a prepare started meanwhile."""
    orphans, manifest = find_orphans(root)
    if store.read_manifest(root) != manifest:
        raise store.StoreError(f"{root}: its manifest changed while gc listed it (a prepare "
                               "started); nothing removed. Fix: run gc again once it finishes")
    for shard in orphans.shards:
        base = store.join(root, shard)
        store.delete_prefix(base + ".json")
        store.delete_prefix(base)
    return orphans
