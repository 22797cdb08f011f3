"""The benchmark's data: made once on local disk (the "local copy" baselines read it), then
uploaded to each S3 server.

    DATA_DIR/
    ├── dataset.json                 the spec it was made from (reused when it matches)
    ├── weights/medium.bin           random bytes, 1 GiB by default  -> most rows
    ├── weights/large.bin            random bytes, 4 GiB by default  -> cold read + peak RSS
    ├── weights/model.safetensors    ~1 GiB, ~500 float16 tensors laid out like a transformer
    └── tree/dNN/fNNNN.{json,txt,bin}  2,000 small files in 10 directories (256 B - 64 KiB)

Everything is derived from a fixed seed, so two runs with the same spec read the same bytes.
The bytes are random (incompressible) so no layer can cheat with compression.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from boto3.s3.transfer import TransferConfig
from safetensors.numpy import save_file

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MEDIUM_KEY = "weights/medium.bin"
LARGE_KEY = "weights/large.bin"
SAFETENSORS_KEY = "weights/model.safetensors"
TREE_PREFIX = "tree/"

_SEED = 20240611
_WRITE_CHUNK = 16 << 20  # random bytes are generated and written 16 MiB at a time
_TREE_DIRS = 10
# Small-file sizes are log-uniform between these: configs, tokenizer pieces, prompt JSON.
_SMALL_MIN_BYTES = 256
_SMALL_MAX_BYTES = 64 << 10
_SMALL_EXTENSIONS = (".json", ".txt", ".bin")
# About 40 transformer layers whatever the target size: the hidden size scales instead, so a
# --quick file still has hundreds of tensors. Each layer holds 4 d*d attention matrices and a
# d*4d + 4d*d MLP in float16: 24 * d^2 bytes.
_LAYERS = 40
_LAYER_BYTES_PER_D2 = 24
_HIDDEN_MULTIPLE = 64
# Multipart upload parts: 16 MiB with 8 threads keeps SeaweedFS near its write speed here.
_UPLOAD = TransferConfig(
    multipart_threshold=64 << 20, multipart_chunksize=16 << 20, max_concurrency=8
)
_SMALL_UPLOAD_THREADS = 16


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    medium_bytes: int
    large_bytes: int
    safetensors_bytes: int
    tree_files: int


@dataclass(frozen=True, slots=True)
class Dataset:
    root: Path
    spec: DatasetSpec
    tree_keys: tuple[str, ...]
    safetensors_size: int

    def local(self, key: str) -> Path:
        return self.root / key

    def size_of(self, key: str) -> int:
        return self.local(key).stat().st_size

    @property
    def tree_subset_prefix(self) -> str:
        """One of the tree's directories (a tenth of its files): the WAN profile reads only
        this, because every file costs at least one 40 ms round trip there."""
        return f"{TREE_PREFIX}d00/"

    def tree_keys_under(self, prefix: str) -> tuple[str, ...]:
        return tuple(key for key in self.tree_keys if key.startswith(prefix))


def build(root: Path, spec: DatasetSpec, log: Callable[[str], None]) -> Dataset:
    """Make the local files, or reuse them when `root` already holds this spec."""
    manifest = root / "dataset.json"
    tree_keys = _tree_layout(spec.tree_files)
    if manifest.exists() and json.loads(manifest.read_text()) == asdict(spec):
        log(f"reusing data in {root}")
    else:
        root.mkdir(parents=True, exist_ok=True)
        manifest.unlink(missing_ok=True)
        rng = np.random.default_rng(_SEED)
        for key, size in ((MEDIUM_KEY, spec.medium_bytes), (LARGE_KEY, spec.large_bytes)):
            log(f"writing {key} ({size >> 20} MiB of random bytes)")
            _write_random(root / key, size, rng)
        log(f"writing {SAFETENSORS_KEY} (~{spec.safetensors_bytes >> 20} MiB)")
        _write_safetensors(root / SAFETENSORS_KEY, spec.safetensors_bytes, rng)
        log(f"writing {len(tree_keys)} small files under {TREE_PREFIX}")
        _write_tree(root, tree_keys, rng)
        manifest.write_text(json.dumps(asdict(spec)))
    st_size = (root / SAFETENSORS_KEY).stat().st_size
    return Dataset(root=root, spec=spec, tree_keys=tree_keys, safetensors_size=st_size)


def upload(
    dataset: Dataset,
    client: S3Client,
    bucket: str,
    *,
    big_keys: tuple[str, ...],
    tree_prefix: str,
    log: Callable[[str], None],
) -> None:
    """Create `bucket` and put the named big objects and the tree files under `tree_prefix`."""
    client.create_bucket(Bucket=bucket)
    for key in big_keys:
        log(f"uploading {key} ({dataset.size_of(key) >> 20} MiB)")
        client.upload_file(str(dataset.local(key)), bucket, key, Config=_UPLOAD)
    small = dataset.tree_keys_under(tree_prefix)
    log(f"uploading {len(small)} small files under {tree_prefix}")

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=dataset.local(key).read_bytes())

    with ThreadPoolExecutor(_SMALL_UPLOAD_THREADS) as pool:
        list(pool.map(put, small))


def _tree_layout(files: int) -> tuple[str, ...]:
    keys = []
    for index in range(files):
        directory = index % _TREE_DIRS
        extension = _SMALL_EXTENSIONS[index % len(_SMALL_EXTENSIONS)]
        keys.append(f"{TREE_PREFIX}d{directory:02d}/f{index:05d}{extension}")
    return tuple(sorted(keys))


def _write_random(path: Path, size: int, rng: np.random.Generator) -> None:
    """One random 16 MiB block, XORed with a fresh random word per chunk: every chunk differs
    and stays incompressible, at memory speed (a generator makes only ~100 MB/s here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = np.frombuffer(rng.bytes(_WRITE_CHUNK), dtype=np.uint64)
    with path.open("wb") as out:
        remaining = size
        while remaining > 0:
            word = rng.integers(0, np.iinfo(np.uint64).max, dtype=np.uint64, endpoint=True)
            chunk = np.bitwise_xor(block, word).tobytes()
            out.write(chunk[: min(_WRITE_CHUNK, remaining)])
            remaining -= _WRITE_CHUNK


def _random_f16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # Random bit patterns, not normal samples: 20x faster to make and just as incompressible.
    # Some are NaN/inf, which does not matter to a loader.
    count = math.prod(shape)
    return np.frombuffer(rng.bytes(count * 2), dtype=np.float16).reshape(shape)


def _write_safetensors(path: Path, target_bytes: int, rng: np.random.Generator) -> None:
    d = max(
        _HIDDEN_MULTIPLE,
        round(math.sqrt(target_bytes / (_LAYERS * _LAYER_BYTES_PER_D2)) / _HIDDEN_MULTIPLE)
        * _HIDDEN_MULTIPLE,
    )
    layers = max(1, target_bytes // (_LAYER_BYTES_PER_D2 * d * d))
    tensors: dict[str, np.ndarray] = {}
    for layer in range(layers):
        p = f"model.layers.{layer}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{p}.self_attn.{name}.weight"] = _random_f16(rng, (d, d))
        for name in ("q_proj", "k_proj", "v_proj"):
            tensors[f"{p}.self_attn.{name}.bias"] = _random_f16(rng, (d,))
        tensors[f"{p}.mlp.up_proj.weight"] = _random_f16(rng, (4 * d, d))
        tensors[f"{p}.mlp.down_proj.weight"] = _random_f16(rng, (d, 4 * d))
        tensors[f"{p}.input_layernorm.weight"] = _random_f16(rng, (d,))
        tensors[f"{p}.post_attention_layernorm.weight"] = _random_f16(rng, (d,))
    used = sum(t.nbytes for t in tensors.values())
    vocab = max(1, (target_bytes - used) // (2 * d))
    tensors["model.embed_tokens.weight"] = _random_f16(rng, (vocab, d))
    tensors["model.norm.weight"] = _random_f16(rng, (d,))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def _write_tree(root: Path, keys: tuple[str, ...], rng: np.random.Generator) -> None:
    low, high = math.log(_SMALL_MIN_BYTES), math.log(_SMALL_MAX_BYTES)
    for key in keys:
        size = int(math.exp(rng.uniform(low, high)))
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(size))
