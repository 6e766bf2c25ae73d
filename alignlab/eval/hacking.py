"""The reward-hacking alarm: the held-out proxy reward rises while the held-out gold metric falls.

A policy that learns the reward model's blind spots instead of the prompt shows it first on held-out prompts:
the proxy (CLIP, say) keeps climbing and the gold metric (the world's oracle) drops. The alarm compares the
first and last of the latest `window` evaluations, so one noisy evaluation does not raise it alone.
"""

from __future__ import annotations


def reward_hacking(proxy: list[float], gold: list[float], window: int, tolerance: float) -> str | None:
    """A one-sentence warning when, over the last `window` evaluations, the proxy rose and the gold metric fell
    by more than `tolerance`; None otherwise (also with fewer evaluations than the window, or window < 2)."""
    if window < 2 or len(proxy) < window or len(gold) < window:
        return None
    proxy_rise, gold_fall = proxy[-1] - proxy[-window], gold[-window] - gold[-1]
    if proxy_rise <= 0 or gold_fall <= tolerance:
        return None
    return (f"reward hacking? over the last {window} evaluations the held-out reward rose {proxy[-window]:.4f} -> "
            f"{proxy[-1]:.4f} while the oracle score fell {gold[-window]:.4f} -> {gold[-1]:.4f}")
