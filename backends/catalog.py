"""The chip catalog (chips.json): datasheet peaks with sources, lookup by id, and device detection.

Unknown figures are null and stay null. Detection maps a live device name to a catalog id and says
why when it cannot: an H100 SXM (3.35 TB/s) and an H100 PCIe (2.0 TB/s) must never be confused.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).with_name("chips.json")


@dataclass(frozen=True)
class Interconnect:
    """How a chip talks to its peers: what a tensor- or pipeline-parallel decode step pays for.

    link_gbps: per chip, per direction, over all its scale-up links (GB/s); per_link_gbps: one
    link, one direction; group: the largest group that shares that bandwidth; allreduce_latency_us:
    a published small-message all-reduce latency. None = not published in the sources found."""
    fabric: str
    link_gbps: float | None
    per_link_gbps: float | None
    group: int | None
    allreduce_latency_us: float | None
    host_link: str
    source: str
    notes: str


@dataclass(frozen=True)
class Chip:
    id: str
    name: str
    vendor: str
    mem_bw_gbps: float | None
    mem_gb: float | None
    mem_type: str
    sram: str
    bf16_tflops: float | None
    fp8_tflops: float | None
    int8_tops: float | None
    int4_tops: float | None
    tdp_w: float | None
    sram_only: bool
    source: str
    notes: str
    interconnect: Interconnect

    def peak_tflops(self, dtype_name: str) -> float | None:
        """Dense datasheet rate for a compute dtype (fp16 taken as the bf16 rate)."""
        return {"bfloat16": self.bf16_tflops, "float16": self.bf16_tflops,
                "float8": self.fp8_tflops, "int8": self.int8_tops}.get(dtype_name)


@lru_cache(maxsize=1)
def load() -> dict[str, Chip]:
    data = json.loads(CATALOG_PATH.read_text())
    return {c["id"]: Chip(**{**c, "interconnect": Interconnect(**c["interconnect"])})
            for c in data["chips"]}


def lookup(name: str) -> Chip:
    """Case-insensitive id lookup; KeyError's message suggests the nearest id on a typo."""
    chips = load()
    key = name.strip().lower()
    if key in chips:
        return chips[key]
    near = [c for c in chips if key and c.startswith(key)] or difflib.get_close_matches(
        key, list(chips), n=1, cutoff=0.4)
    # several ids share a prefix ("h100": SXM and PCIe, 1.7x apart in bandwidth): name them all
    names = [repr(c) for c in near]
    alts = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
    hint = f"; did you mean {alts}?" if near else ""
    raise KeyError(f"unknown chip {name!r}{hint} (see `decodewall chips`)")


# Reported memory may exceed a datasheet's "141 GB" (an H200 reports 140.4 GiB, 150.7e9 B), never
# by this factor: past it the device is a larger part sold under the same name.
MEM_SLACK = 1.10

# (pattern on the device name, chip id or None, note). First match wins.
_RULES: list[tuple[str, str | None, str]] = [
    # A MIG instance is named after its GPU ("NVIDIA H100 80GB HBM3 MIG 1g.10gb") and has a share
    # of its SMs and memory bandwidth (1g.10gb: an eighth of an H100's memory slices)
    (r"\bMIG \d+g\.\d+gb", None, "a MIG slice has a share of its GPU's SMs and memory "
     "bandwidth, which no datasheet gives: judged against the measured roof only"),
    # "GH200" and "GB200" contain "H200" and "B200" but are other parts, with their own memory
    # sizes, bandwidths and rates: a match on the substring would judge them by another datasheet.
    (r"GH200", None, "GH200 (Grace Hopper, not an H200 SXM) is not in the catalog"),
    (r"GB200", None, "GB200 (Grace Blackwell, not a DGX B200) is not in the catalog"),
    (r"H100.*NVL", None, "H100 NVL (3.9 TB/s, 94 GB) is not in the catalog"),
    (r"H100.*PCIe", "h100-pcie", ""),
    (r"H100.*(HBM3|SXM)", "h100-sxm", ""),
    (r"H200.*NVL", None, "H200 NVL (a PCIe card with lower rates than the SXM) is not in the catalog"),
    (r"\bH200\b", "h200", ""),
    (r"\bB200\b", "b200", ""),
    (r"A100.*80GB.*PCIe|A100.*PCIE.*80GB", None,
     "A100 80GB PCIe (1.935 TB/s) is not in the catalog"),
    (r"A100.*80GB", "a100-80gb", ""),
    # the catalog's A100s are the SXM4 parts: a PCIe card has their memory bandwidth but a 32 GB/s
    # PCIe link where the entry has 300 GB/s of NVLink, which would misjudge every all-reduce
    (r"A100.*PCIe", None, "A100 PCIe (a PCIe Gen4 link, no NVLink switch) is not in the catalog"),
    (r"A100", "a100-40gb", ""),
    (r"L40S", "l40s", ""),
    (r"\bL4\b", "l4", ""),
    (r"RTX 4090.*(Laptop|Mobile)", None,
     "RTX 4090 Laptop GPU (another die, less memory and bandwidth) is not in the catalog"),
    (r"RTX 4090 ?D\b", None, "RTX 4090 D (fewer SMs than the RTX 4090) is not in the catalog"),
    (r"RTX 4090", "rtx-4090", ""),
    (r"MI325X", "mi325x", ""),
    (r"MI300X", "mi300x", ""),
    (r"TPU v4 ?lite|TPU v4i", None, "TPU v4i (v4 lite) is not in the catalog"),
    (r"TPU v4", "tpu-v4", ""),
    (r"TPU v5 ?lite|TPU v5e", "tpu-v5e", ""),
    (r"TPU v5p|TPU v5$", "tpu-v5p", ""),
    (r"TPU v6 ?lite|TPU v6e|Trillium", "tpu-v6e", ""),
    (r"TPU ?7x|Ironwood", "tpu7x", ""),
]


def detect(device_name: str, memory_bytes: int | None = None) -> tuple[str | None, str]:
    """Map a device name to a catalog id: (id, "") or (None, why not)."""
    for pattern, chip_id, note in _RULES:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            if chip_id is None:
                return None, note
            mem_gb = load()[chip_id].mem_gb
            if memory_bytes and mem_gb and memory_bytes / 2**30 > MEM_SLACK * mem_gb:
                # a larger-memory variant under the same name ("H100 96GB HBM3" in a GH200,
                # "A100-SXM-64GB") is another part, with another bandwidth
                return None, (f"{device_name!r} has {memory_bytes / 2**30:.0f} GiB, more than "
                              f"{chip_id}'s {mem_gb:g} GB: a larger part, not in the catalog")
            return chip_id, ""
    if re.search(r"H100", device_name) and memory_bytes:
        # A bare "H100" name: the 80 GB SXM and PCIe parts differ 1.7x in bandwidth; refuse to guess.
        return None, f"{device_name!r}: cannot tell H100 SXM from PCIe by name; pass --chip"
    return None, f"{device_name!r} is not in the catalog"


def as_dict(chip: Chip) -> dict[str, Any]:
    return dataclasses.asdict(chip)
