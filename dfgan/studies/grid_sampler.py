"""The grid of a study as Optuna sees it: one categorical parameter per axis (variant, seed), named per grid, and
a grid sampler that hands the points out in plan order (seed-major) and leaves stopping to the runner."""

from __future__ import annotations


def grid_param_names(grid: str) -> tuple[str, str]:
    """The Optuna parameter names of one grid's axes: (variant, seed)."""
    return f"variant@{grid}", f"seed@{grid}"


def grid_sampler_class():
    import optuna

    class CellGridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its own stopping rule: the runner decides when the grid is done
        (the stock rule calls ``study.stop()``, which ask/tell does not allow, and stops before re-queued
        cells have run)."""

        def __init__(self, search_space, order: list[str]) -> None:
            super().__init__(search_space)
            # the grid in plan order (seed-major: every arm of one seed before the next seed), not Optuna's
            # shuffle: a study stopped part-way then has whole seeds, i.e. paired differences, to report
            names = self._param_names
            rank = [{v: i for i, v in enumerate(search_space[n])} for n in names]
            pos = [names.index(n) for n in order]
            self._all_grids.sort(key=lambda g: tuple(rank[p][g[p]] for p in pos))

        def before_trial(self, study, trial) -> None:
            """The first grid point in plan order that no other trial holds, by its grid id or by the fixed
            params of a re-queued cell. (Optuna gives trial number k grid id k while k is below the grid's size,
            so every re-queued cell, which takes a trial number but no grid id, pushed the order one point on:
            after two restarts, a whole seed's arms were left for last.)"""
            if "grid_id" in trial.system_attrs or "fixed_params" in trial.system_attrs:
                return
            index = {tuple(g): i for i, g in enumerate(self._all_grids)}
            taken = set()
            for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
                if t.number == trial.number:
                    continue
                if "grid_id" in t.system_attrs and self._same_search_space(t.system_attrs.get("search_space", {})):
                    taken.add(t.system_attrs["grid_id"])
                fixed = t.system_attrs.get("fixed_params") or {}
                if all(n in fixed for n in self._param_names):
                    i = index.get(tuple(fixed[n] for n in self._param_names))
                    if i is not None:
                        taken.add(i)
            free = [i for i in range(len(self._all_grids)) if i not in taken]
            # all handed out: Optuna's own choice (a duplicate, which the runner detects and skips)
            grid_id = free[0] if free else int(self._rng.rng.choice(len(self._all_grids)))
            study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
            study._storage.set_trial_system_attr(trial._trial_id, "grid_id", grid_id)

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return CellGridSampler
