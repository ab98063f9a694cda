"""Every output format of diffaudit, for ``report`` and ``compare`` side by side (and the other commands' text).

The engines (:mod:`diffaudit.analysis`, :mod:`diffaudit.findings`,
:mod:`diffaudit.gate`) return frozen dataclasses and never format a page or a
table; this package turns them into what people and CI read. Only the CLI
imports it, and nothing in it is imported by the engines.

==================  ==========================================  ===========================================
module              ``report``                                  ``compare``
==================  ==========================================  ===========================================
:mod:`.text`        :func:`~.text.report_lines` (terminal)      :func:`~.text.verdict_text` (terminal table)
:mod:`.document`    :func:`~.document.report_document` (JSON)   :func:`~.document.verdict_document` (JSON)
:mod:`.markdown`    :func:`~.markdown.report_markdown`          :func:`~.markdown.verdict_markdown`
:mod:`.junit`                                                   :func:`~.junit.verdict_junit`
:mod:`.html`        :func:`~.html.report_page`                  :func:`~.html.compare_page`
:mod:`.plots`       the figures of both pages (matplotlib, inline SVG)
:mod:`.cells`                                                   one check as table cells, the verdict in one sentence
:mod:`.tensorboard` a run as TensorBoard events (``export --tensorboard``)
==================  ==========================================  ===========================================

The other commands' outputs live here too: :mod:`.text` holds ``summary``'s overview
(:func:`~.text.summary_lines`, :func:`~.text.recent_loss_lines`), ``optimum``'s table
(:func:`~.text.optimum_table`) and ``watch``'s status lines (:func:`~.text.watch_update_line`,
:func:`~.text.watch_change_line`); :mod:`.document` ``optimum --json`` (:func:`~.document.optimum_document`).

Numbers, percentages, p-values, bin ranges and noise levels read the same in
all of them because they all say them through :mod:`diffaudit.words`.
:mod:`.html` and :mod:`.plots` import jinja2 and matplotlib, so the CLI imports
them only when a page is asked for; the others are light.
"""
