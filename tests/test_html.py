"""The HTML report: self-contained, escaped, complete, small for long runs; the figures are valid images."""

from __future__ import annotations

import base64
import html.parser
import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from diffaudit.present import html as htmlpage
from diffaudit.present import plots
from diffaudit import runformat as rf
from diffaudit.analysis import analyze
from diffaudit.load import load_run
from diffaudit.noise import Process, named_betas, schedule_from_betas
from diffaudit.optimum import bin_gaussian_optimal_loss

HOSTILE_CONFIG = "<script>alert(1)</script>"
HOSTILE_NAME = 'run "quoted" & <b onclick=x>'
HOSTILE_SCALAR = 'ema "loss" & <i>x</i>'
SECTION_IDS = ("summary", "findings", "per-bin-loss", "excess-heatmap", "loss-curve", "grad-norm", "clip-rate",
               "trend-table", "probe-gradients", "schedule", "metadata")
SIZE_LIMIT = 5_000_000  # bytes, for a 1,000,000-step run


# ----------------------------------------------------------------------------
# A synthetic run written straight in the run format (no torch): a decaying
# loss per bin above the Gaussian L*, a clip threshold some steps exceed, a few
# non-finite steps, gradient probes, and hostile strings from the "user".


def make_synthetic_run(path: Path, *, steps: int = 20_000, num_bins: int = 20, window: int = 100,
                       probe_every: int = 1200, probe_bins: int = 10, seed: int = 0, resume_at: int | None = None,
                       kind: str = "vp", optimum: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    (path / rf.PARTS_DIR).mkdir()
    abar, om = schedule_from_betas(named_betas("linear"))
    if kind == "vp":
        process = Process("vp", "epsilon", num_bins, abar, om)
    else:
        process = Process(kind, "flow" if kind == "flow" else "edm", num_bins, sigma_data=0.5)
    data_var = 0.3 if kind != "edm" else 0.25
    meta = {
        "format": rf.FORMAT_NAME, "format_version": rf.FORMAT_VERSION, "run_id": "synthetic0001",
        "created": "2026-01-01T00:00:00+0000", "diffaudit_version": "0.1.0", "torch_version": "none",
        "python_version": "3.11", "host": "test", **process.to_meta(), "alphas_cumprod_dtype": "float64",
        "schedule_from_betas": True, "schedule_sha": "0", "data_var": data_var, "data_spectrum": None,
        "data_dim": 64, "window": window, "flush_every": 10_000, "probe_every": probe_every,
        "probe_bins": probe_bins, "world_size": 1,
        "config": {"name": HOSTILE_NAME, "note": HOSTILE_CONFIG, "nested": {"attr": '" onmouseover="alert(2)'},
                   "lr": 1e-4, "steps": steps},
    }
    (path / rf.RUN_JSON).write_text(json.dumps(meta))
    if kind == "vp":
        rf.write_table_atomic(pa.table({"t": np.arange(abar.size), "alpha_bar": abar, "one_minus_alpha_bar": om,
                                        "log_snr": np.log(abar) - np.log(om)}), path / rf.SCHEDULE_FILE)
    lstar = bin_gaussian_optimal_loss(process, data_var=data_var)

    def write(kind, seg, seq, cols):
        rf.write_table_atomic(pa.table(cols), path / rf.PARTS_DIR / rf.part_name(kind, 0, seg, seq))

    def segment(seg, lo, hi):
        st = np.arange(lo, hi, dtype=np.int64)
        decay = np.exp(-st / (0.15 * steps))
        loss = (0.12 + 0.9 * decay) * np.exp(0.08 * rng.standard_normal(st.size))
        loss[rng.random(st.size) < 2e-4] *= 30.0  # spikes
        gn = 0.4 * np.exp(0.5 * rng.standard_normal(st.size)) * (1 + 3 * decay)
        nonfinite = np.where(rng.random(st.size) < 1e-3, 4, 0).astype(np.int32)
        write("steps", seg, 0, {
            "step": st, "segment": np.full(st.size, seg, np.int32), "rank": np.zeros(st.size, np.int32),
            "time": 1.7e9 + st * 0.1, "loss": loss.astype(np.float32), "count": np.full(st.size, 128, np.int32),
            "nonfinite": nonfinite, "grad_norm": gn.astype(np.float32),
            "clip_threshold": np.ones(st.size, np.float32), "clipped": gn > 1.0, "lr": np.full(st.size, 1e-4),
            "loss_scale": pa.nulls(st.size, pa.float32()), "wloss": pa.nulls(st.size, pa.float32()),
            HOSTILE_SCALAR: loss * 0.99,
        })
        wlo = np.arange(lo, hi, window, dtype=np.int64)
        whi = np.minimum(wlo + window, hi) - 1
        nw = wlo.size
        b = np.tile(np.arange(num_bins, dtype=np.int32), nw)
        w_lo, w_hi = np.repeat(wlo, num_bins), np.repeat(whi, num_bins)
        excess = (0.02 + 0.9 * np.exp(-w_lo / (0.15 * steps))) * (1 + 0.3 * np.sin(b))
        mean = lstar[b] + excess * np.exp(0.05 * rng.standard_normal(b.size))
        count = rng.poisson(128 * window / num_bins, b.size).astype(np.int64)
        write("bins", seg, 0, {
            "split": np.full(b.size, "train"), "rank": np.zeros(b.size, np.int32), "segment": np.full(b.size, seg, np.int32),
            "step_lo": w_lo, "step_hi": w_hi, "bin": b, "count": count, "mean": mean,
            "m2": (0.1 * mean) ** 2 * np.maximum(count - 1, 0), "min": (0.2 * mean).astype(np.float32),
            "max": (3 * mean).astype(np.float32), "nonfinite": np.zeros(b.size, np.int64),
            "wsum": pa.nulls(b.size, pa.float64()), "wmean": pa.nulls(b.size, pa.float64()),
        })
        ps = np.arange(((lo + probe_every - 1) // probe_every) * probe_every, hi, probe_every, dtype=np.int64)
        if ps.size:
            pb = np.tile(np.arange(probe_bins, dtype=np.int32), ps.size)
            write("probes", seg, 0, {
                "rank": np.zeros(pb.size, np.int32), "segment": np.full(pb.size, seg, np.int32),
                "step": np.repeat(ps, probe_bins), "probe_bin": pb,
                "bin_lo": (pb * num_bins // probe_bins).astype(np.int32),
                "bin_hi": ((pb + 1) * num_bins // probe_bins).astype(np.int32),
                "count": np.full(pb.size, 12, np.int32),
                "grad_norm": (0.5 + 2.0 / (1 + pb) + 0.05 * rng.standard_normal(pb.size)).astype(np.float32),
            })

    if optimum:  # what `diffaudit optimum` writes: the empirical L*, below the Gaussian bound
        write("optimum", 1, 0, {"bin": np.arange(num_bins, dtype=np.int32), "loss_opt": 0.6 * lstar,
                                "stderr": 0.02 * lstar, "n": np.full(num_bins, 64, np.int64)})
    if resume_at is None:
        segment(1, 0, steps)
    else:  # segment 1 ran past resume_at, then the run restarted from a checkpoint at resume_at
        segment(1, 0, min(steps, resume_at + 3 * window))
        segment(2, resume_at, steps)
    return path


# ----------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = make_synthetic_run(tmp_path_factory.mktemp("render") / HOSTILE_NAME, steps=20_000, resume_at=12_000,
                              optimum=True)
    run = load_run(path)
    return run, analyze(run)


@pytest.fixture(scope="module")
def page(synthetic):
    run, analysis = synthetic
    return htmlpage.report_page(run, analysis)


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Collector:
    p = _Collector()
    p.feed(page)
    p.close()
    return p


# ----------------------------------------------------------------------------
# Self-contained, no scripts


def test_no_network_and_no_scripts(page):
    assert not re.search(r"https?://(?!www\.w3\.org/)", page), "a URL other than an XML namespace"
    p = _parse(page)
    for tag, attrs in p.tags:
        assert tag != "script"
        assert tag != "link", "stylesheets are inlined"
        for name in ("src", "href", "xlink:href"):
            v = attrs.get(name)
            if v is not None:
                assert v.startswith(("#", "data:")), f"<{tag} {name}={v[:40]!r}> points outside the page"
        assert not any(k.startswith("on") for k in attrs), f"event handler on <{tag}>"
    assert "@import" not in page and "url(http" not in page


def test_content_security_policy_forbids_fetching(page):
    p = _parse(page)
    csp = [a["content"] for t, a in p.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]


# ----------------------------------------------------------------------------
# Escaping


def test_log_strings_are_escaped(synthetic, page):
    assert synthetic[0].name == HOSTILE_NAME
    for raw in (HOSTILE_CONFIG, HOSTILE_NAME, HOSTILE_SCALAR, '" onmouseover="alert(2)', "<b onclick", "<i>x</i>"):
        assert raw not in page, f"unescaped {raw!r}"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "run &#34;quoted&#34; &amp; &lt;b onclick=x&gt;" in page
    assert "ema &#34;loss&#34; &amp; &lt;i&gt;x&lt;/i&gt;" in page
    # and they read back as the original text
    text = "".join(_parse(page).text)
    assert HOSTILE_CONFIG in text and HOSTILE_NAME in text and HOSTILE_SCALAR in text


def test_every_attribute_is_quoted(page):
    no_svg = re.sub(r"<svg\b.*?</svg>", "", page, flags=re.S)
    for tag in re.findall(r"<[a-zA-Z][^<>]*>", no_svg):
        body = re.sub(r'"[^"]*"', '""', tag)
        assert not re.search(r"=[^\"\s>]", body), f"unquoted attribute in {tag[:80]}"


def test_no_log_text_inside_svg(page):
    for svg in re.findall(r"<svg\b.*?</svg>", page, flags=re.S):
        assert "<!--" not in svg and "<script" not in svg and "<text" not in svg


# ----------------------------------------------------------------------------
# Content


def test_required_sections_present(page):
    ids = {a.get("id") for _, a in _parse(page).tags}
    missing = [s for s in SECTION_IDS if s not in ids]
    assert not missing
    for s in SECTION_IDS:  # every section is in the table of contents
        assert f'href="#{s}"' in page


def test_ids_are_unique(page):
    ids = [a["id"] for _, a in _parse(page).tags if "id" in a]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup


def test_findings_most_severe_first_with_evidence(synthetic, page):
    run, analysis = synthetic
    sev = re.findall(r'<article class="finding sev-(\w+)"', page)
    assert len(sev) == len(analysis.findings) > 0
    order = {"fail": 0, "warn": 1, "info": 2}
    assert sev == sorted(sev, key=order.get)
    if analysis.findings:
        assert "Evidence" in page and "what to do" in page


def test_finding_views_sort_by_severity_and_keep_order_within_one(synthetic):
    from diffaudit.findings import Finding

    run, _ = synthetic
    fs = [Finding("a.info", "info", "A", "m", "r"), Finding("b.warn", "warn", "B", "m", "r"),
          Finding("c.fail", "fail", "C", "m", "r", {"x": 1.5}, (0, 1, 2)), Finding("d.warn", "warn", "D", "m", "r")]
    views = htmlpage.finding_views(fs, run.process)
    assert [v.id for v in views] == ["c.fail", "b.warn", "d.warn", "a.info"]
    assert views[0].evidence == [htmlpage.Item("x", "1.5")] and views[0].bins == "bins 0-2 (t 0-149)"


def test_report_states_terminal_snr_and_probe_interval(page):
    text = " ".join("".join(_parse(page).text).split())
    assert "terminal SNR" in text
    assert "every 1,200 steps" in text


def test_both_references_shown_when_the_empirical_optimum_exists(synthetic, page):
    run, analysis = synthetic
    assert run.optimum is not None
    text = " ".join("".join(_parse(page).text).split())
    assert "L* Gauss" in text and "L* emp." in text  # trend-table columns (split() turns the nbsp into spaces)
    assert "empirical L* of the training set" in text  # the per-bin figure's caption explains the dotted curve


def test_metadata_lists_segments_config_and_scalars(synthetic, page):
    run, _ = synthetic
    assert run.segments.height == 2
    text = "".join(_parse(page).text)
    assert "Segments" in text and "superseded" in text
    assert "nested.attr" in text
    assert HOSTILE_SCALAR in text


def test_numbers_read_the_same_everywhere():
    f = htmlpage.fmt_num
    assert [f(0), f(12345), f(11320.5), f(0.5), f(3.14159), f(-0.00012), f(2.5e6)] == \
        ["0", "12,345", "11,320", "0.5", "3.142", "-1.2e-4", "2.5e6"]
    assert f(None) == f(float("nan")) == htmlpage.MISSING and f(True) == "yes"
    assert [htmlpage.fmt_pct(v) for v in (0.5, 0.0333, 12.3, 7e-8)] == ["50%", "3.33%", "1,230%", "7e-6%"]


def test_finding_bins_in_noise_level_words(synthetic):
    run, _ = synthetic  # 20 bins of 50 timesteps
    assert htmlpage.describe_bins((0, 1, 2, 3, 7), run.process) == "bins 0-3, 7 (t 0-199, 350-399)"
    assert htmlpage.describe_bins((19,), run.process) == "bin 19 (t 950-999)"
    assert htmlpage.describe_bins((), run.process) == ""  # a finding about the whole run names no bins


def test_templates_resolve_and_severity_colours_match_the_figures():
    css = htmlpage._load_template("style.css")
    for sev, color in plots.SEVERITY_COLORS.items():
        assert f"--{sev}: {color};" in css


# ----------------------------------------------------------------------------
# Figures


def _check_svg(img: plots.Image):
    assert img.format == "svg" and img.width > 100 and img.height > 50
    root = ET.fromstring(img.data)
    assert root.tag.endswith("svg")
    assert root.get("viewBox")
    return root


def test_plot_functions_return_valid_images(synthetic):
    run, _ = synthetic
    axis = plots.noise_axis(run.process)
    x = np.arange(5000)
    y = np.exp(-x / 1000) + 0.1
    _check_svg(plots.step_plot([plots.Series("a", x, y), plots.Series("b", x, 2 * y, style="dashed")],
                               ylabel="loss", events=[plots.Events("ev", x[::50])], vlines=[plots.VLine(2500, "r")]))
    _check_svg(plots.step_plot([], ylabel="nothing"))
    c = run.process.bin_centers()
    _check_svg(plots.noise_plot([plots.Curve("$x$ with dollars", c, np.linspace(1, 0.01, c.size))], axis, ylabel="L"))
    root = _check_svg(plots.heatmap(np.arange(11.0), run.process.bin_edges(), np.random.default_rng(0).normal(
        size=(run.process.num_bins, 10)), axis, label="excess"))
    assert any(el.tag.endswith("image") for el in root.iter()), "the heatmap is rasterized"
    _check_svg(plots.schedule_plot(axis, run.process.alpha_bar))
    png = plots._export(plots._figure(2.0), "empty", fmt="png")
    assert base64.b64decode(png.data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.data_uri.startswith("data:image/png;base64,")


@pytest.mark.parametrize("kind", ["flow", "edm"])
def test_report_of_continuous_processes(tmp_path, kind):
    run = load_run(make_synthetic_run(tmp_path / kind, steps=3000, kind=kind, probe_every=500))
    page = htmlpage.report_page(run, analyze(run))
    ids = {a.get("id") for _, a in _parse(page).tags}
    assert all(s in ids for s in SECTION_IDS)
    text = " ".join("".join(_parse(page).text).split())
    assert ("σ" in text) == (kind == "edm")


@pytest.mark.parametrize("kind", ["flow", "edm"])
def test_noise_axis_of_continuous_processes(kind):
    p = Process(kind, "flow" if kind == "flow" else "edm", 16, sigma_data=0.5)
    axis = plots.noise_axis(p)
    pos, labels = axis.snr_ticks()
    assert len(pos) >= 3 and all(axis.lo <= v <= axis.hi for v in pos)
    _check_svg(plots.noise_plot([plots.Curve("x", p.bin_centers(), np.linspace(1, 2, 16))], axis, ylabel="y"))


def test_envelope_keeps_extremes_and_bounds_size():
    rng = np.random.default_rng(1)
    x = np.arange(1_000_000)
    y = rng.normal(size=x.size)
    y[123_457] = 1e6  # one spike must survive the reduction
    y[500_000:500_010] = np.nan
    env = plots.envelope(x, y, columns=1000)
    assert env.x.size <= 1000
    assert np.nanmax(env.hi) == 1e6
    assert np.nanmin(env.lo) == np.nanmin(y)
    assert env.n.sum() == np.isfinite(y).sum()
    small = plots.envelope(x[:100], y[:100], columns=1000)
    assert np.array_equal(small.mean, y[:100])


def test_bucket_mean_is_a_rate():
    x = np.arange(1000)
    edges, rate, n = plots.bucket_mean(x, (x % 4 == 0).astype(float), 10)
    assert edges.size == 11 and n.sum() == 1000
    np.testing.assert_allclose(rate, 0.25)


def test_figures_leave_rcparams_alone():
    import matplotlib

    before = dict(matplotlib.rcParams)
    plots.step_plot([plots.Series("a", np.arange(10), np.arange(10.0))], ylabel="y")
    assert dict(matplotlib.rcParams) == before


# ----------------------------------------------------------------------------
# Size and speed on a long run


@pytest.mark.slow
def test_long_run_stays_small_and_renders_fast(tmp_path):
    sizes, seconds = {}, {}
    for steps in (50_000, 200_000):
        run = load_run(make_synthetic_run(tmp_path / str(steps), steps=steps, num_bins=100, window=100))
        analysis = analyze(run)
        t0 = time.perf_counter()
        page = htmlpage.report_page(run, analysis)
        seconds[steps] = time.perf_counter() - t0
        sizes[steps] = len(page.encode())
    # Step series are reduced to pixel columns and the heatmap to the analysis's few hundred time rows,
    # so 4x the steps must not make the page grow: then a 1,000,000-step run is about this size too.
    assert sizes[200_000] < 1.15 * sizes[50_000], sizes
    assert sizes[200_000] < SIZE_LIMIT / 3, f"{sizes[200_000] / 1e6:.2f} MB for 200,000 steps"
    assert seconds[200_000] < 30, f"rendering took {seconds[200_000]:.1f} s"


def test_trend_note_and_table_use_the_levels_the_trends_were_tested_at(synthetic):
    """The note under the trend table and its highlighted q-values follow the analysis's own alpha and
    stagnation margin, not the defaults."""
    run, default = synthetic
    assert "q < 0.05" in htmlpage.trend_note(default) and "±5%" in htmlpage.trend_note(default)
    strict = analyze(run, alpha=0.01, stagnation_margin=0.1)
    note = htmlpage.trend_note(strict)
    assert "q < 0.01" in note and "±10%" in note and "0.05" not in note
    q = strict.bins["q_value"].to_numpy()
    between = [i for i, v in enumerate(q) if 0.01 <= v < 0.05]
    assert between  # a bin the default level would mark and 0.01 does not
    table = htmlpage.bin_table(run, strict)
    col = table.columns.index("q")
    assert all(table.rows[i][col].cls == "" for i in between)
    assert all(table.rows[i][col].cls == "sig" for i, v in enumerate(q) if v < 0.01)
    # and the page says so under the table
    assert 'Bold</span>: q &lt; 0.01.' in htmlpage.report_page(run, strict)
    assert 'Bold</span>: q &lt; 0.05.' in htmlpage.report_page(run, default)
