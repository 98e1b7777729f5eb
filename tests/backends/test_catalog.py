"""The chip catalog: every chip of the reference table, sourced; lookup and detection."""
import re

import pytest

from backends import catalog
from tests.helpers import REPO, one_error_line

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


def _reference_rows() -> dict[str, list[str]]:
    """The reference table's cells by chip name."""
    rows = {}
    for line in REF.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| Chip") and "---" not in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _num(cell: str) -> float | None:
    """The first figure of a cell ("1,979", "~7.4", "624 (1,248)"), None for unk/—/unknown."""
    m = re.match(r"~?([\d,]*\.?\d+)", cell.replace(" ", ""))
    return float(m.group(1).replace(",", "")) if m else None


@pytest.mark.skipif(not REF.exists(), reason="shared/reference not beside the checkout")
def test_every_figure_matches_the_reference_table():
    """Bandwidth (TB/s there, GB/s here), memory, dense BF16/FP8/INT8 (INT4 in brackets), TDP and
    the source, cell by cell: a sparse rate or a typo in chips.json fails here."""
    by_name = {c.name: c for c in catalog.load().values()}
    for name, cells in _reference_rows().items():
        c = by_name[name]
        _, bw, mem, _, bf16, fp8, int8, tdp, source = cells
        # "unk (~0.176)": an estimate the reference does not vouch for, so the catalog has none
        want_bw = None if bw.startswith("unk") else _num(bw)
        assert c.mem_bw_gbps == (None if want_bw is None else pytest.approx(want_bw * 1000)), name
        assert c.mem_gb == _num(mem), name
        assert c.bf16_tflops == _num(bf16), name
        assert c.fp8_tflops == _num(fp8), name
        assert c.int8_tops == _num(int8), name
        int4 = re.search(r"\(([\d,.]+)\)", int8)
        assert c.int4_tops == (float(int4.group(1).replace(",", "")) if int4 else None), name
        assert c.tdp_w == _num(tdp), name
        assert source.startswith(c.source), name


def test_reference_number_parser():
    assert _num("1,979") == 1979 and _num("~7.4") == 7.4 and _num("624 (1,248)") == 624
    assert _num("0.819") == 0.819 and _num("unk") is None and _num("—") is None


@pytest.mark.parametrize("name, why", [
    ("NVIDIA GH200 480GB", "GH200"), ("NVIDIA GH200 144G HBM3e", "GH200"),
    ("NVIDIA GB200", "GB200"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA GeForce RTX 4090 Laptop GPU", "Laptop"), ("NVIDIA GeForce RTX 4090 D", "4090 D"),
    ("TPU v4 lite", "v4i"), ("NVIDIA H20", "not in the catalog"),
    ("NVIDIA A100-PCIE-40GB", "PCIe Gen4 link"),
    # an A100 80GB PCIe (1.935 TB/s) is not the SXM4 a100-80gb (2.039 TB/s, NVLink)
    ("NVIDIA A100 80GB PCIe", "1.935 TB/s"),
    ("NVIDIA L40", "not in the catalog"),  # an L40 (864 GB/s) is no L4 (300 GB/s)
    ("NVIDIA H100 NVL", "3.9 TB/s"),  # its own note: not "pass --chip" for an SXM or PCIe part
    # MIG slices carry their GPU's name, and a share of its bandwidth
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "MIG slice"),
    ("NVIDIA A100-SXM4-40GB MIG 3g.20gb", "MIG slice"),
    ("NVIDIA H200 141GB HBM3 MIG 1g.18gb", "MIG slice"),
])
def test_detect_other_parts_whose_names_contain_a_catalog_name(name, why):
    """A Grace-Hopper GH200 is no H200 SXM, a GB200 no DGX B200, a laptop 4090 no desktop 4090:
    judged against those datasheets they would get a wrong % of datasheet."""
    chip, note = catalog.detect(name)
    assert chip is None and why in note


@pytest.mark.parametrize("name, gib", [
    ("NVIDIA H100 96GB HBM3", 95), ("NVIDIA A100-SXM-64GB", 64)])
def test_detect_refuses_a_larger_part_under_a_catalog_name(name, gib):
    """GH200's GPU reports "H100 96GB HBM3" and Leonardo's A100s "A100-SXM-64GB": their memory
    says they are not the 80 GB H100 SXM or the 40 GB A100, whose bandwidths would judge them."""
    chip, note = catalog.detect(name, gib * 2**30)
    assert chip is None and "larger part" in note


@pytest.mark.parametrize("name, mib, chip", [
    ("NVIDIA H200", 143771, "h200"), ("NVIDIA H100 80GB HBM3", 81559, "h100-sxm"),
    ("NVIDIA A100-SXM4-40GB", 40960, "a100-40gb"), ("NVIDIA L4", 23034, "l4")])
def test_detect_keeps_parts_reporting_about_their_datasheet_memory(name, mib, chip):
    """An H200 reports 140.4 GiB against its datasheet's "141 GB"; the check must not refuse it."""
    assert catalog.detect(name, mib * 2**20)[0] == chip


@pytest.mark.parametrize("name, chip", [
    ("NVIDIA H200", "h200"), ("NVIDIA B200", "b200"), ("NVIDIA H100 SXM5 80GB", "h100-sxm"),
    ("AMD Instinct MI325X", "mi325x"), ("TPU v5", "tpu-v5p"),
    ("TPU7x", "tpu7x"),
])
def test_detect_more_names(name, chip):
    assert catalog.detect(name)[0] == chip


def test_lookup_names_every_id_an_ambiguous_prefix_could_mean():
    """"h100" is the SXM (3.35 TB/s) or the PCIe part (2.0 TB/s): the hint names both."""
    with pytest.raises(KeyError) as e:
        catalog.lookup("h100")
    assert "'h100-sxm'" in str(e.value) and "'h100-pcie'" in str(e.value)


@pytest.mark.parametrize("argv, want", [
    (["roof", "--backend", "nope"], "unknown backend 'nope' (backends: cpu, cuda, xla)"),
    (["roof", "--backend", "cdua"], "did you mean 'cuda'?"),
    (["chips", "--chip", "h100"], "did you mean 'h100-sxm' or 'h100-pcie'?"),
])
def test_bad_names_are_one_line_saying_it_once(capsys, argv, want):
    line = one_error_line(capsys, argv)
    assert want in line and line.count("cpu, cuda, xla") <= 1


def test_peak_rates_by_dtype():
    """fp16 runs at the dense BF16 rate (the tensor cores take both at one rate), fp8 and int8 at
    their own; a dtype the catalog has no rate for is None, never another dtype's figure."""
    h = catalog.load()["h100-sxm"]
    assert h.peak_tflops("float16") == h.peak_tflops("bfloat16") == 989
    assert h.peak_tflops("float8") == 1979 and h.peak_tflops("int8") == 1979
    assert h.peak_tflops("float32") is None


@pytest.mark.parametrize("typo, want", [("h100sxm", "h100-sxm"), ("h10-pcie", "h100-pcie"),
                                        ("mi300z", "mi300x"), ("tpu-v5ee", "tpu-v5e")])
def test_lookup_suggests_the_nearest_id_for_a_typo_that_is_no_prefix(typo, want):
    """A typo that is not the start of an id still gets the id it most resembles."""
    with pytest.raises(KeyError, match=f"did you mean '{want}'\\?"):
        catalog.lookup(typo)


def test_a_chips_link_bandwidth_is_its_links_times_one_link():
    """Where the fabric names its link count ("18 links", "7 x16 peer links", "21 scale-up
    ports"), the chip's per-direction bandwidth is that many links at the one-link figure: a
    both-directions figure (2x) or a typo in either fails here."""
    checked = 0
    for c in catalog.load().values():
        i = c.interconnect
        m = re.search(r"\b(\d+) (?:x16 peer )?links\b|\b(\d+) scale-up ports\b", i.fabric)
        if m and i.link_gbps is not None and i.per_link_gbps is not None:
            n = int(m.group(1) or m.group(2))
            assert i.link_gbps == n * i.per_link_gbps, c.id
            checked += 1
    assert checked >= 6


def test_chips_json_shows_the_chip_asked_for_and_only_it(capsys):
    """`decodewall chips --chip H100-SXM --json`: one line, that chip with its figures and the
    link's; without --chip every chip, one a line."""
    import json
    from bench.cli import main
    assert main(["chips", "--chip", "H100-SXM", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    c = json.loads(line)
    assert c["id"] == "h100-sxm" and c["mem_bw_gbps"] == 3350
    assert c["interconnect"]["link_gbps"] == 450
    assert main(["chips", "--json"]) == 0
    ids = [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()]
    assert ids == list(catalog.load())


def test_chips_shows_every_chip_asked_for_once_and_refuses_any_unknown(capsys):
    """--chip repeats (as `project --chip` does): each chip asked for, in the order given, a chip
    named twice (in any case) once; one unknown name among known ones is still an error, not
    dropped."""
    import json
    from bench.cli import main
    assert main(["chips", "--chip", "h200", "--chip", "H100-SXM", "--chip", "h200", "--json"]) == 0
    ids = [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()]
    assert ids == ["h200", "h100-sxm"]
    assert main(["chips", "--chip", "h200", "--chip", "nope"]) == 2
    out, err = capsys.readouterr()
    assert "unknown chip 'nope'" in err and out == ""
