"""The user's own scalars are drawn in the HTML report, not only named."""

import pytest

torch = pytest.importorskip("torch")

import diffaudit
from diffaudit.analysis import analyze
from diffaudit.logger import RunLogger
from diffaudit.present.html import MAX_SCALAR_FIGURES, report_page


def _run(tmp_path, linear_alpha_bar, names):
    with RunLogger(tmp_path / "r", alphas_cumprod=linear_alpha_bar, num_bins=10, window=10, flush_every=50) as lg:
        g = torch.Generator().manual_seed(0)
        for s in range(120):
            lg.log(s, timesteps=torch.randint(0, 1000, (16,), generator=g), losses=torch.rand(16, generator=g),
                   **{n: float(i + s) for i, n in enumerate(names)})
    return diffaudit.load_run(tmp_path / "r")


def test_each_scalar_gets_a_plot(tmp_path, linear_alpha_bar):
    run = _run(tmp_path, linear_alpha_bar, ["ema_decay", "tokens_seen"])
    html = report_page(run, analyze(run))
    sec = html[html.index('id="scalars"'):html.index('id="trend-table"')]
    assert sec.count("<svg") == 2 and "ema_decay" in sec and "tokens_seen" in sec
    assert 'href="#scalars"' in html


def test_no_scalars_no_section_and_many_are_bounded(tmp_path, linear_alpha_bar):
    run = _run(tmp_path / "a", linear_alpha_bar, [])
    assert 'id="scalars"' not in report_page(run, analyze(run))
    names = [f"s{i:02d}" for i in range(MAX_SCALAR_FIGURES + 3)]
    run = _run(tmp_path / "b", linear_alpha_bar, names)
    html = report_page(run, analyze(run))
    sec = html[html.index('id="scalars"'):html.index('id="trend-table"')]
    assert sec.count("<svg") == MAX_SCALAR_FIGURES and f"the first {MAX_SCALAR_FIGURES} of {len(names)}" in sec


def test_loss_in_lstar_units_reads_alike_for_eps_and_v():
    """The report's L*-units plot: the eps and v runs of one network sit on one scale (and without L*, no plot)."""
    from pathlib import Path

    import numpy as np
    from diffaudit.present.html import build_report

    units = Path(__file__).resolve().parents[1] / "sample_logs" / "families" / "digits_mlp_units"
    ratio = {}
    for name in ("eps_s00", "v_s00"):
        run = diffaudit.load_run(units / name)
        a = analyze(run)
        page = build_report(run, a)
        assert page.figures["lstar-units"] is not None and 'href="#lstar-units"' in report_page(run, a)
        ratio[name] = a.bins["late_mean"].to_numpy() / a.bins["lstar_gauss"].to_numpy()
    np.testing.assert_allclose(ratio["eps_s00"][:8], ratio["v_s00"][:8], rtol=0.08)


def test_no_lstar_no_units_plot(tmp_path, linear_alpha_bar):
    run = _run(tmp_path, linear_alpha_bar, [])
    assert run.meta.get("data_var") is None
    html = report_page(run, analyze(run))
    assert 'id="lstar-units"' not in html
