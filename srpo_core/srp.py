"""Semantic Relative Preference: control-word prompts and reward combinations (SRPO paper, section 3.2).

Image features f (B, D) and text features t (B, D) are L2-normalized; `scale` is the reward's
logit scale (1 for HPS-like cosine rewards).
"""

import torch


def augment(prompt: str, word: str) -> str:
    """Prefix a control word: augment("a red circle", "Detailed") == "Detailed. a red circle"."""
    return f"{word}. {prompt}" if word else prompt


def plain(f: torch.Tensor, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Plain reward r(x, p) = scale * <f, t(p)>, shape (B,)."""
    return scale * (f * t).sum(-1)


def relative(f: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Relative reward r_SRP = r(x, p+) - r(x, p-) = scale * <f, t(p+) - t(p-)>, shape (B,)."""
    return scale * (f * (t_pos - t_neg)).sum(-1)


def cfg_like(f: torch.Tensor, t_pos: torch.Tensor, t_neg: torch.Tensor, k, scale: float = 1.0) -> torch.Tensor:
    """Reference form scale * <f, (1 + k) t(p+) - t(p-)>, shape (B,); k is a float or (B,) tensor.

    k = 0 gives `relative`; the inversion branch calls it with p+ and p- swapped.
    """
    k = torch.as_tensor(k, dtype=f.dtype, device=f.device).reshape(-1, 1) if torch.is_tensor(k) else k
    return scale * (f * ((1 + k) * t_pos - t_neg)).sum(-1)


def k_at(bounds: tuple[float, float], index: torch.Tensor, grid_len: int) -> torch.Tensor:
    """The reference's k table linspace(bounds[0], bounds[1], grid_len) read at `index`, which counts from
    the LOWEST training sigma (see schedule.Draw). k_d = (0.1, 0.25), k_i = (0.3, 0.01) for HPSv2.1."""
    return torch.linspace(bounds[0], bounds[1], grid_len)[index.cpu()]


def lambda_weight(sigma: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """This project's option, not the reference's: a decaying discount lambda(t) = sigma / sigma_max in (0, 1].

    The paper's text mentions a decaying discount; the reference code has only the k schedules. This form
    shrinks the reward's weight toward late (low-noise) timesteps, where reward hacking starts.
    """
    return sigma / sigma_max


def parse_schedule(entries: list[str]) -> list[tuple[int, list[str], list[str]]]:
    """Word-schedule entries "STEP:pos|words/neg|words" -> [(step, pos, neg)] sorted by step; ValueError on a bad one.

    Words are separated by "|" (commas already separate a list's entries on the command line)."""
    out = []
    for entry in entries:
        head, sep, body = entry.partition(":")
        pos, slash, neg = body.partition("/")
        words = [[w.strip() for w in side.split("|") if w.strip()] for side in (pos, neg)]
        if not (sep and slash and head.strip().isdigit() and int(head) >= 1 and all(words)):
            raise ValueError(f"word_schedule entry {entry!r} must look like 'STEP:pos words/neg words' with STEP >= 1, "
                             "for example '11:Bright|Vivid/Dark'.")
        out.append((int(head), *words))
    return sorted(out, key=lambda e: e[0])


def words_at(pos_words: list[str], neg_words: list[str], schedule: list[tuple[int, list[str], list[str]]],
             step: int) -> tuple[list[str], list[str]]:
    """The word lists in effect at optimizer `step`: the last schedule entry starting at or before it, else the
    run's own lists."""
    current = (pos_words, neg_words)
    for start, pos, neg in schedule:
        if start <= step:
            current = (pos, neg)
    return current


def pick_words(words: list[str], step: int) -> str:
    """Round-robin choice of one control word per optimizer step counted from 1, as the reference indexes
    its lists (step 1 takes words[1]); '' if none."""
    return words[step % len(words)] if words else ""
