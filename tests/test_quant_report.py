"""`make report`: per-model JSON, Markdown and a PNG plot, and the models side by side; the lock ignores it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Workspace


def test_report_has_the_ladder_plot_and_runtime_figures(fixtures_ws: Workspace, tmp_path: Path) -> None:
    ws = fixtures_ws.copy_to(tmp_path / "ws")
    lock_before = (ws.root / "models.lock").read_text()
    run = ws.doit("report")
    assert "report:demo" in run.executed and "check:demo" not in run.executed  # the copied check is reused
    out = ws.artifacts / "report"
    doc = json.loads((out / "demo.json").read_text())
    rows = {r["type"]: r for r in doc["types"]}
    assert list(rows) == ["f16", "q8_0", "q4_k_m"]
    for r in rows.values():
        assert r["size_bytes"] > 0 and r["rt_gen_tok_s"] > 0 and r["rt_prompt_tok_s"] > 0
        assert r["rt_load_s"] > 0 and r["rt_peak_rss_mib"] > r["rt_rss_before_load_mib"] > 0
        assert r["rt_answer_exact"] is not None
    assert rows["f16"]["rt_answer_exact"] == 1.0  # greedy decoding in llama.cpp gives the trained answers
    assert rows["q4_k_m"]["size_bytes"] < rows["q8_0"]["size_bytes"] < rows["f16"]["size_bytes"]
    assert rows["q8_0"]["kl_mean"] < rows["q4_k_m"]["kl_mean"]
    md = (out / "demo.md").read_text()
    assert "| q4_k_m |" in md and "![size vs KL and tokens/s](demo.png)" in md
    png = (out / "demo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    compare = (out / "compare.md").read_text()
    assert "| demo | f16 |" in compare and "| demo | q4_k_m |" in compare
    ws.doit()  # the default build afterwards: timings are not artifacts the lock pins
    assert (ws.root / "models.lock").read_text() == lock_before
