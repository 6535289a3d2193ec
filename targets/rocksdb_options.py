"""RocksDB options for the rocksdb target: the knobs, where RocksDB records each one, read-back.

It owns the knob names and defaults (kept equal to ``specs/rocksdb.yaml`` by a test, so trial
processes need no YAML), reading the effective config back from what RocksDB wrote into the DB
directory (the newest ``OPTIONS-*`` file; the block cache capacity from the ``LOG``, as OPTIONS
files do not hold it; the bloom filter's bits per key from ``OPTIONS`` or, when a RocksDB writes
only ``bloomfilter`` there, from the filter sizes of the table files it created), the config as an
OPTIONS file (``render_native``), and RocksDB's statistics dump as counters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from targets.base import ConfigRefused

DB_OPTIONS = "DBOptions"
CF_OPTIONS = 'CFOptions "default"'
TABLE_OPTIONS = 'TableOptions/BlockBasedTable "default"'

#: Every knob: the OPTIONS section and key RocksDB records it under (None: not in OPTIONS).
KNOB_SOURCES: dict[str, tuple[str, str] | None] = {
    "write_buffer_size": (CF_OPTIONS, "write_buffer_size"),
    "max_write_buffer_number": (CF_OPTIONS, "max_write_buffer_number"),
    "min_write_buffer_number_to_merge": (CF_OPTIONS, "min_write_buffer_number_to_merge"),
    "level0_file_num_compaction_trigger": (CF_OPTIONS, "level0_file_num_compaction_trigger"),
    "level0_slowdown_writes_trigger": (CF_OPTIONS, "level0_slowdown_writes_trigger"),
    "max_bytes_for_level_base": (CF_OPTIONS, "max_bytes_for_level_base"),
    "target_file_size_base": (CF_OPTIONS, "target_file_size_base"),
    "max_background_jobs": (DB_OPTIONS, "max_background_jobs"),
    "max_open_files": (DB_OPTIONS, "max_open_files"),
    "bytes_per_sync": (DB_OPTIONS, "bytes_per_sync"),
    "compression": (CF_OPTIONS, "compression"),
    "block_size": (TABLE_OPTIONS, "block_size"),
    "block_cache_size": None,  # LOG: block_cache_options / capacity
    "bloom_bits": (TABLE_OPTIONS, "filter_policy"),
    "cache_index_and_filter_blocks": (TABLE_OPTIONS, "cache_index_and_filter_blocks"),
}
KNOBS = tuple(KNOB_SOURCES)

#: RocksDB's own defaults (the LRU block cache RocksDB 7.x creates when given none is 8 MiB), in
#: the units of specs/rocksdb.yaml. Every trial applies every knob, so both drivers run the same.
DEFAULTS: dict[str, Any] = {
    "write_buffer_size": 67108864,
    "max_write_buffer_number": 2,
    "min_write_buffer_number_to_merge": 1,
    "level0_file_num_compaction_trigger": 4,
    "level0_slowdown_writes_trigger": 20,
    "max_bytes_for_level_base": 268435456,
    "target_file_size_base": 67108864,
    "max_background_jobs": 2,
    "max_open_files": -1,
    "bytes_per_sync": 0,
    "compression": "snappy",
    "block_size": 4096,
    "block_cache_size": 8388608,
    "bloom_bits": 0,
    "cache_index_and_filter_blocks": False,
}

#: Compression names (db_bench's --compression_type words) and RocksDB's enum names in OPTIONS.
COMPRESSION_ENUMS = {
    "none": "kNoCompression",
    "snappy": "kSnappyCompression",
    "zlib": "kZlibCompression",
    "bzip2": "kBZip2Compression",
    "lz4": "kLZ4Compression",
    "lz4hc": "kLZ4HCCompression",
    "xpress": "kXpressCompression",
    "zstd": "kZSTD",
}
_COMPRESSION_NAMES = {enum.lower(): name for name, enum in COMPRESSION_ENUMS.items()}
_COMPRESSION_NAMES["kzstdnotfinalcompression"] = "zstd"

_OPTIONS_FILE = re.compile(r"^OPTIONS-(\d+)$")
_CAPACITY = re.compile(r"^\s*capacity\s*:\s*(\d+)\s*$")
_TABLE_EVENT = re.compile(r'EVENT_LOG_v1 (\{.*"event": "table_file_creation".*\})\s*$')

#: Statistics (``rocksdb.X COUNT : N``) reported as trial counters, under shorter names.
STATISTICS = {
    "rocksdb.block.cache.hit": "block_cache_hit",
    "rocksdb.block.cache.miss": "block_cache_miss",
    "rocksdb.block.cache.data.miss": "block_cache_data_miss",
    "rocksdb.bloom.filter.useful": "bloom_filter_useful",
    "rocksdb.memtable.hit": "memtable_hit",
    "rocksdb.bytes.written": "bytes_written",
    "rocksdb.flush.write.bytes": "flush_write_bytes",
    "rocksdb.compact.read.bytes": "compact_read_bytes",
    "rocksdb.compact.write.bytes": "compact_write_bytes",
    "rocksdb.stall.micros": "stall_micros",
    "rocksdb.no.file.opens": "file_opens",
}
_STAT_LINE = re.compile(r"^(rocksdb\.[\w.]+) COUNT : (\d+)\s*$", re.M)


def full_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``config``; a knob the target does not know is refused."""
    unknown = [k for k in config if k not in KNOB_SOURCES]
    if unknown:
        raise ConfigRefused(
            f"the rocksdb target has no knob {', '.join(map(repr, unknown))}; "
            f"knobs are {', '.join(KNOBS)}"
        )
    return {**DEFAULTS, **config}


def flag_text(value: Any) -> str:
    """A value as RocksDB's option strings and db_bench's flags spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- reading back what RocksDB applied --------------------------------------------------------
def newest_options_file(db_dir: Path) -> Path | None:
    """The OPTIONS file of the last open (the highest file number), or None."""
    found = []
    for path in db_dir.glob("OPTIONS-*"):
        match = _OPTIONS_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def parse_options_file(text: str) -> dict[str, dict[str, str]]:
    """An OPTIONS file as ``{section: {key: raw value}}`` (section names without brackets)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return text
        return int(value) if value.is_integer() else value


def _bool(text: str) -> bool | str:
    low = text.strip().lower()
    return low == "true" if low in ("true", "false") else text


def block_cache_capacity(log_text: str) -> int | None:
    """The block cache capacity RocksDB logged at its last open (0 with no block cache)."""
    capacity: int | None = None
    in_cache = False
    for line in log_text.splitlines():
        if "no_block_cache: 1" in line:
            capacity, in_cache = 0, False
        elif "block_cache_options:" in line:
            in_cache = True
        elif in_cache:
            match = _CAPACITY.match(line)
            if match:
                capacity, in_cache = int(match.group(1)), False
    return capacity


def table_file_events(log_text: str) -> list[dict[str, Any]]:
    """The table properties of every table file RocksDB logged creating."""
    events = []
    for line in log_text.splitlines():
        match = _TABLE_EVENT.search(line)
        if match:
            try:
                events.append(json.loads(match.group(1)).get("table_properties", {}))
            except json.JSONDecodeError:
                continue
    return events


def bloom_bits_from_tables(events: list[dict[str, Any]]) -> int | None:
    """Bits per key of the bloom filters RocksDB built: filter bytes * 8 / keys, over all files.

    A filter is rounded up to 64-byte lines plus 5 bytes of metadata, and sized to fit the
    allocator, so the ratio is within a fraction of a bit of the setting once files hold more
    than ~1000 keys; it is rounded to the nearest integer.
    """
    size = sum(int(e.get("filter_size", 0)) for e in events)
    keys = sum(int(e.get("num_filter_entries", 0)) for e in events)
    if keys == 0:
        return 0 if events else None
    return round(size * 8 / keys)


def _bloom_bits(policy: str, log_text: str) -> int | float | None:
    """Bits per key from OPTIONS' ``filter_policy`` (``bloomfilter:10:false``), else derived."""
    if policy in ("nullptr", ""):
        return 0
    parts = policy.split(":")
    if len(parts) >= 2 and "bloom" in parts[0].lower():
        value = _number(parts[1])
        if isinstance(value, (int, float)):
            return value
    return bloom_bits_from_tables(table_file_events(log_text))


def read_effective(db_dir: Path) -> dict[str, Any]:
    """Every knob RocksDB reports, as it applied it: the newest OPTIONS file and the LOG."""
    path = newest_options_file(db_dir)
    if path is None:
        return {}
    sections = parse_options_file(path.read_text(errors="replace"))
    log_text = read_log(db_dir)
    effective: dict[str, Any] = {}
    for knob, source in KNOB_SOURCES.items():
        if source is None:
            continue
        section, key = source
        raw = sections.get(section, {}).get(key)
        if raw is None:
            continue
        if knob == "compression":
            effective[knob] = _COMPRESSION_NAMES.get(raw.lower(), raw)
        elif knob == "cache_index_and_filter_blocks":
            effective[knob] = _bool(raw)
        elif knob == "bloom_bits":
            bits = _bloom_bits(raw, log_text)
            if bits is not None:
                effective[knob] = bits
        else:
            effective[knob] = _number(raw)
    if sections.get(TABLE_OPTIONS, {}).get("no_block_cache", "").lower() == "true":
        effective["block_cache_size"] = 0
    else:
        capacity = block_cache_capacity(log_text)
        if capacity is not None:
            effective["block_cache_size"] = capacity
    return effective


def read_log(db_dir: Path) -> str:
    """RocksDB's info LOG of the last open (older ones are renamed ``LOG.old.*``)."""
    try:
        return (db_dir / "LOG").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def version(db_dir: Path) -> str:
    """The RocksDB version recorded in the newest OPTIONS file."""
    path = newest_options_file(db_dir)
    if path is None:
        return "?"
    return parse_options_file(path.read_text(errors="replace")).get("Version", {}).get(
        "rocksdb_version", "?"
    )


def silent_changes(requested: Mapping[str, Any], effective: Mapping[str, Any]) -> list[str]:
    """Log lines for the knobs RocksDB applied with another value than requested."""
    lines = []
    for knob, value in requested.items():
        if knob in effective and flag_text(value).lower() != flag_text(effective[knob]).lower():
            lines.append(f"requested {knob}={value!r}, RocksDB applied {effective[knob]!r}")
    return lines


# -- counters and the native format -----------------------------------------------------------
def parse_statistics(text: str) -> dict[str, float]:
    """The statistics RocksDB dumps (``--statistics`` / ``Options.get_statistics``) as counters."""
    counts = {name: float(value) for name, value in _STAT_LINE.findall(text)}
    return {short: counts[name] for name, short in STATISTICS.items() if name in counts}


def db_files(db_dir: Path) -> dict[str, float]:
    """Table files in the DB directory at the end of a run: count and bytes."""
    ssts = list(db_dir.glob("*.sst"))
    return {"sst_files": float(len(ssts)), "sst_bytes": float(sum(p.stat().st_size for p in ssts))}


def render_options_file(config: Mapping[str, Any], rocksdb_version: str = "7.8.3") -> str:
    """``config`` as a RocksDB OPTIONS file (``db_bench --options_file``, LoadOptionsFromFile).

    The block cache goes in as ``block_cache=<bytes>`` (RocksDB builds an LRU cache of that
    size, unless the loader hands in its own cache: db_bench --options_file keeps its
    --cache_size cache, rocksdict's ``Options.load_latest`` its own); the bloom filter as
    ``filter_policy=bloomfilter:<bits>:false`` or ``nullptr``.
    """
    cfg = full_config(config)
    compression = str(cfg["compression"])
    sections: dict[str, list[str]] = {DB_OPTIONS: [], CF_OPTIONS: [], TABLE_OPTIONS: []}
    for knob, source in KNOB_SOURCES.items():
        value = cfg[knob]
        if knob == "block_cache_size":
            sections[TABLE_OPTIONS].append(f"block_cache={flag_text(value)}")
        elif knob == "bloom_bits":
            bits = flag_text(value)
            policy = "nullptr" if bits in ("0", "0.0") else f"bloomfilter:{bits}:false"
            sections[TABLE_OPTIONS].append(f"filter_policy={policy}")
        elif knob == "compression":
            sections[CF_OPTIONS].append(
                f"compression={COMPRESSION_ENUMS.get(compression.lower(), compression)}"
            )
        else:
            assert source is not None
            sections[source[0]].append(f"{source[1]}={flag_text(value)}")
    lines = [
        "# RocksDB options written by knobflow (rocksdb target). Use with",
        "#   db_bench --options_file=THIS_FILE   or   rocksdb::LoadOptionsFromFile(...)",
        "# Options not listed keep RocksDB's defaults.",
        "[Version]",
        f"  rocksdb_version={rocksdb_version}",
        "  options_file_version=1.1",
    ]
    for section, entries in sections.items():
        lines.append("")
        lines.append(f"[{section}]")
        lines += [f"  {entry}" for entry in entries]
    return "\n".join(lines) + "\n"
