"""The course's claims about a trained model, as functions: each chapter's notebook asserts them on its model, and
tests/test_claims.py asserts them on runs the notebooks never use (other seeds and moduli).

Each function returns `Claims`, a list of `Claim(statement, measured, holds)`: what the course says, what this
model shows, and whether the statement holds. `print(claims)` lists them; `assert claims.hold(), claims.failures()`.
Thresholds are the course's statements (the chapters set the paper's figures beside them, citing its sections);
they are the same for every run.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd
import torch

from utils import ablation, mechanism
from utils.data import make_dataset
from utils.fourier import echo_frequencies, embedding_frequency_norms, key_frequencies
from utils.model import HookedTransformer
from utils.progress import Phases

__all__ = ["Claim", "Claims", "periodicity", "algorithm", "ablations", "progress"]

CLUSTER_SHARE = 0.85  # a neuron belongs to a frequency's cluster if that frequency explains ≥ 85% of its variance
BIG_CLUSTER = 0.01  # a cluster counts if it holds ≥ 1% of the neurons


class Claim(NamedTuple):
    """One statement of the course, what the model measured, and whether it holds."""

    statement: str
    measured: str
    holds: bool


class Claims(list):
    """A chapter's claims about one model."""

    def hold(self) -> bool:
        """True when every claim holds."""
        return all(c.holds for c in self)

    def failures(self) -> str:
        """The claims that do not hold, one per line (empty when all hold)."""
        return "\n".join(f"{c.statement}: {c.measured}" for c in self if not c.holds)

    def __str__(self) -> str:
        return "\n".join(f"{'✔' if c.holds else '✘'} {i}. {c.statement} — {c.measured}" for i, c in enumerate(self, 1))


def _ratio(x: float, y: float) -> float:
    return x / max(y, 1e-300)


# --- chapter 2: periodicity ------------------------------------------------------------------------------
def frequency_ablation(model: HookedTransformer, train_idx: torch.Tensor) -> pd.DataFrame:
    """Training loss with each of the embedding's top frequencies removed on its own, from the logits' directions
    cos/sin(w_k(a+b)) and from the embedding: one row per frequency (the key ones and the next few)."""
    keys = key_frequencies(model)
    shares = embedding_frequency_norms(model)
    top = [int(i) + 1 for i in shares.argsort(descending=True)[:len(keys) + 3]]
    top += [k for k in keys if k not in top]
    _, labels = make_dataset(model.cfg.d_vocab_out)
    logits = mechanism.model_logits(model).double()
    rows = [{"frequency": k, "key": k in keys, "embedding share": shares[k - 1].item(),
             "logits without it": ablation.logit_loss(ablation.remove_frequencies(logits, [k]), labels, train_idx),
             "embedding without it": ablation.logit_loss(ablation.remove_embedding_frequencies(model, [k]).double(),
                                                         labels, train_idx)} for k in top]
    return pd.DataFrame(rows)


def periodicity(model: HookedTransformer, train_idx: torch.Tensor) -> Claims:
    """Chapter 2: a handful of key frequencies, used by neurons and W_L alike, and they are what matters."""
    keys = key_frequencies(model)
    shares = embedding_frequency_norms(model)
    key_share = shares[[k - 1 for k in keys]].sum().item()
    echoes = echo_frequencies(model, keys)
    with_echoes = shares[[k - 1 for k in [*keys, *echoes]]].sum().item()
    _, explained = mechanism.neuron_frequencies(model)
    clustered = (explained >= CLUSTER_SHARE).double().mean().item()
    clusters = mechanism.neuron_clusters(model, CLUSTER_SHARE)
    big = sorted(k for k, n in clusters.items() if len(n) >= BIG_CLUSTER * model.cfg.d_mlp)
    table = frequency_ablation(model, train_idx)
    _, labels = make_dataset(model.cfg.d_vocab_out)
    base = ablation.logit_loss(mechanism.model_logits(model).double(), labels, train_idx)
    key, other = table[table.key], table[~table.key]
    cols = ("logits without it", "embedding without it")
    separation = {c: _ratio(key[c].min(), other[c].max() if len(other) else base) for c in cols}
    return Claims([
        Claim("a handful (3–7) of key frequencies", f"{len(keys)}: {keys}", 3 <= len(keys) <= 7),
        Claim("the key frequencies hold most (≥ 75%) of the embedding's squared norm", f"{key_share:.1%}",
              key_share >= 0.75),
        Claim("with their echoes, ≥ 90% of it", f"{with_echoes:.1%} (echoes {echoes or 'none'})", with_echoes >= 0.9),
        Claim("most neurons (> 50%) are explained ≥ 85% by one frequency", f"{clustered:.1%}", clustered > 0.5),
        Claim("the neuron clusters (≥ 1% of the neurons) use exactly the key frequencies", f"clusters {big}",
              big == sorted(keys)),
        Claim("removing any key frequency hurts ≥ 100× more than removing any other top frequency (logits)",
              f"{separation[cols[0]]:.2g}×", separation[cols[0]] >= 100),
        Claim("… and likewise from the embedding", f"{separation[cols[1]]:.2g}×", separation[cols[1]] >= 100),
        Claim("removing a non-key frequency from the logits leaves the training loss within 2×",
              f"at most {_ratio(other[cols[0]].max(), base) if len(other) else 1:.2f}× the model's {base:.2g}",
              len(other) == 0 or other[cols[0]].max() <= 2 * base),
    ])


# --- chapter 3: the algorithm ------------------------------------------------------------------------------
def algorithm(model: HookedTransformer) -> Claims:
    """Chapter 3: the logits are a sum of cosines of w_k(a+b-c), built by neurons that multiply waves (attention
    hands them mostly a sum)."""
    keys = key_frequencies(model)
    p = model.cfg.d_vocab_out
    logits = mechanism.logit_grid(model)
    alphas, fit = mechanism.fit_cosine_logits(logits, keys)
    explained = mechanism.variance_explained(logits, fit)
    rank = mechanism.significant_rank(mechanism.W_L(model))
    clusters = mechanism.neuron_clusters(model, CLUSTER_SHARE)
    acts = mechanism.neuron_activations(model)
    linear = torch.cat([mechanism.neuron_fit_r2(acts[..., n], k, quadratic=False) for k, n in clusters.items()])
    quadratic = torch.cat([mechanism.neuron_fit_r2(acts[..., n], k, quadratic=True) for k, n in clusters.items()])
    own = mechanism.cluster_output_norms(model, clusters)  # [clusters, (p-1)/2]
    own_share = min(own[i, k - 1].item() for i, k in enumerate(clusters))
    tokens, labels = make_dataset(p)
    mine = mechanism.fourier_multiplication(tokens[:, 0], tokens[:, 1], p, keys, alphas)
    agreement = (mine.argmax(-1) == logits.flatten(0, 1).argmax(-1)).double().mean().item()
    gain = (quadratic - linear).mean().item()
    attention_sum = mechanism.additive_share(mechanism.attention_output(model))
    products_before = 1 - mechanism.additive_share(mechanism.neuron_activations(model, before_relu=True))
    products_after = 1 - mechanism.additive_share(acts)
    loss = ablation.logit_loss(logits.flatten(0, 1), labels)
    summed = ablation.logit_loss(mechanism.logits_with_additive_attention(model).double(), labels)
    return Claims([
        Claim("Σ_k α_k cos(w_k(a+b−c)) over the key frequencies explains ≥ 90% of the logits' variance",
              f"{explained:.1%} (paper: about 95%)", explained >= 0.9),
        Claim("every key frequency has α_k > 0 (its cosine peaks at the right answer)",
              f"α = {[round(a, 2) for a in alphas.tolist()]}", bool((alphas > 0).all())),
        Claim("W_L has two significant singular values per key frequency", f"{rank} for {len(keys)}",
              rank == 2 * len(keys)),
        # "Mostly a sum": at most a tenth of the attention output's variance is products.
        Claim("attention's output at '=' is mostly (≥ 90%) a sum f(a) + g(b)", f"{attention_sum:.1%}",
              attention_sum >= 0.9),
        # "Most products come from the ReLU": ≥ 3/4 of the neurons' non-sum share appears there (a 4× rise).
        Claim("the ReLU makes most products: the neurons' share not a sum f(a) + g(b) rises ≥ 4× across it",
              f"{products_before:.1%} → {products_after:.1%}", products_after >= 4 * products_before),
        # "Attention's products are used": removing them costs at least an order of magnitude in loss.
        Claim("… yet attention's products are used: its output replaced by the best sum raises the loss ≥ 10×",
              f"{loss:.3g} → {summed:.3g}", summed >= 10 * loss),
        Claim("the clustered neurons need the products of waves (mean R² ≥ 0.9, ≥ 0.1 over linear terms)",
              f"R² {quadratic.mean():.3f}, gain {gain:+.3f}", quadratic.mean().item() >= 0.9 and gain >= 0.1),
        Claim("each cluster writes ≥ 80% of its W_L norm to its own frequency", f"smallest {own_share:.1%}",
              own_share >= 0.8),
        Claim("the re-implementation from the key frequencies gives the model's answer on ≥ 99% of inputs",
              f"{agreement:.2%}", agreement >= 0.99),
    ])


# --- chapter 4: ablations -------------------------------------------------------------------------------
def ablations(model: HookedTransformer, train_idx: torch.Tensor, test_idx: torch.Tensor) -> Claims:
    """Chapter 4: the key directions are necessary and sufficient; neurons are their frequency's terms."""
    from utils.progress import excluded_loss, restricted_loss  # (progress imports ablation, not the reverse)

    keys = key_frequencies(model)
    p = model.cfg.d_vocab_out
    _, labels = make_dataset(p)
    logits = mechanism.model_logits(model).double()
    loss = ablation.logit_loss(logits, labels, test_idx)
    removed = ablation.remove_frequencies(logits, keys)
    removed_acc = ablation.logit_accuracy(removed, labels, test_idx)
    kept = ablation.logit_loss(ablation.keep_frequencies(logits, keys), labels, test_idx)
    freqs, _ = mechanism.neuron_frequencies(model)
    projected_acc = ablation.logit_accuracy(ablation.project_neurons(model, freqs).double(), labels, test_idx)
    one = ablation.per_frequency_loss(logits, labels, keys, test_idx)
    all_removed = ablation.logit_loss(removed, labels, test_idx)
    restricted, all_loss = restricted_loss(model, keys), ablation.logit_loss(logits, labels)
    excluded = excluded_loss(model, keys, train_idx)
    return Claims([
        Claim("removing the key directions leaves test accuracy below 5%", f"{removed_acc:.2%} (chance {1 / p:.2%})",
              removed_acc < 0.05),
        Claim("keeping only them keeps the test loss within 2× (or lowers it)", f"{_ratio(kept, loss):.2f}×",
              kept <= 2 * loss),
        Claim("every neuron projected onto its own frequency keeps ≥ 99% test accuracy", f"{projected_acc:.2%}",
              projected_acc >= 0.99),
        Claim("removing the most important key frequency alone raises the test loss > 1000×",
              f"{_ratio(one.max().item(), loss):.2g}×", one.max().item() > 1000 * loss),
        Claim("… but less than removing all of them", f"{one.max().item():.3g} < {all_removed:.3g}",
              one.max().item() < all_removed),
        Claim("restricted loss within 2× the model's loss on all inputs", f"{_ratio(restricted, all_loss):.2f}×",
              restricted <= 2 * all_loss),
        Claim("excluded loss on the training pairs above a uniform guess (log p)",
              f"{excluded:.2f} vs {math.log(p):.2f}", excluded > math.log(p)),
    ])


# --- chapter 5: progress measures ----------------------------------------------------------------------------
def order_of_phases(circuit: float, rest: float, excluded_start: float, excluded_then: float, rise: float,
                     peak: float) -> Claim:
    """When the circuit formed, judged by which logits dominate on test pairs when memorisation ends, and the
    excluded loss's evidence for it. The paper's order (its 30% of the data, a long plateau): the rest of the logits
    dominate, then the excluded loss rises ≥ 2× while the circuit forms. With more data the circuit can form while
    the model memorises: its logits already dominate, and the excluded loss is already ≥ half its peak."""
    seen = f"circuit {circuit:.2f} vs rest {rest:.2f} after memorisation; excluded loss {excluded_start:.2f} → " \
           f"{excluded_then:.2f} by cleanup (peak {peak:.2f})"
    if rest > circuit:
        return Claim("the circuit forms after memorisation: the rest of the logits dominate when memorisation "
                     "ends, and the excluded loss rises ≥ 2× during circuit formation", seen, rise >= 2)
    return Claim("the circuit formed while the model memorised: its logits dominate when memorisation ends, and "
                 "the excluded loss is already ≥ half its peak", seen, excluded_start >= peak / 2)


def progress(measures: pd.DataFrame, phases: Phases, p: int) -> Claims:
    """Chapter 5: the progress measures (utils.progress.progress_measures) move in the phases the test loss marks
    (utils.progress.phase_boundaries). "Low" means below 1% of a uniform guess's loss, log p."""
    at = measures.set_index("step")
    m_end, c_start, c_end = phases.memorisation_end, phases.cleanup_start, phases.cleanup_end
    near_zero = 0.01 * math.log(p)
    restricted_step = int(measures.step[measures.restricted_loss < near_zero].iloc[0])
    test_step = int(measures.step[measures.test_loss < near_zero].iloc[0])
    lead = _ratio(at.test_loss[restricted_step], at.restricted_loss[restricted_step])
    excluded_start, excluded_then = at.excluded_loss[m_end], at.excluded_loss[c_start]
    rise, peak = _ratio(excluded_then, excluded_start), float(measures.excluded_loss.max())
    circuit, rest = at.key_logit_rms[m_end], at.other_logit_rms[m_end]
    gini = {w: at[f"gini_{w}"][c_end] - at[f"gini_{w}"][c_start] for w in ("W_E", "W_L")}
    norm = _ratio(at.sum_squared_weights[c_end], at.sum_squared_weights[c_start])
    return Claims([
        Claim("restricted loss gets low well before test loss (10× lower when it first does)",
              f"step {restricted_step} vs {test_step}, {lead:.0f}× lower", restricted_step < test_step and lead >= 10),
        order_of_phases(circuit, rest, excluded_start, excluded_then, rise, peak),
        Claim("Gini of W_E and of W_L rise by ≥ 0.1 during cleanup",
              f"W_E {gini['W_E']:+.2f}, W_L {gini['W_L']:+.2f}", min(gini.values()) >= 0.1),
        Claim("the weight norm falls by ≥ 20% during cleanup", f"Σθ² × {norm:.2f}", norm <= 0.8),
        Claim("cleanup shrinks the rest of the logits", f"{at.other_logit_rms[c_start]:.2f} → "
              f"{at.other_logit_rms[c_end]:.2f}", at.other_logit_rms[c_end] < at.other_logit_rms[c_start]),
    ])


# --- chapter 9: why grokking is slow ----------------------------------------------------------------------------
__all__ += ["why_slow"]


def why_slow(no_decay: dict, grokfast: dict, children: list) -> Claims:
    """Chapter 9: softmax collapse without weight decay, what StableMax and ⊥Grad change, Grokfast against its
    learning-rate control, and ungrokking. no_decay and grokfast are utils.why_slow's recipes' runs by name
    (no_decay_configs, grokfast_configs), children the grokked baseline's continuations (ungrokking_configs)."""
    from utils.why_slow import collapse_curve, grok_step  # (why_slow reads runs' checkpoints)

    plain, stable, orthogonal = (no_decay[k] for k in ("cross-entropy", "StableMax", "⊥Grad"))
    base, _, control = grokfast.values()
    control_name = list(grokfast)[2]
    cap, base_step = plain.config.steps, grok_step(base)
    after = min((s for s in base.checkpoint_steps if s >= (base_step or 0)), default=base.checkpoint_steps[-1])
    at_grok = collapse_curve(base, [after]).iloc[0]
    end, end_stable = collapse_curve(plain, [plain.final_step]).iloc[0], collapse_curve(stable, [stable.final_step])
    end_orthogonal = collapse_curve(orthogonal, [orthogonal.final_step]).iloc[0]
    orthogonal_step = grok_step(orthogonal)
    near = min((s for s in orthogonal.checkpoint_steps if s >= (orthogonal_step or 0)),
               default=orthogonal.final_step)
    orthogonal_at_grok = collapse_curve(orthogonal, [near]).collapsed.iloc[0]
    steps = {name: grok_step(run) for name, run in {**no_decay, **grokfast}.items()}
    speedup = _ratio(base_step or math.inf, steps["Grokfast"] or math.inf)
    finals = [(c.config.n_train(), c.metrics.test_acc.iloc[-1], c.metrics.train_acc.iloc[-1]) for c in children]
    finals.sort(reverse=True)  # largest training set first
    falls = all(later <= earlier + 0.01 for (_, earlier, _), (_, later, _) in zip(finals, finals[1:]))
    return Claims([
        Claim("without weight decay, ≥ 99% of the training pairs end collapsed in float32 (cross-entropy)",
              f"{end.collapsed:.1%} at step {plain.final_step}", end.collapsed >= 0.99),
        Claim("with weight decay, ≤ 5% are collapsed when test accuracy reaches 99%",
              f"{at_grok.collapsed:.1%} at step {after} (99% test accuracy at step {base_step})",
              base_step is not None and at_grok.collapsed <= 0.05),
        Claim("in the course's trainer (float64 loss) ≤ 1% of the no-decay run's pairs have a zero gradient",
              f"{end.silent:.1%}; median answer margin {end['median margin']:.1f}", end.silent <= 0.01),
        Claim("without weight decay, cross-entropy stays below 99% test accuracy in a cap ≥ 5× the baseline's step",
              f"{steps['cross-entropy']} within {cap} steps (baseline: {base_step})",
              steps["cross-entropy"] is None and base_step is not None and cap >= 5 * base_step),
        Claim("⊥Grad without weight decay reaches 99% test accuracy within the cap",
              f"step {steps['⊥Grad']} of {orthogonal.config.steps}", steps["⊥Grad"] is not None),
        Claim("… later than the baseline with weight decay", f"step {steps['⊥Grad']} vs {base_step}",
              None not in (steps["⊥Grad"], base_step) and steps["⊥Grad"] > base_step),
        Claim("… its pairs collapse in float32 too (≥ 99% at the end), with live gradients in ours (≤ 1% silent)",
              f"{end_orthogonal.collapsed:.1%} collapsed, {end_orthogonal.silent:.1%} silent",
              end_orthogonal.collapsed >= 0.99 and end_orthogonal.silent <= 0.01),
        Claim("… and ≥ 50% had collapsed in float32 by the first checkpoint at which it reached 99% test accuracy",
              f"{orthogonal_at_grok:.1%} at step {near}", orthogonal_at_grok >= 0.5),
        Claim("StableMax without weight decay does not reach 99% test accuracy in the cap (not reproduced)",
              f"{steps['StableMax']}; final test accuracy {stable.metrics.test_acc.iloc[-1]:.1%}",
              steps["StableMax"] is None),
        Claim("… while its logits grow: its median answer margin ends ≥ 10× cross-entropy's",
              f"{end_stable['median margin'].iloc[0]:.3g} vs {end['median margin']:.3g}",
              end_stable["median margin"].iloc[0] >= 10 * end["median margin"]),
        Claim("Grokfast speeds the baseline up by at most 1.5× in steps to 99% test accuracy",
              f"{speedup:.2f}× (steps {base_step} → {steps['Grokfast']})", speedup <= 1.5),
        Claim(f"the control ({control.config.lr / base.config.lr:g}× the lr) reaches 99% no later than Grokfast",
              f"step {steps[control_name]} vs {steps['Grokfast']}",
              steps[control_name] is not None and (steps["Grokfast"] is None
                                                   or steps[control_name] <= steps["Grokfast"])),
        Claim("continued on the largest subset, the grokked model keeps ≥ 99% test accuracy",
              f"{finals[0][1]:.1%} on {finals[0][0]} pairs", finals[0][1] >= 0.99),
        Claim("continued on the smallest subset, it ungroks: test accuracy ends below 50%",
              f"{finals[-1][1]:.1%} on {finals[-1][0]} pairs", finals[-1][1] < 0.5),
        Claim("… while it still fits every subset (training accuracy ≥ 99%)",
              f"lowest {min(f[2] for f in finals):.1%}", min(f[2] for f in finals) >= 0.99),
        Claim("the less data, the lower the final test accuracy (never 1 point higher on a smaller subset)",
              ", ".join(f"{n}: {acc:.1%}" for n, acc, _ in finals), falls),
    ])
