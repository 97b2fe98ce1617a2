"""FLOPs-level samplers (docs/method.md#samplers): complexity-aware, performance-aware and both
(ElasticViT).

Built with ``registry.make_sampler("complexity_aware" | "performance_aware" | "elasticvit",
space, seed, **cfg)``; see ``samplers`` for the common API (``StepSample``, ``Sampler``).
Each step samples ``num_subnets - 1`` archs whose FLOPs lie in the bin [F, F + 2 * bound] of
the step's level F (from a FLOPs-level table, ``level_tables``, or by rejection sampling) plus
the level's min subnet in the last slot. The samplers follow the intent described in the spec
and fix the official code's bugs, each fix noted where it is made:

  * docs/method.md#bugs-fixed (conv kernels filtered by the min expansion ratio; MLP bound of the
    min arch not applied): fixed in ``SearchSpace.sample`` / ``level_tables.sample_encoded``, which
    every in-bin draw uses.
  * docs/method.md#bugs-fixed (the preference anchor looks up a non-existent 150/50 MFLOPs bank and
    silently falls back to bank 0): the lowest level's bank is used on purpose
    (``preference_anchor``).
  * docs/method.md#bugs-fixed (tables store [F, F + 30] but training keeps [F, F + 20]): tables hold
    the training bin itself.
Other choices: a bank holds each arch once (a re-scored arch gets its new score instead of a
duplicate entry); the out-of-bin cleanup the official loop does at batch 0 is done in
``end_epoch``; the training loop re-scores the archs ``archs_to_rescore`` names (the bank
refresh, ``train.callbacks.SamplerCallback``).
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from elasticvit_tf.arch import ArchConfig
from elasticvit_tf.blocks import encode
from elasticvit_tf.flops import count_flops, macs_encoded
from elasticvit_tf.sampling import level_tables as ft
from elasticvit_tf.sampling.samplers import Sampler, StepSample
from elasticvit_tf.space import SearchSpace


# ------------------------------------------------------------------- complexity-aware
class ComplexityAwareSampler(Sampler):
    """FLOPs levels with an adjacent-step lazy random walk
    (docs/method.md#complexity-aware-sampling).

    Each step moves the level index by at most one (``lazy_step``: -1/0/+1 uniformly inside,
    0 with probability 2/3 at either end), samples ``num_subnets - 1`` archs with FLOPs in the
    level's bin [F, F + 2 * bound] and appends the level's min subnet
    (``space.select_min_arch(F)``) as the last, distilled slot. ``end_epoch`` takes one more
    lazy step, as the official loop does.

    Args:
        space: the search space.
        seed: RNG seed.
        num_subnets: subnets per step (default 4 = 3 in the bin + the min subnet).
        levels: FLOPs levels F in MFLOPs (default ``space.flops_levels``).
        bound: half-width b of the bins [F, F + 2b] (default ``space.level_bound``).
        tables: ``"build"`` (default: build the FLOPs table of every level, or load it from
            ``cache_dir`` when cached there; tables are deterministic in (space, level, size,
            seed), so the sampled sequence does not depend on the cache), ``"none"`` (always
            rejection sampling in the bin), ``"auto"`` (tables only where already cached in
            ``cache_dir``; the sequence then depends on the cache: avoid with several workers)
            or a mapping level -> ``level_tables.FlopsTable``.
        table_size: archs per table (``level_tables.DEFAULT_TABLE_SIZE``).
        table_seed: seed of the table builder (2023 as the official tables).
        cache_dir: table cache folder, read and written; None (default): tables live in memory
            only and nothing touches the disk (``level_tables.default_cache_dir()`` names the
            conventional folder for callers that want a shared cache).
        max_draws: bound on rejection-sampling draws per arch before a ``ValueError``.
    """

    name = "complexity_aware"
    min_subnets = 2
    _walk = True  # False: a uniformly random level every step

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        num_subnets: int = 4,
        levels: Optional[Sequence[float]] = None,
        bound: Optional[float] = None,
        tables: Union[str, Mapping[float, ft.FlopsTable]] = "build",
        table_size: int = ft.DEFAULT_TABLE_SIZE,
        table_seed: int = ft.DEFAULT_TABLE_SEED,
        cache_dir: Optional[str] = None,
        max_draws: int = 5_000_000,
    ):
        super().__init__(space, seed, num_subnets)
        levels = tuple(float(v) for v in (space.flops_levels if levels is None else levels))
        if not levels or list(levels) != sorted(set(levels)):
            raise ValueError(
                f"sampler '{self.name}': levels={list(levels)}; expected a non-empty strictly "
                f"increasing list of MFLOPs (space '{space.name}' has "
                f"{list(space.flops_levels)})"
            )
        self.levels = levels
        self.bound = float(space.level_bound if bound is None else bound)
        if not self.bound > 0:
            raise ValueError(f"sampler '{self.name}': bound={bound!r}; expected > 0")
        self.table_size = int(table_size)
        self.table_seed = int(table_seed)
        self.cache_dir = cache_dir
        self.max_draws = int(max_draws)
        self.bins = tuple((f, f + 2 * self.bound) for f in levels)
        self.min_archs = tuple(space.select_min_arch(f) for f in levels)
        for f, (lo, hi), m in zip(levels, self.bins, self.min_archs):
            mf = count_flops(space, m)
            if mf > hi:
                raise ValueError(
                    f"sampler '{self.name}': level {f:g} is infeasible: its min arch has "
                    f"{mf:.3f} MFLOPs > the bin's upper end {hi:g} (archs sampled for a level "
                    "dominate its min arch); raise the level or change the space's min_archs"
                )
        self._proposals: dict[int, ft.BinSampler] = {}
        self._tables: dict[int, ft.FlopsTable] = {}
        self.tables_mode = tables if isinstance(tables, str) else "given"
        if isinstance(tables, str):
            if tables not in ("auto", "build", "none"):
                raise ValueError(
                    f"sampler '{self.name}': tables={tables!r}; expected 'auto', 'build', "
                    "'none' or a mapping level -> FlopsTable"
                )
            if tables != "none":
                for i in range(len(levels)):
                    t = self._get_table(i, build=(tables == "build"))
                    if t is not None:
                        self._tables[i] = t
        else:
            for f, t in tables.items():
                i = self._level_index(f)
                if t.fingerprint != space.fingerprint() or (t.lo, t.hi) != self.bins[i]:
                    raise ValueError(
                        f"sampler '{self.name}': the table given for level {f:g} covers "
                        f"[{t.lo:g}, {t.hi:g}] of space {t.space_name!r}; expected "
                        f"{list(self.bins[i])} of space {space.name!r}"
                    )
                self._tables[i] = t
        self.level_index = 0
        self._last_level_index: Optional[int] = None
        self._last_min_key: Optional[str] = None

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            levels=list(self.levels),
            bound=self.bound,
            tables=self.tables_mode,
            table_size=self.table_size,
            table_seed=self.table_seed,
            cache_dir=None if self.cache_dir is None else str(self.cache_dir),
            max_draws=self.max_draws,
        )
        return config

    # ------------------------------------------------------------------------------ levels
    def _level_index(self, level: float) -> int:
        for i, f in enumerate(self.levels):
            if abs(f - float(level)) < 1e-9:
                return i
        raise ValueError(f"level {level!r} is not one of this sampler's levels {self.levels}")

    def lazy_step(self, i: int) -> int:
        """One step of the lazy random walk on level indices
        (docs/method.md#complexity-aware-sampling)."""
        n = len(self.levels)
        if n == 1:
            return 0
        if i == 0:
            moves = (0, 0, 1)
        elif i == n - 1:
            moves = (-1, 0, 0)
        else:
            moves = (-1, 0, 1)
        return i + moves[int(self._rng.integers(3))]

    def _next_level_index(self) -> int:
        if self._walk:
            return self.lazy_step(self.level_index)
        return int(self._rng.integers(len(self.levels)))

    @property
    def level(self) -> float:
        """The current FLOPs level (that of the last step, or the initial one)."""
        return self.levels[self.level_index]

    def in_bin(self, arch: ArchConfig, level_index: int) -> bool:
        lo, hi = ft.bin_macs(*self.bins[level_index])  # exact integer MACs, as the tables
        return lo <= int(macs_encoded(self.space, encode(self.space, [arch]))[0]) <= hi

    # ---------------------------------------------------------------------- bin sampling
    def _get_table(self, i: int, build: bool) -> Optional[ft.FlopsTable]:
        return self._table(i, self.table_size, self.table_seed, build)

    def _table(self, i: int, size: int, seed: int, build: bool = True) -> Optional[ft.FlopsTable]:
        """A level's table from ``cache_dir`` (built and cached when missing), or built in
        memory without a cache (None for ``build=False``)."""
        if self.cache_dir is None:
            if not build:
                return None
            return ft.build_table(
                self.space, self.levels[i], size, seed, self.bound, self.min_archs[i]
            )
        return ft.get_table(
            self.space,
            self.levels[i],
            size,
            seed,
            self.bound,
            self.min_archs[i],
            cache_dir=self.cache_dir,
            build=build,
        )

    def sample_in_bin(self, level_index: int) -> ArchConfig:
        """A random arch of the level's bin: from its table if present, else by rejection."""
        table = self._tables.get(level_index)
        if table is not None:
            return table.sample(self.space, self._rng)
        if level_index not in self._proposals:
            self._proposals[level_index] = ft.BinSampler(self.space, self.min_archs[level_index])
        lo, hi = self.bins[level_index]
        return self._proposals[level_index].sample_in_bin(self._rng, lo, hi, self.max_draws)

    def _sample_level_arch(self, level_index: int) -> tuple[ArchConfig, bool]:
        return self.sample_in_bin(level_index), False

    # --------------------------------------------------------------------------- stepping
    @property
    def roles(self) -> tuple[str, ...]:
        return ("uniform",) * (self.num_subnets - 1) + ("min",)

    def _sample_step(self) -> StepSample:
        i = self.level_index = self._next_level_index()
        picks = [self._sample_level_arch(i) for _ in range(self.num_subnets - 1)]
        min_arch = self.min_archs[i]
        self._last_level_index, self._last_min_key = i, min_arch.key()
        return StepSample(
            archs=tuple(a for a, _ in picks) + (min_arch,),
            roles=self.roles,
            level=self.levels[i],
            from_bank=tuple(b for _, b in picks) + (False,),
        )

    def end_epoch(self) -> None:
        super().end_epoch()
        if self._walk:
            self.level_index = self.lazy_step(self.level_index)

    # ------------------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "bound": self.bound,
            "level_index": self.level_index,
            "last_level_index": self._last_level_index,
            "last_min_key": self._last_min_key,
            "tables": {
                str(i): [t.size, t.seed, len(t), _checksum(t)]
                for i, t in sorted(self._tables.items())
            },
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if [float(v) for v in state.get("levels", ())] != list(self.levels) or float(
            state.get("bound", -1)
        ) != float(self.bound):
            raise ValueError(
                f"sampler state has levels {state.get('levels')} and bound "
                f"{state.get('bound')}; this sampler has {list(self.levels)} and {self.bound}"
            )
        self.level_index = int(state["level_index"])
        last = state.get("last_level_index")
        self._last_level_index = None if last is None else int(last)
        self._last_min_key = state.get("last_min_key")
        # Exact resume needs the same table set as the saved run: tables are deterministic in
        # (space, level, size, seed), so missing ones are rebuilt and extra ones dropped.
        want = {int(i): v for i, v in state.get("tables", {}).items()}
        tables = {}
        for i, (size, seed, length, crc) in want.items():
            t = self._tables.get(i)
            if t is None or (t.size, t.seed, len(t), _checksum(t)) != (size, seed, length, crc):
                t = self._table(i, size, seed)
            if _checksum(t) != crc:  # e.g. a stale cache file: rebuild from scratch
                t = ft.build_table(
                    self.space, self.levels[i], size, seed, self.bound, self.min_archs[i]
                )
            if _checksum(t) != crc:
                raise ValueError(
                    f"sampler state used a FLOPs table of {length} archs for level "
                    f"{self.levels[i]:g} (checksum {crc}) that cannot be rebuilt here (got "
                    f"{len(t)} archs, checksum {_checksum(t)}); exact resume is impossible"
                )
            tables[i] = t
        self._tables = tables


def _checksum(table: ft.FlopsTable) -> int:
    return zlib.crc32(np.ascontiguousarray(table.archs, dtype=np.int32).tobytes())


# ------------------------------------------------------------------- performance-aware
OFFICIAL_EPOCHS = 610  # 600 cosine + 10 cool-down
OFFICIAL_P_BANK_EVERY_EPOCHS = 100
# Official bank sizes: 150 per level below the "big" level (the 5th, 500 MFLOPs), 50 from it
# on. The small presets train for far fewer steps, so their banks are smaller.
_BANK_DEFAULTS = {"elasticvit": (150, 50), "demo": (40, 20), "tiny": (12, 8)}


class PerformanceAwareSampler(ComplexityAwareSampler):
    """Per-level memory banks of (arch, score), bank sampling and candidate preference
    (docs/method.md#performance-aware-sampling).

    The level is drawn uniformly every step (``elasticvit`` walks instead). For each of the
    ``num_subnets - 1`` slots: with probability ``p_bank`` (once the level's bank holds more
    than half its capacity) an arch is drawn from the bank with P proportional to
    exp(score / bank_temperature); otherwise up to ``num_candidates`` archs are sampled in the
    bin and the one with the smallest ``preference_diff`` (wide-and-shallow transformer stages)
    is kept; a bank still less than half full gives the first candidate.

    Args:
        bank_size: capacity of the banks below ``big_level`` (default 150 for ``elasticvit``,
            scaled down for ``demo``/``tiny``).
        big_bank_size: capacity from ``big_level`` on (default 50, scaled likewise).
        big_level: the first "big" level (default the 5th level; None when fewer levels).
        p_bank: initial bank-sampling probability (0.2).
        p_bank_inc: added at the start of every epoch e with (e + 1) % p_bank_every_epochs == 0
            (0.15).
        p_bank_every_epochs: 100 officially (of 610 epochs).
        p_bank_every_steps: if set, ``p_bank_inc`` is added every that many steps instead
            (step s uses ``p_bank + p_bank_inc * (s // p_bank_every_steps)``);
            ``run_length_defaults(total_steps)`` scales the official schedule to a run.
        num_candidates: candidates compared by the preference rule (5).
        bank_temperature: softmax temperature of bank sampling (1.0).
        rescore: ``"official"`` (every bank at batch 0, the step level's bank at 3 evenly spaced
            batches per epoch), ``"quarters"`` (only the latter) or ``"none"``; see
            ``archs_to_rescore``.
        **kwargs: ``ComplexityAwareSampler`` arguments.
    """

    name = "performance_aware"
    _walk = False

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        num_subnets: int = 4,
        bank_size: Optional[int] = None,
        big_bank_size: Optional[int] = None,
        big_level: Union[float, str, None] = "default",
        p_bank: float = 0.2,
        p_bank_inc: float = 0.15,
        p_bank_every_epochs: int = OFFICIAL_P_BANK_EVERY_EPOCHS,
        p_bank_every_steps: Optional[int] = None,
        num_candidates: int = 5,
        bank_temperature: float = 1.0,
        rescore: str = "official",
        **kwargs,
    ):
        super().__init__(space, seed, num_subnets, **kwargs)
        small, big = _BANK_DEFAULTS.get(space.name, _BANK_DEFAULTS["elasticvit"])
        self.bank_size = int(small if bank_size is None else bank_size)
        self.big_bank_size = int(big if big_bank_size is None else big_bank_size)
        if big_level == "default":
            big_level = self.levels[4] if len(self.levels) > 4 else None
        self.big_level = None if big_level is None else float(big_level)
        self.p_bank_init = float(p_bank)
        self.p_bank_inc = float(p_bank_inc)
        self.p_bank_every_epochs = int(p_bank_every_epochs)
        self.p_bank_every_steps = None if p_bank_every_steps is None else int(p_bank_every_steps)
        self.num_candidates = int(num_candidates)
        self.bank_temperature = float(bank_temperature)
        self.rescore = rescore
        for name, v, lo in (
            ("bank_size", self.bank_size, 1),
            ("big_bank_size", self.big_bank_size, 1),
            ("p_bank_every_epochs", self.p_bank_every_epochs, 1),
            ("p_bank_every_steps", self.p_bank_every_steps or 1, 1),
            ("num_candidates", self.num_candidates, 1),
        ):
            if v < lo:
                raise ValueError(f"sampler '{self.name}': {name}={v}; expected >= {lo}")
        if not self.bank_temperature > 0:
            raise ValueError(f"sampler '{self.name}': bank_temperature must be > 0")
        if rescore not in ("official", "quarters", "none"):
            raise ValueError(
                f"sampler '{self.name}': rescore={rescore!r}; expected 'official', "
                "'quarters' or 'none'"
            )
        self.banks: list[list[list]] = [[] for _ in self.levels]  # entries [arch, score]
        self._by_key: dict[str, list] = {}  # arch key -> its bank entry (the same list)
        self.p_bank = self._p_bank_at(0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            bank_size=self.bank_size,
            big_bank_size=self.big_bank_size,
            big_level=self.big_level,
            p_bank=self.p_bank_init,
            p_bank_inc=self.p_bank_inc,
            p_bank_every_epochs=self.p_bank_every_epochs,
            p_bank_every_steps=self.p_bank_every_steps,
            num_candidates=self.num_candidates,
            bank_temperature=self.bank_temperature,
            rescore=self.rescore,
        )
        return config

    # ------------------------------------------------------------------------------ banks
    def capacity(self, level_index: int) -> int:
        f = self.levels[level_index]
        big = self.big_level is not None and f >= self.big_level
        return self.big_bank_size if big else self.bank_size

    @classmethod
    def run_length_defaults(cls, total_steps: int, cfg: dict[str, Any]) -> dict[str, Any]:
        """The official ``p_bank`` schedule (+0.15 every 100 of 610 epochs) scaled to a run of
        ``total_steps`` steps: ``p_bank_every_steps = round(total_steps * 100 / 610)``; none
        when ``cfg`` sets a period itself."""
        if "p_bank_every_epochs" in cfg or "p_bank_every_steps" in cfg:
            return {}
        every = round(total_steps * OFFICIAL_P_BANK_EVERY_EPOCHS / OFFICIAL_EPOCHS)
        return {"p_bank_every_steps": max(1, int(every))}

    def _p_bank_at(self, epoch: int) -> float:
        if self.p_bank_every_steps is not None:
            return self.p_bank_init + self.p_bank_inc * (self.step // self.p_bank_every_steps)
        return self.p_bank_init + self.p_bank_inc * ((epoch + 1) // self.p_bank_every_epochs)

    def bank_sizes(self) -> dict[float, int]:
        return {f: len(b) for f, b in zip(self.levels, self.banks)}

    def bank(self, level: float) -> list[tuple[ArchConfig, float]]:
        """A copy of a level's bank as (arch, score) pairs."""
        return [(a, s) for a, s in self.banks[self._level_index(level)]]

    def _reindex(self) -> None:
        self._by_key = {e[0].key(): e for bank in self.banks for e in bank}

    def update_scores(self, archs_with_scores: Sequence[tuple[ArchConfig, float]]) -> None:
        """Bank update (docs/method.md#performance-aware-sampling) with score = -CE of the subnet on
        the batch.

        An arch already in a bank gets its score replaced (re-scoring). Any other arch enters
        the bank of the last step's level if it lies in that level's bin and is not the step's
        min subnet: appended while the bank has room, else it replaces the worst entry when it
        scores higher. Non-finite scores are ignored.
        """
        for arch, score in archs_with_scores:
            score = float(score)
            if not np.isfinite(score):
                continue
            key = arch.key()
            entry = self._by_key.get(key)
            if entry is not None:
                entry[1] = score
                continue
            i = self._last_level_index
            if i is None or key == self._last_min_key or not self.in_bin(arch, i):
                continue
            bank = self.banks[i]
            entry = [arch, score]
            if len(bank) < self.capacity(i):
                bank.append(entry)
            else:
                worst = int(np.argmin([s for _, s in bank]))
                if score <= bank[worst][1]:
                    continue
                self._by_key.pop(bank[worst][0].key(), None)
                bank[worst] = entry
            self._by_key[key] = entry

    def archs_to_rescore(
        self, batch_index: int, steps_per_epoch: Optional[int] = None
    ) -> list[ArchConfig]:
        """Bank archs whose scores should be refreshed on this batch
        (docs/method.md#performance-aware-sampling).

        Call after ``sample_step`` of the batch; feed the scores back with ``update_scores``.
        ``"official"``: every bank at batch 0, the step level's bank at batches
        ``k * (steps_per_epoch // 4) - 1`` for k = 1, 2, 3. Optional: a training loop may skip
        re-scoring (the official cost is ~800 extra forwards per epoch start with full banks).
        """
        if self.rescore == "none":
            return []
        if batch_index == 0 and self.rescore == "official":
            return [a for bank in self.banks for a, _ in bank]
        if steps_per_epoch and self._last_level_index is not None:
            q = steps_per_epoch // 4
            if q > 0 and (batch_index + 1) % q == 0 and batch_index + 1 != 4 * q:
                return [a for a, _ in self.banks[self._last_level_index]]
        return []

    # -------------------------------------------------------------------- preference rule
    def preference_anchor(self, level_index: int) -> ArchConfig:
        """Best-scoring arch of the lowest level's bank, or the global min arch.

        NOTE (docs/method.md#bugs-fixed, fixed): the official lookup asks for a 150/50 MFLOPs bank
            that does
        not exist and silently falls back to bank index 0; we use the lowest level's bank on
        purpose, and the space's min arch while that bank is empty or at the lowest level.
        """
        bank = self.banks[0]
        if level_index > 0 and bank:
            return max(bank, key=lambda e: e[1])[0]
        return self.space.min_arch()

    def preference_diff(self, arch: ArchConfig, level_index: int) -> float:
        """FLOPs(arch with the anchor's transformer widths) - FLOPs(... anchor's depths).

        Small when shrinking the transformer widths removes much more compute than shrinking
        the depths, i.e. the rule prefers wide-and-shallow transformer stages.
        """
        anchor = self.preference_anchor(level_index)
        wide, deep = arch, arch
        for j, st in enumerate(self.space.stages):
            if st.is_transformer:
                wide = wide.replace_stage(j, width=anchor.stages[j].width)
                deep = deep.replace_stage(j, depth=anchor.stages[j].depth)
        return count_flops(self.space, wide) - count_flops(self.space, deep)

    def _sample_step(self) -> StepSample:
        if self.p_bank_every_steps is not None:
            self.p_bank = self._p_bank_at(self.epoch)
        return super()._sample_step()

    def _sample_level_arch(self, level_index: int) -> tuple[ArchConfig, bool]:
        bank = self.banks[level_index]
        half = self.capacity(level_index) // 2
        if self._rng.random() < self.p_bank and len(bank) > half:
            z = np.asarray([s for _, s in bank], dtype=np.float64) / self.bank_temperature
            p = np.exp(z - z.max())
            j = int(self._rng.choice(len(bank), p=p / p.sum()))
            return bank[j][0], True
        cands, diffs = [], []
        while len(cands) < self.num_candidates:
            a = self.sample_in_bin(level_index)
            cands.append(a)
            if len(bank) < half:  # bank not warm yet: a plain in-bin sample
                diffs.append(-1.0)
                break
            diffs.append(self.preference_diff(a, level_index))
        return cands[int(np.argmin(diffs))], False

    # ------------------------------------------------------------------------ epochs/state
    def end_epoch(self) -> None:
        super().end_epoch()
        self.p_bank = self._p_bank_at(self.epoch)
        # The official loop drops, at batch 0 of every epoch, entries whose FLOPs left the bin.
        for i, bank in enumerate(self.banks):
            if bank:
                macs = macs_encoded(self.space, encode(self.space, [a for a, _ in bank]))
                lo, hi = ft.bin_macs(*self.bins[i])
                bank[:] = [e for e, m in zip(bank, macs) if lo <= m <= hi]
        self._reindex()

    def _extra_state(self) -> dict[str, Any]:
        state = super()._extra_state()
        state["p_bank"] = self.p_bank
        state["banks"] = [[[a.to_dict(), s] for a, s in bank] for bank in self.banks]
        return state

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        banks = state.get("banks")
        if not isinstance(banks, list) or len(banks) != len(self.levels):
            raise ValueError(
                f"sampler state: expected 'banks' with one list per level "
                f"({len(self.levels)}), got {type(banks).__name__}"
            )
        self.banks = [[[ArchConfig.from_dict(a), float(s)] for a, s in bank] for bank in banks]
        self._reindex()
        self.p_bank = float(state["p_bank"])


def dominates(arch: ArchConfig, min_arch: ArchConfig) -> bool:
    """Whether ``arch`` lies in the part of the space a level trains: resolution, stem width and
    depth, every stage's width and depth, expansion ratio, MLP ratio and V scale at least
    ``min_arch``'s (docs/method.md#level-bins-and-min-subnets; kernels are free)."""
    if arch.resolution < min_arch.resolution or arch.stem.width < min_arch.stem.width:
        return False
    if arch.stem.depth < min_arch.stem.depth or len(arch.stages) != len(min_arch.stages):
        return False
    for s, m in zip(arch.stages, min_arch.stages):
        for field in ("width", "depth", "expand_ratio", "mlp_ratio", "v_scale"):
            a, b = getattr(s, field), getattr(m, field)
            if a is not None and b is not None and a < b:
                return False
    return True


def bank_archs(state: Mapping[str, Any]) -> list[ArchConfig]:
    """The archs of the memory banks in a saved sampler state (``get_state()``), best score
    first; empty for a sampler without banks.

    Raises:
        ValueError: ``banks`` is not the layout ``PerformanceAwareSampler`` saves.
    """
    banks = state.get("banks", [])
    try:
        scored = [(float(s), ArchConfig.from_dict(a)) for bank in banks for a, s in bank]
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(
            f"sampler state: 'banks' is not one list of [arch, score] per level: {e}"
        ) from None
    scored.sort(key=lambda sa: -sa[0])  # stable: bank order among equal scores
    return [a for _, a in scored]


class ElasticViTSampler(PerformanceAwareSampler):
    """The official recipe: complexity-aware level walk + performance-aware sampling
    (docs/method.md#samplers)."""

    name = "elasticvit"
    _walk = True
