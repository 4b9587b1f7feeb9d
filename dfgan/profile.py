"""Where a run's wall time goes: nested wall-clock sections, one ``Profile`` per run.

``profile.section("train")`` inside ``profile.section("step")`` records ``train.step``; a section's time
includes its children's, so the report gives each name its total and its ``self`` time (what no child
covers). Sections that would run thousands of times per run with a sync on CUDA (the parts of a training step)
are ``detail`` sections: timed only on the sampled repetitions of their enclosing ``repeat`` section (every
``sample_every``-th step), their totals scaled up to all repetitions in the report, and the mean time of the
sampled and the unsampled repetitions reported side by side, which is what the detail timing costs.
On CUDA every section boundary calls ``torch.cuda.synchronize`` (otherwise a section would time only the
launch of its kernels). Cross-cutting work (MLflow calls, wherever they happen) is timed by ``instrument``,
under one leaf name that the report also totals over every place it occurred (``by_leaf``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch

SEP = "."


class Profile:
    """Nested wall-clock sections of one run (see the module docstring)."""

    def __init__(self, device: Any = None, *, sample_every: int = 10, clock=time.perf_counter):
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self._sync = torch.cuda.synchronize if dev.type == "cuda" else None  # the current device's work
        self.sample_every = max(1, int(sample_every))
        self.clock = clock
        self.t0 = clock()
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[str] = []
        self._open: list[tuple[str, Any]] = []  # sections opened by begin()
        self._detail = True  # whether detail sections are timed now (False on unsampled repetitions)
        self._repeats: dict[str, dict[str, float]] = {}  # repeat name -> sampled/unsampled counts and seconds

    def _name(self, name: str) -> str:
        return SEP.join([*self._stack, name])

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` under the sections open now."""
        full = self._name(name)
        self._stack.append(name)
        if self._sync:
            self._sync()
        t = self.clock()
        try:
            yield
        finally:
            if self._sync:
                self._sync()
            self.seconds[full] += self.clock() - t
            self.calls[full] += 1
            self._stack.pop()

    def begin(self, name: str) -> None:
        """Open a section that does not fit one ``with`` block (closed by ``end(name)``); the sections opened
        until then are its children."""
        cm = self.section(name)
        cm.__enter__()
        self._open.append((name, cm))

    def end(self, name: str) -> None:
        """Close the section ``begin(name)`` opened (the innermost one open)."""
        opened, cm = self._open.pop()
        if opened != name:
            raise RuntimeError(f"profile: end({name!r}) while {opened!r} is the innermost open section")
        cm.__exit__(None, None, None)

    def elapsed(self) -> float:
        """Seconds since the profile began."""
        return self.clock() - self.t0

    def add(self, name: str, seconds: float) -> None:
        """Record ``seconds`` measured elsewhere as one call of ``name`` under the sections open now."""
        full = self._name(name)
        self.seconds[full] += seconds
        self.calls[full] += 1

    def detail(self, name: str):
        """A section timed only on sampled repetitions of the enclosing ``repeat`` (else a no-op)."""
        return self.section(name) if self._detail else contextlib.nullcontext()

    @contextlib.contextmanager
    def repeat(self, name: str, index: int) -> Iterator[None]:
        """A section run many times (a training step, ``index`` = the step): its detail sections are timed on
        every ``sample_every``-th index only."""
        full = self._name(name)
        first = full not in self._repeats
        # the first repetition (warm-up: allocations, lazy initialisation) is neither sampled nor averaged
        sampled = not first and index % self.sample_every == 0
        before, self._detail = self._detail, sampled
        t = self.clock()
        try:
            with self.section(name):
                yield
        finally:
            self._detail = before
            dt = self.clock() - t
            if first:
                self._repeats[full] = {"first_s": dt, "sampled": 0, "sampled_s": 0.0, "unsampled": 0,
                                       "unsampled_s": 0.0}
            else:
                r = self._repeats[full]
                kind = "sampled" if sampled else "unsampled"
                r[kind] += 1
                r[f"{kind}_s"] += dt

    def iterate(self, name: str, items: Iterable) -> Iterator:
        """Yield from ``items``, timing the production of each item as ``name`` (a loader, a generator)."""
        it = iter(items)
        while True:
            with self.section(name):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def instrument(self, obj: Any, methods: Iterable[str], name: str) -> None:
        """Time every call of ``obj``'s ``methods`` (on this instance only) as a section ``name``. Instrumenting
        the same object again (a tracker passed to several runs) replaces the timing, it does not stack."""
        originals = obj.__dict__.setdefault("_profile_originals", {})
        for m in methods:
            fn = originals.setdefault(m, getattr(obj, m))

            @functools.wraps(fn)
            def timed(*a, _fn=fn, **kw):
                with self.section(name):
                    return _fn(*a, **kw)

            setattr(obj, m, timed)

    # ---- the report -------------------------------------------------------------------------------------------
    def _scale(self, name: str) -> float:
        """Sampled detail sections count for every repetition of their repeat: the factor to scale them by."""
        for rep, r in self._repeats.items():
            if name.startswith(rep + SEP) and r["sampled"]:
                return (1 + r["sampled"] + r["unsampled"]) / r["sampled"]  # the first repetition counted too
        return 1.0

    def report(self) -> dict[str, Any]:
        """Wall time since the profile began, every section (seconds, calls, self seconds = what no child covers;
        detail sections also ``estimated_seconds``, and self seconds counted in estimated seconds), the top-level
        phases, per-leaf totals, and each repeat's sampling cost."""
        wall = self.clock() - self.t0
        names = sorted(self.seconds)
        sections: dict[str, dict[str, float]] = {}
        for n in names:
            children = [c for c in names if c.startswith(n + SEP) and SEP not in c[len(n) + 1:]]
            scale = self._scale(n)
            own = self.seconds[n] * scale - sum(self.seconds[c] * self._scale(c) for c in children)
            entry = {"seconds": round(self.seconds[n], 4), "calls": self.calls[n], "self_seconds": round(own, 4)}
            if scale != 1.0:
                entry["estimated_seconds"] = round(self.seconds[n] * scale, 4)
            sections[n] = entry
        top = {n: self.seconds[n] for n in names if SEP not in n}
        by_leaf: dict[str, float] = defaultdict(float)
        for n in names:
            leaf = n.rsplit(SEP, 1)[-1]
            if not any(a.rsplit(SEP, 1)[-1] == leaf for a in _ancestors(n)):  # count nested repeats of a leaf once
                by_leaf[leaf] += self.seconds[n] * self._scale(n)
        repeats = {}
        for rep, r in self._repeats.items():
            ms = r["sampled_s"] / r["sampled"] * 1e3 if r["sampled"] else float("nan")
            mu = r["unsampled_s"] / r["unsampled"] * 1e3 if r["unsampled"] else float("nan")
            repeats[rep] = {"sample_every": self.sample_every, "sampled": r["sampled"], "unsampled": r["unsampled"],
                            "first_ms": round(r["first_s"] * 1e3, 3), "sampled_mean_ms": round(ms, 3),
                            "unsampled_mean_ms": round(mu, 3)}
        covered = sum(top.values())
        return {"wall_seconds": round(wall, 4), "covered_seconds": round(covered, 4),
                "coverage": round(covered / wall, 4) if wall > 0 else float("nan"),
                "phases": {n: round(s, 4) for n, s in top.items()}, "sections": sections,
                "by_leaf": {k: round(v, 4) for k, v in sorted(by_leaf.items())}, "repeats": repeats,
                "sync": "torch.cuda.synchronize at every section boundary" if self._sync else None}

    def metrics(self) -> dict[str, float]:
        """``phase_seconds.<section>`` for every section (detail sections: estimated over all repetitions), and
        ``phase_seconds.wall``: what a run logs to MLflow."""
        rep = self.report()
        out = {f"phase_seconds.{n}": e.get("estimated_seconds", e["seconds"]) for n, e in rep["sections"].items()}
        out["phase_seconds.wall"] = rep["wall_seconds"]
        return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(SEP)
    return [SEP.join(parts[:i]) for i in range(1, len(parts))]


class NullProfile:
    """A profile that times nothing (code paths run without a ``Profile``)."""

    def section(self, name: str):
        return contextlib.nullcontext()

    detail = section

    def repeat(self, name: str, index: int):
        return contextlib.nullcontext()

    def iterate(self, name: str, items: Iterable) -> Iterable:
        return items

    def instrument(self, obj: Any, methods: Iterable[str], name: str) -> None:
        return None

    def add(self, name: str, seconds: float) -> None:
        return None

    def begin(self, name: str) -> None:
        return None

    end = begin


NO_PROFILE = NullProfile()


def format_report(rep: dict[str, Any], min_share: float = 0.001) -> str:
    """The report as an indented table (seconds, share of the wall time, calls), children under parents."""
    wall = rep["wall_seconds"] or float("nan")
    lines = [f"profile: {wall:.1f} s wall, {rep['coverage']:.1%} in sections"]
    for n, e in rep["sections"].items():
        s = e.get("estimated_seconds", e["seconds"])
        if s / wall < min_share:
            continue
        depth = n.count(SEP)
        est = " (sampled, estimated)" if "estimated_seconds" in e else ""
        lines.append(f"  {'  ' * depth}{n.rsplit(SEP, 1)[-1]:<{28 - 2 * depth}} {s:9.2f} s {s / wall:6.1%}"
                     f"  x{e['calls']}{est}")
    for leaf in ("mlflow",):
        if leaf in rep["by_leaf"]:
            s = rep["by_leaf"][leaf]
            lines.append(f"  {'(all ' + leaf + ' calls)':<28} {s:9.2f} s {s / wall:6.1%}")
    for rep_name, r in rep["repeats"].items():
        lines.append(f"  {rep_name}: {r['sampled_mean_ms']:.2f} ms per repetition with its parts timed (every "
                     f"{r['sample_every']}th), {r['unsampled_mean_ms']:.2f} ms without, {r['first_ms']:.1f} ms the "
                     "first")
    return "\n".join(lines)


def log_profile(profile: Profile, tracker, run_dir, step: int, *, stream=None) -> dict[str, Any]:
    """Print the report (stderr), write ``<run_dir>/profile.json`` and log it to MLflow (metrics
    ``phase_seconds.<section>``, artifact ``profile.json``); returns the report."""
    rep = profile.report()
    text = json.dumps(rep, indent=2)
    if run_dir is not None:
        (run_dir / "profile.json").write_text(text)
    if tracker is not None:
        tracker.metrics(profile.metrics(), step)
        tracker.text(text, "profile.json")
    print(format_report(rep), file=stream or sys.stderr)
    return rep
