"""The chip catalog: every chip of the reference table, sourced; lookup and detection."""
import pytest

from backends import catalog
from tests.helpers import REPO

REF = REPO.parent / "shared" / "reference" / "chips.md"


def test_every_entry_has_a_source_and_no_invented_openai_numbers():
    chips = catalog.load()
    assert len(chips) >= 27
    for c in chips.values():
        assert c.source.strip(), c.id
    o = chips["openai-broadcom"]
    assert o.mem_bw_gbps is None and o.bf16_tflops is None and o.mem_gb is None


@pytest.mark.skipif(not REF.exists(), reason="shared/reference not beside the checkout")
def test_every_reference_row_is_in_the_catalog():
    names = {c.name for c in catalog.load().values()}
    rows = [line.split("|")[1].strip() for line in REF.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| Chip") and "---" not in line]
    rows = [r for r in rows if r]
    assert rows and all(r in names for r in rows), set(rows) - names


def test_key_figures():
    c = catalog.load()
    assert c["h100-sxm"].mem_bw_gbps == 3350 and c["h100-pcie"].mem_bw_gbps == 2000
    assert c["h200"].mem_bw_gbps == 4800 and c["mtia-v1"].mem_bw_gbps is None
    assert c["groq-lpu"].sram_only and not c["h100-sxm"].sram_only


def test_lookup_case_insensitive_with_suggestion():
    assert catalog.lookup("H100-SXM").id == "h100-sxm"
    with pytest.raises(KeyError, match="did you mean 'h100-sxm'"):
        catalog.lookup("h100-sx")
    with pytest.raises(KeyError, match="unknown chip"):
        catalog.lookup("zzzzzz")


@pytest.mark.parametrize("name, chip", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA L4", "l4"), ("NVIDIA L40S", "l40s"), ("TPU v5 lite", "tpu-v5e"),
    ("TPU v4", "tpu-v4"), ("TPU v6 lite", "tpu-v6e"), ("AMD Instinct MI300X", "mi300x"),
])
def test_detect(name, chip):
    assert catalog.detect(name)[0] == chip


def test_detect_refuses_to_guess():
    assert catalog.detect("NVIDIA H100 NVL")[0] is None
    chip, why = catalog.detect("NVIDIA H100", 80 * 2**30)
    assert chip is None and "SXM" in why
    assert catalog.detect("AMD EPYC")[0] is None


def test_every_chip_has_an_interconnect_with_a_source_and_unknowns_stay_unknown():
    chips = catalog.load()
    for c in chips.values():
        i = c.interconnect
        assert i.fabric and i.source, c.id
        for v in (i.link_gbps, i.per_link_gbps, i.allreduce_latency_us):
            assert v is None or v > 0, c.id
        if i.link_gbps is not None and i.per_link_gbps is not None:
            assert i.per_link_gbps <= i.link_gbps, c.id
    assert chips["h100-sxm"].interconnect.link_gbps == 450  # 900 GB/s is both directions
    assert chips["mi300x"].interconnect.link_gbps == 448  # 896 GB/s is both directions
    assert chips["openai-broadcom"].interconnect.link_gbps is None
    assert chips["trainium2"].interconnect.link_gbps is None  # AWS states no direction
    assert chips["h200"].interconnect.allreduce_latency_us is None  # none published for it
