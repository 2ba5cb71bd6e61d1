"""The report's Length table on a real run: every probe that ran shows its loss within the claim,
also when it is shorter than the claim, and every column is explained."""

from __future__ import annotations

import re

import torch

from workbench.config import DecoderConfig
from workbench.loading.native import save_checkpoint
from workbench.model.decoder import HookedDecoder
from workbench.pipeline.run import RunOptions, run
from workbench.report.html import render_html


def test_probes_shorter_than_the_claim_show_their_loss_and_headers_say_what_they_are(tmp_path):
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=48,
                           max_positions=4096, name="tiny")
    folder = save_checkpoint(HookedDecoder(config), tmp_path / "tiny")
    profile = tmp_path / "short.toml"
    profile.write_text('name = "short"\n[probes]\nmax_tokens = 256\nlengths = [128, 256]\nlength_seeds = 2\n')
    report = run(str(folder), RunOptions(command="extrapolation", profile=str(profile))).report
    probes = report["length"]["probes"]
    assert {(p["kind"], p["length"]) for p in probes} == {(k, n) for k in ("natural", "copy") for n in (128, 256)}
    assert all(p["length"] < report["length"]["max_positions"] for p in probes)
    assert all(isinstance(p["in_context_loss"], float) and p["beyond_loss"] is None for p in probes)
    assert all(isinstance(p["in_context_spread"], float) for p in probes)
    page = render_html(report)
    table = page[page.index('<section id="length">'):]
    table = table[table.index("<table"):table.index("</table>")]
    headers = re.findall(r"<th(?:\s[^>]*)?>(.*?)</th>", table, flags=re.S)
    assert headers == ["probe", "length", "seeds", "loss within claim, nats", "spread", "loss past claim, nats",
                       "error"]
    assert len(re.findall(r'<th class="r" title="[^"]+">', table)) == 3  # the loss columns explain themselves
    rows = re.findall(r"<tr><td>(natural|copy)</td>(.*?)</tr>", table, flags=re.S)
    assert len(rows) == 4
    for _, cells in rows:
        values = re.findall(r'<td class="r">([^<]*)</td>', cells)
        length, seeds, within, spread, beyond = values
        assert seeds == "2" and float(within) > 0 and float(spread) >= 0, cells
        assert beyond == "\u2014"  # no probe reached past the claim
