"""``diffaudit compare --junit FILE``: the verdict as JUnit XML, one testcase per check.

CI systems show a regression as a failed test, an inconclusive check as a
skipped one. Names and reasons come from the logs, so each character XML 1.0
cannot carry at all is written as an escape rather than breaking the file.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from diffaudit.gate import Verdict
from diffaudit.present import cells
from diffaudit.words import p_value

_XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(s: str) -> str:
    """s with each character XML 1.0 forbids (most control characters, lone surrogates) written as \\xNN."""
    return _XML_FORBIDDEN.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", s)


def verdict_junit(v: Verdict) -> str:
    """JUnit XML: one testcase per check (off rules left out), a failure per regression, skipped when inconclusive."""
    shown = [c for c in v.checks if c.status != "off"]
    suites = ET.Element("testsuites", name="diffaudit compare")
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"diffaudit compare {v.baseline.label()} -> {v.candidate.label()}",
        "tests": str(max(len(shown), 1)),
        "failures": str(sum(c.status == "regression" for c in shown)),
        "errors": "0",
        "skipped": str(sum(c.status == "inconclusive" for c in shown) + (0 if shown else 1)),
        "time": "0",
    })
    props = ET.SubElement(suite, "properties")
    for k, val in [("status", v.status), ("summary", cells.headline(v)), ("noise_model", v.noise_model),
                   ("detectable", "" if v.detectable is None else repr(float(v.detectable))),
                   ("allowance", v.allowance or ""),
                   ("baseline", " ".join(v.baseline.paths)), ("candidate", " ".join(v.candidate.paths)),
                   ("window", "" if v.window is None else f"{v.window[0]}-{v.window[1]}"),
                   *[(f"setting.{k2}", json.dumps(x) if not isinstance(x, str) else x) for k2, x in v.settings.items()]]:
        ET.SubElement(props, "property", name=k, value=str(val))
    for c in shown:
        tc = ET.SubElement(suite, "testcase", {"classname": f"diffaudit.compare.{c.metric}", "name": cells.name(c),
                                               "time": "0"})
        if c.detectable is not None:  # what the check could have seen: its minimum detectable change
            tp = ET.SubElement(tc, "properties")
            ET.SubElement(tp, "property", name="detectable", value=repr(float(c.detectable)))
        text = (f"baseline {cells.value(c.baseline, c.metric)}, candidate {cells.value(c.candidate, c.metric)}, "
                f"change {cells.change(c)} {cells.interval(c)}, p {p_value(c.p)}, q {p_value(c.q)}, "
                f"limit {cells.limit(c)}")
        if c.status == "regression":
            f = ET.SubElement(tc, "failure", message=c.reason, type="regression")
            f.text = text
        elif c.status == "inconclusive":
            ET.SubElement(tc, "skipped", message=c.reason)
        else:
            out = ET.SubElement(tc, "system-out")
            out.text = f"{c.reason}\n{text}"
    if not shown:
        tc = ET.SubElement(suite, "testcase", classname="diffaudit.compare", name="matching", time="0")
        ET.SubElement(tc, "skipped", message=v.summary)
    for el in suites.iter():  # names from the logs may hold characters XML 1.0 cannot carry at all
        el.text = None if el.text is None else xml_safe(el.text)
        for k, val in el.attrib.items():
            el.attrib[k] = xml_safe(val)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
