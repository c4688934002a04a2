"""``--backend ray``: measure a run's units on Ray Core actors, each holding one model replica.

The driver (``analyses.runner.execute.run``) plans the passes and reads the records back as with
the local backend; this backend only measures. Each actor loads the model ONCE in its
constructor (from the model options: ``--model --device --dtype --trust-remote-code
--allow-pickle --device-map``; a worker with ``--gpus-per-worker`` > 1 spreads its model with
device map "auto") and, given a data spec, the dataset from it (``--data --split --limit
--prompt``: the CLI's driver sends names, never samples). A dataset the caller hands
:meth:`RayBackend.measure` that the workers did not load (a library caller's own
:class:`~analyses.data.dataset.Dataset`, one prompted otherwise, a subset; or no data spec
given at all) is shipped to them instead: pickled once per pass into Ray's object store
(``ray.put``; cloudpickle carries its sample-making closures, so a lazily built dataset
travels as its recipe, a file-backed one as its paths, which every node must then see, like
``--out``) and unpickled once per pass by each actor. Either way every actor measures exactly
the caller's samples: whether the workers already hold them is decided by
:func:`analyses.common.data_record` (name, split, size, fingerprint, prompt, spec).
Scheduling is dynamic: every actor holds one unit at a time and pulls
the next as it frees up, so a slow GPU or a long sample holds up nobody.

Each actor measures its unit with :func:`analyses.runner.execute.measure_unit` on a
:class:`~analyses.runner.store.RecordStore` opened on the run's own directory and writes the
records there itself (atomic writes); results never travel through Ray's object store, only
the unit's sample indices go out and ``None`` comes back. **The store directory (``--out``)
must therefore be on a filesystem every node of the cluster sees** (NFS, a shared volume, or a
single machine); an in-memory run (no ``--out``) is refused. Because workers write exactly
what the local backend writes, a Ray run's files equal a local run's, a ``--shard`` run's, and
a ``--resume``'s.

The analysis object is pickled to the actors (``ray.put`` once per pass) rather than rebuilt
from ``registry.rebuild(name, recorded())``: :class:`~analyses.runner.spec.Analysis` promises
its instances pickle (config values only), pickling also carries an analysis that is not in
the registry (a notebook's, a test's), and it cannot lose config that ``recorded()`` leaves out.

Connecting: ``ray.init(address=$RAY_ADDRESS)`` semantics: an existing cluster through
``RAY_ADDRESS`` (as ``ray job submit`` sets it), else a local Ray started here; a driver that
already called ``ray.init`` is used as it is. :meth:`RayBackend.close` kills this backend's own
actors and, only when this backend called ``ray.init``, calls ``ray.shutdown()`` (which stops a
local Ray it started and merely disconnects from a cluster it connected to).

Failures: a UserError inside an actor (``--strict``, a model that does not load) reaches the
driver as that UserError's sentence. An actor that dies while holding a unit (a segfault, the
OOM killer, a lost node) is replaced by a fresh one and the unit requeued; a unit that killed
its worker twice is split into single samples, and a single sample that killed its worker
twice is recorded as failed (``--strict``: a UserError) and the run goes on. Workers that keep
dying before finishing anything stop the run with a UserError. Ctrl-C kills this backend's
actors and re-raises: every finished sample is in the store and ``--resume`` goes on.

Chaos-testing switch: with ``FUSIONLENS_TEST_KILL_WORKER=INDEX`` in the driver's environment,
an actor kills its own process (``os._exit(1)``) before measuring any unit that holds sample
INDEX; with ``INDEX:once`` it first creates the marker file ``<store dir>/killed-INDEX`` and
never kills again once the marker exists. The variable reaches the actors through their
``runtime_env`` (only when it is set). It exists for tests of the retry logic, where killing
a worker from outside would be racy; never set it in a real run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analyses.runner.spec import Analysis, Pass
from analyses.runner.store import RecordStore
from probes.errors import UserError

KILL_SWITCH = "FUSIONLENS_TEST_KILL_WORKER"
KILLS_PER_UNIT = 2  # a unit that killed this many workers is split, a single sample failed
WAIT_S = 1.0  # how long the driver waits for a unit at a time (stays responsive to Ctrl-C)
NEEDS_RAY = "--backend ray needs Ray: pip install 'fusionlens[ray]'."


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(NEEDS_RAY) from None
    return ray


class _Worker:
    """One model replica (the body of the Ray actor; see :func:`_actor_class`). It never
    raises from its constructor: an error loading the model or the data is kept and raised by
    every call, so the driver sees it as an ordinary task error (a UserError's sentence)
    instead of a dead actor."""

    def __init__(self, model: dict[str, Any], data: dict[str, Any] | None,
                 threads: int | None) -> None:
        self._error: BaseException | None = None
        self._warm = False
        self.dataset = None  # the dataset loaded from ``data`` (None without a data spec)
        self._shipped: tuple[Any, Any] = (None, None)  # (object ref, dataset) shipped last
        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            from analyses.common import RunSpec
            from probes.models.loading import load_model

            self.loaded = load_model(**model)
            if data is not None:  # the driver's data, prompted for the family or --prompt
                self.dataset = RunSpec(model, data).dataset(self.loaded.adapter.family)
        except Exception as error:  # raised again by every call
            self._error = error

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def info(self) -> dict[str, Any]:
        """The model's record, its device and the loaded dataset's record (small dicts; the
        dataset's None without a data spec)."""
        from analyses.common import data_record, model_record

        self._check()
        return {"model": model_record(self.loaded), "device": str(self.loaded.device),
                "data": None if self.dataset is None else data_record(self.dataset)}

    def placement(self) -> dict[str, Any]:
        """Where this actor runs: node, the GPUs Ray gave it, ``CUDA_VISIBLE_DEVICES``,
        torch's thread count (cheap; for tests and for looking at a cluster)."""
        import ray
        import torch

        return {"node": ray.get_runtime_context().get_node_id(),
                "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "threads": torch.get_num_threads(), "pid": os.getpid()}

    def measure(self, job: tuple, unit: list[int], shipped: list) -> None:
        """Measure one unit into the store (``job``: analysis, pass, context, store directory,
        store key, strict) on the dataset ``shipped[0]`` refers to, or on the loaded one when
        it is None (a reference inside a list reaches the actor as the reference: it is
        fetched once per pass, not with every unit)."""
        from analyses.runner.execute import measure_unit

        self._check()
        analysis, step, context, directory, key, strict = job
        dataset = self._dataset(shipped[0])
        _chaos(unit, directory)
        if not self._warm:
            analysis.warm_up(self.loaded, dataset)
            self._warm = True
        measure_unit(analysis, self.loaded, dataset, RecordStore(Path(directory), key),
                     step, unit, context, strict)

    def _dataset(self, ref):
        if ref is None:
            return self.dataset
        if self._shipped[0] != ref:
            import ray

            self._shipped = (ref, ray.get(ref))
        return self._shipped[1]


def _chaos(unit: list[int], directory: str) -> None:
    """The chaos-testing switch (module docstring): die before measuring sample INDEX."""
    switch = os.environ.get(KILL_SWITCH, "")
    if not switch:
        return
    index, _, mode = switch.partition(":")
    if int(index) not in unit:
        return
    if mode == "once":
        marker = Path(directory) / f"killed-{int(index)}"
        if marker.exists():
            return
        marker.touch()
    os._exit(1)


_ACTOR = None


def _actor_class():
    """``_Worker`` as a Ray actor class (made on first use: Ray is an optional import)."""
    global _ACTOR
    if _ACTOR is None:
        ray = _import_ray()
        _ACTOR = ray.remote(max_restarts=0, max_task_retries=0)(_Worker)
    return _ACTOR


class RayBackend:
    """Measures on ``workers`` Ray actors with ``gpus_per_worker`` GPUs each (see the module
    docstring). ``model``: :func:`probes.models.loading.load_model`'s keyword arguments;
    ``data``: ``{"name", "split", "limit"}`` as :func:`analyses.common.load_data` takes them
    (and ``"prompt"``) for every worker to load itself, or None: the workers load nothing and
    every dataset handed to :meth:`measure` is shipped to them.
    ``workers`` / ``gpus_per_worker`` None: the defaults of ``--workers`` /
    ``--gpus-per-worker``. Actors start on first use and are replaced as they die;
    :attr:`restarts` counts the replacements (actors that died holding a unit)."""

    def __init__(self, model: dict[str, Any], data: dict[str, Any] | None = None,
                 workers: int | None = None, gpus_per_worker: float | None = None) -> None:
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, not {workers}.")
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise UserError(f"--gpus-per-worker must be 0 or more, not {gpus_per_worker:g}.")
        self._ray = _import_ray()
        self.model = dict(model)
        self.data = None if data is None else dict(data)
        self._owns_connection = False
        self._connect()
        self.gpus_per_worker, self.workers = self._size(workers, gpus_per_worker)
        if self.gpus_per_worker > 1 and self.model.get("device_map") is None:
            self.model["device_map"] = "auto"  # one replica spread over its GPUs
        self._actors: list = []
        self._info: dict[str, Any] | None = None
        self.restarts = 0

    @classmethod
    def from_args(cls, args) -> RayBackend:
        """The backend an analysis CLI's options name (``--backend ray``): every worker loads
        the run's :class:`~analyses.common.RunSpec`, the one the local path loads."""
        from analyses.common import RunSpec

        _import_ray()
        spec = RunSpec.from_args(args)
        return cls(spec.model, spec.data, workers=getattr(args, "workers", None),
                   gpus_per_worker=getattr(args, "gpus_per_worker", None))

    # -- the cluster ------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():  # the caller's connection: use it, leave it
            return
        address = os.environ.get("RAY_ADDRESS") or None
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if address is None:
            options["include_dashboard"] = False
        try:
            ray.init(address=address, **options)
        except ConnectionError as error:
            raise UserError(f"cannot reach the Ray cluster at RAY_ADDRESS={address} "
                            f"({' '.join(str(error).split())[:200]}).") from None
        self._owns_connection = True

    def _size(self, workers: int | None, gpus: float | None) -> tuple[float, int]:
        """Checked (gpus per worker, workers) with their defaults, before any actor exists."""
        ray = self._ray
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        node_gpus = [float(node.get("Resources", {}).get("GPU", 0)) for node in nodes]
        node_cpus = [float(node.get("Resources", {}).get("CPU", 0)) for node in nodes]
        total_gpus, total_cpus = sum(node_gpus), sum(node_cpus)
        if gpus is None:
            gpus = 1.0 if total_gpus > 0 else 0.0
        most = max(node_gpus, default=0.0)
        if gpus > most:
            raise UserError(f"--gpus-per-worker {gpus:g} asks for more GPUs than any node of the "
                            f"Ray cluster has (at most {most:g}).")
        if workers is None:
            workers = (int(total_gpus // gpus) if gpus > 0
                       else min(2, max(1, int(total_cpus))))
        gpus_needed, cpus_needed = workers * gpus, workers * 1.0
        if gpus_needed > total_gpus or cpus_needed > total_cpus:
            message = (f"--workers {workers} with --gpus-per-worker {gpus:g} need "
                       f"{gpus_needed:g} GPU(s) and {cpus_needed:g} CPU(s); the Ray cluster has "
                       f"{total_gpus:g} and {total_cpus:g}")
            if self._owns_connection and not os.environ.get("RAY_ADDRESS"):
                raise UserError(message + "; ask for fewer workers.")
            sys.stderr.write(f"warning: {message}; the workers beyond them wait for the "
                             "cluster to grow.\n")
        return float(gpus), int(workers)

    def _new_actor(self):
        options: dict[str, Any] = {"num_cpus": 1, "num_gpus": self.gpus_per_worker}
        if os.environ.get(KILL_SWITCH):
            options["runtime_env"] = {"env_vars": {KILL_SWITCH: os.environ[KILL_SWITCH]}}
        threads = 1 if self.gpus_per_worker == 0 else None  # its share of the CPUs
        return _actor_class().options(**options).remote(self.model, self.data, threads)

    def _start(self) -> None:
        if not self._actors:
            self._actors = [self._new_actor() for _ in range(self.workers)]

    def _get(self, ref):
        """``ray.get`` with a UserError raised inside an actor as that UserError."""
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, UserError):
                raise UserError(str(error.cause)) from None
            raise

    def _ask(self) -> dict[str, Any]:
        if self._info is None:
            self._start()
            try:
                self._info = self._get(self._actors[0].info.remote())
            except self._ray.exceptions.RayActorError as error:
                raise UserError("a Ray worker died while loading the model "
                                f"({_first_line(error)}).") from None
        return self._info

    def placements(self) -> list[dict[str, Any]]:
        """Every actor's :meth:`_Worker.placement` (node, GPU ids, CUDA_VISIBLE_DEVICES)."""
        self._start()
        return self._get([actor.placement.remote() for actor in self._actors])

    def _kill_actors(self) -> None:
        for actor in self._actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []

    # -- the backend interface --------------------------------------------------------------

    def model_record(self) -> dict[str, Any]:
        return self._ask()["model"]

    @property
    def device(self) -> str:
        return self._ask()["device"]

    def measure(self, analysis: Analysis, dataset, store: RecordStore, step: Pass,
                units: list[list[int]], context: dict[str, Any], strict: bool,
                done: Callable[[list[int]], None]) -> None:
        if store.directory is None:
            raise UserError("--backend ray needs --out: its workers write each sample's record "
                            "into the run's directory.")
        if not units:
            return
        from analyses.common import data_record

        ray = self._ray
        # the workers' own dataset when it is the caller's, else the caller's shipped to them
        shipped = [None if data_record(dataset) == self._ask()["data"] else ray.put(dataset)]
        job = ray.put((analysis, step, context, str(store.directory), store.key, strict))
        queue = deque(list(unit) for unit in units)
        kills: dict[tuple[int, ...], int] = {}
        running: dict[Any, tuple[int, list[int]]] = {}  # ref -> (actor slot, unit)
        dying = 0  # actors that died in a row, with no unit finished in between
        try:
            self._start()
            while queue or running:
                busy = {slot for slot, _ in running.values()}
                for slot in range(len(self._actors)):
                    if queue and slot not in busy:
                        unit = queue.popleft()
                        ref = self._actors[slot].measure.remote(job, unit, shipped)
                        running[ref] = (slot, unit)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    slot, unit = running.pop(ref)
                    try:
                        self._get(ref)
                    except ray.exceptions.RayActorError as error:
                        dying += 1
                        self._replace(slot)
                        if dying > 2 * len(self._actors) + 2 * KILLS_PER_UNIT:
                            raise UserError(f"the Ray workers keep dying ({dying} in a row, "
                                            f"none finished a unit): {_first_line(error)}") from None
                        self._died(unit, error, queue, kills, dataset, store, step, strict,
                                   done)
                        continue
                    dying = 0
                    done(unit)
        except BaseException:  # Ctrl-C, --strict, a bug: stop every unit in flight
            self._kill_actors()
            raise

    def _replace(self, slot: int) -> None:
        try:
            self._ray.kill(self._actors[slot], no_restart=True)
        except Exception:
            pass
        self._actors[slot] = self._new_actor()
        self.restarts += 1

    def _died(self, unit: list[int], error: Exception, queue: deque, kills: dict, dataset,
              store: RecordStore, step: Pass, strict: bool,
              done: Callable[[list[int]], None]) -> None:
        """Requeue, split or fail a unit whose worker died (module docstring)."""
        key = tuple(unit)
        kills[key] = kills.get(key, 0) + 1
        if kills[key] < KILLS_PER_UNIT:
            queue.appendleft(unit)
        elif len(unit) > 1:
            queue.extendleft([index] for index in reversed(unit))
        else:
            index = unit[0]
            reason = f"killed its worker twice ({_first_line(error)})"
            if strict:
                raise UserError(f"sample {index} failed in the {step.name} pass: {reason} "
                                "(without --strict it is recorded and skipped).")
            try:
                sample_id = dataset[index].id
            except Exception:  # an unreadable sample
                sample_id = str(index)
            store.fail(step.name, index, sample_id, reason)
            done(unit)

    def close(self) -> None:
        """Kill this backend's actors; shut Ray down only if this backend started it."""
        ray = self._ray
        if ray.is_initialized():
            self._kill_actors()
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
        self._owns_connection = False


def _first_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 160 else text[:157] + "..."
