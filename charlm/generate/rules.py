"""What each stream of a batch may write next: the copy guard's bans, the verse shape's and a song form's.

The decoder (charlm/generate/decode.py) asks `ban(scores)` before every choice and tells `step(chosen)`
after it; beam search also calls `reorder(rows)` when beams inherit their parents' histories.
"""

from __future__ import annotations

import numpy as np
import torch

from charlm.generate.verse import Shape, ShapeState


class Rules:
    """What each stream of a batch may not write next: the copy guard's bans and the verse shape's.

    `ban(scores)` sets the banned characters' scores to -inf; a stream whose every character is
    banned keeps its scores unchanged for that step (counted in `gave_way`). `step(next)` takes
    the chosen characters and returns which streams keep theirs (the others have ended).
    """

    def __init__(self, guard, shape: Shape, prefixes: list[str], encoded: list[list[int]], vocab, length: int,
                 form=None):
        B = len(prefixes)
        self.guard, self.shape, self.form = guard, shape, form
        # a form says where lines end; the verse shape's line rules would only fight it
        self.lines = ShapeState(shape, prefixes, vocab, length) if shape.active and form is None else None
        self.gave_way = np.zeros(B, dtype=np.int64)
        self.alive = np.ones(B, dtype=bool)
        self.end = np.full(B, length)
        if guard is not None:
            n = guard.n
            self.window = np.zeros((B, n), dtype=np.int64)  # (B, n): each stream's last n characters
            self.count = np.array([len(e) for e in encoded])  # characters in each stream, prefix included
            for i, e in enumerate(encoded):
                tail = e[-n:]
                self.window[i, n - len(tail):] = tail

    @property
    def active(self) -> bool:
        return self.guard is not None or self.lines is not None or self.form is not None

    def banned(self) -> tuple[np.ndarray, np.ndarray]:
        rows, chars = [], []
        if self.guard is not None:
            ready = np.flatnonzero(self.count >= self.guard.n)  # a copy of n+1 needs n characters before
            if len(ready):
                r, c = self.guard.banned(self.window[ready])
                rows.append(ready[r])
                chars.append(c)
        if self.lines is not None:
            r, c = self.lines.bans()
            rows.append(r)
            chars.append(c)
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(rows), np.concatenate(chars)

    def ban(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, V) scores with the banned characters at -inf.

        A form's mask is never relaxed (its exactness is the point); where the copy guard's bans and
        the shape's leave nothing on top of it, that stream's step goes without them (`gave_way`).
        """
        if self.form is not None:
            scores = scores.masked_fill(~self.form.allowed().to(scores.device), float("-inf"))
        rows, chars = self.banned()
        if not len(rows):
            return scores
        masked = scores.clone()
        masked[torch.from_numpy(rows).to(scores.device), torch.from_numpy(chars).to(scores.device)] = float("-inf")
        dead = torch.isneginf(masked.amax(dim=-1))  # (B,): nothing left to choose
        if bool(dead.any()):  # that stream's step goes without the guard and the shape
            masked[dead] = scores[dead]
            self.gave_way[dead.cpu().numpy()] += 1
        return masked

    def step(self, nxt: torch.Tensor) -> np.ndarray:
        chosen = nxt.cpu().numpy()
        if self.guard is not None:
            self.window[:, :-1] = self.window[:, 1:]
            self.window[:, -1] = chosen
            self.count += 1
        if self.form is not None:
            keep = self.form.step(chosen)
            self.alive, self.end = self.form.alive, self.form.end
            return keep
        if self.lines is not None:
            keep = self.lines.step(chosen)
            self.alive, self.end = self.lines.alive, self.lines.end
            return keep
        return self.alive

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search: each new beam inherits its parent's history."""
        self.gave_way = self.gave_way[rows]
        if self.guard is not None:
            self.window = self.window[rows]
        if self.lines is not None:
            self.lines.reorder(rows)
            self.alive, self.end = self.lines.alive, self.lines.end
        if self.form is not None:
            self.form.reorder(rows)
            self.alive, self.end = self.form.alive, self.form.end
