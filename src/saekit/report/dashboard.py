"""The HTML feature dashboard: one self-contained page (no scripts, no network) from `saekit features`' report."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import jinja2

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>saekit features: {{ r.architecture }} SAE on {{ r.model }} {{ r.hookpoint }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
 table.summary td { padding: 0.1em 1em 0.1em 0; } .num { font-variant-numeric: tabular-nums; }
 .latent { border-top: 1px solid #ccc; margin-top: 1.5em; padding-top: 0.5em; }
 .latent h2 { font-size: 1.1em; margin: 0.2em 0; } .stats { color: #555; }
 .logits { display: flex; gap: 3em; font-size: 0.9em; } .logits ol { margin: 0.2em 0; }
 .example { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; margin: 0.15em 0; }
 .example .value { display: inline-block; width: 5em; color: #555; }
 .tok { border-radius: 2px; } .focus { outline: 1px solid #c60; } .off { color: #999; }
</style></head><body>
<h1>{{ r.architecture }} SAE: what its latents respond to</h1>
<p>{{ r.sae }} on <b>{{ r.model }}</b> at <b>{{ r.hookpoint }}</b>; held-out text.</p>
<table class="summary">
{% for k, v in r.summary.items() %}<tr><td>{{ k }}</td><td class="num">{{ fmt(v) }}</td></tr>{% endfor %}
</table>
{% if histogram %}<p><img alt="firing frequency of the live latents" src="data:image/png;base64,{{ histogram }}"></p>{% endif %}
<p>{{ r.latents|length }} latents below. Each example is a window of held-out text; a token's colour is this
latent's code there (darkest = the latent's largest code on this page), the outlined token is the example itself.</p>
{% for f in r.latents %}
<div class="latent" id="latent-{{ f.index }}">
<h2>latent {{ f.index }}</h2>
<div class="stats">fires on {{ pct(f.frequency) }} of tokens; mean code when firing {{ fmt(f.mean_when_firing) }};
max {{ fmt(f.max) }}</div>
<div class="logits">
 <div>promotes <ol>{% for t, v in f.promoted %}<li><code>{{ t|tojson }}</code> {{ fmt(v) }}</li>{% endfor %}</ol></div>
 <div>suppresses <ol>{% for t, v in f.suppressed %}<li><code>{{ t|tojson }}</code> {{ fmt(v) }}</li>{% endfor %}</ol></div>
</div>
{% set top = f.examples[0].value if f.examples else 1.0 %}
{% for e in f.examples %}<div class="example"><span class="value">{{ fmt(e.value) }}</span>
{%- for tok, code in zip(e.tokens, e.codes) -%}
<span class="tok{% if loop.index0 == e.focus %} focus{% endif %}{% if code is none %} off{% endif %}"
 title="{{ 'not encoded' if code is none else fmt(code) }}"
 style="background: rgba(255, 140, 0, {{ shade(code, top) }})">{{ tok }}</span>
{%- endfor %}</div>
{% else %}<p class="stats">no firing token in the scanned text</p>{% endfor %}
</div>
{% endfor %}
</body></html>
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _shade(code: float | None, top: float) -> str:
    if code is None or not top > 0:
        return "0"
    return f"{max(0.0, min(1.0, code / top)):.3f}"


def _histogram(frequency: list[float]) -> str | None:
    """log10 firing frequency of the live latents, as a base64 PNG (None when matplotlib cannot draw)."""
    live = [math.log10(f) for f in frequency if f and f > 0]
    if not live:
        return None
    from saekit.report.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.hist(live, bins=40, color="#d9822b")
    ax.set_xlabel("log10 firing frequency (live latents)")
    ax.set_ylabel("latents")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_dashboard(report: dict[str, Any]) -> str:
    """The page for a ``features`` report (text is HTML-escaped; token strings may hold anything)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True)
    template = env.from_string(TEMPLATE)
    return template.render(r=report, fmt=_fmt, pct=lambda f: f"{100 * f:.3g}%", shade=_shade, zip=zip,
                           histogram=_histogram(report.get("frequency", [])))
