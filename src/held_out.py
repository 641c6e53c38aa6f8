"""The held-out ledger: one record behind every score esd prints or writes.

A score is honest only if no model that produced it trained on the tiles it is scored on, and
nothing that chose the model (its epoch, its early stop, its hyper-parameters, a decision
threshold) looked at them. A `Ledger` records, for every member model of a result (one
checkpoint, an ensemble's checkpoints, a cross-validation's folds), the tiles it trained on,
the tiles that chose it, and the tiles it scored. `Ledger.check` refuses a score of a tile a
member trained on, naming tile and member; a tile that chose a member makes the score
OPTIMISTIC, and the label travels with it (terminal, JSON, CSV, HTML, figure titles) through
`Ledger.record` and `optimistic_label`. No command decides this on its own.

Tiles are compared by the SHA-256 of their processed pixels, not by name: the contest's
unlabelled Val/Tile1 is not Train/Tile1, while a training tile copied under another name is
still a training tile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OPTIMISTIC = "OPTIMISTIC"
"""The word that travels with every score of tiles that chose the model."""
NOT_HELD_OUT = "NOT HELD OUT"
"""The label of scores of a model's own training tiles (`--split train`: a fit diagnostic)."""


class HeldOutError(ValueError):
    """A score that would include a tile one of its models trained on."""


def _tile_number(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else -1, name)


def _names(tiles: Iterable[str]) -> str:
    return ", ".join(sorted(tiles, key=_tile_number))


@dataclass(frozen=True)
class Member:
    """One trained model: the tiles it trained on and the tiles that chose it (each tile name →
    the hash of its processed pixels), what they chose (`why`), and the raw folder its tiles
    were prepared from (`raw_dir`, where their names identify them)."""

    name: str
    trained: Mapping[str, str]
    chose: Mapping[str, str] = field(default_factory=dict)
    why: str = ""
    raw_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "trained": dict(self.trained), "chose": dict(self.chose),
            "why": self.why, "raw_dir": self.raw_dir,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Member:
        return cls(values["name"], dict(values["trained"]), dict(values.get("chose", {})),
                   values.get("why", ""), values.get("raw_dir", ""))  # fmt: skip

    def choosing(self, tiles: Mapping[str, str], why: str) -> Member:
        """This member with `tiles` added to the ones that chose it (a sweep's or a
        decision's choice made on them), `why` appended."""
        reason = why if not self.why else self.why if why in self.why else f"{self.why}; {why}"
        return Member(self.name, self.trained, {**self.chose, **tiles}, reason, self.raw_dir)

    def in_own_folder(self, tiles: Mapping[str, str], raw_dir: str) -> dict[str, str]:
        """`tiles` of the raw folder `raw_dir` named as this member names tiles: as they are
        from its own folder, else prefixed with their folder (then only their pixels match)."""
        if raw_dir == self.raw_dir:
            return dict(tiles)
        return {f"{raw_dir}/{name}": digest for name, digest in tiles.items()}

    def taught_by(self, teacher: Member) -> Member:
        """This member with its teacher's training tiles and choosing tiles as its own: a
        student of pseudo-labels learns what its teacher learnt from them."""
        trained = {**self.trained, **self.in_own_folder(teacher.trained, teacher.raw_dir)}
        chose = self.in_own_folder(teacher.chose, teacher.raw_dir)
        member = Member(self.name, trained, self.chose, self.why, self.raw_dir)
        if not chose:
            return member
        return member.choosing(chose, f"its pseudo-labels' teacher ({teacher.why})")


@dataclass(frozen=True)
class Scoring:
    """A member and the tiles (name → pixel hash) whose scores it contributes to, prepared
    from the raw folder `raw_dir`."""

    member: Member
    scored: Mapping[str, str]
    raw_dir: str = ""

    def _matches(self, tiles: Mapping[str, str]) -> dict[str, str]:
        """Scored tile → the tile of `tiles` it is: the same pixels, or, from the same raw
        folder, the same name (the same place, even when the code that prepared its pixels
        changed since)."""
        by_hash = {digest: name for name, digest in tiles.items()}
        same_folder = bool(self.raw_dir) and self.raw_dir == self.member.raw_dir
        found = {t: by_hash[d] for t, d in self.scored.items() if d in by_hash}
        if same_folder:
            found |= {t: t for t in self.scored if t in tiles}
        return found

    def trained_on(self) -> dict[str, str]:
        """Scored tile → the training tile it is (see `_matches`)."""
        return self._matches(self.member.trained)

    def chosen_on(self) -> dict[str, str]:
        """Scored tile → the tile that chose the member it is (see `_matches`)."""
        return self._matches(self.member.chose)


@dataclass(frozen=True)
class Ledger:
    """Every (member, scored tiles) behind one result."""

    parts: tuple[Scoring, ...]

    @classmethod
    def ensemble(
        cls, members: Iterable[Member], scored: Mapping[str, str], raw_dir: str = ""
    ) -> Ledger:
        """Each member scores every tile (an ensemble averages their probabilities), the
        tiles prepared from `raw_dir`."""
        return cls(tuple(Scoring(member, dict(scored), raw_dir) for member in members))

    def check(self) -> None:
        """HeldOutError naming the tiles and the member, when a member trained on a scored
        tile (by its pixels, whatever its name)."""
        for part in self.parts:
            leaked = part.trained_on()
            if leaked:
                names = ", ".join(
                    tile if leaked[tile] == tile else f"{tile} (= training tile {leaked[tile]})"
                    for tile in sorted(leaked, key=_tile_number)
                )
                raise HeldOutError(
                    f"refusing to score {names}: {part.member.name} trained on "
                    f"{'it' if len(leaked) == 1 else 'them'}, so the score would not be honest"
                )

    def trained_tiles(self) -> list[str]:
        """The scored tiles that a member scoring them trained on."""
        return sorted({t for part in self.parts for t in part.trained_on()}, key=_tile_number)

    @property
    def scored(self) -> list[str]:
        """Every scored tile, once, in tile order."""
        return sorted({t for part in self.parts for t in part.scored}, key=_tile_number)

    def optimistic_tiles(self) -> list[str]:
        """The scored tiles that chose a member that scores them."""
        return sorted({t for part in self.parts for t in part.chosen_on()}, key=_tile_number)

    @property
    def optimistic(self) -> bool:
        return bool(self.optimistic_tiles())

    def reason(self) -> str:
        """Why the scores are optimistic ('' when they are not): which tiles chose which
        members, and what they chose."""
        lines = []
        for part in self.parts:
            chosen = part.chosen_on()
            if chosen:
                what = f" ({part.member.why})" if part.member.why else ""
                lines.append(f"{_names(chosen)} chose {part.member.name}{what}")
        if not lines:
            return ""
        shown = "; ".join(lines[:3]) + (f"; and {len(lines) - 3} more" if len(lines) > 3 else "")
        return (
            f"{OPTIMISTIC}: scored tiles took part in choosing the model ({shown}); score tiles "
            f"that chose nothing (a test split, held-out folds) for honest numbers"
        )

    def record(self) -> dict[str, Any]:
        """What results carry (`held_out` in metrics.json, summary.json, importance.json):
        the members, what each scored, and the verdict."""
        return {
            "parts": [
                {
                    "member": part.member.to_dict(),
                    "scored": dict(part.scored),
                    "raw_dir": part.raw_dir,
                }
                for part in self.parts
            ],
            "scored": self.scored,
            "optimistic": self.optimistic,
            "optimistic_tiles": self.optimistic_tiles(),
            "reason": self.reason(),
            "label": self.label,
        }

    @property
    def label(self) -> str:
        """NOT HELD OUT (training tiles scored, `--split train`), OPTIMISTIC, or ''."""
        if self.trained_tiles():
            return NOT_HELD_OUT
        return OPTIMISTIC if self.optimistic else ""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Ledger:
        return cls(tuple(
            Scoring(Member.from_dict(part["member"]), dict(part["scored"]), part.get("raw_dir", ""))
            for part in record["parts"]
        ))  # fmt: skip


def optimistic_label(optimistic: bool) -> str:
    """' OPTIMISTIC' after a score whose tiles chose the model, else ''."""
    return f" {OPTIMISTIC}" if optimistic else ""


def record_is_optimistic(result: Mapping[str, Any]) -> bool:
    """Whether a result file's `held_out` record says OPTIMISTIC (False without one)."""
    return bool((result.get("held_out") or {}).get("optimistic"))
