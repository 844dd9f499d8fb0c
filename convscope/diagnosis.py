"""Diagnosis: turn what ActivationStats and the Recorder saw into verdicts in plain words.

Chapter 13 teaches reading `plot_layer_stats` and `color_dim` by eye: a layer whose
activations are all near zero is dead; activations that repeatedly collapse and recover mean
training is unstable; a loss that shoots up means the learning rate is too high. Each detector
below looks for one such pattern and, when it fires, returns a Finding with the layer, the
batches, the number behind it and what to try.

Works from a Learner or from saved data (`ActivationStats.load`, `History.load`), so a run
folder can be judged after the fact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import pairwise

import torch

from convscope.errors import UsageError

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One verdict. `batches` is the (first, last) training batch it is about."""

    severity: str
    kind: str
    message: str
    suggestion: str
    layer: str | None = None
    batches: tuple[int, int] | None = None
    value: float | None = None

    def __str__(self) -> str:
        return f"[{self.severity}] {self.message} {self.suggestion}".strip()

    def to_dict(self) -> dict:
        return asdict(self)

    def _repr_html_(self) -> str:
        from convscope.display import findings_html

        return findings_html([self])


class Diagnosis(list):
    """The findings `diagnose` returns, most severe first: a list that reads as sentences in a
    terminal and as coloured boxes in a notebook."""

    def __repr__(self) -> str:
        return "\n".join(str(f) for f in self) if self else "(no findings)"

    def _repr_html_(self) -> str:
        from convscope.display import findings_html

        return findings_html(self)


@dataclass
class Thresholds:
    """What counts as a problem. Shares are fractions (0.9 = 90%)."""

    dead: float = 0.9  # near-zero share, averaged over the last `late` of training
    late: float = 0.25
    collapse_ratio: float = 0.01  # late std / early std below this: collapsed
    explode_ratio: float = 100.0  # late std / early std above this: exploded
    layer_ratio: float = 100.0  # std of last vs first layer, either way
    unstable_high: float = 0.9  # a layer "collapses" when its share goes above this
    unstable_low: float = 0.6  # ... and "recovers" when it comes back below this
    unstable_cycles: int = 2
    spike: float = 3.0  # a batch loss this many times the median of the previous window,
    spike_min: float = 0.25  # ... and this much above it: at a loss of 0.03, one misread digit
    # in a batch of 128 triples the batch's loss, which is noise, not a spike
    spike_window: int = 20
    rise: float = 1.1  # smoothed loss this many times its best so far, at lr >= half its max,
    rise_min: float = 0.1  # ... and at least this much higher (late noise on a tiny loss is not)
    diverge: float = 1.5  # smoothed loss at the end this many times its best
    stuck: float = 0.95  # smoothed loss at the end above this share of the first
    gap: float = 2.0  # valid loss this many times the train loss of the same epoch
    min_steps: int = 30  # fewer training steps than this: too little to judge
    min_valid: int = 100  # fewer valid images than this: its accuracy is too coarse
    chance: float = 1.5  # accuracy below this many times 1/classes: nothing was learned
    update_gap: float = 100.0  # a layer's update/weight ratio this many times below the median
    update_max: float = 0.1  # a median update of more than this share of the weights per step
    grad_growth: float = 100.0  # late gradient norm this many times the early one


def _span(batches: list[int], start: int, end: int) -> tuple[int, int]:
    return (batches[start], batches[max(end - 1, start)])


def _late(n: int, late: float) -> int:
    return max(0, n - max(1, math.ceil(n * late)))


def warm_up(one_cycle: bool | None) -> str:
    """How to warm the learning rate up, for a run that did or did not use 1cycle."""
    return ("warm it up over more of the steps (a larger pct_start in fit_one_cycle)"
            if one_cycle else "warm it up (fit_one_cycle)")


def anneal(one_cycle: bool | None) -> str:
    """How to bring the learning rate down by the end, likewise."""
    return ("lower the peak (lr_max) of fit_one_cycle" if one_cycle
            else "lower the learning rate or anneal it (fit_one_cycle)")


def used_one_cycle(history) -> bool | None:
    """Whether a recorded fit used the 1cycle schedule: as its Recorder recorded, or read
    from the learning rates (up, then down); None when nothing says."""
    meta = getattr(history, "meta", None) or {}
    sched = (meta.get("callbacks") or {}).get("param_scheduler")
    if sched is not None:
        return sched.startswith("1cycle")
    lrs = [g[0] for g in history.hps.get("lr", [])] if history is not None else []
    if len(lrs) < 3:
        return None
    top = max(lrs)
    return lrs[0] < top and lrs[-1] < top


def dead_layers(stats, th: Thresholds, one_cycle: bool | None = None) -> list[Finding]:
    """Layers whose non-negative activations (after a ReLU) are near zero late in training."""
    out = []
    n = len(stats.batches)
    if n == 0:
        return out
    start = _late(n, th.late)
    dead = {}
    for i, name in enumerate(stats.layer_names):
        if stats.ranges[i][0] < 0:  # signed output (logits, no ReLU): zero is not "dead"
            continue
        share = float(stats.near_zero(i)[start:].mean())
        if share > th.dead:
            dead[name] = share
    over = (f"over the last {n - start} recorded batch{'es' if n - start != 1 else ''}")
    advice = (f"lower the learning rate, {warm_up(one_cycle)}, or add batchnorm "
              f"(simple_cnn(bn=True))")
    if len(dead) <= 2:
        for name, share in dead.items():
            out.append(Finding(
                "error" if share > 0.99 else "warning", "dead_layer",
                f"Block {name}: {share:.0%} of activations are near zero (|x| <= "
                f"{stats.zero_thresh:g}) {over}.", f"Its ReLUs have died: {advice}.",
                layer=name, batches=_span(stats.batches, start, n), value=share))
    else:  # the same cause in several blocks: one finding, not a column of copies
        worst = max(dead, key=dead.get)
        low, high = f"{min(dead.values()):.0%}", f"{max(dead.values()):.0%}"
        out.append(Finding(
            "error" if dead[worst] > 0.99 else "warning", "dead_layer",
            f"Blocks {', '.join(dead)}: {low if low == high else f'{low}-{high}'} of "
            f"activations are near zero (|x| <= {stats.zero_thresh:g}) {over}.",
            f"Their ReLUs have died: {advice}.", layer=worst,
            batches=_span(stats.batches, start, n), value=dead[worst]))
    return out


def collapse_or_explode(stats, th: Thresholds) -> list[Finding]:
    """Activation scale that shrinks toward 0 or blows up, over time or across layers."""
    out = []
    n = len(stats.batches)
    if n < 4:
        return out
    early_end, late_start = max(1, math.ceil(n * th.late)), _late(n, th.late)
    late_stds = []
    for i, name in enumerate(stats.layer_names):
        std = stats.stds(i)
        early, late = float(std[:early_end].mean()), float(std[late_start:].mean())
        late_stds.append(late)
        if not (math.isfinite(early) and math.isfinite(late)):
            out.append(Finding("error", "explode", f"Block {name}: activations became NaN or "
                               f"infinite.", "Lower the learning rate; add batchnorm.",
                               layer=name, batches=_span(stats.batches, 0, n)))
            continue
        ratio = late / early if early > 0 else float("inf")
        dead = stats.ranges[i][0] >= 0 and float(stats.near_zero(i)[late_start:].mean()) > th.dead
        if ratio < th.collapse_ratio and not dead:
            out.append(Finding("warning", "collapse", f"Block {name}: activation std fell from "
                               f"{early:.3g} to {late:.3g} ({ratio:.2g}x).",
                               "Activations are collapsing toward a constant: check the "
                               "initialisation, lower the learning rate, or add batchnorm.",
                               layer=name, batches=_span(stats.batches, late_start, n),
                               value=ratio))
        elif ratio > th.explode_ratio:
            out.append(Finding("error", "explode", f"Block {name}: activation std grew from "
                               f"{early:.3g} to {late:.3g} ({ratio:.3g}x).",
                               "Activations are exploding: lower the learning rate, add "
                               "batchnorm or weight decay.", layer=name,
                               batches=_span(stats.batches, late_start, n), value=ratio))
    if len(late_stds) >= 2 and late_stds[0] > 0 and all(map(math.isfinite, late_stds)):
        across = late_stds[-1] / late_stds[0]
        first, last = stats.layer_names[0], stats.layer_names[-1]
        if across > th.layer_ratio:
            out.append(Finding("warning", "explode_across_layers",
                               f"Activation std grows {across:.3g}x from block {first} to "
                               f"block {last}.", "Each layer amplifies the last: use "
                               "batchnorm or a smaller initialisation.", layer=last,
                               batches=_span(stats.batches, late_start, n), value=across))
        elif 0 < across < 1 / th.layer_ratio:
            out.append(Finding("warning", "collapse_across_layers",
                               f"Activation std shrinks {1 / across:.3g}x from layer {first} "
                               f"to layer {last}.", "Signals fade with depth: use batchnorm "
                               "or a larger initialisation.", layer=last,
                               batches=_span(stats.batches, late_start, n), value=across))
    return out


def unstable_layers(stats, th: Thresholds, one_cycle: bool | None = None) -> list[Finding]:
    """The book's bad-training pattern in color_dim: the share of near-zero activations
    repeatedly shoots up (the layer collapses) and falls back (it recovers)."""
    out = []
    for i, name in enumerate(stats.layer_names):
        if stats.ranges[i][0] < 0:
            continue
        share = stats.near_zero(i).tolist()
        cycles, collapsed, first = 0, False, None
        for j, s in enumerate(share):
            if not collapsed and s > th.unstable_high:
                collapsed, first = True, j if first is None else first
            elif collapsed and s < th.unstable_low:
                collapsed, cycles = False, cycles + 1
        if cycles >= th.unstable_cycles:
            out.append(Finding(
                "warning", "unstable", f"Block {name}: activations collapsed to near zero and "
                f"recovered {cycles} times.", "Training is unstable (the 'bad' color_dim of the "
                f"book): lower the learning rate, {warm_up(one_cycle)}, or add batchnorm.",
                layer=name, batches=_span(stats.batches, first or 0, len(share)),
                value=float(cycles)))
    return out


def loss_problems(losses: list[float], smooth: list[float], lrs: list[float],
                  th: Thresholds, restarts: list[int] | tuple[int, ...] = (),
                  one_cycle: bool | None = None) -> list[Finding]:
    """NaN or infinite loss, a loss that diverges or never goes down, and spikes at high lr.

    `restarts`: the batches where the training set changed (the Recorder's marks: a callback
    made an epoch draw other images, so the loss may step there). The trend is judged on the
    batches before the first restart; each stretch from a restart on is judged on its own,
    for spikes against its own recent median and for a climb from its first batches to its
    last."""
    out = []
    if not losses:
        return out
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        lr = f" with lr {lrs[bad[0]]:.3g}" if bad[0] < len(lrs) else ""
        out.append(Finding("error", "nan_loss", f"The loss became {losses[bad[0]]} at batch "
                           f"{bad[0]}{lr}.", f"Lower the learning rate, {warm_up(one_cycle)}, "
                           f"or add batchnorm.",
                           batches=(bad[0], bad[-1]), value=float(len(bad))))
        return out
    head = restarts[0] if restarts else len(losses)
    smooth = smooth[:head]
    best = min(range(len(smooth)), key=smooth.__getitem__)
    if smooth[-1] > th.diverge * smooth[best] and best < len(smooth) - 1:
        out.append(Finding("error", "diverged", f"The smoothed loss rose from {smooth[best]:.3g}"
                           f" at batch {best} to {smooth[-1]:.3g} at the end"
                           + (" before the training set first changed." if restarts else "."),
                           "Training diverged: lower the learning rate.",
                           batches=(best, len(smooth) - 1), value=smooth[-1] / smooth[best]))
    elif len(smooth) >= 20 and smooth[-1] > th.stuck * smooth[0]:
        out.append(Finding("error", "stuck", f"The loss barely moved: {smooth[0]:.3g} at the "
                           f"start, {smooth[-1]:.3g} at the end.", "Nothing was learned: the "
                           "learning rate may be far too high (dead layers) or too low; try "
                           "lr_find.", batches=(0, len(smooth) - 1),
                           value=smooth[-1] / smooth[0]))
    spikes = _spikes(losses[:head], 0, th)
    bounds = [*restarts, len(losses)]
    for a, b in pairwise(bounds):
        # a stretch may be shorter than the window: half of it, 5 at least
        window = min(th.spike_window, (b - a) // 2)
        spikes += _spikes(losses[a:b], a, th, window) if window >= 5 else []
        out += _climb(losses[a:b], a, th)
    if not spikes and lrs and not any(f.kind == "diverged" for f in out):
        out += loss_rise(smooth, lrs, th, one_cycle)  # e.g. a short warmup, before a window
    if spikes and lrs:
        i, ratio = max(spikes, key=lambda s: s[1])
        lr, lr_max = lrs[min(i, len(lrs) - 1)], max(lrs)
        high = lr >= 0.5 * lr_max
        out.append(Finding(
            "warning", "loss_spike", f"{len(spikes)} batch(es) where the loss jumped to over "
            f"{th.spike:g}x its recent median (and by {th.spike_min:g} or more); the largest, "
            f"{ratio:.3g}x at batch {i}, with lr "
            f"{lr:.3g}" + (" (near the peak)." if high else "."),
            f"The learning rate is too high for this point of training: "
            f"{'lower lr_max' if one_cycle is not False else 'lower it'}."
            if high else "A bad batch or a sharp region of the loss: a lower learning rate or "
            "a larger batch smooths it.", batches=(spikes[0][0], spikes[-1][0]), value=ratio))
    return out


def _spikes(losses: list[float], offset: int, th: Thresholds,
            window: int | None = None) -> list[tuple[int, float]]:
    """(batch, loss / median of the window before it) of each batch over both spike bars."""
    t = torch.tensor(losses)
    w = window or th.spike_window
    found = []
    for i in range(w, len(losses)):
        med = float(t[i - w:i].median())
        if med > 0 and losses[i] > th.spike * med and losses[i] - med >= th.spike_min:
            found.append((offset + i, losses[i] / med))
    return found


def _climb(losses: list[float], offset: int, th: Thresholds) -> list[Finding]:
    """A stretch of training on the same images whose loss ends well above where it began
    (medians of its first and last batches): on images that stay the same, divergence."""
    w = min(th.spike_window, len(losses) // 3)
    if w < 2:
        return []
    first, last = float(torch.tensor(losses[:w]).median()), float(
        torch.tensor(losses[-w:]).median())
    if not last > th.diverge * first:
        return []
    return [Finding("error", "diverged", f"From batch {offset} on, where the training set "
                    f"changed, the loss rose from a median {first:.3g} over the first {w} "
                    f"batches to {last:.3g} over the last {w}.",
                    "Training diverged: lower the learning rate.",
                    batches=(offset, offset + len(losses) - 1), value=last / first)]


def loss_rise(smooth: list[float], lrs: list[float], th: Thresholds,
              one_cycle: bool | None = None) -> list[Finding]:
    """The smoothed loss climbing well above its best so far while the lr is high: the sign,
    as in lr_find's plot, of a learning rate past what the model takes."""
    lr_max, best, worst = max(lrs), 0, None
    for j, (s, lr) in enumerate(zip(smooth, lrs, strict=False)):
        if s < smooth[best]:
            best = j
        ratio = s / smooth[best] if smooth[best] > 0 else 1.0
        if (lr >= 0.5 * lr_max and ratio > th.rise and s - smooth[best] > th.rise_min
                and (worst is None or ratio > worst[0])):
            worst = (ratio, best, j)
    if worst is None:
        return []
    ratio, frm, to = worst
    return [Finding("warning", "loss_rise", f"The smoothed loss rose {ratio - 1:.0%} above its "
                    f"best so far, from {smooth[frm]:.3g} at batch {frm} to {smooth[to]:.3g} at "
                    f"batch {to}, with the learning rate at {lrs[to]:.3g}.",
                    f"The learning rate is higher than this model takes: "
                    f"{'lower lr_max' if one_cycle is not False else 'lower it'} (lr_find's "
                    f"valley is a good start).", batches=(frm, to), value=ratio)]


def valid_gap(values: list[dict], th: Thresholds,
              one_cycle: bool | None = None) -> list[Finding]:
    """The valid loss far above the train loss: the model does not do on new data what it
    does on the training batches."""
    if not values:
        return []
    last = values[-1]
    train, valid = last.get("train_loss", math.nan), last.get("valid_loss", math.nan)
    if not (math.isfinite(train) and math.isfinite(valid)) or train <= 0:
        return []
    ratio = valid / train
    if ratio <= th.gap or valid - train < 0.1:
        return []
    acc = f" (accuracy {last['accuracy']:.1%})" if "accuracy" in last else ""
    return [Finding(
        "error" if ratio > 2 * th.gap else "warning", "valid_gap",
        f"Epoch {last.get('epoch', len(values) - 1)}: valid loss {valid:.3g}{acc} is "
        f"{ratio:.3g}x the train loss {train:.3g}.",
        f"With batchnorm and a high learning rate the running statistics used for validation "
        f"lag the weights: {anneal(one_cycle)}. Late in a long run it is overfitting: fewer "
        f"epochs, more data or augmentation.", value=ratio)]


def too_little(history, th: Thresholds) -> list[Finding]:
    """Runs too short, or valid sets too small, to judge, and accuracy at chance level."""
    out: list[Finding] = []
    steps, meta = len(history.losses), getattr(history, "meta", {}) or {}
    if steps == 0:  # nothing trained: nothing to judge (diagnose says so)
        return out
    if steps < th.min_steps:
        out.append(Finding(
            "warning", "too_little",
            f"Only {steps} training step{'s were' if steps != 1 else ' was'} taken: too few to "
            f"judge how training went.", f"At least {th.min_steps} "
            "are needed to tell a healthy run: more data, more epochs or a smaller batch "
            "size.", value=float(steps)))
    n_valid = meta.get("n_valid")
    if n_valid is not None and n_valid < th.min_valid:
        out.append(Finding(
            "warning", "small_valid_set", f"The valid set has only {n_valid} images: its "
            f"accuracy moves in steps of {1 / max(n_valid, 1):.0%}.", f"Validate on at least "
            f"{th.min_valid} images to judge the accuracy.", value=float(n_valid)))
    k = meta.get("n_classes")
    last = history.values[-1] if history.values else {}
    acc = last.get("accuracy")
    if k and acc is not None and math.isfinite(acc) and acc < th.chance / k:
        out.append(Finding(
            "error", "chance", f"The accuracy, {acc:.2%}, is at chance level for {k} classes "
            f"({1 / k:.1%}): the model learned nothing that generalises.", "Look at the loss "
            "and the blocks and layers below; train longer, on more data, or with another "
            "learning rate (lr_find).", value=acc))
    return out


def update_problems(gstats, th: Thresholds) -> list[Finding]:
    """Layers that barely learn (steps far smaller than the other layers' relative to their
    weights), steps too large for the weights, and gradients that explode over time."""
    out: list[Finding] = []
    if gstats is None or gstats.records.shape[1] == 0:
        return out
    n = gstats.records.shape[1]
    ratios = {}
    for i, name in enumerate(gstats.layer_names):
        r = gstats.series("update_ratio", i)
        r = r[r > 0]
        if len(r):
            ratios[name] = float(r.median())
    # like is compared with like: a batchnorm's steps are smaller than a conv's by nature
    types = dict(zip(gstats.layer_names, getattr(gstats, "layer_types", []), strict=False))
    for name, r in ratios.items():
        kind = types.get(name, "")
        peers = [v for n, v in ratios.items() if types.get(n, "") == kind]
        if len(peers) < 3:
            peers, kind = list(ratios.values()), ""
        if len(peers) < 2:
            continue
        median = float(torch.tensor(peers).median())
        if r * th.update_gap < median:
            others = f"other {kind} layers'" if kind else "layers'"
            out.append(Finding(
                "warning", "barely_learning", f"Layer {name} barely learns: its steps are "
                f"{r:.1e} of its weights, {median / max(r, 1e-30):.0f}x smaller than the "
                f"{others} median ({median:.1e}).", "Its gradients vanish or its weights are "
                "far larger than the others': check its initialisation, add batchnorm, or give "
                "it its own learning rate.", layer=name, value=r))
    large = {name: r for name, r in ratios.items() if r > th.update_max}
    if len(large) <= 2:
        for name, r in large.items():
            out.append(Finding(
                "warning", "large_updates", f"Layer {name}'s steps are {r:.0%} of its weights "
                f"(median per step): each step rewrites much of what it learned.",
                "Lower the learning rate.", layer=name, value=r))
    else:  # one finding for many layers: the cause is the same, and ten lines hide the rest
        worst = max(large, key=large.get)
        out.append(Finding(
            "warning", "large_updates", f"{len(large)} layers' steps are "
            f"{min(large.values()):.0%} to {max(large.values()):.0%} of their weights (median "
            f"per step; most, {large[worst]:.0%}, layer {worst}): each step rewrites much of "
            f"what they learned. Layers: {', '.join(large)}.", "Lower the learning rate.",
            layer=worst, value=large[worst]))
    early, late = max(1, n // 4), n // 2
    grew = {}  # layer: (median gradient norm early, late)
    for i, name in enumerate(gstats.layer_names):
        g = gstats.series("grad_norm", i)
        a, b = float(g[:early].median()), float(g[late:].median())
        if a > 0 and b > th.grad_growth * a:
            grew[name] = (a, b)
    advice = "Lower the learning rate, add batchnorm, or clip gradients."
    if len(grew) <= 2:
        for name, (a, b) in grew.items():
            out.append(Finding(
                "warning", "exploding_gradients", f"Layer {name}'s gradient norm grew "
                f"{b / a:.0f}x over training ({a:.3g} -> {b:.3g}).", advice, layer=name,
                value=b / a))
    else:  # one cause, one finding, as for large steps above
        factor = {name: b / a for name, (a, b) in grew.items()}
        worst = max(factor, key=factor.get)
        a, b = grew[worst]
        out.append(Finding(
            "warning", "exploding_gradients", f"{len(grew)} layers' gradient norms grew "
            f"{min(factor.values()):.0f}x to {max(factor.values()):.0f}x over training (most, "
            f"layer {worst}: {a:.3g} -> {b:.3g}). Layers: {', '.join(grew)}.", advice,
            layer=worst, value=factor[worst]))
    return out


def diagnose(learn=None, stats=None, history=None, gradients=None,
             thresholds: Thresholds | None = None) -> Diagnosis:
    """Every finding about a run, the most severe first; one "healthy" finding if none.

    Args:
        learn: a Learner after fit (its activation_stats, gradient_stats and recorder are
            used), or
        stats: an ActivationStats (e.g. loaded from a run folder) and/or
        history: a Recorder or History with losses, smooth_losses and hps, and/or
        gradients: a GradientStats.
    """
    th = thresholds or Thresholds()
    if learn is not None:
        stats = stats or getattr(learn, "activation_stats", None)
        history = history or getattr(learn, "recorder", None)
        gradients = gradients or getattr(learn, "gradient_stats", None)
    findings: list[Finding] = []
    one_cycle = used_one_cycle(history) if history is not None else None
    findings += update_problems(gradients, th)
    if history is not None:
        findings += too_little(history, th)
        lrs = [g[0] for g in history.hps.get("lr", [])]
        # where the training set changed (a resumed or stopped fit: only those recorded)
        restarts = sorted({m["batch"] for m in getattr(history, "marks", [])
                           if 0 < m["batch"] < len(history.losses)})
        findings += loss_problems(list(history.losses), list(history.smooth_losses), lrs, th,
                                  restarts, one_cycle)
        findings += valid_gap(list(history.values), th, one_cycle)
    if stats is not None and stats.batches:
        findings += dead_layers(stats, th, one_cycle)
        findings += collapse_or_explode(stats, th)
        findings += unstable_layers(stats, th, one_cycle)
    if stats is None and history is None and gradients is None:
        raise UsageError("diagnose needs a Learner after fit, or recorded stats or history.")
    # a run too short to judge says so first: what follows is to be read in its light
    findings.sort(key=lambda f: (f.kind != "too_little", SEVERITIES.index(f.severity)))
    if not findings:
        looked = (["the loss"] if history is not None and history.losses else []) + (
            [f"{len(stats.layer_names)} layers' activations"] if stats is not None
            and stats.batches else []) + (
            [f"{len(gradients.layer_names)} layers' steps"] if gradients is not None
            and gradients.batches else [])
        if not looked:  # e.g. a fit of 0 epochs: no verdict from no evidence
            return Diagnosis([Finding(
                "info", "nothing_recorded", "Nothing to diagnose: no training batch was "
                "recorded (0 epochs, or a fit cancelled before its first batch).", "")])
        findings.append(Finding("info", "healthy", "The run looks healthy: no dead, collapsing "
                                "or exploding layers, no layer that barely learns, no loss "
                                "spikes, NaN or divergence, accuracy above chance, and valid "
                                "loss in line with train loss "
                                f"(checked {' and '.join(looked)}).", ""))
    return Diagnosis(findings)
